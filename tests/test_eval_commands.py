"""`nanochat-pl eval core|chat` end to end on a tiny checkpoint, one process and two, in the fixed precision it
states; CORE of a nanochat checkpoint against nanochat's core_eval.py; the training callbacks."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from jinja2 import Template

from nanochat_pl import precision
from nanochat_pl.checkpoint import load_model
from nanochat_pl.cli import main
from nanochat_pl.evals import chatcore as chat_evals
from nanochat_pl.evals.core import evaluate_core
from nanochat_pl.evals.core_data import LM, MC, SCHEMA, CoreTask, load_core_tasks
from nanochat_pl.stages.evaluation import ChatCoreEvaluation, CoreEvaluation
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT, make_checkpoint
from tests.stage_helpers import tiny_data, tiny_module, tiny_trainer

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "fish"]


def write_bundle(root: Path) -> Path:
    """A CORE bundle in the real layout with one task of each type, 12 examples each."""
    bundle = root / "eval_bundle"
    data = bundle / "eval_data" / "mixed"
    data.mkdir(parents=True)
    (bundle / "core.yaml").write_text(
        "icl_tasks:\n"
        "- {label: colours, dataset_uri: mixed/colours.jsonl, num_fewshot: [2], icl_task_type: multiple_choice,"
        ' continuation_delimiter: "\\nAnswer: "}\n'
        "- {label: pairs, dataset_uri: mixed/pairs.jsonl, num_fewshot: [0], icl_task_type: schema}\n"
        "- {label: echo, dataset_uri: mixed/echo.jsonl, num_fewshot: [1], icl_task_type: language_modeling}\n"
    )
    (bundle / "eval_meta_data.csv").write_text(
        "Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
        "colours,x,multiple choice,2,12,25,,x\npairs,x,schema,0,12,50,,x\necho,x,language modeling,1,12,0,,x\n"
    )

    def jsonl(name: str, rows: list[dict[str, Any]]) -> None:
        (data / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    jsonl(
        "colours.jsonl",
        [
            {"query": f"the {w} is", "choices": WORDS[i % 4 : i % 4 + 4], "gold": i % 4}
            for i, w in enumerate(WORDS + WORDS[:2])
        ],
    )
    jsonl(
        "pairs.jsonl",
        [
            {"context_options": [f"a {w}", f"the {w}"], "continuation": "sat.", "gold": i % 2}
            for i, w in enumerate(WORDS + WORDS[:2])
        ],
    )
    jsonl("echo.jsonl", [{"context": f"say {w}:", "continuation": w} for w in WORDS + WORDS[:2]])
    return bundle


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    return make_checkpoint(run / "checkpoints")  # run/checkpoints/tiny.ckpt, carrying its tokenizer


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def bf16_measured_faster(monkeypatch):
    """Were the CPU's speed race asked, it would say bf16: the evaluations must not ask."""
    monkeypatch.setattr(precision, "measured_cpu_seconds", lambda width: (2e-3, 1e-3))


def test_eval_core_prints_the_table_writes_csv_and_json_beside_the_run_and_ends_in_json(
    checkpoint, tmp_path, capsys, bf16_measured_faster
):
    bundle = write_bundle(tmp_path)
    main(["eval", "core", "--checkpoint", str(checkpoint), "--bundle", str(bundle), "--device", "cpu"])
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["precision"] == "fp32" and "precision: fp32\n" in out
    model, tokenizer, _ = load_model(checkpoint)
    expected = evaluate_core(model, tokenizer, load_core_tasks(bundle)[0], progress=False)
    assert [t["label"] for t in result["tasks"]] == ["colours", "pairs", "echo"]
    assert [t["accuracy"] for t in result["tasks"]] == [t.accuracy for t in expected.tasks]
    assert result["core"] == pytest.approx(expected.core) and "CORE" in out
    run_eval = checkpoint.parent.parent / "eval"
    csv_lines = (run_eval / "core-tiny.csv").read_text().splitlines()
    assert csv_lines[0] == "task,accuracy,centered,examples,source" and len(csv_lines) == 4
    assert json.loads((run_eval / "core-tiny.json").read_text())["core"] == result["core"]


