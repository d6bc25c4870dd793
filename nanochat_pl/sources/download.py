"""Downloads: a dataset's shards (FineWeb-Edu, ClimbMix) and single files (task data, word lists), retried,
checked, written atomically.

nanochat dataset.py@92d63d4: `-n N` fetches shards 0..N-1 plus the last shard (validation); 5 attempts with 2^k s
backoff; a temporary name, then rename. Here threads do the parallel work (the job waits on the network,
not the CPU), each finished file must be a readable parquet file with a `text` column, and a shard already
on disk and readable is skipped, so an interrupted download resumes where it stopped. A single file
(`download_file`) goes through the same attempt loop: retried, checked by its caller, renamed into place.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from nanochat_pl.common import UserError, atomic_path
from nanochat_pl.sources.shards import ShardedDataset, open_parquet, shard_name

BASE_URL_ENV = "NANOCHAT_PL_DATA_URL"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per blocking socket operation, not per file


class _Cancelled(Exception):
    """The user pressed Ctrl-C: the other threads stop too, leaving no partial file."""


def download_shards(
    dataset: ShardedDataset,
    num_shards: int,
    data_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    workers: int = 4,
    attempts: int = 5,
    backoff_s: float = 1.0,
) -> list[Path]:
    """Make `dataset`'s shards 0..num_shards-1 and its validation shard present in `data_dir`; return their paths.

    `num_shards` -1 means all the training shards. `data_dir` defaults to the dataset's directory in the data
    home. The base URL is `base_url`, else $NANOCHAT_PL_DATA_URL, else the dataset's on Hugging Face. A failed
    attempt is retried after backoff_s * 2^k seconds, except for HTTP errors that say the file is not there
    (4xx), which are reported at once.
    """
    num_train = dataset.val_shard if num_shards == -1 else num_shards
    if not 1 <= num_train <= dataset.val_shard:
        raise UserError(
            f"number of {dataset.title} shards must be 1..{dataset.val_shard} or -1 for all, got {num_shards}"
        )
    if workers < 1 or attempts < 1:
        raise UserError(f"workers and attempts must be at least 1, got {workers} and {attempts}")
    out_dir = Path(data_dir) if data_dir is not None else dataset.default_dir()
    base_url = (base_url or os.environ.get(BASE_URL_ENV) or dataset.url).rstrip("/")
    indices = [*range(num_train), dataset.val_shard]
    paths = [out_dir / shard_name(i) for i in indices]
    missing = [path for path in paths if not _is_valid_shard(path)]

    stop = threading.Event()
    progress = _ByteProgress(desc=f"{dataset.name}: {len(missing)} shards")
    with progress, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_download, f"{base_url}/{p.name}", p, attempts, backoff_s, stop, progress, _check_shard)
            for p in missing
        ]
        try:
            errors = [f.exception() for f in futures]
        except KeyboardInterrupt:
            stop.set()
            raise
    failures = [e for e in errors if e is not None]
    if len(failures) > 1 and isinstance(failures[0], UserError):
        raise UserError(f"{len(failures)} of {len(missing)} shards failed, the first: {failures[0]}")
    if failures:
        raise failures[0]
    print(
        f"{len(paths)} {dataset.title} shards in {out_dir} ({len(missing)} downloaded, "
        f"{len(paths) - len(missing)} already there)",
        file=sys.stderr,
    )
    return paths


def download_file(
    url: str,
    path: str | os.PathLike,
    check: Callable[[Path], None] | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
) -> Path:
    """Make `url` present at `path` (nothing to do if it is there already) and return the path.

    `check(tmp)` raises UserError when the downloaded bytes are not the file expected (an HTML error page,
    a truncated body); that attempt then counts as failed. After `attempts` failures, one-line UserError.
    """
    if attempts < 1:
        raise UserError(f"attempts must be at least 1, got {attempts}")
    path = Path(path)
    if path.exists():  # it got there by a rename, so it is complete
        return path
    with _ByteProgress(desc=path.name) as progress:
        _download(url, path, attempts, backoff_s, threading.Event(), progress, check)
    return path


def _check_shard(path: Path) -> None:
    open_parquet(path).close()  # UserError if the bytes are not a parquet file with a text column


def _is_valid_shard(path: Path) -> bool:
    """Present and readable; a corrupt leftover (e.g. from a copy) is deleted so it is fetched again."""
    if not path.exists():
        return False
    try:
        open_parquet(path).close()
    except UserError:
        path.unlink()
        return False
    return True


def _download(
    url: str,
    path: Path,
    attempts: int,
    backoff_s: float,
    stop: threading.Event,
    progress: _ByteProgress,
    check: Callable[[Path], None] | None,
) -> None:
    last_error: Exception | None = None
    for attempt in range(attempts):
        if stop.wait(backoff_s * 2 ** (attempt - 1) if attempt > 0 else 0):
            raise _Cancelled()
        try:
            with atomic_path(path) as tmp:
                _fetch(url, tmp, stop, progress)
                if check is not None:
                    check(tmp)
            return
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 and e.code not in (408, 429):  # not there: retrying will not help
                raise UserError(f"could not download {url}: HTTP {e.code} {e.reason}") from e
            last_error = e
        except (OSError, http.client.HTTPException, UserError) as e:
            last_error = e
    raise UserError(f"could not download {url} after {attempts} attempts; last error: {last_error}")


def _fetch(url: str, dest: Path, stop: threading.Event, progress: _ByteProgress) -> None:
    """Stream `url` into `dest`; OSError if the connection ends before Content-Length bytes arrived."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected is not None else None
        received = 0
        progress.expect(expected or 0)
        try:
            with open(dest, "wb") as file:
                while chunk := response.read(CHUNK_BYTES):
                    if stop.is_set():
                        raise _Cancelled()
                    file.write(chunk)
                    received += len(chunk)
                    progress.advance(len(chunk))
            if expected is not None and received != expected:
                raise OSError(f"connection closed after {received:,} of {expected:,} bytes")
        except BaseException:
            progress.undo(expected or 0, received)  # the retry counts these bytes again
            raise


class _ByteProgress:
    """One tqdm bar of bytes for all shards, fed by several threads; its total grows as sizes become known."""

    def __init__(self, desc: str) -> None:
        self._bar = tqdm(desc=desc, total=0, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)
        self._lock = threading.Lock()

    def __enter__(self) -> _ByteProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()

    def expect(self, num_bytes: int) -> None:
        with self._lock:
            self._bar.total += num_bytes
            self._bar.refresh()

    def advance(self, num_bytes: int) -> None:
        with self._lock:
            self._bar.update(num_bytes)

    def undo(self, expected: int, received: int) -> None:
        with self._lock:
            self._bar.total -= expected
            self._bar.update(-received)
