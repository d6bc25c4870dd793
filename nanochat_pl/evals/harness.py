"""What every evaluation shares: rank-strided problems (`range(rank, n, world_size)`, nanochat's rule, rather than
Lightning's DistributedSampler, which pads ranks with repeats), counts summed over ranks so that 1 GPU or 8 give the
same figure, generative problems answered by the engine, results in eval/ of the checkpoint's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from nanochat_pl.reply import read_reply
from nanochat_pl.tasks.task import Task


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_share(num_problems: int) -> range:
    """The problems this rank evaluates: every world_size-th, starting at its rank."""
    rank, world_size = rank_and_world()
    return range(rank, num_problems, world_size)


def sum_across_ranks(values: Sequence[float] | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """`values` (float64) summed over all ranks; `device` must be one the backend reduces on (CUDA for NCCL)."""
    total = torch.as_tensor(values, dtype=torch.float64, device=device).clone()
    if rank_and_world()[1] > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def centered(accuracy: float, chance: float) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (nanochat's centered accuracy)."""
    return (accuracy - chance) / (1.0 - chance)


def sample_correct(engine, task: Task, index: int, num_samples: int = 1, seed: int = 42, **sampling) -> list[bool]:
    """Whether each of `num_samples` replies the engine writes to problem `index` of `task` (`sampling`: the engine's
    max_tokens, temperature, top_k) is correct: the task's `evaluate` on the reply's text, tool calls included."""
    conversation = task[index]
    prompt = engine.tokenizer.render_for_completion(conversation)
    sequences, _ = engine.generate_batch(prompt, num_samples, seed=seed, **sampling)
    return [task.evaluate(conversation, read_reply(engine.tokenizer, s[len(prompt) :]).text) for s in sequences]


def run_eval_dir(checkpoint: Path) -> Path:
    """eval/ in the checkpoint's run: `<run>/checkpoints/x.ckpt` -> `<run>/eval`, else beside the file."""
    checkpoint = checkpoint.resolve()
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / "eval"
