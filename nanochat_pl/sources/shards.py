"""Where text comes from: FineWeb-Edu or ClimbMix shards, the offline corpus, or the user's own files.

A source is a list of files, read in groups of documents: a parquet file's row groups, or groups of
ROW_GROUP_SIZE documents of a .txt or .jsonl file; the pretraining loader deals groups to its readers. The last
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
from nanochat_pl.sources.offline import ROW_GROUP_SIZE, offline_shards, shard_name

SUFFIXES = (".parquet", ".txt", ".jsonl")
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
    val_shard: int  # the last shard's number

    def default_dir(self) -> Path:
        return home_dir() / "data" / self.name


# nanochat dataset.py: FineWeb-Edu sample-100BT, then NVIDIA Nemotron-ClimbMix as text (~150 shards for GPT-2 grade)
FINEWEB = ShardedDataset("fineweb", "fineweb-edu", "FineWeb-Edu", "karpathy/fineweb-edu-100b-shuffle", 1822)
CLIMBMIX = ShardedDataset("climbmix", "climbmix", "ClimbMix", "karpathy/climbmix-400b-shuffle", 6542)
DATASETS = {dataset.name: dataset for dataset in (FINEWEB, CLIMBMIX)}
SHARDED_SOURCES = {dataset.source: dataset for dataset in DATASETS.values()}


def resolve_shards(spec: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files of source `spec`, in order (validation last): "fineweb" or "climbmix" (the downloaded shards, in
    `data_dir` or the data home), "offline" (the corpus of the installed modules' docs, built once), or a file,
    directory (its files, not its subdirectories') or glob of .parquet, .txt and .jsonl files, sorted by path."""
    if dataset := SHARDED_SOURCES.get(spec):
        data_dir = Path(data_dir) if data_dir is not None else dataset.default_dir()
        if not (files := sorted(data_dir.glob("shard_*.parquet"))):
            command = f"nanochat-pl data download -n 8 --dataset {dataset.name}"
            raise UserError(f"no {dataset.title} shards in {data_dir}: run `{command}` first")
        if files[-1].name != shard_name(dataset.val_shard):
            raise UserError(
                f"the validation shard {shard_name(dataset.val_shard)} is missing from {data_dir}: "
                f"run `nanochat-pl data download --dataset {dataset.name}`"
            )
        return files
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
    if not (files := sorted(p for p in files if p.suffix in SUFFIXES)):
        named = ", ".join(repr(name) for name in (*SHARDED_SOURCES, "offline"))
        raise UserError(f"no {', '.join(SUFFIXES)} files at {spec!r} (nor is it {named})")
    return files


def split_shards(paths: list[Path], split: str) -> list[Path]:
    """The last file is the validation split, the others the training split; a single file is a training split
    with no validation (enough to train a tokenizer on), not one that overlaps it."""
    if split == "train":
        return paths[:-1] or paths
    if len(paths) < 2:
        raise UserError(f"a validation split needs at least 2 files (the last is it); got {[str(p) for p in paths]}")
    return paths[-1:]


def num_row_groups(path: Path) -> int:
    """How many groups of documents `path` holds (parquet: its row groups)."""
    if path.suffix == ".parquet":
        with open_parquet(path) as parquet:
            return parquet.metadata.num_row_groups
    return math.ceil(len(_text_documents(path)) / ROW_GROUP_SIZE)


def read_row_group(path: Path, index: int) -> list[str]:
    """The documents of group `index` of `path` (null texts in a parquet file are skipped)."""
    if path.suffix == ".parquet":
        with open_parquet(path) as parquet:
            try:
                column = parquet.read_row_group(index, columns=["text"]).column("text")
            except (OSError, pa.ArrowException) as e:
                raise UserError(f"{path}: corrupt parquet row group {index} ({e})") from e
        return [text for text in column.to_pylist() if text is not None]
    return _text_documents(path)[index * ROW_GROUP_SIZE : (index + 1) * ROW_GROUP_SIZE]


def iter_texts(
    spec: str, split: str = "train", max_chars: int | None = None, doc_cap: int | None = None
) -> Iterator[str]:
    """The documents of a source's split in order, each cut to `doc_cap` characters, exactly `max_chars` in all (or
    all there is): the tokenizer's training text (nanochat tok_train.py: 2B chars, 10,000 per document)."""
    for name, value in (("max_chars", max_chars), ("doc_cap", doc_cap)):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    remaining = max_chars
    for path in split_shards(resolve_shards(spec), split):
        for index in range(num_row_groups(path)):
            for text in read_row_group(path, index):
                text = text[:doc_cap][:remaining]  # a None bound cuts nothing
                if remaining is not None:
                    remaining -= len(text)
                yield text
                if remaining == 0:
                    return


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a parquet file that has a string `text` column, else a UserError naming the file."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from e
    schema = parquet.schema_arrow
    field_type = schema.field("text").type if "text" in schema.names else None
    if field_type is None or not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        parquet.close()
        found = f"holds {field_type}" if field_type is not None else f"is missing (columns: {schema.names})"
        raise UserError(f"{path}: its 'text' column {found}; expected strings, as in FineWeb-Edu")
    return parquet


def _text_documents(path: Path) -> list[str]:
    stat = path.stat()  # cached by size and modification time: a changed file is read again
    return _documents(str(path), stat.st_size, stat.st_mtime_ns)


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
