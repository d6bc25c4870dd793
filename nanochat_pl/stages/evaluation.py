"""Evaluation during training, as nanochat's base_train.py and chat_sft.py do it: CORE of pretraining, ChatCORE of
SFT, every `every_n_steps` steps and at the end. Every rank scores its share of the problems with the eager model, the
counts summed across ranks (evals/harness.py); rank 0 logs nanochat's keys: `core_metric`, `core/<task>`,
`chatcore_metric`, `chatcore_cat` (the categorical tasks' mean) and `chatcore/<task>`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning as L

from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine
from nanochat_pl.stages.callbacks import FinalCheckpoint


class _EveryNSteps(L.Callback, ABC):
    """Run `evaluate` after every `every_n_steps`-th optimizer step and after the last one, each step once."""

    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise UserError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_evaluated: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # on every micro-batch: global_step already counts the optimizer step the micro-batch completed
        if trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for callback in trainer.callbacks:  # the final checkpoint first: an evaluation that fails loses no training
            if isinstance(callback, FinalCheckpoint):
                callback.on_train_end(trainer, pl_module)
        self._run(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step in (0, self._last_evaluated):
            return
        self._last_evaluated = trainer.global_step
        metrics = self.evaluate(trainer, pl_module)  # the evaluators run in eval mode and restore the mode
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k)
            print(f"\nstep {trainer.global_step}: {shown}")

    @abstractmethod
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The figures to log, the same on every rank."""


class CoreEvaluation(_EveryNSteps):
    """CORE of the model being pretrained (nanochat base_train.py: every 2,000 steps, 500 examples per task).

    Args:
        every_n_steps: Evaluate after every this many optimizer steps (and after the last).
        max_per_task: Examples scored per task.
        bundle: nanochat's eval bundle (directory or .zip); default: as `nanochat-pl eval core` finds it.
    """

    def __init__(self, every_n_steps: int = 2000, max_per_task: int | None = 500, bundle: str | None = None):
        super().__init__(every_n_steps)
        self.max_per_task, self.bundle = max_per_task, bundle
        self._tasks, self._skipped = None, []  # loaded at setup, with the reasons some are skipped

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._tasks is not None:
            return
        from nanochat_pl.evals.core_data import load_core_tasks

        # rank 0 first: it may download the bundle, which the others then read from the cache
        if trainer.is_global_zero:
            self._tasks, self._skipped = load_core_tasks(self.bundle)
            for reason in self._skipped:
                print(f"CORE during training skips {reason}")
        trainer.strategy.barrier("core bundle")
        if not trainer.is_global_zero:
            self._tasks, self._skipped = load_core_tasks(self.bundle)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from nanochat_pl.evals.core import evaluate_core

        kwargs = {"max_per_task": self.max_per_task, "skipped": self._skipped, "progress": False}
        result = evaluate_core(pl_module.model, pl_module.tokenizer, self._tasks, **kwargs)
        return {"core_metric": result.core, **{f"core/{task.label}": task.centered for task in result.tasks}}


class ChatCoreEvaluation(_EveryNSteps):
    """ChatCORE of the model being fine-tuned (nanochat HEAD chat_sft.py: every 200 steps, every categorical problem
    and 24 problems of each generative task, greedy).

    Args:
        every_n_steps: Evaluate after every this many optimizer steps (and after the last).
        tasks: The tasks; default: all six (ChatCORE itself is logged only when all six run).
        max_categorical: Problems per categorical task (ARC, MMLU); None: all.
        max_generative: Problems per generative task (GSM8K, HumanEval, SpellingBee).
        max_tokens: At most this many new tokens per reply.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        tasks: list[str] | None = None,
        max_categorical: int | None = None,
        max_generative: int = 24,
        max_tokens: int = 512,
    ):
        super().__init__(every_n_steps)
        from nanochat_pl.evals.chatcore import CHATCORE_TASKS

        self.tasks = list(CHATCORE_TASKS) if tasks is None else list(tasks)
        unknown = [name for name in self.tasks if name not in CHATCORE_TASKS]
        if unknown:
            raise ValueError(f"unknown ChatCORE task {', '.join(unknown)}; the tasks are {', '.join(CHATCORE_TASKS)}")
        self.max_categorical, self.max_generative, self.max_tokens = max_categorical, max_generative, max_tokens

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from nanochat_pl.evals.chatcore import evaluate_chat

        engine = Engine(pl_module.model, pl_module.tokenizer)
        caps = {"categorical": self.max_categorical, "generative": self.max_generative}
        result = evaluate_chat(engine, self.tasks, max_problems=caps, max_tokens=self.max_tokens, progress=False)
        metrics = {f"chatcore/{task.name}": task.centered for task in result.tasks}
        categorical = [task.centered for task in result.tasks if task.kind == "categorical"]
        if categorical:
            metrics["chatcore_cat"] = sum(categorical) / len(categorical)
        if result.chatcore is not None:
            metrics["chatcore_metric"] = result.chatcore
        return metrics
