"""`nanochat-pl tokenizer train` and `tokenizer eval`: fit the BPE tokenizer, then measure how well it compresses
several kinds of text beside GPT-2's and GPT-4's tokenizers (nanochat tok_train.py and tok_eval.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import tiktoken
import yaml
from tqdm import tqdm

from nanochat_pl.common import UserError
from nanochat_pl.sources.shards import iter_texts
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer, tokenizer_location

# short samples of the kinds of text the model will meet, written for `tokenizer eval` (nanochat tok_eval.py's kinds)
SAMPLE_TEXTS = yaml.safe_load((Path(__file__).parent / "tokenizer_samples.yaml").read_text(encoding="utf-8"))


def train(
    source: str = "fineweb",
    vocab_size: int = 32768,
    max_chars: int = 2_000_000_000,
    doc_cap: int = 10_000,
    output: str | None = None,
) -> Path:
    """Train the BPE tokenizer and write it to a directory.

    Args:
        source: Training text: "fineweb" or "climbmix" (the downloaded shards), "offline" (the corpus built
            from the installed Python modules' docs), or a directory or glob of .txt/.parquet/.jsonl files.
            The last file of a source is its validation split; training reads the others.
        vocab_size: The whole vocabulary: 256 bytes + merges + 9 special tokens (nanochat: 32,768; Oct 2025: 65,536).
        max_chars: Stop reading text after this many characters (nanochat speedrun: 2B).
        doc_cap: Use at most this many characters of each document, so no single huge document dominates
            the pair counts (nanochat: 10,000).
        output: Directory to write the tokenizer to; default: the data home's tokenizer/.
    """
    output_dir = tokenizer_location(output)
    chars = docs = 0
    started = time.perf_counter()

    def counted() -> Iterator[str]:
        nonlocal chars, docs, started
        with tqdm(total=max_chars, unit="char", unit_scale=True, desc="tokenizer training text") as bar:
            for text in iter_texts(source, split="train", max_chars=max_chars, doc_cap=doc_cap):
                if docs == 0:  # the clock starts here: the time a source takes to get ready is not training
                    started = time.perf_counter()
                chars, docs = chars + len(text), docs + 1
                bar.update(len(text))
                yield text

    tokenizer = Tokenizer.train_from_iterator(counted(), vocab_size)
    seconds = time.perf_counter() - started
    if chars == 0:
        raise UserError(f"source {source!r} yielded no text to train on")
    tokenizer.save(output_dir)
    print(f"trained on {chars:,} chars ({docs:,} documents) in {seconds:.1f} s: {chars / seconds:,.0f} chars/s")
    if tokenizer.vocab_size < vocab_size:
        print(f"note: the text only allowed {tokenizer.vocab_size:,} tokens, not {vocab_size:,}: give it more")
    print(f"wrote a {tokenizer.vocab_size:,}-token tokenizer to {output_dir}")
    return output_dir


def evaluate(
    tokenizer_dir: str | None = None,
    val_sources: tuple[str, ...] = ("fineweb", "climbmix", "offline"),
    val_chars: int = 1_000_000,
) -> None:
    """Print bytes per token (higher: better compression) on several kinds of text, beside GPT-2 and GPT-4, and
    last, the same as one JSON object (the speedrun's report reads it).

    Args:
        tokenizer_dir: Directory of the tokenizer to evaluate; default: the data home's tokenizer/.
        val_sources: Validation text to measure as well, each a source spec as for `tokenizer train`;
            a source that is not available (e.g. FineWeb-Edu or ClimbMix not downloaded) is skipped with a note.
        val_chars: How many characters of each validation source to encode.
    """
    tokenizer = get_tokenizer(tokenizer_dir)
    texts = dict(SAMPLE_TEXTS)
    for spec in val_sources:
        try:
            texts[f"{spec}-val"] = "\n".join(iter_texts(spec, split="val", max_chars=val_chars))
        except UserError as e:
            print(f"skipping {spec}-val: {e}")

    encoders = {"ours": tokenizer.encode}
    for label, name in (("gpt-2", "gpt2"), ("gpt-4", "cl100k_base")):
        try:
            encoders[label] = tiktoken.get_encoding(name).encode_ordinary
        except (OSError, ValueError) as e:  # tiktoken downloads these files; no network, no comparison
            print(f"no {label} column: tiktoken could not load {name!r} ({type(e).__name__})")

    columns = "".join(f"{label + ' tokens':>14}{'bytes/tok':>10}" for label in encoders)
    header = f"{'text':<14}{'bytes':>10}{columns}"
    print(header)
    print("-" * len(header))
    ratios: dict[str, dict[str, float]] = {label: {} for label in encoders}
    for kind, text in texts.items():
        n_bytes = len(text.encode("utf-8"))
        row = f"{kind:<14}{n_bytes:>10,}"
        for label, encode in encoders.items():
            n_tokens = len(encode(text))
            ratios[label][kind] = round(n_bytes / max(n_tokens, 1), 4)
            row += f"{n_tokens:>14,}{n_bytes / max(n_tokens, 1):>10.2f}"
        print(row)
    print(json.dumps({"vocab_size": tokenizer.vocab_size, "bytes_per_token": ratios}))
