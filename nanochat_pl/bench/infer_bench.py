"""`nanochat-pl bench infer` and `bench eval`: how fast a model generates, and how fast CORE and ChatCORE score it.

`bench infer` measures as nanochat's infer_bench.py does, per precision (CPU: fp32 and bf16, CUDA: bf16) and batch
size: time to first token (a batch-1 prefill), median time per later token, tokens/s and, where the device's peak
bandwidth is known, MBU. Its tokenizer's special tokens lie past the vocabulary: every run decodes `decode_len` tokens.

`bench eval` times each part once after a warm-up, in the evaluations' precision: CORE in examples/s, nanochat's way
(one example per forward) and batched (up to `batch_tokens`), which must score alike; ChatCORE's categorical (ARC,
MMLU) and generative (GSM8K, SpellingBee) parts in problems/s. A task without data is left out.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from typing import Literal

import torch
from torch import nn

from nanochat_pl.bench import device_name, peak_memory_mb
from nanochat_pl.checkpoint import load_model
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine, resolve_device
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.precision import PRECISIONS, choose_precision, eval_precision
from nanochat_pl.tokenizer import SPECIAL_TOKENS, get_tokenizer

# Peak memory bandwidth in bytes/s from NVIDIA's data sheets, most specific name first.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12}  # "H100": SXM
PEAK_BANDWIDTH |= {"A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12}  # "A100": 40GB


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
        checkpoint: A checkpoint (a name such as "sft", or a path) to time; default: a fresh random model of `depth`.
        depth: Depth of the random model (nanochat's shape, 32,768-token vocabulary, context 2,048).
        batch_sizes: Samples generated together from one prompt.
        prompt_len: Tokens in the (random) prompt; cut to the context minus `decode_len` if longer.
        decode_len: Tokens generated per sample.
        repeats: Runs per measurement; the fastest counts (other work on the machine is not the engine's time).
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        seed: Seed of the random model, prompt and sampling.
    """
    if not batch_sizes or min(batch_sizes) < 1 or min(prompt_len, repeats) < 1 or decode_len < 2:
        raise UserError("need batch sizes, prompt_len and repeats >= 1 and decode_len >= 2 (two tokens, one gap)")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    model = random_model(depth, 32768, torch_device) if checkpoint is None else load_model(checkpoint, torch_device)[0]
    config = model.config
    prompt_len = min(prompt_len, config.sequence_len - decode_len)
    if prompt_len < 1:
        raise UserError(f"decode_len {decode_len} leaves no room for a prompt in the context of {config.sequence_len}")
    prompt = torch.randint(config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    name = device_name(torch_device)
    peak = next((bandwidth for key, bandwidth in PEAK_BANDWIDTH.items() if key in name), None)

    results = []
    for precision in ["bf16"] if torch_device.type == "cuda" else ["fp32", "bf16"]:  # in place: fp32 goes first
        model = model.to(PRECISIONS[precision])  # in place, as `chat` and `serve` hold it
        if torch_device.type == "cuda":  # the peak of decoding, not of the fp32 model this was cast from
            torch.cuda.reset_peak_memory_stats(torch_device)
        engine = Engine(model, NeverStopping(config.vocab_size), compute_dtype=PRECISIONS[precision])
        time_generation(engine, prompt[:16], 1, 4, seed)  # warm-up: kernels chosen, allocator primed
        for batch_size in batch_sizes:
            runs = [time_generation(engine, prompt, batch_size, decode_len, seed) for _ in range(repeats)]
            ttft, tpot = min(ttft for ttft, _ in runs), min(tpot for _, tpot in runs)
            step_bytes = _decode_step_bytes(model, batch_size, prompt_len, decode_len, PRECISIONS[precision])
            row = {"precision": precision, "batch_size": batch_size, "ttft_ms": round(ttft * 1e3, 2)}
            row |= {"tpot_ms": round(tpot * 1e3, 3), "tokens_per_s": round(batch_size / tpot, 1)}
            row["prefill_tokens_per_s"] = round(prompt_len / ttft, 1)
            row["mbu"] = round(step_bytes / tpot / peak, 4) if peak else None
            results.append(row)
            print(
                f"{precision} batch {batch_size:>3}: time to first token {row['ttft_ms']:8.1f} ms, "
                f"{row['tpot_ms']:7.2f} ms/token, {row['tokens_per_s']:8.1f} tokens/s"
                + (f", MBU {row['mbu']:.1%}" if peak else "")
            )
    auto, why = choose_precision(torch_device, config.n_embd)  # what `chat` and `serve` run in here by default
    print(f"auto precision: {auto} ({why})")
    threads = torch.get_num_threads() if torch_device.type == "cpu" else None
    result = {"device": name, "threads": threads, "auto_precision": auto, "checkpoint": checkpoint}
    result |= {"depth": config.n_layer, "params": model.num_params(), "prompt_len": prompt_len}
    result |= {"decode_len": decode_len, "repeats": repeats, "results": results}
    result["peak_memory_mb"] = round(peak_memory_mb(torch_device), 1)
    print(json.dumps(result))
    return result


def random_model(depth: int, vocab_size: int, device: torch.device) -> GPT:
    """A freshly initialised model of nanochat's shape for `depth`, context 2,048."""
    with torch.device(device):
        model = GPT(GPTConfig.from_depth(depth, vocab_size=vocab_size, sequence_len=2048))
    model.init_weights()
    return model.eval()


def time_generation(engine: Engine, prompt: list[int], batch_size: int, decode_len: int, seed: int):
    """(time to first token, median time per later token) in seconds. Each step ends in the engine's
    `.tolist()` of the sampled tokens, which waits for the device, so wall-clock times are the device's."""
    tokens = engine.generate(prompt, batch_size, max_tokens=decode_len, temperature=1.0, top_k=50, seed=seed)
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in tokens]
    return stamps[0] - start, statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def _decode_step_bytes(model: GPT, batch_size: int, prompt_len: int, decode_len: int, dtype: torch.dtype) -> float:
    """Bytes one decode step reads, on average over the decode: every matmul weight as stored (embedding tables,
    looked up a row per token, left out) and the cached keys and values each layer attends to, in the compute dtype."""
    weights = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear))
    config = model.config
    kv_per_position = 2 * batch_size * config.n_kv_head * config.head_dim * dtype.itemsize
    # a layer with window w attends to the last w + 1 positions, a full layer (None) to all of them
    windows = config.layer_windows()
    attended = [sum(min(p, w or p) + 1 for w in windows) for p in range(prompt_len, prompt_len + decode_len)]
    return weights + kv_per_position * sum(attended) / len(attended)


