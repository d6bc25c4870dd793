"""Generate dev/arithmetic_heldout.json: 100 held-out arithmetic questions.

Written independently of the training templates. Answers are computed here.
Run: python dev/make_arithmetic_heldout.py
"""

import json
import random
from pathlib import Path

rng = random.Random(7)


class Bad(Exception):
    pass


def sub(x, y):
    if x <= y:
        raise Bad
    return x - y


def div(x, y):
    if x % y:
        raise Bad
    return x // y


OPS = {"+": lambda a, b: a + b, "-": sub, "*": lambda a, b: a * b, "/": div}
R = {"+": [(10, 999), (10, 999)], "-": [(100, 999), (10, 999)], "*": [(2, 99), (2, 30)], "/": [(20, 999), (2, 19)]}
BIG = {"+": [(1000, 9999), (10, 999)], "-": [(1000, 9999), (100, 999)], "/": [(1000, 9999), (2, 12)]}
NAMES = (
    "Zainab:f Mateo:m Chen:m Aiko:f Dario:m Leila:f Kwame:m Freya:f Ibrahim:m Sven:m Priya:f Tomasz:m Amara:f Kenji:m"
)
NAMES = [n.split(":") for n in NAMES.split()]
PRON = {"m": {"he": "he", "his": "his", "him": "him"}, "f": {"he": "she", "his": "her", "him": "her"}}

