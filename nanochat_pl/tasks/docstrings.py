"""Questions about the installed Python modules, answered from their docstrings: offline chat data for the demo.

The CPU demo pretrains on the installed modules' documentation (sources/offline.py, whose `ast` walk this shares);
these conversations ask about it: "What does `json.dumps` do?" -> the first paragraph of its docstring; "What are
the parameters of `json.dumps`?" -> its signature as the corpus writes it. A name's questions are all in the split
a stable hash of the name picks. Data: the standard library's docstrings (PSF License); with `packages=True`, each
site-packages distribution's under its own licence.
"""

from __future__ import annotations

import ast
import functools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from nanochat_pl.sources.offline import parsed_modules, signature, source_roots
from nanochat_pl.tasks.task import SHUFFLE_SEED, Conversation, Split, Task, exact_match, qa, split_of

# an answer a small model can learn: a first paragraph of a few words to a few sentences
MIN_ANSWER_CHARS, MAX_ANSWER_CHARS = 20, 500

# how a name is asked about: "function" (methods too), "class", and how it is "call"ed
QUESTIONS = yaml.safe_load((Path(__file__).parent / "data" / "docstring_questions.yaml").read_text(encoding="utf-8"))

# tools that ship with Python but are no library to call: IDLE, the codecs, 2to3, turtle demos, pydoc's topics, pip
NOT_A_LIBRARY = {"idlelib", "encodings", "lib2to3", "turtledemo", "pydoc_data", "ensurepip"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


class DocstringQA(Task):
    """Every question this installation's docstrings answer, in one split.

    Args:
        split: "train" or "test" (no function or class is in both).
        packages: Also read site-packages, not only the standard library (more questions, slower to build).
    """

    def __init__(self, split: Split = "train", packages: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.split, self.packages = split, packages

    def num_examples(self) -> int:
        return len(_questions_by_split(self.packages)[self.split])

    def get_example(self, index: int) -> Conversation:
        question, answer = _questions_by_split(self.packages)[self.split][index]
        return qa(question, answer)

    evaluate = staticmethod(exact_match)  # exact recall of the paragraph or the signature


@functools.cache
def _questions_by_split(packages: bool) -> dict[str, tuple[tuple[str, str], ...]]:
    stdlib, site_packages = source_roots()
    seen: set[str] = set()  # a name found twice (a module in stdlib and platstdlib, a property's setter) once
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for root in stdlib + site_packages if packages else stdlib:
        for module, tree in parsed_modules(root, include=_is_documented_module):
            for name, node, kind in _documented(module, tree):
                if name not in seen:
                    seen.add(name)
                    pairs[split_of(name)] += _questions_about(name, node, kind)
    for split_pairs in pairs.values():
        random.Random(SHUFFLE_SEED).shuffle(split_pairs)
    return {split: tuple(split_pairs) for split, split_pairs in pairs.items()}


def _is_documented_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] not in NOT_A_LIBRARY and not any(part.startswith("_") for part in parts)


def _documented(module: str, tree: ast.Module) -> Iterator[tuple[str, Function | ast.ClassDef, str]]:
    """(qualified name, node, "function" | "class" | "method") of a module's public functions, classes and methods."""
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
        pairs.append((rng.choice(QUESTIONS["class" if kind == "class" else "function"]).format(name), paragraph))
    if isinstance(node, ast.ClassDef):
        return pairs
    args = node.args
    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
    if count > (1 if kind == "method" else 0):  # a method's self alone is no parameter worth asking about
        # the corpus's own header for it ("## json.dumps(obj, *, ...)"; methods keep self, as in the source)
        pairs.append((rng.choice(QUESTIONS["call"]).format(name), f"`{name.rsplit('.', 1)[0]}.{signature(node)}`"))
    return pairs
