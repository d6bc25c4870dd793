"""The offline corpus: real English text that every Python installation carries, for the CPU demo and tests.

Built from the installed modules' docs, read with `ast` (importing them would be slow and run side effects): a
document per module (its and its public functions' docstrings), per public class (its and its public methods'),
and per installed distribution (its README); stdlib first, then site-packages, in sorted order; deduplicated,
shuffled with a fixed seed, written as FineWeb-Edu-format shards, the last one for validation.
"""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import json
import os
import random
import shutil
import sys
import sysconfig
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat_pl.common import home_dir

# FineWeb-Edu's shard format (nanochat dev/repackage_data_reference.py): one `text` column, written so
ROW_GROUP_SIZE = 1024
PARQUET_FORMAT = dict(compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False)
DEFAULT_MAX_CHARS = 10_000_000  # ~3M tokens: plenty for a CPU demo
DOCS_PER_SHARD = 4 * ROW_GROUP_SIZE
MIN_DOC_CHARS = 200  # a module whose whole documentation is one line is not a document
MAX_SOURCE_BYTES = 1_000_000  # larger .py files are generated tables, slow to parse and nearly doc-free
SKIPPED_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__"}
MANIFEST_NAME = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def offline_shards(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The corpus's shards (validation last), building it first if no complete corpus is there."""
    out_dir = Path(data_dir) if data_dir is not None else home_dir() / "data" / "offline"
    manifest = read_manifest(out_dir) or build_offline_corpus(out_dir, DEFAULT_MAX_CHARS)
    return [out_dir / name for name in manifest["shards"]]


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a complete corpus in `out_dir`, else None."""
    try:
        return json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def build_offline_corpus(out_dir: str | os.PathLike, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """Build the corpus into `out_dir` and return its manifest. It is written to a temporary directory renamed onto
    `out_dir` when complete, so a crash leaves no corpus that looks usable; if another process finished first, its
    corpus is kept and returned."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    docs = list(_documents(max_chars))
    assert len(docs) >= 2, "one document for training, one for validation"
    random.Random(0).shuffle(docs)  # mix stdlib and packages, as FineWeb-Edu's shards are shuffled
    # validation: 5% of the documents, at most one row group, at least one document
    num_val = min(ROW_GROUP_SIZE, max(1, len(docs) // 20))
    train, val = docs[:-num_val], docs[-num_val:]
    shards = [train[i : i + DOCS_PER_SHARD] for i in range(0, len(train), DOCS_PER_SHARD)] + [val]
    names = [shard_name(i) for i in range(len(shards))]
    manifest = {"documents": len(docs), "chars": sum(len(doc) for doc in docs), "shards": names}

    tmp_dir = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique per builder
    tmp_dir.mkdir(parents=True)
    try:
        for name, texts in zip(names, shards, strict=True):
            table = pa.table({"text": pa.array(texts, type=pa.string())})
            pq.write_table(table, tmp_dir / name, row_group_size=ROW_GROUP_SIZE, **PARQUET_FORMAT)
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        if (existing := read_manifest(out_dir)) is not None:  # another process built it meanwhile
            return existing
        shutil.rmtree(out_dir, ignore_errors=True)  # leftovers without a manifest: never used, safe to replace
        try:
            os.replace(tmp_dir, out_dir)
        except OSError:
            if (existing := read_manifest(out_dir)) is None:
                raise
            return existing
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    print(
        f"offline corpus: {len(docs):,} documents, {manifest['chars'] / 1e6:.1f}M characters in {len(names)} "
        f"shards, built in {time.perf_counter() - start:.1f} s -> {out_dir}",
        file=sys.stderr,
    )
    return manifest


def _documents(max_chars: int) -> Iterator[str]:
    """Unique documents, stdlib first, until `max_chars` characters have been yielded."""
    seen_docstrings, seen_docs, total = set(), set(), 0
    stdlib, site_packages = source_roots()

    def modules(roots: list[Path]) -> Iterator[str]:
        for root in roots:
            for name, tree in parsed_modules(root):
                yield from _tree_documents(f"# {name}", f"{name}.", tree, seen_docstrings)

    for doc in itertools.chain(modules(stdlib), _distribution_documents(), modules(site_packages)):
        if len(doc) < MIN_DOC_CHARS or doc in seen_docs:
            continue
        seen_docs.add(doc)
        yield doc
        total += len(doc)
        if total >= max_chars:
            return


def source_roots() -> tuple[list[Path], list[Path]]:
    """The standard library's directories and site-packages' directories, each deduplicated."""
    paths = sysconfig.get_paths()
    stdlib = list(dict.fromkeys(Path(paths[key]) for key in ("stdlib", "platstdlib")))
    site = [p for p in dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib")) if p not in stdlib]
    return [p for p in stdlib if p.is_dir()], [p for p in site if p.is_dir()]


def parsed_modules(root: Path, include: Callable[[str], bool] | None = None) -> Iterator[tuple[str, ast.Module]]:
    """(dotted module name, syntax tree) of every parsable module under `root` whose name `include` accepts (parsing
    is most of the cost), in sorted order. Only packages are entered (not site-packages/ inside the stdlib
    directory, *.dist-info or lib-dynload), and no test directory."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.isidentifier() and d not in SKIPPED_DIRS)
        package = Path(dirpath).relative_to(root).parts
        for filename in sorted(filenames):
            stem, ext = os.path.splitext(filename)
            name = ".".join(package if stem == "__init__" else (*package, stem))
            if ext != ".py" or not stem.isidentifier() or not name or (include is not None and not include(name)):
                continue
            path = Path(dirpath) / filename
            try:
                if path.stat().st_size > MAX_SOURCE_BYTES:
                    continue
                with warnings.catch_warnings():  # e.g. SyntaxWarning for "\d" in old code
                    warnings.simplefilter("ignore")
                    tree = ast.parse(path.read_bytes())
            except (OSError, SyntaxError, ValueError, RecursionError):
                continue  # unreadable, Python 2, templates, null bytes: not our concern
            yield name, tree


def _tree_documents(title: str, prefix: str, node: ast.Module | ast.ClassDef, seen: set[str]) -> Iterator[str]:
    """A module's or class's document (its docstring and its public functions'), then for a module one per public
    class. A docstring already in the corpus is left out: inherited and vendored ones would repeat many times."""
    sections = [title]
    for child in [node, *node.body]:
        is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(child.name)
        docstring = ast.get_docstring(child) if child is node or is_function else None
        if docstring and docstring.strip() and docstring not in seen:
            seen.add(docstring)
            sections += [docstring] if child is node else [f"## {prefix}{signature(child)}", docstring]
    if len(sections) > 1:
        yield "\n\n".join(sections)
    for child in node.body if isinstance(node, ast.Module) else ():
        if isinstance(child, ast.ClassDef) and _is_public(child.name):
            bases = f"({', '.join(ast.unparse(base) for base in child.bases)})" if child.bases else ""
            yield from _tree_documents(f"# class {prefix}{child.name}{bases}", "", child, seen)


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    return f"{node.name}({ast.unparse(node.args)})"


def _is_public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _distribution_documents() -> Iterator[str]:
    """Each installed distribution's long description (its README), sorted by name."""
    dists = sorted(
        importlib.metadata.distributions(),
        key=lambda d: ((d.metadata["Name"] or "").lower(), d.metadata["Version"] or ""),
    )
    for dist in dists:
        meta = dist.metadata
        if (body := (meta.get_payload() or meta["Description"] or "").strip()) and body != "UNKNOWN":
            parts = [f"# {meta['Name']} {meta['Version']}", meta["Summary"], body]
            yield "\n\n".join(part for part in parts if part)