BARE = [
    ("{a} + {b}", "+"),
    ("{a}-{b}=", "-"),
    ("{a} * {b} = ?", "*"),
    ("{a} / {b}", "/"),
    ("{a:,} + {b}", "+", BIG["+"]),
    ("{a}*{b}", "*"),
    ("{a} - {b} =", "-"),
    ("{a}/{b}=?", "/"),
    ("{a:,} - {b}", "-", BIG["-"]),
    ("{a} x {b} =", "*"),
    ("{a}+{b}", "+"),
    ("{a} ÷ {b}", "/"),
    ("{a} -{b}", "-"),
    ("{a} * {b}?", "*"),
    ("{a:,}/{b} =", "/", BIG["/"]),
]
ASK = [
    ("What's {a} plus {b}?", "+"),
    ("can you add up {a} and {b}", "+"),
    ("what is the total of {a} and {b}?", "+"),
    ("{a} plus {b} equals what?", "+"),
    ("Please find the sum of {a:,} and {b}.", "+", BIG["+"]),
    ("If I add {b} to {a}, what do I get?", "+"),
    ("quick question: {a} and {b} added together?", "+"),
    ("How much is {a} + {b}?", "+"),
    ("add {a} to {b}", "+"),
    ("What is {a} take away {b}?", "-"),
    ("how much is {a} less {b}", "-"),
    ("subtract {b} from {a}", "-"),
    ("What's the difference between {a} and {b}?", "-"),
    ("{a} minus {b} is how much?", "-"),
    ("Can you work out {a:,} minus {b}?", "-", BIG["-"]),
    ("what's left if I take {b} away from {a}?", "-"),
    ("hi! what is {a} - {b}?", "-"),
    ("Find {a} minus {b}, please.", "-"),
    ("What is {a} multiplied by {b}?", "*"),
    ("how much is {a} times {b}", "*"),
    ("Can you multiply {a} by {b}?", "*"),
    ("What's the product of {a} and {b}?", "*"),
    ("yo what's {a}*{b}", "*"),
    ("Could you tell me what {a} times {b} is?", "*"),
    ("What do I get if I multiply {a} and {b}?", "*"),
    ("Work out {a} x {b} for me.", "*"),
    ("what's {a} lots of {b}?", "*", [(2, 20), (2, 99)]),
    ("What is {a} divided by {b}?", "/"),
    ("how much is {a} / {b}", "/"),
    ("Can you divide {a} by {b}?", "/"),
    ("What do you get if you divide {a} by {b}?", "/"),
    ("How many times does {b} go into {a}?", "/"),
    ("please calculate {a:,} divided by {b}", "/", BIG["/"]),
    ("what's {a} over {b}?", "/"),
    ("Divide {a} by {b}, please.", "/"),
]
WORD1 = [
    ("{n} has {a} stamps and buys {b} more. How many stamps does {he} have now?", "+", [(10, 300), (5, 99)]),
    (
        "A farmer picks {a} kg of potatoes in the morning and {b} kg in the afternoon. How many kg is that in total?",
        "+",
    ),
    (
        "{n} walked {a} km last month and {b} km this month. How many km did {he} walk altogether?",
        "+",
        [(20, 300), (20, 300)],
    ),
    ("A library has {a:,} books and receives {b} new ones. How many books does it have now?", "+", BIG["+"]),
    ("{n} saved {a} euros and got {b} euros for {his} birthday. How many euros does {he} have?", "+"),
    ("A tank holds {a} liters of water. {n} pours in {b} more liters. How many liters are in the tank now?", "+"),
    ("{n} had {a} candles and burned {b} of them. How many candles are left?", "-", [(20, 200), (2, 199)]),
    ("A box held {a} screws. {n} used {b} of them. How many screws remain in the box?", "-"),
    ("{n} has {a} dollars and spends {b} dollars on shirts. How many dollars are left?", "-"),
    ("A road is {a} km long. {n} has driven {b} km so far. How many km are left?", "-"),
    ("A shop had {a} jars of honey and sold {b}. How many jars are left?", "-"),
    (
        "{n} weighs {a} kg and {his} little brother weighs {b} kg. How many kg heavier is {n}?",
        "-",
        [(40, 110), (12, 39)],
    ),
    ("A pack contains {b} candles. How many candles are in {a} packs?", "*", [(2, 40), (4, 24)]),
    ("{n} buys {a} shirts at {b} dollars each. How much does {he} pay in dollars?", "*", [(2, 12), (5, 60)]),
    ("Each kite needs {b} meters of string. How many meters are needed for {a} kites?", "*", [(2, 30), (3, 25)]),
    ("{n} reads {b} pages a day. How many pages does {he} read in {a} days?", "*", [(2, 30), (5, 60)]),
    ("A bus travels {b} km every hour. How far does it go in {a} hours?", "*", [(2, 12), (30, 90)]),
    ("There are {a} shelves with {b} books on each. How many books are there?", "*", [(2, 20), (8, 45)]),
    (
        "{n} shares {a} stamps equally among {b} friends. How many stamps does each friend get?",
        "/",
        [(20, 300), (2, 9)],
    ),
    (
        "A rope {a} meters long is cut into {b} equal pieces. How many meters long is each piece?",
        "/",
        [(20, 200), (2, 8)],
    ),
    ("{n} paid {a} euros for {b} identical books. How many euros did each book cost?", "/", [(20, 250), (2, 10)]),
    ("{a} potatoes are packed into bags of {b}. How many bags are filled?", "/", [(30, 600), (5, 25)]),
    (
        "A {a}-minute film festival shows {b} films of equal length. How many minutes is each film?",
        "/",
        [(180, 900), (2, 8)],
    ),
    ("{n} pours {a} liters of juice equally into {b} jugs. How many liters go in each jug?", "/", [(10, 120), (2, 8)]),
    (
        "A factory makes {a:,} screws in {b} hours at a steady rate. How many screws does it make per hour?",
        "/",
        BIG["/"],
    ),
]
WORD2 = [
    (
        "Notebooks cost ${a} each. {n} buys {b} notebooks and a pen for ${c}. How many dollars does {he} spend?",
        lambda a, b, c: a * b + c,
        [(2, 15), (2, 12), (1, 9)],
    ),
    (
        "{n} had {a} euros, spent {b} on food and {c} on a train ticket. How many euros does {he} have left?",
        lambda a, b, c: sub(sub(a, b), c),
        [(100, 500), (10, 99), (10, 150)],
    ),
    (
        "{n} buys {a} red and {b} white candles at {c} dollars each. How many dollars does {he} pay?",
        lambda a, b, c: (a + b) * c,
        [(2, 20), (2, 20), (2, 12)],
    ),
    (
        "{n} had {a} stamps, kept {b} and shared the rest equally among {c} friends. How many did each friend get?",
        lambda a, b, c: div(sub(a, b), c),
        [(50, 400), (5, 40), (2, 9)],
    ),
    (
        "{n} splits {a} potatoes equally into {b} bags, then adds {c} more to one bag. How many are in that bag?",
        lambda a, b, c: div(a, b) + c,
        [(20, 300), (2, 10), (1, 20)],
    ),
    (
        "A hiker walks {a} km on Monday, {b} km on Tuesday and {c} km on Wednesday. How many km in total?",
        lambda a, b, c: a + b + c,
        [(5, 40), (5, 40), (5, 40)],
    ),
    (
        "{n} has {a} boxes of {b} cookies and shares them equally among {c} children. How many does each child get?",
        lambda a, b, c: div(a * b, c),
        [(2, 12), (4, 24), (2, 8)],
    ),
    (
        "{n} earns {a} dollars an hour for {b} hours, then spends {c} dollars on lunch. How many dollars are left?",
        lambda a, b, c: sub(a * b, c),
        [(8, 30), (2, 10), (5, 40)],
    ),
    (
        "{n} has {a} dollars and buys {b} books at {c} dollars each. How many dollars are left?",
        lambda a, b, c: sub(a, b * c),
        [(50, 300), (2, 8), (3, 25)],
    ),
    (
        "A bus has {a} passengers. At the next stop {b} get on and {c} get off. How many are on the bus now?",
        lambda a, b, c: sub(a + b, c),
        [(10, 60), (2, 20), (2, 40)],
    ),
    (
        "Tickets cost {a} euros for adults and {b} euros for children. What do {c} adults and {d} children pay?",
        lambda a, b, c, d: a * c + b * d,
        [(10, 40), (3, 15), (2, 6), (2, 8)],
    ),
    (
        "{n} has {a} red and {b} blue beads and makes bracelets of {c} beads each. How many bracelets can {he} make?",
        lambda a, b, c: div(a + b, c),
        [(20, 200), (20, 200), (5, 15)],
    ),
    (
        "{b} kites cost {a} dollars. How many dollars do {c} kites cost?",
        lambda a, b, c: div(a, b) * c,
        [(10, 200), (2, 6), (2, 12)],
    ),
    (
        "{n} ordered {b} shirts at {a} dollars each but returned {c}. How many dollars did {he} pay for the rest?",
        lambda a, b, c: a * sub(b, c),
        [(8, 40), (5, 20), (1, 4)],
    ),
    (
        "A building has {a} floors with {b} rooms each, and every room has {c} windows. How many windows are there?",
        lambda a, b, c: a * b * c,
        [(2, 12), (2, 15), (2, 6)],
    ),
    (
        "A sack holds {a} kg of rice. {n} uses {b} kg in May and {c} kg in June. How many kilograms are left?",
        lambda a, b, c: sub(sub(a, b), c),
        [(20, 100), (3, 30), (3, 30)],
    ),
    (
        "A train ticket costs {a} euros, and {n} gets {b} euros off each. What does {he} pay for {c} tickets?",
        lambda a, b, c: sub(a, b) * c,
        [(10, 60), (2, 9), (2, 6)],
    ),
    (
        "{b} families share {a} liters of water equally. One family uses {c} liters. How many liters does it have now?",
        lambda a, b, c: sub(div(a, b), c),
        [(20, 200), (2, 6), (1, 9)],
    ),
    (
        "A car uses {a} liters of fuel a day for {b} days, plus {c} liters on a trip. How many liters in total?",
        lambda a, b, c: a * b + c,
        [(4, 15), (2, 7), (10, 60)],
    ),
    (
        "{n} practises piano {a} minutes in the morning and {b} in the evening. How many minutes over {c} days?",
        lambda a, b, c: (a + b) * c,
        [(10, 45), (10, 45), (2, 7)],
    ),
    (
        "{n} has {a} books and buys {b} boxes with {c} books each. How many books does {he} have now?",
        lambda a, b, c: a + b * c,
        [(5, 80), (2, 6), (4, 20)],
    ),
    (
        "Dinner costs {a} euros for food and {b} euros for drinks, split equally by {c} friends. What does each pay?",
        lambda a, b, c: div(a + b, c),
        [(40, 200), (10, 80), (2, 6)],
    ),
    (
        "{n} drives {a} km a day for {b} days and uses 1 liter of fuel per {c} km. How many liters does {he} use?",
        lambda a, b, c: div(a * b, c),
        [(20, 200), (2, 7), (5, 20)],
    ),
    (
        "A school buys {a:,} books and gives {b} to the library and {c} to the lab. How many are left for classes?",
        lambda a, b, c: sub(sub(a, b), c),
        [(1000, 3000), (100, 600), (100, 600)],
    ),
    (
        "{n} buys {a} kg of apples at {b} dollars a kg and pays with a {c}-dollar bill. How much change does {he} get?",
        lambda a, b, c: sub(c, a * b),
        [(2, 5), (2, 6), [20, 50, 100]],
    ),
]


