"""The README's path between stages, walked as a user would, with names only (no paths): the speedrun, then RL by
hand from `init_from: sft`, `chat --checkpoint rl`, `runs` and `runs --tree`; then another speedrun config in the
same home is refused rather than handed the first one's stages, and runs its own after `--restart`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from nanochat_pl.cli import main
from tests.stage_helpers import cpu_trainer_config, write_corpus
from tests.test_speedrun import BASE_STEPS, SFT_STEPS, pipeline_config, state, write_yaml


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def rl_config(path: Path) -> str:
    task = {"class_path": "tests.test_rl_stage.EvenReplies", "init_args": {"size": 8}}  # prompts short enough
    config = {
        "seed_everything": 0,
        "trainer": cpu_trainer_config({"save_last": "link", "save_top_k": -1}, max_steps=1),
        "model": {
            "class_path": "nanochat_pl.stages.rl.RLTraining",
            "init_args": {"init_from": "sft", "num_samples": 2, "device_batch_size": 2, "max_new_tokens": 4},
        },
        "data": {
            "class_path": "nanochat_pl.data.rl_data.RLDataModule",
            "init_args": {"train": task, "examples_per_step": 1, "val_examples": 1},
        },
    }
    config["model"]["init_args"].update(eval_every=0, sample_every=0)
    return write_yaml(path, config)


def test_the_quick_start_and_the_stages_by_hand_with_names_only(home, tmp_path, capsys):
    shards, _ = write_corpus(tmp_path / "corpus")
    speedrun_config = pipeline_config(tmp_path, shards, ("tokenizer", "base", "mid", "sft"))
    main(["speedrun", "--config", speedrun_config])
    records = {record["name"]: record for record in state(home)["stages"]}
    # one name per stage: the speedrun's stage, the run folder, the checkpoint's stage
    for stage in ("base", "sft"):
        checkpoint = Path(records[stage]["checkpoint"])
        assert checkpoint.is_relative_to(home / "runs" / stage)
        assert torch.load(checkpoint, weights_only=True)["nanochat_pl"]["stage"] == stage

    main(["fit", "--config", rl_config(tmp_path / "rl.yaml")])  # init_from: sft
    rl_checkpoints = sorted((home / "runs" / "rl").glob("lightning_logs/version_0/checkpoints/*step=1.ckpt"))
    assert len(rl_checkpoints) == 1
    rl = torch.load(rl_checkpoints[0], weights_only=True)["nanochat_pl"]
    assert rl["stage"] == "rl" and rl["parent"] == {"path": records["sft"]["checkpoint"], "stage": "sft", "step": 2}
    capsys.readouterr()

    main(["chat", "--checkpoint", "rl", "-p", "What is 2 plus 3?", "--max_tokens", "4", "--temperature", "0"])
    said = capsys.readouterr()
    assert f"checkpoint rl: {rl_checkpoints[0]}" in said.err and said.out.strip()

    main(["runs"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "run", "tokens"]
    names = [line.split()[0] for line in table[1:]]
    assert names[0] == "rl@step=1" and f"sft@step={SFT_STEPS}" in names and f"base@step={BASE_STEPS}" in names
    rl_row = table[1].split()
    assert rl_row[1] == "version_0" and f"sft@step={SFT_STEPS}" in rl_row  # its parent

    main(["runs", "--tree"])
    tree = capsys.readouterr().out.splitlines()
    assert tree[0] == f"tokenizer {home / 'tokenizer'}"
    assert tree[1].startswith(f"└── base@step={BASE_STEPS} (version_0): val bpb ")
    assert tree[2].startswith(f"    └── sft@step={SFT_STEPS} (version_0, from step={BASE_STEPS}): val bpb ")
    assert tree[3].startswith(f"        └── rl@step=1 (version_0, from step={SFT_STEPS}): val bpb ")
    assert len(tree) == 4

    # a second speedrun config in the same home: its base stage is another config, so the first's is not reused
    other = yaml.safe_load(Path(speedrun_config).read_text())
    other["stages"] = [{**stage, "after": []} for stage in other["stages"] if stage["name"] == "base"]
    base_config = yaml.safe_load(Path(other["stages"][0]["config"]).read_text())
    other["stages"][0]["config"] = write_yaml(tmp_path / "other_base.yaml", base_config)
    other_config = write_yaml(tmp_path / "other.yaml", other)
    with pytest.raises(SystemExit) as exit_info:
        main(["speedrun", "--config", other_config])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (
        exit_info.value.code == 1 and len(errors) == 1 and "--restart" in errors[0] and "NANOCHAT_PL_HOME" in errors[0]
    )
    main(["speedrun", "--config", other_config, "--restart"])
    restarted = state(home)["stages"]
    assert [record["name"] for record in restarted] == ["base"] and restarted[0]["status"] == "done"
    assert restarted[0]["checkpoint"] != records["base"]["checkpoint"]  # trained again, in a run of its own
    assert restarted[0]["config"] == str(tmp_path / "other_base.yaml")
