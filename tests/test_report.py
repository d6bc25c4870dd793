"""`nanochat-pl report` on pipelines laid out as the real commands leave them: TensorBoard event files written by
SummaryWriter under the tags the stages log, small real checkpoints, eval JSON written by the eval commands' own
writer, and a speedrun state file."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

from nanochat_pl.cli import main
from nanochat_pl.commands.eval import write_result
from nanochat_pl.common import UserError
from nanochat_pl.evals.chatcore import ChatResult, ChatTaskResult, centered
from nanochat_pl.evals.core import CoreResult, CoreTaskResult
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.report import write_report
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT

REPO = Path(__file__).resolve().parent.parent
TOKENS_PER_STEP = 4096
CONFIG = GPTConfig.from_depth(2, vocab_size=320, sequence_len=128, head_dim=32)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer_state() -> dict:
    return Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=CONFIG.vocab_size).to_state()


def write_run(
    run: Path,
    kind: str,
    step: int,
    curves: dict[str, list[tuple[int, float]]],
    tokenizer_state: dict,
    *,
    tokens_per_step: int | None = TOKENS_PER_STEP,
    resumed_from: Path | None = None,
    wall_start: float = 1000.0,
) -> Path:
    """A run folder as `fit` leaves it: events (point at step s logged at wall time wall_start + s), a checkpoint
    of step `step` with last.ckpt linking to it, LightningCLI's config.yaml. Returns the checkpoint."""
    writer = SummaryWriter(log_dir=str(run))
    for tag, points in curves.items():
        for point_step, value in points:
            writer.add_scalar(tag, value, point_step, walltime=wall_start + point_step)
    writer.close()
    torch.manual_seed(0)
    model = GPT(CONFIG)
    model.init_weights()
    meta = {"stage": kind, "gpt_config": dataclasses.asdict(CONFIG), "tokenizer": tokenizer_state}
    if tokens_per_step is not None:
        meta["total_batch_tokens"] = tokens_per_step
    checkpoint = write_checkpoint(run, step, model, meta)
    (run / "checkpoints" / "last.ckpt").symlink_to(checkpoint.name)
    config = {"model": {"class_path": "nanochat_pl.stages.base.BaseTraining", "init_args": {"depth": 2, "x": None}}}
    config["ckpt_path"] = None if resumed_from is None else str(resumed_from)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return checkpoint


TOKENIZER_EVAL = {
    "vocab_size": 8192,
    "bytes_per_token": {"ours": {"news": 3.2, "offline-val": 3.67}, "gpt-2": {"news": 3.1}},
}


def write_checkpoint(run: Path, step: int, model: GPT, meta: dict) -> Path:
    path = run / "checkpoints" / f"epoch=0-step={step}.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model." + name: tensor for name, tensor in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": step, "nanochat_pl": meta}, path)
    return path


def write_eval(kind: str, checkpoint: Path, result: ChatResult | CoreResult) -> dict:
    """What `nanochat-pl eval core|chat --checkpoint checkpoint` writes into the run's eval/, by its own writer."""
    summary = {"kind": kind, "checkpoint": str(checkpoint), "world_size": 1, **result.as_dict()}
    write_result(summary)
    return summary


def chat_result(accuracies: dict[str, float], chatcore: float | None) -> ChatResult:
    chance = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "Arithmetic": 0.0}
    tasks = [
        ChatTaskResult(name, accuracy, centered(accuracy, chance[name]), 40, "test file", "x")
        for name, accuracy in accuracies.items()
    ]
    return ChatResult(tasks, chatcore=chatcore)


def core_result(value: float) -> CoreResult:
    tasks = [CoreTaskResult("hellaswag", 0.4, centered(0.4, 0.25), 100, 25.0, "bundle")]
    return CoreResult(tasks, core=value)


def summary_cells(text: str) -> dict[str, list[str]]:
    """The summary table of a report: metric -> [BASE, MID, SFT, RL] cells."""
    table = text.split("## Summary", 1)[1].strip().splitlines()
    assert table[0] == "| Metric | BASE | MID | SFT | RL |"
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in row.strip("|").split("|")] for row in table[2:])}


