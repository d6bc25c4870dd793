"""Benchmarks: `nanochat-pl bench tokenizer|train|infer`, each printing one JSON line last."""

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / (2**20 if sys.platform == "darwin" else 2**10)
