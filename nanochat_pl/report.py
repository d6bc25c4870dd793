"""The report card: `report/report.md` in the data home, and a PNG of every training stage's curves beside it, as
nanochat's report.py@dfc8833 wrote one at the end of its speedrun.

What ran comes from the speedrun's state file (`speedrun/state.json` in the data home) when there is one: its
stages, their commands, statuses, times, run folders, checkpoints and results. Without it (a pipeline run by hand)
the stages are the newest run of each kind (base, mid, sft, rl: its checkpoint's `stage`) under `runs/`.

Per training stage the figures come from where they are recorded:
- the model (parameters, FLOPs per token) from the checkpoint's GPT config, built on the meta device;
- tokens from the checkpoint: optimizer steps x its `total_batch_tokens` (every step takes exactly that many, the
  padding of padded chat rows included; `grad_accumulation_steps` refuses a batch that does not divide). Rank 0's
  `train/lengths` counts the same positions, but it is logged every `log_every_n_steps` and for one rank only;
- curves, training time (`train/time`, validation excluded) and MFU (`train/device/mfu`, logged only where
  Lightning knows the device's peak FLOP/s) from the TensorBoard logs, joined across the runs a resumed stage went
  through (each `fit --ckpt_path` starts a new run folder);
- CORE and ChatCORE from what `nanochat-pl eval core|chat` wrote for the stage's checkpoint: the speedrun's
  recorded result, else the JSON in the run's `eval/` folder.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nanochat_pl
from nanochat_pl.checkpoint import peek_checkpoint
from nanochat_pl.commands.eval import run_eval_dir
from nanochat_pl.common import CHECKPOINT_KEY, UserError, atomic_path, atomic_write_text, format_duration, home_dir
from nanochat_pl.model.gpt import GPT, GPTConfig

STATE_FILE = Path("speedrun") / "state.json"  # in the data home, written by `nanochat-pl speedrun`
STAGE_KINDS = ("base", "mid", "sft", "rl")  # the summary's columns, in pipeline order
RUN_ROOTS = ("base", "chat", "rl")  # runs/<stage_name>/ of the LightningModules (mid and SFT share "chat")
MISSING = "—"

# the summary table, nanochat's (README@dfc8833): a metric per row, a stage per column
SUMMARY_ROWS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE")

# the project's code, as nanochat's report counts its "bloat": sources and configs, no data, no build outputs
CODE_DIRS = ("nanochat_pl", "apps", "rustbpe/src", "configs", "tests")
CODE_SUFFIXES = {".py", ".rs", ".yaml", ".html", ".css", ".js"}

# the plot of a stage: panels of the tags it logged, two per row; tags with * are patterns
PLOT_PANELS = (
    ("training loss", ("train/loss", "rl/loss"), False),
    ("validation bits per byte", ("val/bpb",), False),
    ("RL reward (mean over samples)", ("rl/reward",), False),
    ("held-out pass@k", ("eval/pass@*",), False),
    ("CORE (during training)", ("core_metric",), False),
    ("ChatCORE (during training)", ("chatcore_metric", "chatcore_cat"), False),
    ("learning rate", ("lr-*",), True),
)
PLOT_COLUMNS = 2
PLOT_DPI = 100
PLOT_WIDTH = 12.0  # inches: 1,200 pixels at PLOT_DPI
PANEL_HEIGHT = 3.5  # inches per row of panels: 350 pixels
MARKED_POINTS = 50  # curves of at most this many points show each point (validations are few)

Curves = dict[str, list[tuple[int, float]]]  # TensorBoard tag -> (step, value) in step order


# ---- what ran -------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One step of the pipeline as recorded: an entry of the speedrun's state, or a run found under runs/."""

    name: str
    command: str  # "fit", "eval core", "tokenizer train", ...
    status: str  # pending, running, done, failed, disabled
    seconds: float | None = None  # the speedrun's; for a run found under runs/, the span of its logs (once read)
    config: str | None = None
    argv: list[str] = field(default_factory=list)
    log: str | None = None
    run_dir: Path | None = None
    checkpoint: Path | None = None
    result: Any = None  # what the command printed last (the eval commands: their JSON object)


