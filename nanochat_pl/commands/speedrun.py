"""`nanochat-pl speedrun`: the whole pipeline in one command, stage by stage, resumable (nanochat's speedrun.sh).

A speedrun config lists stages. Each is one of the existing commands (`tokenizer train`, `fit`, `eval chat`, ...)
with its own config and options, run as a child process whose output goes to the terminal and to
`speedrun/logs/<stage>.log` in the data home. What the pipeline has done is kept in `speedrun/state.json`, written
atomically at every change, so that running the same command again:

- skips the stages that finished;
- resumes a `fit` stage that was interrupted from its run's last checkpoint (`--ckpt_path`);
- hands every stage the checkpoint it needs: a `fit` stage with `init_from: base` starts from the base stage's
  final checkpoint (`model.init_args.init_from`), an eval stage with `checkpoint: sft` evaluates SFT's.

A disabled stage (`enabled: false`) is cut out of the chain: a stage that would start from it starts from what it
would have started from (no midtraining: SFT starts from base), and a stage that would evaluate it is disabled too.
A `background` stage is started and the pipeline goes on (nanochat downloads the pretraining shards while the
tokenizer trains); a stage that lists it in `after` waits for it. `trainer` reaches every `fit` stage after the
stage's own config, as `fit --config stage.yaml --config preset.yaml` does, so a trainer preset given after the
speedrun config (`--config configs/trainer/gpu1.yaml`) swaps the hardware of the whole run. At the end, `report`
writes the report card.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nanochat_pl.common import (
    UserError,
    atomic_write_text,
    error_line,
    format_duration,
    home_dir,
    last_json,
    nanochat_command,
)

REPO = Path(__file__).resolve().parents[2]  # a clone's root: where configs/ is
STATUSES = ("pending", "running", "done", "failed", "disabled")
STATE_SAVE_SECONDS = 60  # while a stage runs, the state (its running time) is saved this often


@dataclass
class Stage:
    """One stage of the pipeline: one `nanochat-pl` command.

    Args:
        name: What the stage is called in the progress lines, the state and the logs (unique).
        command: The command: "fit", "tokenizer train", "eval chat", "data download", ...
        config: `fit`: the stage's YAML (a path relative to the current directory or the repository).
        init_from: `fit`: the earlier stage whose final checkpoint this one starts from.
        checkpoint: The earlier stage whose final checkpoint the command takes as `--checkpoint` (evals).
        args: More options, {"vocab_size": 8192} -> `--vocab_size 8192`; for `fit`, dotted ones
            ({"model.init_args.num_iterations": 100}).
        enabled: False leaves the stage out.
        background: Start it and go on; a stage that names it in `after` waits for it.
        after: Background stages to wait for before this one starts.
    """

    name: str
    command: str
    config: str | None = None
    init_from: str | None = None
    checkpoint: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    background: bool = False
    after: list[str] = field(default_factory=list)


def speedrun(
    stages: list[Stage],
    trainer: dict[str, Any] | None = None,
    hourly_rate: float | None = None,
    restart: bool = False,
) -> None:
    """Run the whole pipeline of a speedrun config; run it again to resume after an interruption.

    Args:
        stages: The stages, in order (see configs/cpu/speedrun.yaml).
        trainer: Trainer settings every `fit` stage gets after its own config (a trainer preset).
        hourly_rate: What the hardware costs per hour, for the report's estimate of the run's cost.
        restart: Forget what an earlier speedrun in this data home did and run every stage again.
    """
    check_stages(stages)
    pipeline = Pipeline(stages, trainer, hourly_rate, restart)
    try:
        pipeline.run()
    except KeyboardInterrupt:
        pipeline.stop_background()
        pipeline.say("interrupted: run the same command again to resume")
        sys.exit(130)
    finally:
        pipeline.save()
    from nanochat_pl.commands.report import report

    report(hourly_rate=hourly_rate)


def check_stages(stages: list[Stage]) -> None:
    """One-line errors for a config that cannot run: names, references to later or unknown stages, fit configs."""
    if not stages:
        raise UserError("a speedrun needs at least one stage")
    seen: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in seen or not stage.name or "/" in stage.name:
            raise UserError(f"stage names must be unique, non-empty and without '/': {stage.name!r}")
        for key, ref in (("init_from", stage.init_from), ("checkpoint", stage.checkpoint)):
            if ref is not None and (ref not in seen or seen[ref].command != "fit"):
                raise UserError(f"stage {stage.name}: {key} must name an earlier fit stage, not {ref!r}")
        for ref in stage.after:
            if ref not in seen or not seen[ref].background:
                raise UserError(f"stage {stage.name}: after must name earlier background stages, not {ref!r}")
        if stage.command == "fit" and stage.config is None:
            raise UserError(f"stage {stage.name}: a fit stage needs its config")
        if stage.background and stage.command == "fit":
            raise UserError(f"stage {stage.name}: a fit stage cannot run in the background")
        seen[stage.name] = stage


def resolve_config(path: str) -> Path:
    """A config path as given, else relative to the repository (the speedrun configs name `configs/...`)."""
    for candidate in (Path(path).expanduser(), REPO / path):
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(f"no config at {path} (nor at {REPO / path})")


class Pipeline:
    """The stages of one speedrun and what they have done (the state file), run in order."""

    def __init__(self, stages: list[Stage], trainer: dict[str, Any] | None, hourly_rate: float | None, restart: bool):
        self.stages = {stage.name: stage for stage in stages}
        self.trainer, self.hourly_rate = trainer, hourly_rate
        self.root = home_dir() / "speedrun"
        self.state_file = self.root / "state.json"
        self.background: dict[str, subprocess.Popen] = {}
        self.state = self._load_state(restart)
        # the time speedrun processes ran, added up: a run resumed a day later does not count the day between (a
        # state from before this was kept: its stages' times)
        earlier = self.state.get("seconds")
        if earlier is None:
            earlier = sum(record.get("seconds") or 0.0 for record in self.state["stages"])
        self.earlier_seconds, self.invocation_started = float(earlier), time.time()
        recorded = {record["name"]: record for record in self.state["stages"]}
        self.state["stages"] = [recorded.get(stage.name) or self._new_record(stage) for stage in stages]
        self.records = {record["name"]: record for record in self.state["stages"]}
        self.state["hourly_rate"] = hourly_rate

    def _load_state(self, restart: bool) -> dict[str, Any]:
        if self.state_file.is_file() and not restart:
            try:
                state = json.loads(self.state_file.read_text(encoding="utf-8"))
                if isinstance(state, dict) and isinstance(state.get("stages"), list):
                    return state
            except ValueError:
                pass
            raise UserError(f"{self.state_file} is not a speedrun state: delete it or pass --restart")
        return {"command": None, "started": time.time(), "ended": None, "stages": []}

    def _new_record(self, stage: Stage) -> dict[str, Any]:
        return {
            "name": stage.name,
            "command": stage.command,
            "argv": None,
            "config": None,
            "status": "pending",
            "started": None,
            "ended": None,
            "seconds": 0.0,
            "log": str(self.root / "logs" / f"{stage.name}.log"),
            "run_dir": None,
            "checkpoint": None,
            "result": None,
        }

    def save(self) -> None:
        self.state["seconds"] = self.earlier_seconds + time.time() - self.invocation_started
        atomic_write_text(self.state_file, json.dumps(self.state, indent=2) + "\n")

    def say(self, text: str) -> None:
        print(f"[speedrun {time.strftime('%H:%M:%S')}] {text}", flush=True)

    # ---- the run -------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.state["ended"] = None
        total = len(self.stages)
        for number, stage in enumerate(self.stages.values(), 1):
            record = self.records[stage.name]
            reason = self._disabled_because(stage)
            if reason:
                record["status"] = "disabled"
                self.say(f"{number}/{total} {stage.name}: skipped ({reason})")
                continue
            if record["status"] == "done":
                self.say(
                    f"{number}/{total} {stage.name}: done in an earlier run ({format_duration(record['seconds'])})"
                )
                continue
            for name in stage.after:
                self._wait_for(name)
            argv = self._argv(stage, record)
            self.say(f"{number}/{total} {stage.name}: nanochat-pl {' '.join(argv)}")
            self._start(stage, record, argv)
            if stage.background:
                self.say(f"{stage.name}: running in the background (log: {record['log']})")
                continue
            self._finish(stage, record, self._run_in_foreground(argv, Path(record["log"])))
        for name in list(self.background):
            self._wait_for(name)
        self.state["ended"] = time.time()
        self.save()
        self.say(f"all stages done in {format_duration(self.state['seconds'])}")

    def _disabled_because(self, stage: Stage) -> str | None:
        if not stage.enabled:
            return "disabled in the config"
        if stage.checkpoint is not None and self._source(stage.checkpoint) != stage.checkpoint:
            return f"the stage it evaluates, {stage.checkpoint}, is disabled"
        return None

    def _source(self, name: str | None) -> str | None:
        """The stage whose checkpoint stands for `name`'s: `name` itself, or for a disabled stage, its own source."""
        while name is not None and not self.stages[name].enabled:
            name = self.stages[name].init_from
        return name

    def _argv(self, stage: Stage, record: dict[str, Any]) -> list[str]:
        argv = stage.command.split()
        if stage.command == "fit":
            config = resolve_config(stage.config)
            record["config"] = str(config)
            argv += ["--config", str(config)]
            if self.trainer:
                preset = self.root / "trainer.yaml"
                atomic_write_text(preset, yaml.safe_dump({"trainer": self.trainer}, sort_keys=False))
                argv += ["--config", str(preset)]
            runs = home_dir() / "runs" / stage.name
            argv += ["--trainer.default_root_dir", str(runs)]
            source = self._source(stage.init_from)
            if source is not None:
                argv += ["--model.init_args.init_from", self._checkpoint_of(source)]
            resume = self._interrupted_run(runs, record)
            if resume is not None:
                argv += ["--ckpt_path", str(resume)]
        if stage.checkpoint is not None:
            argv += ["--checkpoint", self._checkpoint_of(stage.checkpoint)]
        for key, value in stage.args.items():
            text = value if isinstance(value, str) else json.dumps(value)
            argv += [f"--{key}", text]
        return argv

    def _checkpoint_of(self, name: str) -> str:
        checkpoint = self.records[name]["checkpoint"]
        if self.records[name]["status"] != "done" or checkpoint is None:
            raise UserError(f"stage {name} has no final checkpoint to hand on (status {self.records[name]['status']})")
        return checkpoint

    def _interrupted_run(self, runs: Path, record: dict[str, Any]) -> Path | None:
        """The last checkpoint of a run this stage started before and did not finish (None: start afresh). Runs
        that were there before the stage first started are not its own."""
        if record["started"] is None:
            record["runs_before"] = sorted(p.name for p in runs.glob("lightning_logs/*"))
            return None
        own = [
            path
            for path in runs.glob("lightning_logs/*/checkpoints/last.ckpt")
            if path.parent.parent.name not in record.get("runs_before", [])
        ]
        if not own:
            return None
        from nanochat_pl.checkpoint import check_checkpoint_file

        latest = max(own, key=lambda p: p.lstat().st_mtime).resolve()
        check_checkpoint_file(latest)
        return latest

    def _start(self, stage: Stage, record: dict[str, Any], argv: list[str]) -> None:
        record.update(argv=argv, status="running", ended=None, result=None)
        record["started"] = record["started"] or time.time()
        record["attempt_started"] = time.time()
        if self.state["command"] is None and Path(sys.argv[0]).name in ("nanochat-pl", "cli.py"):
            self.state["command"] = "nanochat-pl " + " ".join(sys.argv[1:])  # the command line, for the report
        self.save()
        log = Path(record["log"])
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} nanochat-pl {' '.join(argv)}\n")
        if stage.background:
            with log.open("ab") as f:
                self.background[stage.name] = subprocess.Popen(
                    nanochat_command(argv), stdout=f, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
                )

    def _run_in_foreground(self, argv: list[str], log: Path) -> tuple[int, list[str]]:
        """Run the command with its output on the terminal and in the log: (exit code, its last lines).

        On a terminal the child gets a terminal of its own (a pseudo-terminal of the same size): Lightning's rich
        progress bar draws only on one, and the stage's progress is what a user watches."""
        tail: collections.deque[str] = collections.deque(maxlen=50)
        partial = b""
        reader, writer = output_channel()
        with log.open("ab") as f:
            child = subprocess.Popen(nanochat_command(argv), stdout=writer, stderr=writer, env=child_env())
            os.close(writer)  # the child holds it now; the reader ends when the child's last copy closes
            saved = time.monotonic()
            try:
                while chunk := read_some(reader):
                    if time.monotonic() - saved > STATE_SAVE_SECONDS:  # a crash loses at most this much time
                        self.save()
                        saved = time.monotonic()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    f.write(chunk)
                    f.flush()  # the log is whole up to here, whatever happens to this process
                    *lines, partial = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
                    tail.extend(line.decode("utf-8", "replace") for line in lines if line.strip())
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it stop as it does
                child.wait()
                raise
            finally:
                os.close(reader)
            code = child.wait()
        if partial.strip():
            tail.append(partial.decode("utf-8", "replace"))
        return code, [strip_ansi(line) for line in tail]

    def _wait_for(self, name: str) -> None:
        child = self.background.pop(name, None)
        record = self.records[name]
        if child is None:
            if record["status"] not in ("done", "disabled"):
                raise UserError(f"stage {name} is {record['status']}: it was to run in the background")
            return
        self.say(f"waiting for {name} (background)")
        code = child.wait()
        lines = Path(record["log"]).read_text(encoding="utf-8", errors="replace").splitlines()[-50:]
        self._finish(self.stages[name], record, (code, [line for line in lines if line.strip()]))

    def _finish(self, stage: Stage, record: dict[str, Any], outcome: tuple[int, list[str]]) -> None:
        code, tail = outcome
        now = time.time()
        record["seconds"] += now - record.pop("attempt_started", now)
        record["ended"] = now
        if code != 0:
            record["status"] = "failed"
            self.save()
            self.stop_background()
            error = error_line(tail)
            raise UserError(
                f"stage {stage.name} failed after {format_duration(record['seconds'])} (exit code {code}): "
                f"{error.removeprefix('error: ')} (log: {record['log']})"
            )
        if stage.command == "fit":
            from nanochat_pl.checkpoint import latest_last_checkpoint

            checkpoint = latest_last_checkpoint(home_dir() / "runs" / stage.name)
            record["checkpoint"], record["run_dir"] = str(checkpoint), str(checkpoint.parent.parent)
        elif stage.checkpoint is not None:
            record["checkpoint"] = self.records[stage.checkpoint]["checkpoint"]
        record["result"] = last_json(tail)
        record["status"] = "done"
        self.save()
        kept = f" (checkpoint: {record['checkpoint']})" if stage.command == "fit" else ""
        self.say(f"{stage.name} done in {format_duration(record['seconds'])}{kept}")

    def stop_background(self) -> None:
        for name, child in self.background.items():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait()
            self.records[name]["status"] = "failed" if child.returncode else "done"
        self.background.clear()
        self.save()


def use_terminal() -> bool:
    return sys.stdout.isatty()


def output_channel() -> tuple[int, int]:
    """(read end, write end) for a child's output: a pseudo-terminal the size of ours when we are on a terminal,
    else a pipe."""
    if not use_terminal():
        return os.pipe()
    reader, writer = pty.openpty()
    size = shutil.get_terminal_size()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))
    return reader, writer


def read_some(reader: int) -> bytes:
    """The next output of a child; b"" at its end (a pseudo-terminal says EIO where a pipe says EOF)."""
    try:
        return os.read(reader, 65536)
    except OSError as error:
        if error.errno == errno.EIO:
            return b""
        raise


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(line: str) -> str:
    """A terminal line without its colour and cursor codes (rich writes them on a terminal)."""
    return ANSI_ESCAPE.sub("", line).strip()


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
