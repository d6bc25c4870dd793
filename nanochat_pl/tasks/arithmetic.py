"""Arithmetic word problems in GSM8K's format, generated: the offline stand-in for GSM8K's training split.

No package ships GSM8K's training split, so the CPU demo learns the answer format and the calculator tool from
these (one to three calculator steps each), written as GSM8K's answers read once nanochat turns their marks into
tool calls (tasks/gsm8k.py): a python_output is what `nanochat_pl.sandbox.calculator` returns ("84/7" gives
"12.0"), as at inference. Whole templates (every fifth) are held out for the test split: it asks in ways training
never does, so its score measures the skill, not the templates.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from nanochat_pl.sandbox import calculator
from nanochat_pl.tasks.gsm8k import final_answer_matches, solution_parts
from nanochat_pl.tasks.task import Conversation, GeneratedTask, qa

# each person's name and pronoun; the things they buy and have
PEOPLE = (
    "Alice:she Ben:he Carmen:she David:he Emma:she Farid:he Grace:she Hiro:he Ines:she Jamal:he Keiko:she Liam:he "
    "Maya:she Noah:he Olga:she Pedro:he Quinn:she Ravi:he Sofia:she Tom:he"
)
THINGS = (
    "apples, pencils, notebooks, stickers, cookies, marbles, books, oranges, cupcakes, toy cars, candles, bananas, "
    "erasers, postcards, muffins, pens, seashells, balloons, plants, tickets"
)
PRONOUNS = dict(person.split(":") for person in PEOPLE.split())
NAMES = tuple(PRONOUNS)
ITEMS = tuple(THINGS.split(", "))
BILLS = (10, 20, 50, 100)

# (draw the values, the question, the answer): a mark `<<expression=name>>` in the answer is a calculator step,
# whose whole-number result is written after it and is `{name}` from then on; the last result is the answer.
# `{pronoun}` is `{name}`'s. `dict`'s keyword arguments are evaluated in order, so the draws come in a fixed order.
Template = tuple[Callable[[random.Random], dict[str, Any]], str, str]
TEMPLATES: tuple[Template, ...] = (
    (
        lambda r: dict(name=r.choice(NAMES), item=r.choice(ITEMS), count=r.randint(2, 12), price=r.randint(1, 20)),
        "{name} buys {count} {item} at ${price} each. How much does {name} pay?",
        "{name} pays {count} * ${price} = $<<{count}*{price}=total>>.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES),
            items=r.sample(ITEMS, 2),
            count1=r.randint(2, 12),
            price1=r.randint(1, 20),
            count2=r.randint(2, 12),
            price2=r.randint(1, 20),
        ),
        "{name} buys {count1} {items[0]} at ${price1} each and {count2} {items[1]} at ${price2} each. "
        "How much does {pronoun} spend in total?",
        "The {items[0]} cost {count1} * ${price1} = $<<{count1}*{price1}=cost1>>.\n"
        "The {items[1]} cost {count2} * ${price2} = $<<{count2}*{price2}=cost2>>.\n"
        "In total {pronoun} spends ${cost1} + ${cost2} = $<<{cost1}+{cost2}=total>>.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES),
            item=r.choice(ITEMS),
            count=(count := r.randint(2, 6)),
            price=(price := r.randint(1, 15)),
            bill=r.choice([bill for bill in BILLS if bill > count * price]),
        ),
        "{name} buys {count} {item} at ${price} each and pays with a ${bill} bill. How much change does {pronoun} get?",
        "The {item} cost {count} * ${price} = $<<{count}*{price}=cost>>.\nThe change is ${bill} - ${cost} = "
        "$<<{bill}-{cost}=change>>.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES), item=r.choice(ITEMS), friends=(n := r.randint(2, 9)), total=n * r.randint(2, 25)
        ),
        "{name} has {total} {item} and shares them equally among {friends} friends. How many {item} does each friend "
        "get?",
        "Each friend gets {total} / {friends} = <<{total}/{friends}=share>> {item}.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES), item=r.choice(ITEMS), per_box=(n := r.randint(2, 12)), total=n * r.randint(2, 20)
        ),
        "{name} packs {total} {item} into boxes of {per_box}. How many boxes does {pronoun} fill?",
        "{name} fills {total} / {per_box} = <<{total}/{per_box}=boxes>> boxes.",
    ),
    (
        lambda r: dict(item=r.choice(ITEMS), per_hour=r.randint(2, 30), hours=r.randint(2, 12)),
        "A machine makes {per_hour} {item} every hour. How many {item} does it make in {hours} hours?",
        "In {hours} hours it makes {per_hour} * {hours} = <<{per_hour}*{hours}=made>> {item}.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES),
            walked=r.randint(2, 6) * (hours := r.randint(2, 5)),
            hours=hours,
            later=r.choice([h for h in range(2, 10) if h != hours]),
        ),
        "{name} walks {walked} km in {hours} hours at a steady pace. How far does {pronoun} walk in {later} hours?",
        "{name} walks {walked} / {hours} = <<{walked}/{hours}=speed>> km every hour.\n"
        "In {later} hours {pronoun} walks {speed} * {later} = <<{speed}*{later}=distance>> km.",
    ),
    (
        lambda r: dict(
            names=r.sample(NAMES, 2), item=r.choice(ITEMS), fewer=(n := r.randint(1, 60)), more=n + r.randint(1, 40)
        ),
        "{names[0]} has {more} {item} and {names[1]} has {fewer}. How many more {item} does {names[0]} have than "
        "{names[1]}?",
        "{names[0]} has {more} - {fewer} = <<{more}-{fewer}=difference>> more {item} than {names[1]}.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES),
            item=r.choice(ITEMS),
            had=(had := r.randint(10, 80)),
            given=r.randint(1, had - 1),
            bought=r.randint(1, 40),
        ),
        "{name} had {had} {item}, gave away {given} and then bought {bought} more. How many {item} does {pronoun} "
        "have now?",
        "After giving some away, {pronoun} has {had} - {given} = <<{had}-{given}=kept>> {item}.\n"
        "After buying more, {pronoun} has {kept} + {bought} = <<{kept}+{bought}=now>> {item}.",
    ),
    (
        lambda r: dict(
            name=r.choice(NAMES),
            wage=(wage := r.randint(8, 30)),
            hours=(hours := r.randint(2, 8)),
            days=(days := r.randint(2, 6)),
            spent=r.randint(1, wage * hours * days - 1),
        ),
        "{name} earns ${wage} per hour and works {hours} hours a day for {days} days. After spending ${spent}, how "
        "much money does {pronoun} have left?",
        "In one day {pronoun} earns ${wage} * {hours} = $<<{wage}*{hours}=daily>>.\n"
        "In {days} days {pronoun} earns ${daily} * {days} = $<<{daily}*{days}=earned>>.\n"
        "After spending ${spent}, {pronoun} has ${earned} - ${spent} = $<<{earned}-{spent}=left>> left.",
    ),
    (
        lambda r: dict(name=r.choice(NAMES), weekly=(n := r.randint(3, 25)), goal=n * r.randint(2, 15)),
        "{name} saves ${weekly} each week. How many weeks does {name} need to save ${goal}?",
        "{name} needs {goal} / {weekly} = <<{goal}/{weekly}=weeks>> weeks.",
    ),
)

# Direct asks, one calculator step (data/arithmetic.yaml): many ways to ask each operation, and one-step word problems
# on other things than the templates above, so that the calculator call, not a template, is what is learned.
ASK_DATA = yaml.safe_load((Path(__file__).parent / "data" / "arithmetic.yaml").read_text(encoding="utf-8"))
PLACES, GOODS, UNITS = ASK_DATA["places"], ASK_DATA["goods"], ASK_DATA["units"]


def _operands(r: random.Random, op: str) -> dict[str, Any]:
    """Two numbers for `op`, of the sizes people ask about; a division comes out whole."""
    if op == "/":
        b = r.randint(2, 30)
        return dict(a=b * r.randint(2, 60), b=b)
    if op == "*":
        return dict(a=r.randint(2, 999), b=r.randint(2, 99))
    a, b = r.randint(2, 9999), r.randint(2, 999)
    return dict(a=max(a, b), b=min(a, b)) if op == "-" else dict(a=a, b=b)


def _ask(op: str, question: str) -> Template:
    def draw(r: random.Random) -> dict[str, Any]:
        return dict(_operands(r, op), s=op, w=r.choice(ASK_DATA["words"][op]))

    return draw, question, "{a} {s} {b} = <<{a}" + op + "{b}=result>>."


def _word_problem(op: str, question: str, answer: str) -> Template:
    def draw(r: random.Random) -> dict[str, Any]:
        return dict(_operands(r, op), p=r.choice(PLACES), g=r.choice(GOODS), u=r.choice(UNITS), n=r.choice(NAMES))

    return draw, question, answer + " <<{a}" + op + "{b}=result>>."


ASK_TEMPLATES = tuple(_ask(op, q) for op in ASK_DATA["words"] for q in ASK_DATA["asks"]["any"] + ASK_DATA["asks"][op])
ASK_TEMPLATES += tuple(_word_problem(*problem) for problem in ASK_DATA["word_problems"])
STEP_RE = re.compile(r"<<([^=]+)=(\w+)>>")


def render(template: Template, rng: random.Random) -> tuple[str, list[dict[str, str]]]:
    """One problem of a template: its question, and its answer written as GSM8K writes a solution (each step
    `<<expression=output>>result`), turned into parts as GSM8K's are."""
    draw, question, answer = template
    values = draw(rng)
    values["pronoun"] = PRONOUNS.get(values.get("name"))

    def step(mark: re.Match[str]) -> str:
        expression = mark[1].format(**values)
        output = calculator(expression)
        assert float(output).is_integer(), f"{expression} = {output} is not a whole number"
        values[mark[2]] = values["answer"] = int(float(output))
        return f"<<{expression}={output}>>{values['answer']}"

    solution = STEP_RE.sub(step, answer).format(**values)
    return question.format(**values), solution_parts(f"{solution}\n#### {values['answer']}")


class Arithmetic(GeneratedTask):
    """`size` generated word problems answered in GSM8K's format with the calculator; scored as GSM8K."""

    def get_example(self, index: int) -> Conversation:
        rng = self.rng(index)
        # whole templates are held out: the test split asks in ways the training split never does
        templates = [t for i, t in enumerate(TEMPLATES + ASK_TEMPLATES) if (i % 5 == 0) == (self.split == "test")]
        question, parts = render(rng.choice(templates), rng)
        return qa(question, parts)

    evaluate = staticmethod(final_answer_matches)
