"""Data flows one way: the web app (`apps/`) imports the library, and the library imports the app only in the
`serve` command, when it runs. Each check runs in a fresh interpreter, where nothing else has imported either."""

import subprocess
import sys


def run_python(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_no_library_module_imports_the_app():
    run_python(
        """
import importlib, pkgutil, sys
import nanochat_pl

for module in pkgutil.walk_packages(nanochat_pl.__path__, "nanochat_pl."):
    importlib.import_module(module.name)
    assert not any(name == "apps" or name.startswith("apps.") for name in sys.modules), module.name
"""
    )


def test_the_app_imports_the_library_not_its_commands():
    run_python(
        """
import sys
import apps.web

assert not any(name.startswith("nanochat_pl.commands") for name in sys.modules), sorted(sys.modules)
"""
    )