# ---- nanochat's core_eval.py (karpathy/nanochat, nanochat/core_eval.py), ported as it reads: Jinja templates, one
# example per forward of whole rows, cross-entropy at every position, fp32 on a CPU (no autocast off CUDA) ----

NANOCHAT_TEMPLATES = {
    MC: """
{%- for example in fewshot_examples -%}
{{ example.query }}{{ continuation_delimiter }}{{ example.choices[example.gold] }}

{% endfor -%}
{{ item.query }}{{ continuation_delimiter }}{{ choice }}""".strip(),
    SCHEMA: """
{%- for example in fewshot_examples -%}
{{ example.context_options[example.gold] }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ context }}{{ continuation_delimiter }}{{ item.continuation }}""".strip(),
    LM: (  # one string, split here to fit the line
        "{%- for example in fewshot_examples -%}\n"
        "{{ example.context | trim }}{{ continuation_delimiter }}{{ example.continuation }}\n\n"
        "{% endfor -%}\n"
        "{{ item.context | trim }}{{ continuation_delimiter }}{% if include_continuation %}{{ item.continuation }}"
        "{% endif %}"
    ),
}


def find_common_length(token_sequences, direction="left"):
    min_len = min(len(seq) for seq in token_sequences)
    indices = {"left": range(min_len), "right": range(-1, -min_len - 1, -1)}[direction]
    for i, idx in enumerate(indices):
        token = token_sequences[0][idx]
        if not all(seq[idx] == token for seq in token_sequences):
            return i
    return min_len


@torch.no_grad()
def nanochat_evaluate_example(idx, model, tokenizer, data, task: CoreTask) -> bool:
    item, delimiter = data[idx], task.continuation_delimiter
    fewshot_examples = []
    if task.num_fewshot > 0:
        rng = random.Random(1234 + idx)
        fewshot_examples = [data[i] for i in rng.sample([i for i in range(len(data)) if i != idx], task.num_fewshot)]
    context = {"fewshot_examples": fewshot_examples, "continuation_delimiter": delimiter, "item": item}
    template = Template(NANOCHAT_TEMPLATES[task.task_type])
    bos = tokenizer.bos_token_id
    if task.task_type == MC:
        tokens = tokenizer.encode([template.render(choice=c, **context) for c in item["choices"]], prepend=bos)
        start_idxs, end_idxs = [find_common_length(tokens, "left")] * len(tokens), [len(x) for x in tokens]
    elif task.task_type == SCHEMA:
        prompts = [template.render(context=option, **context) for option in item["context_options"]]
        tokens = tokenizer.encode(prompts, prepend=bos)
        suffix_length = find_common_length(tokens, "right")
        end_idxs = [len(x) for x in tokens]
        start_idxs = [ei - suffix_length for ei in end_idxs]
    else:
        without = template.render(include_continuation=False, **context).strip()
        tokens_without, tokens_with = tokenizer.encode([without, template.render(include_continuation=True, **context)],
                                                      prepend=bos)  # fmt: skip
        assert tokens_without == tokens_with[: len(tokens_without)]
        tokens, start_idxs, end_idxs = [tokens_with], [len(tokens_without)], [len(tokens_with)]
    input_ids = torch.full((len(tokens), max(len(x) for x in tokens)), bos, dtype=torch.long)
    for i, x in enumerate(tokens):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    batch_size, seq_len = input_ids.size()
    outputs = model(input_ids)
    target_ids = torch.roll(input_ids, shifts=-1, dims=1)
    losses = F.cross_entropy(outputs.view(batch_size * seq_len, -1), target_ids.view(-1), reduction="none")
    losses = losses.view(batch_size, seq_len)
    losses[:, -1] = float("nan")
    predictions = outputs.argmax(dim=-1)
    if task.task_type not in (MC, SCHEMA):
        si, ei = start_idxs[0], end_idxs[0]
        return torch.all(predictions[0, si - 1 : ei - 1] == input_ids[0, si:ei]).item()
    mean_losses = [
        losses[i, si - 1 : ei - 1].mean().item() for i, (si, ei) in enumerate(zip(start_idxs, end_idxs, strict=True))
    ]
    return mean_losses.index(min(mean_losses)) == item["gold"]


