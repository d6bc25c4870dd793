"""Pretraining: a GPT of a given depth on a token stream, with everything the run derives from that depth.

From `depth` the stage derives the model shape (GPTConfig.from_depth), the token horizon, the total batch, the
learning-rate and weight-decay scaling and the number of steps (optim/scaling.py); any of them can be set in the
config instead. Everything else a stage does is stages/lm.py's.
"""

from __future__ import annotations

from typing import Any, Literal

from nanochat_pl.common import UserError
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.optim.muon_adamw import MUON_DEFAULTS
from nanochat_pl.optim.recipes import RECIPES, Schedule
from nanochat_pl.optim.scaling import plan_from_depth
from nanochat_pl.stages.lm import LanguageModelStage, RunPlan, meta_model
from nanochat_pl.tokenizer import get_tokenizer, tokenizer_location

# GPTConfig fields the stage derives itself; `architecture` may set any of the others
SHAPE_FIELDS = {"n_head", "n_embd", "sequence_len", "vocab_size"}


class BaseTraining(LanguageModelStage):
    """Pretrain a GPT of a given depth on a token stream (the data module yields (inputs, targets)).

    Args:
        depth: Number of transformer layers; sets the width (depth·aspect_ratio) and, unless overridden, the
            token horizon, total batch, learning rates and weight decay.
        sequence_len: Context length T (also given to the data module).
        tokenizer_dir: Tokenizer (a directory, or a checkpoint, which carries one); default: the data home's
            tokenizer/ (also given to the data module).
        recipe: "2026" (nanochat HEAD) or "oct" (October 2025's architecture, optimizer groups and schedule; the
            horizon, batch and LR scaling still follow the 2026 depth rules: set target_param_data_ratio 20,
            total_batch_tokens 524288 and lr_scale 1 for October's).
        aspect_ratio: Width per layer (model_dim = depth · aspect_ratio rounded up to head_dim).
        head_dim: Channels per attention head.
        architecture: Any other GPTConfig field to override, e.g. {window_pattern: L, n_kv_head: 2}; {n_layer: 0}:
            no blocks, depth's width (a bigram model).
        muon: Muon settings over the recipe's, e.g. {normuon: false} (MUON_DEFAULTS, optim/muon_adamw.py).
        target_param_data_ratio: Training tokens per scaling parameter (matrices + lm_head).
        total_batch_tokens: Tokens per optimizer step over all devices; default derived from the horizon.
        num_iterations: Optimizer steps; default horizon / total batch. `trainer.max_steps`, if set, wins.
        lr_scale: Multiplier on the learning rates (but the smear/backout scalars'); default sqrt(total batch / 2^19).
        weight_decay: Muon weight decay; default from the T_epoch rule (0.28 at d12).
        warmdown_ratio: Fraction of the run over which the learning rate decays; default the recipe's.
        eval_every: Optimizer steps between validations (bits per byte); sets trainer.val_check_interval.
        sample_every: Optimizer steps between samples from fixed prompts (0: never); at validation time.
        compile: torch.compile the GPT's training forward (faster on GPUs and CPUs alike, after a slow start).
        fp8: Train the large linears in float8, tensorwise (nanochat's --fp8, model/fp8.py): for GPUs with fp8
            matmuls (H100 on), with compile.
    """

    stage_name = "base"

    def __init__(
        self,
        depth: int = 20,
        sequence_len: int = 2048,
        tokenizer_dir: str | None = None,
        recipe: Literal["2026", "oct"] = "2026",
        aspect_ratio: int = 64,
        head_dim: int = 128,
        architecture: dict[str, Any] | None = None,
        muon: dict[str, Any] | None = None,
        target_param_data_ratio: float = 12.0,
        total_batch_tokens: int | None = None,
        num_iterations: int | None = None,
        lr_scale: float | None = None,
        weight_decay: float | None = None,
        warmdown_ratio: float | None = None,
        eval_every: int = 250,
        sample_every: int = 2000,
        compile: bool = False,
        fp8: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.check_settings("depth", "sequence_len", "target_param_data_ratio", "total_batch_tokens", "num_iterations")
        tokenizer = get_tokenizer(tokenizer_dir)
        overrides = {**RECIPES[recipe].architecture, **(architecture or {})}
        if unknown := set(overrides) - set(GPTConfig.__dataclass_fields__):
            raise UserError(f"model.architecture has unknown GPTConfig fields: {', '.join(sorted(unknown))}")
        if shaped_elsewhere := set(overrides) & SHAPE_FIELDS:
            raise UserError(
                f"model.architecture cannot set {', '.join(sorted(shaped_elsewhere))}: they follow from depth, "
                "aspect_ratio, head_dim, sequence_len and the tokenizer"
            )
        if wrong := set(muon or {}) - set(MUON_DEFAULTS).difference({"momentum", "weight_decay"}):  # both scheduled
            raise UserError(f"model.muon cannot set {', '.join(sorted(wrong))}: MUON_DEFAULTS' other keys, it can")
        config = GPTConfig.from_depth(depth, tokenizer.vocab_size, sequence_len, aspect_ratio, head_dim, **overrides)
        self.set_model(config, tokenizer, tokenizer_location(tokenizer_dir))

    def init_model(self, model: GPT) -> None:
        model.init_weights()

    def plan_run(self, device_batch_size: int) -> RunPlan:
        h, trainer, recipe = self.hparams, self.trainer, RECIPES[self.hparams.recipe]
        reference = GPTConfig.from_depth(12, self.gpt_config.vocab_size, h.sequence_len, h.aspect_ratio, h.head_dim)
        n, n_ref = (meta_model(config).num_scaling_params() for config in (self.gpt_config, reference))
        given = {k: h[k] for k in ("target_param_data_ratio", "total_batch_tokens", "lr_scale", "weight_decay")}
        steps = trainer.max_steps if trainer.max_steps > 0 else h.num_iterations
        p = plan_from_depth(h.depth, n, n_ref, num_iterations=steps, **given)
        # October's Muon had no weight decay: the T_epoch rule applies where the recipe leaves it open
        wd = p.weight_decay if recipe.weight_decay is None else recipe.weight_decay
        schedule = Schedule.for_recipe(h.recipe, p.num_iterations, h.warmdown_ratio)
        return RunPlan(
            recipe=h.recipe,
            schedule=schedule,
            lr_scale=p.lr_scale,
            lr_frac=recipe.lr_frac,
            weight_decay=wd,
            total_batch_tokens=p.total_batch_tokens,
            max_steps=p.num_iterations,
            summary=p.describe(),
            muon=h.muon,
        )
