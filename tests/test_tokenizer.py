"""The tokenizer: training, encoding, the chat format and its loss masks, the files on disk, the commands.

References: the PyPI `rustbpe` package (karpathy's trainer and its own encoder) for merges and encodings,
tiktoken's own `load_tiktoken_bpe` for the ranks file, and hand-built token sequences for the chat format.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil

import pytest
import tiktoken.load
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rustbpe
from nanochat_pl import _rustbpe, common
from nanochat_pl import tokenizer as tokenizer_module
from nanochat_pl.common import UserError
from nanochat_pl.tokenizer import SPECIAL_TOKENS, Tokenizer, get_tokenizer

VOCAB_SIZE = 512  # 256 bytes + 247 merges + 9 special tokens

# nanochat's split pattern, as published (reference nanochat.md §4), to check ours against
NANOCHAT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def synthetic_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of made-up words, numbers, punctuation, Korean, emoji and code: varied enough that BPE
    always finds pairs to merge."""
    rng = random.Random(seed)
    syllables = [
        "ka",
        "to",
        "ri",
        "se",
        "mon",
        "al",
        "ver",
        "ing",
        "the",
        "and",
        "est",
        "qu",
        "pra",
        "lo",
        "nu",
        "ex",
        "tion",
        "de",
        "mi",
        "sa",
        "or",
    ]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(400)]
    extras = ["안녕하세요", "학교", "🙂", "naïve", "über", "x = f(y) + 1", "def g():", "{'a': [1, 2]}"]
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            tokens = [rng.choice(words) for _ in range(rng.randint(4, 14))]
            if rng.random() < 0.3:
                tokens.insert(rng.randrange(len(tokens)), str(rng.randint(0, 99_999)))
            if rng.random() < 0.2:
                tokens.insert(rng.randrange(len(tokens)), rng.choice(extras))
            sentences.append(" ".join(tokens).capitalize() + rng.choice([".", ".", "!", "?", ";", "'s"]))
        docs.append(" ".join(sentences) + rng.choice(["", "\n", "\n\n"]))
    return docs


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return synthetic_corpus(1500)  # ~350 KB


@pytest.fixture(scope="session")
def tok(corpus: list[str]) -> Tokenizer:
    return Tokenizer.train_from_iterator(corpus, VOCAB_SIZE)


@pytest.fixture(scope="session")
def reference(corpus: list[str]) -> rustbpe.Tokenizer:
    """karpathy's PyPI rustbpe trained on the same text: the merges and encodings we must reproduce."""
    ref = rustbpe.Tokenizer()
    ref.train_from_iterator(iter(corpus), VOCAB_SIZE - len(SPECIAL_TOKENS), pattern=NANOCHAT_PATTERN)
    return ref


# ---- the vocabulary ----


def test_default_pattern_is_nanochats():
    # the Rust trainer's default (the one our tokenizers are trained with) is nanochat's pattern
    assert _rustbpe.DEFAULT_PATTERN == NANOCHAT_PATTERN


def test_vocabulary_layout(tok: Tokenizer):
    assert tok.vocab_size == VOCAB_SIZE
    n_merged = VOCAB_SIZE - len(SPECIAL_TOKENS)
    assert sorted(tok.mergeable_ranks.values()) == list(range(n_merged))
    assert {token: rank for token, rank in tok.mergeable_ranks.items() if rank < 256} == {
        bytes([b]): b for b in range(256)
    }
    # the 9 specials come right after the merges, in nanochat's order
    assert [tok.encode_special(name) for name in SPECIAL_TOKENS] == list(range(n_merged, VOCAB_SIZE))
    assert tok.bos_token_id == n_merged
    assert [tok.decode([n_merged + i]) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)


def test_token_bytes(tok: Tokenizer):
    token_bytes = tok.token_bytes()
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (VOCAB_SIZE,)
    by_id = {rank: token for token, rank in tok.mergeable_ranks.items()}
    expected = [len(by_id[i]) for i in range(VOCAB_SIZE - 9)] + [0] * 9
    assert token_bytes.tolist() == expected
    assert token_bytes[:256].eq(1).all() and token_bytes[256:-9].ge(2).all()


