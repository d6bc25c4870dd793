"""`nanochat-pl fit|validate` as a user runs them: a real run from a YAML written here, and the bad-input paths.

The real run and `validate` go through a subprocess (the installed console script's module); the error paths run
`nanochat_pl.cli.main` in this process, which is the same code without the second of start-up per call.
"""

import inspect
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nanochat_pl.checkpoint import load_model
from nanochat_pl.cli import main
from nanochat_pl.lightning_cli import run_lightning_cli
from nanochat_pl.model.gpt import GPT
from nanochat_pl.stages.base import BaseTraining
from nanochat_pl.tokenizer import Tokenizer
from tests.stage_helpers import B, T, cpu_trainer_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
MUON_MATRIX_LR = 0.02  # nanochat base_train.py@92d63d4 --matrix-lr
WARMUP_STEPS = 40  # nanochat HEAD's LR warmup (optim/recipes.py)


pytestmark = pytest.mark.usefixtures("home")  # every test writes under its own NANOCHAT_PL_HOME


def write_config(path: Path, source: Path, tokenizer: Path, data_overrides=None, **model_overrides) -> Path:
    """A depth-1 pretraining run of STEPS steps, validating every 2, checkpointing at the end."""
    config = {
        "seed_everything": 0,
        "trainer": cpu_trainer_config({"every_n_train_steps": STEPS, "save_last": True}),
        "model": {
            "class_path": "nanochat_pl.stages.base.BaseTraining",
            "init_args": {
                "depth": 1,
                "aspect_ratio": 64,
                "head_dim": 32,
                "sequence_len": T,
                "tokenizer_dir": str(tokenizer),
                "num_iterations": STEPS,
                "total_batch_tokens": B * T,
                "eval_every": 2,
                "sample_every": 0,
                **model_overrides,
            },
        },
        "data": {
            "class_path": "nanochat_pl.data.pretrain_data.PretrainDataModule",
            "init_args": {
                "source": str(source),
                "device_batch_size": B,
                "buffer_docs": 16,
                "val_tokens": 4 * B * T,
                **(data_overrides or {}),
            },
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def nanochat(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nanochat_pl.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`nanochat-pl ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_help_lists_the_commands():
    result = subprocess.run(["nanochat-pl", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("fit", "validate", "data download", "tokenizer train"):
        assert f"  {command} " in result.stdout


def test_a_real_fit_writes_a_checkpoint_and_tensorboard_logs_and_validate_reproduces_its_bpb(corpus, tmp_path, home):
    shards, tokenizer = corpus
    config = write_config(tmp_path / "tiny.yaml", shards, tokenizer)
    fit = nanochat("fit", "--config", str(config))
    assert fit.returncode == 0, fit.stderr[-3000:]

    run_dir = home / "runs" / "base" / "lightning_logs" / "version_0"  # the default root: runs/<stage>/
    last = run_dir / "checkpoints" / "last.ckpt"
    model, _, meta = load_model(last)
    assert meta["stage"] == "base" and model.config.n_layer == 1
    assert torch.load(last, weights_only=True)["global_step"] == STEPS

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert len(scalars["train/loss"]) == STEPS
    assert all(math.isfinite(value) for _, value in scalars["train/loss"])
    # before the first step, then every 2 steps (Lightning logs a validation under the index of the step that
    # triggered it, the same index as that step's train/loss: 1 for the validation after 2 steps)
    assert [step for step, _ in scalars["val/bpb"]] == [0, *range(1, STEPS, 2)]
    # the matrices' LR follows nanochat's rule: 0.02 x sqrt(total batch / 2^19) x linear warmup over 40 steps
    lr_scale = math.sqrt(B * T / 2**19)
    expected = [MUON_MATRIX_LR * lr_scale * (step + 1) / WARMUP_STEPS for step in range(STEPS)]
    assert [value for _, value in scalars["lr-MuonAdamW/matrices"]] == pytest.approx(expected, rel=1e-6)

    # `last` means the newest run's last.ckpt (the README's resume command), the same as naming it
    for ckpt_path in (str(last), "last"):
        validate = nanochat("validate", "--config", str(config), "--ckpt_path", ckpt_path)
        assert validate.returncode == 0, validate.stderr[-3000:]
        printed = [line for line in validate.stdout.splitlines() if "val/bpb" in line]
        assert len(printed) == 1
        # the last validation of the run saw the same weights and the same batches
        bpb = float(printed[0].replace("│", " ").split()[-1])
        assert bpb == pytest.approx(scalars["val/bpb"][-1][1], rel=1e-6)


def test_fit_stages_checkpoints_beside_their_target(corpus, tmp_path, home, monkeypatch):
    """`fit` writes checkpoints with AtomicCheckpointIO (see test_base_stage): with a $TMPDIR that does not exist,
    Lightning's own writer (which stages there) fails the first save; ours does not use it."""
    shards, tokenizer = corpus
    config = write_config(tmp_path / "tiny.yaml", shards, tokenizer)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    main(["fit", "--config", str(config)])
    checkpoints = home / "runs" / "base" / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"epoch=0-step={STEPS}.ckpt", "last.ckpt"]


def test_print_config_shows_the_derived_fields(capsys):
    """Every BaseTraining argument is shown: the YAML's values, and the fields derived from depth when the run
    starts (they need the world size), which the YAML leaves out, as null."""
    path = REPO / "configs/cpu/base_tiny.yaml"
    code, out, _ = run_main(capsys, "fit", "--config", str(path), "--print_config")
    assert code == 0
    config, written = yaml.safe_load(out), yaml.safe_load(path.read_text())
    assert config["model"]["class_path"] == "nanochat_pl.stages.base.BaseTraining"
    shown, given = config["model"]["init_args"], written["model"]["init_args"]
    parameters = inspect.signature(BaseTraining.__init__).parameters
    assert set(shown) == set(parameters) - {"self"}
    assert {key: shown[key] for key in given} == given
    derived = [name for name, p in parameters.items() if p.default is None and name not in given]
    assert {"weight_decay", "warmdown_ratio"} <= set(derived)
    assert all(shown[name] is None for name in derived)
    assert config["data"]["init_args"]["source"] == written["data"]["init_args"]["source"]
    assert "sequence_len" not in config["data"]["init_args"], "linked from model.sequence_len, typed once"


def test_a_typo_in_a_config_key_names_the_key(corpus, tmp_path, capsys):
    shards, tokenizer = corpus
    config = write_config(tmp_path / "typo.yaml", shards, tokenizer)
    config.write_text(config.read_text().replace("depth: 1", "dpeth: 1"))
    code, _, err = run_main(capsys, "fit", "--config", str(config))
    assert code == 1
    assert error_lines(err) == [
        "error: Parser key \"model\": Problem with given class_path 'nanochat_pl.stages.base.BaseTraining': "
        "Option 'dpeth' is not accepted (see `nanochat-pl fit --help`)"
    ], err
    assert "usage:" not in err and "Traceback" not in err
    # the same typo as a command-line override
    code, _, err = run_main(capsys, "fit", "--config", str(config), "--model.init_args.dpeth", "2")
    assert code == 1 and len(error_lines(err)) == 1 and "'dpeth' is not accepted" in err


def test_no_shards_is_a_one_line_error(corpus, tmp_path, capsys):
    _, tokenizer = corpus
    empty = tmp_path / "empty"
    empty.mkdir()
    config = write_config(tmp_path / "nodata.yaml", empty, tokenizer)
    code, _, err = run_main(capsys, "fit", "--config", str(config))
    assert code == 1
    assert error_lines(err) == [
        f"error: no .parquet, .txt, .jsonl files at '{empty}' (nor is it 'fineweb', 'climbmix', 'offline')"
    ]


def test_a_corrupt_shard_is_a_one_line_error_naming_the_file(corpus, tmp_path, capsys):
    shards, tokenizer = corpus
    copy = tmp_path / "shards"
    copy.mkdir()
    for shard in sorted(shards.iterdir()):
        (copy / shard.name).write_bytes(shard.read_bytes())
    corrupt = copy / "shard_00001.parquet"  # a training shard: its footer is garbage
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2] + b"\x00" * 64 + data[-64:])
    config = write_config(tmp_path / "corrupt.yaml", copy, tokenizer)
    code, _, err = run_main(capsys, "fit", "--config", str(config))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and str(corrupt) in lines[0]
    assert err.rstrip().endswith(lines[0]), "the error is one line and the last one"


def test_a_truncated_checkpoint_is_a_one_line_error(corpus, tmp_path, capsys):
    shards, tokenizer = corpus
    config = write_config(tmp_path / "tiny.yaml", shards, tokenizer)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for command in ("validate", "fit"):
        code, _, err = run_main(capsys, command, "--config", str(config), "--ckpt_path", str(truncated))
        assert code == 1
        assert error_lines(err) == [
            f"error: cannot read checkpoint {truncated}: not a complete torch checkpoint (truncated or foreign?)"
        ]
        code, _, err = run_main(capsys, command, "--config", str(config), "--ckpt_path", str(tmp_path / "none.ckpt"))
        lines = error_lines(err)
        assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: no checkpoint at {tmp_path}/none.ckpt")


def test_a_user_error_while_the_module_is_built_is_one_line(corpus, tmp_path, capsys):
    """BaseTraining.__init__ raises it; jsonargparse would wrap it in a tree of every type it tried."""
    shards, tokenizer = corpus
    missing = tmp_path / "no-tokenizer"
    unknown_field = {"architecture": {"no_such_field": 1}}
    for config, message in (
        (write_config(tmp_path / "a.yaml", shards, missing), f"no tokenizer at {missing} (no tokenizer.json)"),
        (write_config(tmp_path / "b.yaml", shards, tokenizer, **unknown_field), "unknown GPTConfig fields: no_such"),
    ):
        code, _, err = run_main(capsys, "fit", "--config", str(config))
        lines = error_lines(err)
        assert code == 1 and len(lines) == 1 and message in lines[0], err
        assert err.rstrip().endswith(lines[0]) and "Traceback" not in err and "Does not validate" not in err


def test_ckpt_path_and_last_both_use_the_checkpoints_model_settings_and_say_so(corpus, tmp_path, home, capsys):
    """The weights were trained with the checkpoint's settings: they win over the config's, command line included
    (as LightningCLI applies a checkpoint path's), and `last` does the same as the path it stands for."""
    shards, tokenizer = corpus
    config = write_config(tmp_path / "tiny.yaml", shards, tokenizer)
    main(["fit", "--config", str(config)])
    last = home / "runs" / "base" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    for ckpt_path in (str(last), "last"):
        overrides = ["--model.init_args.depth", "2", "--model.init_args.eval_every", "3"]
        cli = run_lightning_cli(["validate", "--config", str(config), "--ckpt_path", ckpt_path, *overrides])
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("model.")]
        assert said == [
            "model.depth: config 2, checkpoint 1 -> using the checkpoint's",
            "model.eval_every: config 3, checkpoint 2 -> using the checkpoint's",
        ]
        assert cli.model.hparams.depth == 1 and cli.model.hparams.eval_every == 2
    # a checkpoint of an older module, with a setting the module no longer takes
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["dpeth"] = 1
    torch.save(checkpoint, tmp_path / "older.ckpt")
    code, _, err = run_main(capsys, "validate", "--config", str(config), "--ckpt_path", str(tmp_path / "older.ckpt"))
    assert code == 1 and error_lines(err) == [
        f"error: {tmp_path / 'older.ckpt'} was trained with settings that nanochat_pl.stages.base.BaseTraining "
        "no longer takes: dpeth"
    ]


def test_a_shard_without_a_text_column_is_a_one_line_error(corpus, tmp_path, capsys):
    shards, tokenizer = corpus
    copy = tmp_path / "shards"
    copy.mkdir()
    for shard in sorted(shards.iterdir()):
        (copy / shard.name).write_bytes(shard.read_bytes())
    pq.write_table(pa.table({"content": ["a document"] * 4}), copy / "shard_00000.parquet")
    config = write_config(tmp_path / "notext.yaml", copy, tokenizer)
    code, _, err = run_main(capsys, "fit", "--config", str(config))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and "shard_00000.parquet" in lines[0]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_corrupt_row_group_met_while_training_is_a_one_line_error(corpus, tmp_path, capsys, num_workers):
    """The footer is fine, so the run starts; row group 1's pages are garbage, so reading it fails mid-stream,
    in the training process or in a DataLoader worker."""
    shards, tokenizer = corpus
    copy = tmp_path / "shards"
    copy.mkdir()
    for shard in sorted(shards.iterdir()):
        (copy / shard.name).write_bytes(shard.read_bytes())
    corrupt = copy / "shard_00000.parquet"
    column = pq.ParquetFile(corrupt).metadata.row_group(1).column(0)
    data = bytearray(corrupt.read_bytes())
    start = column.data_page_offset + 5
    data[start : column.data_page_offset + column.total_compressed_size - 2] = b"\xab" * (
        column.total_compressed_size - 7
    )
    corrupt.write_bytes(bytes(data))
    config = write_config(tmp_path / "rowgroup.yaml", copy, tokenizer, data_overrides={"num_workers": num_workers})
    code, _, err = run_main(capsys, "fit", "--config", str(config))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and f"{corrupt}: corrupt parquet row group 1" in lines[0], lines
    assert err.rstrip().endswith(lines[0]), "the error is one line and the last one"


def test_validate_from_a_checkpoint_whose_tokenizer_directory_is_gone(corpus, tmp_path, home):
    """The checkpoint carries its tokenizer: with `--ckpt_path`, the model and the data take it from there, so a
    checkpoint copied to a machine without the directory its config names still validates (and resumes)."""
    shards, tokenizer = corpus
    moved = tmp_path / "tokenizer"
    shutil.copytree(tokenizer, moved)
    config = write_config(tmp_path / "tiny.yaml", shards, moved)
    main(["fit", "--config", str(config)])
    last = home / "runs" / "base" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    shutil.rmtree(moved)
    cli = run_lightning_cli(["validate", "--config", str(config), "--ckpt_path", str(last)])
    assert cli.model.tokenizer.to_state() == Tokenizer.load(tokenizer).to_state()
    assert Path(cli.datamodule.tokenizer_dir) == last


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_running_out_of_memory_is_one_line_naming_the_flag_to_lower(device, corpus, tmp_path, capsys, monkeypatch):
    """CUDA's out-of-memory error simulated; a CPU's real (32 TiB asked of its allocator)."""
    shards, tokenizer = corpus
    config = write_config(tmp_path / "tiny.yaml", shards, tokenizer)

    def out_of_memory(*args, **kwargs):
        if device == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity")
        torch.empty(2**45, dtype=torch.uint8)

    monkeypatch.setattr(GPT, "forward", out_of_memory)
    code, _, err = run_main(capsys, "fit", "--config", str(config))
    reason = {"cuda": "CUDA out of memory. Tried to allocate 20.00 GiB", "cpu": "can't allocate memory: you tried to "}
    assert code == 1 and len(error_lines(err)) == 1 and err.rstrip().endswith(error_lines(err)[0]), err
    assert error_lines(err)[0].startswith(f"error: out of device memory: {reason[device]}")
    assert error_lines(err)[0].endswith("(lower --data.init_args.device_batch_size; accumulation keeps the batch)")


class BarReading(L.Callback):
    """The training bar's task after every micro-batch (read at the next one's end, before the bar's own update)."""

    def __init__(self) -> None:
        self.readings: list[tuple[float, float, float | None]] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        bar = trainer.progress_bar_callback
        if bar.train_progress_bar_id is not None:
            task = next(task for task in bar.progress.tasks if task.id == bar.train_progress_bar_id)
            self.readings.append((task.total, task.completed, task.time_remaining))

    on_train_end = on_train_batch_end


def test_the_chat_stages_bar_counts_towards_the_end_of_its_data_with_an_eta(corpus, tmp_path, home):
    """One pass over a chat mixture (max_steps -1) has no known number of batches: the bar's total is estimated from
    the data module's progress through the mixture, is right at the end, and the bar shows an ETA on the way."""
    shards, tokenizer = corpus
    main(["fit", "--config", str(write_config(tmp_path / "base.yaml", shards, tokenizer))])
    tasks = [{"class_path": "nanochat_pl.tasks.arithmetic.Arithmetic", "init_args": {"size": 60, "split": "train"}}]
    sft = {
        "trainer": {**cpu_trainer_config({}), "enable_progress_bar": True, "max_epochs": -1, "callbacks": []},
        "model": {"class_path": "nanochat_pl.stages.chat_sft.ChatTraining", "init_args": {"init_from": "base"}},
        "data": {"class_path": "nanochat_pl.data.chat_data.ChatDataModule", "init_args": {"train": tasks}},
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    reading = BarReading()
    run_lightning_cli(["fit", "--config", str(tmp_path / "sft.yaml")], trainer_defaults={"callbacks": [reading]})
    *during, (total, completed, _) = reading.readings
    assert total == completed > 4 and all(math.isfinite(t) for t, *_ in during[1:])
    assert all(0.5 * total < t < 2 * total for t, *_ in during[len(during) // 2 :]), reading.readings
    assert any(eta is not None and eta > 0 for *_, eta in during), reading.readings
