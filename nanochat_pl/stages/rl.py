"""RL after SFT: the model practises problems with its calculator and is pushed toward the replies that were right.

nanochat's chat_rl.py calls it "GRPO"; in practice it is on-policy REINFORCE with a mean baseline (no KL to a
reference model, no PPO ratio or clipping: every sample comes from the policy being updated). One optimizer step:

1. Every rank takes its own prompts (data/rl.py) and, with the KV-cached engine on the eager model, samples
   `num_samples` replies to each in chunks of `device_batch_size` (temperature 1.0, top-k 50, at most
   `max_new_tokens`), seeded from (step, problem, chunk): a resumed run draws the same samples, and so does
   any number of ranks.
2. Each reply gets the task's `reward`; its advantage is r - mean(r) over the prompt's samples (`std_advantages`
   also divides by their standard deviation, as GRPO does). A prompt whose samples all score alike teaches nothing.
3. For each chunk, a forward/backward pass of the loss -sum(A * log p(token)) / (trained tokens in the chunk), over
   the sampled tokens only (the prompt, the calculator's forced output and the padding carry no gradient), scaled
   by 1 / (chunks per prompt x prompts per rank): nanochat's token-level normalisation. The gradients are synced
   across ranks on the last pass only; then one optimizer step, at 0.05 of the base run's learning rates,
   decaying linearly to 0 over the run (one epoch of the training problems).

Every `eval_every` steps (and after the last one) the stage measures pass@1..k on the held-out problems, each
sampled k times with the same seeds every time, summed over ranks. It logs the mean reward, the sequence length,
the loss, the sampling speed and (LearningRateMonitor) the learning rates, and every `sample_every` steps some
replies with their rewards.

The sampling sits in training_step, under Lightning's manual optimization: a variable number of passes per step,
generation inside the step and nanochat's exact normalisation do not fit automatic optimization's one loss per
micro-batch. The engine runs under inference_mode, so the training tensors are built fresh from its token lists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine
from nanochat_pl.evals.harness import pass_at_k, rank_share, sample_correct, sum_across_ranks
from nanochat_pl.optim import Schedule
from nanochat_pl.optim.recipes import get_recipe
from nanochat_pl.reply import read_reply
from nanochat_pl.stages.callbacks import TokenThroughputMonitor
from nanochat_pl.stages.chat_sft import FromCheckpoint
from nanochat_pl.stages.lm import RunPlan
from nanochat_pl.tasks.task import Conversation, Task

STD_EPSILON = 1e-4  # added to the standard deviation of a prompt's rewards (TRL's GRPO)
SAMPLES_SHOWN = 4  # replies shown every sample_every steps


@dataclass
class Rollout:
    """One prompt's samples: prompt + reply tokens (terminal token stripped), their masks (0 on the prompt and on
    the tokens the calculator forced), the reply texts and their rewards."""

    index: int
    prompt_len: int
    sequences: list[list[int]]
    masks: list[list[int]]
    replies: list[str]
    rewards: list[float]


def sampling_seed(step: int, index: int, chunk: int) -> int:
    """The seed of chunk `chunk` of problem `index`'s samples at optimizer step `step`: a function of the three
    only (not of the rank), so a resumed run and a run on any number of ranks draw the same samples."""
    return int(np.random.SeedSequence([step, index, chunk]).generate_state(1, np.uint64)[0] >> 1)


def advantages(rewards: list[float], std_normalized: bool = False) -> torch.Tensor:
    """r - mean(r) over one prompt's samples; with `std_normalized` also divided by their standard deviation."""
    r = torch.tensor(rewards, dtype=torch.float32)
    centred = r - r.mean()
    if std_normalized and len(rewards) > 1:
        centred = centred / (r.std() + STD_EPSILON)
    return centred


