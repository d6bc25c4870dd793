"""The optimizer side of training: MuonAdamW (muon_adamw), the recipes with their param groups and schedules
(recipes), and the depth rules (scaling)."""
