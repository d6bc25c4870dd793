"""`nanochat-pl bench tokenizer`: our BPE trainer against karpathy's `rustbpe` and Hugging Face `tokenizers`.

Each trainer learns a byte-level BPE vocabulary from the same text with nanochat's GPT-4 split pattern, in a fresh
process so that its peak memory is its own. Hugging Face is set up as nanochat's HF tokenizer was; it breaks ties
between equally frequent pairs by its own rule, so its merges differ slightly, where `rustbpe` learns ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Literal

from nanochat_pl._rustbpe import DEFAULT_PATTERN
from nanochat_pl.bench import peak_rss_mb
from nanochat_pl.common import UserError
from nanochat_pl.sources.shards import iter_texts, resolve_shards

# trainer name -> the package that must be installed for it
TRAINERS = {"ours": "nanochat_pl._rustbpe", "rustbpe": "rustbpe", "hf": "tokenizers"}


def bench_tokenizer(
    source: str = "offline",
    vocab_sizes: list[int] = [8192, 65536],  # noqa: B006 (jsonargparse needs a literal default)
    max_chars: int = 20_000_000,
    heldout_chars: int = 2_000_000,
    trainers: list[Literal["ours", "rustbpe", "hf"]] = ["ours", "rustbpe", "hf"],  # noqa: B006
    repeats: int = 1,
) -> dict:
    """Compare BPE trainers on training speed, peak memory and compression.

    Args:
        source: Text to train on: "offline" (built from the installed modules' docs), "fineweb", or a directory or
            glob of .txt/.parquet/.jsonl files; its last file is the held-out split bytes/token is measured on.
        vocab_sizes: Vocabulary sizes to train (bytes + merges, no special tokens).
        max_chars: Characters of training text (less if the source has less).
        heldout_chars: Characters of held-out text for bytes/token.
        trainers: "ours", "rustbpe" (PyPI), "hf" (Hugging Face tokenizers); ones not installed are skipped.
        repeats: Train each this many times and keep the fastest run (the machine may be busy).
    """
    if min(vocab_sizes, default=256) < 256 or repeats < 1:
        raise UserError("vocab sizes must be at least 256 and repeats at least 1")
    missing = [name for name in trainers if importlib.util.find_spec(TRAINERS[name]) is None]
    trainers = [name for name in trainers if name not in missing]

    resolve_shards(source)  # fails early on a bad source, and builds the offline corpus before any timing
    reading = _in_fresh_process(None, source, 0, max_chars, 0)
    print(
        f"reading {reading['chars']:,} chars of {source!r} alone: {reading['chars_per_s']:,.0f} chars/s, "
        f"peak {reading['peak_mb']:.0f} MB"
    )
    for name in missing:
        print(f"{name}: not installed ({TRAINERS[name]}), skipped")
    print(f"{'vocab':>7} {'trainer':<8} {'seconds':>8} {'chars/s':>12} {'peak MB':>8} {'bytes/tok':>9}  vs ours")
    results = []
    for vocab_size in vocab_sizes:
        ours = None
        for name in trainers:
            runs = [_in_fresh_process(name, source, vocab_size, max_chars, heldout_chars) for _ in range(repeats)]
            result = {"trainer": name, "vocab_size": vocab_size, **min(runs, key=lambda r: r["seconds"])}
            line = (
                f"{vocab_size:>7} {name:<8} {result['seconds']:>8.2f} {result['chars_per_s']:>12,.0f} "
                f"{result['peak_mb']:>8.0f} {result['bytes_per_token']:>9.3f}"
            )
            if name == "ours":
                ours = result
            elif ours is not None:
                # how many times faster we train, and how many times more memory they take
                result["ours_speedup"] = round(ours["chars_per_s"] / result["chars_per_s"], 2)
                result["memory_vs_ours"] = round(result["peak_mb"] / ours["peak_mb"], 2)
                line += f"  ours {result['ours_speedup']:.2f}x faster, they use {result['memory_vs_ours']:.2f}x memory"
            results.append(result)
            print(line)
    summary = {"bench": "tokenizer", "source": source, "reading": reading, "skipped": missing, "results": results}
    print(json.dumps(summary))
    return summary


def _in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measure, *args).result()


def _measure(trainer: str | None, source: str, vocab_size: int, max_chars: int, heldout_chars: int) -> dict:
    """Train with `trainer` (None: only read the text): chars/s, peak memory, bytes/token on the held-out split."""
    count = [0]

    def texts() -> Iterator[str]:
        for text in iter_texts(source, split="train", max_chars=max_chars):
            count[0] += len(text)
            yield text

    start = time.perf_counter()
    if trainer is None:
        for _ in texts():
            pass
    elif trainer == "hf":
        encode = _train_hf(texts(), vocab_size)
    else:  # ours or rustbpe (the same interface), encoding by tiktoken as our Tokenizer does
        import tiktoken

        bpe = importlib.import_module(TRAINERS[trainer]).Tokenizer()
        bpe.train_from_iterator(texts(), vocab_size, pattern=DEFAULT_PATTERN)
        ranks = dict(bpe.get_mergeable_ranks())
        encoding = tiktoken.Encoding("bench", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens={})
        encode = encoding.encode_ordinary_batch
    seconds = time.perf_counter() - start
    result = {"chars": count[0], "seconds": round(seconds, 3), "chars_per_s": round(count[0] / seconds)}
    result["peak_mb"] = round(peak_rss_mb(), 1)  # before encoding the held-out text, which is not training
    if trainer is not None:
        heldout = list(iter_texts(source, split="val", max_chars=heldout_chars))
        num_tokens = sum(len(ids) for ids in encode(heldout))
        result["bytes_per_token"] = round(sum(len(text.encode("utf-8")) for text in heldout) / num_tokens, 4)
    return result


def _train_hf(texts: Iterable[str], vocab_size: int) -> Callable[[list[str]], list[list[int]]]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    split = pre_tokenizers.Split(Regex(DEFAULT_PATTERN), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # all 256 bytes, as ours starts from
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(texts, trainer)
    return lambda batch: [encoding.ids for encoding in tokenizer.encode_batch(batch, add_special_tokens=False)]
