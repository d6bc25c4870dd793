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
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nanochat_pl.checkpoint import AtomicCheckpointIO, check_checkpoint_file
from nanochat_pl.common import UserError, home_dir


class NanochatCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.sequence_len", "data.init_args.sequence_len")
        parser.link_arguments("model.init_args.tokenizer_dir", "data.init_args.tokenizer_dir")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            hint = f"see `nanochat-pl {_subcommand(args)} --help`"
            raise UserError(f"{_config_error(str(error))} ({hint})") from None
        # before LightningCLI torch.loads the checkpoint for its hyperparameters, which fails with a traceback;
        # Lightning's own names ("last", "best", "hpc", "registry:...") and URLs are left to Lightning
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and ":" not in ckpt_path:
            check_checkpoint_file(ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.trainer.default_root_dir is None:
            module_name, _, class_name = config.model.class_path.rpartition(".")
            stage = getattr(getattr(importlib.import_module(module_name), class_name), "stage_name", "run")
            config.trainer.default_root_dir = str(home_dir() / "runs" / stage)
        if config.get("ckpt_path") == "last":
            config.ckpt_path = str(_latest_last_checkpoint(Path(config.trainer.default_root_dir)))

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
        # the command line itself is left for LightningCLI to read: given it twice, it warns on every run
        args=None if args == sys.argv[1:] else args,
        trainer_defaults=trainer_defaults,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites config.yaml instead of refusing to start
        parser_kwargs={"exit_on_error": False},  # a config error becomes one line (parse_arguments), not usage
    )


# jsonargparse explains a bad value of a `class_path` option as a tree: which union member, which class, which
# key. The lines that carry information are the first and the innermost ones.
_CONFIG_ERROR_NOISE = (
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Expected a <class 'NoneType'>",
)


def _config_error(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines()]
    kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_CONFIG_ERROR_NOISE)]
    return " ".join(kept)


def _subcommand(args: Any) -> str:
    arguments = sys.argv[1:] if args is None else args
    return arguments[0] if arguments else "fit"


def _latest_last_checkpoint(root_dir: Path) -> Path:
    """`--ckpt_path last`: the newest run's last.ckpt. Lightning alone looks only in the new run's own folder
    (a fresh version_N), finds nothing and silently starts from scratch."""
    candidates = sorted(root_dir.glob("lightning_logs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"--ckpt_path last: no last.ckpt under {root_dir}/lightning_logs/*/checkpoints to resume from")
    check_checkpoint_file(candidates[-1])
    return candidates[-1]
