"""Arithmetic word problems in GSM8K's format, generated: the offline stand-in for GSM8K's training split.

No package ships GSM8K's training split (reference/offline-data.md), so the CPU demo learns the answer format
and the calculator tool from these: shopping totals and change, sharing and packing, rates, differences, and
wages, each solved in one to three calculator steps. An answer reads as GSM8K's do after nanochat turns their
`<<expr=result>>` marks into tool calls (tasks/gsm8k.py@dfc8833): each step is a sentence that writes the
expression out, a python part with the expression, a python_output part, the result again as text, and the
answer ends with the line `#### n`. The python_output is exactly what `nanochat_pl.sandbox.calculator` returns
for the expression ("84/7" gives "12.0"), so what the model sees in training is what the engine feeds it at
inference. Answers are checked as GSM8K's are (`final_answer_matches`, which SpellingBee shares).

Example i of the train split is drawn from `random.Random(i)`, of the test split from `Random(10_000_000 + i)`,
and a question belongs to the test split when a stable hash of its text says so (1 in 10): the same index gives
the same problem on every machine, and no test question is ever a training question.

Data: generated here; nothing to license.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import Literal, get_args

from nanochat_pl.common import UserError
from nanochat_pl.sandbox import calculator
from nanochat_pl.tasks.gsm8k import extract_answer
from nanochat_pl.tasks.hub import check_choice
from nanochat_pl.tasks.task import Conversation, Task

TEST_SEED_OFFSET = 10_000_000  # as SpellingBee's: train and test draw from disjoint seeds
TEST_SHARE = 10  # one question in TEST_SHARE belongs to the test split
Split = Literal["train", "test"]


def final_answer_matches(conversation: Conversation, reply: str) -> bool:
    """GSM8K's check, with GSM8K's `extract_answer`: `reply`'s first `#### n` is the gold one, which ends the last
    part of the last (assistant) message. A string comparison, as nanochat's: "10.0" is not "10"."""
    gold = extract_answer(conversation["messages"][-1]["content"][-1]["text"])
    return gold is not None and extract_answer(reply) == gold


NAMES = (
    ("Alice", "she"),
    ("Ben", "he"),
    ("Carmen", "she"),
    ("David", "he"),
    ("Emma", "she"),
    ("Farid", "he"),
    ("Grace", "she"),
    ("Hiro", "he"),
    ("Ines", "she"),
    ("Jamal", "he"),
    ("Keiko", "she"),
    ("Liam", "he"),
    ("Maya", "she"),
    ("Noah", "he"),
    ("Olga", "she"),
    ("Pedro", "he"),
    ("Quinn", "she"),
    ("Ravi", "he"),
    ("Sofia", "she"),
    ("Tom", "he"),
)
ITEMS = (
    "apples",
    "pencils",
    "notebooks",
    "stickers",
    "cookies",
    "marbles",
    "books",
    "oranges",
    "cupcakes",
    "toy cars",
    "candles",
    "bananas",
    "erasers",
    "postcards",
    "muffins",
    "pens",
    "seashells",
    "balloons",
    "plants",
    "tickets",
)
BILLS = (10, 20, 50, 100)


class _Answer:
    """The assistant's parts, written one sentence and one calculator step at a time."""

    def __init__(self) -> None:
        self.parts: list[dict[str, str]] = []
        self.text = ""

    def say(self, text: str) -> None:
        self.text += text

    def calc(self, expression: str) -> int:
        """Call the calculator on `expression` and continue the text with its value, an integer by design."""
        output = calculator(expression)
        value = float(output)  # a generator that made a non-integer or an error is a bug: fail loudly
        if not value.is_integer():
            raise AssertionError(f"{expression} = {output} is not a whole number")
        self.parts += [
            {"type": "text", "text": self.text},
            {"type": "python", "text": expression},
            {"type": "python_output", "text": output},
        ]
        self.text = str(int(value))
        return int(value)

    def finish(self, answer: int) -> list[dict[str, str]]:
        return [*self.parts, {"type": "text", "text": f"{self.text}\n#### {answer}"}]


Problem = tuple[str, list[dict[str, str]]]  # (question, the assistant's parts)


