"""`nanochat-pl bench train` and `bench variants` as typed: the figures of real runs of a config, the JSON line,
and running out of memory as a one-line error (how the largest device batch that fits is found on a GPU)."""

import json

import pytest
import torch

from nanochat_pl.cli import main
from nanochat_pl.model.gpt import GPT
from tests.stage_helpers import B, T
from tests.test_fit_cli import run_main, write_config

pytestmark = pytest.mark.usefixtures("home")


NANOCHAT_BF16 = "--trainer.plugins=[{class_path: nanochat_pl.stages.precision.NanochatBf16}]"


@pytest.mark.parametrize("precision", ["32-true", "NanochatBf16"])
def test_bench_train_times_the_configs_steps_and_prints_json_last(precision, corpus, tmp_path, capsys):
    shards, tokenizer = corpus
    # two micro-batches a step: the tokens per step count the accumulation
    config = write_config(tmp_path / "base.yaml", shards, tokenizer, total_batch_tokens=2 * B * T)
    overrides = [] if precision == "32-true" else ["--overrides", f"[--trainer.precision=null, '{NANOCHAT_BF16}']"]
    main(["bench", "train", "--yaml", str(config), "--steps", "4", "--warmup", "1", *overrides])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["stage"] == "base" and result["depth"] == 1 and result["device"] == "cpu"
    assert result["precision"] == precision
    assert result["steps_measured"] == 3 and result["tokens_per_step"] == 2 * B * T
    assert result["step_time_s"] > 0
    assert result["tokens_per_s"] == pytest.approx(result["tokens_per_step"] / result["step_time_s"], rel=1e-2)
    assert result["mfu"] is None  # no published peak for a CPU
    assert result["peak_memory_mb"] > 0 and result["shard_optimizer"] is False  # one process: nothing to share
    table = dict(line.split(maxsplit=1) for line in lines[:-1] if line.split(maxsplit=1)[0] in result)
    assert set(table) == set(result) and table["tokens_per_step"] == str(2 * B * T)


def test_running_out_of_device_memory_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    shards, tokenizer = corpus
    config = write_config(tmp_path / "base.yaml", shards, tokenizer)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity")

    monkeypatch.setattr(GPT, "forward", out_of_memory)
    code, _, err = run_main(capsys, "bench", "train", "--yaml", str(config), "--steps", "2", "--warmup", "0")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "device_batch_size" in errors[0]
    assert errors[0].startswith("error: out of device memory: CUDA out of memory. Tried to allocate 20.00 GiB (")


def test_bench_variants_runs_each_in_its_own_process_and_tabulates_them(corpus, tmp_path, capsys):
    shards, tokenizer = corpus
    config = write_config(tmp_path / "base.yaml", shards, tokenizer)
    variants = {
        "as configured": {},
        "half the rows, two micro-batches": {"overrides": ["--data.init_args.device_batch_size=2"]},
        "broken": {"attention": "sdpa", "overrides": ["--model.init_args.no_such_setting=1"]},
    }
    args = ["--yaml", str(config), "--steps", "3", "--warmup", "1", "--variants", json.dumps(variants)]
    main(["bench", "variants", *args, "--overrides", '["--data.init_args.buffer_docs=8"]'])
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    rows = result["variants"]
    assert [row["variant"] for row in rows] == list(variants)
    assert result["overrides"] == ["--data.init_args.buffer_docs=8"]
    for row in rows[:2]:
        assert row["tokens_per_step"] == B * T and row["steps_measured"] == 2 and row["precision"] == "32-true"
    assert rows[1]["overrides"] == ["--data.init_args.device_batch_size=2"]
    assert rows[2]["error"].startswith("error:") and "no_such_setting" in rows[2]["error"]
    table = captured.out.strip().splitlines()[:-1]
    assert table[0].split()[:3] == ["variant", "precision", "tokens/s"]
    assert table[1].startswith("as configured") and table[1].split()[4] == "1.00x"
    assert table[3].startswith("broken") and "no_such_setting" in table[3]
    assert "[3/3] broken: error:" in captured.err

    code, _, err = run_main(capsys, "bench", "variants", "--variants", '{"x": {"attention": "sdpa", "lr": 1}}')
    assert code == 1
    assert err.strip() == "error: variant 'x': unknown lr (a variant takes attention, shard_optimizer, overrides)"
