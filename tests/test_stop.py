"""A stopped run costs nothing: real signals to a real `nanochat-pl fit`, which saves at the end of the optimizer step
under way and exits with a line saying how to resume; the resumed runs end bit-equal to an uninterrupted one. Also:
Lightning's SLURM requeue at a step's end, a crash in the end-of-run evaluation after the final checkpoint, and Ctrl-C
in a command that is not `fit`."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from nanochat_pl.checkpoint import load_model, newest_checkpoint, read_checkpoint
from nanochat_pl.cli import main
from nanochat_pl.stages.callbacks import FinalCheckpoint
from nanochat_pl.stages.evaluation import _EveryNSteps
from tests.stage_helpers import B, T, cpu_trainer_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # of 2 micro-batches each


class PauseMidStep(L.Callback):
    """As $PAUSE_AT says ("2:wait,5:SIGTERM"), after the first micro-batch of the step after step 2 (mid-accumulation)
    says so on stdout and waits for a signal from outside; after that of the step after step 5 sends SIGTERM to its
    own process ("hold": waits a minute whatever comes). The signals arrive at known points; unset, it does nothing."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        plan = dict(item.split(":") for item in os.environ.get("PAUSE_AT", "").split(",") if item)
        if batch_idx % 2 == 0 and (action := plan.get(str(trainer.global_step))):
            print(f"paused after step {trainer.global_step}", flush=True)
            if action not in ("wait", "hold"):
                os.kill(os.getpid(), signal.Signals[action])
            final = next(c for c in trainer.callbacks if isinstance(c, FinalCheckpoint))
            deadline = time.monotonic() + 60
            while (action == "hold" or not (final.signum or final.requeue)) and time.monotonic() < deadline:
                time.sleep(0.01)


def write_config(path: Path, corpus: tuple[Path, Path], *callbacks: dict, every_n_train_steps: int = 4) -> Path:
    """A depth-1 pretraining run of STEPS steps of 2 micro-batches, read by a DataLoader worker, validating every 3
    steps, checkpointing every 4 (and last.ckpt), pausing as $PAUSE_AT says; `callbacks`: more trainer callbacks."""
    shards, tokenizer = corpus
    trainer = cpu_trainer_config({"every_n_train_steps": every_n_train_steps, "save_last": True})
    trainer["callbacks"] += [{"class_path": "tests.test_stop.PauseMidStep"}, *callbacks]
    model = dict(depth=1, aspect_ratio=64, head_dim=32, sequence_len=T, tokenizer_dir=str(tokenizer))
    model |= dict(num_iterations=STEPS, total_batch_tokens=2 * B * T, eval_every=3, sample_every=0)
    data = dict(source=str(shards), device_batch_size=B, buffer_docs=16, val_tokens=4 * B * T, num_workers=1)
    config = {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {"class_path": "nanochat_pl.stages.base.BaseTraining", "init_args": model},
        "data": {"class_path": "nanochat_pl.data.pretrain_data.PretrainDataModule", "init_args": data},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of the run uninterrupted."""
    root = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("NANOCHAT_PL_HOME", str(root))
        main(["fit", "--config", str(write_config(root / "tiny.yaml", corpus))])
    checkpoint = read_checkpoint(last_checkpoint(root))
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


def assert_equal_weights(checkpoint: Path, straight: dict[str, torch.Tensor]) -> None:
    final = read_checkpoint(checkpoint)
    assert final["global_step"] == STEPS and final["state_dict"].keys() == straight.keys()
    for name, value in straight.items():
        assert torch.equal(final["state_dict"][name], value), name


def whole_steps(checkpoint: Path) -> int:
    """The optimizer steps a checkpoint holds, checked to be whole: every micro-batch of each, none of the next."""
    saved = read_checkpoint(checkpoint)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 2 * saved["global_step"]
    return saved["global_step"]


def last_checkpoint(home: Path) -> Path:  # the newest checkpoint, as `--ckpt_path last` takes it
    return newest_checkpoint(home / "runs" / "base")


def start(args: list[str]) -> subprocess.Popen:
    """`nanochat-pl ARGS` in its own process group (a terminal's Ctrl-C reaches the whole group)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nanochat_pl.cli", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def stop_when_paused(run: subprocess.Popen, send) -> tuple[int, list[str]]:
    """Wait for the run's "paused" line, `send` it a signal, and return its exit code and output lines."""
    lines = []
    for line in run.stdout:
        lines.append(line.rstrip())
        if line.startswith("paused"):
            send(run.pid)
            break
    lines += run.stdout.read().splitlines()
    return run.wait(timeout=60), lines


def test_sigint_then_sigterm_save_at_the_steps_end_and_the_resumed_runs_equal_an_uninterrupted_one(
    corpus, straight, tmp_path, home, monkeypatch, capsys
):
    """Ctrl-C (SIGINT to the process group, the DataLoader worker too) after the first micro-batch of step 3, then
    SIGTERM after that of step 6 (in this process): each run exits 130 / 143 with a line saying how to resume, its
    last.ckpt holds whole steps (3, then 6); the third run, resumed as the line says, ends on exactly the weights of
    the uninterrupted run. The signal handlers of before the fit are back after it."""
    handlers = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)]
    config = str(write_config(tmp_path / "tiny.yaml", corpus))
    resume = ["fit", "--config", config, "--ckpt_path", "last"]
    monkeypatch.setenv("PAUSE_AT", "2:wait")
    code, lines = stop_when_paused(start(["fit", "--config", config]), lambda pid: os.killpg(pid, signal.SIGINT))
    assert code == 130 and "Traceback" not in "\n".join(lines), "\n".join(lines[-30:])
    said = f"saved {last_checkpoint(home)}; to resume: nanochat-pl {shlex.join(resume)}"
    assert [line for line in lines if line.startswith("SIGINT: stopped")] == [f"SIGINT: stopped after step 3, {said}"]
    assert whole_steps(last_checkpoint(home)) == 3

    monkeypatch.setenv("PAUSE_AT", "5:SIGTERM")
    monkeypatch.setattr(sys, "argv", ["nanochat-pl", *resume])  # as the line says to run it
    with pytest.raises(SystemExit) as stopped:
        main()
    said = f"saved {last_checkpoint(home)}; to resume: nanochat-pl {shlex.join(resume)}"
    assert stopped.value.code == 143 and f"SIGTERM: stopped after step 6, {said}" in capsys.readouterr().err
    assert whole_steps(last_checkpoint(home)) == 6

    monkeypatch.delenv("PAUSE_AT")
    main(resume)
    assert_equal_weights(last_checkpoint(home), straight)
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_second_ctrl_c_kills_at_once(corpus, tmp_path, home, monkeypatch):
    """While the run finishes its step (held here), a second Ctrl-C kills it there and then, saving nothing."""
    monkeypatch.setenv("PAUSE_AT", "2:hold")
    run = start(["fit", "--config", str(write_config(tmp_path / "tiny.yaml", corpus))])
    for expected in ("paused after step 2", "SIGINT: stopping at the end of this step"):
        for line in run.stdout:
            if line.startswith(expected):
                os.killpg(run.pid, signal.SIGINT)
                break
    assert run.wait(timeout=60) == -signal.SIGINT
    run.stdout.close()
    assert not list(home.glob("runs/base/lightning_logs/*/checkpoints/*.ckpt"))