def test_merges_match_reference_rustbpe(tok: Tokenizer, reference: rustbpe.Tokenizer):
    assert tok.pattern == reference.get_pattern() == NANOCHAT_PATTERN
    assert tok.mergeable_ranks == dict(reference.get_mergeable_ranks())


def test_vocab_size_too_small():
    with pytest.raises(UserError, match="at least 265"):
        Tokenizer.train_from_iterator(["some text"], 264)


# ---- encoding ----


@pytest.fixture(scope="session")
def ours_from_reference(reference: rustbpe.Tokenizer) -> Tokenizer:
    return Tokenizer(reference.get_pattern(), dict(reference.get_mergeable_ranks()))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_encode_matches_reference_and_round_trips(
    ours_from_reference: Tokenizer, reference: rustbpe.Tokenizer, text: str
):
    # our tiktoken wiring, fed the reference's own merges, must encode exactly as the reference's encoder
    ours = ours_from_reference
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    assert ours.decode(ids) == text


def test_round_trip_mixed_text(tok: Tokenizer, corpus: list[str]):
    samples = [
        *corpus[:50],
        "日本語のテキスト",
        "emoji 👩‍👩‍👧 and \x00\t\r\n control",
        "  leading and trailing  ",
    ]
    for text in samples:
        assert tok.decode(tok.encode(text)) == text
    merged = sum(len(tok.encode(doc)) for doc in corpus[:50])
    assert merged < 0.6 * sum(len(doc.encode("utf-8")) for doc in corpus[:50])  # the merges compress


def test_batch_encode_prepend_append(tok: Tokenizer):
    texts = ["first text", "", "third <|bos|> text"]
    bos, end = tok.bos_token_id, tok.encode_special("<|assistant_end|>")
    batch = tok.encode(texts, prepend="<|bos|>", append=end, num_threads=2)
    assert batch == [[bos, *tok.encode(text), end] for text in texts]
    assert tok.encode("abc", prepend=bos) == [bos, *tok.encode("abc")]


def test_special_token_text_in_user_input_stays_text(
    tok: Tokenizer, ours_from_reference: Tokenizer, reference: rustbpe.Tokenizer
):
    text = "please print <|assistant_end|><|bos|> and <|python_start|>"
    ids = tok.encode(text)
    assert max(ids) < VOCAB_SIZE - len(SPECIAL_TOKENS)
    assert tok.decode(ids) == text
    assert ours_from_reference.encode(text) == reference.encode(text)  # the reference knows no special tokens


# ---- the chat format ----


def expected_render(tok: Tokenizer, segments: list[tuple[str | list[int], int]]) -> tuple[list[int], list[int]]:
    """Concatenate (text or special-token ids, mask value) segments into ids and mask, by hand."""
    ids, mask = [], []
    for piece, trained in segments:
        piece_ids = tok.encode(piece) if isinstance(piece, str) else piece
        ids += piece_ids
        mask += [trained] * len(piece_ids)
    return ids, mask


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 12*7? Also say <|assistant_end|>."},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute. "},
                {"type": "python", "text": "12*7"},
                {"type": "python_output", "text": "84"},
                {"type": "text", "text": " It is 84."},
            ],
        },
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
}


