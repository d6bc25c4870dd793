"""`nanochat-pl fit|validate|test`: LightningCLI with the few conventions every stage shares.

- The stage (LightningModule) and its data module are chosen by `class_path` in the YAML, so one command runs
  pretraining, midtraining, SFT or RL.
- The model owns `sequence_len` and `tokenizer_dir`; the data module receives them (linked), so they are typed once.
- Runs land in `$NANOCHAT_PL_HOME/runs/<stage>/` unless `trainer.default_root_dir` says otherwise.
- Checkpoints are written by `AtomicCheckpointIO` (a temporary file beside the target, then a rename) unless
  the config chooses another checkpoint plugin.
- `--ckpt_path last` is the newest run's last.ckpt. With it or a path, the checkpoint's model settings win over the
  config's, and each one they override is said in one line; the tokenizer is the one the checkpoint carries.
- A `UserError` raised while a module is built is printed as its one line, not as jsonargparse's tree.
- The stage builds its own optimizer (one MuonAdamW with per-group settings), so LightningCLI must not inject one
  over `model.parameters()` (that would silently drop the Muon/AdamW grouping).
"""

from __future__ import annotations

import importlib
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from nanochat_pl.checkpoint import AtomicCheckpointIO, check_checkpoint_file, latest_last_checkpoint, peek_checkpoint
from nanochat_pl.common import CHECKPOINT_KEY, UserError, home_dir
from nanochat_pl.nanochat_format import is_nanochat_checkpoint


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
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.trainer.default_root_dir is None:
            module_name, _, class_name = config.model.class_path.rpartition(".")
            stage = getattr(getattr(importlib.import_module(module_name), class_name), "stage_name", "run")
            config.trainer.default_root_dir = str(home_dir() / "runs" / stage)
        # `last` becomes a path here, before the checkpoint's settings are read (_parse_ckpt_path), so that it and a
        # path given by hand are treated alike. Checked before LightningCLI torch.loads the file, which fails with a
        # traceback; Lightning's other names ("best", "hpc", "registry:...") and URLs are left to Lightning.
        if config.get("ckpt_path") == "last":
            config.ckpt_path = str(latest_last_checkpoint(Path(config.trainer.default_root_dir)))
        elif config.get("ckpt_path") and config.ckpt_path not in ("best", "hpc") and ":" not in config.ckpt_path:
            if is_nanochat_checkpoint(config.ckpt_path):
                raise UserError(f"{config.ckpt_path} is a nanochat checkpoint: start a stage from it (model.init_from)")
            check_checkpoint_file(config.ckpt_path)

    def _parse_ckpt_path(self) -> None:
        """With `--ckpt_path`, the checkpoint's model settings win over the config's, command line included: they
        are the ones its weights were trained with. LightningCLI applies them (`_parse_ckpt_path`, Lightning 2.6);
        this first says, one line per setting, which of the config's it overrides."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        checkpoint = peek_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
        if checkpoint is not None:
            for line in _overridden_settings(ckpt_path, checkpoint, self.config[subcommand].model):
                _print_rank_zero(line)
        super()._parse_ckpt_path()
        if checkpoint is not None and "tokenizer" in checkpoint.get(CHECKPOINT_KEY, {}):
            # the run goes on with the tokenizer its weights were trained with, which the checkpoint carries: a
            # checkpoint copied to another machine resumes there (its recorded directory may not exist)
            for part in ("model", "data"):
                init_args = self.config[subcommand][part].get("init_args")
                if init_args is not None and "tokenizer_dir" in init_args:
                    init_args.tokenizer_dir = ckpt_path

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            # jsonargparse reports a module's constructor failing as "Does not validate against any of the Union
            # subtypes ...", a tree of every subtype tried, with the constructor's exception as its cause
            user_error = _user_error_in(error)
            if user_error is None:
                raise
            raise user_error from None

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


def _overridden_settings(ckpt_path: str, checkpoint: dict[str, Any], model: Namespace) -> list[str]:
    """`model.KEY: config A, checkpoint B -> using the checkpoint's` for each setting the checkpoint (its dict,
    as `peek_checkpoint` reads it) changes; a UserError if it has settings the module no longer takes (a
    checkpoint of an older version). LightningCLI saves the module's class as `_class_path` beside its arguments,
    and its own `_instantiator`."""
    saved = {key: value for key, value in checkpoint.get("hyper_parameters", {}).items() if key != "_instantiator"}
    given = {"_class_path": model.class_path, **model.init_args.as_dict()}  # every argument, defaults included
    unknown = sorted(set(saved) - set(given))
    if unknown and saved.get("_class_path", model.class_path) == model.class_path:  # else a tree of errors follows
        raise UserError(
            f"{ckpt_path} was trained with settings that {model.class_path} no longer takes: {', '.join(unknown)}"
        )
    lines = []
    for key, value in saved.items():
        if key in given and given[key] != value:
            name = key.removeprefix("_")
            lines.append(f"model.{name}: config {given[key]!r}, checkpoint {value!r} -> using the checkpoint's")
    return lines


def _print_rank_zero(line: str) -> None:
    if rank_zero_only.rank == 0:  # every DDP process parses the command line
        print(line, file=sys.stderr)


def _user_error_in(error: BaseException) -> UserError | None:
    """The UserError among `error` and its causes, if any."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    return error