def section(text: str, heading: str) -> str:
    """The text of the section `## heading` up to the next one."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def bullet(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- {name}: ")).split(": ", 1)[1]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's header, after checking the whole image decodes."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert matplotlib.image.imread(path).shape[:2] == (height, width)
    return width, height


def test_a_speedrun_report_card(home, tokenizer_state, capsys):
    runs = home / "runs"
    base_curves = {
        "train/loss": [(s, 5.0 - 0.3 * s) for s in range(10)],
        "val/bpb": [(0, 2.0), (4, 1.6), (9, 1.7)],
        "train/time": [(4, 10.0), (9, 20.0)],
        "train/device/mfu": [(4, 0.40), (6, 0.44), (9, 0.42)],
        "lr-MuonAdamW/matrices": [(s, 0.02) for s in range(10)],
        "lr-MuonAdamW/embedding": [(s, 0.3) for s in range(10)],
    }
    base = write_run(runs / "base/lightning_logs/version_0", "base", 10, base_curves, tokenizer_state)
    sft_curves = {"train/loss": [(0, 2.0), (1, 1.8), (2, 1.7)], "val/bpb": [(0, 1.2), (2, 1.1)]}
    sft = write_run(runs / "chat/lightning_logs/version_0", "sft", 3, sft_curves, tokenizer_state)
    rl_curves = {
        "rl/loss": [(0, 0.1), (1, -0.05)],
        "rl/reward": [(0, 0.5), (1, 0.6)],
        "eval/pass@1": [(0, 0.5), (2, 0.55)],
        "eval/pass@2": [(0, 0.6), (2, 0.7)],
    }
    rl = write_run(runs / "rl/lightning_logs/version_0", "rl", 2, rl_curves, tokenizer_state, tokens_per_step=None)
    base_core = write_eval("core", base, core_result(0.2219))
    # nanochat's d20 SFT (README@dfc8833)
    sft_chat_scores = {"ARC-Easy": 0.3876, "ARC-Challenge": 0.2807, "MMLU": 0.3151, "GSM8K": 0.0455}
    sft_chat_scores["HumanEval"] = 0.0854
    sft_chat = write_eval("chat", sft, chat_result(sft_chat_scores, chatcore=0.0884))
    rl_chat = write_eval("chat", rl, chat_result({"GSM8K": 0.0758, "Arithmetic": 0.9}, chatcore=None))

    def stage(name, command, status="done", **fields):
        return {"name": name, "command": command, "argv": command.split(), "status": status, "seconds": 60.0, **fields}

    state = {
        "command": "nanochat-pl speedrun --config configs/cpu/speedrun.yaml",
        "hourly_rate": 10.0,
        "started": 1765000000.0,
        "ended": 1765001800.0,
        "seconds": 1500.0,  # 25 minutes of running time over the 30 from start to end (it was resumed)
        "stages": [
            stage("tokenizer", "tokenizer train"),
            stage("tokenizer-eval", "tokenizer eval", result=TOKENIZER_EVAL),
            stage("base", "fit", config="/abs/base.yaml", run_dir=str(base.parent.parent), checkpoint=str(base)),
            stage("base-core", "eval core", checkpoint=str(base), result=base_core),
            stage("mid", "fit", status="disabled"),
            stage("sft", "fit", run_dir=str(sft.parent.parent), checkpoint=str(sft)),
            stage("sft-chat", "eval chat", checkpoint=str(sft), result=sft_chat),
            stage("extra-sft", "fit", status="failed", log="/abs/home/speedrun/logs/extra-sft.log"),
            stage("rl", "fit", run_dir=str(rl.parent.parent), checkpoint=str(rl)),
            stage("rl-chat", "eval chat", checkpoint=str(rl.parent / "last.ckpt"), result=rl_chat),
        ],
    }
    (home / "speedrun").mkdir()
    (home / "speedrun" / "state.json").write_text(json.dumps(state))
    capsys.readouterr()

    main(["report", "--hourly-rate", "24"])  # the command, as a user types it
    out = capsys.readouterr().out
    path = home / "report" / "report.md"
    assert out.splitlines()[-1] == f"wrote {path}"
    text = path.read_text()
    assert out.rsplit("\nwrote ", 1)[0].strip() == text.split("## Summary", 1)[1].strip()  # the summary is printed

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert commit and bullet(text, "git commit").startswith(commit)
    assert f"torch {torch.__version__}" in bullet(text, "software")
    assert bullet(text, "wall clock") == "25m 00s (the speedrun's running time)"
    assert bullet(text, "cost").startswith("$10.00 ")  # 24 $/h (the argument wins over the state's) x 25 min
    assert "| nanochat_pl/ |" in text and "| total |" in text

    cells = summary_cells(text)
    assert cells["CORE"] == ["0.2219", "—", "—", "—"]
    for task, accuracy in sft_chat_scores.items():
        assert cells[task] == ["—", "—", f"{accuracy:.4f}", "0.0758" if task == "GSM8K" else "—"]
    assert cells["ChatCORE"] == ["—", "—", "0.0884", "—"]  # RL ran GSM8K alone: no ChatCORE
    assert list(cells)[-2:] == ["ChatCORE", "Arithmetic"]  # a task outside nanochat's table comes after it
    assert cells["Arithmetic"] == ["—", "—", "—", "0.9000"]

    base_text = section(text, "base (BASE)")
    with torch.device("meta"):
        model = GPT(CONFIG)
    assert bullet(base_text, "parameters") == f"{model.num_params():,}"
    assert bullet(base_text, "FLOPs per token") == f"{model.flops_per_token():.3e}"
    assert bullet(base_text, "tokens").startswith(f"{10 * TOKENS_PER_STEP:,} (10 steps")
    assert bullet(base_text, "validation bpb") == "min 1.6000 (step 4), final 1.7000 (step 9)"
    assert bullet(base_text, "time") == "1m 00s wall clock; training 0m 20s (train/time)"
    assert bullet(base_text, "MFU") == "42.00%"  # the median window
    assert bullet(base_text, "CORE").startswith("0.2219 (mean of 1 tasks")
    assert bullet(base_text, "config") == "/abs/base.yaml"
    assert "depth=2" in bullet(base_text, "settings")
    assert "| hellaswag | 0.4000 | 0.2000 | 100 |" in base_text
    assert "![base](base.png)" in base_text

    sft_text = section(text, "sft (SFT)")
    assert bullet(sft_text, "MFU") == "—"  # no peak FLOP/s known (a CPU): none logged
    assert bullet(sft_text, "ChatCORE") == "0.0884"
    assert "| ARC-Easy | 0.3876 | 0.1835 | 40 |" in sft_text
    rl_text = section(text, "rl (RL)")
    assert bullet(rl_text, "tokens").startswith("—")
    assert bullet(rl_text, "validation bpb") == "—"
    assert "eval/pass@1 0.5500 (step 2)" in bullet(rl_text, "last logged during training")

    assert "Failed, no checkpoint; its log: /abs/home/speedrun/logs/extra-sft.log." in section(text, "extra-sft")
    tokenizer_text = section(text, "tokenizer-eval")  # as `tokenizer eval` prints it last
    assert "| vocab_size | 8192 |" in tokenizer_text and "| | ours | gpt-2 |" in tokenizer_text
    assert "| news | 3.2 | 3.1 |" in tokenizer_text and "| offline-val | 3.67 | — |" in tokenizer_text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert not any(h.startswith("## mid") for h in headings)  # disabled: it did not run
    assert "| mid |" not in section(text, "Stages")

    # two rows of panels (loss, bpb, learning rates) for base and RL (loss, reward, pass@k); one row for SFT
    assert png_size(home / "report" / "base.png") == (1200, 700)
    assert png_size(home / "report" / "rl.png") == (1200, 700)
    assert png_size(home / "report" / "sft.png") == (1200, 350)
    assert not (home / "report" / "extra-sft.png").exists()

    # without the argument, the state's hourly rate
    path, _ = write_report()
    assert bullet(path.read_text(), "cost").startswith("$4.17 ")  # 10 $/h x 25 min
    # a state written before speedrun kept its running time: its stages' times added up
    del state["seconds"]
    (home / "speedrun" / "state.json").write_text(json.dumps(state))
    path, _ = write_report()
    assert bullet(path.read_text(), "wall clock") == "10m 00s (the speedrun's running time)"


def test_a_pipeline_run_by_hand(home, tokenizer_state):
    """No speedrun state: the newest run of each stage kind, a resumed base run's curves joined across its two
    runs, the eval JSON that belongs to the checkpoint."""
    logs = home / "runs" / "base" / "lightning_logs"
    first_curves = {
        "train/loss": [(s, 4.0 - 0.1 * s) for s in range(8)],
        # the validation after 8 steps (logged at 7) came after the step-6 checkpoint the next run resumed from
        "val/bpb": [(0, 2.0), (3, 1.8), (7, 1.4)],
    }
    crashed = write_run(logs / "version_0", "base", 6, first_curves, tokenizer_state)
    second_curves = {"train/loss": [(s, 4.0 - 0.1 * s) for s in range(6, 12)], "val/bpb": [(9, 1.5), (11, 1.55)]}
    write_run(logs / "version_1", "base", 12, second_curves, tokenizer_state, resumed_from=crashed, wall_start=2000)

    mid_logs, sft_logs = home / "runs" / "mid" / "lightning_logs", home / "runs" / "sft" / "lightning_logs"
    write_run(mid_logs / "version_0", "mid", 4, {"train/loss": [(0, 3.0), (3, 2.0)]}, tokenizer_state)
    sft = write_run(sft_logs / "version_0", "sft", 5, {"train/loss": [(0, 2.0), (4, 1.0)]}, tokenizer_state)
    with torch.device("meta"):
        earlier = write_checkpoint(sft.parent.parent, 2, GPT(CONFIG), {"stage": "sft"})
    os.utime(earlier, (sft.stat().st_mtime - 60,) * 2)  # written before the final step's, as in a real run
    write_eval("chat", earlier, chat_result({"ARC-Easy": 0.1}, chatcore=None))  # not the final checkpoint's
    write_eval("chat", sft.parent / "last.ckpt", chat_result({"ARC-Easy": 0.5, "MMLU": 0.3}, chatcore=None))

    path, summary = write_report()
    text = path.read_text()
    base_text = section(text, "base (BASE)")
    assert bullet(base_text, "validation bpb") == "min 1.5000 (step 9), final 1.5500 (step 11)"
    assert bullet(base_text, "steps") == "12"
    assert bullet(base_text, "time").startswith("0m 12s wall clock")  # 7 s of the first run's logs + 5 s
    assert bullet(section(text, "mid (MID)"), "time").startswith("0m 03s")
    assert bullet(text, "wall clock") == "0m 19s (the stages' times added up)"
    assert bullet(text, "cost").startswith("—")
    assert summary == text.split("## Summary", 1)[1].strip()
    cells = summary_cells(text)
    assert cells["ARC-Easy"] == ["—", "—", "0.5000", "—"]
    assert cells["MMLU"] == ["—", "—", "0.3000", "—"]
    assert not any(line.startswith("## rl") for line in text.splitlines())
    assert cells["GSM8K"] == ["—"] * 4
    assert png_size(home / "report" / "base.png") == (1200, 350)


def test_nothing_to_report_and_a_corrupt_state_are_one_line_errors(home, capsys):
    with pytest.raises(UserError, match="nothing to report: no speedrun state"):
        write_report()
    with pytest.raises(SystemExit) as exit_info:
        main(["report"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 1 and len(errors) == 1 and "nothing to report" in errors[0]
    (home / "speedrun").mkdir(parents=True)
    for corrupt in ('{"stages": [', '{"stages": 3}', "[]"):
        (home / "speedrun" / "state.json").write_text(corrupt)
        with pytest.raises(UserError, match="cannot read the speedrun state") as error:
            write_report()
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="negative"):
        write_report(hourly_rate=-1.0)
