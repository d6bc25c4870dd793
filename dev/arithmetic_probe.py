"""A probe for issue #23: a checkpoint on 100 arithmetic questions phrased unlike tasks/arithmetic.py's
templates, greedy, through the same Engine `serve` uses: how many replies call the calculator, how many are right;
and on 20 questions that are not arithmetic, how many replies call it anyway.

    python dev/arithmetic_probe.py sft [replies.json [questions.json]]   # prints one JSON line

The checkpoint is a name (`sft`) or a path (the engine in fp32), or the URL of a running `nanochat-pl serve`
(http://127.0.0.1:8000: its API, its precision); questions.json replaces the 100 generated here with another set.
"""

import json
import random
import re
import sys
import urllib.request

import torch

from nanochat_pl.checkpoint import resolve_checkpoint
from nanochat_pl.engine import load_engine

r = random.Random(2026)
ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
qs = []
bare = ["{a} {op} {b}", "{a}{op}{b} =", "What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}"]
words = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"]}
asks = [
    "What is {a} {w} {b}?",
    "How much is {a} {w} {b}?",
    "what's {a} {w} {b}",
    "Please work out {a} {w} {b}.",
    "Can you tell me {a} {w} {b}?",
]
for i in range(40):
    op = r.choice("+-*")
    a, b = (r.randint(10, 999), r.randint(2, 99)) if op == "*" else (r.randint(10, 9999), r.randint(10, 999))
    q = r.choice(bare).format(a=a, op=op, b=b) if i < 20 else r.choice(asks).format(a=a, w=r.choice(words[op]), b=b)
    qs.append((q, ops[op](a, b)))
for _ in range(10):
    b = r.randint(2, 25)
    a = b * r.randint(2, 40)
    q = r.choice(
        ["What is {a} divided by {b}?", "{a} / {b}", "How many times does {b} go into {a}?", "Divide {a} by {b}."]
    ).format(a=a, b=b)
    qs.append((q, a // b))
objs = ["boxes", "crates", "bags", "trays", "shelves"]
inner = ["bottles", "eggs", "screws", "jars", "tiles"]
people = ["Zara", "Oscar", "Mei", "Kofi", "Lena", "Ivan"]
for i in range(25):
    n, k = r.randint(3, 40), r.randint(5, 60)
    o, t = r.choice(objs), r.choice(inner)
    form = i % 5
    if form == 0:
        q, ans = f"A warehouse has {n} {o} with {k} {t} in each. How many {t} are there?", n * k
    elif form == 1:
        q, ans = (
            f"{r.choice(people)} had {n * k} {t} and packed them equally into {n} {o}. How many {t} went in each?",
            k,
        )
    elif form == 2:
        q, ans = (
            f"There are {k} {t} on a table. {r.choice(people)} adds {n} more. How many {t} are on the table now?",
            k + n,
        )
    elif form == 3:
        q, ans = f"A train travels {k} km every hour. How far does it go in {n} hours?", k * n
    else:
        m = r.randint(1, k - 1)
        q, ans = f"{r.choice(people)} owns {k} {t} and loses {m}. How many are left?", k - m
    qs.append((q, ans))
for i in range(25):
    a, b, c = r.randint(2, 20), r.randint(2, 30), r.randint(1, 50)
    p = r.choice(people)
    form = i % 5
    if form == 0:
        q, ans = f"{p} buys {a} tickets for ${b} each and pays a ${c} fee. What is the total cost?", a * b + c
    elif form == 1:
        q, ans = (
            f"A garden has {a} rows of {b} tulips. {c % (a * b) or 1} tulips wilt. How many tulips are still fine?",
            a * b - (c % (a * b) or 1),
        )
    elif form == 2:
        q, ans = f"{p} reads {a} pages a day for {b} days, then {c} more pages. How many pages in all?", a * b + c
    elif form == 3:
        q, ans = (
            f"A bus carries {a * b} people split evenly over {a} trips, plus {c} on a last trip. "
            "How many per regular trip?",
            b,
        )
    else:
        q, ans = (
            f"Each of {a} classrooms has {b} desks and {c} chairs. How many pieces of furniture are there?",
            a * (b + c),
        )
    qs.append((q, ans))
assert len(qs) == 100
qs = [(q, a, "direct" if i < 50 else "word1" if i < 75 else "word2") for i, (q, a) in enumerate(qs)]
if len(sys.argv) > 3:  # another held-out set: a JSON list of {"kind", "question", "answer"}
    with open(sys.argv[3]) as f:
        qs = [(row["question"], row["answer"], row["kind"]) for row in json.load(f)]
n = len(qs)
# not arithmetic: a reply should call no calculator
others = [
    "hello",
    "What is the capital of France?",
    "Who are you?",
    "What does `json.dumps` do?",
    "Tell me a joke.",
    "How are you today?",
    "What does os.path.join do?",
    "Write a short poem about the sea.",
    "What can you do?",
    "Explain what a Python list is.",
    "What color is the sky?",
    "Thank you!",
    "Why is the sea salty?",
    "What is Python?",
    "Who wrote Hamlet?",
    "Good morning!",
    "What is recursion?",
    "Describe `collections.Counter`.",
    "Can you help me with my homework?",
    "What is your favourite food?",
]
qs += [(q, None, "other") for q in others]
if sys.argv[1].startswith("http"):  # a running `nanochat-pl serve`: ask through its API, as a user would

    def reply(q: str) -> str:
        body = {"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 128}
        request = urllib.request.Request(f"{sys.argv[1]}/v1/chat/completions", json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request) as response:
            return json.load(response)["choices"][0]["message"]["content"]  # calls shown as <<expression=result>>
else:
    engine, _ = load_engine(resolve_checkpoint(sys.argv[1]), torch.device("cpu"), precision="fp32")

    def reply(q: str) -> str:
        ids = engine.tokenizer.render_for_completion([{"role": "user", "content": q}])
        seqs, _ = engine.generate_batch(ids, max_tokens=128, temperature=0.0)
        return engine.tokenizer.decode(seqs[0][len(ids) :])


calls = right = false_calls = 0
rows = []
for q, ans, kind in qs:
    text = reply(q)
    m = re.search(r"####\s*(-?[\d,\.]+)", text)
    nums = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    got = m.group(1).replace(",", "") if m else (nums[-1] if nums else None)
    call = "<|python_start|>" in text or "<<" in text
    if ans is None:
        false_calls += call
        rows.append({"q": q, "kind": kind, "reply": text[:160], "call": call})
        continue
    ok = got is not None and float(got) == ans
    calls += call
    right += ok
    rows.append({"q": q, "kind": kind, "answer": ans, "reply": text[:160], "call": call, "right": ok})
with open(sys.argv[2] if len(sys.argv) > 2 else "replies.json", "w") as out:
    json.dump(rows, out, indent=1)
by_kind: dict[str, int] = {}
for row in rows:
    if "right" in row:
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + row["right"]
summary = {"calls": calls, "right": right, "n": n, **by_kind, "other calls": false_calls, "others": len(others)}
print(json.dumps(summary))
