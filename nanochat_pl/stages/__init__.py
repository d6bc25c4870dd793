"""LightningModules, one per stage: base (pretraining), chat (mid + SFT), rl (GRPO)."""