@dataclass
class Pipeline:
    """The stages and, for a speedrun, its span and hourly rate; `source` says where they were read from."""

    source: str
    stages: list[Stage]
    started: float | None = None
    ended: float | None = None
    seconds: float | None = None  # how long the speedrun's processes ran, resumed runs added up
    hourly_rate: float | None = None


def load_pipeline(home: Path) -> Pipeline:
    """The speedrun's state in `home` if there is one, else the newest run of each stage kind under runs/."""
    state = home / STATE_FILE
    if state.is_file():
        return read_state(state)
    stages = find_runs(home / "runs")
    if not stages:
        raise UserError(f"nothing to report: no speedrun state at {state} and no checkpoint under {home / 'runs'}")
    return Pipeline(f"the newest run of each stage under {home / 'runs'} (no speedrun state)", stages)


def read_state(path: Path) -> Pipeline:
    """The speedrun's state file (see `nanochat-pl speedrun`); optional keys may be missing."""
    try:
        state = json.loads(path.read_text())
        stages = [_state_stage(entry) for entry in state["stages"]]
        rate = state.get("hourly_rate")
        return Pipeline(
            f"the speedrun state {path}" + (f" (`{state['command']}`)" if state.get("command") else ""),
            stages,
            started=state.get("started"),
            ended=state.get("ended"),
            seconds=state.get("seconds"),
            hourly_rate=None if rate is None else float(rate),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"cannot read the speedrun state {path}: {type(error).__name__}: {error}") from None


def _state_stage(entry: dict[str, Any]) -> Stage:
    def path(key: str) -> Path | None:
        return None if entry.get(key) is None else Path(entry[key])

    seconds = entry.get("seconds")
    if seconds is None and entry.get("started") is not None:  # still running: so far
        seconds = (entry.get("ended") or time.time()) - entry["started"]
    return Stage(
        name=str(entry["name"]),
        command=str(entry.get("command") or ""),
        status=str(entry.get("status") or "pending"),
        seconds=seconds,
        config=entry.get("config"),
        argv=[str(arg) for arg in entry.get("argv") or []],
        log=entry.get("log"),
        run_dir=path("run_dir"),
        checkpoint=path("checkpoint"),
        result=entry.get("result"),
    )


def find_runs(runs: Path) -> list[Stage]:
    """The newest run (highest version_N) with a checkpoint of each stage kind, in pipeline order."""
    newest: dict[str, Stage] = {}
    for root in RUN_ROOTS:
        versions = (runs / root / "lightning_logs").glob("version_*")
        numbered = sorted((int(m.group(1)), d) for d in versions if (m := re.fullmatch(r"version_(\d+)", d.name)))
        for _, run_dir in numbered:
            checkpoint = run_checkpoint(run_dir)
            if checkpoint is not None:
                kind = read_meta(checkpoint)[1]["stage"]
                config = run_dir / "config.yaml"  # the whole config, as LightningCLI saved it
                newest[kind] = Stage(
                    name=kind,
                    command="fit",
                    status="done",
                    config=str(config) if config.is_file() else None,
                    run_dir=run_dir,
                    checkpoint=checkpoint,
                )
    return sorted(
        newest.values(), key=lambda s: STAGE_KINDS.index(s.name) if s.name in STAGE_KINDS else len(STAGE_KINDS)
    )


def run_checkpoint(run_dir: Path) -> Path | None:
    """A run's final checkpoint: the file its last.ckpt links to, else its newest checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        return last.resolve()
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return checkpoints[-1] if checkpoints else None


def read_meta(checkpoint: Path) -> tuple[int, dict[str, Any]]:
    """A checkpoint's optimizer step and our metadata entry, memory-mapped: its weights are not read."""
    loaded = peek_checkpoint(checkpoint)
    if CHECKPOINT_KEY not in loaded:
        raise UserError(f"{checkpoint} is not a nanochat-pl checkpoint (no {CHECKPOINT_KEY!r} entry)")
    return int(loaded.get("global_step", 0)), loaded[CHECKPOINT_KEY]