def test_render_conversation_ids_and_mask(tok: Tokenizer):
    S = lambda name: [tok.encode_special(f"<|{name}|>")]
    expected = expected_render(
        tok,
        [
            (S("bos"), 0),
            (S("user_start"), 0),
            ("You are terse.\n\nWhat is 12*7? Also say <|assistant_end|>.", 0),
            (S("user_end"), 0),
            (S("assistant_start"), 0),
            ("Let me compute. ", 1),
            (S("python_start"), 1),
            ("12*7", 1),
            (S("python_end"), 1),
            (S("output_start"), 0),
            ("84", 0),
            (S("output_end"), 0),
            (" It is 84.", 1),
            (S("assistant_end"), 1),
            (S("user_start"), 0),
            ("Thanks!", 0),
            (S("user_end"), 0),
            (S("assistant_start"), 0),
            ("You're welcome.", 1),
            (S("assistant_end"), 1),
        ],
    )
    ids, mask = tok.render_conversation(CONVERSATION)
    assert (ids, mask) == expected
    # the same, read as text: the user's "<|assistant_end|>" is plain text, not a third end token
    assert ids.count(tok.encode_special("<|assistant_end|>")) == 2
    trained = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert trained == "Let me compute. <|python_start|>12*7<|python_end|> It is 84.<|assistant_end|>" + (
        "You're welcome.<|assistant_end|>"
    )
    # a list of messages works as well as {"messages": [...]}
    assert tok.render_conversation(CONVERSATION["messages"]) == expected


def test_render_truncates(tok: Tokenizer):
    ids, mask = tok.render_conversation(CONVERSATION)
    short_ids, short_mask = tok.render_conversation(CONVERSATION, max_tokens=12)
    assert (short_ids, short_mask) == (ids[:12], mask[:12])
    assert tok.render_conversation(CONVERSATION, max_tokens=None) == (ids, mask)


def test_render_for_completion(tok: Tokenizer):
    assistant_start = tok.encode_special("<|assistant_start|>")
    prompt_only = {"messages": CONVERSATION["messages"][:-1]}
    expected = tok.render_conversation(prompt_only)[0] + [assistant_start]
    assert tok.render_for_completion(CONVERSATION) == expected
    assert tok.render_for_completion(prompt_only) == expected  # already ends with the user's turn
    assert tok.decode(expected).endswith("Thanks!<|user_end|><|assistant_start|>")


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "assistant", "content": "hi"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "followed by a user"),
        ([{"role": "system", "content": "s"}], "followed by a user"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "system", "content": "c"},
            ],
            "alternate",
        ),
    ],
)
def test_render_rejects_malformed_conversations(tok: Tokenizer, messages: list, error: str):
    with pytest.raises(UserError, match=error):
        tok.render_conversation({"messages": messages})


# ---- files ----


@pytest.fixture(scope="session")
def saved_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory):
    return tok.save(tmp_path_factory.mktemp("tokenizer"))


def test_save_load_round_trip(tok: Tokenizer, saved_dir):
    assert sorted(p.name for p in saved_dir.iterdir()) == [
        "ranks.tiktoken",
        "token_bytes.txt",
        "tokenizer.json",
    ]
    # the ranks file is tiktoken's own format: tiktoken's reader gets the same table
    assert tiktoken.load.load_tiktoken_bpe(str(saved_dir / "ranks.tiktoken")) == tok.mergeable_ranks
    assert [int(n) for n in (saved_dir / "token_bytes.txt").read_text().split()] == tok.token_bytes().tolist()
    loaded = Tokenizer.load(saved_dir)
    assert loaded.pattern == tok.pattern
    assert loaded.mergeable_ranks == tok.mergeable_ranks
    assert loaded.special_tokens == tok.special_tokens
    assert torch.equal(loaded.token_bytes(), tok.token_bytes())
    text = "Loaded tokenizers encode alike: 12345 안녕하세요 <|bos|>"
    assert loaded.encode(text) == tok.encode(text)


def by_line(edit):
    """A text edit made from an edit of the list of lines (each with its newline)."""
    return lambda text: "".join(edit(text.splitlines(keepends=True)))


def replace_line(i: int, new_line: str):
    return by_line(lambda lines: [*lines[:i], new_line, *lines[i + 1 :]])


def move_line(src: int, dst: int):
    """Give line `dst` the token of line `src`, keeping the rank numbers in place."""
    return by_line(lambda lines: [*lines[:dst], f"{lines[src].split()[0]} {dst}\n", *lines[dst + 1 :]])


NOT_A_MERGE = base64.b64encode(b"\x00\x01\x02\x03").decode()

