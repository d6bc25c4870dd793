"""`nanochat-pl report`: the report card (report.md and a PNG of each training stage's curves), as nanochat's
report.py writes at the end of its speedrun.

What ran is the speedrun's state (`SpeedrunState`), else the newest run of each stage kind under runs/. A training
stage's figures come from its checkpoint, its TensorBoard logs (joined across the runs a resumed stage went through)
and what `nanochat-pl eval core|chat` recorded for its checkpoint.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import nanochat_pl
from nanochat_pl.checkpoint import STAGES, peek_checkpoint, stage_checkpoints
from nanochat_pl.common import CHECKPOINT_KEY, REPO, UserError, atomic_path, format_duration, home_dir
from nanochat_pl.evals.harness import run_eval_dir
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.stages.lm import meta_model

STATE_FILE = Path("speedrun") / "state.json"  # in the data home
LADDER_FILE = Path("ladder") / "ladder.json"  # `nanochat-pl ladder`'s rungs, its state.json beside it
MISSING = "—"
# nanochat's summary table (its README): a metric per row, a stage per column
SUMMARY_ROWS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE")
# the project's code, as nanochat's report counts its "bloat": sources and configs, no data, no build outputs
CODE_DIRS = ("nanochat_pl", "rustbpe/src", "tests")  # nanochat_pl/ holds apps/ and configs/
CODE_SUFFIXES = {".py", ".rs", ".yaml", ".html", ".css", ".js"}
# a stage's plot: a panel per entry that matches tags it logged (patterns), two panels per row
PLOT_PANELS = (
    ("training loss", ("train/loss", "rl/loss"), False),
    ("validation bits per byte", ("val/bpb",), False),
    ("RL reward (mean over samples)", ("rl/reward",), False),
    ("held-out pass@k", ("eval/pass@*",), False),
    ("CORE (during training)", ("core_metric",), False),
    ("ChatCORE (during training)", ("chatcore_metric", "chatcore_cat"), False),
    ("learning rate", ("lr-*",), True),
)

Curves = dict[str, list[tuple[int, float]]]  # TensorBoard tag -> (step, value) in step order


@dataclass
class StageRecord:
    """What one stage of a speedrun did, or a run found under runs/ (command "fit")."""

    name: str
    command: str = ""  # "fit", "eval core", "tokenizer train", ...
    status: str = "pending"  # pending, running, done, failed, disabled
    seconds: float | None = None  # its running time, attempts added up; a run found under runs/: its logs' span
    argv: list[str] = field(default_factory=list)
    config: str | None = None
    log: str | None = None
    run_dir: str | None = None
    checkpoint: str | None = None
    result: dict[str, Any] | None = None  # the JSON object the command printed last (evals, tokenizer eval)
    started: float | None = None
    ended: float | None = None
    attempt_started: float | None = None
    runs_before: list[str] = field(default_factory=list)  # run folders of a fit stage's root that are not its own


@dataclass
class SpeedrunState:
    """`speedrun/state.json` in the data home: what a speedrun has done, saved at every change so a rerun resumes."""

    stages: list[StageRecord]
    command: str | None = None  # the command line, for the report
    started: float = field(default_factory=time.time)
    ended: float | None = None
    seconds: float = 0.0  # how long the speedrun's processes ran, resumed runs added up
    hourly_rate: float | None = None

    @classmethod
    def load(cls, path: Path) -> SpeedrunState:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            state["stages"] = [StageRecord(**record) for record in state["stages"]]
            if state.get("seconds") is None:  # a state from before the running time was kept: its stages' times
                state["seconds"] = sum(record.seconds or 0.0 for record in state["stages"])
            return cls(**state)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"cannot read the speedrun state {path}: {type(error).__name__}: {error}") from None

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def find_runs(runs: Path) -> list[StageRecord]:
    """The newest checkpoint of each stage, in pipeline order, as a speedrun would have recorded it."""
    records = []
    for stage in STAGES:
        if found := stage_checkpoints(runs / stage):
            run_dir = found[0].parent.parent  # config.yaml: the whole config, as LightningCLI saved it
            kept = dict(config=str(run_dir / "config.yaml"), run_dir=str(run_dir), checkpoint=str(found[0]))
            records.append(StageRecord(stage, "fit", "done", **kept))
    return records


@dataclass
class FitReport:
    """What the report says of one training stage that left a checkpoint."""

    kind: str  # base, mid, sft, rl: the checkpoint's
    step: int  # optimizer steps
    model: GPT  # on the meta device: its structure, for counting
    tokens_per_step: int | None  # None where a step has no fixed batch (RL)
    curves: Curves
    evals: dict[str, dict[str, Any]]  # "core" / "chat" -> the eval command's JSON

    def last(self, tag: str) -> tuple[int, float] | None:
        return self.curves[tag][-1] if self.curves.get(tag) else None


def read_fit_stage(stage: StageRecord, records: list[StageRecord]) -> FitReport:
    checkpoint = Path(stage.checkpoint)
    loaded = peek_checkpoint(checkpoint)  # memory-mapped: the weights are not read
    if CHECKPOINT_KEY not in loaded:
        raise UserError(f"{checkpoint} is not a nanochat-pl checkpoint (no {CHECKPOINT_KEY!r} entry)")
    meta = loaded[CHECKPOINT_KEY]
    model = meta_model(GPTConfig(**meta["gpt_config"]))
    curves, span = stage_curves(Path(stage.run_dir))
    stage.seconds = span if stage.seconds is None else stage.seconds
    per_step = meta.get("total_batch_tokens")  # what every step takes, padding of chat rows included
    evals = checkpoint_evals(checkpoint, records)
    return FitReport(meta["stage"], int(loaded.get("global_step", 0)), model, per_step, curves, evals)


def stage_curves(run_dir: Path) -> tuple[Curves, float | None]:
    """A stage's curves across the runs it was resumed through, and the seconds its runs logged over. A run resumed
    from (`ckpt_path`) adds its points before that checkpoint's step: later ones (up to a crash) were trained again."""
    curves, seconds = read_curves(run_dir)
    seen = {run_dir.resolve()}
    while (checkpoint := saved_config(run_dir).get("ckpt_path")) and Path(checkpoint).is_file():
        checkpoint = Path(checkpoint).resolve()
        run_dir = run_eval_dir(checkpoint).parent
        if run_dir in seen:
            break
        seen.add(run_dir)
        from_step = peek_checkpoint(checkpoint).get("global_step", 0)
        before, earlier_seconds = read_curves(run_dir)
        for tag, points in before.items():
            curves[tag] = [point for point in points if point[0] < from_step] + curves.get(tag, [])
        if earlier_seconds is not None:
            seconds = earlier_seconds + (seconds or 0.0)
    return curves, seconds


