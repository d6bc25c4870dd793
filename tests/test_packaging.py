"""Installed from its wheel, without the clone: the configs come with it (by name) and the apps live under nanochat_pl.

The wheel goes into a fresh venv outside the clone that sees the system's packages (torch and the rest) but takes
nanochat_pl from the wheel: the clone's editable install is on the system's path too, so the test checks which copy
the venv's Python imports, from a directory outside the clone."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from nanochat_pl.cli import main
from nanochat_pl.common import UserError, config_path

REPO = Path(__file__).resolve().parent.parent


def run(command: list, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_wheel_installs_its_configs_and_no_top_level_apps(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-w", str(tmp_path / "wheel")], REPO)
    (wheel,) = (tmp_path / "wheel").glob("nanochat_pl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"nanochat_pl"}  # no apps/, configs/
    assert "nanochat_pl/configs/cpu/base_tiny.yaml" in names and "nanochat_pl/apps/web.py" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
    run([venv / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path)
    where = "import importlib.util, nanochat_pl; print(nanochat_pl.__file__, importlib.util.find_spec('apps'))"
    imported, apps = run([venv / "bin/python", "-c", where], tmp_path).split()
    assert Path(imported).is_relative_to(venv) and apps == "None"

    command = [venv / "bin/nanochat-pl", "fit", "--config", "cpu/base_tiny", "--print_config"]
    printed = yaml.safe_load(run(command, tmp_path))["model"]
    given = yaml.safe_load((REPO / "configs/cpu/base_tiny.yaml").read_text())["model"]
    assert printed["class_path"] == given["class_path"] == "nanochat_pl.stages.base.BaseTraining"
    assert {key: printed["init_args"][key] for key in given["init_args"]} == given["init_args"]


def test_a_config_is_a_path_or_a_packaged_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the clone: `configs/...` is no path here
    packaged = REPO / "nanochat_pl/configs"
    for name in ("base_d20", "base_d20.yaml", "configs/base_d20.yaml"):
        assert config_path(name) == packaged / "base_d20.yaml"
    assert config_path("cpu/base_tiny") == packaged / "cpu/base_tiny.yaml"
    (tmp_path / "base_d20.yaml").write_text("seed_everything: 1\n")
    assert config_path("base_d20.yaml") == Path("base_d20.yaml")  # a file wins over a name
    with pytest.raises(UserError, match=r"^no config at base_d30; the packaged configs: base_d12, base_d20, cpu/"):
        config_path("base_d30")
    with pytest.raises(SystemExit):  # a name reaches a plain command's --config too
        main(["speedrun", "--config", "cpu/speedrun", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["stages"][0]["command"] == "tokenizer train"
