"""`nanochat-pl bench variants`: `bench train` of one config in several variants, side by side.

Each variant is a set of `bench train` arguments (`attention`, `shard_optimizer`, `overrides`) and runs in a
process of its own: one that runs out of memory or fails takes no other with it, and each starts with the
device's memory empty, so its peak memory is its own. The default variants are the GPU switches of the README
("On GPUs"), each on its own against the code before them and all together:

- baseline: the band-masked SDPA attention, in the config's precision (bf16-mixed on GPUs);
- window attention (flex_attention / flash-attn's window on CUDA);
- NanochatBf16 (bf16 embeddings and residual stream over fp32 master weights);
- fp8 (tensorwise, the large linears);
- all three.

Printed: a line per variant as it finishes, then a table (tokens/s, speed against the first variant, MFU, peak
memory, step time) and the whole result as one JSON line, last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from nanochat_pl.common import UserError, error_line, format_duration, last_json, nanochat_command

NANOCHAT_BF16 = [
    "--trainer.precision=null",
    "--trainer.plugins=[{class_path: nanochat_pl.stages.precision.NanochatBf16}]",
]
FP8 = ["--model.init_args.fp8=true"]
DEFAULT_VARIANTS: dict[str, dict] = {
    "baseline (band-masked SDPA)": {"attention": "sdpa"},
    "window attention": {"attention": "auto"},
    "NanochatBf16": {"attention": "sdpa", "overrides": NANOCHAT_BF16},
    "fp8": {"attention": "sdpa", "overrides": FP8},
    "all three": {"attention": "auto", "overrides": NANOCHAT_BF16 + FP8},
}
VARIANT_KEYS = ("attention", "shard_optimizer", "overrides")


def bench_variants(
    yaml: str = "configs/base_d12.yaml",
    variants: dict[str, dict] | None = None,
    overrides: list[str] | None = None,
    steps: int = 20,
    warmup: int = 5,
    timeout: float = 1800,
) -> dict:
    """Measure training throughput of a config in several variants, each in its own process.

    Args:
        yaml: The config, as given to `nanochat-pl fit --config`.
        variants: Name -> `bench train` arguments: `attention`, `shard_optimizer`, `overrides` (a list of `fit`
            arguments, after the common ones). Default: the GPU switches, each alone and all together. E.g. the
            largest device batch that fits: '{"16": {"overrides": ["--data.init_args.device_batch_size=16"]},
            "32": {"overrides": ["--data.init_args.device_batch_size=32"]}}'.
        overrides: `fit` arguments every variant takes first, e.g. ["--config=configs/trainer/gpu1.yaml"].
        steps: Optimizer steps of each run, including the warm-up.
        warmup: Leading steps left out of each run's figures.
        timeout: Seconds a variant may take (compilation included) before it is stopped and its row says so.
    """
    variants = DEFAULT_VARIANTS if variants is None else variants
    if not variants:
        raise UserError("no variants to measure")
    for name, arguments in variants.items():
        unknown = set(arguments) - set(VARIANT_KEYS)
        if unknown:
            takes = ", ".join(VARIANT_KEYS)
            raise UserError(f"variant {name!r}: unknown {', '.join(sorted(unknown))} (a variant takes {takes})")
    rows = []
    for number, (name, arguments) in enumerate(variants.items(), 1):
        started = time.perf_counter()
        row = {"variant": name, **arguments, **_run_variant(yaml, arguments, overrides or [], steps, warmup, timeout)}
        outcome = row["error"] if "error" in row else f"{row['tokens_per_s']:,.0f} tokens/s"
        elapsed = format_duration(time.perf_counter() - started)
        print(f"[{number}/{len(variants)}] {name}: {outcome} ({elapsed})", file=sys.stderr, flush=True)
        rows.append(row)
    print(_table(rows))
    result = {"yaml": yaml, "overrides": overrides or [], "steps": steps, "warmup": warmup, "variants": rows}
    print(json.dumps(result))
    return result


def _run_variant(yaml: str, arguments: dict, common: list[str], steps: int, warmup: int, timeout: float) -> dict:
    """One `bench train` process: its JSON result, or {"error": its one-line error}."""
    argv = [
        *("bench", "train", "--yaml", yaml, "--steps", str(steps), "--warmup", str(warmup)),
        *("--attention", str(arguments.get("attention", "auto"))),
        *("--shard_optimizer", json.dumps(bool(arguments.get("shard_optimizer", True)))),
        *("--overrides", json.dumps([*common, *arguments.get("overrides", [])])),
    ]
    try:
        done = subprocess.run(nanochat_command(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"error: no result after {format_duration(timeout)} (the run was stopped)"}
    result = last_json(done.stdout.strip().splitlines()) if done.returncode == 0 else None
    if result is not None:
        return result
    return {"error": error_line(done.stderr.splitlines()) or f"bench train exited with code {done.returncode}"}


def _table(rows: list[dict]) -> str:
    """Name, precision, tokens/s, speed against the first variant, MFU, peak memory, step time; a failed run its
    error."""
    first = rows[0].get("tokens_per_s")
    width = max(len("variant"), *(len(row["variant"]) for row in rows))
    header = f"{'variant':<{width}}  {'precision':<12}  {'tokens/s':>12}  {'vs first':>8}  {'MFU':>6}  {'peak GiB':>8}"
    lines = [header + f"  {'step s':>8}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:<{width}}  {row['error']}")
            continue
        speed = f"{row['tokens_per_s'] / first:.2f}x" if first else "—"
        mfu = "—" if row.get("mfu") is None else f"{row['mfu']:.1%}"
        lines.append(
            f"{row['variant']:<{width}}  {row['precision']:<12}  {row['tokens_per_s']:>12,.0f}  {speed:>8}  "
            f"{mfu:>6}  {row['peak_memory_mb'] / 1024:>8.2f}  {row['step_time_s']:>8.3f}"
        )
    return "\n".join(lines)
