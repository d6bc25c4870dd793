"""The tokenizer: byte-level BPE trained by our Rust trainer, run by tiktoken, plus the chat format.

Training counts and merges in Rust (`nanochat_pl._rustbpe`); the resulting merge table becomes a
`tiktoken.Encoding`, which encodes fast and never turns user text into special tokens (we only call its
`encode_ordinary*` methods). Special tokens are appended after the merges, as nanochat does
(nanochat tokenizer.py@92d63d4).

On disk a tokenizer is a directory of three readable files, each written atomically:

    ranks.tiktoken   one "base64(token bytes) rank" line per merge-table entry, ranks 0, 1, 2, ...
    token_bytes.txt  one integer per token id: its length in bytes, 0 for special tokens (for bits per byte)
    tokenizer.json   the split pattern, the vocabulary size and the special tokens with their ids

Loading parses these files (nothing is unpickled) and rejects anything malformed with a one-line UserError.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken
import torch

from nanochat_pl._rustbpe import Tokenizer as RustBPETrainer
from nanochat_pl.common import UserError, atomic_write_text, home_dir

# nanochat's 9 special tokens, in id order right after the merges (nanochat tokenizer.py@dfc8833)
SPECIAL_TOKENS = (
    "<|bos|>",  # begins every document; documents are delimited by it
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the calculator tool...
    "<|python_end|>",
    "<|output_start|>",  # ...and the tool's result is fed back between these
    "<|output_end|>",
)

# GPT-4's split pattern with numbers split into groups of at most 2 digits instead of 3: better val bpb at
# small vocabularies (nanochat dev/LOG.md 2026-01-13, d12/32K: {1,1} 0.969, {1,2} 0.965, {1,3} 0.972)
SPLIT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)"  # contractions: 's 'd 'm 't 'll 've 're
    r"|[^\r\n\p{L}\p{N}]?+\p{L}+"  # a word, with the one space or symbol before it
    r"|\p{N}{1,2}"  # numbers, at most two digits per piece
    r"| ?[^\s\p{L}\p{N}]++[\r\n]*"  # a run of punctuation/symbols and the newlines after it
    r"|\s*[\r\n]"  # whitespace up to a line break
    r"|\s+(?!\S)"  # whitespace, leaving the last space to the word after it
    r"|\s+"
)

RANKS_FILE = "ranks.tiktoken"
TOKEN_BYTES_FILE = "token_bytes.txt"
CONFIG_FILE = "tokenizer.json"

# the 256 single bytes plus the 9 special tokens: a vocabulary without a single merge
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# what the assistant may put in a turn besides plain text (nanochat tokenizer.py@92d63d4)
ASSISTANT_PART_TYPES = ("text", "python", "python_output")


class Tokenizer:
    """A trained BPE merge table and split pattern, with the special tokens and the chat format on top."""

    def __init__(self, pattern: str, mergeable_ranks: Mapping[bytes, int]):
        self.pattern = pattern
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = {name: len(self.mergeable_ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        try:
            self.encoding = tiktoken.Encoding(
                name="nanochat-pl",
                pat_str=pattern,
                mergeable_ranks=self.mergeable_ranks,
                special_tokens=self.special_tokens,
            )
        except ValueError as e:  # tiktoken compiles the pattern here
            raise UserError(f"tokenizer split pattern does not compile: {e}") from e

    # ---- training, saving, loading ----

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int, pattern: str | None = None) -> Tokenizer:
        """Train on a stream of documents; `vocab_size` counts bytes, merges and special tokens together."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise UserError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 9 special tokens)")
        pattern = SPLIT_PATTERN if pattern is None else pattern
        trainer = RustBPETrainer()
        # the trainer learns bytes + merges; the special tokens take the last ids (nanochat tok_train.py)
        trainer.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
        return cls(trainer.get_pattern(), dict(trainer.get_mergeable_ranks()))

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer's three files into `directory` (created if needed); return the directory."""
        directory = Path(directory)
        tokens = sorted(self.mergeable_ranks, key=self.mergeable_ranks.__getitem__)
        ranks_text = "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n" for rank, token in enumerate(tokens))
        atomic_write_text(directory / RANKS_FILE, ranks_text)
        atomic_write_text(directory / TOKEN_BYTES_FILE, "".join(f"{n}\n" for n in self.token_bytes().tolist()))
        config = {
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens,
        }
        # written last: after a crash before this, load() checks the new files against the previous config
        atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save`, checking every file; raises UserError on anything malformed."""
        directory = Path(directory)
        for name in (CONFIG_FILE, RANKS_FILE, TOKEN_BYTES_FILE):
            if not (directory / name).is_file():
                raise UserError(f"no tokenizer at {directory} (no {name}): run `nanochat-pl tokenizer train` first")
        config = _read_config(directory / CONFIG_FILE)
        ranks = _read_ranks(directory / RANKS_FILE)
        tokenizer = cls(config["pattern"], ranks)
        if config["vocab_size"] != tokenizer.vocab_size:
            raise UserError(
                f"{directory / RANKS_FILE} makes a vocabulary of {tokenizer.vocab_size} but {CONFIG_FILE} "
                f"says vocab_size {config['vocab_size']} (truncated or mismatched files?)"
            )
        if config["special_tokens"] != tokenizer.special_tokens:
            raise UserError(
                f"{directory / CONFIG_FILE}: special tokens must be {', '.join(SPECIAL_TOKENS)} "
                f"with ids {len(ranks)}..{tokenizer.vocab_size - 1} in that order"
            )
        _check_token_bytes(directory / TOKEN_BYTES_FILE, tokenizer.token_bytes().tolist())
        return tokenizer

    # ---- the vocabulary ----

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def bos_token_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    def encode_special(self, name: str) -> int:
        """The id of a special token given its text, e.g. "<|assistant_end|>"."""
        if name not in self.special_tokens:
            raise UserError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}")
        return self.special_tokens[name]

    def token_bytes(self) -> torch.Tensor:
        """int32 [vocab_size]: how many bytes of text each token id stands for, 0 for special tokens.

        Measured from the raw token bytes, not from decoded strings (nanochat 2ce972a: decoding mis-measured
        tokens that are partial UTF-8 sequences).
        """
        lengths = [0] * self.vocab_size
        for token, rank in self.mergeable_ranks.items():
            lengths[rank] = len(token)
        return torch.tensor(lengths, dtype=torch.int32)

    # ---- encoding and decoding ----

    def encode(
        self,
        text: str | Sequence[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int] | list[list[int]]:
        """Encode ordinary text (one string, or a batch in parallel); special-token text stays plain text.

        `prepend` / `append` add one token, given by id or special-token name, to each encoded text.
        """
        before = [] if prepend is None else [self._token_id(prepend)]
        after = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return before + self.encoding.encode_ordinary(text) + after
        batch = self.encoding.encode_ordinary_batch(list(text), num_threads=num_threads)
        return [before + ids + after for ids in batch]

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def _token_id(self, token: int | str) -> int:
        return self.encode_special(token) if isinstance(token, str) else token

    # ---- the chat format ----

    def render_conversation(
        self, conversation: Mapping[str, Any] | Sequence[Mapping[str, Any]], max_tokens: int | None = 2048
    ) -> tuple[list[int], list[int]]:
        """Token ids of a conversation in nanochat's chat format and the loss mask (1 = the model learns it).

            <|bos|><|user_start|>…<|user_end|><|assistant_start|>…<|assistant_end|><|user_start|>…

        The mask is 1 on everything the assistant writes (its text, its tool calls
        <|python_start|>…<|python_end|>, and <|assistant_end|>) and 0 on the rest: <|bos|>, the user's turns,
        <|assistant_start|> (the prompt asks for it) and tool outputs <|output_start|>…<|output_end|> (the
        tool writes them). Ids and mask are cut to `max_tokens` (None: no cut). nanochat tokenizer.py@92d63d4.
        """
        ids, mask = self._render(_chat_messages(conversation))
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, conversation: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt asking for the assistant's next turn: the conversation without its last assistant
        turn (if it ends with one), followed by <|assistant_start|>. Not truncated."""
        messages = _chat_messages(conversation)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        ids, _ = self._render(messages)
        return ids + [self.encode_special("<|assistant_start|>")]

    def _render(self, messages: list[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mask: list[int] = []

        def add(token_ids: list[int], trained: bool) -> None:
            ids.extend(token_ids)
            mask.extend([int(trained)] * len(token_ids))

        special = self.encode_special
        add([self.bos_token_id], False)
        for message in messages:
            if message["role"] == "user":
                add(
                    [special("<|user_start|>"), *self.encode(message["content"]), special("<|user_end|>")],
                    False,
                )
                continue
            add([special("<|assistant_start|>")], False)
            for kind, text in _assistant_parts(message["content"]):
                if kind == "text":
                    add(self.encode(text), True)
                elif kind == "python":
                    add([special("<|python_start|>"), *self.encode(text), special("<|python_end|>")], True)
                else:
                    add([special("<|output_start|>"), *self.encode(text), special("<|output_end|>")], False)
            add([special("<|assistant_end|>")], True)
        return ids, mask

    def visualize(self, ids: Sequence[int], mask: Sequence[int]) -> str:
        """The tokens of a rendered conversation for a terminal: trained ones green, the rest grey, each
        token boxed by '|' so token boundaries show."""
        green, grey, reset = "\033[92m", "\033[90m", "\033[0m"
        return "".join(
            f"{green if trained else grey}{self.decode([token])}|{reset}"
            for token, trained in zip(ids, mask, strict=True)
        )


def tokenizer_location(directory: str | Path | None = None) -> Path:
    """Where a tokenizer lives: `directory`, or by default the one `nanochat-pl tokenizer train` writes."""
    return (home_dir() / "tokenizer" if directory is None else Path(directory)).expanduser().resolve()


def get_tokenizer(directory: str | Path | None = None) -> Tokenizer:
    """The tokenizer in `directory`; by default the one `nanochat-pl tokenizer train` wrote to the home."""
    return Tokenizer.load(tokenizer_location(directory))


# ---- checking the chat format ----


def _chat_messages(conversation: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages of a conversation (`{"messages": [...]}` or the list itself), checked, with a leading
    system message merged into the first user turn (nanochat tokenizer.py@92d63d4)."""
    messages = list(conversation["messages"] if isinstance(conversation, Mapping) else conversation)
    if not messages:
        raise UserError("a conversation needs at least one message")
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise UserError(f"each message needs a 'role' and a 'content', got {message!r:.100}")
    if messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise UserError("a system message must be followed by a user message")
        system, first = messages[0], messages[1]
        if not isinstance(system["content"], str):
            raise UserError("a system message's content must be a string")
        merged_content = f"{system['content']}\n\n{first['content']}"
        messages = [{**first, "content": merged_content}, *messages[2:]]
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise UserError(
                f"message {i} has role {message['role']!r} but roles must alternate user/assistant, "
                f"starting with user (an optional system message may come first)"
            )
        if expected == "user" and not isinstance(message["content"], str):
            raise UserError(f"message {i}: a user message's content must be a string")
    return messages


def _assistant_parts(content: str | Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str]]:
    """(type, text) for each part of an assistant turn: plain text, or a list of typed parts."""
    if isinstance(content, str):
        yield "text", content
        return
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") not in ASSISTANT_PART_TYPES:
            raise UserError(f"an assistant part needs a type in {ASSISTANT_PART_TYPES}, got {part!r:.100}")
        if not isinstance(part.get("text"), str):
            raise UserError(f"an assistant part needs a string 'text', got {part!r:.100}")
        yield part["type"], part["text"]


# ---- reading the files ----


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} must hold a JSON object")
    for key, kind in (("pattern", str), ("vocab_size", int), ("special_tokens", dict)):
        if not isinstance(config.get(key), kind):
            raise UserError(f"{path} needs a {kind.__name__} '{key}'")
    return config


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse and check a merge table: ranks 0..n-1 in order, the first 256 the single bytes, and every
    later token the concatenation of two earlier ones (what BPE training produces)."""
    try:
        lines = path.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} must be ASCII 'base64 rank' lines ({e})") from e
    ranks: dict[bytes, int] = {}
    for rank, line in enumerate(lines):
        where = f"{path}:{rank + 1}"
        fields = line.split()
        if len(fields) != 2:
            raise UserError(f"{where}: expected 'base64-token rank', got {line!r:.80}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except binascii.Error as e:
            raise UserError(f"{where}: invalid base64 {fields[0]!r:.80} ({e})") from e
        if fields[1] != str(rank):
            raise UserError(f"{where}: expected rank {rank} (ranks are 0, 1, 2, ... in order), got {fields[1]!r}")
        if not token or token in ranks:
            raise UserError(f"{where}: token {token!r} is empty or repeated")
        if rank < 256 and len(token) != 1:
            raise UserError(f"{where}: ranks 0..255 must be the 256 single bytes, got {token!r}")
        if rank >= 256 and not _is_merge_of_earlier(token, rank, ranks):
            raise UserError(f"{where}: token {token!r} is not a merge of two earlier tokens")
        ranks[token] = rank
    if len(ranks) < 256:
        raise UserError(f"{path} has {len(ranks)} tokens; it needs at least the 256 single bytes (truncated?)")
    return ranks


def _is_merge_of_earlier(token: bytes, rank: int, ranks: dict[bytes, int]) -> bool:
    return any(
        ranks.get(token[:cut], rank) < rank and ranks.get(token[cut:], rank) < rank for cut in range(1, len(token))
    )


def _check_token_bytes(path: Path, expected: list[int]) -> None:
    try:
        found = [int(line) for line in path.read_text(encoding="ascii").split()]
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} must hold one integer per line ({e})") from e
    if len(found) != len(expected):
        raise UserError(f"{path} has {len(found)} entries, expected one per token id: {len(expected)}")
    if found != expected:
        first = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
        raise UserError(f"{path}: token {first} has {expected[first]} bytes in the merge table, not {found[first]}")
