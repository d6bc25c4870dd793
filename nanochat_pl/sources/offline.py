"""The offline corpus: real English text that every Python installation carries, for the CPU demo and tests.

The demo must run on a fresh machine with no network (DESIGN.md), so this builds a small pretraining corpus
from the documentation of the installed modules: one document per module (its docstring and those of its
public functions) and one per public class (its docstring and those of its public methods), read from the
source files with `ast` (importing thousands of modules would be slow and run their side effects), plus the
long description of every installed distribution (its README). The standard library comes first, then
site-packages, each walked in sorted order, so the corpus is the same for the same installation; documents
are deduplicated, shuffled with a fixed seed and written as parquet shards in the FineWeb-Edu format, the
last shard being the validation split. It is for the demo and tests, never the default for real runs.
"""

from __future__ import annotations

import ast
import importlib.metadata
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

from nanochat_pl.common import UserError, home_dir

# FineWeb-Edu shard format (nanochat dev/repackage_data_reference.py): one `text` column, row groups of
# 1024 documents, zstd level 3, no dictionary, no statistics
ROW_GROUP_SIZE = 1024
# ~10M characters (~3M tokens) is plenty for a CPU demo and builds in ~11 s on one core; the whole
# documentation of a large installation (torch, gradio, ...) is ~40M characters and takes over a minute
DEFAULT_MAX_CHARS = 10_000_000
DOCS_PER_SHARD = 4 * ROW_GROUP_SIZE
MIN_DOC_CHARS = 200  # a module whose whole documentation is one line is not a document
MAX_SOURCE_BYTES = 1_000_000  # larger .py files are generated tables, slow to parse and nearly doc-free
SKIPPED_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__"}
MANIFEST_NAME = "manifest.json"


def offline_dir() -> Path:
    return home_dir() / "data" / "offline"


