"""What every evaluation shares: each rank takes its share of the problems, the counts are summed over ranks, and
a generative problem is answered by sampling with the engine.

Problems are rank-strided (`range(rank, n, world_size)`, nanochat's rule) rather than split by Lightning's
DistributedSampler, which pads ranks with repeated problems. Counts are summed with `torch.distributed.all_reduce`
when a process group is up (a Lightning DDP run, or `torchrun` for the eval commands), so every rank gets the same
result and the same figure comes out of 1 GPU or 8.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """`values` (float64) summed over all ranks; unchanged outside a process group. `device` must be one the
    process group's backend reduces on (CUDA for NCCL)."""
    total = torch.as_tensor(values, dtype=torch.float64, device=device).clone()
    if rank_and_world()[1] > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sample_correct(
    engine,
    task: Task,
    index: int,
    *,
    num_samples: int = 1,
    max_tokens: int = 512,
    temperature: float = 0.0,
    top_k: int | None = 50,
    seed: int = 42,
) -> list[bool]:
    """Whether each of `num_samples` replies the engine writes to problem `index` of `task` is correct (the task's
    `evaluate` on the reply's text, tool calls included as the reader renders them)."""
    conversation = task[index]
    prompt = engine.tokenizer.render_for_completion(conversation)
    sequences, _ = engine.generate_batch(
        prompt, num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed
    )
    return [task.evaluate(conversation, read_reply(engine.tokenizer, s[len(prompt) :]).text) for s in sequences]


def pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """The fraction of problems with a correct reply among their first k samples (nanochat chat_rl.py's
    pass@k: the samples are drawn once, and pass@k looks at the first k of them)."""
    if not correct:
        return float("nan")
    return sum(any(samples[:k]) for samples in correct) / len(correct)
