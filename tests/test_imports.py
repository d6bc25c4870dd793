"""Data flows one way: the web app (`nanochat_pl.apps`) imports the library, and the library imports the app only in
the `serve` command, when it runs. Each check runs in a fresh interpreter, where nothing else has imported either."""

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
    if not module.name.startswith("nanochat_pl.apps."):
        importlib.import_module(module.name)
    assert not any(name.startswith("nanochat_pl.apps.") for name in sys.modules), module.name
"""
    )


def test_the_app_imports_the_library_not_its_commands():
    run_python(
        """
import sys
import nanochat_pl.apps.web

assert not any(name.startswith("nanochat_pl.commands") for name in sys.modules), sorted(sys.modules)
"""
    )


# The floors, bottom to top: a module imports from its own floor or below, never above. Data flows sources →
# tasks → data modules → stages → checkpoints → engine → apps/evals; the code that carries it is layered so.
FLOORS = [
    ["nanochat_pl", "nanochat_pl.common", "nanochat_pl.limits", "nanochat_pl.precision", "nanochat_pl.sandbox"],
    ["nanochat_pl.model"],
    ["nanochat_pl.optim"],
    ["nanochat_pl.tokenizer", "nanochat_pl.nanochat_format", "nanochat_pl.checkpoint", "nanochat_pl.export"],
    ["nanochat_pl.sources"],
    ["nanochat_pl.tasks"],
    ["nanochat_pl.data"],
    ["nanochat_pl.engine", "nanochat_pl.reply"],
    ["nanochat_pl.evals"],
    ["nanochat_pl.stages"],
    ["nanochat_pl.report"],
    ["nanochat_pl.commands", "nanochat_pl.bench", "nanochat_pl.cli", "nanochat_pl.lightning_cli"],
    ["nanochat_pl.apps"],
]


def test_no_import_runs_back_up_a_floor():
    """Every module is imported in one fresh interpreter with `__import__` recording who imports whom (the
    imports a module makes when it loads; the `serve` command's import of the app runs only when it serves)."""
    run_python(
        f"""
import builtins, importlib, pkgutil, sys
FLOORS = {FLOORS!r}

def floor(name):
    best = max((prefix for row in FLOORS for prefix in row if name == prefix or name.startswith(prefix + ".")),
               key=len, default=None)
    assert best is not None, f"{{name}} is on no floor: add it to FLOORS"
    return next(i for i, row in enumerate(FLOORS) if best in row)

edges = set()
original = builtins.__import__

def recording(name, globals=None, locals=None, fromlist=(), level=0):
    module = original(name, globals, locals, fromlist, level)
    importer = (globals or {{}}).get("__name__", "")
    if level == 0 and importer.startswith("nanochat_pl") and name.startswith("nanochat_pl"):
        targets = [name] + [f"{{name}}.{{item}}" for item in fromlist or () if f"{{name}}.{{item}}" in sys.modules]
        edges.update((importer, target) for target in targets if target != "nanochat_pl._rustbpe")
    return module

builtins.__import__ = recording
import nanochat_pl
for info in pkgutil.walk_packages(nanochat_pl.__path__, "nanochat_pl."):
    if ".hf_remote." not in info.name:  # the copies shipped inside a Hugging Face export
        importlib.import_module(info.name)
up = sorted(f"{{a}} -> {{b}}" for a, b in edges if floor(a) < floor(b))
assert not up, "imports that run back up a floor:\\n" + "\\n".join(up)
assert len(edges) > 100 and any(a.startswith("nanochat_pl.apps.") for a, _ in edges), len(edges)
"""
    )
