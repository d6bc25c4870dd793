"""Every training recipe in one table: the model, the optimizer groups and the schedules of each stage.

A recipe is what a stage's `recipe:` setting names. The pretraining recipes ("2026", "oct") say everything:
the architecture (GPTConfig overrides), the optimizer settings of each parameter family, the schedules and
where the Muon weight decay comes from. The chat recipes ("mid", "sft", "sft_oct") and RL's ("rl") start from a
checkpoint, so they keep its architecture and its optimizer settings (the learning rates the base run used, batch
scaling included, as nanochat's chat_sft inherits them from the base checkpoint) and say only what changes: a
fraction of those learning rates, the weight decay and the schedules (the chat recipes' run on progress through
the data, RL's on steps).

Sources: nanochat base_train.py / gpt.py / optim.py @92d63d4 (2026), @dfc8833 (October 2025); mid_train.py
@dfc8833; chat_sft.py @92d63d4 (sft) and @dfc8833 (sft_oct); chat_rl.py (rl).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nanochat_pl.common import UserError
from nanochat_pl.model.gpt import OCT_2025


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
    """A row of the table (see the module docstring).

    Args:
        architecture: GPTConfig overrides; None: the starting checkpoint's model as it is.
        adamw: Settings per AdamW family; None: the starting checkpoint's recipe's.
        muon: The Muon group's settings (MuonAdamW's per-group keys); None: the starting checkpoint's recipe's.
        schedule: Schedule fields (optim/schedules.py) that differ from the 2026 defaults.
        lr_frac: Multiplies every learning rate (chat stages: a fraction of the base run's).
        weight_decay: Muon weight decay; None: the T_epoch rule from depth (scaling.py).
        lr_by_progress: The LR schedule runs on the fraction of the data consumed, not on steps: a chat stage
            ends when its data does, so its number of steps is not known in advance (chat_sft.py@92d63d4).
    """

    architecture: dict[str, Any] | None
    adamw: dict[str, AdamWGroup] | None
    muon: dict[str, Any] | None
    schedule: dict[str, Any] = field(default_factory=dict)
    lr_frac: float = 1.0
    weight_decay: float | None = None
    lr_by_progress: bool = False


# Momentum of the chat stages: 0.85 -> 0.95 over the first 300 steps, then constant (mid_train.py@dfc8833,
# chat_sft.py@92d63d4 get_muon_momentum); no warmup, constant weight decay.
_CHAT_SCHEDULE = dict(
    warmup_steps=0,
    momentum_start=0.85,
    momentum_peak=0.95,
    momentum_warmup_steps=300,
    momentum_end=0.95,
    cosine_weight_decay=False,
)

RECIPES: dict[str, Recipe] = {
    # nanochat HEAD: Polar Express + NorMuon + cautious weight decay, warmup 40, warmdown 65% to 0.05
    "2026": Recipe(
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
        # Muon weight decay 0.28 is d12's; the T_epoch rule rescales it per depth (scaling.py)
        muon=dict(lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, orthogonalizer="polar_express", weight_decay=0.28),
    ),
    # October 2025: plain Newton–Schulz Muon and AdamW on embeddings and lm_head only, no weight decay,
    # no warmup, last 20% linearly to 0, momentum 0.85 -> 0.95 over 300 steps
    "oct": Recipe(
        architecture=OCT_2025,
        adamw={
            "lm_head": AdamWGroup(0.004, (0.8, 0.95), 0.0, width_scaled=True),
            "wte": AdamWGroup(0.2, (0.8, 0.95), 0.0, width_scaled=True),
        },
        muon=dict(
            lr=0.02,
            momentum=0.95,
            ns_steps=5,
            orthogonalizer="newton_schulz",
            row_equilibration=False,
            renormalize=False,
            normuon=False,
            cautious_wd=False,
            weight_decay=0.0,
        ),
        schedule=dict(
            warmup_steps=0,
            warmdown_ratio=0.2,
            final_lr_frac=0.0,
            momentum_peak=0.95,
            momentum_warmup_steps=300,
            momentum_end=0.95,
            cosine_weight_decay=False,
        ),
        weight_decay=0.0,
    ),
    # October's midtraining: the base LRs, constant, then the last 20% of the data linearly to 0
    "mid": Recipe(
        architecture=None,
        adamw=None,
        muon=None,
        schedule=dict(_CHAT_SCHEDULE, warmdown_ratio=0.2, final_lr_frac=0.0),
        weight_decay=0.0,
        lr_by_progress=True,
    ),
    # HEAD's SFT: 0.8 of the base LRs, constant, then the second half of the data linearly to 0; pretraining's
    # cosine already took the weight decay to zero, so SFT goes on without it
    "sft": Recipe(
        architecture=None,
        adamw=None,
        muon=None,
        schedule=dict(_CHAT_SCHEDULE, warmdown_ratio=0.5, final_lr_frac=0.0),
        lr_frac=0.8,
        weight_decay=0.0,
        lr_by_progress=True,
    ),
    # October's SFT (after midtraining): 0.02 of the base LRs, linearly to 0 over the whole run
    "sft_oct": Recipe(
        architecture=None,
        adamw=None,
        muon=None,
        schedule=dict(_CHAT_SCHEDULE, warmdown_ratio=1.0, final_lr_frac=0.0, momentum_start=0.95),
        lr_frac=0.02,
        weight_decay=0.0,
        lr_by_progress=True,
    ),
    # RL after SFT (chat_rl.py, the same in October and HEAD): 0.05 of the base LRs, linearly to 0 over the run
    # (lr = initial x (1 - step / steps)); Muon momentum a constant 0.95 and no weight decay, as nanochat's
    # optimizer is built there without schedules on either
    "rl": Recipe(
        architecture=None,
        adamw=None,
        muon=None,
        schedule=dict(_CHAT_SCHEDULE, warmdown_ratio=1.0, final_lr_frac=0.0, momentum_start=0.95),
        lr_frac=0.05,
        weight_decay=0.0,
    ),
}
PRETRAINING_RECIPES = tuple(name for name, recipe in RECIPES.items() if recipe.architecture is not None)
CHAT_RECIPES = tuple(name for name, recipe in RECIPES.items() if recipe.architecture is None)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}, expected one of {', '.join(RECIPES)}")
    return RECIPES[name]
