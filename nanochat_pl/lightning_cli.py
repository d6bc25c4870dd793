"""`nanochat-pl fit|validate|test`: LightningCLI with the few conventions every stage shares.

- The stage (LightningModule) and its data module are chosen by `class_path` in the YAML, so one command runs
  pretraining, midtraining, SFT or RL.
- The model owns `sequence_len` and `tokenizer_dir`; the data module receives them (linked), so they are typed once.
- Runs land in `$NANOCHAT_PL_HOME/runs/<stage>/` unless `trainer.default_root_dir` says otherwise.
- Checkpoints are written by `AtomicCheckpointIO` (a temporary file beside the target, then a rename) unless
  the config chooses another checkpoint plugin.
- The stage builds its own optimizer (one MuonAdamW with per-group settings), so LightningCLI must not inject one
  over `model.parameters()` (that would silently drop the Muon/AdamW grouping).
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nanochat_pl.checkpoint import AtomicCheckpointIO
from nanochat_pl.common import home_dir


class NanochatCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.sequence_len", "data.init_args.sequence_len")
        parser.link_arguments("model.init_args.tokenizer_dir", "data.init_args.tokenizer_dir")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.trainer.default_root_dir is None:
            module_name, _, class_name = config.model.class_path.rpartition(".")
            stage = getattr(getattr(importlib.import_module(module_name), class_name), "stage_name", "run")
            config.trainer.default_root_dir = str(home_dir() / "runs" / stage)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default writer
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def run_lightning_cli(args: list[str], trainer_defaults: dict | None = None) -> NanochatCLI:
    """Parse `args` (fit/validate/test and their options) and run; `trainer_defaults` adds fixed Trainer
    arguments, e.g. callbacks that a benchmark needs whatever the config says."""
    return NanochatCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        trainer_defaults=trainer_defaults,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites config.yaml instead of refusing to start
    )
