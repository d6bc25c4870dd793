"""Every training recipe in one table, the MuonAdamW param groups a recipe gives a model, and its schedules.

A pretraining recipe ("2026", "oct") says everything: architecture, optimizer settings per parameter family,
schedule. The recipes of the stages that start from a checkpoint ("mid", "sft", "sft_oct", "rl") keep its model and
optimizer settings (as nanochat's chat_sft inherits them) and say what changes: a fraction of the learning rates,
the schedule, and for a chat recipe its stage name and packing. The schedules (LR multiplier for LambdaLR, Muon
momentum and weight decay) are functions of the optimizer step (0-based, trainer.global_step before the update).

Sources: nanochat base_train.py / gpt.py / optim.py @92d63d4 (2026), @dfc8833 (October 2025); mid_train.py
@dfc8833; chat_sft.py @92d63d4 (sft) and @dfc8833 (sft_oct); chat_rl.py (rl).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor
from torch.optim import Optimizer

from nanochat_pl.common import UserError
from nanochat_pl.model.gpt import OCT_2025
from nanochat_pl.optim.muon_adamw import MUON_DEFAULTS

# The optimizer families of GPT.param_families() (model/gpt.py), in the order of the param groups.
FAMILIES = ("lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "scalars", "matrices")
ADAMW_EPS = 1e-10  # every AdamW group's (nanochat gpt.py@92d63d4 setup_optimizer)


@dataclass(frozen=True)
class AdamWGroup:
    """One AdamW parameter family. Embedding and lm_head rates were tuned at model_dim 768 and scale as
    1/sqrt(model_dim) (`width_scaled`); every rate but the smear/backout scalars' follows the batch rule
    (`batch_scaled`: nanochat HEAD leaves smear's 0.2 constant in setup_optimizer)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    width_scaled: bool
    batch_scaled: bool = True


@dataclass(frozen=True)
class Recipe:
    """A row of the table. Only pretraining recipes set `architecture` (GPTConfig overrides), `adamw` (settings per
    AdamW family) and `muon`; the others keep their checkpoint's."""

    schedule: dict[str, Any]  # Schedule fields that differ from the 2026 defaults
    architecture: dict[str, Any] | None = None
    adamw: dict[str, AdamWGroup] | None = None
    muon: dict[str, Any] = field(default_factory=dict)  # what differs from MuonAdamW's defaults (nanochat HEAD's)
    lr_frac: float = 1.0  # multiplies every learning rate (after a checkpoint: the fraction of the base run's)
    weight_decay: float | None = 0.0  # Muon's; None: the T_epoch rule from depth (scaling.py)
    stage: str = "sft"  # a chat recipe's stage: the name its checkpoints carry
    # a chat recipe's packing (data/chat_data.py): "pad", loss on the assistant's tokens; "crop", on every token
    packing: Literal["pad", "crop"] = "pad"


# October 2025 (base, mid): no warmup, the last 20% linearly to 0, Muon momentum 0.85 -> 0.95 over 300 steps and
# then constant, constant weight decay (base_train.py / mid_train.py@dfc8833, chat_sft.py@92d63d4 get_muon_momentum)
OCT_SCHEDULE = dict(warmup_steps=0, warmdown_ratio=0.2, final_lr_frac=0.0, cosine_weight_decay=False)
OCT_SCHEDULE |= dict(momentum_peak=0.95, momentum_warmup_steps=300, momentum_end=0.95)

RECIPES: dict[str, Recipe] = {
    # nanochat HEAD: MuonAdamW's defaults, warmup 40, warmdown 65% to 0.05, Muon weight decay from depth
    "2026": Recipe(
        schedule={},
        architecture={},
        adamw={
            "lm_head": AdamWGroup(0.008, (0.8, 0.96), 0.01, width_scaled=True),
            "wte": AdamWGroup(0.3, (0.8, 0.995), 0.001, width_scaled=True),
            "value_embeds": AdamWGroup(0.15, (0.8, 0.995), 0.01, width_scaled=True),
            # the residual scalars need ~100x smaller LR than x0's (dev/LOG.md); x0 takes beta1 0.96 (0.98 diverged)
            "resid_lambdas": AdamWGroup(0.005, (0.8, 0.95), 0.05, width_scaled=False),
            "x0_lambdas": AdamWGroup(0.5, (0.96, 0.95), 0.0, width_scaled=False),
            "scalars": AdamWGroup(0.2, (0.8, 0.95), 0.0, width_scaled=False, batch_scaled=False),
        },
        weight_decay=None,
    ),
    # October 2025: plain Newton–Schulz Muon, AdamW on embeddings and lm_head only, no weight decay
    "oct": Recipe(
        schedule=OCT_SCHEDULE,
        architecture=OCT_2025,
        adamw={
            "lm_head": AdamWGroup(0.004, (0.8, 0.95), 0.0, width_scaled=True),
            "wte": AdamWGroup(0.2, (0.8, 0.95), 0.0, width_scaled=True),
        },
        muon=dict(
            orthogonalizer="newton_schulz", row_equilibration=False, renormalize=False, normuon=False, cautious_wd=False
        ),
    ),
    # October's midtraining: the base LRs on every token of the data, the last 20% decaying
    "mid": Recipe(schedule=OCT_SCHEDULE, stage="mid", packing="crop"),
    # HEAD's SFT: 0.8 of the base LRs, the second half of the data decaying; pretraining's cosine already took the
    # weight decay to zero, so SFT goes on without it
    "sft": Recipe(schedule=dict(OCT_SCHEDULE, warmdown_ratio=0.5), lr_frac=0.8),
    # October's SFT (after midtraining): 0.02 of the base LRs, decaying over the whole run
    "sft_oct": Recipe(schedule=dict(OCT_SCHEDULE, warmdown_ratio=1.0, momentum_start=0.95), lr_frac=0.02),
    # RL after SFT (chat_rl.py): 0.05 of the base LRs, linearly to 0 over the run; Muon momentum a constant 0.95 and
    # no weight decay, as nanochat builds its optimizer there without schedules on either
    "rl": Recipe(schedule=dict(OCT_SCHEDULE, warmdown_ratio=1.0, momentum_start=0.95), lr_frac=0.05),
}


def build_param_groups(
    named_families: dict[str, list[Tensor]],
    model_dim: int,
    recipe: str = "2026",
    lr_scale: float = 1.0,
    weight_decay: float = 0.0,
    lr_frac: float = 1.0,
    muon: dict[str, Any] | None = None,
) -> list[dict]:
    """Param groups for MuonAdamW, one per non-empty family (FAMILIES: "matrices" go to Muon, the others to AdamW),
    named after it for LearningRateMonitor, with the settings of pretraining recipe `recipe`. `lr_scale` multiplies
    the rates that follow the batch-size rule (scaling.py), `lr_frac` every rate (a later stage's fraction of the
    base run's, nanochat chat_sft.py@92d63d4 init_lr_frac); `weight_decay` is Muon's; `muon` overrides the recipe's
    Muon settings (an ablation's {"normuon": False})."""
    settings = RECIPES[recipe]
    assert set(named_families) <= set(FAMILIES), f"unknown parameter families in {sorted(named_families)}"
    width_scale = (model_dim / 768) ** -0.5
    groups = []
    for family in FAMILIES:
        params = list(named_families.get(family, []))
        if not params:
            continue
        if family == "matrices":
            muon = {**settings.muon, **(muon or {})}
            muon |= dict(lr=muon.get("lr", MUON_DEFAULTS["lr"]) * lr_scale * lr_frac, weight_decay=weight_decay)
            groups.append(dict(kind="muon", name=family, params=params, **muon))
            continue
        if family not in settings.adamw:  # e.g. recipe oct with an architecture that has value embeddings
            raise UserError(f"the {recipe!r} optimizer recipe has no settings for parameter family {family!r}")
        adamw = settings.adamw[family]
        lr = adamw.lr * (width_scale if adamw.width_scaled else 1.0) * (lr_scale if adamw.batch_scaled else 1.0)
        group = dict(kind="adamw", name=family, params=params, lr=lr * lr_frac, betas=adamw.betas, eps=ADAMW_EPS)
        groups.append(dict(group, weight_decay=adamw.weight_decay))
    return groups


@dataclass(frozen=True)
class Schedule:
    """The shape of a run over `total_steps` optimizer steps (None: a run that ends with its data, whose LR runs on
    progress, `lr_multiplier_at_progress`). LR: linear warmup over `warmup_steps`, constant, then linear over the
    last `warmdown_ratio` of the run down to `final_lr_frac`. Muon momentum: `momentum_start` -> `momentum_peak`
    over `momentum_warmup_steps`, then during the LR warmdown -> `momentum_end`. Muon weight decay: a cosine to 0
    over the run when `cosine_weight_decay`, else constant."""

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
        assert self.total_steps is not None or not self.cosine_weight_decay, "a cosine needs the run's steps"

    @classmethod
    def for_recipe(cls, recipe: str, total_steps: int | None, warmdown_ratio: float | None = None) -> Schedule:
        """The schedule of a recipe ("2026", "oct", "mid", "sft", ...), its warmdown as set."""
        overrides = {} if warmdown_ratio is None else {"warmdown_ratio": warmdown_ratio}
        return cls(total_steps, **{**RECIPES[recipe].schedule, **overrides})

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
        """The same LR shape on the fraction of the run done (0 -> 1): a stage that ends when its data does knows
        only how far through it it is (chat_sft.py@92d63d4)."""
        assert not self.warmup_steps, "a schedule on progress has no warmup steps"
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
    """Set every Muon group's momentum and weight decay for `step` (call before each optimizer step); the learning
    rate is LambdaLR's (schedule.lr_multiplier)."""
    momentum = schedule.muon_momentum(step)
    wd_multiplier = schedule.weight_decay_multiplier(step)
    for group in optimizer.param_groups:
        if group.get("kind") == "muon":
            group["momentum"] = momentum
            group["weight_decay"] = group["initial_weight_decay"] * wd_multiplier
