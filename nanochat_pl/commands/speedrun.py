"""`nanochat-pl speedrun`: the whole pipeline in one command, stage by stage, resumable (nanochat's speedrun.sh).

Each stage runs a `nanochat-pl` command as a child process, its output on the terminal and in the data home's
`speedrun/logs/<stage>.log`. `speedrun/state.json` (`SpeedrunState`) keeps what was done: a rerun skips finished
stages, resumes an interrupted `fit` from its last checkpoint and hands each stage the checkpoint it names; a disabled
stage hands on its own source, and an eval of it is disabled too. At the end, `report` writes the report card.
"""

from __future__ import annotations

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

from nanochat_pl.checkpoint import STAGES, newest_checkpoint
from nanochat_pl.common import (
    UserError,
    atomic_write_text,
    config_path,
    error_line,
    format_duration,
    home_dir,
    last_json,
    nanochat_command,
)
from nanochat_pl.report import STATE_FILE, SpeedrunState, StageRecord, write_report

STATE_SAVE_SECONDS = 60  # while a stage runs, the state (its running time) is saved this often
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour and cursor codes (rich writes them on a terminal)


@dataclass
class Stage:
    """One stage of the pipeline: one `nanochat-pl` command.

    Args:
        name: What the stage is called in the progress lines, the state and the logs (unique).
        command: The command: "fit", "tokenizer train", "eval chat", "data download", ...
        config: `fit`: the stage's YAML (a path relative to the current directory or the repository).
        init_from: `fit`: the earlier stage whose final checkpoint this one starts from.
        checkpoint: The earlier stage whose final checkpoint the command takes as `--checkpoint` (evals).
        args: More options: {"vocab_size": 8192} -> `--vocab_size 8192`, {"model.init_args.depth": 4} for `fit`.
        enabled: False leaves the stage out.
        background: Start it and go on; a stage that names it in `after` waits for it.
        after: Background stages to wait for before this one starts.
        runs: `fit`: the folder of its runs (its trainer.default_root_dir); default runs/<name> in the data home, where
            a checkpoint's name (`base`) finds them.
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
    runs: str | None = None


def speedrun(
    stages: list[Stage], trainer: dict[str, Any] | None = None, hourly_rate: float | None = None, restart: bool = False
) -> None:
    """Run the whole pipeline of a speedrun config; run it again to resume after an interruption.

    Args:
        stages: The stages, in order (see configs/cpu/speedrun.yaml).
        trainer: Trainer settings every `fit` stage gets after its own config (a trainer preset).
        hourly_rate: What the hardware costs per hour, for the report's estimate of the run's cost.
        restart: Forget what an earlier speedrun in this data home did and run every stage again.
    """
    run_stages(stages, trainer, hourly_rate, restart, home_dir() / STATE_FILE)


def run_stages(
    stages: list[Stage], trainer: dict[str, Any] | None, hourly_rate: float | None, restart: bool, state_file: Path
) -> None:
    """Run the stages with what is done kept in `state_file` (a speedrun's, the ladder's), then the report card."""
    check_stages(stages)
    runner = Runner(stages, trainer, hourly_rate, restart, state_file)
    try:
        runner.run()
    except KeyboardInterrupt:
        runner.stop_background()
        runner.say("interrupted: run the same command again to resume")
        sys.exit(130)
    finally:
        runner.save()
    write_report(hourly_rate)


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
        if stage.command == "fit" and (stage.config is None or (stage.name not in STAGES and stage.runs is None)):
            raise UserError(f"stage {stage.name}: a fit stage needs its config, and its stage as name: {STAGES}")
        if stage.background and stage.command == "fit":
            raise UserError(f"stage {stage.name}: a fit stage cannot run in the background")
        seen[stage.name] = stage


class Runner:
    def __init__(
        self,
        stages: list[Stage],
        trainer: dict[str, Any] | None,
        hourly_rate: float | None,
        restart: bool,
        state_file: Path,
    ):
        self.stages = {stage.name: stage for stage in stages}
        self.trainer = trainer
        self.state_file = state_file
        self.root = self.state_file.parent
        self.background: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        resume = self.state_file.is_file() and not restart
        self.state = SpeedrunState.load(self.state_file) if resume else SpeedrunState([])
        recorded = {record.name: record for record in self.state.stages}
        for s in stages:  # a stage of the same name that ran another command or config: another speedrun's state
            was = recorded.get(s.name)
            if was and (
                was.command not in ("", s.command)
                or (was.config and was.config != str(config_path(s.config).resolve()))
            ):
                raise UserError(
                    f"{self.state_file} is another speedrun's ({self.state.command or was.config}): add --restart to "
                    "start this one over in this home, or set NANOCHAT_PL_HOME to another home"
                )
        self.state.stages = [
            recorded.get(s.name) or StageRecord(s.name, s.command, seconds=0.0, log=f"{self.root}/logs/{s.name}.log")
            for s in stages
        ]
        self.records = {record.name: record for record in self.state.stages}
        self.state.hourly_rate = hourly_rate
        # the time speedrun processes ran, added up: a run resumed a day later does not count the day between
        self.earlier_seconds, self.invocation_started = self.state.seconds, time.time()

    def save(self) -> None:
        self.state.seconds = self.earlier_seconds + time.time() - self.invocation_started
        self.state.save(self.state_file)

    def say(self, text: str) -> None:
        print(f"[{self.root.name} {time.strftime('%H:%M:%S')}] {text}", flush=True)  # speedrun, ladder

    def run(self) -> None:
        self.state.ended = None
        for number, stage in enumerate(self.stages.values(), 1):
            record, progress = self.records[stage.name], f"{number}/{len(self.stages)} {stage.name}"
            evaluated = self.stages.get(stage.checkpoint)  # None where it evaluates no stage
            if not stage.enabled or (evaluated is not None and not evaluated.enabled):
                record.status = "disabled"
                why = "disabled in the config"
                if stage.enabled:
                    why = f"the stage it evaluates, {evaluated.name}, is disabled"
                self.say(f"{progress}: skipped ({why})")
                continue
            if record.status == "done":
                self.say(f"{progress}: done in an earlier run ({format_duration(record.seconds)})")
                continue
            for name in stage.after:
                self._wait_for(name)
            argv = self._argv(stage, record)
            self.say(f"{progress}: nanochat-pl {' '.join(argv)}")
            self._start(stage, record, argv)
            if stage.background:
                self.say(f"{stage.name}: running in the background (log: {record.log})")
            else:
                self._finish(stage, self._run_in_foreground(argv, Path(record.log)))
        for name in list(self.background):
            self._wait_for(name)
        self.state.ended = time.time()
        self.save()
        self.say(f"all stages done in {format_duration(self.state.seconds)}")

    def _argv(self, stage: Stage, record: StageRecord) -> list[str]:
        argv = stage.command.split()
        if stage.command == "fit":
            record.config = str(config_path(stage.config).resolve())
            argv += ["--config", record.config]
            if self.trainer:
                preset = self.root / "trainer.yaml"
                atomic_write_text(preset, yaml.safe_dump({"trainer": self.trainer}, sort_keys=False))
                argv += ["--config", str(preset)]
            source = stage.init_from
            while source is not None and not self.stages[source].enabled:  # a disabled stage hands on its own source
                source = self.stages[source].init_from
            if source is not None:
                argv += ["--model.init_args.init_from", self.records[source].checkpoint]
            if stage.runs is not None:
                argv += ["--trainer.default_root_dir", stage.runs]
            if (resume := self._interrupted_run(self._runs(stage), record)) is not None:
                argv += ["--ckpt_path", str(resume)]
        if stage.checkpoint is not None:
            argv += ["--checkpoint", self.records[stage.checkpoint].checkpoint]
        for key, value in stage.args.items():
            argv += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return argv

    def _runs(self, stage: Stage) -> Path:
        return Path(stage.runs) if stage.runs is not None else home_dir() / "runs" / stage.name

    def _interrupted_run(self, runs: Path, record: StageRecord) -> Path | None:
        """The last checkpoint of this stage's own unfinished run, if any (not runs there before it first started)."""
        if record.started is None:
            record.runs_before = sorted(p.name for p in runs.glob("lightning_logs/*"))
            return None
        lasts = runs.glob("lightning_logs/*/checkpoints/last.ckpt")
        own = [path for path in lasts if path.parent.parent.name not in record.runs_before]
        return max(own, key=lambda p: p.lstat().st_mtime).resolve() if own else None  # `fit` checks it

    def _start(self, stage: Stage, record: StageRecord, argv: list[str]) -> None:
        record.argv, record.status, record.ended, record.result = argv, "running", None, None
        record.started = record.started or time.time()
        record.attempt_started = time.time()
        if self.state.command is None and Path(sys.argv[0]).name in ("nanochat-pl", "cli.py"):
            self.state.command = "nanochat-pl " + " ".join(sys.argv[1:])
        self.save()
        log = Path(record.log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} nanochat-pl {' '.join(argv)}\n")
        if stage.background:
            with log.open("ab") as f:
                self.background[stage.name] = subprocess.Popen(
                    nanochat_command(argv), stdout=f, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
                )

    def _run_in_foreground(self, argv: list[str], log: Path) -> int:
        """Run the command, its output on the terminal and in the log; its exit code. On a terminal the child gets a
        pseudo-terminal of the same size: Lightning's rich progress bar, what a user watches, draws only on one."""
        if sys.stdout.isatty():
            reader, writer = pty.openpty()
            size = shutil.get_terminal_size()
            fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))
        else:
            reader, writer = os.pipe()
        with log.open("ab") as f:
            child = subprocess.Popen(nanochat_command(argv), stdout=writer, stderr=writer, env=self.env)
            os.close(writer)  # the child holds it now; the reader ends when the child's last copy closes
            saved = time.monotonic()
            try:
                while True:
                    try:
                        chunk = os.read(reader, 65536)
                    except OSError as error:  # a pseudo-terminal says EIO at the child's end, where a pipe says EOF
                        if error.errno != errno.EIO:
                            raise
                        break
                    if not chunk:
                        break
                    if time.monotonic() - saved > STATE_SAVE_SECONDS:  # a crash loses at most this much time
                        self.save()
                        saved = time.monotonic()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    f.write(chunk)
                    f.flush()  # the log is whole up to here, whatever happens to this process
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it stop as it does
                child.wait()
                raise
            finally:
                os.close(reader)
            return child.wait()

    def _wait_for(self, name: str) -> None:
        child = self.background.pop(name, None)
        if child is None:  # done or disabled before this run: a failure has stopped the run
            return
        self.say(f"waiting for {name} (background)")
        self._finish(self.stages[name], child.wait())

    def _finish(self, stage: Stage, code: int) -> None:
        record, now = self.records[stage.name], time.time()
        # what this attempt wrote (after the log's last "====" line), without a terminal's colour and cursor codes
        said = Path(record.log).read_text(encoding="utf-8", errors="replace").rsplit("\n==== ", 1)[-1]
        tail = [line.strip() for line in ANSI_ESCAPE.sub("", said).replace("\r", "\n").splitlines() if line.strip()]
        record.seconds = (record.seconds or 0.0) + now - (record.attempt_started or now)
        record.ended, record.attempt_started = now, None
        if code != 0:
            record.status = "failed"
            self.save()
            self.stop_background()
            raise UserError(
                f"stage {stage.name} failed after {format_duration(record.seconds)} (exit code {code}): "
                f"{error_line(tail).removeprefix('error: ')} (log: {record.log})"
            )
        if stage.command == "fit":
            checkpoint = newest_checkpoint(self._runs(stage))
            record.checkpoint, record.run_dir = str(checkpoint), str(checkpoint.parent.parent)
        elif stage.checkpoint is not None:
            record.checkpoint = self.records[stage.checkpoint].checkpoint
        record.result, record.status = last_json(tail), "done"
        self.save()
        kept = f" (checkpoint: {record.checkpoint})" if stage.command == "fit" else ""
        self.say(f"{stage.name} done in {format_duration(record.seconds)}{kept}")

    def stop_background(self) -> None:
        for name, child in self.background.items():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait()
            self.records[name].status = "failed" if child.returncode else "done"
        self.background.clear()