# ---- the figures of a training stage --------------------------------------------------------------------------


@dataclass
class FitReport:
    """What the report says of one training stage."""

    stage: Stage
    run_dir: Path  # the run folder of its checkpoint
    kind: str  # base, mid, sft, rl: the checkpoint's
    step: int  # optimizer steps
    gpt_config: GPTConfig
    parameters: int
    flops_per_token: int
    tokens: int | None  # steps x total_batch_tokens; None where a step has no fixed batch (RL)
    tokens_per_step: int | None
    curves: Curves
    evals: dict[str, dict[str, Any]]  # "core" / "chat" -> the eval command's JSON

    def last(self, tag: str) -> tuple[int, float] | None:
        points = self.curves.get(tag)
        return points[-1] if points else None

    @property
    def training_seconds(self) -> float | None:
        """ThroughputMonitor's clock (validation excluded), which a resumed run continues."""
        point = self.last("train/time")
        return None if point is None else point[1]

    @property
    def mfu(self) -> float | None:
        """The median of the logged MFU windows: the steady state, not the first steps' compilation."""
        points = self.curves.get("train/device/mfu")
        return statistics.median(value for _, value in points) if points else None


def read_fit_stage(stage: Stage, pipeline: Pipeline) -> FitReport:
    """The figures of a training stage that left a checkpoint (see the module's docstring for where each is from)."""
    step, meta = read_meta(stage.checkpoint)
    config = GPTConfig(**meta["gpt_config"])
    with torch.device("meta"):  # the structure alone: counting needs no weights
        model = GPT(config)
    run_dir = stage.run_dir or run_eval_dir(stage.checkpoint).parent
    curves, span = stage_curves(run_dir)
    per_step = meta.get("total_batch_tokens")
    if stage.seconds is None:
        stage.seconds = span
    return FitReport(
        stage=stage,
        run_dir=run_dir,
        kind=meta["stage"],
        step=step,
        gpt_config=config,
        parameters=model.num_params(),
        flops_per_token=model.flops_per_token(),
        tokens=None if per_step is None else step * per_step,
        tokens_per_step=per_step,
        curves=curves,
        evals=checkpoint_evals(stage.checkpoint, pipeline),
    )


def stage_curves(run_dir: Path) -> tuple[Curves, float | None]:
    """A stage's curves across the runs it was resumed through, and the seconds its runs logged over.

    Each earlier run adds its points before the step the next one resumed from: those after it (up to a crash)
    were trained again by the next run."""
    curves, seconds = read_curves(run_dir)
    seen = {run_dir.resolve()}
    resumed = resume_point(run_dir)
    while resumed is not None and resumed[0] not in seen:
        earlier, from_step = resumed
        seen.add(earlier)
        before, earlier_seconds = read_curves(earlier)
        for tag, points in before.items():
            curves[tag] = [point for point in points if point[0] < from_step] + curves.get(tag, [])
        if earlier_seconds is not None:
            seconds = earlier_seconds + (seconds or 0.0)
        resumed = resume_point(earlier)
    return curves, seconds


def read_curves(run_dir: Path) -> tuple[Curves, float | None]:
    """Every scalar a run logged to TensorBoard, and the seconds between its first and last point."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: every point (default: 10,000 sampled)
    events.Reload()
    curves, wall_times = {}, []
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        curves[tag] = [(point.step, point.value) for point in points]
        wall_times += [point.wall_time for point in points]
    return curves, (max(wall_times) - min(wall_times) if wall_times else None)


def resume_point(run_dir: Path) -> tuple[Path, int] | None:
    """The run folder and step a run was resumed from: LightningCLI saves the run's `ckpt_path` in its config.yaml."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    try:
        saved = yaml.safe_load(config.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"cannot read {config}: {str(error).splitlines()[0]}") from None
    checkpoint = saved.get("ckpt_path") if isinstance(saved, dict) else None
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    checkpoint = Path(checkpoint).resolve()
    return run_eval_dir(checkpoint).parent, read_meta(checkpoint)[0]


