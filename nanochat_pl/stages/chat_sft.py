"""Midtraining and SFT: one stage that goes on from any stage's checkpoint with conversations.

The two differ only in their recipe (optim/recipes.py: learning-rate fraction, schedule, stage name, packing). Like
nanochat's chat_sft.py@92d63d4 the stage inherits from its checkpoint the model, the tokenizer, the optimizer
settings and the batch shape, runs for one epoch of its mixture with the learning rate keyed on progress through
it, and may warm-start the optimizer's momentum buffers from the checkpoint (nanochat: slightly better).
"""

from __future__ import annotations

from typing import Any, Literal

from nanochat_pl.optim.recipes import RECIPES
from nanochat_pl.stages.lm import FromCheckpoint, RunPlan


class ChatTraining(FromCheckpoint):
    """Train a checkpoint's GPT on conversations (the data module yields (inputs, targets), -1 where no loss).

    Args:
        init_from: The checkpoint to start from: any stage's `.ckpt`, a nanochat checkpoint (a folder of
            model_<step>.pt and meta_<step>.json, e.g. a published base model), or a name: "base", "mid" (the newest
            checkpoint of that stage in the home), "base@step=2000".
        recipe: "sft" (nanochat HEAD: 0.8 of the base learning rates, the second half of the data decaying to 0),
            "mid" (October's midtraining: the base rates on every token, the last 20% decaying) or "sft_oct"
            (October's SFT after midtraining: 0.02 of the base rates, decaying to 0 over the whole run).
        sequence_len: Context length T; default the checkpoint's (also given to the data module).
        tokenizer_dir: Tokenizer (anything `get_tokenizer` reads); default the checkpoint's (also the data's).
        total_batch_tokens: Tokens per optimizer step over all devices; default the checkpoint's.
        device_batch_size: Rows per micro-batch on each device; default the checkpoint's (the data module's
            own setting wins).
        num_iterations: Optimizer steps (the learning rate then runs on steps); default: one epoch of the mixture.
            `trainer.max_steps`, if set, wins.
        lr_frac: Fraction of the checkpoint's learning rates; default the recipe's.
        warmdown_ratio: Fraction of the run over which the learning rate decays; default the recipe's.
        load_optimizer: Start from the checkpoint's optimizer state (momentum buffers) where it has one that fits.
        eval_every: Optimizer steps between validations (bits per byte of the trained tokens).
        sample_every: Optimizer steps between answers to fixed chat prompts (0: never); at validation time.
        compile: torch.compile the GPT's training forward.
    """

    stage_name = "sft"  # or "mid": the recipe's stage (`stage_of`)
    chat_samples = True

    @classmethod
    def stage_of(cls, init_args: dict[str, Any]) -> str:
        """The stage a run of these settings is: the CLI names its folder before the module is built."""
        return RECIPES[init_args.get("recipe") or "sft"].stage

    def __init__(
        self,
        init_from: str,
        recipe: Literal["sft", "mid", "sft_oct"] = "sft",
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
        self.check_settings("sequence_len", "total_batch_tokens", "device_batch_size", "num_iterations")
        self.stage_name = RECIPES[recipe].stage
        self.start_from(init_from, sequence_len, tokenizer_dir)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # the data module takes the model's tokenizer and shapes, and the recipe's packing, unless set otherwise
            device_batch_size = self.setting("device_batch_size", default=32)
            packing = RECIPES[self.hparams.recipe].packing
            self.trainer.datamodule.inherit(self.tokenizer, self.gpt_config.sequence_len, device_batch_size, packing)
        super().setup(stage)

    def plan_run(self, device_batch_size: int) -> RunPlan:
        h, trainer = self.hparams, self.trainer
        max_steps = trainer.max_steps if trainer.max_steps > 0 else h.num_iterations
        horizon = f"{max_steps:,} steps" if max_steps else "one epoch"
        summary = f"{len(trainer.datamodule.train_mixture):,} conversations, {horizon}"
        return self.inherited_plan(h.recipe, max_steps, self.setting("total_batch_tokens", default=524_288), summary)
