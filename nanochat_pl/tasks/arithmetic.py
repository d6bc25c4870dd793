"""Arithmetic questions answered in GSM8K's format with the calculator, generated: the offline stand-in for GSM8K.

No package ships GSM8K's training split, so the CPU demo learns the answer format and the calculator tool from
these: many ways to ask one operation ("What is 23 times 17?", "23*17=", "Divide 96 by 4."), and word problems of
one to three calculator steps on many names, goods and units (data/arithmetic.yaml). Each step is written as GSM8K's
answers read once nanochat turns their marks into tool calls (tasks/gsm8k.py): the numbers copied from the question,
then the calculator's output as `nanochat_pl.sandbox.calculator` returns it ("84/7" gives "12.0"), as at inference.
Whole templates (every fifth) are held out for the test split: it asks in ways training never does, so its score
measures the skill, not the templates.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import yaml

from nanochat_pl.sandbox import calculator
from nanochat_pl.tasks.gsm8k import final_answer_matches, solution_parts
from nanochat_pl.tasks.task import Conversation, GeneratedTask, qa

DATA = yaml.safe_load((Path(__file__).parent / "data" / "arithmetic.yaml").read_text(encoding="utf-8"))
NAMES, GOODS, UNITS, VERBS = DATA["names"], DATA["goods"], DATA["units"], DATA["verbs"]
PLACES = [place.split() for place in DATA["places"]]  # singular, plural
SIZES = ((2, 9), (2, 20), (10, 99), (100, 999), (1000, 9999))  # a number is drawn from one of these ranges

# (question, steps, choices): a step is an expression of the question's numbers a-d and the results before it; an
# ask's `{w}` and `{s}` are one of its choices (a word for the operation, a symbol: "x" and "×" are the calculator's *)
Template = tuple[str, tuple[str, ...], dict[str, list[str]]]
ASKS: tuple[Template, ...] = tuple(
    (ask, (f"a{op}b",), {"w": DATA["words"][op], "s": DATA["symbols"][op]})
    for op in DATA["words"]
    for ask in DATA["asks"]["any"] + DATA["asks"][op]
)
PROBLEMS: tuple[Template, ...] = tuple((question, tuple(steps), {}) for question, *steps in DATA["problems"])
TEMPLATES = tuple(
    (q, tuple(re.sub(r"\b([a-d]|r\d)\b", r"{\1}", step) for step in steps), w) for q, steps, w in ASKS + PROBLEMS
)


def _number(value: int, rng: random.Random) -> str:
    """A number as a question writes it: sometimes with thousands separators, which the calculator's input drops."""
    return f"{value:,}" if value >= 1000 and rng.random() < 0.5 else str(value)


def render(template: Template, rng: random.Random) -> tuple[str, list[dict[str, str]]]:
    """One problem of a template: its question, and its answer as GSM8K writes a solution (each step
    `a * b = <<a*b=output>>result.`, then `#### answer`), turned into parts as GSM8K's are."""
    question, steps, choices = template
    while True:  # draw numbers until every step comes out a positive whole number of a sensible size
        values, lines = {k: rng.randint(*rng.choice(SIZES)) for k in "abcd"}, []
        for i, step in enumerate(steps, 1):
            expression = step.format(**values)
            output = calculator(expression)
            if output.startswith("Error") or not float(output).is_integer() or not 0 < float(output) < 1e7:
                break
            values[f"r{i}"] = result = int(float(output))
            shown = re.sub(r"([-+*/])", r" \1 ", expression)
            lines.append(f"{shown} = <<{expression}={output}>>{result}.")
        else:
            break
    (place, places), names = rng.choice(PLACES), rng.sample(NAMES, 2)
    shown = {k: _number(v, rng) for k, v in values.items() if k in "abcd"}
    text = question.format(
        **shown,
        **{slot: rng.choice(options) for slot, options in choices.items()},
        n=names[0],
        m=names[1],
        p=place,
        ps=places,
        u=rng.choice(UNITS),
        **{kind: rng.choice(verbs) for kind, verbs in VERBS.items()},
        g=(goods := rng.sample(GOODS, 2))[0],
        h=goods[1],
    )
    return text, solution_parts("\n".join(lines) + f"\n#### {result}")


class Arithmetic(GeneratedTask):
    """`size` generated arithmetic questions answered in GSM8K's format with the calculator; scored as GSM8K."""

    def get_example(self, index: int) -> Conversation:
        rng = self.rng(index)
        # whole templates are held out: the test split asks in ways the training split never does
        templates = [t for i, t in enumerate(TEMPLATES) if (i % 5 == 0) == (self.split == "test")]
        return qa(*render(rng.choice(templates), rng))

    evaluate = staticmethod(final_answer_matches)
