"""`nanochat-pl bench infer`: how fast the engine generates, measured as nanochat's infer_bench.py (@92d63d4).

For each batch size, `batch_size` samples of one prompt are generated the way the engine always does it
(one batch-1 prefill shared by every sample, then one token per sample per step). Reported per precision
and batch size: time to first token (the prefill and the first sampled token), the median time per output
token after it, and the decode throughput, batch_size / time per token. On the CPU both fp32 and bf16
are measured; on CUDA bf16 (nanochat's), with MBU: the bytes one decode step must read (the weights of every
matmul and the keys and values in the cache) over its time, against the device's peak memory bandwidth. The
model is held in the precision measured, as `chat` and `serve` hold it (engine.py `cast_for_inference`).

The special tokens of the timing tokenizer lie past the model's vocabulary, so no sampled token can end a
row or open a tool call: every run decodes exactly `decode_len` tokens, from a random or a trained model.
The last line printed is the whole result as one JSON object.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from torch import nn

from nanochat_pl.bench import peak_memory_mb
from nanochat_pl.checkpoint import load_model
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine, cast_for_inference, resolve_device
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.precision import choose_precision
from nanochat_pl.tokenizer import SPECIAL_TOKENS

# Peak memory bandwidth in bytes/s from NVIDIA's data sheets, most specific name first.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40GB
)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class NeverStopping:
    """The tokenizer the engine times with: special tokens just past the model's vocabulary."""

    def __init__(self, vocab_size: int):
        self.bos_token_id = vocab_size

    def encode_special(self, name: str) -> int:
        return self.bos_token_id + 1 + SPECIAL_TOKENS.index(name)


def bench_infer(
    checkpoint: str | None = None,
    depth: int = 4,
    batch_sizes: list[int] = [1, 8, 32],  # noqa: B006 (jsonargparse needs a literal default)
    prompt_len: int = 512,
    decode_len: int = 64,
    repeats: int = 3,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """Time prefill and decoding of the engine at several batch sizes.

    Args:
        checkpoint: A stage's checkpoint to time; default: a fresh random model of `depth`.
        depth: Depth of the random model (nanochat HEAD's shape for that depth, 32,768-token vocabulary,
            context 2,048).
        batch_sizes: Samples generated together from one prompt.
        prompt_len: Tokens in the (random) prompt; cut to the context minus `decode_len` if longer.
        decode_len: Tokens generated per sample.
        repeats: Runs per measurement; the fastest counts (what other work on the machine slowed down
            is not the engine's time).
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        seed: Seed of the random model, prompt and sampling.

    Returns:
        The result, also printed as the last line in JSON.
    """
    if not batch_sizes or min(batch_sizes) < 1 or min(prompt_len, repeats) < 1 or decode_len < 2:
        raise UserError("need batch sizes, prompt_len and repeats >= 1 and decode_len >= 2 (two tokens, one gap)")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    if checkpoint is None:
        config = GPTConfig.from_depth(depth, vocab_size=32768, sequence_len=2048)
        with torch.device(torch_device):
            model = GPT(config)
        model.init_weights()
        model.eval()
    else:
        model, _, _ = load_model(checkpoint, device=torch_device)
    config = model.config
    prompt_len = min(prompt_len, config.sequence_len - decode_len)
    if prompt_len < 1:
        raise UserError(f"decode_len {decode_len} leaves no room for a prompt in the context of {config.sequence_len}")
    prompt = torch.randint(config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    name = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu"
    peak = next((bandwidth for key, bandwidth in PEAK_BANDWIDTH if key in name), None)

    results = []
    for precision in ["bf16"] if torch_device.type == "cuda" else ["fp32", "bf16"]:  # in place: fp32 goes first
        model = cast_for_inference(model, PRECISIONS[precision])  # as `chat` and `serve` hold it
        if torch_device.type == "cuda":  # the peak of decoding, not of the fp32 model this was cast from
            torch.cuda.reset_peak_memory_stats(torch_device)
        engine = Engine(model, NeverStopping(config.vocab_size), compute_dtype=PRECISIONS[precision])
        time_generation(engine, prompt[:16], 1, 4, seed)  # warm-up: kernels chosen, allocator primed
        for batch_size in batch_sizes:
            runs = [time_generation(engine, prompt, batch_size, decode_len, seed) for _ in range(repeats)]
            ttft, tpot = min(ttft for ttft, _ in runs), min(tpot for _, tpot in runs)
            step_bytes = _decode_step_bytes(model, batch_size, prompt_len, decode_len, PRECISIONS[precision])
            results.append(
                {
                    "precision": precision,
                    "batch_size": batch_size,
                    "ttft_ms": round(ttft * 1e3, 2),
                    "tpot_ms": round(tpot * 1e3, 3),
                    "tokens_per_s": round(batch_size / tpot, 1),
                    "prefill_tokens_per_s": round(prompt_len / ttft, 1),
                    "mbu": round(step_bytes / tpot / peak, 4) if peak else None,
                }
            )
            row = results[-1]
            print(
                f"{precision} batch {batch_size:>3}: time to first token {row['ttft_ms']:8.1f} ms, "
                f"{row['tpot_ms']:7.2f} ms/token, {row['tokens_per_s']:8.1f} tokens/s"
                + (f", MBU {row['mbu']:.1%}" if peak else "")
            )
    auto = choose_precision(torch_device, config.n_embd)  # what `chat` and `serve` run in here by default
    print(f"auto precision: {auto.reason}")
    result = {
        "device": name,
        "threads": torch.get_num_threads() if torch_device.type == "cpu" else None,
        "auto_precision": "bf16" if auto.dtype == torch.bfloat16 else "fp32",
        "checkpoint": checkpoint,
        "depth": config.n_layer,
        "params": model.num_params(),
        "prompt_len": prompt_len,
        "decode_len": decode_len,
        "repeats": repeats,
        "results": results,
        "peak_memory_mb": round(peak_memory_mb(torch_device), 1),
    }
    print(json.dumps(result))
    return result


def time_generation(engine: Engine, prompt: list[int], batch_size: int, decode_len: int, seed: int):
    """(time to first token, median time per later token) in seconds. Each step ends in the engine's
    `.tolist()` of the sampled tokens, which waits for the device, so wall-clock times are the device's."""
    start = time.perf_counter()
    stamps = [
        time.perf_counter()
        for _ in engine.generate(prompt, batch_size, max_tokens=decode_len, temperature=1.0, top_k=50, seed=seed)
    ]
    return stamps[0] - start, statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def _decode_step_bytes(model: GPT, batch_size: int, prompt_len: int, decode_len: int, dtype: torch.dtype) -> float:
    """Bytes one decode step reads, on average over the decode: every matmul weight as stored (embedding
    tables are looked up, a row per token, and left out) and the cached keys and values each layer attends
    to, in the cache's dtype (the engine keeps the cache in its compute dtype)."""
    weights = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear))
    config = model.config
    kv_per_position = 2 * batch_size * config.n_kv_head * config.head_dim * dtype.itemsize
    positions = range(prompt_len, prompt_len + decode_len)
    # a layer with window w attends to the last w + 1 positions, a full layer (None) to all of them
    attended = [
        sum(min(position, window or position) + 1 for window in config.layer_windows()) for position in positions
    ]
    return weights + kv_per_position * sum(attended) / len(attended)
