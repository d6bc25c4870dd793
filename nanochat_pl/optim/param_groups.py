"""Which parameters get which update: nanochat's per-family optimizer settings, for both recipes.

The model hands over its parameters by family (GPT.param_families() in model/gpt.py); each non-empty
family becomes one param group named after it, which is also the name LearningRateMonitor logs.
"""

from __future__ import annotations

from torch import Tensor

from nanochat_pl.common import UserError
from nanochat_pl.optim.recipes import PRETRAINING_RECIPES, get_recipe

FAMILIES = ("lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "scalars", "matrices")
ADAMW_EPS = 1e-10


def build_param_groups(
    named_families: dict[str, list[Tensor]],
    model_dim: int,
    recipe: str = "2026",
    lr_scale: float = 1.0,
    weight_decay: float | None = None,
    lr_frac: float = 1.0,
) -> list[dict]:
    """Param groups for MuonAdamW, one per non-empty family.

    Args:
        named_families: parameters keyed by family: "lm_head", "wte", "value_embeds", "resid_lambdas",
            "x0_lambdas", "scalars" (AdamW) and "matrices" (Muon).
        model_dim: the model width; AdamW rates of embeddings and lm_head scale by (model_dim/768)^-0.5.
        recipe: the pretraining recipe whose settings to use (optim/recipes.py): "2026" (nanochat HEAD) or
            "oct" (the October 2025 release); a chat stage passes its checkpoint's.
        lr_scale: multiplies every learning rate (the batch-size rule sqrt(B/2^19), see scaling.py).
        weight_decay: Muon weight decay; None takes the recipe's (0.28 at d12 for 2026, 0 for oct).
        lr_frac: multiplies every learning rate, the smear/backout scalars' too (a chat stage's fraction of the
            base run's rates, nanochat chat_sft.py@92d63d4 init_lr_frac).
    """
    if recipe not in PRETRAINING_RECIPES:
        raise UserError(f"unknown optimizer recipe {recipe!r}, expected one of {PRETRAINING_RECIPES}")
    settings = get_recipe(recipe)
    unknown = set(named_families) - set(FAMILIES)
    if unknown:
        raise UserError(f"unknown parameter families {sorted(unknown)}, expected some of {FAMILIES}")
    width_scale = (model_dim / 768) ** -0.5
    groups = []
    for family in FAMILIES:
        params = list(named_families.get(family, []))
        if not params:
            continue
        if family == "matrices":
            muon = dict(settings.muon)
            if weight_decay is not None:
                muon["weight_decay"] = weight_decay
            muon["lr"] *= lr_scale * lr_frac
            groups.append(dict(kind="muon", name=family, params=params, **muon))
            continue
        if family not in settings.adamw:
            raise UserError(f"the {recipe!r} optimizer recipe has no settings for parameter family {family!r}")
        adamw = settings.adamw[family]
        lr = adamw.lr * (width_scale if adamw.width_scaled else 1.0) * (lr_scale if adamw.batch_scaled else 1.0)
        group = dict(kind="adamw", name=family, params=params, lr=lr * lr_frac, betas=adamw.betas, eps=ADAMW_EPS)
        groups.append(dict(group, weight_decay=adamw.weight_decay))
    return groups
