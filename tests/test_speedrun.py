"""`nanochat-pl speedrun`: a tiny pipeline (tokenizer in the background, base, midtraining switched off, SFT, a
chat eval) in a temporary home, each stage a real child process; the hand-off of checkpoints, skipping finished
stages, resuming an interrupted one, and a failing stage stopping the run in one line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nanochat_pl.cli import main
from nanochat_pl.commands import speedrun
from nanochat_pl.commands.speedrun import Stage, check_stages
from nanochat_pl.common import REPO, UserError, config_path, format_duration
from tests.stage_helpers import B, T, cpu_trainer_config, write_corpus

BASE_STEPS, SFT_STEPS = 4, 2


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children: tiny models, a shared 2-core machine


def write_yaml(path: Path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def trainer_settings(every: int) -> dict:
    return cpu_trainer_config({"every_n_train_steps": every, "save_last": "link", "save_top_k": -1}, max_epochs=-1)


def pipeline_config(root: Path, shards: Path, stages: tuple[str, ...] | None = None) -> str:
    """The speedrun config of the tiny pipeline, with the stage configs beside it; `stages` keeps some of them."""
    base = {
        "seed_everything": 0,
        "trainer": trainer_settings(every=2),
        "model": {
            "class_path": "nanochat_pl.stages.base.BaseTraining",
            "init_args": {
                "depth": 1,
                "aspect_ratio": 64,
                "head_dim": 32,
                "sequence_len": T,
                "num_iterations": BASE_STEPS,
                "total_batch_tokens": B * T,
                "eval_every": 2,
                "sample_every": 0,
            },
        },
        "data": {
            "class_path": "nanochat_pl.data.pretrain_data.PretrainDataModule",
            "init_args": {"source": str(shards), "device_batch_size": B, "buffer_docs": 16, "val_tokens": 2 * B * T},
        },
    }
    arithmetic = {"class_path": "nanochat_pl.tasks.arithmetic.Arithmetic", "init_args": {"size": 16}}
    chat = {
        "seed_everything": 0,
        "trainer": trainer_settings(every=SFT_STEPS),
        "model": {
            "class_path": "nanochat_pl.stages.chat_sft.ChatTraining",
            "init_args": {"init_from": "base", "num_iterations": SFT_STEPS, "eval_every": 1000},
        },
        "data": {
            "class_path": "nanochat_pl.data.chat_data.ChatDataModule",
            "init_args": {"train": [arithmetic], "val": [arithmetic], "val_tokens": B * T},
        },
    }
    tokenizer_args = {"source": str(shards), "vocab_size": 300}
    all_stages = [
        {"name": "tokenizer", "command": "tokenizer train", "args": tokenizer_args, "background": True},
        {"name": "base", "command": "fit", "config": write_yaml(root / "base.yaml", base), "after": ["tokenizer"]},
        {
            "name": "mid",
            "command": "fit",
            "config": write_yaml(root / "mid.yaml", chat),
            "init_from": "base",
            "enabled": False,
            "args": {"model.init_args.recipe": "mid"},
        },
        {"name": "mid-eval", "command": "eval chat", "checkpoint": "mid"},
        {"name": "sft", "command": "fit", "config": write_yaml(root / "sft.yaml", chat), "init_from": "mid"},
        {
            "name": "sft-eval",
            "command": "eval chat",
            "checkpoint": "sft",
            "args": {"tasks": "Arithmetic", "max_problems": 4, "max_tokens": 8, "device": "cpu"},
        },
    ]
    kept = [stage for stage in all_stages if stages is None or stage["name"] in stages]
    trainer = {"accelerator": "cpu", "devices": 1}  # a trainer preset: every fit stage gets it after its config
    return write_yaml(root / "speedrun.yaml", {"trainer": trainer, "stages": kept})


def state(home: Path) -> dict:
    return json.loads((home / "speedrun" / "state.json").read_text())


def checkpoint_meta(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_stages_run_in_order_and_hand_their_checkpoints_on(home, tmp_path, capfd):
    shards, _ = write_corpus(tmp_path / "corpus")
    main(["speedrun", "--config", pipeline_config(tmp_path, shards)])
    records = {record["name"]: record for record in state(home)["stages"]}
    assert {name: r["status"] for name, r in records.items()} == {
        "tokenizer": "done",
        "base": "done",
        "mid": "disabled",
        "mid-eval": "disabled",  # what it would evaluate did not run
        "sft": "done",
        "sft-eval": "done",
    }
    base, sft, evaluation = records["base"], records["sft"], records["sft-eval"]
    assert (home / "tokenizer").is_dir() and Path(base["run_dir"]).parent.parent == home / "runs" / "base"
    assert checkpoint_meta(base["checkpoint"])["global_step"] == BASE_STEPS
    preset = home / "speedrun" / "trainer.yaml"
    assert base["argv"][:5] == ["fit", "--config", str(tmp_path / "base.yaml"), "--config", str(preset)]
    assert yaml.safe_load(preset.read_text()) == {"trainer": {"accelerator": "cpu", "devices": 1}}
    # with midtraining off, SFT started from the base stage's final checkpoint, named on its command line
    assert base["checkpoint"] in sft["argv"] and "--model.init_args.init_from" in sft["argv"]
    sft_checkpoint = checkpoint_meta(sft["checkpoint"])
    assert sft_checkpoint["global_step"] == SFT_STEPS
    assert sft_checkpoint["nanochat_pl"]["parent"] == {"path": base["checkpoint"], "stage": "base", "step": BASE_STEPS}
    # the eval took SFT's checkpoint and its printed JSON is kept
    assert evaluation["argv"][evaluation["argv"].index("--checkpoint") + 1] == sft["checkpoint"]
    assert evaluation["result"]["tasks"][0]["name"] == "Arithmetic"
    assert evaluation["result"]["tasks"][0]["num_problems"] == 4
    assert all(records[name]["seconds"] > 0 for name in ("tokenizer", "base", "sft", "sft-eval"))
    assert state(home)["ended"] >= records["sft-eval"]["ended"]

    out = capfd.readouterr().out
    progress = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[speedrun ")]
    assert progress[0].startswith("1/6 tokenizer: nanochat-pl tokenizer train --source ")
    assert progress[1] == f"tokenizer: running in the background (log: {home / 'speedrun' / 'logs' / 'tokenizer.log'})"
    assert progress[2:4] == ["waiting for tokenizer (background)", progress[3]] and "tokenizer done in" in progress[3]
    assert "3/6 mid: skipped (disabled in the config)" in progress
    assert "4/6 mid-eval: skipped (the stage it evaluates, mid, is disabled)" in progress
    assert progress[-1].startswith("all stages done in ")
    assert "Trainer.fit` stopped" in out  # the stages' own output passes through
    log = (home / "speedrun" / "logs" / "sft-eval.log").read_text()
    assert "Arithmetic" in log and log.rstrip().splitlines()[-1] == json.dumps(evaluation["result"])
    # the report card of this run, from its state and TensorBoard logs: stages, figures, summary, curves
    report = (home / "report" / "report.md").read_text()
    assert "| base | fit | done |" in report and "| sft-eval | eval chat | done |" in report
    assert "| mid |" not in report  # disabled: no row, no section
    assert "## base (BASE)" in report and "## sft (SFT)" in report
    assert f"- steps: {BASE_STEPS}" in report.split("## base (BASE)")[1].split("## ")[0]
    assert f"- tokens: {BASE_STEPS * B * T:,} ({BASE_STEPS} steps" in report
    summary = report.split("## Summary")[1]
    arithmetic = evaluation["result"]["tasks"][0]["accuracy"]
    assert f"| Arithmetic | — | — | {arithmetic:.4f} | — |" in summary and "| CORE | — | — | — | — |" in summary
    for stage in ("base", "sft"):
        png = home / "report" / f"{stage}.png"
        assert f"![{stage}]({stage}.png)" in report and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # run again: every stage is done and skipped, nothing is started
    main(["speedrun", "--config", str(tmp_path / "speedrun.yaml")])
    again = capfd.readouterr().out
    assert again.count("done in an earlier run") == 4 and "nanochat-pl fit" not in again
    assert state(home)["stages"] == list(records.values())


def test_an_interrupted_stage_resumes_from_its_last_checkpoint(home, tmp_path, capfd):
    """The base stage is cut short after its step-2 checkpoint (as a crash leaves it: status running, last.ckpt
    pointing at step 2); the next speedrun skips the tokenizer, resumes base from step 2, and goes on."""
    shards, _ = write_corpus(tmp_path / "corpus")
    main(["speedrun", "--config", pipeline_config(tmp_path, shards, ("tokenizer", "base"))])
    checkpoints = home / "runs" / "base" / "lightning_logs" / "version_0" / "checkpoints"
    (checkpoints / f"epoch=0-step={BASE_STEPS}.ckpt").unlink()
    (checkpoints / "last.ckpt").unlink()
    (checkpoints / "last.ckpt").symlink_to("epoch=0-step=2.ckpt")
    interrupted = state(home)
    interrupted["stages"][1].update(status="running", checkpoint=None, run_dir=None, ended=None)
    first_run = interrupted["seconds"]
    interrupted.update(started=interrupted["started"] - 86400, ended=None)  # resumed a day after it started
    (home / "speedrun" / "state.json").write_text(json.dumps(interrupted))
    capfd.readouterr()

    started = time.time()
    main(["speedrun", "--config", pipeline_config(tmp_path, shards, ("tokenizer", "base", "mid", "sft"))])
    out = capfd.readouterr().out
    assert "1/4 tokenizer: done in an earlier run" in out
    # the running time adds the two runs up, not the day between them
    assert first_run < state(home)["seconds"] <= first_run + time.time() - started
    assert f"all stages done in {format_duration(state(home)['seconds'])}" in out
    records = {record["name"]: record for record in state(home)["stages"]}
    argv = records["base"]["argv"]
    assert argv[argv.index("--ckpt_path") + 1] == str(checkpoints / "epoch=0-step=2.ckpt")
    resumed = Path(records["base"]["checkpoint"])
    assert resumed.parent.parent.name == "version_1" and checkpoint_meta(str(resumed))["global_step"] == BASE_STEPS
    assert records["sft"]["status"] == "done" and str(resumed) in records["sft"]["argv"]
    assert (home / "speedrun" / "logs" / "tokenizer.log").read_text().count("==== ") == 1  # not run again


def test_a_state_from_before_the_running_time_was_kept_counts_its_stages_times(home):
    """Such a state has no "seconds": a resumed run counts on from its stages' times, not from zero."""
    stages = [Stage("tokenizer", "tokenizer train"), Stage("eval", "tokenizer eval")]
    records = [{"name": "tokenizer", "status": "done", "seconds": 30.0}, {"name": "eval", "status": "pending"}]
    (home / "speedrun").mkdir(parents=True)
    (home / "speedrun" / "state.json").write_text(json.dumps({"started": 1.0, "ended": None, "stages": records}))
    speedrun.Runner(stages, None, None, False, home / "speedrun" / "state.json").save()
    assert 30.0 <= state(home)["seconds"] < 40.0


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "pseudo-terminal"])
def test_a_failing_stage_stops_the_run_with_its_error_and_log(terminal, home, tmp_path, capfd, monkeypatch):
    """On a terminal the child writes to a pseudo-terminal (rich draws its progress bars only on one)."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    config = write_yaml(
        tmp_path / "speedrun.yaml",
        {
            "stages": [
                {"name": "tokenizer", "command": "tokenizer train", "args": {"source": str(tmp_path / "none")}},
                {"name": "never", "command": "tokenizer eval"},
            ]
        },
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["speedrun", "--config", config])
    assert exit_info.value.code == 1
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    log = home / "speedrun" / "logs" / "tokenizer.log"
    assert len(errors) == 1 and errors[0].startswith("error: stage tokenizer failed after 0m")
    assert "(exit code 1): " in errors[0] and str(tmp_path / "none") in errors[0]
    assert errors[0].endswith(f"(log: {log})") and "error: " in log.read_text()
    assert ("\r\n" in log.read_bytes().decode()) == terminal  # a terminal's line discipline ends lines with \r\n
    statuses = [record["status"] for record in state(home)["stages"]]
    assert statuses == ["failed", "pending"]


def test_bad_configs_are_one_line_errors():
    fit = Stage("base", "fit", config="configs/cpu/base_tiny.yaml")
    with pytest.raises(UserError, match="stage names must be unique"):
        check_stages([fit, fit])
    with pytest.raises(UserError, match="init_from must name an earlier fit stage, not 'sft'"):
        check_stages([Stage("sft", "fit", config="x.yaml", init_from="sft")])
    with pytest.raises(UserError, match="a fit stage needs its config"):
        check_stages([Stage("base", "fit")])
    with pytest.raises(UserError, match="after must name earlier background stages"):
        check_stages([fit, Stage("eval", "eval core", checkpoint="base", after=["base"])])
    with pytest.raises(UserError, match="no config at nowhere.yaml"):
        config_path("nowhere.yaml")


@pytest.mark.parametrize("config", ["configs/speedrun_d20.yaml", "configs/cpu/speedrun.yaml"])
def test_the_shipped_speedrun_configs_parse_and_name_real_configs(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    if config == "configs/speedrun_d20.yaml":  # a trainer preset after it swaps the 8 GPUs for one, as for `fit`
        with pytest.raises(SystemExit):
            main(["speedrun", "--config", config, "--config", "configs/trainer/gpu1.yaml", "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["trainer"]["devices"] == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["speedrun", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    parsed = yaml.safe_load(capsys.readouterr().out)
    stages = [Stage(**stage) for stage in parsed["stages"]]
    check_stages(stages)
    for stage in stages:
        if stage.config is not None:
            config_path(stage.config)
