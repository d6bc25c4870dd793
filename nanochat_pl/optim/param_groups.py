"""Which parameters get which update: nanochat's per-family optimizer settings, for both recipes.

The model hands over its parameters by family (GPT.param_families() in model/gpt.py); each non-empty
family becomes one param group named after it, which is also the name LearningRateMonitor logs.
"""

from __future__ import annotations

from torch import Tensor

from nanochat_pl.common import UserError

FAMILIES = ("lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "scalars", "matrices")
RECIPES = ("2026", "oct")

# AdamW learning rates were tuned at model_dim 768 and scale as 1/sqrt(model_dim) for the embeddings and
# lm_head (nanochat gpt.py@92d63d4 setup_optimizer). Every group: (lr, betas, weight decay, width-scaled).
_ADAMW_2026 = {
    "lm_head": (0.008, (0.8, 0.96), 0.01, True),
    "wte": (0.3, (0.8, 0.995), 0.001, True),
    "value_embeds": (0.15, (0.8, 0.995), 0.01, True),
    # the residual scalars need ~100x smaller LR than x0's (dev/LOG.md); x0 takes beta1 0.96 (0.98 diverged)
    "resid_lambdas": (0.005, (0.8, 0.95), 0.05, False),
    "x0_lambdas": (0.5, (0.96, 0.95), 0.0, False),
    "scalars": (0.2, (0.8, 0.95), 0.0, False),
}
# October 2025 (gpt.py@dfc8833 setup_optimizers): only embeddings and lm_head, one set of betas, no decay.
_ADAMW_OCT = {
    "lm_head": (0.004, (0.8, 0.95), 0.0, True),
    "wte": (0.2, (0.8, 0.95), 0.0, True),
}
# Muon (matrices). HEAD: the full MuonAdamW step with weight decay 0.28 at the d12 reference (scaling.py
# rescales it per depth). October: plain Newton–Schulz Muon, no decay.
_MUON_2026 = dict(lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, orthogonalizer="polar_express", weight_decay=0.28)
_MUON_OCT = dict(
    lr=0.02,
    momentum=0.95,
    ns_steps=5,
    orthogonalizer="newton_schulz",
    row_equilibration=False,
    renormalize=False,
    normuon=False,
    cautious_wd=False,
    weight_decay=0.0,
)
ADAMW_EPS = 1e-10


def build_param_groups(
    named_families: dict[str, list[Tensor]],
    model_dim: int,
    recipe: str = "2026",
    lr_scale: float = 1.0,
    weight_decay: float | None = None,
) -> list[dict]:
    """Param groups for MuonAdamW, one per non-empty family.

    Args:
        named_families: parameters keyed by family: "lm_head", "wte", "value_embeds", "resid_lambdas",
            "x0_lambdas", "scalars" (AdamW) and "matrices" (Muon).
        model_dim: the model width; AdamW rates of embeddings and lm_head scale by (model_dim/768)^-0.5.
        recipe: "2026" (nanochat HEAD) or "oct" (the October 2025 release).
        lr_scale: multiplies every learning rate (the batch-size rule sqrt(B/2^19), see scaling.py).
        weight_decay: Muon weight decay; None takes the recipe's (0.28 at d12 for 2026, 0 for oct).
    """
    if recipe not in RECIPES:
        raise UserError(f"unknown optimizer recipe {recipe!r}, expected one of {RECIPES}")
    unknown = set(named_families) - set(FAMILIES)
    if unknown:
        raise UserError(f"unknown parameter families {sorted(unknown)}, expected some of {FAMILIES}")
    adamw = _ADAMW_2026 if recipe == "2026" else _ADAMW_OCT
    width_scale = (model_dim / 768) ** -0.5
    groups = []
    for family in FAMILIES:
        params = list(named_families.get(family, []))
        if not params:
            continue
        if family == "matrices":
            muon = dict(_MUON_2026 if recipe == "2026" else _MUON_OCT)
            if weight_decay is not None:
                muon["weight_decay"] = weight_decay
            muon["lr"] *= lr_scale
            groups.append(dict(kind="muon", name=family, params=params, **muon))
            continue
        if family not in adamw:
            raise UserError(f"the {recipe!r} optimizer recipe has no settings for parameter family {family!r}")
        lr, betas, wd, width_scaled = adamw[family]
        # nanochat HEAD leaves the smear/backout scalars at 0.2 whatever the batch (base_train.py@92d63d4
        # scales unembedding, embedding, scalar and matrix LRs, and smear's is a constant in setup_optimizer)
        batch_scale = 1.0 if family == "scalars" else lr_scale
        lr = lr * (width_scale if width_scaled else 1.0) * batch_scale
        groups.append(
            dict(kind="adamw", name=family, params=params, lr=lr, betas=betas, eps=ADAMW_EPS, weight_decay=wd)
        )
    return groups