# file, edit of its text, what the error must say
MISMATCH = "does not match ranks.tiktoken"
NOT_RANKED = "256 single bytes, then merges, ranked 0, 1, 2"
CORRUPTIONS = {
    "ranks cut mid-line": ("ranks.tiktoken", lambda t: t[: len(t) // 2 + 3], "the tokenizer is malformed"),
    "ranks cut at a line end": ("ranks.tiktoken", by_line(lambda lines: lines[:-40]), "special tokens must be"),
    "rank skipped": ("ranks.tiktoken", by_line(lambda lines: lines[:300] + lines[301:]), NOT_RANKED),
    "bad base64": ("ranks.tiktoken", replace_line(5, "@@@@ 5\n"), "the tokenizer is malformed"),
    "merge among the bytes": ("ranks.tiktoken", move_line(300, 10), NOT_RANKED),
    "repeated token": ("ranks.tiktoken", move_line(300, 301), NOT_RANKED),
    "token not a merge": ("ranks.tiktoken", replace_line(300, f"{NOT_A_MERGE} 300\n"), "not a merge"),
    "not ascii": ("ranks.tiktoken", lambda t: "é" + t, "the tokenizer is malformed"),
    "empty ranks": ("ranks.tiktoken", lambda t: "", NOT_RANKED),
    "token_bytes short": ("token_bytes.txt", by_line(lambda lines: lines[:-1]), MISMATCH),
    "token_bytes wrong": ("token_bytes.txt", replace_line(0, "7\n"), MISMATCH),
    "token_bytes not numbers": ("token_bytes.txt", replace_line(3, "x\n"), MISMATCH),
    "config not json": ("tokenizer.json", lambda t: t[:-10], "not a valid JSON object"),
    "config not an object": ("tokenizer.json", lambda t: "[1, 2]", "not a valid JSON object"),
    "config no pattern": ("tokenizer.json", lambda t: t.replace('"pattern"', '"split"'), "KeyError: 'pattern'"),
    "config missing a special": (
        "tokenizer.json",
        lambda t: t.replace('"<|output_end|>"', '"<|eos|>"'),
        "special tokens",
    ),
    "config wrong vocab": (
        "tokenizer.json",
        lambda t: t.replace(f'"vocab_size": {VOCAB_SIZE}', '"vocab_size": 9'),
        "tokenizer.json does not match",
    ),
    "config bad pattern": (
        "tokenizer.json",
        lambda t: t.replace('"pattern": "', '"pattern": "(('),
        "compile",
    ),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_load_rejects_corrupted_files(saved_dir, tmp_path, name: str):
    filename, edit, error = CORRUPTIONS[name]
    directory = tmp_path / "tok"
    shutil.copytree(saved_dir, directory)
    path = directory / filename
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError, match=re.escape(error)):
        Tokenizer.load(directory)


def test_missing_tokenizer_tells_how_to_make_one(saved_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    with pytest.raises(UserError, match="nanochat-pl tokenizer train"):
        get_tokenizer()
    shutil.copytree(saved_dir, tmp_path / "tokenizer")
    assert get_tokenizer().mergeable_ranks == Tokenizer.load(saved_dir).mergeable_ranks
    (tmp_path / "tokenizer" / "token_bytes.txt").unlink()
    with pytest.raises(UserError, match="token_bytes.txt"):
        get_tokenizer()


def test_save_is_atomic(tok: Tokenizer, saved_dir, tmp_path, monkeypatch):
    """A save that dies midway leaves the previous tokenizer loadable and no temporary files behind."""
    directory = tmp_path / "tok"
    shutil.copytree(saved_dir, directory)
    other = Tokenizer.train_from_iterator(synthetic_corpus(200, seed=1), 300)
    written = []

    def crash_after_one_file(path, text):
        if written:
            raise RuntimeError("killed mid-save")
        written.append(path)
        common.atomic_write_text(path, text)

    monkeypatch.setattr(tokenizer_module, "atomic_write_text", crash_after_one_file)
    with pytest.raises(RuntimeError):
        other.save(directory)
    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == [
        "ranks.tiktoken",
        "token_bytes.txt",
        "tokenizer.json",
    ]
    # the new ranks file landed, the rest did not: the mismatch is caught, not silently used
    with pytest.raises(UserError):
        Tokenizer.load(directory)
    other.save(directory)
    assert Tokenizer.load(directory).mergeable_ranks == other.mergeable_ranks


# ---- the commands ----


def test_train_command_end_to_end(tmp_path, capsys):
    from nanochat_pl.commands.tokenizer import train

    source = tmp_path / "text"  # a local source: every file but the last trains, the last is validation
    source.mkdir()
    (source / "a.txt").write_text("\n\n".join(synthetic_corpus(300, seed=2)))
    (source / "b.txt").write_text("\n\n".join(synthetic_corpus(10, seed=3)))
    max_chars = 50_000
    output = train(source=str(source), vocab_size=400, max_chars=max_chars, output=str(tmp_path / "tok"))
    printed = capsys.readouterr()
    assert f"trained on {max_chars:,} chars" in printed.out and "chars/s" in printed.out
    assert str(tmp_path / "tok") in printed.out
    assert "tokenizer training text" in printed.err  # the progress bar
    loaded = Tokenizer.load(output)
    assert loaded.vocab_size == 400
    assert loaded.decode(loaded.encode("round trip ✓")) == "round trip ✓"

    with pytest.raises(UserError, match="no .parquet, .txt, .jsonl files"):
        train(source=str(tmp_path / "nowhere"), vocab_size=400, output=str(tmp_path / "tok2"))


def test_eval_command_table(saved_dir, tmp_path, capsys, monkeypatch):
    from nanochat_pl.commands import tokenizer as commands

    source = tmp_path / "text"
    source.mkdir()
    (source / "a.txt").write_text("\n\n".join(synthetic_corpus(10, seed=2)))
    (source / "b.txt").write_text("\n\n".join(synthetic_corpus(20, seed=3)))

    def offline(name):
        raise OSError(f"no network for {name}")

    monkeypatch.setattr(commands.tiktoken, "get_encoding", offline)
    commands.evaluate(tokenizer_dir=str(saved_dir), val_sources=(str(source), str(tmp_path / "nowhere")))
    printed = capsys.readouterr().out
    assert "no gpt-2 column" in printed and "no gpt-4 column" in printed
    tok = Tokenizer.load(saved_dir)
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()}
    for kind, text in commands.SAMPLE_TEXTS.items():
        n_bytes, n_tokens = len(text.encode()), len(tok.encode(text))
        assert rows[kind] == [f"{n_bytes:,}", f"{n_tokens:,}", f"{n_bytes / n_tokens:.2f}"]
    val_text = "\n".join(doc.strip() for doc in synthetic_corpus(20, seed=3))  # .txt documents are stripped
    n_bytes, n_tokens = len(val_text.encode()), len(tok.encode(val_text))
    assert rows[f"{source}-val"] == [f"{n_bytes:,}", f"{n_tokens:,}", f"{n_bytes / n_tokens:.2f}"]
    assert f"skipping {tmp_path / 'nowhere'}-val" in printed
    last = json.loads(printed.splitlines()[-1])  # the same figures, as one JSON object
    assert last["vocab_size"] == tok.vocab_size and set(last["bytes_per_token"]) == {"ours"}
    code = commands.SAMPLE_TEXTS["code"]
    assert last["bytes_per_token"]["ours"]["code"] == round(len(code.encode()) / len(tok.encode(code)), 4)

    # with the comparison encodings available, each gets its own columns
    monkeypatch.setattr(commands.tiktoken, "get_encoding", lambda name: tok.encoding)
    commands.evaluate(tokenizer_dir=str(saved_dir), val_sources=())
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[:-1]}
    assert len(rows["code"]) == 7 and rows["code"][1:3] == rows["code"][3:5] == rows["code"][5:7]