def checkpoint_evals(checkpoint: Path, pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """CORE and ChatCORE of a checkpoint: a result the speedrun recorded for it, else the newest JSON the eval
    commands wrote into its run's eval/ folder for it."""
    recorded = [
        stage.result
        for stage in pipeline.stages
        if stage.command.startswith("eval")
        and isinstance(stage.result, dict)
        and evaluated(stage.checkpoint, checkpoint)
    ]
    files = sorted(run_eval_dir(checkpoint).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    written = [result for result in map(_read_json, files) if evaluated(result.get("checkpoint"), checkpoint)]
    evals: dict[str, dict[str, Any]] = {}
    for result in recorded + written:
        if result.get("kind") in ("core", "chat"):
            evals.setdefault(result["kind"], result)
    return evals


def evaluated(recorded: str | Path | None, checkpoint: Path) -> bool:
    """Whether an evaluation's recorded checkpoint is `checkpoint`: the path resolves to it (last.ckpt links to the
    final one), or, a path relative to wherever the eval ran, the file of that name in the checkpoint's folder does."""
    if not recorded:
        return False
    target, path = checkpoint.resolve(), Path(recorded)
    candidates = [path] if path.is_absolute() else [path, checkpoint.parent / path.name]
    return any(p.exists() and p.resolve() == target for p in candidates)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the eval result {path}: {error}") from None
    return result if isinstance(result, dict) else {}


# ---- the machine and the code ---------------------------------------------------------------------------------


def project_root() -> Path:
    """The folder the package lives in: the repository, in a checkout."""
    return Path(nanochat_pl.__file__).resolve().parent.parent


def git_commit(root: Path) -> str:
    """The commit of the repository at `root`, "(dirty)" with uncommitted changes; "unknown" if it is none (an
    installed package)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        top, commit = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
        if not top or Path(top).resolve() != root or not commit:
            return "unknown"
        return f"{commit} (dirty)" if git("status", "--porcelain") else commit
    except (OSError, subprocess.TimeoutExpired):  # no git, or a hung file system
        return "unknown"


def hardware() -> str:
    """This machine: CPU model, cores, RAM, GPUs."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    else:
        model = platform.processor() or model
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = Counter(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    shown = ", ".join(f"{count} × {name}" for name, count in gpus.items()) or "none"
    return f"{model}, {os.cpu_count()} cores, {ram:.1f} GiB RAM; GPUs: {shown}"


def versions() -> str:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}{cuda}, lightning {version('lightning')}, "
        f"nanochat-pl {version('nanochat-pl')}"
    )


def code_size(root: Path) -> list[tuple[str, int, int, int]]:
    """(folder, files, lines, characters) of the project's code, for each of CODE_DIRS that exists (an installed
    package has no tests/ or rustbpe/)."""
    rows = []
    for folder in CODE_DIRS:
        files = [p for p in sorted((root / folder).rglob("*")) if p.suffix in CODE_SUFFIXES and p.is_file()]
        if files:
            texts = [p.read_text(errors="replace") for p in files]
            rows.append((f"{folder}/", len(files), sum(t.count("\n") for t in texts), sum(map(len, texts))))
    return rows


# ---- the report -----------------------------------------------------------------------------------------------


def write_report(output: str | Path | None = None, hourly_rate: float | None = None) -> tuple[Path, str]:
    """Write report.md and a PNG of each training stage's curves into `output` (default: report/ in the data
    home); return the report's path and its summary table. `hourly_rate` wins over the speedrun's."""
    home = home_dir()
    output = Path(output) if output is not None else home / "report"
    pipeline = load_pipeline(home)
    rate = hourly_rate if hourly_rate is not None else pipeline.hourly_rate
    shown = [stage for stage in pipeline.stages if stage.status in ("done", "running", "failed")]
    fits = {
        id(stage): read_fit_stage(stage, pipeline)
        for stage in shown
        if stage.command == "fit" and stage.status != "failed" and stage.checkpoint is not None
    }
    sections = []
    for stage in shown:
        if stage.command == "fit":
            fit = fits.get(id(stage))
            plotted = fit is not None and plot_curves(fit.curves, stage.name, output / plot_name(stage))
            sections.append(fit_section(stage, fit, plot_name(stage) if plotted else None))
        elif not stage.command.startswith("eval") and stage.result is not None:
            sections.append(result_section(stage))
    summary = summary_table(list(fits.values()))
    text = "\n\n".join([header(pipeline, rate), stages_table(shown), *sections, "## Summary\n\n" + summary]) + "\n"
    atomic_write_text(output / "report.md", text)
    return output / "report.md", summary


def header(pipeline: Pipeline, hourly_rate: float | None) -> str:
    root = project_root()
    if pipeline.seconds is not None:
        wall = pipeline.seconds
        span = "the speedrun's running time" + ("" if pipeline.ended else ", unfinished")
    elif pipeline.started is not None:  # a state from before the running time was kept
        wall = (pipeline.ended or time.time()) - pipeline.started
        span = "speedrun start to end" if pipeline.ended else "speedrun start to now: unfinished"
    else:
        times = [s.seconds for s in pipeline.stages if s.seconds is not None]
        wall = sum(times) if times else None
        span = "the stages' times added up"
    lines = [
        "# nanochat-pl report card",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from {pipeline.source}.",
        "",
        f"- git commit: {git_commit(root)}",
        f"- hardware (this machine): {hardware()}",
        f"- software: {versions()}",
        f"- wall clock: {duration(wall)} ({span})",
        f"- cost: {cost(wall, hourly_rate)}",
        "",
        "Code:",
        "",
        "| folder | files | lines | characters |",
        "|---|---:|---:|---:|",
    ]
    rows = code_size(root)
    lines += [f"| {folder} | {files:,} | {n:,} | {chars:,} |" for folder, files, n, chars in rows]
    totals = [sum(row[i] for row in rows) for i in (1, 2, 3)]
    lines.append(f"| total | {totals[0]:,} | {totals[1]:,} | {totals[2]:,} |")
    return "\n".join(lines)


def cost(seconds: float | None, hourly_rate: float | None) -> str:
    if hourly_rate is None:
        return f"{MISSING} (give the machine's hourly rate: `nanochat-pl report --hourly_rate 24`)"
    if seconds is None:
        return MISSING
    hours = seconds / 3600
    return f"${hourly_rate * hours:,.2f} ({hours:.2f} h at ${hourly_rate:,.2f}/h)"


def stages_table(stages: list[Stage]) -> str:
    lines = ["## Stages", "", "| stage | command | status | time |", "|---|---|---|---:|"]
    lines += [f"| {s.name} | {s.command} | {s.status} | {duration(s.seconds)} |" for s in stages]
    return "\n".join(lines)


def fit_section(stage: Stage, fit: FitReport | None, plot: str | None) -> str:
    """A training stage: what it was, what it trained, how long, how well."""
    kind = f" ({fit.kind.upper()})" if fit is not None else ""
    lines = [f"## {stage.name}{kind}", ""]
    if stage.status == "failed":
        return "\n".join([*lines, f"Failed; its log: {stage.log or MISSING}."])
    if fit is None:
        return "\n".join([*lines, f"{stage.status.capitalize()}; no checkpoint yet. Log: {stage.log or MISSING}."])
    c = fit.gpt_config
    if stage.argv:
        lines.append(f"- command: `nanochat-pl {' '.join(stage.argv)}`")
    lines += [
        f"- status: {stage.status}",
        f"- config: {stage.config or MISSING}",
        f"- run: {fit.run_dir}",
        f"- settings: {run_settings(fit.run_dir)}",
        f"- checkpoint: {stage.checkpoint}",
        f"- model: d{c.n_layer}, width {c.n_embd}, {c.n_head} heads ({c.n_kv_head} kv) of {c.head_dim}, "
        f"vocab {c.vocab_size:,}, sequence {c.sequence_len:,}, windows {c.window_pattern}",
        f"- parameters: {fit.parameters:,}",
        f"- FLOPs per token: {fit.flops_per_token:.3e}",
        f"- steps: {fit.step:,}",
        f"- tokens: {tokens(fit)}",
        f"- training FLOPs: {MISSING if fit.tokens is None else f'{fit.tokens * fit.flops_per_token:.3e}'}",
        f"- time: {duration(stage.seconds)} wall clock; training {duration(fit.training_seconds)} (train/time)",
        f"- MFU: {MISSING if fit.mfu is None else f'{fit.mfu:.2%}'}",
        f"- validation bpb: {bpb(fit)}",
        f"- CORE: {core_line(fit.evals.get('core'))}",
        f"- ChatCORE: {number(fit.evals['chat'].get('chatcore')) if 'chat' in fit.evals else MISSING}",
    ]
    logged = [(tag, fit.last(tag)) for tag in ("core_metric", "chatcore_metric", "rl/reward", "eval/pass@1")]
    shown = [f"{tag} {value:.4f} (step {step:,})" for tag, (step, value) in ((t, p) for t, p in logged if p)]
    if shown:
        lines.append(f"- last logged during training: {', '.join(shown)}")
    for kind in ("core", "chat"):
        if kind in fit.evals:
            lines += ["", task_table(fit.evals[kind])]
    if plot is not None:
        lines += ["", f"![{stage.name}]({plot})"]
    return "\n".join(lines)


def run_settings(run_dir: Path | None) -> str:
    """The stage module's settings (scalars) from the config.yaml LightningCLI saved in the run."""
    config = None if run_dir is None else run_dir / "config.yaml"
    if config is None or not config.is_file():
        return MISSING
    saved = yaml.safe_load(config.read_text()) or {}
    model = saved.get("model") or {}
    settings = model.get("init_args") or {}
    shown = [f"{k}={v}" for k, v in settings.items() if v is not None and not isinstance(v, (dict, list))]
    return f"{model.get('class_path', '?').rsplit('.', 1)[-1]}: {', '.join(shown)}"


def tokens(fit: FitReport) -> str:
    if fit.tokens is None:
        return f"{MISSING} (no fixed tokens per step)"
    return f"{fit.tokens:,} ({fit.step:,} steps × {fit.tokens_per_step:,} tokens per step)"


def bpb(fit: FitReport) -> str:
    points = fit.curves.get("val/bpb")
    if not points:
        return MISSING
    low = min(points, key=lambda point: point[1])
    return f"min {low[1]:.4f} (step {low[0]:,}), final {points[-1][1]:.4f} (step {points[-1][0]:,})"


def core_line(result: dict[str, Any] | None) -> str:
    if result is None:
        return MISSING
    skipped = f"; skipped: {'; '.join(result['skipped'])}" if result.get("skipped") else ""
    return f"{number(result.get('core'))} (mean of {len(result.get('tasks', []))} tasks{skipped})"


def task_table(result: dict[str, Any]) -> str:
    """An eval's tasks: accuracy, centered accuracy, problems."""
    title = "CORE tasks" if result["kind"] == "core" else "chat tasks"
    lines = [f"| {title} | accuracy | centered | problems |", "|---|---:|---:|---:|"]
    for task in result.get("tasks", []):
        count = task.get("num_examples", task.get("num_problems"))
        lines.append(
            f"| {task.get('label') or task.get('name')} | {number(task.get('accuracy'))} | "
            f"{number(task.get('centered'))} | {MISSING if count is None else f'{count:,}'} |"
        )
    return "\n".join(lines)


def result_section(stage: Stage) -> str:
    """A stage that is not training or evaluation (the tokenizer's), with the result it recorded: its plain values
    in one table, and a value of columns ({column: {row: value}}, as `tokenizer eval`'s bytes per token per
    encoder and text) as a table of its own."""
    lines = [f"## {stage.name}", ""]
    if not isinstance(stage.result, dict):
        return "\n".join([*lines, "```", json.dumps(stage.result, indent=2), "```"])
    plain = {key: value for key, value in stage.result.items() if not is_columns(value)}
    if plain:
        lines += ["| | |", "|---|---|"]
        lines += [
            f"| {key} | {value if isinstance(value, str) else json.dumps(value)} |" for key, value in plain.items()
        ]
    for key, columns in stage.result.items():
        if is_columns(columns):
            rows = list(dict.fromkeys(row for column in columns.values() for row in column))
            lines += ["", f"{key}:", "", f"| | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]
            for row in rows:
                cells = [str(column.get(row, MISSING)) for column in columns.values()]
                lines.append(f"| {row} | {' | '.join(cells)} |")
    return "\n".join(lines)


def is_columns(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(column, dict) for column in value.values())


def summary_table(fits: list[FitReport]) -> str:
    """nanochat's summary: CORE of the base model and each chat stage's task accuracies and ChatCORE (its last
    run of each kind); then any other chat task a stage was scored on (the CPU run's Arithmetic, SpellingBee)."""
    by_kind = {fit.kind: fit for fit in fits}
    lines = [
        "| Metric | " + " | ".join(kind.upper() for kind in STAGE_KINDS) + " |",
        "|---|" + "---:|" * len(STAGE_KINDS),
    ]
    scored = (task.get("name") for fit in fits for task in fit.evals.get("chat", {}).get("tasks", []))
    others = [name for name in dict.fromkeys(scored) if name not in SUMMARY_ROWS]
    for metric in (*SUMMARY_ROWS, *others):
        cells = [number(summary_value(by_kind.get(kind), metric)) for kind in STAGE_KINDS]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_value(fit: FitReport | None, metric: str) -> float | None:
    if fit is None:
        return None
    if metric == "CORE":
        return fit.evals.get("core", {}).get("core")
    chat = fit.evals.get("chat", {})
    if metric == "ChatCORE":
        return chat.get("chatcore")
    return next((task["accuracy"] for task in chat.get("tasks", []) if task.get("name") == metric), None)


def number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def duration(seconds: float | None) -> str:
    return MISSING if seconds is None else format_duration(seconds)


# ---- plots ----------------------------------------------------------------------------------------------------


def plot_name(stage: Stage) -> str:
    return re.sub(r"[^\w.-]+", "_", stage.name) + ".png"


def plot_curves(curves: Curves, title: str, path: Path) -> bool:
    """PLOT_PANELS of the tags a stage logged, two per row, as a PNG of PLOT_WIDTH x PANEL_HEIGHT per row at
    PLOT_DPI; False (and no file) if it logged none of them."""
    panels = []
    for name, patterns, log_scale in PLOT_PANELS:
        tags = sorted({tag for pattern in patterns for tag in fnmatch.filter(curves, pattern) if curves[tag]})
        if tags:
            panels.append((name, tags, log_scale))
    if not panels:
        return False
    rows = math.ceil(len(panels) / PLOT_COLUMNS)
    figure = Figure(figsize=(PLOT_WIDTH, PANEL_HEIGHT * rows), dpi=PLOT_DPI, layout="constrained")
    figure.suptitle(title)
    for index, (name, tags, log_scale) in enumerate(panels):
        axes = figure.add_subplot(rows, PLOT_COLUMNS, index + 1)
        for tag in tags:
            steps, values = zip(*curves[tag], strict=True)
            axes.plot(steps, values, label=tag, marker="." if len(steps) <= MARKED_POINTS else None)
        axes.set_title(name)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if log_scale:
            axes.set_yscale("log")  # learning rates of the groups differ by orders of magnitude
        if len(tags) > 1:
            axes.legend(fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")  # no bbox_inches="tight": the size stays what was asked
    return True