def _buy(rng: random.Random) -> Problem:
    (name, _), item = rng.choice(NAMES), rng.choice(ITEMS)
    count, price = rng.randint(2, 12), rng.randint(1, 20)
    answer = _Answer()
    answer.say(f"{name} pays {count} * ${price} = $")
    total = answer.calc(f"{count}*{price}")
    answer.say(".")
    return f"{name} buys {count} {item} at ${price} each. How much does {name} pay?", answer.finish(total)


def _shopping(rng: random.Random) -> Problem:
    (name, pronoun), (first, second) = rng.choice(NAMES), rng.sample(ITEMS, 2)
    count1, price1, count2, price2 = rng.randint(2, 12), rng.randint(1, 20), rng.randint(2, 12), rng.randint(1, 20)
    question = (
        f"{name} buys {count1} {first} at ${price1} each and {count2} {second} at ${price2} each. "
        f"How much does {pronoun} spend in total?"
    )
    answer = _Answer()
    answer.say(f"The {first} cost {count1} * ${price1} = $")
    cost1 = answer.calc(f"{count1}*{price1}")
    answer.say(f".\nThe {second} cost {count2} * ${price2} = $")
    cost2 = answer.calc(f"{count2}*{price2}")
    answer.say(f".\nIn total {pronoun} spends ${cost1} + ${cost2} = $")
    total = answer.calc(f"{cost1}+{cost2}")
    answer.say(".")
    return question, answer.finish(total)


def _change(rng: random.Random) -> Problem:
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    count, price = rng.randint(2, 6), rng.randint(1, 15)
    bill = rng.choice([b for b in BILLS if b > count * price])
    question = (
        f"{name} buys {count} {item} at ${price} each and pays with a ${bill} bill. How much change does {pronoun} get?"
    )
    answer = _Answer()
    answer.say(f"The {item} cost {count} * ${price} = $")
    cost = answer.calc(f"{count}*{price}")
    answer.say(f".\nThe change is ${bill} - ${cost} = $")
    change = answer.calc(f"{bill}-{cost}")
    answer.say(".")
    return question, answer.finish(change)


def _share(rng: random.Random) -> Problem:
    (name, _), item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = rng.randint(2, 9), rng.randint(2, 25)
    total = friends * each
    question = (
        f"{name} has {total} {item} and shares them equally among {friends} friends. "
        f"How many {item} does each friend get?"
    )
    answer = _Answer()
    answer.say(f"Each friend gets {total} / {friends} = ")
    share = answer.calc(f"{total}/{friends}")
    answer.say(f" {item}.")
    return question, answer.finish(share)


def _boxes(rng: random.Random) -> Problem:
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    per_box, boxes = rng.randint(2, 12), rng.randint(2, 20)
    total = per_box * boxes
    question = f"{name} packs {total} {item} into boxes of {per_box}. How many boxes does {pronoun} fill?"
    answer = _Answer()
    answer.say(f"{name} fills {total} / {per_box} = ")
    filled = answer.calc(f"{total}/{per_box}")
    answer.say(" boxes.")
    return question, answer.finish(filled)


def _rate(rng: random.Random) -> Problem:
    item = rng.choice(ITEMS)
    per_hour, hours = rng.randint(2, 30), rng.randint(2, 12)
    question = f"A machine makes {per_hour} {item} every hour. How many {item} does it make in {hours} hours?"
    answer = _Answer()
    answer.say(f"In {hours} hours it makes {per_hour} * {hours} = ")
    made = answer.calc(f"{per_hour}*{hours}")
    answer.say(f" {item}.")
    return question, answer.finish(made)


def _pace(rng: random.Random) -> Problem:
    name, pronoun = rng.choice(NAMES)
    speed, hours = rng.randint(2, 6), rng.randint(2, 5)
    later = rng.choice([h for h in range(2, 10) if h != hours])
    question = (
        f"{name} walks {speed * hours} km in {hours} hours at a steady pace. "
        f"How far does {pronoun} walk in {later} hours?"
    )
    answer = _Answer()
    answer.say(f"{name} walks {speed * hours} / {hours} = ")
    per_hour = answer.calc(f"{speed * hours}/{hours}")
    answer.say(f" km every hour.\nIn {later} hours {pronoun} walks {per_hour} * {later} = ")
    distance = answer.calc(f"{per_hour}*{later}")
    answer.say(" km.")
    return question, answer.finish(distance)


