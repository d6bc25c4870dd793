"""Midtraining and SFT: one stage that goes on from any stage's checkpoint with conversations.

The two differ only in settings: the recipe (optim/recipes.py: learning-rate fraction, schedule) and the data
module's packing ("crop": loss on every token, streamed like pretraining; "pad": loss on the assistant's tokens,
rows padded, never cropped). Like nanochat's chat_sft.py@92d63d4 the stage inherits from its checkpoint the
model, the tokenizer, the optimizer settings (learning rates with the base run's batch scaling) and the batch
shape (sequence length, device batch, total batch); any of them can be set instead. It runs for one epoch of
its training mixture, with the learning rate keyed on progress through it, and may warm-start the optimizer's
momentum buffers from the checkpoint (nanochat: slightly better).

What every stage that starts from a checkpoint shares (reading it once, loading its weights, inheriting its
settings, refusing to resume from another stage's checkpoint) is `FromCheckpoint`'s; RL (stages/rl.py) uses it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nanochat_pl.checkpoint import (
    CHECKPOINT_KEY,
    MODEL_PREFIX,
    checkpoint_tokenizer,
    latest_last_checkpoint,
    read_checkpoint,
)
from nanochat_pl.common import UserError, home_dir
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.optim import MuonAdamW, Schedule, grad_accumulation_steps
from nanochat_pl.optim.recipes import get_recipe
from nanochat_pl.stages.lm import LanguageModelStage, RunPlan
from nanochat_pl.tokenizer import tokenizer_location

ChatRecipe = Literal["sft", "mid", "sft_oct"]
# optimizer-group settings the stage sets itself; everything else of a group may come from the checkpoint
FRESH_GROUP_KEYS = ("lr", "initial_lr", "weight_decay", "initial_weight_decay", "momentum")


class FromCheckpoint(LanguageModelStage):
    """A stage that goes on from another stage's checkpoint (SFT after base or mid, RL after SFT): it takes the
    checkpoint's model and weights, its tokenizer, and what its metadata passes on (`self.inherited`: the base
    run's optimizer recipe and batch scaling, the batch shape). A subclass's `__init__` calls `start_from`."""

    def start_from(self, init_from: str, sequence_len: int | None = None, tokenizer_dir: str | None = None) -> None:
        self.init_path = resolve_init_from(init_from)
        # read (and verified) once: the weights for configure_model, the optimizer state for configure_optimizers
        self._init_checkpoint: dict[str, Any] | None = read_checkpoint(self.init_path)
        meta = self._init_checkpoint[CHECKPOINT_KEY]
        self.inherited = meta
        config = GPTConfig(**meta["gpt_config"])
        if sequence_len is not None:
            config.sequence_len = sequence_len
        tokenizer = checkpoint_tokenizer(self._init_checkpoint, self.init_path, tokenizer_dir)
        self.set_model(config, tokenizer, None if tokenizer_dir is None else tokenizer_location(tokenizer_dir))

    def init_model(self, model: GPT) -> None:
        model.init_weights()  # the rotary tables, which checkpoints do not hold
        state = self._init_checkpoint["state_dict"]
        weights = {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
        model.load_state_dict(weights)

    def warm_start_optimizer(self, optimizer: MuonAdamW) -> None:
        self._init_checkpoint = None  # the weights are loaded by now: free the checkpoint

    def _setting(self, name: str, default: Any) -> Any:
        """A setting given here, else the checkpoint's, else nanochat's default; says where it came from."""
        value = self.hparams.get(name)
        if value is None:
            value = self.inherited.get(name, default)
            rank_zero_info(f"{name}={value} (inherited from {self.init_path})")
        return value

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint[CHECKPOINT_KEY]["stage"] != self.stage_name:
            raise UserError(
                f"resuming a {self.stage_name} run from a {checkpoint[CHECKPOINT_KEY]['stage']} checkpoint: "
                "to start from it, give it as model.init_from"
            )
        super().on_load_checkpoint(checkpoint)


class ChatTraining(FromCheckpoint):
    """Train a checkpoint's GPT on conversations (the data module yields (inputs, targets), -1 where no loss).

    Args:
        init_from: The checkpoint to start from: any stage's `.ckpt`, a nanochat checkpoint (a folder of
            model_<step>.pt and meta_<step>.json, e.g. a published base model), or "base" / "chat" for the newest
            run's last.ckpt under the home's runs/base or runs/chat.
        recipe: "sft" (nanochat HEAD: 0.8 of the base learning rates, the second half of the data decaying to 0),
            "mid" (October's midtraining: the base rates, the last 20% decaying) or "sft_oct" (October's SFT
            after midtraining: 0.02 of the base rates, decaying to 0 over the whole run).
        sequence_len: Context length T; default the checkpoint's (also given to the data module).
        tokenizer_dir: Tokenizer (a directory, or anything `get_tokenizer` reads); default the one the checkpoint
            carries (also given to the data module).
        total_batch_tokens: Tokens per optimizer step over all devices; default the checkpoint's.
        device_batch_size: Rows per micro-batch on each device; default the checkpoint's (the data module's
            own setting wins).
        num_iterations: Optimizer steps; default: one epoch of the training mixture. `trainer.max_steps`, if
            set, wins. The learning rate then runs on steps rather than on data.
        lr_frac: Fraction of the checkpoint's learning rates; default the recipe's.
        warmdown_ratio: Fraction of the run over which the learning rate decays; default the recipe's.
        load_optimizer: Start the optimizer's state (momentum buffers) from the checkpoint's, when it has one
            for the same parameter groups; the learning rates and weight decay stay this stage's.
        eval_every: Optimizer steps between validations (bits per byte of the trained tokens).
        sample_every: Optimizer steps between answers to fixed chat prompts (0: never); at validation time.
        compile: torch.compile the GPT's training forward.
    """

    stage_name = "chat"
    chat_samples = True

    def __init__(
        self,
        init_from: str,
        recipe: ChatRecipe = "sft",
        sequence_len: int | None = None,
        tokenizer_dir: str | None = None,
        total_batch_tokens: int | None = None,
        device_batch_size: int | None = None,
        num_iterations: int | None = None,
        lr_frac: float | None = None,
        warmdown_ratio: float | None = None,
        load_optimizer: bool = True,
        eval_every: int = 200,
        sample_every: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.stage_name = "mid" if recipe == "mid" else "sft"
        self.start_from(init_from, sequence_len, tokenizer_dir)

    # ---- the plan --------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # the data module renders with the model's tokenizer and shapes unless its config says otherwise
            device_batch_size = self._setting("device_batch_size", default=32)
            self.trainer.datamodule.inherit(self.tokenizer, self.gpt_config.sequence_len, device_batch_size)
        super().setup(stage)

    def plan_run(self, device_batch_size: int) -> RunPlan:
        h, trainer = self.hparams, self.trainer
        recipe = get_recipe(h.recipe)
        self.total_batch_tokens = total_batch_tokens = self._setting("total_batch_tokens", default=524_288)
        max_steps = trainer.max_steps if trainer.max_steps > 0 else h.num_iterations
        overrides = {} if h.warmdown_ratio is None else {"warmdown_ratio": h.warmdown_ratio}
        schedule = Schedule.for_recipe(h.recipe, max_steps, **overrides)
        base_recipe = self.inherited.get("recipe", "2026")
        lr_scale = self.inherited.get("lr_scale", 1.0)
        lr_frac = recipe.lr_frac if h.lr_frac is None else h.lr_frac
        mixture = trainer.datamodule.train_mixture
        horizon = f"{max_steps:,} steps" if max_steps else "one epoch"
        summary = (
            f"{h.recipe} from {self.init_path} ({self.inherited['stage']} stage, {base_recipe} recipe): "
            f"{len(mixture):,} conversations, {horizon}; LR {lr_frac:g} x the base's (batch scale {lr_scale:.4f})"
        )
        return RunPlan(
            recipe=base_recipe,
            schedule=schedule,
            lr_scale=lr_scale,
            lr_frac=lr_frac,
            weight_decay=recipe.weight_decay,
            accumulation=grad_accumulation_steps(
                total_batch_tokens, device_batch_size, self.gpt_config.sequence_len, trainer.world_size
            ),
            max_steps=max_steps,
            summary=summary,
        )

    def lr_multiplier(self, step: int) -> float:
        # on steps when their number is set (nanochat: progress = step / num_iterations), else on the data
        if self.plan.max_steps is not None:
            return self.plan.schedule.lr_multiplier_at_progress(step / self.plan.max_steps)
        return self.plan.schedule.lr_multiplier_at_progress(self.trainer.datamodule.data_progress)

    def data_exhausted(self) -> bool:
        return self.trainer.datamodule.data_progress >= 1.0

    def warm_start_optimizer(self, optimizer: MuonAdamW) -> None:
        checkpoint, self._init_checkpoint = self._init_checkpoint, None  # not needed after this: free it
        if not self.hparams.load_optimizer:
            return
        saved = checkpoint.get("optimizer_states") or []
        fresh = [{key: group[key] for key in FRESH_GROUP_KEYS if key in group} for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(saved[0])
        except (IndexError, ValueError, KeyError) as error:
            rank_zero_warn(f"not warm-starting the optimizer: {self.init_path} has no matching state ({error})")
            return
        for group, settings in zip(optimizer.param_groups, fresh, strict=True):
            for key in FRESH_GROUP_KEYS:  # the checkpoint's (e.g. its initial_lr) must not outlive the load
                group.pop(key, None)
            group.update(settings)
        rank_zero_info(f"optimizer state (momentum buffers) warm-started from {self.init_path}")

    def checkpoint_metadata(self) -> dict[str, Any]:
        # the next stage (SFT after mid, RL after SFT) inherits the same optimizer settings and batch shape
        datamodule = self.trainer.datamodule
        return {
            "recipe": self.plan.recipe,
            "lr_scale": self.plan.lr_scale,
            "total_batch_tokens": self.total_batch_tokens,
            "device_batch_size": datamodule.device_batch_size,
            "init_from": str(self.init_path),
        }


def resolve_init_from(init_from: str) -> Path:
    """A checkpoint path as it is; a stage's name: its newest run's last checkpoint."""
    if init_from in ("base", "chat"):
        return latest_last_checkpoint(home_dir() / "runs" / init_from)
    return Path(init_from)