def nanochat_core_correct(model, tokenizer, task: CoreTask) -> int:
    """base_eval.py's data order (Random(1337).shuffle) and core_eval.py's evaluate_task on one process: how many
    examples come out correct (nanochat takes their mean in fp32)."""
    data = list(task.examples)
    random.Random(1337).shuffle(data)
    return sum(nanochat_evaluate_example(idx, model, tokenizer, data, task) for idx in range(len(data)))


def test_eval_core_of_a_nanochat_checkpoint_is_nanochats_core_eval_in_its_default_precision(
    tmp_path, capsys, bf16_measured_faster
):
    from tests.test_nanochat_format import random_model, write_as_nanochat

    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=300)
    folder = write_as_nanochat(tmp_path / "nanochat", random_model(tokenizer, "head"), tokenizer, "head")
    bundle = write_bundle(tmp_path)
    main(["eval", "core", "--checkpoint", str(folder), "--bundle", str(bundle), "--device", "cpu",
          "--output", str(tmp_path / "out")])  # fmt: skip
    result = last_json(capsys.readouterr().out)
    model, loaded_tokenizer, _ = load_model(folder)  # nanochat's weights (bf16 embeddings) in fp32, as it runs them
    expected = [nanochat_core_correct(model, loaded_tokenizer, task) for task in load_core_tasks(bundle)[0]]
    assert result["precision"] == "fp32"
    assert [t["accuracy"] for t in result["tasks"]] == [correct / 12 for correct in expected]
    assert 0 < expected[1] < 12  # the model's choices are no constant


def test_two_processes_print_what_one_prints(checkpoint, tmp_path, capsys):
    bundle = write_bundle(tmp_path)
    results = []
    for devices in ("1", "2"):
        out_dir = tmp_path / f"out{devices}"
        main(["eval", "core", "--checkpoint", str(checkpoint), "--bundle", str(bundle), "--device", "cpu",
              "--devices", devices, "--output", str(out_dir)])  # fmt: skip
        results.append(json.loads((out_dir / "core-tiny.json").read_text()))
    capsys.readouterr()
    one, two = results
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert [t["accuracy"] for t in two["tasks"]] == [t["accuracy"] for t in one["tasks"]]
    assert [t["num_examples"] for t in two["tasks"]] == [12, 12, 12] and two["core"] == one["core"]


def test_eval_core_max_per_task_below_the_shots_runs_in_the_precision_asked_for(checkpoint, tmp_path, capsys):
    main(["eval", "core", "--checkpoint", str(checkpoint), "--bundle", str(write_bundle(tmp_path)),
          "--device", "cpu", "--max-per-task", "1", "--output", str(tmp_path), "--precision", "bf16"])  # fmt: skip
    out = capsys.readouterr().out
    assert [t["num_examples"] for t in last_json(out)["tasks"]] == [1, 1, 1]
    assert last_json(out)["precision"] == "bf16" and "precision: bf16\n" in out
    assert json.loads((tmp_path / "core-tiny.json").read_text())["precision"] == "bf16"