def draw(spec):
    return rng.choice(spec) if isinstance(spec, list) else rng.randint(*spec)


def make(kind, templates):
    out = []
    for text, fn, *ranges in templates:
        if isinstance(fn, str):
            ranges, fn = (ranges[0] if ranges else R[fn]), OPS[fn]
        else:
            ranges = ranges[0]
        name, sex = rng.choice(NAMES)
        while True:
            vals = [draw(s) for s in ranges]
            try:
                answer = fn(*vals)
            except Bad:
                continue
            if answer > 0:
                break
        q = text.format(n=name, **PRON[sex], **dict(zip("abcd"[: len(vals)], vals, strict=True)))
        out.append({"kind": kind, "question": q, "answer": answer})
    return out


items = make("bare", BARE) + make("ask", ASK) + make("word1", WORD1) + make("word2", WORD2)
counts = {k: sum(it["kind"] == k for it in items) for k in ("bare", "ask", "word1", "word2")}
assert counts == {"bare": 15, "ask": 35, "word1": 25, "word2": 25}, counts
assert all(type(it["answer"]) is int and it["answer"] > 0 for it in items)
assert len({it["question"] for it in items}) == len(items) == 100
path = Path(__file__).with_name("arithmetic_heldout.json")
path.write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n")
print(f"wrote {len(items)} items to {path}: {counts}")
