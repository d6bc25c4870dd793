"""Small things every part of the pipeline shares: where files live, safe writes, user-facing errors."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# the entry every checkpoint of ours adds beside Lightning's: the stage, the model config, the tokenizer
CHECKPOINT_KEY = "nanochat_pl"
REPO = Path(__file__).resolve().parent.parent  # a clone's root (configs/, tests/); an installed package's site-packages


class UserError(Exception):
    """Bad input from the user (a config, a file, a flag). The CLI prints it as one line and exits 1."""


def causes(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__


def home_dir() -> Path:
    """Everything lands here: data/, tokenizer/, runs/<stage>/, eval/, report/ (see DESIGN.md)."""
    return Path(os.environ.get("NANOCHAT_PL_HOME", Path.home() / ".cache" / "nanochat-pl")).expanduser()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds, durably: a crash or a
    power loss leaves the previous file, never a half-written one. The data is fsynced before the rename, the rename
    by an fsync of the directory (fsync(2): a file's fsync "does not necessarily ensure that the entry in the directory
    containing the file has also reached disk"). A temporary file a killed process left goes at the next save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give them the usual permissions
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk (Linux fsyncs either through a read-only fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def format_duration(seconds: float) -> str:
    """A span of time as people read it: "4m 09s", "1h 02m 03s"."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def nanochat_command(argv: list[str]) -> list[str]:
    """`nanochat-pl ARGV` as a child process runs it: this Python, this installation."""
    return [sys.executable, "-m", "nanochat_pl.cli", *argv]


def last_json(lines: list[str]) -> dict[str, Any] | None:
    """The JSON object a command printed as its last line (evals and benchmarks do), if it did."""
    try:
        return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None  # "{": an object
    except ValueError:
        return None


def error_line(lines: list[str]) -> str:
    """What a failed command said last: its last `error: ...` line, else its last non-blank line, else ""."""
    said = [line for line in lines if line.strip()]
    return next((line for line in reversed(said) if line.startswith("error:")), said[-1] if said else "")


def config_path(name: str) -> Path:
    """A config file as given, else a packaged one (nanochat_pl/configs, in the wheel too) by name: `base_d20`,
    `cpu/base_tiny`, or a clone's path `configs/cpu/base_tiny.yaml`, as the speedrun configs name theirs."""
    configs = Path(__file__).resolve().parent / "configs"
    packaged = configs / name.removeprefix("configs/")
    for candidate in (Path(name).expanduser(), packaged, Path(f"{packaged}.yaml")):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(configs).with_suffix("")) for p in configs.rglob("*.yaml"))
    raise UserError(f"no config at {name}; the packaged configs: {', '.join(names)}")
