"""`nanochat-pl ladder`: the shipped rungs differ from each other by exactly what they say they change, down to the
model and the optimizer they build; depth 0 is a bigram; a tiny ladder of real child processes trains, skips its
finished rungs when run again, and writes the table (checked against the checkpoints) and the plot; the noise label."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nanochat_pl.cli import main
from nanochat_pl.commands.ladder import Rung, ladder, rung_configs
from nanochat_pl.common import REPO, UserError
from nanochat_pl.model.gpt import GPT, LOGIT_SOFTCAP, OCT_2025, GPTConfig
from nanochat_pl.optim.muon_adamw import MUON_DEFAULTS
from nanochat_pl.optim.recipes import Schedule, build_param_groups
from nanochat_pl.report import delta_text
from nanochat_pl.stages.base import BaseTraining
from nanochat_pl.stages.lm import meta_model
from tests.stage_helpers import B, T, cpu_trainer_config, write_corpus


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config as {dotted key: leaf value}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def built(config: dict, tokenizer: Path) -> dict[str, dict]:
    """What a rung's config builds: its GPTConfig, Muon's settings (empty: no matrices), AdamW's groups' settings,
    its schedule and Muon weight decay (None: from depth)."""
    module = BaseTraining(**{**config["model"]["init_args"], "tokenizer_dir": str(tokenizer)})
    h = module.hparams
    families = meta_model(module.gpt_config).param_families()
    groups = build_param_groups(families, module.gpt_config.n_embd, h.recipe, 1.0, 0.0, 1.0, h.muon)
    settings = {g["name"]: {**(MUON_DEFAULTS if g["kind"] == "muon" else {}), **g} for g in groups}
    for group in settings.values():
        del group["params"]
    return {
        "gpt": asdict(module.gpt_config),
        "muon": settings.pop("matrices", {}),
        "adamw": settings,
        "schedule": asdict(Schedule.for_recipe(h.recipe, h.num_iterations, h.warmdown_ratio)),
        "weight_decay": {"muon": h.weight_decay},
    }


def shipped_ladder() -> dict:
    parser = ArgumentParser()
    parser.add_function_arguments(ladder)
    return vars(parser.instantiate(parser.parse_path(str(REPO / "nanochat_pl/configs/cpu/ladder.yaml"))))


def test_each_shipped_rung_changes_exactly_what_it_says(corpus, monkeypatch):
    monkeypatch.chdir(REPO)
    _, tokenizer = corpus
    settings = shipped_ladder()
    rungs: list[Rung] = settings["rungs"]
    configs = list(rung_configs(settings["base"], settings["common"], rungs).values())
    models = [built(config, tokenizer) for config in configs]
    assert models[0]["gpt"]["n_layer"] == 0 and not models[0]["muon"]  # a bigram: no blocks, nothing for Muon
    for rung, before, after, was, now in zip(
        rungs[1:], configs[:-1], configs[1:], models[:-1], models[1:], strict=True
    ):
        old, new = flat(before), flat(after)
        assert {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} == set(rung.changes), rung.name
        # what it builds changes where it says: the model's and Muon's fields it names, the optimizer's settings and
        # schedule with the recipe, the weight decay with its own; the bigram's next rung gives Muon its matrices
        named = {
            part: {k.rsplit(".", 1)[1] for k in rung.changes if f".{part}." in k} for part in ("architecture", "muon")
        }
        assert {k for k in now["gpt"] if now["gpt"][k] != was["gpt"][k]} == named["architecture"], rung.name
        if was["muon"]:
            assert {k for k in now["muon"] if now["muon"][k] != was["muon"][k]} == named["muon"], rung.name
        expected = {"gpt"} if named["architecture"] else set()
        expected |= {"muon"} if named["muon"] or not was["muon"] else set()
        expected |= {"adamw", "schedule"} if "model.init_args.recipe" in rung.changes else set()
        expected |= {"weight_decay"} if "model.init_args.weight_decay" in rung.changes else set()
        now = dict(now, adamw={name: now["adamw"][name] for name in was["adamw"]})  # a new part's groups are new
        assert {part for part in now if now[part] != was[part]} == expected, rung.name
    # the top rung is today's nanochat: the 2026 model and Muon, weight decay from depth
    top = configs[-1]["model"]["init_args"]
    assert top["recipe"] == "2026" and "weight_decay" not in top
    default = {k: top[k] for k in ("depth", "head_dim", "sequence_len", "num_iterations")}
    default = built({"model": {"init_args": default}}, tokenizer)
    assert models[-1] == default


def test_depth_0_is_a_bigram_embeddings_straight_into_the_head():
    config = GPTConfig(sequence_len=8, vocab_size=64, n_layer=0, n_head=2, n_kv_head=2, n_embd=32, **OCT_2025)
    model = GPT(config)
    model.init_weights()
    idx = torch.randint(0, 64, (2, 8))
    x = F.rms_norm(F.rms_norm(model.transformer.wte(idx), (32,)), (32,))  # after the embedding, and before the head
    expected = LOGIT_SOFTCAP * torch.tanh(F.linear(x, model.lm_head.weight) / LOGIT_SOFTCAP)
    torch.testing.assert_close(model(idx), expected)
    assert list(model.param_families()) == ["lm_head", "wte"] and config.layer_windows() == []
    with pytest.raises(UserError, match="0 without backout"):
        GPTConfig(n_layer=0)


def test_a_muon_setting_the_schedule_owns_is_refused(corpus):
    with pytest.raises(UserError, match="model.muon cannot set momentum"):
        BaseTraining(depth=1, head_dim=32, tokenizer_dir=str(corpus[1]), muon={"momentum": 0.9})


def test_the_noise_label():
    assert delta_text(-0.01, 0.02) == "-0.0100 (noise)"
    assert delta_text(0.0199, 0.02) == "+0.0199 (noise)"
    assert delta_text(-0.03, 0.02) == "-0.0300"
    assert delta_text(-0.03, None) == "-0.0300"  # no noise band yet: nothing is labelled
    assert delta_text(None, 0.02) == "—"


def test_a_tiny_ladder_trains_skips_finished_rungs_and_reports(home, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children: tiny models, a shared 2-core machine
    shards, tokenizer = write_corpus(tmp_path / "corpus")
    base = {
        "seed_everything": 0,
        "trainer": cpu_trainer_config({"every_n_train_steps": 2, "save_last": "link", "save_top_k": -1}),
        "model": {
            "class_path": "nanochat_pl.stages.base.BaseTraining",
            "init_args": {"depth": 1, "head_dim": 32, "sequence_len": T, "tokenizer_dir": str(tokenizer)},
        },
        "data": {
            "class_path": "nanochat_pl.data.pretrain_data.PretrainDataModule",
            "init_args": {"source": str(shards), "device_batch_size": B, "buffer_docs": 16, "val_tokens": 2 * B * T},
        },
    }
    common = {"model.init_args.num_iterations": 4, "model.init_args.eval_every": 2, "model.init_args.sample_every": 0}
    common["model.init_args.total_batch_tokens"] = B * T
    rungs = [
        {"name": "bigram", "component": "a bigram", "why": "w1", "source": "s1", "changes": {}},
        {"name": "gpt", "component": "blocks", "why": "w2", "source": "s2", "changes": {}},
    ]
    rungs[0]["changes"] = {"model.init_args.recipe": "oct", "model.init_args.architecture.n_layer": 0}
    rungs[1]["changes"] = {"model.init_args.architecture.n_layer": None}
    config = tmp_path / "ladder.yaml"
    config.write_text(yaml.safe_dump({"base": str(tmp_path / "base.yaml"), "common": common, "rungs": rungs}))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    main(["ladder", "--config", str(config)])
    state = json.loads((home / "ladder" / "state.json").read_text())
    records = {r["name"]: r for r in state["stages"]}
    assert list(records) == ["bigram", "gpt", "gpt-seed1"] and {r["status"] for r in records.values()} == {"done"}
    for name, record in records.items():
        assert Path(record["run_dir"]).parent.parent == home / "ladder" / "runs" / name
    meta = {name: torch.load(r["checkpoint"], map_location="cpu", weights_only=True) for name, r in records.items()}
    assert [m["nanochat_pl"]["gpt_config"]["n_layer"] for m in meta.values()] == [0, 1, 1]
    assert {m["global_step"] for m in meta.values()} == {4}
    bpb = {}  # the last validation's, after step 4, as TensorBoard has it
    for name, record in records.items():
        events = EventAccumulator(record["run_dir"]).Reload()
        bpb[name] = events.Scalars("val/bpb")[-1].value
    assert bpb["gpt"] != bpb["gpt-seed1"]  # another seed, another model

    out = capfd.readouterr().out
    report = (home / "report" / "report.md").read_text()
    ladder_text = report.split("## Ladder")[1]
    assert ladder_text.strip() in out  # printed at the end, as written
    spread = abs(bpb["gpt"] - bpb["gpt-seed1"])
    assert (
        f"each of {4 * B * T:,} tokens" in ladder_text and f"seeds 0 and 1, val bpb spread {spread:.4f}" in ladder_text
    )
    rows = [line.split(" | ") for line in ladder_text.splitlines() if line.startswith(("| bigram", "| gpt"))]
    assert [row[2] for row in rows] == [f"{bpb['bigram']:.4f}", f"{bpb['gpt']:.4f}"]
    assert rows[0][3] == "—" and rows[1][3] == delta_text(bpb["gpt"] - bpb["bigram"], spread)
    assert rows[0][5] == f"{meta_model(GPTConfig(**meta['bigram']['nanochat_pl']['gpt_config'])).num_params():,} |"
    assert float(rows[1][4].replace(",", "")) > 0  # tokens/s
    assert "- gpt: w2 (s2)" in ladder_text and "![ladder](ladder.png)" in ladder_text
    assert (home / "report" / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    main(["ladder", "--config", str(config)])  # again: every rung is done and skipped
    again = capfd.readouterr().out
    assert again.count("done in an earlier run") == 3 and "nanochat-pl fit" not in again


def test_the_gpu_ladder_keeps_the_rungs_and_starts_from_the_same_place(monkeypatch):
    monkeypatch.chdir(REPO)
    parser = ArgumentParser()
    parser.add_function_arguments(ladder)
    parser.add_argument("--config", action="config")
    cpu = vars(parser.parse_args(["--config", "configs/cpu/ladder.yaml"]))
    gpu = vars(parser.parse_args(["--config", "configs/cpu/ladder.yaml", "--config", "configs/ladder_gpu.yaml"]))
    assert gpu["rungs"] == cpu["rungs"] and gpu["base"] == "configs/base_d12.yaml"
    start = ("model.init_args.architecture", "model.init_args.muon")
    assert {k: gpu["common"][k] for k in start} == {k: cpu["common"][k] for k in start}
    configs = rung_configs(gpu["base"], gpu["common"], [Rung(**vars(rung)) for rung in gpu["rungs"]])
    assert configs["backout"]["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] == 500