def training_chunks(
    rollout: Rollout, chunk_size: int, pad_token: int, std_normalized: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A rollout as (inputs, targets, advantages) per chunk of `chunk_size` samples: inputs (B, T) are the tokens
    but the last, padded with `pad_token`; targets are the next tokens, -1 wherever no gradient goes (the prompt,
    forced tokens, padding). New tensors, from the engine's token lists."""
    adv = advantages(rollout.rewards, std_normalized)
    chunks = []
    for first in range(0, len(rollout.sequences), chunk_size):
        sequences = rollout.sequences[first : first + chunk_size]
        masks = rollout.masks[first : first + chunk_size]
        length = max(len(s) for s in sequences)
        ids = torch.tensor([s + [pad_token] * (length - len(s)) for s in sequences], dtype=torch.long)
        trained = torch.tensor([m + [0] * (length - len(m)) for m in masks], dtype=torch.bool)
        targets = ids[:, 1:].masked_fill(~trained[:, 1:], -1)
        chunks.append((ids[:, :-1].contiguous(), targets, adv[first : first + chunk_size]))
    return chunks


def policy_gradient_loss(
    forward: Any, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """-sum over trained tokens of A x log p(token), divided by the number of trained tokens (token-level, as
    nanochat): `forward(inputs, targets, loss_reduction="none")` gives the per-token losses, 0 where targets -1."""
    log_probs = -forward(inputs, targets, loss_reduction="none")
    trained = (targets >= 0).sum().clamp(min=1)
    return -(log_probs * advantages.to(log_probs.device)[:, None]).sum() / trained


class RLTraining(FromCheckpoint):
    """On-policy RL of a chat checkpoint on a task's rewards (see the module docstring).

    Args:
        init_from: The checkpoint to start from: a `.ckpt`, or "chat" for the newest chat run's last.ckpt (SFT).
        tokenizer_dir: Tokenizer (a directory, or anything `get_tokenizer` reads); default the checkpoint's.
        num_samples: Replies sampled per prompt (a multiple of device_batch_size).
        device_batch_size: Replies sampled together, and trained on in one forward/backward pass.
        max_new_tokens: Most tokens per reply.
        temperature: Sampling temperature (training and evaluation).
        top_k: Sampling among the k likeliest tokens (0: all).
        std_advantages: Divide the advantages by the standard deviation of the prompt's rewards (GRPO).
        num_epochs: Passes over the training problems; `trainer.max_steps`, if set, wins.
        lr_frac: Fraction of the checkpoint's base learning rates; default the recipe's 0.05.
        eval_every: Optimizer steps between pass@k evaluations on the held-out problems (0: never).
        eval_samples: k: replies sampled per held-out problem; pass@1..k are logged.
        sample_every: Optimizer steps between logged replies (0: never).
    """

    stage_name = "rl"

    def __init__(
        self,
        init_from: str = "chat",
        tokenizer_dir: str | None = None,
        num_samples: int = 16,
        device_batch_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int = 50,
        std_advantages: bool = False,
        num_epochs: int = 1,
        lr_frac: float | None = None,
        eval_every: int = 60,
        eval_samples: int = 8,
        sample_every: int = 60,
    ):
        super().__init__()
        self.save_hyperparameters()
        if min(num_samples, device_batch_size, num_epochs, eval_samples) < 1 or num_samples % device_batch_size:
            raise UserError(
                f"need num_samples ({num_samples}) a multiple of device_batch_size ({device_batch_size}), "
                f"num_epochs ({num_epochs}) and eval_samples ({eval_samples}) at least 1"
            )
        self.automatic_optimization = False
        self.start_from(init_from, tokenizer_dir=tokenizer_dir)
        self.pad_token = self.tokenizer.encode_special("<|assistant_end|>")
        # totals of this process's sampling, for the throughput figures (bench train)
        self.sampling = {"seconds": 0.0, "tokens": 0, "decode_slots": 0, "chunks": 0, "prompt_tokens": 0}
        self.last_eval: dict[str, float] = {}

    # ---- the plan --------------------------------------------------------------------------------------------

    def device_batch_size(self) -> int:
        return self.hparams.device_batch_size

    def plan_run(self, device_batch_size: int) -> RunPlan:
        h, trainer, data = self.hparams, self.trainer, self.trainer.datamodule
        recipe = get_recipe("rl")
        max_steps = trainer.max_steps if trainer.max_steps > 0 else data.steps_per_epoch * h.num_epochs
        lr_frac = recipe.lr_frac if h.lr_frac is None else h.lr_frac
        base_recipe, lr_scale = self.inherited.get("recipe", "2026"), self.inherited.get("lr_scale", 1.0)
        summary = (
            f"RL from {self.init_path} ({self.inherited['stage']} stage): {len(data.train):,} problems, "
            f"{data.examples_per_step} per step x {h.num_samples} samples, {max_steps:,} steps; "
            f"LR {lr_frac:g} x the base's ({base_recipe} recipe, batch scale {lr_scale:.4f}), linearly to 0"
        )
        return RunPlan(
            recipe=base_recipe,
            schedule=Schedule.for_recipe("rl", max_steps),
            lr_scale=lr_scale,
            lr_frac=lr_frac,
            weight_decay=recipe.weight_decay,
            accumulation=1,  # the passes of a step are accumulated here, by hand
            max_steps=max_steps,
            summary=summary,
        )

    def configure_callbacks(self) -> list[L.Callback]:
        # a batch is prompts, not tokens: the sampled tokens per second are logged by the step itself
        return [c for c in super().configure_callbacks() if not isinstance(c, TokenThroughputMonitor)]

    # ---- one step --------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        if batch["step"] != step:
            raise RuntimeError(f"prompts of step {batch['step']} reached optimizer step {step}")
        h = self.hparams
        if h.eval_every and step % h.eval_every == 0:
            self.evaluate()
        task = self.trainer.datamodule.train
        started = time.perf_counter()
        pairs = zip(batch["indices"], batch["conversations"], strict=True)
        rollouts = [self.rollout(task, conversation, index, step) for index, conversation in pairs]
        sampling_seconds = time.perf_counter() - started
        loss = self.learn(rollouts)

        rewards = [r for rollout in rollouts for r in rollout.rewards]
        lengths = [len(s) for rollout in rollouts for s in rollout.sequences]
        sampled = sum(len(s) - r.prompt_len for r in rollouts for s in r.sequences)
        size = len(rewards)
        self.log("rl/loss", loss, batch_size=size)
        self.log("rl/reward", sum(rewards) / size, prog_bar=True, sync_dist=True, batch_size=size)
        self.log("rl/sequence_length", sum(lengths) / size, sync_dist=True, batch_size=size)
        self.log("rl/sampled_tokens_per_s", sampled / sampling_seconds, batch_size=size)
        if h.sample_every and step % h.sample_every == 0:
            self.show_samples(rollouts[0], batch["conversations"][0])
        return loss

    def rollout(self, task: Task, conversation: Conversation, index: int, step: int) -> Rollout:
        """Sample `num_samples` replies to problem `index` with the eager model and score them."""
        h, tokenizer = self.hparams, self.tokenizer
        engine = Engine(self.model, tokenizer)
        prompt = tokenizer.render_for_completion(conversation)
        sequences, masks = [], []
        self.model.eval()
        started = time.perf_counter()
        for chunk in range(h.num_samples // h.device_batch_size):
            chunk_sequences, chunk_masks = engine.generate_batch(
                prompt,
                h.device_batch_size,
                max_tokens=h.max_new_tokens,
                temperature=h.temperature,
                top_k=h.top_k,
                seed=sampling_seed(step, index, chunk),
            )
            sequences += chunk_sequences
            masks += chunk_masks
            # the engine steps every row until the longest ends (its terminal token is one more step)
            steps = min(max(len(s) for s in chunk_sequences) - len(prompt) + 1, h.max_new_tokens)
            self.sampling["decode_slots"] += h.device_batch_size * steps
            self.sampling["chunks"] += 1
            self.sampling["prompt_tokens"] += len(prompt)
        self.sampling["seconds"] += time.perf_counter() - started
        self.sampling["tokens"] += sum(len(s) - len(prompt) for s in sequences)
        replies = [read_reply(tokenizer, s[len(prompt) :]).text for s in sequences]
        rewards = [float(task.reward(conversation, reply)) for reply in replies]
        return Rollout(index, len(prompt), sequences, masks, replies, rewards)

    def learn(self, rollouts: list[Rollout]) -> torch.Tensor:
        """One forward/backward pass per chunk of samples, the gradients synced on the last; one optimizer step.
        Returns the step's loss (the sum of the passes', as scaled)."""
        h = self.hparams
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        chunks = [
            chunk
            for rollout in rollouts
            for chunk in training_chunks(rollout, h.device_batch_size, self.pad_token, h.std_advantages)
        ]
        scale = 1.0 / len(chunks)  # nanochat: 1 / (passes per prompt x prompts per rank)
        self.model.train()
        total = torch.zeros((), device=self.device)
        for number, (inputs, targets, adv) in enumerate(chunks):
            last = number == len(chunks) - 1
            with optimizer.toggle_model(sync_grad=last):  # DDP all-reduces the summed gradients once
                loss = scale * policy_gradient_loss(
                    self.forward_fn, inputs.to(self.device), targets.to(self.device), adv
                )
                self.manual_backward(loss)
            total += loss.detach()
        optimizer.step()  # runs on_before_optimizer_step: the Muon schedules
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return total

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"recipe": self.plan.recipe, "lr_scale": self.plan.lr_scale, "init_from": str(self.init_path)}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.hparams.eval_every and self.global_step >= self.plan.max_steps:
            self.evaluate()  # the run's last figures (evaluations otherwise come at the start of a step)

    # ---- measurement -----------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """pass@1..k on the held-out problems, summed over ranks (every rank must call it); logged at this step."""
        data, h = self.trainer.datamodule, self.hparams
        if data.val is None:
            return {}
        engine = Engine(self.model, self.tokenizer)
        self.model.eval()
        correct = [
            sample_correct(
                engine,
                data.val,
                index,
                num_samples=h.eval_samples,
                max_tokens=h.max_new_tokens,
                temperature=h.temperature,
                top_k=h.top_k,
                seed=index,  # the same draws at every evaluation: the figures move with the model only
            )
            for index in rank_share(min(len(data.val), data.val_examples))
        ]
        counts = [round(pass_at_k(correct, k) * len(correct)) if correct else 0 for k in range(1, h.eval_samples + 1)]
        totals = sum_across_ranks([*counts, len(correct)], device=self.device).tolist()
        metrics = {f"eval/pass@{k}": totals[k - 1] / totals[-1] for k in range(1, h.eval_samples + 1)}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        shown = ", ".join(f"pass@{k} {metrics[f'eval/pass@{k}']:.4f}" for k in (1, h.eval_samples))
        rank_zero_info(f"step {self.global_step}: {shown} on {int(totals[-1])} held-out problems")
        self.last_eval = metrics
        return metrics

    @rank_zero_only
    def show_samples(self, rollout: Rollout, conversation: Conversation) -> None:
        """A few of the replies to one prompt, with their rewards, in TensorBoard."""
        question = conversation["messages"][0]["content"]
        lines = [f"**{question}**"]
        shown = zip(rollout.rewards[:SAMPLES_SHOWN], rollout.replies[:SAMPLES_SHOWN], strict=True)
        lines += [f"reward {reward:g}: {reply}" for reward, reply in shown]
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_text("rl/samples", "  \n".join(lines), self.global_step)
