"""What every training stage shares: the GPT built on the device, one MuonAdamW with its schedules, the Trainer
wiring of accumulation / steps / validation interval, stopping, bits per byte, and the checkpoint's metadata.

A stage is a thin subclass: it decides the model (`gpt_config`, and how its weights start: `init_model`) and the
plan of the run (`plan_run`); everything else lives here once. Pretraining (stages/base.py) plans from depth; the
stages that go on from a checkpoint (stages/chat_sft.py, stages/rl.py) are `FromCheckpoint`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR

from nanochat_pl.checkpoint import (
    check_vocab_matches,
    checkpoint_tokenizer,
    gpt_state,
    read_checkpoint,
    resolve_checkpoint,
)
from nanochat_pl.common import CHECKPOINT_KEY, UserError
from nanochat_pl.engine import Engine
from nanochat_pl.evals.bpb import BitsPerByte
from nanochat_pl.model.fp8 import convert_to_float8
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.optim.muon_adamw import MuonAdamW
from nanochat_pl.optim.recipes import RECIPES, Schedule, apply_muon_schedules, build_param_groups
from nanochat_pl.optim.scaling import grad_accumulation_steps
from nanochat_pl.stages.callbacks import FinalCheckpoint, StepProgressBar, TokenThroughputMonitor
from nanochat_pl.tokenizer import Tokenizer, tokenizer_location

# the prompts sampled during training: continuations of text, or a chat model's replies
SAMPLE_PROMPTS = yaml.safe_load((Path(__file__).parent / "sample_prompts.yaml").read_text(encoding="utf-8"))
# optimizer-group settings a stage sets itself, whatever optimizer state it warm-starts from
FRESH_GROUP_KEYS = ("lr", "initial_lr", "weight_decay", "initial_weight_decay", "momentum")


@dataclass(frozen=True)
class RunPlan:
    """What a stage decides about its run once the Trainer (world size) and the data (batch shape) are known."""

    recipe: str  # the pretraining recipe whose optimizer settings the param groups take (optim/recipes.py)
    schedule: Schedule
    lr_scale: float  # the batch-size rule on the learning rates (scaling.py), as the base run used it
    lr_frac: float  # the fraction of those learning rates this stage trains with
    weight_decay: float  # Muon's, at the start of the run
    total_batch_tokens: int | None  # per optimizer step over all devices; None: the stage accumulates by hand
    max_steps: int | None  # None: until the data module says its data is used up
    summary: str  # printed at the start of the run
    muon: dict[str, Any] | None = None  # Muon settings over the recipe's (an ablation's)


class LanguageModelStage(L.LightningModule, ABC):
    """A GPT trained on (inputs, targets) token batches, targets -1 where no loss is taken. A subclass's `__init__`
    saves its hyperparameters (`eval_every`, `sample_every`, maybe `compile`) and calls `set_model`."""

    stage_name = "run"  # base, mid, sft, rl: the runs/<stage> folder and the checkpoints' stage (checkpoint.STAGES)
    chat_samples = False  # sample replies to chat prompts rather than continuations of text

    def set_model(self, gpt_config: GPTConfig, tokenizer: Tokenizer, tokenizer_dir: Path | None) -> None:
        """The model the stage trains (its config, built in `configure_model`) and its tokenizer."""
        self.gpt_config, self.tokenizer, self.tokenizer_dir = gpt_config, tokenizer, tokenizer_dir
        self.model: GPT | None = None
        self.val_bpb, self.val_step = BitsPerByte(tokenizer.token_bytes()), None  # val_step: the newest validation's
        self.plan: RunPlan | None = None
        self._checked_step = -1  # the last optimizer step whose end was checked for stopping

    @abstractmethod
    def init_model(self, model: GPT) -> None:
        """Give the freshly materialised `model` its starting weights."""

    @abstractmethod
    def plan_run(self, device_batch_size: int) -> RunPlan:
        """The run's plan, called at fit time when `self.trainer` knows the world size."""

    def check_settings(self, *positive: str) -> None:
        """The one-line error for settings out of range (None: not set), as the config hands them over."""
        h = self.hparams
        wrong = [f"{name} {h[name]} (must be positive)" for name in positive if h[name] is not None and h[name] <= 0]
        if h.get("warmdown_ratio") is not None and not 0 <= h.warmdown_ratio <= 1:
            wrong.append(f"warmdown_ratio {h.warmdown_ratio} (must be in [0, 1])")
        if wrong:
            raise UserError(f"settings out of range: {', '.join(wrong)}")

    def device_batch_size(self) -> int:
        """Rows of one forward/backward pass on each device: the data module's, unless the stage makes its own."""
        return self.trainer.datamodule.device_batch_size

    def lr_multiplier(self, step: int) -> float:
        """The factor on every group's initial LR for optimizer step `step`."""
        return self.plan.schedule.lr_multiplier(step)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """The checkpoint's own entry: the stage, the model, the tokenizer and what the next stage inherits (the base
        run's optimizer settings and the batch shape)."""
        val_bpb = self.trainer.callback_metrics.get("val/bpb")
        meta = {
            "stage": self.stage_name,
            # the newest validation's, for `nanochat-pl runs`: a checkpoint is saved before its step's validation runs
            "val_bpb": None if val_bpb is None else float(val_bpb),
            "val_bpb_step": self.val_step,
            "gpt_config": asdict(self.gpt_config),
            "tokenizer": self.tokenizer.to_state(),  # the checkpoint is whole wherever it is copied
            "tokenizer_dir": None if self.tokenizer_dir is None else str(self.tokenizer_dir),
            "recipe": self.plan.recipe,
            "lr_scale": self.plan.lr_scale,
        }
        if self.plan.total_batch_tokens is not None:
            meta.update(total_batch_tokens=self.plan.total_batch_tokens, device_batch_size=self.device_batch_size())
        return meta

    def configure_model(self) -> None:
        """Build the GPT straight on the training device: a large model never materialises on the CPU first."""
        if self.model is not None:
            return
        model = meta_model(self.gpt_config)
        model.to_empty(device=self.trainer.strategy.root_device if self._trainer else "cpu")
        self.init_model(model)
        if self.hparams.get("fp8", False):  # before compiling, as nanochat converts before torch.compile
            convert_to_float8(model)
        # Training and validation go through the compiled forward (fixed shapes); samples use the eager model, whose
        # KV-cached calls change shape every token. Compiling the bound method keeps `_orig_mod.` out of the keys.
        compile_forward = self.hparams.get("compile", False)
        self.forward_fn = torch.compile(model.forward, dynamic=False) if compile_forward else model.forward
        self.model = model

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer, cfg = self.trainer, self.gpt_config
        device_batch_size = self.device_batch_size()
        plan = self.plan = self.plan_run(device_batch_size)
        # Values the plan derives reach the Trainer here, the first place where the world size is known.
        tokens, batch = plan.total_batch_tokens, (device_batch_size, cfg.sequence_len, trainer.world_size)
        accumulation = trainer.accumulate_grad_batches = grad_accumulation_steps(tokens, *batch) if tokens else 1
        if plan.max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = plan.max_steps
        trainer.val_check_interval = self.hparams.eval_every * accumulation  # counted in micro-batches
        model = meta_model(cfg)
        self.flops_per_batch = model.flops_per_token(cfg.sequence_len) * device_batch_size * cfg.sequence_len
        rank_zero_info(
            f"\n{self.stage_name}: GPT d{cfg.n_layer}, width {cfg.n_embd}, {cfg.n_head} heads ({cfg.n_kv_head} kv) "
            f"of {cfg.head_dim}, vocab {cfg.vocab_size:,}, windows {cfg.window_pattern}, recipe {plan.recipe}\n"
            f"parameters {model.num_params():,}; FLOPs/token {model.flops_per_token():.3e}\n{plan.summary}\n"
            f"device batch {device_batch_size} x {cfg.sequence_len} tokens x {trainer.world_size} devices "
            f"x {accumulation} accumulation steps\n"
        )

    def configure_optimizers(self) -> dict:
        p, families, width = self.plan, self.model.param_families(), self.gpt_config.n_embd
        groups = build_param_groups(families, width, p.recipe, p.lr_scale, p.weight_decay, p.lr_frac, p.muon)
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
        callbacks = [LearningRateMonitor(logging_interval="step")] if self.trainer.loggers else []
        rich = self.trainer.progress_bar_callback
        if type(rich) is RichProgressBar:  # in its place, with its settings
            callbacks.append(StepProgressBar(rich.refresh_rate, rich._leave, rich.theme, rich._console_kwargs))
        return [*callbacks, TokenThroughputMonitor(), FinalCheckpoint()]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        # The mean over the targets that count; a micro-batch whose targets are all masked adds zero loss (and
        # zero gradient), not the NaN of an empty mean.
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
        done = done or getattr(self.trainer.datamodule, "data_progress", 0.0) >= 1.0  # a chat stage's data used up
        # one rank out of data stops them all, so none waits forever for the others (nanochat's all_reduce MAX)
        if self.trainer.strategy.reduce_boolean_decision(done, all=False):
            self.trainer.should_stop = True

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        token_losses = self.forward_fn(inputs, targets, loss_reduction="none")
        self.val_bpb.update(token_losses, targets)
        self.log("val/bpb", self.val_bpb, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        every, step = self.hparams.sample_every, self.global_step
        self.val_step = step
        # validation runs every eval_every steps: sample at the first validation at or after each multiple
        if every and self.trainer.state.fn == "fit" and step > 0 and step % every < self.hparams.eval_every:
            self.log_samples()

    @rank_zero_only
    def log_samples(self) -> None:
        """Print the greedy answers to the fixed prompts and log them as text."""
        # the evals' fixed precision (the engine's default), never a timed pick that could differ between ranks
        chat, tokenizer, engine = self.chat_samples, self.tokenizer, Engine(self.model, self.tokenizer)
        was_training = self.model.training
        self.model.eval()
        lines = []
        for prompt in SAMPLE_PROMPTS["chat" if chat else "text"]:
            if chat:
                ids = tokenizer.render_for_completion([{"role": "user", "content": prompt}])
            else:
                ids = tokenizer.encode(prompt, prepend=tokenizer.bos_token_id)
            sequences, _ = engine.generate_batch(ids, max_tokens=64 if chat else 16, temperature=0.0)
            reply = tokenizer.decode(sequences[0][len(ids) :])
            lines.append(f"{prompt} -> {reply}" if chat else prompt + reply)
        self.model.train(was_training)
        text = "\n".join(lines)
        print(f"\nsamples at step {self.global_step}:\n{text}\n")
        self.log_text("samples", text)

    def log_text(self, tag: str, text: str) -> None:
        """Text for TensorBoard (its Markdown breaks a line at two spaces), where the run logs to it."""
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_text(tag, text.replace("\n", "  \n"), self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_vocab_matches(checkpoint, self.tokenizer)
        saved, ours = checkpoint[CHECKPOINT_KEY]["gpt_config"], asdict(self.gpt_config)
        changes = ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in ours.items() if saved.get(k) != v)
        if changes:
            raise UserError(f"the checkpoint is of another model than this config builds ({changes})")


class FromCheckpoint(LanguageModelStage):
    """A stage that goes on from another stage's checkpoint (SFT after base or mid, RL after SFT): it takes its model,
    weights, tokenizer and what its metadata passes on (`self.inherited`). Its `__init__` calls `start_from`."""

    def start_from(self, init_from: str, sequence_len: int | None = None, tokenizer_dir: str | None = None) -> None:
        """`init_from`: a checkpoint's path or name (`base`, `sft@step=100`: checkpoint.resolve_checkpoint)."""
        self.init_path = resolve_checkpoint(init_from)
        # read (and verified) once: the weights for configure_model, the optimizer state for configure_optimizers
        self._init_checkpoint: dict[str, Any] | None = read_checkpoint(self.init_path)
        self.inherited = self._init_checkpoint[CHECKPOINT_KEY]
        # the lineage `nanochat-pl runs --tree` shows: the parent's file, stage and step
        self.parent = {"path": str(self.init_path.resolve()), "stage": self.inherited["stage"]}
        self.parent["step"] = self._init_checkpoint.get("global_step", 0)
        config = GPTConfig(**self.inherited["gpt_config"])
        if sequence_len is not None:
            config.sequence_len = sequence_len
        tokenizer = checkpoint_tokenizer(self._init_checkpoint, self.init_path, tokenizer_dir)
        self.set_model(config, tokenizer, None if tokenizer_dir is None else tokenizer_location(tokenizer_dir))

    def init_model(self, model: GPT) -> None:
        model.init_weights()  # the rotary tables, which checkpoints do not hold
        model.load_state_dict(gpt_state(self._init_checkpoint))

    def warm_start_optimizer(self, optimizer: MuonAdamW) -> None:
        """With `load_optimizer`, start from the checkpoint's optimizer state (momentum buffers) where it has one for
        the same param groups, keeping this stage's learning rates, weight decay and momentum."""
        checkpoint, self._init_checkpoint = self._init_checkpoint, None  # not needed after this: free it
        if not self.hparams.get("load_optimizer"):
            return
        fresh = [{key: group[key] for key in FRESH_GROUP_KEYS if key in group} for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict((checkpoint.get("optimizer_states") or [])[0])
        except (IndexError, ValueError, KeyError) as error:
            rank_zero_warn(f"not warm-starting the optimizer: {self.init_path} has no matching state ({error})")
            return
        for group, settings in zip(optimizer.param_groups, fresh, strict=True):
            for key in FRESH_GROUP_KEYS:  # the checkpoint's (e.g. its initial_lr) must not outlive the load
                group.pop(key, None)
            group.update(settings)
        rank_zero_info(f"optimizer state (momentum buffers) warm-started from {self.init_path}")

    def inherited_plan(self, recipe: str, max_steps: int | None, batch_tokens: int | None, summary: str) -> RunPlan:
        """The plan of a run on the checkpoint's optimizer settings with recipe `recipe`'s changes to them: its
        fraction of the learning rates and its schedule, unless the stage sets `lr_frac` / `warmdown_ratio`."""
        row, h = RECIPES[recipe], self.hparams
        lr_frac = row.lr_frac if h.lr_frac is None else h.lr_frac
        base_recipe, lr_scale = self.inherited.get("recipe", "2026"), self.inherited.get("lr_scale", 1.0)
        schedule = Schedule.for_recipe(recipe, max_steps, h.get("warmdown_ratio"))
        summary = (
            f"{recipe} from {self.init_path} ({self.inherited['stage']} stage, {base_recipe} recipe): {summary}; "
            f"LR {lr_frac:g} x the base's (batch scale {lr_scale:.4f})"
        )
        return RunPlan(base_recipe, schedule, lr_scale, lr_frac, row.weight_decay, batch_tokens, max_steps, summary)

    def lr_multiplier(self, step: int) -> float:
        # on progress through the run (nanochat chat_sft.py, chat_rl.py): step / steps where their number is known,
        # else through the data
        steps = self.plan.max_steps
        progress = step / steps if steps is not None else self.trainer.datamodule.data_progress
        return self.plan.schedule.lr_multiplier_at_progress(progress)

    def setting(self, name: str, default: Any) -> Any:
        """A setting given here, else the checkpoint's, else nanochat's default; says where it came from."""
        value = self.hparams.get(name)
        if value is None:
            value = self.inherited.get(name, default)
            rank_zero_info(f"{name}={value} (inherited from {self.init_path})")
        return value

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "parent": self.parent}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint[CHECKPOINT_KEY]["stage"] != self.stage_name:
            raise UserError(
                f"resuming a {self.stage_name} run from a {checkpoint[CHECKPOINT_KEY]['stage']} checkpoint: "
                "to start from it, give it as model.init_from"
            )
        super().on_load_checkpoint(checkpoint)
        self.parent = checkpoint[CHECKPOINT_KEY].get("parent", self.parent)  # a resumed run's, not re-resolved


def meta_model(config: GPTConfig) -> GPT:
    """The GPT's structure without memory behind it: for counting, or to materialise with to_empty()."""
    with torch.device("meta"):
        return GPT(config)