def offline_shards(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The corpus's shards (validation last), building it first if no complete corpus is there."""
    out_dir = Path(data_dir) if data_dir is not None else offline_dir()
    manifest = read_manifest(out_dir) or build_offline_corpus(out_dir, DEFAULT_MAX_CHARS)
    return [out_dir / name for name in manifest["shards"]]


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a complete corpus in `out_dir`; None if there is none (absent or half-built)."""
    try:
        return json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def build_offline_corpus(out_dir: str | os.PathLike, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """Build the corpus into `out_dir` and return its manifest; print its size.

    The shards and the manifest are written to a temporary directory that is renamed onto `out_dir` only
    when complete, so a crash never leaves a corpus that looks usable. If another process finished first,
    its corpus is kept and returned. To rebuild, delete `out_dir`.
    """
    if max_chars <= 0:
        raise UserError(f"max_chars must be positive, got {max_chars}")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    docs = list(_documents(max_chars))
    if len(docs) < 2:  # one for training, one for validation
        raise UserError(f"found only {len(docs)} documents in the installed Python modules' docs")
    random.Random(0).shuffle(docs)  # mix stdlib and packages, as FineWeb-Edu's shards are shuffled
    # validation: 5% of the documents, at most one row group, at least one document
    num_val = min(ROW_GROUP_SIZE, max(1, len(docs) // 20))
    train, val = docs[:-num_val], docs[-num_val:]
    shards = [train[i : i + DOCS_PER_SHARD] for i in range(0, len(train), DOCS_PER_SHARD)] + [val]

    tmp_dir = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique per builder
    tmp_dir.mkdir(parents=True)
    try:
        names = [f"shard_{i:05d}.parquet" for i in range(len(shards))]
        for name, texts in zip(names, shards, strict=True):
            write_text_shard(tmp_dir / name, texts)
        chars = sum(len(doc) for doc in docs)
        manifest = {
            "documents": len(docs),
            "chars": chars,
            "max_chars": max_chars,
            "build_seconds": round(time.perf_counter() - start, 2),
            "python": sys.version.split()[0],
            "shards": names,
        }
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        existing = read_manifest(out_dir)
        if existing is not None:  # another process built it meanwhile
            return existing
        if out_dir.exists():  # leftovers without a manifest: never used, safe to replace
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp_dir, out_dir)
        except OSError:
            if (existing := read_manifest(out_dir)) is None:
                raise
            return existing
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    print(
        f"offline corpus: {len(docs):,} documents, {chars / 1e6:.1f}M characters in {len(names)} shards, "
        f"built in {manifest['build_seconds']:.1f} s -> {out_dir}",
        file=sys.stderr,
    )
    return manifest


def write_text_shard(path: Path, texts: list[str]) -> None:
    """Write documents as one parquet shard in the FineWeb-Edu format (see ROW_GROUP_SIZE)."""
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    pq.write_table(
        table,
        path,
        row_group_size=ROW_GROUP_SIZE,
        compression="zstd",
        compression_level=3,
        use_dictionary=False,
        write_statistics=False,
    )


def _documents(max_chars: int) -> Iterator[str]:
    """Unique documents, stdlib first, until `max_chars` characters have been yielded."""
    seen_docstrings: set[str] = set()
    seen_docs: set[str] = set()
    total = 0
    stdlib, site_packages = source_roots()
    sources = (
        *(_module_documents(root, seen_docstrings) for root in stdlib),
        _distribution_documents(),
        *(_module_documents(root, seen_docstrings) for root in site_packages),
    )
    for source in sources:
        for doc in source:
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


def _python_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every .py file under `root`, in sorted order.

    Only directories whose names are identifiers are entered (packages, not site-packages/ inside the
    stdlib directory, *.dist-info or lib-dynload); test directories are skipped.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.isidentifier() and d not in SKIPPED_DIRS)
        package = Path(dirpath).relative_to(root).parts
        for filename in sorted(filenames):
            stem, ext = os.path.splitext(filename)
            if ext != ".py" or not stem.isidentifier():
                continue
            name = ".".join(package if stem == "__init__" else (*package, stem))
            if name:
                yield name, Path(dirpath) / filename


def parsed_modules(root: Path, include: Callable[[str], bool] | None = None) -> Iterator[tuple[str, ast.Module]]:
    """(dotted module name, syntax tree) of every parsable module under `root` (those whose name `include`
    accepts, if given: parsing is most of the cost), in sorted order."""
    for name, path in _python_files(root):
        if include is not None and not include(name):
            continue
        try:
            if path.stat().st_size > MAX_SOURCE_BYTES:
                continue
            with warnings.catch_warnings():  # e.g. SyntaxWarning for "\d" in old code
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError, RecursionError):
            continue  # unreadable, Python 2, templates, null bytes: not our concern
        yield name, tree


def _module_documents(root: Path, seen: set[str]) -> Iterator[str]:
    for name, tree in parsed_modules(root):
        yield from _tree_documents(name, tree, seen)


def _tree_documents(name: str, tree: ast.Module, seen: set[str]) -> Iterator[str]:
    """A module's document (module and function docstrings), then one document per public class."""
    sections = [f"# {name}"]
    _add_section(sections, None, ast.get_docstring(tree), seen)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            _add_section(sections, f"## {name}.{signature(node)}", ast.get_docstring(node), seen)
    if len(sections) > 1:
        yield "\n\n".join(sections)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and _is_public(node.name):
            yield from _class_document(f"{name}.{node.name}", node, seen)


def _class_document(qualname: str, node: ast.ClassDef, seen: set[str]) -> Iterator[str]:
    bases = ", ".join(ast.unparse(base) for base in node.bases)
    sections = [f"# class {qualname}({bases})" if bases else f"# class {qualname}"]
    _add_section(sections, None, ast.get_docstring(node), seen)
    for child in node.body:
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(child.name):
            _add_section(sections, f"## {signature(child)}", ast.get_docstring(child), seen)
    if len(sections) > 1:
        yield "\n\n".join(sections)


def _add_section(sections: list[str], header: str | None, docstring: str | None, seen: set[str]) -> None:
    """Append `header` and `docstring` unless the docstring is empty or already in the corpus.

    Inherited, copied and vendored docstrings ("Return self==value.") would otherwise repeat many times.
    """
    if not docstring or not docstring.strip() or docstring in seen:
        return
    seen.add(docstring)
    sections.extend([docstring] if header is None else [header, docstring])


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
        body = (meta.get_payload() or meta["Description"] or "").strip()
        if body and body != "UNKNOWN":
            parts = [f"# {meta['Name']} {meta['Version']}", meta["Summary"], body]
            yield "\n\n".join(part for part in parts if part)