def test_eval_chat_runs_the_asked_tasks_and_refuses_unknown_ones(
    checkpoint, tmp_path, capsys, monkeypatch, bf16_measured_faster
):
    # the generated arithmetic problems stand in for GSM8K's (same answer format), so no data need be present
    monkeypatch.setattr(chat_evals, "build_chat_task", lambda name, **_: Arithmetic(size=3, split="test"))
    main(["eval", "chat", "--checkpoint", str(checkpoint), "-a", "GSM8K", "-x", "2", "--max-tokens", "8",
          "--device", "cpu", "--output", str(tmp_path)])  # fmt: skip
    result = last_json(capsys.readouterr().out)
    assert [(t["name"], t["num_problems"]) for t in result["tasks"]] == [("GSM8K", 2)]
    assert result["chatcore"] is None and (tmp_path / "chat-tiny.csv").is_file() and result["precision"] == "fp32"
    with pytest.raises(SystemExit):
        main(["eval", "chat", "--checkpoint", str(checkpoint), "-a", "GSM9K"])
    assert "unknown task GSM9K" in capsys.readouterr().err
    for flag in ("--num-samples", "--batch-size", "-x", "--devices"):  # PositiveInt: jsonargparse refuses 0
        with pytest.raises(SystemExit):
            main(["eval", "chat", "--checkpoint", str(checkpoint), flag, "0"])
        assert "PositiveInt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "core", "--checkpoint", str(checkpoint), "--max-per-task", "0"])
    assert "PositiveInt" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "core", "--checkpoint", str(tmp_path / "none.ckpt")])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no checkpoint at {tmp_path / 'none.ckpt'}") and "\n" not in err


class LoggedMetrics(L.pytorch.loggers.Logger):
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []

    name = "memory"
    version = 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


class TrainingModeSeen(L.Callback):
    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        self.modes.append(module.model.training)


def test_core_during_pretraining_every_n_steps_and_at_the_end(corpus, tmp_path, capsys):
    shards, tokenizer_dir = corpus
    logger, modes = LoggedMetrics(), TrainingModeSeen()
    callback = CoreEvaluation(every_n_steps=2, max_per_task=6, bundle=str(write_bundle(tmp_path)))
    module = tiny_module(tokenizer_dir, num_iterations=5)
    trainer = tiny_trainer(tmp_path, max_steps=5, logger=logger, callbacks=[callback, modes])
    trainer.fit(module, datamodule=tiny_data(shards, tokenizer_dir))
    core = [(step, m) for step, m in logger.metrics if "core_metric" in m]
    assert [step for step, _ in core] == [2, 4, 5]
    assert set(core[0][1]) == {"core_metric", "core/colours", "core/pairs", "core/echo"}
    # the figure logged at the end is the final model's, as `eval core` computes it
    expected = evaluate_core(module.model, module.tokenizer, callback._tasks, max_per_task=6, progress=False)
    assert core[-1][1]["core_metric"] == pytest.approx(expected.core)
    assert all(modes.modes)  # training went on in training mode after each evaluation
    assert "step 2: core_metric" in capsys.readouterr().out


def test_chatcore_callback_logs_each_task_and_the_categorical_mean(checkpoint, monkeypatch, bf16_measured_faster):
    model, tokenizer, _ = load_model(checkpoint)
    module = L.LightningModule()
    module.model, module.tokenizer = model.train(), tokenizer
    calls = []

    def fake_evaluate_chat(engine, names, **kwargs):
        calls.append((names, kwargs["max_problems"], engine.compute_dtype))
        kinds = {"MMLU": "categorical", "ARC-Easy": "categorical", "GSM8K": "generative"}
        tasks = [
            chat_evals.ChatTaskResult(n, 0.5, 0.25 if kinds[n] == "categorical" else 0.5, 4, "test", kinds[n])
            for n in names
        ]
        return chat_evals.ChatResult(tasks, [], None)

    monkeypatch.setattr(chat_evals, "evaluate_chat", fake_evaluate_chat)
    callback = ChatCoreEvaluation(every_n_steps=1, tasks=["MMLU", "ARC-Easy", "GSM8K"], max_generative=3)
    metrics = callback.evaluate(None, module)
    assert calls == [(["MMLU", "ARC-Easy", "GSM8K"], {"categorical": None, "generative": 3}, torch.float32)]
    assert metrics == {"chatcore/MMLU": 0.25, "chatcore/ARC-Easy": 0.25, "chatcore/GSM8K": 0.5, "chatcore_cat": 0.25}
    with pytest.raises(ValueError, match="unknown ChatCORE task"):
        ChatCoreEvaluation(tasks=["GSM9K"])