def bench_eval(
    checkpoint: str | None = None,
    depth: int = 4,
    bundle: str | None = None,
    max_per_task: int = 40,
    batch_tokens: int | None = None,
    categorical_problems: int = 64,
    batch_size: int = 8,
    generative_problems: int = 8,
    max_tokens: int = 128,
    device: str = "auto",
    tokenizer_dir: str | None = None,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> dict:
    """Time CORE (nanochat's one example per forward vs batched) and ChatCORE's two parts.

    Args:
        checkpoint: A checkpoint (a name or a path); default: a random model of `depth`, the home's tokenizer.
        depth: Depth of the random model (context 2,048).
        bundle: CORE's eval bundle (directory or .zip); default: as `nanochat-pl eval core` finds it.
        max_per_task: CORE examples per task.
        batch_tokens: Tokens per batched CORE forward; default: the evaluator's.
        categorical_problems: Questions per categorical task.
        batch_size: Questions per forward of the categorical tasks.
        generative_problems: Problems per generative task.
        max_tokens: New tokens per generated reply at most.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
        tokenizer_dir: A tokenizer instead of the checkpoint's (or, for a random model, the data home's).
        precision: "auto" (as `eval core` and `eval chat`: bf16 on CUDA, fp32 on a CPU), "bf16" or "fp32".
    """
    from nanochat_pl.evals.chatcore import evaluate_chat
    from nanochat_pl.evals.core import DEFAULT_BATCH_TOKENS, evaluate_core
    from nanochat_pl.evals.core_data import load_core_tasks

    if min(max_per_task, categorical_problems, generative_problems, batch_size, max_tokens) < 1:
        raise UserError("the problem counts, batch_size and max_tokens must be at least 1")
    torch_device = resolve_device(device)
    if checkpoint is not None:
        model, tokenizer, _ = load_model(checkpoint, device=torch_device, tokenizer_dir=tokenizer_dir)
    else:
        tokenizer = get_tokenizer(tokenizer_dir)
        torch.manual_seed(0)
        model = random_model(depth, tokenizer.vocab_size, torch_device)
    batch_tokens, precision = batch_tokens or DEFAULT_BATCH_TOKENS, eval_precision(torch_device, precision)
    result: dict = {"device": device_name(torch_device), "checkpoint": checkpoint, "depth": model.config.n_layer}
    result |= {"params": model.num_params(), "precision": precision}
    print(f"precision: {precision}")

    tasks, skipped = load_core_tasks(bundle)
    result["core"] = {"skipped": skipped}
    if tasks:
        core = functools.partial(evaluate_core, model, tokenizer, precision=precision)
        core(tasks[:1], max_per_task=4, progress=False)  # warm-up
        (nanochat_s, one_by_one), (batched_s, batched) = (
            _timed(torch_device, core, tasks, max_per_task=max_per_task, batch_tokens=t) for t in (0, batch_tokens)
        )
        identical = [t.accuracy for t in one_by_one.tasks] == [t.accuracy for t in batched.tasks]
        examples = sum(task.num_examples for task in batched.tasks)  # over all ranks, as CORE counts them
        result["core"] |= {"tasks": len(tasks), "examples": examples, "batch_tokens": batch_tokens}
        result["core"] |= {"nanochat_examples_per_s": round(examples / nanochat_s, 2)}
        result["core"] |= {"batched_examples_per_s": round(examples / batched_s, 2)}
        result["core"] |= {"speedup": round(nanochat_s / batched_s, 2), "identical": identical, "core": batched.core}
        print(
            f"CORE, {len(tasks)} tasks, {examples} examples: nanochat's way {examples / nanochat_s:.1f} examples/s, "
            f"batched {examples / batched_s:.1f} examples/s ({nanochat_s / batched_s:.2f}x), "
            f"identical results: {identical}"
        )
    for reason in skipped:
        print(f"CORE skipped {reason}")

    engine = Engine(model, tokenizer, compute_dtype=PRECISIONS[precision])
    for part, names, cap, kwargs in (
        ("categorical", ("ARC-Easy", "ARC-Challenge", "MMLU"), categorical_problems, {"batch_size": batch_size}),
        ("generative", ("GSM8K", "SpellingBee"), generative_problems, {"max_tokens": max_tokens}),
    ):
        seconds, chat = _timed(torch_device, evaluate_chat, engine, names, max_problems=cap, **kwargs)
        problems = sum(task.num_problems for task in chat.tasks)
        rate = round(problems / seconds, 2) if problems else None
        tasks = [task.name for task in chat.tasks]
        result[part] = {"tasks": tasks, "skipped": chat.skipped, "problems": problems, "problems_per_s": rate, **kwargs}
        print(
            f"ChatCORE {part} ({', '.join(tasks) or 'no task'}): {problems} problems, "
            + (f"{rate:.2f} problems/s" if rate else "nothing to time")
        )
        for reason in chat.skipped:
            print(f"ChatCORE skipped {reason}")
    print(json.dumps(result))
    return result


def _timed(device: torch.device, function, *args, **kwargs):
    """(seconds, value) of `function(*args, **kwargs, progress=False)`, the device synchronised on both sides."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    sync(device)
    start = time.perf_counter()
    value = function(*args, **kwargs, progress=False)
    sync(device)
    return time.perf_counter() - start, value
