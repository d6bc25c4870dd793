"""What every task is: a sized, indexable collection of conversations that can score a reply to one of them.

A conversation is `{"messages": [{"role": "user" | "assistant" | "system", "content": ...}, ...], ...}`; an
assistant's content is a string or a list of parts `{"type": "text" | "python" | "python_output", "text": ...}`
(the tokenizer's `render_conversation` turns either into tokens and a loss mask). Tasks add keys of their own
(`letters` for multiple choice, `test` for HumanEval, ...).

- `Task` slices its source by `start:stop:step` (nanochat tasks/common.py@dfc8833), so `MMLU(split="test",
  stop=5200)` is the first 5,200 rows of the seed-42 order.
- `TaskMixture` interleaves several tasks in one deterministic shuffle of (task, index) pairs; a task listed
  twice is seen twice (nanochat's way to oversample: MMLU x3, GSM8K x4 in HEAD's SFT).
- `TaskSequence` plays tasks one after another (a curriculum).

Tasks load their rows lazily, on first use, so building a mixture from a config downloads nothing until the data
module sets up, and a task listed twice shares one copy of its data (the loaders cache by source).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

from nanochat_pl.common import UserError

Conversation = dict[str, Any]
EvalType = Literal["categorical", "generative"]

# the seed of every shuffle: nanochat's load_dataset(...).shuffle(seed=42) and TaskMixture's Random(42)
SHUFFLE_SEED = 42


class Task(ABC):
    """Conversations `start:stop:step` of a source; subclasses give the source's size and its rows.

    Subclasses implement `num_examples()` (the source's size) and `get_example(i)` (its i-th conversation),
    and, to be evaluated, `eval_type` and `evaluate()`; `reward()` defaults to `float(evaluate())`.
    """

    eval_type: EvalType = "generative"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or (stop is not None and stop < start) or step < 1:
            raise ValueError(f"bad task slice start={start} stop={stop} step={step}")
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

    def __len__(self) -> int:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index: int) -> Conversation:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} has {len(self)} conversations, asked for {index}")
        return self.get_example(self.start + index * self.step)

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether `reply` (the assistant's answer, as text) is correct for `conversation`. A task that only
        teaches (SmolTalk, identity conversations) has no answer to check."""
        raise UserError(f"{self.name} is not an evaluation task: it has no answers to check a reply against")

    def reward(self, conversation: Conversation, reply: str) -> float:
        """The RL reward of `reply`: 1.0 when correct, else 0.0."""
        return float(self.evaluate(conversation, reply))

    def __repr__(self) -> str:
        return f"{self.name}(start={self.start}, stop={self.stop}, step={self.step})"


class TaskMixture(Task):
    """Every conversation of `tasks`, in one deterministic shuffle of (task, index) pairs."""

    def __init__(self, tasks: Sequence[Task], seed: int = SHUFFLE_SEED):
        super().__init__()
        if not tasks:
            raise ValueError("a mixture needs at least one task")
        self.tasks = list(tasks)
        self.seed = seed
        self._pairs: list[tuple[int, int]] | None = None

    def _index(self) -> list[tuple[int, int]]:
        if self._pairs is None:
            pairs = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
            random.Random(self.seed).shuffle(pairs)
            self._pairs = pairs
        return self._pairs

    def num_examples(self) -> int:
        return len(self._index())

    def get_example(self, index: int) -> Conversation:
        task, i = self._index()[index]
        return self.tasks[task][i]

    def __repr__(self) -> str:
        return f"TaskMixture({self.tasks!r})"


class TaskSequence(Task):
    """The conversations of `tasks` one task after another."""

    def __init__(self, tasks: Sequence[Task]):
        super().__init__()
        if not tasks:
            raise ValueError("a sequence needs at least one task")
        self.tasks = list(tasks)

    def num_examples(self) -> int:
        return sum(len(task) for task in self.tasks)

    def get_example(self, index: int) -> Conversation:
        for task in self.tasks:
            if index < len(task):
                return task[index]
            index -= len(task)
        raise IndexError(index)

    def __repr__(self) -> str:
        return f"TaskSequence({self.tasks!r})"


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """A multiple-choice question in nanochat's format (tasks/common.py@dfc8833): each choice is followed by its
    letter with no space, so the letter in the prompt is the same token as the answer the model gives."""
    lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices, strict=True))
    return f"Multiple Choice question: {question}\n{lines}\nRespond only with the letter of the correct answer."
