"""Where text comes from: FineWeb-Edu or ClimbMix shards, the offline corpus, or the user's own files.

A source is a list of files, read in groups of documents: a parquet file's real row groups, or fixed groups of
ROW_GROUP_SIZE documents of a .txt or .jsonl file. The group is the unit the pretraining loader shards across
ranks and workers and records in its state, so a resumed run continues exactly where it stopped. The last
file of a source is its validation split (as nanochat does with its datasets' last shard).
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat_pl.common import UserError, home_dir
from nanochat_pl.sources.offline import ROW_GROUP_SIZE, offline_shards

SUFFIXES = (".parquet", ".txt", ".jsonl")
SPLITS = ("train", "val")
# .txt files: documents are separated by one or more blank lines (two or more newlines)
BLANK_LINES = re.compile(r"\n[^\S\n]*\n\s*")


@dataclass(frozen=True)
class ShardedDataset:
    """A Hugging Face dataset of parquet shards shard_00000.parquet, shard_00001.parquet, ..., each a single
    `text` column in row groups of 1024 documents; the last shard is the validation split."""

    source: str  # the source spec that reads it (`data.init_args.source`, `tokenizer train --source`)
    name: str  # `nanochat-pl data download --dataset NAME`, and its directory under data/ in the data home
    title: str  # for messages
    repo: str
    num_shards: int

    @property
    def val_shard(self) -> int:
        return self.num_shards - 1

    @property
    def url(self) -> str:
        """Where the shards are: `{url}/shard_XXXXX.parquet`."""
        return f"https://huggingface.co/datasets/{self.repo}/resolve/main"

    def default_dir(self) -> Path:
        return home_dir() / "data" / self.name

    def download_command(self, num_shards: int | None = None) -> str:
        count = f" -n {num_shards}" if num_shards is not None else ""
        return f"nanochat-pl data download{count} --dataset {self.name}"


# nanochat dataset.py@dfc8833 (Oct 2025): FineWeb-Edu sample-100BT, shards 0..1822. dataset.py@92d63d4 (switched
# in 324e69c): NVIDIA Nemotron-ClimbMix decoded to text, shards 0..6542; ~150 of them (~7B tokens) for GPT-2 grade.
DATASETS = {
    dataset.name: dataset
    for dataset in (
        ShardedDataset("fineweb", "fineweb-edu", "FineWeb-Edu", "karpathy/fineweb-edu-100b-shuffle", 1823),
        ShardedDataset("climbmix", "climbmix", "ClimbMix", "karpathy/climbmix-400b-shuffle", 6543),
    )
}
SHARDED_SOURCES = {dataset.source: dataset for dataset in DATASETS.values()}


def dataset_named(name: str) -> ShardedDataset:
    """The dataset `nanochat-pl data download --dataset NAME` fetches."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; one of {', '.join(DATASETS)}")
    return DATASETS[name]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def resolve_shards(spec: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files of a source, in order (validation last).

    Args:
        spec: "fineweb" or "climbmix" (the downloaded FineWeb-Edu or ClimbMix shards), "offline" (the corpus
            built from the installed Python modules' docs, built once and cached), or a file, directory or glob
            of local .parquet, .txt and .jsonl files (sorted by path; a directory's files, not its
            subdirectories').
        data_dir: Where "fineweb", "climbmix" or "offline" lives; default: data/fineweb-edu, data/climbmix or
            data/offline in the data home.
    """
    if spec in SHARDED_SOURCES:
        dataset = SHARDED_SOURCES[spec]
        return _downloaded_shards(dataset, Path(data_dir) if data_dir is not None else dataset.default_dir())
    if spec == "offline":
        return offline_shards(data_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise UserError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)})")
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p)]
    files = sorted(p for p in files if p.suffix in SUFFIXES)
    if not files:
        named = ", ".join(repr(name) for name in (*SHARDED_SOURCES, "offline"))
        raise UserError(f"no {', '.join(SUFFIXES)} files at {spec!r} (nor is it {named})")
    return files


def _downloaded_shards(dataset: ShardedDataset, data_dir: Path) -> list[Path]:
    files = sorted(data_dir.glob("shard_*.parquet"))
    if not files:
        raise UserError(f"no {dataset.title} shards in {data_dir}: run `{dataset.download_command(8)}` first")
    if files[-1].name != shard_name(dataset.val_shard):
        raise UserError(
            f"the validation shard {shard_name(dataset.val_shard)} is missing from {data_dir}: "
            f"run `{dataset.download_command()}`"
        )
    return files


def split_shards(paths: list[Path], split: str) -> list[Path]:
    """The last file is the validation split, the others the training split.

    A single file is a training split with no validation (enough to train a tokenizer on); asking it for
    validation data is an error rather than a silent overlap with training."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    if len(paths) == 1 and split == "train":
        return list(paths)
    if len(paths) < 2:
        raise UserError(
            f"a validation split needs at least 2 files, the last one for validation; got {[str(p) for p in paths]}"
        )
    return list(paths[:-1]) if split == "train" else [paths[-1]]


def num_row_groups(path: str | os.PathLike) -> int:
    """How many groups of documents `path` holds (parquet: its row groups)."""
    path = Path(path)
    if path.suffix == ".parquet":
        with open_parquet(path) as parquet:
            return parquet.metadata.num_row_groups
    return math.ceil(len(_documents(*_file_key(path))) / ROW_GROUP_SIZE)


def read_row_group(path: str | os.PathLike, index: int) -> list[str]:
    """The documents of group `index` of `path` (null texts in a parquet file are skipped)."""
    path = Path(path)
    if path.suffix == ".parquet":
        with open_parquet(path) as parquet:
            _check_group_index(path, index, parquet.metadata.num_row_groups)
            try:
                column = parquet.read_row_group(index, columns=["text"]).column("text")
            except (OSError, pa.ArrowException) as e:
                raise UserError(f"{path}: corrupt parquet row group {index} ({_one_line(e)})") from e
        return [text for text in column.to_pylist() if text is not None]
    docs = _documents(*_file_key(path))
    _check_group_index(path, index, math.ceil(len(docs) / ROW_GROUP_SIZE))
    return docs[index * ROW_GROUP_SIZE : (index + 1) * ROW_GROUP_SIZE]


def _check_group_index(path: Path, index: int, count: int) -> None:
    if not 0 <= index < count:
        raise IndexError(f"{path} has {count} row groups, no group {index}")


def iter_texts(
    spec: str,
    split: str = "train",
    max_chars: int | None = None,
    doc_cap: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Iterator[str]:
    """The documents of a source's split in order, each cut to `doc_cap` characters, `max_chars` in all.

    The document that reaches `max_chars` is cut so the total is exactly `max_chars` (or all the text
    there is, if less). Used to train the tokenizer (nanochat tok_train.py: 2B chars, 10,000 per document).
    """
    for name, value in (("max_chars", max_chars), ("doc_cap", doc_cap)):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    remaining = max_chars
    for path in split_shards(resolve_shards(spec, data_dir), split):
        for index in range(num_row_groups(path)):
            for text in read_row_group(path, index):
                if doc_cap is not None:
                    text = text[:doc_cap]
                if remaining is not None:
                    text = text[:remaining]
                    remaining -= len(text)
                yield text
                if remaining == 0:
                    return


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a parquet file that has a string `text` column, else a UserError naming the file."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable parquet file ({_one_line(e)})") from e
    schema = parquet.schema_arrow
    index = schema.get_field_index("text")
    field_type = schema.field(index).type if index >= 0 else None
    if field_type is None or not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        parquet.close()
        found = f"holds {field_type}" if field_type is not None else f"is missing (columns: {schema.names})"
        raise UserError(f"{path}: its 'text' column {found}; expected strings, as in FineWeb-Edu")
    return parquet


def _file_key(path: Path) -> tuple[str, int, int]:
    """Path, size and modification time: a changed file is read again, an unchanged one is not."""
    try:
        stat = path.stat()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    return str(path), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)  # a loader reads a file group by group: parse it once, not once per group
def _documents(path: str, size: int, mtime_ns: int) -> list[str]:
    """The documents of a .txt file (separated by blank lines) or a .jsonl file (a "text" field per line)."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    if path.endswith(".txt"):
        return [doc.strip() for doc in BLANK_LINES.split(content) if doc.strip()]
    if not path.endswith(".jsonl"):
        raise UserError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)})")
    docs = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{line_number}: invalid JSON ({e})") from e
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{path}:{line_number}: expected an object with a string "text" field')
        docs.append(record["text"])
    return docs


def _one_line(error: Exception) -> str:
    """Arrow's error texts span lines; a UserError is one."""
    return " ".join(str(error).split())
