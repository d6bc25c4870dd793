"""Benchmarks: `nanochat-pl bench tokenizer|train|variants|infer|eval`, each printing a table and one JSON line last."""

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run so far, in MiB: what torch allocated on a CUDA device, else this process's RSS."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
