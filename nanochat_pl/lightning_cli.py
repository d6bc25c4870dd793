"""`nanochat-pl fit|validate|test`: LightningCLI with the conventions every stage shares.

The stage and its data module are chosen by `class_path`; the model's `sequence_len` and `tokenizer_dir` are linked
to the data module's; runs land in `$NANOCHAT_PL_HOME/runs/<stage>/`; checkpoints are written atomically. With
`--ckpt_path` (`last`: the stage's newest checkpoint) the checkpoint's model settings and tokenizer win over the
config's, each said in a line. Errors in the config, while a module is built and out of memory are one line. The
stage builds its own optimizer (MuonAdamW's groups), so LightningCLI must not inject one over `model.parameters()`.
"""

from __future__ import annotations

import pydoc
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from nanochat_pl.checkpoint import AtomicCheckpointIO, check_checkpoint_file, newest_checkpoint, peek_checkpoint
from nanochat_pl.common import CHECKPOINT_KEY, UserError, causes, home_dir
from nanochat_pl.nanochat_format import is_nanochat_checkpoint

# lines of jsonargparse's error tree that carry no information
_ERROR_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")


class NanochatCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.sequence_len", "data.init_args.sequence_len")
        parser.link_arguments("model.init_args.tokenizer_dir", "data.init_args.tokenizer_dir")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            # jsonargparse explains a bad value of a `class_path` option as a tree (which union member, which class,
            # which key): the lines that carry information are the first and the innermost ones
            lines = [line.strip() for line in str(error).strip().splitlines()]
            kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_ERROR_NOISE)]
            command = (sys.argv[1:] if args is None else args)[:1] or ["fit"]
            raise UserError(f"{' '.join(kept)} (see `nanochat-pl {command[0]} --help`)") from None
        config = self.config[self.config.subcommand]  # run=True: always one
        if config.trainer.default_root_dir is None:
            module = pydoc.locate(config.model.class_path)
            stage = getattr(module, "stage_name", "run")  # a chat stage's depends on its recipe (`stage_of`)
            stage = module.stage_of(config.model.init_args) if hasattr(module, "stage_of") else stage
            config.trainer.default_root_dir = str(home_dir() / "runs" / stage)
        # `last` becomes a path before the checkpoint's settings are read (_parse_ckpt_path), and a path is checked
        # before LightningCLI torch.loads it (a traceback); Lightning's other names and URLs are left to Lightning
        if config.get("ckpt_path") == "last":
            config.ckpt_path = str(newest_checkpoint(Path(config.trainer.default_root_dir)))
        if config.get("ckpt_path") and config.ckpt_path not in ("best", "hpc") and ":" not in config.ckpt_path:
            if is_nanochat_checkpoint(config.ckpt_path):
                raise UserError(f"{config.ckpt_path} is a nanochat checkpoint: start a stage from it (model.init_from)")
            check_checkpoint_file(config.ckpt_path)

    def _parse_ckpt_path(self) -> None:
        """With `--ckpt_path`, the checkpoint's model settings (its weights' own) win over the config's, command line
        included. LightningCLI applies them; this first says, a line per setting, which of the config's it overrides."""
        subcommand = self.config.subcommand
        ckpt_path = self.config[subcommand].get("ckpt_path")
        checkpoint = peek_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
        if checkpoint is not None:
            model = self.config[subcommand].model
            # LightningCLI saved the module's class as `_class_path` beside its arguments, and its own `_instantiator`
            saved = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
            given = {"_class_path": model.class_path, **model.init_args.as_dict()}  # every argument, defaults included
            unknown = ", ".join(sorted(set(saved) - set(given)))  # a checkpoint of an older version of the module
            if unknown and saved.get("_class_path", model.class_path) == model.class_path:  # else a tree of errors
                raise UserError(
                    f"{ckpt_path} was trained with settings that {model.class_path} no longer takes: {unknown}"
                )
            for key, value in saved.items():
                if key in given and given[key] != value and rank_zero_only.rank == 0:  # every DDP process parses
                    said = f"config {given[key]!r}, checkpoint {value!r} -> using the checkpoint's"
                    print(f"model.{key.removeprefix('_')}: {said}", file=sys.stderr)
        super()._parse_ckpt_path()
        if checkpoint is not None and "tokenizer" in checkpoint.get(CHECKPOINT_KEY, {}):
            # the tokenizer the weights were trained with, which the checkpoint carries (its directory may be gone)
            for part in ("model", "data"):
                init_args = self.config[subcommand][part].get("init_args")
                if init_args is not None and "tokenizer_dir" in init_args:
                    init_args.tokenizer_dir = ckpt_path

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            # jsonargparse reports a failing constructor as a tree of every Union subtype tried, its exception the cause
            cause = next((cause for cause in causes(error) if isinstance(cause, UserError)), None)
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default writer
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (torch.OutOfMemoryError, RuntimeError) as error:  # a CPU's is a RuntimeError of its allocator
            text = str(error).split("DefaultCPUAllocator: ")[-1]
            if not isinstance(error, torch.OutOfMemoryError) and not text.startswith("can't allocate memory"):
                raise
            reason = ". ".join(text.split(". ")[:2])  # "CUDA out of memory. Tried to allocate 2.00 GiB"
            part = "data" if hasattr(self.datamodule, "device_batch_size") else "model"  # RL: the model's
            flag = f"--{part}.init_args.device_batch_size"
            raise UserError(f"out of device memory: {reason} (lower {flag}; accumulation keeps the batch)") from None


def run_lightning_cli(args: list[str], trainer_defaults: dict | None = None) -> NanochatCLI:
    """Parse `args` (fit/validate/test and options) and run; `trainer_defaults`: fixed Trainer arguments (callbacks)."""
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
