"""RL after SFT (nanochat's chat_rl.py): the model practises problems with its calculator and is pushed toward the
replies that were right. nanochat calls it "GRPO"; it is on-policy REINFORCE with a mean baseline (no KL to a
reference model, no PPO ratio or clipping). In one optimizer step every rank samples replies to its own prompts
(data/rl_data.py) with the KV-cached engine, scores them with the task's `reward`, and trains on the advantages
r - mean(r) of each prompt's samples with nanochat's token-level loss (`learn`).

Every `eval_every` steps (and after the last) the stage measures pass@1..k on held-out problems, summed over ranks.
Sampling inside the step and a variable number of passes per step need Lightning's manual optimization.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine
from nanochat_pl.evals.harness import rank_share, sample_correct, sum_across_ranks
from nanochat_pl.limits import check_sampling
from nanochat_pl.reply import read_reply
from nanochat_pl.stages.callbacks import TokenThroughputMonitor
from nanochat_pl.stages.lm import FromCheckpoint, RunPlan
from nanochat_pl.tasks.task import Conversation, Task

STD_EPSILON = 1e-4  # added to the standard deviation of a prompt's rewards (TRL's GRPO)
SAMPLES_SHOWN = 4  # replies shown every sample_every steps


@dataclass
class Rollout:
    """One prompt's samples: prompt + reply tokens (no terminal token), masks (0 on the prompt and forced tokens)."""

    prompt_len: int
    sequences: list[list[int]]
    masks: list[list[int]]
    replies: list[str]
    rewards: list[float]


def advantages(rewards: list[float], std_normalized: bool = False) -> torch.Tensor:
    """r - mean(r) over one prompt's samples; with `std_normalized` also divided by their standard deviation."""
    r = torch.tensor(rewards, dtype=torch.float32)
    return (r - r.mean()) / (r.std() + STD_EPSILON if std_normalized and len(rewards) > 1 else 1.0)


