"""Pretraining: the GPT backbone, one MuonAdamW, and everything the run derives from its depth.

The LightningModule owns the loss, the optimizer and its schedules, what is logged, and the plan: from `depth`
alone it derives the model shape (GPTConfig.from_depth), the token horizon, the total batch, the learning-rate
and weight-decay scaling (optim/scaling.py), and from those plus the trainer's world size and the data module's
batch shape the gradient accumulation and the number of steps. Any of them can be set in the config instead.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from nanochat_pl.checkpoint import CHECKPOINT_KEY, check_vocab_matches
from nanochat_pl.common import UserError
from nanochat_pl.evals.bpb import BitsPerByte
from nanochat_pl.model.gpt import GPT, OCT_2025, GPTConfig
from nanochat_pl.optim import (
    MuonAdamW,
    Schedule,
    apply_muon_schedules,
    build_param_groups,
    grad_accumulation_steps,
    plan_from_depth,
)
from nanochat_pl.stages.callbacks import FinalCheckpoint, TokenThroughputMonitor
from nanochat_pl.stages.samples import log_samples
from nanochat_pl.tokenizer import get_tokenizer, tokenizer_location

Recipe = Literal["2026", "oct"]
# GPTConfig fields the stage derives itself; `architecture` may set any of the others
SHAPE_FIELDS = {"n_layer", "n_head", "n_embd", "sequence_len", "vocab_size"}


class BaseTraining(L.LightningModule):
    """Pretrain a GPT of a given depth on a token stream (the data module yields (inputs, targets)).

    Args:
        depth: Number of transformer layers; sets the width (depth·aspect_ratio) and, unless overridden, the
            token horizon, total batch, learning rates and weight decay.
        sequence_len: Context length T (also given to the data module).
        tokenizer_dir: Tokenizer directory; default: the data home's tokenizer/ (also given to the data module).
        recipe: "2026" (nanochat HEAD: sliding windows, value embeddings, residual scalars, smear, backout,
            Polar Express + NorMuon + cautious weight decay, warmdown 65%) or "oct" (the October 2025
            architecture, optimizer groups and schedule; the horizon, batch and LR scaling still come from the
            2026 depth rules, and the data is packed by best fit: set target_param_data_ratio, total_batch_tokens
            and lr_scale to reproduce October's 20x-params horizon at 524,288 tokens per step).
        aspect_ratio: Width per layer (model_dim = depth · aspect_ratio rounded up to head_dim).
        head_dim: Channels per attention head.
        architecture: Any other GPTConfig field to override, e.g. {window_pattern: L, n_kv_head: 2}.
        target_param_data_ratio: Training tokens per scaling parameter (matrices + lm_head).
        total_batch_tokens: Tokens per optimizer step over all devices; default derived from the horizon.
        num_iterations: Optimizer steps; default horizon / total batch. `trainer.max_steps`, if set, wins.
        lr_scale: Multiplier on the learning rates (all but the smear/backout scalars', as nanochat); default
            sqrt(total batch / 2^19).
        weight_decay: Muon weight decay; default from the T_epoch rule (0.28 at d12).
        warmdown_ratio: Fraction of the run over which the learning rate decays; default the recipe's.
        eval_every: Optimizer steps between validations (bits per byte); sets trainer.val_check_interval.
        sample_every: Optimizer steps between samples from fixed prompts (0: never); at validation time.
        compile: torch.compile the GPT's training forward (faster on GPUs and CPUs alike; the first steps then
            take a minute or more).
    """

    stage_name = "base"

    def __init__(
        self,
        depth: int = 20,
        sequence_len: int = 2048,
        tokenizer_dir: str | None = None,
        recipe: Recipe = "2026",
        aspect_ratio: int = 64,
        head_dim: int = 128,
        architecture: dict[str, Any] | None = None,
        target_param_data_ratio: float = 12.0,
        total_batch_tokens: int | None = None,
        num_iterations: int | None = None,
        lr_scale: float | None = None,
        weight_decay: float | None = None,
        warmdown_ratio: float | None = None,
        eval_every: int = 250,
        sample_every: int = 2000,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        tokenizer = get_tokenizer(tokenizer_dir)
        overrides = {**(OCT_2025 if recipe == "oct" else {}), **(architecture or {})}
        unknown = set(overrides) - set(GPTConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"model.architecture has unknown GPTConfig fields: {', '.join(sorted(unknown))}")
        shaped_elsewhere = set(overrides) & SHAPE_FIELDS
        if shaped_elsewhere:
            raise UserError(
                f"model.architecture cannot set {', '.join(sorted(shaped_elsewhere))}: they follow from depth, "
                "aspect_ratio, head_dim, sequence_len and the tokenizer"
            )
        self.gpt_config = GPTConfig.from_depth(
            depth,
            vocab_size=tokenizer.vocab_size,
            sequence_len=sequence_len,
            aspect_ratio=aspect_ratio,
            head_dim=head_dim,
            **overrides,
        )
        self.tokenizer = tokenizer
        self.model: GPT | None = None
        self.val_bpb = BitsPerByte(tokenizer.token_bytes())
        self.plan = None
        self.schedule: Schedule | None = None

    # ---- the model -------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Build the GPT straight on the training device: a large model never materialises on the CPU first."""
        if self.model is not None:
            return
        model = _meta_model(self.gpt_config)
        model.to_empty(device=self.trainer.strategy.root_device if self._trainer else "cpu")
        model.init_weights()
        # Training and validation go through the compiled forward (fixed shapes, compiled once); samples use the
        # eager model, whose KV-cached calls change shape every token and would recompile each time. Compiling
        # the bound method keeps the state-dict keys free of `_orig_mod.`.
        self.forward_fn = torch.compile(model.forward, dynamic=False) if self.hparams.compile else model.forward
        self.model = model

    # ---- the plan --------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        h = self.hparams
        model = _meta_model(self.gpt_config)  # counts only: the real one is built in configure_model
        reference = GPTConfig.from_depth(12, self.gpt_config.vocab_size, h.sequence_len, h.aspect_ratio, h.head_dim)
        trainer = self.trainer
        self.plan = plan_from_depth(
            h.depth,
            model.num_scaling_params(),
            _meta_model(reference).num_scaling_params(),
            target_param_data_ratio=h.target_param_data_ratio,
            total_batch_tokens=h.total_batch_tokens,
            num_iterations=trainer.max_steps if trainer.max_steps > 0 else h.num_iterations,
            lr_scale=h.lr_scale,
            weight_decay=h.weight_decay,
        )
        device_batch_size = trainer.datamodule.device_batch_size
        accumulation = grad_accumulation_steps(
            self.plan.total_batch_tokens, device_batch_size, h.sequence_len, trainer.world_size
        )
        # Values derived from depth reach the Trainer here, the first place where the world size is known.
        trainer.accumulate_grad_batches = accumulation
        trainer.fit_loop.epoch_loop.max_steps = self.plan.num_iterations
        trainer.val_check_interval = h.eval_every * accumulation  # counted in micro-batches
        overrides = {} if h.warmdown_ratio is None else {"warmdown_ratio": h.warmdown_ratio}
        self.schedule = Schedule.for_recipe(h.recipe, self.plan.num_iterations, **overrides)
        self.flops_per_batch = model.flops_per_token(h.sequence_len) * device_batch_size * h.sequence_len
        rank_zero_info(self._describe(model, device_batch_size, accumulation))

    def _describe(self, model: GPT, device_batch_size: int, accumulation: int) -> str:
        cfg = self.gpt_config
        lines = [
            "",
            f"GPT d{cfg.n_layer}: width {cfg.n_embd}, {cfg.n_head} heads ({cfg.n_kv_head} kv) of {cfg.head_dim}, "
            f"vocab {cfg.vocab_size:,}, windows {cfg.window_pattern}, recipe {self.hparams.recipe}",
            f"parameters {model.num_params():,}; FLOPs/token {model.flops_per_token():.3e}",
            self.plan.describe(),
            f"device batch {device_batch_size} x {self.hparams.sequence_len} tokens x {self.trainer.world_size} "
            f"devices x {accumulation} accumulation steps",
            "",
        ]
        return "\n".join(lines)

    # ---- optimisation ----------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        groups = build_param_groups(
            self.model.param_families(),
            self.gpt_config.n_embd,
            recipe=self.hparams.recipe,
            lr_scale=self.plan.lr_scale,
            # October's Muon had no weight decay: the T_epoch rule applies to the 2026 recipe only
            weight_decay=self.plan.weight_decay if self.hparams.recipe == "2026" else self.hparams.weight_decay,
        )
        optimizer = MuonAdamW(groups)
        scheduler = LambdaLR(optimizer, self.schedule.lr_multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        apply_muon_schedules(optimizer, self.global_step, self.schedule)

    def configure_callbacks(self) -> list[L.Callback]:
        # LearningRateMonitor refuses to start without a logger (`trainer.logger: false`)
        lr_monitor = [LearningRateMonitor(logging_interval="step")] if self.trainer.loggers else []
        return [*lr_monitor, TokenThroughputMonitor(), FinalCheckpoint()]

    # ---- steps -----------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self.forward_fn(inputs, targets)
        self.log("train/loss", loss, prog_bar=True)
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "crop_fraction"):
            self.log("train/crop_fraction", datamodule.crop_fraction)
            self.log("train/epoch", float(datamodule.epoch))  # > 0: the run is repeating its data
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Stopping here, rather than at Lightning's max_steps check, lets the final validation run: a run's
        # last steps (the end of the warmdown) are always measured, as nanochat evaluates at its last step.
        if self.plan is not None and self.global_step >= self.plan.num_iterations:
            self.trainer.should_stop = True

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        token_losses = self.forward_fn(inputs, targets, loss_reduction="none")
        self.val_bpb.update(token_losses, targets)
        self.log("val/bpb", self.val_bpb, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        every, step = self.hparams.sample_every, self.global_step
        # validation runs every eval_every steps: sample at the first validation at or after each multiple
        if every and self.trainer.state.fn == "fit" and step > 0 and step % every < self.hparams.eval_every:
            log_samples(self)

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "stage": self.stage_name,
            "gpt_config": asdict(self.gpt_config),
            "tokenizer_dir": str(tokenizer_location(self.hparams.tokenizer_dir)),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_vocab_matches(checkpoint, self.tokenizer)
        saved = checkpoint[CHECKPOINT_KEY]["gpt_config"]
        differ = sorted(k for k, v in asdict(self.gpt_config).items() if saved.get(k) != v)
        if differ:
            changes = ", ".join(f"{k} {saved.get(k)!r} -> {getattr(self.gpt_config, k)!r}" for k in differ)
            raise UserError(f"the checkpoint is of another model than this config builds ({changes})")


def _meta_model(config: GPTConfig) -> GPT:
    """The GPT's structure without memory behind it: for counting, or to materialise with to_empty()."""
    with torch.device("meta"):
        return GPT(config)
