"""`nanochat-pl runs`: every checkpoint in the home, newest first, each with the name that takes it anywhere a
checkpoint is asked for (`sft`, `sft@step=300`); `--tree` draws the lineage from the parent each one records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nanochat_pl.checkpoint import STAGES, peek_checkpoint, stage_checkpoints
from nanochat_pl.common import CHECKPOINT_KEY, home_dir
from nanochat_pl.report import MISSING, checkpoint_evals, number

COLUMNS = ("name", "run", "tokens", "val bpb", "CORE", "ChatCORE", "parent", "size", "path")


def runs(tree: bool = False) -> None:
    """List the checkpoints of the home's runs (runs/base, mid, sft, rl), newest first: stage and step, run, tokens
    trained, validation bits per byte, CORE / ChatCORE where `nanochat-pl eval` scored it, parent, size, path.

    Args:
        tree: Draw the lineage instead: tokenizer -> base -> mid -> sft -> rl, a run per line (its newest checkpoint).
    """
    home = home_dir()
    found = [read_row(path, home) for stage in STAGES for path in stage_checkpoints(home / "runs" / stage)]
    found.sort(key=lambda row: row["mtime"], reverse=True)
    if not found:
        print(f"no checkpoints under {home / 'runs'} yet: `nanochat-pl fit --config ...` writes them")
    elif tree:
        print("\n".join(draw_tree(found)))
    else:
        table = [COLUMNS, *([row[column] for column in COLUMNS] for row in found)]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for line in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def read_row(path: Path, home: Path) -> dict[str, Any]:
    """A checkpoint's row: its metadata, read memory-mapped (the weights stay on disk)."""
    loaded = peek_checkpoint(path)
    meta, step = loaded.get(CHECKPOINT_KEY, {}), loaded.get("global_step", 0)
    evals = checkpoint_evals(path, [])
    per_step, parent, val_step = meta.get("total_batch_tokens"), meta.get("parent"), meta.get("val_bpb_step")
    return {
        "name": f"{meta.get('stage', '?')}@step={step}",
        "run": path.parent.parent.name,
        "tokens": MISSING if per_step is None else f"{step * per_step:,}",
        "val bpb": number(meta.get("val_bpb")) + ("" if val_step in (None, step) else f" (step {val_step})"),
        "CORE": number(evals.get("core", {}).get("core")),
        "ChatCORE": number(evals.get("chat", {}).get("chatcore")),
        "parent": MISSING if parent is None else f"{parent['stage']}@step={parent['step']}",
        "size": f"{path.stat().st_size / 2**20:,.1f} MiB",
        "path": str(path.relative_to(home)),
        "mtime": path.stat().st_mtime,
        "run_dir": str(path.parent.parent),
        "file": str(path.resolve()),
        "parent_file": None if parent is None else parent["path"],
        "tokenizer": meta.get("tokenizer_dir") or "(carried in the checkpoint)",
    }


def draw_tree(rows: list[dict[str, Any]]) -> list[str]:
    """A run per node (its newest checkpoint), under the run its first checkpoint started from; base runs under their
    tokenizer; a run whose parent is not in the home (a path elsewhere, a nanochat checkpoint) at the top."""
    heads = {row["run_dir"]: row for row in reversed(rows)}  # run folder -> its newest row, oldest run first
    run_of = {row["file"]: row["run_dir"] for row in rows}
    children: dict[str, list[tuple[str, str]]] = {}  # a run folder or a root's text -> (run folder, origin)
    for key, head in heads.items():
        parent = head["parent_file"]
        if parent in run_of:
            below, origin = run_of[parent], head["parent"].split("@")[1]
        else:
            below, origin = f"tokenizer {head['tokenizer']}" if parent is None else f"{parent} (outside the home)", ""
        children.setdefault(below, []).append((key, origin))

    def lines(key: str, origin: str, indent: str) -> list[str]:
        head = heads[key]
        text = f"{head['name']} ({head['run']}{', from ' + origin if origin else ''}): val bpb {head['val bpb']}"
        text += "".join(f", {k} {head[k]}" for k in ("CORE", "ChatCORE") if head[k] != MISSING)
        out = [f"{indent}└── {text}  {head['path']}"]
        for child, child_origin in children.get(key, []):
            out += lines(child, child_origin, indent + "    ")
        return out

    drawn = []
    for root in [key for key in children if key not in heads]:
        drawn.append(root)
        for key, origin in children[root]:
            drawn += lines(key, origin, "")
    return drawn
