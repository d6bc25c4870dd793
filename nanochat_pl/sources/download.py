"""Downloads of a dataset's shards (FineWeb-Edu, ClimbMix) and of single files (task data, word lists).

As nanochat dataset.py: `-n N` fetches shards 0..N-1 plus the last (validation); 5 attempts with 2^k s backoff; a
temporary name, then rename. Threads download in parallel; a shard must be a readable parquet file, and one
already on disk and readable is skipped, so a download resumes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from nanochat_pl.common import UserError, atomic_path
from nanochat_pl.sources.shards import ShardedDataset, open_parquet, shard_name

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per blocking socket operation, not per file


def download_shards(
    dataset: ShardedDataset, num_shards: int, data_dir=None, base_url=None, workers=4, attempts=5, backoff_s=1.0
) -> list[Path]:
    """Make `dataset`'s shards 0..num_shards-1 (-1: all) and its validation shard present in `data_dir` (default:
    the data home's) from `base_url`, else $NANOCHAT_PL_DATA_URL, else Hugging Face; return their paths."""
    num_train = dataset.val_shard if num_shards == -1 else num_shards
    if not 1 <= num_train <= dataset.val_shard:
        raise UserError(f"number of {dataset.title} shards must be 1..{dataset.val_shard} or -1, got {num_shards}")
    out_dir = Path(data_dir) if data_dir is not None else dataset.default_dir()
    hugging_face = f"https://huggingface.co/datasets/{dataset.repo}/resolve/main"
    base_url = (base_url or os.environ.get("NANOCHAT_PL_DATA_URL") or hugging_face).rstrip("/")
    paths = [out_dir / shard_name(i) for i in (*range(num_train), dataset.val_shard)]
    missing = []
    for path in paths:
        try:
            _check_shard(path)
        except UserError:  # absent, or a corrupt leftover (e.g. from a copy): fetched again
            path.unlink(missing_ok=True)
            missing.append(path)

    stop = threading.Event()
    with _progress(f"{dataset.name}: {len(missing)} shards") as bar, ThreadPoolExecutor(workers) as pool:
        futures = [
            pool.submit(download_file, f"{base_url}/{p.name}", p, _check_shard, attempts, backoff_s, bar, stop)
            for p in missing
        ]
        try:
            failures = [e for e in (f.exception() for f in futures) if e is not None]
        except KeyboardInterrupt:
            stop.set()
            raise
    if failures:
        raise UserError(f"{len(failures)} of {len(missing)} shards failed, the first: {failures[0]}") from failures[0]
    done = f"{len(missing)} downloaded, {len(paths) - len(missing)} already there"
    print(f"{len(paths)} {dataset.title} shards in {out_dir} ({done})", file=sys.stderr)
    return paths


def _progress(desc: str) -> tqdm:
    """One bar of bytes for all the files of a download; its total grows as their sizes become known."""
    return tqdm(desc=desc, total=0, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def _check_shard(path: Path) -> None:
    open_parquet(path).close()  # UserError if the bytes are not a parquet file with a text column


def download_file(url: str, path, check=None, attempts=5, backoff_s=1.0, bar=None, stop=None) -> Path:
    """Make `url` present at `path` (if it is not already) and return the path. `check(tmp)` raises UserError when
    the bytes are not the file expected (an HTML error page): that attempt failed. A failed attempt is retried after
    backoff_s * 2^k s, unless HTTP says the file is not there (4xx). `bar` and `stop` (Ctrl-C) are a multi-file
    download's."""
    path = Path(path)
    if path.exists():  # it got there by a rename, so it is complete
        return path
    stop = stop or threading.Event()
    last_error: Exception | None = None
    with _progress(path.name) if bar is None else contextlib.nullcontext(bar) as bar:
        for attempt in range(attempts):
            if stop.wait(backoff_s * 2 ** (attempt - 1) if attempt > 0 else 0):
                raise CancelledError()  # every thread stops, leaving no partial file
            try:
                with atomic_path(path) as tmp:
                    _fetch(url, tmp, stop, bar)
                    if check is not None:
                        check(tmp)
                return path
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500 and e.code not in (408, 429):  # not there: retrying will not help
                    raise UserError(f"could not download {url}: HTTP {e.code} {e.reason}") from e
                last_error = e
            except (OSError, http.client.HTTPException, UserError) as e:
                last_error = e
    raise UserError(f"could not download {url} after {attempts} attempts; last error: {last_error}")


def _fetch(url: str, dest: Path, stop: threading.Event, bar: tqdm) -> None:
    """Stream `url` into `dest`; OSError if the connection ends before Content-Length bytes arrived."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as file:
        expected = int(response.headers.get("Content-Length") or 0)
        received = 0
        with bar.get_lock():  # the threads share the bar
            bar.total += expected
            bar.refresh()
        try:
            while chunk := response.read(CHUNK_BYTES):
                if stop.is_set():
                    raise CancelledError()
                file.write(chunk)
                received += len(chunk)
                with bar.get_lock():
                    bar.update(len(chunk))
            if expected and received != expected:
                raise OSError(f"connection closed after {received:,} of {expected:,} bytes")
        except BaseException:
            with bar.get_lock():  # a retry counts these bytes again
                bar.total -= expected
                bar.update(-received)
            raise
