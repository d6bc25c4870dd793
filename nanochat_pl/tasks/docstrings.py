"""Questions about the installed Python modules, answered from their docstrings: offline chat data for the demo.

The CPU demo pretrains on the documentation of the installed modules (nanochat_pl/sources/offline.py); these
conversations ask about the same material, so a tiny model can learn to answer from what it read:
- "What does `json.dumps` do?" -> the first paragraph of its docstring;
- "What are the parameters of `json.dumps`?" -> its signature, written as the corpus writes it.
The modules are read with offline.py's walk (`ast`, nothing imported), the standard library only by default.
A function or class belongs to the test split when a stable hash of its qualified name says so (1 in 10), so
both questions about it are in the same split; the order is the walk's, shuffled with a fixed seed, so the same
installation gives the same conversations.

Data: the docstrings of the installed modules: the standard library's are under the PSF License; with
`packages=True`, each site-packages distribution's under its own licence. Built on first use, kept in memory.
"""

from __future__ import annotations

import ast
import functools
import random
import zlib
from collections.abc import Iterator
from typing import Literal, get_args

from nanochat_pl.sources.offline import parsed_modules, signature, source_roots
from nanochat_pl.tasks.hub import check_choice
from nanochat_pl.tasks.task import SHUFFLE_SEED, Conversation, Task

Split = Literal["train", "test"]
TEST_SHARE = 10  # one function or class in TEST_SHARE belongs to the test split
# an answer a small model can learn: a first paragraph of a few words to a few sentences
MIN_ANSWER_CHARS, MAX_ANSWER_CHARS = 20, 500

WHAT_FUNCTION = ("What does `{}` do?", "What is `{}` for?", "Explain `{}`.", "Describe the Python function {}.")
WHAT_CLASS = ("What is `{}`?", "What is the class `{}` for?", "Explain the class `{}`.", "Describe {} in Python.")
PARAMETERS = (
    "What are the parameters of `{}`?",
    "What arguments does `{}` take?",
    "What is the signature of `{}`?",
    "How do I call `{}`?",
)

NOT_A_LIBRARY = {"idlelib", "encodings", "lib2to3", "turtledemo", "pydoc_data", "ensurepip"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


class DocstringQA(Task):
    """Every question this installation's docstrings answer in one split (Python 3.11's stdlib: 8,210 train, 934 test).

    Args:
        split: "train" or "test" (no function or class is in both).
        packages: Also read site-packages, not only the standard library (more questions, slower to build).
    """

    def __init__(
        self, split: Split = "train", packages: bool = False, *, start: int = 0, stop: int | None = None, step: int = 1
    ):
        super().__init__(start, stop, step)
        check_choice("DocstringQA split", split, get_args(Split))
        self.split, self.packages = split, packages

    def num_examples(self) -> int:
        return len(questions(self.split, self.packages))

    def get_example(self, index: int) -> Conversation:
        question, answer = questions(self.split, self.packages)[index]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        """Exact recall: the reply is the docstring's paragraph or the signature, up to surrounding space."""
        return reply.strip() == conversation["messages"][-1]["content"]

    def __repr__(self) -> str:
        slice_ = f"start={self.start}, stop={self.stop}, step={self.step}"
        return f"DocstringQA(split={self.split!r}, packages={self.packages}, {slice_})"


def questions(split: Split, packages: bool = False) -> tuple[tuple[str, str], ...]:
    """(question, answer) pairs of one split, in a fixed shuffled order."""
    return _questions_by_split(packages)[split]


@functools.cache
def _questions_by_split(packages: bool) -> dict[str, tuple[tuple[str, str], ...]]:
    stdlib, site_packages = source_roots()
    seen: set[str] = set()  # a name found twice (a module in stdlib and platstdlib, a property's setter) once
    pairs: dict[str, list[tuple[str, str]]] = {split: [] for split in get_args(Split)}
    for root in stdlib + site_packages if packages else stdlib:
        for module, tree in parsed_modules(root, include=_is_documented_module):
            for name, node, kind in _documented(module, tree):
                if name not in seen:
                    seen.add(name)
                    pairs[_split_of(name)] += _questions_about(name, node, kind)
    for split_pairs in pairs.values():
        random.Random(SHUFFLE_SEED).shuffle(split_pairs)
    return {split: tuple(split_pairs) for split, split_pairs in pairs.items()}


def _is_documented_module(name: str) -> bool:
    """Public modules, less the tools that ship with Python but are no library to call (IDLE's internals, the
    codec tables, 2to3, the turtle demos, pydoc's topic table, pip's bootstrap)."""
    parts = name.split(".")
    return parts[0] not in NOT_A_LIBRARY and not any(part.startswith("_") for part in parts)


def _documented(module: str, tree: ast.Module) -> Iterator[tuple[str, Function | ast.ClassDef, str]]:
    """(qualified name, node, "function" | "class" | "method") of a module's public functions, classes and
    the public methods of its public classes, in source order."""
    for node in tree.body:
        if isinstance(node, Function) and not node.name.startswith("_"):
            yield f"{module}.{node.name}", node, "function"
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield f"{module}.{node.name}", node, "class"
            for child in node.body:
                if isinstance(child, Function) and not child.name.startswith("_"):
                    yield f"{module}.{node.name}.{child.name}", child, "method"


def _questions_about(name: str, node: Function | ast.ClassDef, kind: str) -> list[tuple[str, str]]:
    """What it does (from its docstring) and, for a function with parameters, how it is called."""
    rng = random.Random(name)  # the phrasing, fixed per name (str seeds hash with SHA-512, not hash())
    pairs = []
    docstring = ast.get_docstring(node)
    paragraph = docstring.strip().split("\n\n")[0].strip() if docstring else ""
    if MIN_ANSWER_CHARS <= len(paragraph) <= MAX_ANSWER_CHARS:
        templates = WHAT_CLASS if kind == "class" else WHAT_FUNCTION
        pairs.append((rng.choice(templates).format(name), paragraph))
    if not isinstance(node, ast.ClassDef) and _has_parameters(node, kind):
        # the corpus's own header for it ("## json.dumps(obj, *, ...)"; methods keep self, as in the source)
        pairs.append((rng.choice(PARAMETERS).format(name), f"`{name.rsplit('.', 1)[0]}.{signature(node)}`"))
    return pairs


def _has_parameters(node: Function, kind: str) -> bool:
    args = node.args
    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
    return count > (1 if kind == "method" else 0)  # a method's self alone is no parameter worth asking about


def _split_of(name: str) -> Split:
    return "test" if zlib.crc32(name.encode("utf-8")) % TEST_SHARE == 0 else "train"
