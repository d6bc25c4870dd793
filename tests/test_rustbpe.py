"""The Rust BPE trainer (nanochat_pl._rustbpe) against a plain-Python BPE, karpathy's rustbpe and tiktoken."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from nanochat_pl._rustbpe import DEFAULT_PATTERN, Tokenizer

# the issue's pattern: GPT-4's with numbers in groups of 1-2 digits (nanochat tokenizer.py)
NANOCHAT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}"
    r"| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
)


def reference_ranks(texts: list[str], vocab_size: int, pattern: str = NANOCHAT_PATTERN) -> list[bytes]:
    """Textbook byte-level BPE (as in minbpe): split with the regex, count the chunks, then repeatedly merge
    the most frequent pair, recounting everything each time. Ties: the smallest (left id, right id) wins."""
    chunk_counts = Counter(chunk for text in texts for chunk in regex.findall(pattern, text))
    words = [(list(chunk.encode("utf-8")), n) for chunk, n in chunk_counts.items()]
    vocab = [bytes([b]) for b in range(256)]
    while len(vocab) < vocab_size:
        pairs = Counter()
        for ids, n in words:
            for pair in itertools.pairwise(ids):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], -pair[0], -pair[1]))
        new_id = len(vocab)
        for ids, _ in words:
            i = 0
            while i < len(ids) - 1:
                if (ids[i], ids[i + 1]) == best:
                    ids[i : i + 2] = [new_id]
                i += 1
        vocab.append(vocab[best[0]] + vocab[best[1]])
    return vocab


def our_ranks(texts: list[str], vocab_size: int, **kwargs) -> list[bytes]:
    trainer = Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size, **kwargs)
    ranks = trainer.get_mergeable_ranks()
    assert [rank for _, rank in ranks] == list(range(len(ranks)))
    return [token for token, _ in ranks]


ENGLISH_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It's not what you'd think: they've said we'll see, and she'S sure you're right.",
    "WE'LL MEET AT NOON, DON'T BE LATE!",
    "In the beginning there was the word, and the word was with the other words.",
    'He said "hello" (twice) -- then left; nobody knew why...',
    "Tokenizers learn merges from counts of adjacent pairs of tokens.",
    "There are 3 kinds of people in the world: those who can count and those who can't.",
]


def _english() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choices(ENGLISH_SENTENCES, k=rng.randint(1, 6))) for _ in range(150)]


CORPORA = {
    "english": _english(),
    "unicode": [
        "日本語のテキストと中文文本，한국어 텍스트도 있습니다。",
        "emoji 🙂🙂 🚀🚀🚀 family 👨‍👩‍👧 flags 🇫🇷🇩🇪 skin 👍🏽👍🏽",
        "combining: e\u0301 a\u0308\u0301 cafe\u0301 nai\u0308ve Zalgo z\u0336\u0327a\u0336l\u0334",
        "Ελληνικά και русский текст, עברית וערבית العربية, हिन्दी भाषा, ไทย",
        "full-width ＡＢＣ１２３ and ligatures ﬁ ﬂ, long s ſ 'ſ and 'S, Kelvin K, Å",
    ]
    * 12,
    "digits": [
        "1234567890 12 345 6789 0.5 3.14159 2,000,000 1e-9 0x1F ١٢٣٤ ²³ ½ Ⅻ 2024-01-13 12:30:45",
        "phone +1 (555) 123-4567, id 00042, v1.2.3, 100% of 7/8, $9.99",
    ]
    * 30,
    "whitespace": [
        "a  b   c    d\t\te\n\nf\r\ng \n h\u00a0i\u3000j   \n\n\n  k\u2028l  ",
        "    indented\n        more\n\t\ttabs\n   \n\n   trailing   ",
        "\n\n\n",
        " ",
        "",
    ]
    * 25,
    "code": [
        "def f(x: int) -> int:\n    return x ** 2 + 1  # square\n",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
        'if __name__ == "__main__":\n    print(f"{value!r:>10}")\n',
        "const x = {a: [1, 2, 3], 'b': null}; // comment\n/* block */ x?.a ?? []\n",
        "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;\n",
    ]
    * 20,
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_merges_match_the_python_reference(name: str) -> None:
    texts = CORPORA[name]
    vocab_size = 256 + 120
    assert our_ranks(texts, vocab_size) == reference_ranks(texts, vocab_size)


def test_default_pattern_is_nanochats() -> None:
    assert DEFAULT_PATTERN == NANOCHAT_PATTERN
    trainer = Tokenizer()
    assert trainer.get_pattern() == NANOCHAT_PATTERN
    trainer.train_from_iterator(iter(["some text"]), 256)
    assert trainer.get_pattern() == NANOCHAT_PATTERN


def test_first_256_ranks_are_the_bytes() -> None:
    ranks = our_ranks(CORPORA["english"], 300)
    assert ranks[:256] == [bytes([b]) for b in range(256)]
    assert len(ranks) == 300 and len(set(ranks)) == 300


def test_custom_pattern_is_used_and_reported() -> None:
    pattern = r"\S+|\s+"
    texts = CORPORA["code"] + CORPORA["english"][:20]
    trainer = Tokenizer()
    trainer.train_from_iterator(iter(texts), 400, pattern=pattern)
    assert trainer.get_pattern() == pattern
    assert [token for token, _ in trainer.get_mergeable_ranks()] == reference_ranks(texts, 400, pattern)


def test_stops_when_no_pair_is_left() -> None:
    ranks = our_ranks(["ab", "abc", "a"], 1000)
    assert ranks[256:] == [b"ab", b"abc"]


def test_streaming_batch_size_does_not_change_the_result_and_counts_chars() -> None:
    texts = CORPORA["english"] + CORPORA["unicode"]
    results = []
    for buffer_size in (1, 7, 8192):
        trainer = Tokenizer()
        chars = trainer.train_from_iterator((t for t in texts), 600, buffer_size=buffer_size)
        assert chars == trainer.chars_seen == sum(len(t) for t in texts)
        results.append(trainer.get_mergeable_ranks())
    assert results[0] == results[1] == results[2]


SMALL_ALPHABET = st.sampled_from(list("aab ab\n1'sé中🙂"))


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(SMALL_ALPHABET, max_size=30), max_size=12), merges=st.integers(0, 40))
def test_merges_match_the_python_reference_on_random_corpora(texts: list[str], merges: int) -> None:
    # few distinct characters: long repeats, overlapping runs ("aaa") and many tied counts
    assert our_ranks(texts, 256 + merges) == reference_ranks(texts, 256 + merges)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(SMALL_ALPHABET, max_size=30), max_size=12), merges=st.integers(0, 40))
def test_merges_match_pypi_rustbpe(texts: list[str], merges: int) -> None:
    # karpathy's rustbpe breaks ties the same way (smallest pair first), so even tied merges agree;
    # it defaults to GPT-4's 3-digit pattern, so it is given ours
    import rustbpe

    theirs = rustbpe.Tokenizer()
    theirs.train_from_iterator(iter(texts), 256 + merges, pattern=NANOCHAT_PATTERN)
    assert our_ranks(texts, 256 + merges) == [bytes(token) for token, _ in theirs.get_mergeable_ranks()]


def test_same_merges_as_pypi_rustbpe_on_a_larger_corpus() -> None:
    # identical merges, so identical bytes/token on any text
    import rustbpe

    texts = [text for corpus in CORPORA.values() for text in corpus] * 4
    theirs = rustbpe.Tokenizer()
    theirs.train_from_iterator(iter(texts), 2048, pattern=NANOCHAT_PATTERN)
    assert our_ranks(texts, 2048) == [bytes(token) for token, _ in theirs.get_mergeable_ranks()]


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    texts = [text for corpus in CORPORA.values() for text in corpus]
    trainer = Tokenizer()
    trainer.train_from_iterator(iter(texts), 1024)
    return tiktoken.Encoding(
        "test",
        pat_str=trainer.get_pattern(),
        mergeable_ranks=dict(trainer.get_mergeable_ranks()),
        special_tokens={},
    )


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_tiktoken_round_trips_arbitrary_text(encoding: tiktoken.Encoding, text: str) -> None:
    ids = encoding.encode_ordinary(text)
    assert encoding.decode_bytes(ids) == text.encode("utf-8")
    assert encoding.decode(ids) == text


def test_bad_input_raises_value_error() -> None:
    trainer = Tokenizer()
    with pytest.raises(ValueError, match="vocab_size must be at least 256"):
        trainer.train_from_iterator(iter(["text"]), 255)
    with pytest.raises(ValueError, match="vocab_size must be at least 256"):
        trainer.train_from_iterator(iter(["text"]), -1)
    with pytest.raises(ValueError, match="invalid regex pattern"):
        trainer.train_from_iterator(iter(["text"]), 300, pattern="(unclosed")
    with pytest.raises(ValueError, match="item 1 has type bytes"):
        trainer.train_from_iterator(iter(["text", b"bytes"]), 300)
    with pytest.raises(ValueError, match="buffer_size must be at least 1"):
        trainer.train_from_iterator(iter(["text"]), 300, buffer_size=0)


def test_errors_raised_by_the_iterator_propagate() -> None:
    def texts():
        yield "fine"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        Tokenizer().train_from_iterator(texts(), 300)


def test_bench_prints_a_json_line_last(tmp_path, capsys) -> None:
    from nanochat_pl.bench.tokenizer_bench import bench_tokenizer

    source = tmp_path / "text"
    source.mkdir()
    (source / "a_train.txt").write_text("\n\n".join(CORPORA["english"] + CORPORA["code"]), encoding="utf-8")
    (source / "b_val.txt").write_text("\n\n".join(CORPORA["english"][:20]), encoding="utf-8")
    summary = bench_tokenizer(source=str(source), vocab_sizes=[300], trainers=["ours", "rustbpe"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == summary
    ours, theirs = summary["results"]
    assert (ours["trainer"], theirs["trainer"]) == ("ours", "rustbpe")
    assert ours["chars"] == theirs["chars"] == summary["reading"]["chars"] > 0
    assert ours["bytes_per_token"] == theirs["bytes_per_token"] > 1
    assert theirs["ours_speedup"] > 0 and theirs["memory_vs_ours"] > 0
