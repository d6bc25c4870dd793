"""What a task is: a sized, indexable collection of conversations that can score a reply to one of them.

A conversation is `{"messages": [{"role": "user" | "assistant" | "system", "content": ...}, ...], ...}`; an
assistant's content is a string or a list of parts `{"type": "text" | "python" | "python_output", "text": ...}`.
Tasks add keys of their own (`letters` for multiple choice, `test` for HumanEval, ...). Every task takes `start`,
`stop` and `step` and is that slice of its source (nanochat tasks/common.py).
"""

from __future__ import annotations

import functools
import random
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

from nanochat_pl.common import UserError

Conversation = dict[str, Any]
Split = Literal["train", "test"]

SHUFFLE_SEED = 42  # of every shuffle: nanochat's load_dataset(...).shuffle(seed=42) and TaskMixture's Random(42)
TEST_SEED_OFFSET = 10_000_000  # generated test examples draw from seeds above any train index
TEST_SHARE = 10  # one generated question (or documented name) in TEST_SHARE belongs to the test split


class Task(ABC):
    """Conversations `start:stop:step` of a source: subclasses give the source's size and its rows, and, to be
    evaluated, `eval_type` and `evaluate()`; `reward()` is `float(evaluate())`."""

    eval_type: Literal["categorical", "generative"] = "generative"

    def __init__(self, *, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1:
            raise UserError(f"{type(self).__name__}: start must be at least 0 and step at least 1")
        self.start, self.stop, self.step = start, stop, step

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def num_examples(self) -> int:
        """The size of the source, before slicing."""

    @abstractmethod
    def get_example(self, index: int) -> Conversation:
        """The source's `index`-th conversation."""

    def _indices(self) -> range:
        size = self.num_examples()
        return range(self.start, size if self.stop is None else min(self.stop, size), self.step)

    def __len__(self) -> int:
        return len(self._indices())

    def __getitem__(self, index: int) -> Conversation:
        return self.get_example(self._indices()[index])

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether `reply` (the assistant's answer, as text) is correct; a task that only teaches has none to check."""
        raise UserError(f"{self.name} is not an evaluation task: it has no answers to check a reply against")

    def reward(self, conversation: Conversation, reply: str) -> float:
        return float(self.evaluate(conversation, reply))

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({arguments})"


class TaskMixture(Task):
    """Every conversation of `tasks` in one deterministic shuffle of (task, index) pairs; a task listed twice is
    seen twice (nanochat's way to oversample). With `seed=None`, one task after another."""

    def __init__(self, tasks: Sequence[Task], seed: int | None = SHUFFLE_SEED):
        super().__init__()
        assert tasks, "a mixture needs at least one task"
        self.tasks, self.seed = list(tasks), seed

    @functools.cached_property
    def _pairs(self) -> list[tuple[int, int]]:  # built on first use: the tasks load their rows then
        pairs = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        if self.seed is not None:
            random.Random(self.seed).shuffle(pairs)
        return pairs

    def num_examples(self) -> int:
        return len(self._pairs)

    def get_example(self, index: int) -> Conversation:
        task, i = self._pairs[index]
        return self.tasks[task][i]


class TaskSequence(TaskMixture):
    """The conversations of `tasks` one task after another (a curriculum)."""

    def __init__(self, tasks: Sequence[Task]):
        super().__init__(tasks, seed=None)


class GeneratedTask(Task):
    """`size` generated examples (any number; one may repeat); example i of a split is drawn from its own seed,
    so the same index gives the same example on every machine, and train and test never share a seed."""

    def __init__(self, size: int = 1000, split: Split = "train", **kwargs: Any):
        super().__init__(**kwargs)
        if size < 0:
            raise UserError(f"{self.name} size must be at least 0, got {size}")
        self.size, self.split = size, split

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        return random.Random(index if self.split == "train" else TEST_SEED_OFFSET + index)


def split_of(text: str) -> Split:
    """The split a generated question belongs to, by a hash that is the same on every machine and Python."""
    return "test" if zlib.crc32(text.encode("utf-8")) % TEST_SHARE == 0 else "train"


def qa(question: str, answer: str | list[dict[str, str]], **keys: Any) -> Conversation:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **keys}


def is_dialogue(messages: Any) -> bool:
    """At least 2 messages, roles alternating from the user's, every content a string."""
    if not isinstance(messages, list) or len(messages) < 2:
        return False
    return all(
        isinstance(m, dict) and m.get("role") == ("user", "assistant")[i % 2] and isinstance(m.get("content"), str)
        for i, m in enumerate(messages)
    )


def exact_match(conversation: Conversation, reply: str) -> bool:  # the last message, up to surrounding space
    return reply.strip() == conversation["messages"][-1]["content"]


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """A multiple-choice question in nanochat's format (tasks/common.py): each choice is followed by its letter
    with no space, so the letter in the prompt is the same token as the answer the model gives."""
    lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices, strict=True))
    return f"Multiple Choice question: {question}\n{lines}\nRespond only with the letter of the correct answer."