class RLTraining(FromCheckpoint):
    """On-policy RL of a chat checkpoint on a task's rewards (see the module docstring).

    Args:
        init_from: The checkpoint to start from: a `.ckpt`, or a name ("sft": the newest SFT checkpoint in the home).
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
        init_from: str = "sft",
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
        check_sampling(temperature, top_k, max_new_tokens)  # from the config: the engine only asserts
        self.check_settings("num_samples", "device_batch_size", "num_epochs", "eval_samples")
        if num_samples % device_batch_size:
            raise UserError(f"num_samples {num_samples} must be a multiple of device_batch_size {device_batch_size}")
        self.automatic_optimization = False
        self.start_from(init_from, tokenizer_dir=tokenizer_dir)
        self.pad_token = self.tokenizer.encode_special("<|assistant_end|>")
        # totals of this process's sampling, for the throughput figures (bench train)
        self.sampling = {"seconds": 0.0, "tokens": 0, "decode_slots": 0, "chunks": 0, "prompt_tokens": 0}
        self.last_eval: dict[str, float] = {}
        self.sampling_kwargs = dict(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k)

    def device_batch_size(self) -> int:
        return self.hparams.device_batch_size

    def plan_run(self, device_batch_size: int) -> RunPlan:
        h, trainer, data = self.hparams, self.trainer, self.trainer.datamodule
        max_steps = trainer.max_steps if trainer.max_steps > 0 else data.steps_per_epoch * h.num_epochs
        summary = f"{len(data.train):,} problems, {data.examples_per_step} per step x {h.num_samples} samples"
        # total_batch_tokens None: the passes of a step are accumulated here, by hand
        return self.inherited_plan("rl", max_steps, None, f"{summary}, {max_steps:,} steps")

    def configure_callbacks(self) -> list[L.Callback]:
        # a batch is prompts, not tokens: the sampled tokens per second are logged by the step itself
        return [c for c in super().configure_callbacks() if not isinstance(c, TokenThroughputMonitor)]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        assert batch["step"] == step, f"prompts of step {batch['step']} reached optimizer step {step}"
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
        if h.sample_every and step % h.sample_every == 0:  # a few replies to one prompt, with their rewards
            question, first = batch["conversations"][0]["messages"][0]["content"], rollouts[0]
            shown = zip(first.rewards[:SAMPLES_SHOWN], first.replies[:SAMPLES_SHOWN], strict=True)
            self.log_text("rl/samples", "\n".join([f"**{question}**", *(f"reward {r:g}: {t}" for r, t in shown)]))
        return loss

    def rollout(self, task: Task, conversation: Conversation, index: int, step: int) -> Rollout:
        h, tokenizer = self.hparams, self.tokenizer
        engine = Engine(self.model, tokenizer)  # in the evals' fixed precision: the same samples on every rank
        prompt = tokenizer.render_for_completion(conversation)
        sequences, masks = [], []
        self.model.eval()
        started = time.perf_counter()
        for chunk in range(h.num_samples // h.device_batch_size):
            # a function of (step, problem, chunk) only: the same draws after a resume, and on any number of ranks
            seed = int(np.random.SeedSequence([step, index, chunk]).generate_state(1, np.uint64)[0] >> 1)
            drawn, drawn_masks = engine.generate_batch(prompt, h.device_batch_size, seed=seed, **self.sampling_kwargs)
            sequences += drawn
            masks += drawn_masks
            # the engine steps every row until the longest ends (its terminal token is one more step)
            steps = min(max(len(s) for s in drawn) - len(prompt) + 1, h.max_new_tokens)
            self.sampling["decode_slots"] += h.device_batch_size * steps
            self.sampling["chunks"] += 1
            self.sampling["prompt_tokens"] += len(prompt)
        self.sampling["seconds"] += time.perf_counter() - started
        self.sampling["tokens"] += sum(len(s) - len(prompt) for s in sequences)
        replies = [read_reply(tokenizer, s[len(prompt) :]).text for s in sequences]
        rewards = [float(task.reward(conversation, reply)) for reply in replies]
        return Rollout(len(prompt), sequences, masks, replies, rewards)

    def learn(self, rollouts: list[Rollout]) -> torch.Tensor:
        """One forward/backward pass per chunk of `device_batch_size` samples of a prompt, the gradients synced on the
        last; one optimizer step. Returns the step's loss (the sum of the passes', as scaled)."""
        h, optimizer, scheduler = self.hparams, self.optimizers(), self.lr_schedulers()
        chunks = [(r, first) for r in rollouts for first in range(0, len(r.sequences), h.device_batch_size)]
        scale = 1.0 / len(chunks)  # nanochat: 1 / (passes per prompt x prompts per rank)
        self.model.train()
        total = torch.zeros((), device=self.device)
        for number, (rollout, first) in enumerate(chunks):
            sequences = rollout.sequences[first : first + h.device_batch_size]
            masks = rollout.masks[first : first + h.device_batch_size]
            adv = advantages(rollout.rewards, h.std_advantages)[first : first + h.device_batch_size].to(self.device)
            # new tensors from the engine's token lists, padded; targets -1 where no gradient goes (the prompt, the
            # calculator's forced tokens, the padding)
            length = max(len(s) for s in sequences)
            ids = torch.tensor([s + [self.pad_token] * (length - len(s)) for s in sequences], device=self.device)
            trained = torch.tensor([m + [0] * (length - len(m)) for m in masks], dtype=torch.bool, device=self.device)
            targets = ids[:, 1:].masked_fill(~trained[:, 1:], -1)
            with optimizer.toggle_model(sync_grad=number == len(chunks) - 1):  # DDP all-reduces the sum once
                # -sum over the trained tokens of A x log p(token), divided by their number (token-level, as nanochat)
                log_probs = -self.forward_fn(ids[:, :-1], targets, loss_reduction="none")
                loss = scale * (-(log_probs * adv[:, None]).sum() / (targets >= 0).sum().clamp(min=1))
                self.manual_backward(loss)
            total += loss.detach()
        optimizer.step()  # runs on_before_optimizer_step: the Muon schedules
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.hparams.eval_every and self.global_step >= self.plan.max_steps:
            self.evaluate()  # the run's last figures (evaluations otherwise come at the start of a step)

    def evaluate(self) -> dict[str, float]:
        """pass@1..k on the held-out problems, summed over ranks (every rank must call it); logged at this step."""
        data, h = self.trainer.datamodule, self.hparams
        if data.val is None:
            return {}
        engine = Engine(self.model, self.tokenizer)
        self.model.eval()
        # the same draws at every evaluation (seed: the problem): the figures move with the model only
        problems = rank_share(min(len(data.val), data.val_examples))
        correct = [
            sample_correct(engine, data.val, i, num_samples=h.eval_samples, seed=i, **self.sampling_kwargs)
            for i in problems
        ]
        # pass@k: the problems with a right reply among their first k samples (nanochat chat_rl.py)
        counts = [sum(any(samples[:k]) for samples in correct) for k in range(1, h.eval_samples + 1)]
        totals = sum_across_ranks([*counts, len(correct)], device=self.device).tolist()
        metrics = {f"eval/pass@{k}": totals[k - 1] / totals[-1] for k in range(1, h.eval_samples + 1)}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        shown = ", ".join(f"pass@{k} {metrics[f'eval/pass@{k}']:.4f}" for k in (1, h.eval_samples))
        rank_zero_info(f"step {self.global_step}: {shown} on {int(totals[-1])} held-out problems")
        self.last_eval = metrics
        return metrics
