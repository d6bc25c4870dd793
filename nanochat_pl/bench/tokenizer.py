"""`nanochat-pl bench tokenizer`: our BPE trainer against karpathy's `rustbpe` and Hugging Face `tokenizers`.

Every trainer learns a byte-level BPE vocabulary from the same text with the same split pattern (nanochat's
GPT-4 pattern), each in a fresh process so that its peak memory (resident set) is its own. Printed per vocab
size and trainer: chars/s of training (reading the text included: the first line shows what reading alone
costs), peak MB, bytes/token on the source's held-out split, and how we compare; the last line is JSON.

Hugging Face is configured as nanochat's HF tokenizer was: a `Split` on the same regex (run by Oniguruma
rather than fancy-regex: the same chunks on ordinary text), then `ByteLevel` without its own regex, and a
`BpeTrainer` over all 256 bytes. Its merges differ slightly from ours, since it breaks ties between equally
frequent pairs by its own rule; `rustbpe` breaks them as we do and learns the very same merges.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from nanochat_pl.bench import peak_rss_mb
from nanochat_pl.common import UserError
from nanochat_pl.sources.shards import iter_texts, resolve_shards

# trainer name -> the package that must be installed for it
TRAINERS = {"ours": "nanochat_pl._rustbpe", "rustbpe": "rustbpe", "hf": "tokenizers"}
# turns held-out texts into token ids
Encoder = Callable[[list[str]], list[list[int]]]


def bench_tokenizer(
    source: str = "offline",
    vocab_sizes: list[int] = [8192, 65536],  # noqa: B006 (jsonargparse needs a literal default)
    max_chars: int = 20_000_000,
    heldout_chars: int = 2_000_000,
    trainers: list[str] = ["ours", "rustbpe", "hf"],  # noqa: B006
    repeats: int = 1,
) -> dict:
    """Compare BPE trainers on training speed, peak memory and compression.

    Args:
        source: Text to train on: "offline" (the corpus built from the installed Python modules' docs),
            "fineweb", or a directory or glob of .txt/.parquet/.jsonl files; its last file is the held-out
            split that bytes/token is measured on.
        vocab_sizes: Vocabulary sizes to train (bytes + merges, no special tokens).
        max_chars: Characters of training text (less if the source has less).
        heldout_chars: Characters of held-out text for bytes/token.
        trainers: Which trainers to run: "ours", "rustbpe" (PyPI), "hf" (Hugging Face tokenizers). Ones
            that are not installed are reported and skipped.
        repeats: Train each this many times and keep the fastest run (the machine may be busy).
    """
    unknown = sorted(set(trainers) - set(TRAINERS))
    if unknown:
        raise UserError(f"unknown trainers {unknown}; choose from {list(TRAINERS)}")
    if "ours" in trainers and importlib.util.find_spec(TRAINERS["ours"]) is None:
        raise UserError("nanochat_pl._rustbpe is not built: run `pip install -e .` in the repository")
    if min(vocab_sizes, default=256) < 256 or repeats < 1:
        raise UserError("vocab sizes must be at least 256 and repeats at least 1")
    missing = [name for name in trainers if importlib.util.find_spec(TRAINERS[name]) is None]
    trainers = [name for name in trainers if name not in missing]

    resolve_shards(source)  # fails early on a bad source, and builds the offline corpus before any timing
    reading = _in_fresh_process(_read_only, source, max_chars)
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
            runs = [
                _in_fresh_process(_train_and_measure, name, source, vocab_size, max_chars, heldout_chars)
                for _ in range(repeats)
            ]
            result = {"trainer": name, "vocab_size": vocab_size, **min(runs, key=lambda r: r["seconds"])}
            if name == "ours":
                ours = result
            elif ours is not None:
                # how many times faster we train, and how many times more memory they take
                result["ours_speedup"] = round(ours["chars_per_s"] / result["chars_per_s"], 2)
                result["memory_vs_ours"] = round(result["peak_mb"] / ours["peak_mb"], 2)
            results.append(result)
            comparison = (
                f"ours {result['ours_speedup']:.2f}x faster, they use {result['memory_vs_ours']:.2f}x memory"
                if "ours_speedup" in result
                else ""
            )
            print(
                f"{vocab_size:>7} {name:<8} {result['seconds']:>8.2f} {result['chars_per_s']:>12,.0f} "
                f"{result['peak_mb']:>8.0f} {result['bytes_per_token']:>9.3f}  {comparison}"
            )
    summary = {
        "bench": "tokenizer",
        "source": source,
        "reading": reading,
        "skipped": missing,
        "results": results,
    }
    print(json.dumps(summary))
    return summary


def _in_fresh_process(function: Callable[..., dict], *args) -> dict:
    """Run `function(*args)` in a new interpreter, so its peak memory is measured on its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


class _CountingTexts:
    """Passes texts through and counts their characters."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.chars = iter(texts), 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        text = next(self.texts)
        self.chars += len(text)
        return text


def _read_only(source: str, max_chars: int) -> dict:
    texts = _CountingTexts(iter_texts(source, split="train", max_chars=max_chars))
    start = time.perf_counter()
    for _ in texts:
        pass
    seconds = time.perf_counter() - start
    return {
        "chars": texts.chars,
        "seconds": seconds,
        "chars_per_s": texts.chars / seconds,
        "peak_mb": peak_rss_mb(),
    }


def _train_and_measure(trainer: str, source: str, vocab_size: int, max_chars: int, heldout_chars: int) -> dict:
    texts = _CountingTexts(iter_texts(source, split="train", max_chars=max_chars))
    train = {"ours": _train_ours, "rustbpe": _train_rustbpe, "hf": _train_hf}[trainer]
    start = time.perf_counter()
    encode = train(texts, vocab_size)
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()  # before encoding the held-out text, which is not training
    heldout = list(iter_texts(source, split="val", max_chars=heldout_chars))
    num_bytes = sum(len(text.encode("utf-8")) for text in heldout)
    num_tokens = sum(len(ids) for ids in encode(heldout))
    return {
        "chars": texts.chars,
        "seconds": round(seconds, 3),
        "chars_per_s": round(texts.chars / seconds),
        "peak_mb": round(peak_mb, 1),
        "bytes_per_token": round(num_bytes / num_tokens, 4),
    }


def _split_pattern() -> str:
    from nanochat_pl._rustbpe import DEFAULT_PATTERN

    return DEFAULT_PATTERN


def _tiktoken_encoder(pattern: str, ranks: list[tuple[bytes, int]]) -> Encoder:
    import tiktoken

    encoding = tiktoken.Encoding("bench", pat_str=pattern, mergeable_ranks=dict(ranks), special_tokens={})
    return encoding.encode_ordinary_batch


def _train_ours(texts: Iterable[str], vocab_size: int) -> Encoder:
    from nanochat_pl._rustbpe import Tokenizer

    trainer = Tokenizer()
    trainer.train_from_iterator(texts, vocab_size, pattern=_split_pattern())
    return _tiktoken_encoder(trainer.get_pattern(), trainer.get_mergeable_ranks())


def _train_rustbpe(texts: Iterable[str], vocab_size: int) -> Encoder:
    import rustbpe

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(texts, vocab_size, pattern=_split_pattern())
    return _tiktoken_encoder(trainer.get_pattern(), trainer.get_mergeable_ranks())


def _train_hf(texts: Iterable[str], vocab_size: int) -> Encoder:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_split_pattern()), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(texts, trainer)
    return lambda batch: [encoding.ids for encoding in tokenizer.encode_batch(batch, add_special_tokens=False)]
