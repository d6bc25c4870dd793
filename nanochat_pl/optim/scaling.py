"""Depth -> training horizon, batch size, LR scale and weight decay (nanochat base_train.py@92d63d4).

Everything is transferred from d12, where nanochat tuned it:
  D     = ratio · N                                  tokens; N = "scaling params" = block matrices + lm_head,
                                                     the count with the cleanest scaling laws (dev/LOG.md)
  B     = 2^round(log2(2^19 · (D / D_ref)^0.383))   Power Lines, B_opt ∝ D^0.383 (arXiv 2505.13738)
  lr    × sqrt(B / 2^19)                             the AdamW square-root rule, applied to Muon too
  wd    = 0.28 · sqrt(B / 2^19) · D_ref / D          keeps T_epoch = B / (lr·wd·D) constant (arXiv 2405.13698)
  steps = floor(D / B)
where D_ref is d12's horizon at the same ratio. N is passed in: this file does not depend on the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanochat_pl.common import UserError

REFERENCE_DEPTH = 12
REFERENCE_BATCH_TOKENS = 2**19  # the optimal batch measured at d12
BATCH_EXPONENT = 0.383
REFERENCE_WEIGHT_DECAY = 0.28  # Muon weight decay tuned at d12 (base_train.py@92d63d4 --weight-decay)


@dataclass(frozen=True)
class TrainingPlan:
    """The numbers a pretraining run derives from its depth; printed at the start of a run."""

    depth: int
    num_scaling_params: int
    target_param_data_ratio: float
    target_tokens: int
    reference_tokens: int
    total_batch_tokens: int
    num_iterations: int
    lr_scale: float
    weight_decay: float

    def describe(self) -> str:
        tokens = self.total_batch_tokens * self.num_iterations
        rows = [
            ("depth", f"{self.depth}"),
            ("scaling params (matrices + lm_head)", f"{self.num_scaling_params:,}"),
            ("target tokens : params", f"{self.target_param_data_ratio:g}"),
            ("target tokens D", f"{self.target_tokens:,}"),
            (f"reference tokens D_ref (d{REFERENCE_DEPTH})", f"{self.reference_tokens:,}"),
            ("total batch tokens B", f"{self.total_batch_tokens:,}"),
            ("optimizer steps", f"{self.num_iterations:,}"),
            ("tokens trained", f"{tokens:,}"),
            ("tokens : params achieved", f"{tokens / self.num_scaling_params:.2f}"),
            ("LR scale sqrt(B/2^19)", f"{self.lr_scale:.4f}"),
            ("Muon weight decay", f"{self.weight_decay:.6f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def plan_from_depth(
    depth: int,
    num_scaling_params: int,
    reference_scaling_params: int,
    *,
    target_param_data_ratio: float = 12.0,
    total_batch_tokens: int | None = None,
    num_iterations: int | None = None,
    lr_scale: float | None = None,
    weight_decay: float | None = None,
) -> TrainingPlan:
    """The training plan of a model from its scaling-parameter count and the d12 reference model's (same vocab and
    aspect ratio), by the rules above; every value given (not None) is taken as it is. The horizon D is the ratio's
    also when num_iterations is given: the batch and weight-decay rules use it."""
    target_tokens = int(target_param_data_ratio * num_scaling_params)
    reference_tokens = int(target_param_data_ratio * reference_scaling_params)
    if total_batch_tokens is None:
        predicted = REFERENCE_BATCH_TOKENS * (target_tokens / reference_tokens) ** BATCH_EXPONENT
        total_batch_tokens = 2 ** round(math.log2(predicted))  # a power of two divides evenly across GPUs
    batch_ratio = total_batch_tokens / REFERENCE_BATCH_TOKENS
    if num_iterations is None:
        num_iterations = target_tokens // total_batch_tokens
        if num_iterations == 0:
            raise UserError(
                f"the horizon of {target_tokens:,} tokens is shorter than one batch of {total_batch_tokens:,}"
            )
    lr_scale = math.sqrt(batch_ratio) if lr_scale is None else lr_scale
    if weight_decay is None:
        weight_decay = REFERENCE_WEIGHT_DECAY * math.sqrt(batch_ratio) * reference_tokens / target_tokens
    return TrainingPlan(
        depth=depth,
        num_scaling_params=num_scaling_params,
        target_param_data_ratio=target_param_data_ratio,
        target_tokens=target_tokens,
        reference_tokens=reference_tokens,
        total_batch_tokens=total_batch_tokens,
        num_iterations=num_iterations,
        lr_scale=lr_scale,
        weight_decay=weight_decay,
    )


def grad_accumulation_steps(total_batch_tokens: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that every step sees exactly `total_batch_tokens` tokens."""
    tokens_per_micro_batch = device_batch_size * seq_len * world_size
    if total_batch_tokens % tokens_per_micro_batch:
        raise UserError(
            f"total batch of {total_batch_tokens:,} tokens is not a multiple of device_batch_size × seq_len"
            f" × world_size = {device_batch_size} × {seq_len} × {world_size} = {tokens_per_micro_batch:,}"
        )
    return total_batch_tokens // tokens_per_micro_batch