def test_slurms_requeue_saves_at_the_steps_end_and_the_requeued_job_resumes_exactly(
    corpus, straight, tmp_path, home, monkeypatch
):
    """Lightning's auto-requeue under SLURM: SIGUSR1 mid-step 3 -> its hpc checkpoint, at that step's end, and
    `scontrol requeue`; the SIGTERM that follows mid-step 6 stops the run as above; the requeued job (the same
    command) resumes from the hpc checkpoint, as Lightning does, and ends on the uninterrupted run's weights."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0"}
    for name, value in {
        **slurm,
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "MASTER_ADDR": "",
        "MASTER_PORT": "",
    }.items():
        monkeypatch.setenv(name, value)
    config = str(write_config(tmp_path / "tiny.yaml", corpus))
    monkeypatch.setenv("PAUSE_AT", "2:SIGUSR1,5:SIGTERM")
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", config])
    assert stopped.value.code == 143
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert whole_steps(home / "runs" / "base" / "hpc_ckpt_1.ckpt") == 3 and whole_steps(last_checkpoint(home)) == 6
    monkeypatch.delenv("PAUSE_AT")
    main(["fit", "--config", config])
    assert_equal_weights(last_checkpoint(home), straight)


class FailingEvaluation(_EveryNSteps):
    """An end-of-run evaluation that crashes (given before the stage's callbacks, as a config's are)."""

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        raise RuntimeError("the evaluation crashed")


def test_a_crash_in_the_end_of_run_evaluation_leaves_the_final_checkpoint(corpus, straight, tmp_path, home):
    """The run checkpoints every 3 steps, so only the final checkpoint holds step 8: it is on disk, whole and
    loadable, before the evaluation runs (and crashes); resuming from it has nothing left to train."""
    failing = {"class_path": "tests.test_stop.FailingEvaluation", "init_args": {"every_n_steps": 100}}
    config = str(write_config(tmp_path / "tiny.yaml", corpus, failing, every_n_train_steps=3))
    with pytest.raises(RuntimeError, match="the evaluation crashed"):
        main(["fit", "--config", config])
    final = last_checkpoint(home)
    assert_equal_weights(final, straight)
    model, _, meta = load_model(final)
    assert meta["stage"] == "base" and model.config.n_layer == 1
    main(["fit", "--config", str(write_config(tmp_path / "resume.yaml", corpus)), "--ckpt_path", "last"])
    assert whole_steps(last_checkpoint(home)) == STEPS


def test_ctrl_c_in_a_command_ends_quietly_in_one_line(tmp_path):
    """A real SIGINT to `bench infer` (a long run of a random model) once it is under way: one line, exit 130."""
    run = start(["bench", "infer", "--depth", "1", "--batch_sizes", "[1]", "--decode_len", "1000", "--repeats", "999"])
    time.sleep(3)  # well past the start of `main` (its imports run inside it)
    os.killpg(run.pid, signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 130 and out.strip().splitlines()[-1] == "interrupted", out[-3000:]
    assert "Traceback" not in out