def _more_than(rng: random.Random) -> Problem:
    (name, _), (other, _) = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    fewer = rng.randint(1, 60)
    more = fewer + rng.randint(1, 40)
    question = f"{name} has {more} {item} and {other} has {fewer}. How many more {item} does {name} have than {other}?"
    answer = _Answer()
    answer.say(f"{name} has {more} - {fewer} = ")
    difference = answer.calc(f"{more}-{fewer}")
    answer.say(f" more {item} than {other}.")
    return question, answer.finish(difference)


def _left(rng: random.Random) -> Problem:
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    had = rng.randint(10, 80)
    given, bought = rng.randint(1, had - 1), rng.randint(1, 40)
    question = (
        f"{name} had {had} {item}, gave away {given} and then bought {bought} more. "
        f"How many {item} does {pronoun} have now?"
    )
    answer = _Answer()
    answer.say(f"After giving some away, {pronoun} has {had} - {given} = ")
    kept = answer.calc(f"{had}-{given}")
    answer.say(f" {item}.\nAfter buying more, {pronoun} has {kept} + {bought} = ")
    now = answer.calc(f"{kept}+{bought}")
    answer.say(f" {item}.")
    return question, answer.finish(now)


def _wages(rng: random.Random) -> Problem:
    name, pronoun = rng.choice(NAMES)
    wage, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 6)
    spent = rng.randint(1, wage * hours * days - 1)
    question = (
        f"{name} earns ${wage} per hour and works {hours} hours a day for {days} days. "
        f"After spending ${spent}, how much money does {pronoun} have left?"
    )
    answer = _Answer()
    answer.say(f"In one day {pronoun} earns ${wage} * {hours} = $")
    daily = answer.calc(f"{wage}*{hours}")
    answer.say(f".\nIn {days} days {pronoun} earns ${daily} * {days} = $")
    earned = answer.calc(f"{daily}*{days}")
    answer.say(f".\nAfter spending ${spent}, {pronoun} has ${earned} - ${spent} = $")
    left = answer.calc(f"{earned}-{spent}")
    answer.say(" left.")
    return question, answer.finish(left)


def _saving(rng: random.Random) -> Problem:
    name, _ = rng.choice(NAMES)
    weekly, weeks = rng.randint(3, 25), rng.randint(2, 15)
    goal = weekly * weeks
    question = f"{name} saves ${weekly} each week. How many weeks does {name} need to save ${goal}?"
    answer = _Answer()
    answer.say(f"{name} needs {goal} / {weekly} = ")
    needed = answer.calc(f"{goal}/{weekly}")
    answer.say(" weeks.")
    return question, answer.finish(needed)


GENERATORS: tuple[Callable[[random.Random], Problem], ...] = (
    _buy,
    _shopping,
    _change,
    _share,
    _boxes,
    _rate,
    _pace,
    _more_than,
    _left,
    _wages,
    _saving,
)


class Arithmetic(Task):
    """`size` generated word problems answered in GSM8K's format with the calculator; scored as GSM8K.

    Args:
        size: How many problems (any number: they are generated; a question may repeat within a split).
        split: "train" or "test" (no question is in both).
    """

    def __init__(
        self, size: int = 1000, split: Split = "train", *, start: int = 0, stop: int | None = None, step: int = 1
    ):
        super().__init__(start, stop, step)
        check_choice("Arithmetic split", split, get_args(Split))
        if size < 0:
            raise UserError(f"Arithmetic size must be at least 0, got {size}")
        self.size, self.split = size, split

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        rng = random.Random(index if self.split == "train" else TEST_SEED_OFFSET + index)
        while True:  # draw until the question is one of this split's (1.1 draws for train, 10 for test)
            question, parts = rng.choice(GENERATORS)(rng)
            if split_of(question) == self.split:
                return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return final_answer_matches(conversation, reply)

    def __repr__(self) -> str:
        slice_ = f"start={self.start}, stop={self.stop}, step={self.step}"
        return f"Arithmetic(size={self.size}, split={self.split!r}, {slice_})"


def split_of(question: str) -> Split:
    """The split a question belongs to, by a hash that is the same on every machine and Python version."""
    return "test" if zlib.crc32(question.encode("utf-8")) % TEST_SHARE == 0 else "train"