def read_curves(run_dir: Path) -> tuple[Curves, float | None]:
    """Every scalar a run logged to TensorBoard, and the seconds between its first and last point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 0: every point (by default 10,000 are sampled)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    curves = {tag: [(p.step, p.value) for p in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    wall_times = [p.wall_time for tag in curves for p in events.Scalars(tag)]
    return curves, (max(wall_times) - min(wall_times) if wall_times else None)


def saved_config(run_dir: Path) -> dict[str, Any]:
    config = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(config.read_text()) if config.is_file() else None
    except yaml.YAMLError as error:
        raise UserError(f"cannot read {config}: {str(error).splitlines()[0]}") from None
    return saved if isinstance(saved, dict) else {}


def checkpoint_evals(checkpoint: Path, records: list[StageRecord]) -> dict[str, dict[str, Any]]:
    """A checkpoint's CORE and ChatCORE ("core", "chat"): what the speedrun recorded, else the newest in eval/."""
    results = [r.result for r in records if r.command.startswith("eval") and r.result is not None]
    for path in sorted(run_eval_dir(checkpoint).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read the eval result {path}: {error}") from None
    evals: dict[str, dict[str, Any]] = {}
    for result in results:
        if isinstance(result, dict) and evaluated(result.get("checkpoint"), checkpoint):
            evals.setdefault(result.get("kind"), result)
    return evals


def evaluated(recorded: str | None, checkpoint: Path) -> bool:
    """Whether an eval's recorded checkpoint is `checkpoint`: the path resolves to it (last.ckpt links to the final
    one), or, a path relative to wherever the eval ran, the file of that name in the checkpoint's folder does."""
    if not recorded:
        return False
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [path, checkpoint.parent / path.name]
    return any(p.exists() and p.resolve() == checkpoint.resolve() for p in candidates)


def git_commit() -> str:
    """The commit checked out at REPO, "(dirty)" with uncommitted changes; "unknown" outside a checkout."""
    if not (REPO / ".git").exists():  # an installed package
        return "unknown"
    command = ["git", "describe", "--always", "--abbrev=40", "--exclude=*", "--dirty= (dirty)"]  # the hash, no tag
    try:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or a hung file system
        return "unknown"


def header(state: SpeedrunState | None, records: list[StageRecord], source: str, hourly_rate: float | None) -> str:
    if state is not None:
        wall, span = state.seconds, "the speedrun's running time" + ("" if state.ended else ", unfinished")
    else:
        wall, span = sum(r.seconds or 0.0 for r in records), "the stages' times added up"
    if hourly_rate is None:
        cost = f"{MISSING} (give the machine's hourly rate: `nanochat-pl report --hourly_rate 24`)"
    else:
        cost = f"${hourly_rate * wall / 3600:,.2f} ({wall / 3600:.2f} h at ${hourly_rate:,.2f}/h)"
    cpuinfo = Path("/proc/cpuinfo")
    cpus = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.is_file() else []
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpus_shown = ", ".join(f"{gpus.count(name)} × {name}" for name in dict.fromkeys(gpus)) or "none"
    cpu = cpus[0] if cpus else platform.processor() or "unknown CPU"
    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    lines = [
        "# nanochat-pl report card",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from {source}.",
        "",
        f"- git commit: {git_commit()}",
        f"- hardware (this machine): {cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM; GPUs: {gpus_shown}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}{cuda}, "
        f"lightning {importlib.metadata.version('lightning')}, nanochat-pl {nanochat_pl.__version__}",
        f"- wall clock: {duration(wall)} ({span})",
        f"- cost: {cost}",
    ]
    lines += ["", "Code:", "", "| folder | files | lines | characters |", "|---|---:|---:|---:|"]
    rows = {}
    for folder in CODE_DIRS:  # those that exist: an installed package has no tests/ or rustbpe/
        files = [p for p in sorted((REPO / folder).rglob("*")) if p.suffix in CODE_SUFFIXES and p.is_file()]
        texts = [p.read_text(errors="replace") for p in files]
        if files:
            rows[f"{folder}/"] = (len(files), sum(t.count("\n") for t in texts), sum(map(len, texts)))
    rows["total"] = tuple(map(sum, zip(*rows.values(), strict=True)))
    lines += [f"| {name} | {row[0]:,} | {row[1]:,} | {row[2]:,} |" for name, row in rows.items()]
    return "\n".join(lines)


def write_report(hourly_rate: float | None = None, output: str | None = None) -> tuple[Path, str]:
    """Write the report card of the run in the data home: report.md and a PNG of each training stage's curves.

    Args:
        hourly_rate: What the machine costs per hour, in dollars (8×H100: about 24); the report estimates the run's
            cost from it. Default: the speedrun's hourly_rate, if it was given one.
        output: Directory for report.md and the plots; default: report/ in the data home.
    """
    if hourly_rate is not None and hourly_rate < 0:
        raise UserError(f"hourly_rate cannot be negative, got {hourly_rate}")
    home = home_dir()
    out = Path(output) if output is not None else home / "report"
    state = SpeedrunState.load(home / STATE_FILE) if (home / STATE_FILE).is_file() else None
    if state is not None:
        records = state.stages
        source = f"the speedrun state {home / STATE_FILE}" + (f" (`{state.command}`)" if state.command else "")
        hourly_rate = state.hourly_rate if hourly_rate is None else hourly_rate
    else:
        records = find_runs(home / "runs")
        source = f"the newest run of each stage under {home / 'runs'} (no speedrun state)"
        if not records and not (home / LADDER_FILE).is_file():
            raise UserError(f"nothing to report: no speedrun state at {home / STATE_FILE} and no run under runs/")
    shown = [r for r in records if r.status in ("done", "running", "failed")]
    fits = {r.name: read_fit_stage(r, records) for r in shown if r.command == "fit" and r.checkpoint is not None}
    sections = []
    for record in shown:
        if record.command == "fit":
            sections.append(fit_section(record, fits.get(record.name), out))
        elif not record.command.startswith("eval") and record.result is not None:
            sections.append(result_section(record))
    stages = ["## Stages", "", "| stage | command | status | time |", "|---|---|---|---:|"]
    stages += [f"| {r.name} | {r.command} | {r.status} | {duration(r.seconds)} |" for r in shown]
    summary = summary_table(list(fits.values()))
    ladder = [ladder_section(home, out)] if (home / LADDER_FILE).is_file() else []
    parts = [header(state, records, source, hourly_rate)]
    if records:
        parts += ["\n".join(stages), *sections, "## Summary\n\n" + summary]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n\n".join(parts + ladder) + "\n", encoding="utf-8")
    print("\n\n".join(([summary] if records else []) + ladder))
    print(f"wrote {out / 'report.md'}")
    return out / "report.md", summary


def ladder_section(home: Path, out: Path) -> str:
    """The ablation ladder (`nanochat-pl ladder`): each rung's validation bits per byte after the same tokens, its
    change over the rung before ("noise" where smaller than the spread of one rung trained with two seeds), its
    training tokens/s and parameters, then why each rung exists and a plot of every run's curve into `out`."""
    ladder = json.loads((home / LADDER_FILE).read_text(encoding="utf-8"))
    state_file = home / LADDER_FILE.parent / "state.json"
    state = SpeedrunState.load(state_file) if state_file.is_file() else SpeedrunState([])
    fits = {r.name: read_fit_stage(r, []) for r in state.stages if r.status == "done"}
    # by tokens: the first validation is the one before training, and the one after step k is logged at step k - 1
    val = {name: fit.curves.get("val/bpb", []) for name, fit in fits.items()}
    curves = {
        name: [(i and (s + 1) * fits[name].tokens_per_step, v) for i, (s, v) in enumerate(val[name])] for name in val
    }
    final = {name: points[-1][1] for name, points in curves.items() if points}
    (first, seed), (twin, twin_seed) = ladder["noise"]
    spread = abs(final[first] - final[twin]) if first in final and twin in final else None
    tokens = " / ".join(sorted({f"{points[-1][0]:,}" for points in curves.values() if points})) or MISSING
    lines = ["## Ladder", "", f"{len(fits)} of {len(ladder['rungs']) + 1} runs done in {duration(state.seconds)}, "]
    lines[-1] += f"each of {tokens} tokens. Noise band: {first} trained with seeds {seed} and {twin_seed}, "
    lines[-1] += f"val bpb spread {number(spread)}."
    lines += ["", "| rung | component | val bpb | Δ | tokens/s | parameters |", "|---|---|---:|---:|---:|---:|"]
    previous = None
    for rung in ladder["rungs"]:
        fit, bpb = fits.get(rung["name"]), final.get(rung["name"])
        delta = None if bpb is None or previous is None else bpb - previous
        speed = fit and fit.last("train/time") and f"{fit.last('train/lengths')[1] / fit.last('train/time')[1]:,.0f}"
        cells = [rung["name"], rung["component"], number(bpb), delta_text(delta, spread), speed or MISSING]
        lines.append(f"| {' | '.join(cells)} | {f'{fit.model.num_params():,}' if fit else MISSING} |")
        previous = bpb
    lines += ["", *(f"- {r['name']}: {r['why']} ({r['source']})" for r in ladder["rungs"])]
    if final:
        later = {r["name"]: final[r["name"]] for r in ladder["rungs"][1:] if r["name"] in final}
        plot_ladder(curves, later, spread, out / "ladder.png")
        lines += ["", "![ladder](ladder.png)"]
    return "\n".join(lines)


def delta_text(delta: float | None, spread: float | None) -> str:
    """A rung's change in val bpb over the rung before, marked noise where smaller than the two seeds' spread."""
    if delta is None:
        return MISSING
    return f"{delta:+.4f}" + (" (noise)" if spread is not None and abs(delta) < spread else "")


def fit_section(stage: StageRecord, fit: FitReport | None, out: Path) -> str:
    """A training stage: what it was, what it trained, how long, how well; its curves plotted into `out`."""
    if fit is None:  # failed, or still running
        return f"## {stage.name}\n\n{stage.status.capitalize()}, no checkpoint; its log: {stage.log or MISSING}."
    lines = [f"## {stage.name} ({fit.kind.upper()})", ""]
    c, evals = fit.model.config, fit.evals
    if stage.argv:
        lines.append(f"- command: `nanochat-pl {' '.join(stage.argv)}`")
    tokens = None if fit.tokens_per_step is None else fit.step * fit.tokens_per_step
    tokens_text = f"{MISSING} (no fixed tokens per step)"
    if tokens is not None:
        tokens_text = f"{tokens:,} ({fit.step:,} steps × {fit.tokens_per_step:,} tokens per step)"
    val = fit.curves.get("val/bpb")
    low = min(val, key=lambda point: point[1]) if val else None
    bpb = f"min {low[1]:.4f} (step {low[0]:,}), final {val[-1][1]:.4f} (step {val[-1][0]:,})" if val else MISSING
    mfu = fit.curves.get("train/device/mfu")  # logged only where Lightning knows the device's peak FLOP/s
    training = fit.last("train/time")  # ThroughputMonitor's clock, which a resumed run continues
    core = evals.get("core")
    skipped = f"; skipped: {'; '.join(core['skipped'])}" if core and core.get("skipped") else ""
    core_text = f"{number(core['core'])} (mean of {len(core.get('tasks', []))} tasks{skipped})" if core else MISSING
    lines += [
        f"- status: {stage.status}",
        f"- config: {stage.config or MISSING}",
        f"- run: {stage.run_dir}",
        f"- settings: {run_settings(Path(stage.run_dir))}",
        f"- checkpoint: {stage.checkpoint}",
        f"- model: d{c.n_layer}, width {c.n_embd}, {c.n_head} heads ({c.n_kv_head} kv) of {c.head_dim}, "
        f"vocab {c.vocab_size:,}, sequence {c.sequence_len:,}, windows {c.window_pattern}",
        f"- parameters: {fit.model.num_params():,}",
        f"- FLOPs per token: {fit.model.flops_per_token():.3e}",
        f"- steps: {fit.step:,}",
        f"- tokens: {tokens_text}",
        f"- training FLOPs: {MISSING if tokens is None else f'{tokens * fit.model.flops_per_token():.3e}'}",
        f"- time: {duration(stage.seconds)} wall clock; training {duration(training and training[1])} (train/time)",
        # the median of the logged windows: the steady state, not the first steps' compilation
        f"- MFU: {f'{statistics.median(v for _, v in mfu):.2%}' if mfu else MISSING}",
        f"- validation bpb: {bpb}",
        f"- CORE: {core_text}",
        f"- ChatCORE: {number(evals['chat'].get('chatcore')) if 'chat' in evals else MISSING}",
    ]
    logged = [(tag, fit.last(tag)) for tag in ("core_metric", "chatcore_metric", "rl/reward", "eval/pass@1")]
    shown = [f"{tag} {point[1]:.4f} (step {point[0]:,})" for tag, point in logged if point]
    if shown:
        lines.append(f"- last logged during training: {', '.join(shown)}")
    for result in (evals[kind] for kind in ("core", "chat") if kind in evals):
        lines += ["", f"| {'CORE' if result['kind'] == 'core' else 'chat'} tasks | accuracy | centered | problems |"]
        lines.append("|---|---:|---:|---:|")
        for task in result.get("tasks", []):
            count = task.get("num_examples", task.get("num_problems"))
            lines.append(
                f"| {task.get('label') or task.get('name')} | {number(task.get('accuracy'))} | "
                f"{number(task.get('centered'))} | {MISSING if count is None else f'{count:,}'} |"
            )
    plot = re.sub(r"[^\w.-]+", "_", stage.name) + ".png"
    if plot_curves(fit.curves, stage.name, out / plot):
        lines += ["", f"![{stage.name}]({plot})"]
    return "\n".join(lines)


def run_settings(run_dir: Path) -> str:
    model = saved_config(run_dir).get("model") or {}
    if not model:
        return MISSING
    settings = model.get("init_args") or {}
    shown = [f"{k}={v}" for k, v in settings.items() if v is not None and not isinstance(v, (dict, list))]
    return f"{model.get('class_path', '?').rsplit('.', 1)[-1]}: {', '.join(shown)}"


def result_section(stage: StageRecord) -> str:
    """A stage that is neither training nor evaluation (the tokenizer's) with the result it printed: its plain values
    in one table, each {column: {row: value}} (`tokenizer eval`'s bytes per token) in a table of its own."""
    lines = [f"## {stage.name}", ""]

    def is_columns(value: Any) -> bool:
        return isinstance(value, dict) and bool(value) and all(isinstance(column, dict) for column in value.values())

    plain = {key: value for key, value in stage.result.items() if not is_columns(value)}
    if plain:
        lines += ["| | |", "|---|---|"]
        lines += [f"| {k} | {v if isinstance(v, str) else json.dumps(v)} |" for k, v in plain.items()]
    for key, columns in stage.result.items():
        if is_columns(columns):
            lines += ["", f"{key}:", "", f"| | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
            for row in dict.fromkeys(row for column in columns.values() for row in column):
                lines.append(f"| {row} | {' | '.join(str(c.get(row, MISSING)) for c in columns.values())} |")
    return "\n".join(lines)


def summary_table(fits: list[FitReport]) -> str:
    """nanochat's summary table (the last run of each kind), then any other chat task a stage was scored on."""
    values: dict[str, dict[str, float | None]] = {}
    for fit in fits:  # in pipeline order: the last run of each kind stays
        chat = fit.evals.get("chat", {})
        values[fit.kind] = {"CORE": fit.evals.get("core", {}).get("core"), "ChatCORE": chat.get("chatcore")}
        values[fit.kind] |= {task.get("name"): task["accuracy"] for task in chat.get("tasks", [])}
    lines = ["| Metric | " + " | ".join(k.upper() for k in STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for metric in dict.fromkeys([*SUMMARY_ROWS, *(metric for kind in values.values() for metric in kind)]):
        lines.append(f"| {metric} | " + " | ".join(number(values.get(k, {}).get(metric)) for k in STAGES) + " |")
    return "\n".join(lines)


def number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def duration(seconds: float | None) -> str:
    return MISSING if seconds is None else format_duration(seconds)


def plot_curves(curves: Curves, title: str, path: Path) -> bool:
    """PLOT_PANELS of the tags a stage logged, two per row, 1,200 x 350 pixels a row; False (no file) if none."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = []
    for name, patterns, log_scale in PLOT_PANELS:
        tags = sorted({tag for pattern in patterns for tag in fnmatch.filter(curves, pattern) if curves[tag]})
        if tags:
            panels.append((name, tags, log_scale))
    if not panels:
        return False
    rows = (len(panels) + 1) // 2
    figure = Figure(figsize=(12.0, 3.5 * rows), dpi=100, layout="constrained")
    figure.suptitle(title)
    for index, (name, tags, log_scale) in enumerate(panels):
        axes = figure.add_subplot(rows, 2, index + 1)
        for tag in tags:
            steps, values = zip(*curves[tag], strict=True)
            axes.plot(steps, values, label=tag, marker="." if len(steps) <= 50 else None)  # few points: each shown
        # a log scale for the learning rates: those of the groups differ by orders of magnitude
        axes.set(title=name, xlabel="step", yscale="log" if log_scale else "linear")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if len(tags) > 1:
            axes.legend(fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")  # no bbox_inches="tight": the size stays what was asked
    return True


def plot_ladder(curves: Curves, later: dict[str, float], spread: float | None, path: Path) -> None:
    """Left, every run's validation bits per byte against tokens from its next-to-last validation on (the untrained
    starts above the chart); right, the final value of each rung after the first, the noise band as error bars."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14.0, 5.0), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    for index, (name, points) in enumerate(curves.items()):
        left.plot(*zip(*points, strict=True), label=name, color=colormaps["viridis"](index / max(len(curves) - 1, 1)))
    low, high = min(p[-1][1] for p in curves.values() if p), max(p[-min(2, len(p))][1] for p in curves.values() if p)
    left.set(title="validation bits per byte", xlabel="tokens", ylim=(low - 0.02, high + 0.02))
    left.legend(fontsize="small", ncol=2)
    right.errorbar(list(later), list(later.values()), yerr=spread, marker="o", capsize=4)
    right.set(title="after the same tokens (error bars: the two seeds' spread)")
    right.tick_params(axis="x", labelrotation=60)
    left.grid(alpha=0.3), right.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
