"""Per-step schedules: the LR multiplier (for LambdaLR), Muon momentum and Muon weight decay.

All are plain functions of the optimizer step (0-based, = trainer.global_step before the update), as in
nanochat base_train.py@92d63d4 (HEAD) and base_train.py@dfc8833 (October 2025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer

from nanochat_pl.common import UserError
from nanochat_pl.optim.recipes import get_recipe


@dataclass(frozen=True)
class Schedule:
    """The shape of a run over `total_steps` optimizer steps.

    LR: linear warmup over `warmup_steps`, constant, then linear over the last `warmdown_ratio` of the run
    down to `final_lr_frac`. Muon momentum: `momentum_start` -> `momentum_peak` over
    `momentum_warmup_steps`, then during the LR warmdown -> `momentum_end`. Muon weight decay: cosine from
    its initial value to 0 over the run when `cosine_weight_decay`, else constant.

    `total_steps` None: a run that ends with its data, whose length is known only as progress (0 -> 1). The
    LR then runs on progress (`lr_multiplier_at_progress`), the momentum has no warmdown and the weight
    decay is constant.
    """

    total_steps: int | None
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    momentum_start: float = 0.85
    momentum_peak: float = 0.97
    momentum_warmup_steps: int = 400
    momentum_end: float = 0.90
    cosine_weight_decay: bool = True

    def __post_init__(self) -> None:
        if self.total_steps is not None and self.total_steps <= 0:
            raise UserError(f"a schedule needs a positive number of steps, got {self.total_steps}")
        if self.total_steps is None and self.cosine_weight_decay:
            raise UserError("a schedule on progress cannot decay the weight decay by a cosine over its steps")
        if not 0.0 <= self.warmdown_ratio <= 1.0:
            raise UserError(f"warmdown_ratio must be in [0, 1], got {self.warmdown_ratio}")

    @classmethod
    def for_recipe(cls, recipe: str, total_steps: int | None, **overrides: float) -> Schedule:
        """The schedule of a recipe in optim/recipes.py ("2026", "oct", "mid", "sft", ...), with `overrides`."""
        return cls(total_steps=total_steps, **{**get_recipe(recipe).schedule, **overrides})

    @property
    def warmdown_steps(self) -> int:
        return round(self.warmdown_ratio * self.total_steps)

    def lr_multiplier(self, step: int) -> float:
        """Factor on every group's initial_lr at `step`: pass this as LambdaLR's lr_lambda."""
        step = min(step, self.total_steps)  # a step past the end keeps the final value
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step <= self.total_steps - self.warmdown_steps:
            return 1.0
        progress = (self.total_steps - step) / self.warmdown_steps  # 1 -> 0 over the warmdown
        return progress + (1 - progress) * self.final_lr_frac

    def lr_multiplier_at_progress(self, progress: float) -> float:
        """The same LR shape keyed on the fraction of the run done (0 -> 1) instead of the step: the chat stages
        end when their data does, so they know only how far through it they are (chat_sft.py@92d63d4)."""
        if self.warmup_steps:
            raise UserError("a schedule on progress has no warmup steps (set warmup_steps: 0)")
        progress = min(max(progress, 0.0), 1.0)
        if progress <= 1.0 - self.warmdown_ratio:
            return 1.0
        decay = (progress - (1.0 - self.warmdown_ratio)) / self.warmdown_ratio  # 0 -> 1 over the warmdown
        return (1.0 - decay) + decay * self.final_lr_frac

    def muon_momentum(self, step: int) -> float:
        step = step if self.total_steps is None else min(step, self.total_steps)
        if step < self.momentum_warmup_steps:
            frac = step / self.momentum_warmup_steps
            return (1 - frac) * self.momentum_start + frac * self.momentum_peak
        if self.total_steps is None:
            return self.momentum_peak
        warmdown_start = self.total_steps - self.warmdown_steps
        if self.warmdown_steps > 0 and step >= warmdown_start:
            frac = (step - warmdown_start) / self.warmdown_steps
            return (1 - frac) * self.momentum_peak + frac * self.momentum_end
        return self.momentum_peak

    def weight_decay_multiplier(self, step: int) -> float:
        if not self.cosine_weight_decay:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


def apply_muon_schedules(optimizer: Optimizer, step: int, schedule: Schedule) -> None:
    """Set every Muon group's momentum and weight decay for `step` (call before each optimizer step).

    The learning rate is LambdaLR's job (schedule.lr_multiplier); this covers what LambdaLR cannot.
    """
    momentum = schedule.muon_momentum(step)
    wd_multiplier = schedule.weight_decay_multiplier(step)
    for group in optimizer.param_groups:
        if group.get("kind") == "muon":
            group["momentum"] = momentum
            group["weight_decay"] = group["initial_weight_decay"] * wd_multiplier
