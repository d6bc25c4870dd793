"""The optimizer side of training: MuonAdamW, its param groups, per-step schedules, depth-derived settings."""

from nanochat_pl.optim.muon_adamw import MuonAdamW
from nanochat_pl.optim.param_groups import FAMILIES, build_param_groups
from nanochat_pl.optim.scaling import TrainingPlan, grad_accumulation_steps, plan_from_depth
from nanochat_pl.optim.schedules import Schedule, apply_muon_schedules

__all__ = [
    "FAMILIES",
    "MuonAdamW",
    "Schedule",
    "TrainingPlan",
    "apply_muon_schedules",
    "build_param_groups",
    "grad_accumulation_steps",
    "plan_from_depth",
]
