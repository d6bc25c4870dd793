"""What every training stage shares: the GPT built on the device, one MuonAdamW with its schedules, the Trainer
wiring of accumulation / steps / validation interval, stopping, bits per byte, and the checkpoint's metadata.

A stage is a thin subclass: it decides the model (`gpt_config`, and how its weights start: `init_model`) and the
plan of the run (`plan_run`: steps, accumulation, learning-rate scale, weight decay, schedule); everything else
lives here once. Pretraining (stages/base.py) plans from depth; the chat stages (stages/chat.py) start from a
checkpoint and run until their data is used up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from nanochat_pl.checkpoint import CHECKPOINT_KEY, check_vocab_matches
from nanochat_pl.common import UserError
from nanochat_pl.evals.bpb import BitsPerByte
from nanochat_pl.model.fp8 import convert_to_float8
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.optim import MuonAdamW, Schedule, apply_muon_schedules, build_param_groups
from nanochat_pl.stages.callbacks import FinalCheckpoint, StepProgressBar, TokenThroughputMonitor
from nanochat_pl.stages.samples import log_samples
from nanochat_pl.tokenizer import Tokenizer


@dataclass(frozen=True)
class RunPlan:
    """What a stage decides about its run once the Trainer (world size) and the data (batch shape) are known.

    Args:
        recipe: The pretraining recipe whose optimizer settings the parameter groups take (optim/recipes.py).
        schedule: LR, Muon momentum and weight-decay schedules.
        lr_scale: Batch-size rule on the learning rates (scaling.py), as the base run used it.
        lr_frac: Fraction of those learning rates this stage trains with.
        weight_decay: Muon weight decay at the start of the run.
        accumulation: Micro-batches per optimizer step on each device.
        max_steps: Optimizer steps; None: until the data module says its data is used up.
        summary: Lines printed at the start of the run.
    """

    recipe: str
    schedule: Schedule
    lr_scale: float
    lr_frac: float
    weight_decay: float
    accumulation: int
    max_steps: int | None
    summary: str


class LanguageModelStage(L.LightningModule, ABC):
    """A GPT trained on (inputs, targets) token batches, targets -1 where no loss is taken.

    A subclass's `__init__` saves its hyperparameters, which include `eval_every` and `sample_every` (and may
    include `compile`), and calls `set_model`; it implements `init_model` and `plan_run`.
    """

    stage_name = "run"
    chat_samples = False  # sample replies to chat prompts rather than continuations of text

    def set_model(self, gpt_config: GPTConfig, tokenizer: Tokenizer, tokenizer_dir: Path | None) -> None:
        """The model the stage trains (its config, built in `configure_model`) and its tokenizer."""
        self.gpt_config = gpt_config
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir
        self.model: GPT | None = None
        self.val_bpb = BitsPerByte(tokenizer.token_bytes())
        self.plan: RunPlan | None = None
        self._checked_step = -1  # the last optimizer step whose end was checked for stopping

    # ---- what a stage decides --------------------------------------------------------------------------------

    @abstractmethod
    def init_model(self, model: GPT) -> None:
        """Give the freshly materialised `model` its starting weights."""

    @abstractmethod
    def plan_run(self, device_batch_size: int) -> RunPlan:
        """The run's plan, called at fit time when `self.trainer` knows the world size."""

    def device_batch_size(self) -> int:
        """Rows of one forward/backward pass on each device: the data module's batch, unless the stage makes its own."""
        return self.trainer.datamodule.device_batch_size

    def data_exhausted(self) -> bool:
        """Whether this rank's data for the run is used up (a stage that ends with its data says so)."""
        return False

    def lr_multiplier(self, step: int) -> float:
        """The factor on every group's initial LR for optimizer step `step`."""
        return self.plan.schedule.lr_multiplier(step)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What the next stage inherits from this one's checkpoint, beyond the model and the tokenizer."""
        return {}

    # ---- the model -------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Build the GPT straight on the training device: a large model never materialises on the CPU first."""
        if self.model is not None:
            return
        model = meta_model(self.gpt_config)
        model.to_empty(device=self.trainer.strategy.root_device if self._trainer else "cpu")
        self.init_model(model)
        if self.hparams.get("fp8", False):  # before compiling, as nanochat converts before torch.compile
            convert_to_float8(model)
        # Training and validation go through the compiled forward (fixed shapes, compiled once); samples use the
        # eager model, whose KV-cached calls change shape every token and would recompile each time. Compiling
        # the bound method keeps the state-dict keys free of `_orig_mod.`.
        compile_forward = self.hparams.get("compile", False)
        self.forward_fn = torch.compile(model.forward, dynamic=False) if compile_forward else model.forward
        self.model = model

    # ---- the plan --------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer = self.trainer
        device_batch_size = self.device_batch_size()
        self.plan = self.plan_run(device_batch_size)
        # Values the plan derives reach the Trainer here, the first place where the world size is known.
        trainer.accumulate_grad_batches = self.plan.accumulation
        if self.plan.max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = self.plan.max_steps
        trainer.val_check_interval = self.hparams.eval_every * self.plan.accumulation  # counted in micro-batches
        model, sequence_len = meta_model(self.gpt_config), self.gpt_config.sequence_len
        self.flops_per_batch = model.flops_per_token(sequence_len) * device_batch_size * sequence_len
        rank_zero_info(self._describe(model, device_batch_size))

    def _describe(self, model: GPT, device_batch_size: int) -> str:
        cfg, plan = self.gpt_config, self.plan
        lines = [
            "",
            f"{self.stage_name}: GPT d{cfg.n_layer}, width {cfg.n_embd}, {cfg.n_head} heads ({cfg.n_kv_head} kv) "
            f"of {cfg.head_dim}, vocab {cfg.vocab_size:,}, windows {cfg.window_pattern}, recipe {plan.recipe}",
            f"parameters {model.num_params():,}; FLOPs/token {model.flops_per_token():.3e}",
            plan.summary,
            f"device batch {device_batch_size} x {cfg.sequence_len} tokens x {self.trainer.world_size} devices "
            f"x {plan.accumulation} accumulation steps",
            "",
        ]
        return "\n".join(lines)

    # ---- optimisation ----------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        plan = self.plan
        groups = build_param_groups(
            self.model.param_families(),
            self.gpt_config.n_embd,
            recipe=plan.recipe,
            lr_scale=plan.lr_scale,
            lr_frac=plan.lr_frac,
            weight_decay=plan.weight_decay,
        )
        optimizer = MuonAdamW(groups)
        self.warm_start_optimizer(optimizer)
        scheduler = LambdaLR(optimizer, self.lr_multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def warm_start_optimizer(self, optimizer: MuonAdamW) -> None:
        """Load optimizer state from where the model came from (a stage that starts from a checkpoint may)."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        apply_muon_schedules(optimizer, self.global_step, self.plan.schedule)

    def configure_callbacks(self) -> list[L.Callback]:
        # LearningRateMonitor refuses to start without a logger (`trainer.logger: false`)
        lr_monitor = [LearningRateMonitor(logging_interval="step")] if self.trainer.loggers else []
        rich = self.trainer.progress_bar_callback
        bar = [StepProgressBar.like(rich)] if type(rich) is RichProgressBar else []
        return [*lr_monitor, *bar, TokenThroughputMonitor(), FinalCheckpoint()]

    # ---- steps -----------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        # The mean over the targets that count; a micro-batch whose targets are all masked adds zero loss (and
        # zero gradient), not the NaN of an empty mean (nanochat #590). With every target counted this is
        # exactly the mean cross-entropy.
        loss_sum = self.forward_fn(inputs, targets, loss_reduction="sum")
        loss = loss_sum / (targets >= 0).sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True)
        stats = getattr(self.trainer.datamodule, "training_stats", dict)  # what the stream reports, if anything
        for name, value in stats().items():
            self.log(f"train/{name}", value)
        return loss

    def on_train_start(self) -> None:
        # nanochat evaluates before the first step too: the curve starts from the untrained (or inherited) model
        # (run as Lightning's own epoch loop runs a validation mid-epoch)
        trainer = self.trainer
        if self.global_step == 0 and trainer.enable_validation:
            first_loop_iter = trainer._logger_connector._first_loop_iter
            trainer.validating = True
            trainer.fit_loop.epoch_loop.val_loop.run()
            trainer.training = True
            trainer._logger_connector._first_loop_iter = first_loop_iter

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Checked once per optimizer step, on every rank together. Stopping here, rather than at Lightning's
        # max_steps check, lets the final validation run: a run's last steps are always measured.
        if self.global_step == self._checked_step:
            return
        self._checked_step = self.global_step
        done = self.plan.max_steps is not None and self.global_step >= self.plan.max_steps
        # one rank out of data stops them all, so none waits forever for the others (nanochat's all_reduce MAX)
        if self.trainer.strategy.reduce_boolean_decision(done or self.data_exhausted(), all=False):
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
            log_samples(self, chat=self.chat_samples)

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "stage": self.stage_name,
            "gpt_config": asdict(self.gpt_config),
            "tokenizer": self.tokenizer.to_state(),  # the checkpoint is whole wherever it is copied
            "tokenizer_dir": None if self.tokenizer_dir is None else str(self.tokenizer_dir),
            **self.checkpoint_metadata(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_vocab_matches(checkpoint, self.tokenizer)
        saved = checkpoint[CHECKPOINT_KEY]["gpt_config"]
        differ = sorted(k for k, v in asdict(self.gpt_config).items() if saved.get(k) != v)
        if differ:
            changes = ", ".join(f"{k} {saved.get(k)!r} -> {getattr(self.gpt_config, k)!r}" for k in differ)
            raise UserError(f"the checkpoint is of another model than this config builds ({changes})")


def meta_model(config: GPTConfig) -> GPT:
    """The GPT's structure without memory behind it: for counting, or to materialise with to_empty()."""
    with torch.device("meta"):
        return GPT(config)
