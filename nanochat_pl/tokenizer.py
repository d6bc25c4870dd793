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

from nanochat_pl import nanochat_format
from nanochat_pl._rustbpe import Tokenizer as RustBPETrainer
from nanochat_pl.common import CHECKPOINT_KEY, UserError, atomic_write_text, home_dir

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
        atomic_write_text(directory / RANKS_FILE, _ranks_text(self.mergeable_ranks))
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
        vocab_size = len(ranks) + len(SPECIAL_TOKENS)
        if config["vocab_size"] != vocab_size:
            raise UserError(
                f"{directory / RANKS_FILE} makes a vocabulary of {vocab_size} but {CONFIG_FILE} "
                f"says vocab_size {config['vocab_size']} (truncated or mismatched files?)"
            )
        tokenizer = cls._checked(config["pattern"], ranks, config["special_tokens"], str(directory / CONFIG_FILE))
        _check_token_bytes(directory / TOKEN_BYTES_FILE, tokenizer.token_bytes().tolist())
        return tokenizer

    def to_state(self) -> dict[str, Any]:
        """The tokenizer as plain data (about 1 MB at 65,536 tokens): checkpoints carry it, so a checkpoint
        copied to another machine still has its tokenizer. The merge table is the ranks file's text."""
        return {
            "pattern": self.pattern,
            "ranks": _ranks_text(self.mergeable_ranks),
            "special_tokens": self.special_tokens,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: str) -> Tokenizer:
        """The tokenizer `to_state` gave, checked as a saved one is; `where` names its source in errors."""
        if not isinstance(state, Mapping) or not all(isinstance(state.get(k), str) for k in ("pattern", "ranks")):
            raise UserError(f"{where}: the tokenizer it carries is malformed (no pattern or merge table)")
        ranks = _parse_ranks(state["ranks"].splitlines(), where)
        return cls._checked(state["pattern"], ranks, state.get("special_tokens"), where)

    @classmethod
    def from_nanochat(cls, path: str | Path) -> Tokenizer:
        """nanochat's tokenizer.pkl (a pickled tiktoken.Encoding), read without running pickled code."""
        pattern, ranks, specials = nanochat_format.read_tokenizer_pickle(path)
        tokens = sorted(ranks, key=ranks.__getitem__)
        if [ranks[t] for t in tokens] != list(range(len(tokens))):
            raise UserError(f"{path}: the merge table's ranks must be 0, 1, 2, ... without gaps")
        return cls._checked(pattern, _check_ranks(tokens, str(path)), specials, str(path))

    @classmethod
    def _checked(cls, pattern: str, ranks: dict[bytes, int], specials: Any, where: str) -> Tokenizer:
        tokenizer = cls(pattern, ranks)
        if specials != tokenizer.special_tokens:
            raise UserError(
                f"{where}: special tokens must be {', '.join(SPECIAL_TOKENS)} "
                f"with ids {len(ranks)}..{tokenizer.vocab_size - 1} in that order"
            )
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


def get_tokenizer(location: str | Path | None = None) -> Tokenizer:
    """The tokenizer at `location`; by default the one `nanochat-pl tokenizer train` wrote to the home.

    `location` may be a tokenizer directory of ours, nanochat's tokenizer.pkl (any .pkl) or a directory holding one, a
    nanochat checkpoint (its tokenizer is found as nanochat keeps it), or a checkpoint of ours, which carries its
    tokenizer (checkpoints written before they did name a directory, which is read instead)."""
    path = tokenizer_location(location)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return Tokenizer.load(path)
    if (path.is_file() and path.suffix == ".pkl") or (path / nanochat_format.TOKENIZER_PICKLE).is_file():
        return Tokenizer.from_nanochat(path if path.is_file() else path / nanochat_format.TOKENIZER_PICKLE)
    if nanochat_format.is_nanochat_checkpoint(path) and (path.is_file() or any(path.glob("**/model_*.pt"))):
        pickled = nanochat_format.find_tokenizer_pickle(nanochat_format.find_model_file(path))
        if pickled is None:
            raise UserError(f"no nanochat tokenizer.pkl beside {path} or in its base directory's tokenizer/")
        return Tokenizer.from_nanochat(pickled)
    if path.is_file():
        try:  # memory-mapped: the weights are not read
            meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)[CHECKPOINT_KEY]
        except Exception as error:  # a foreign or truncated file raises many kinds
            raise UserError(
                f"{path} is neither a tokenizer nor a nanochat-pl checkpoint: {str(error)[:200]}"
            ) from error
        return carried_tokenizer(meta, path)
    return Tokenizer.load(path)  # says what is missing


def carried_tokenizer(meta: Mapping[str, Any], path: str | Path) -> Tokenizer:
    """The tokenizer a checkpoint's metadata entry (`meta`, from checkpoint `path`) carries, or for a checkpoint
    written before they carried one, the directory it names."""
    if meta.get("tokenizer") is not None:
        return Tokenizer.from_state(meta["tokenizer"], str(path))
    if meta.get("tokenizer_dir") is None:
        raise UserError(f"{path} has no tokenizer with it or beside it: give one with --tokenizer_dir")
    return get_tokenizer(meta["tokenizer_dir"])


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


def _ranks_text(ranks: Mapping[bytes, int]) -> str:
    """The merge table as tiktoken's file format: one "base64(token) rank" line per token, in rank order."""
    tokens = sorted(ranks, key=ranks.__getitem__)
    return "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n" for rank, token in enumerate(tokens))


def _read_ranks(path: Path) -> dict[bytes, int]:
    try:
        lines = path.read_bytes().decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} must be ASCII 'base64 rank' lines ({e})") from e
    return _parse_ranks(lines, str(path))


def _parse_ranks(lines: list[str], where: str) -> dict[bytes, int]:
    """Parse "base64 rank" lines whose ranks are 0, 1, 2, ... in order, then check the table (`_check_ranks`)."""
    tokens = []
    for rank, line in enumerate(lines):
        fields = line.split()
        if len(fields) != 2:
            raise UserError(f"{where}:{rank + 1}: expected 'base64-token rank', got {line!r:.80}")
        try:
            tokens.append(base64.b64decode(fields[0], validate=True))
        except binascii.Error as e:
            raise UserError(f"{where}:{rank + 1}: invalid base64 {fields[0]!r:.80} ({e})") from e
        if fields[1] != str(rank):
            raise UserError(
                f"{where}:{rank + 1}: expected rank {rank} (ranks are 0, 1, 2, ... in order), got {fields[1]!r}"
            )
    return _check_ranks(tokens, where)


def _check_ranks(tokens: list[bytes], where: str) -> dict[bytes, int]:
    """The merge table of `tokens` in rank order, checked: the first 256 the single bytes, and every later token
    the concatenation of two earlier ones (what BPE training produces)."""
    ranks: dict[bytes, int] = {}
    for rank, token in enumerate(tokens):
        if not token or token in ranks:
            raise UserError(f"{where}:{rank + 1}: token {token!r} is empty or repeated")
        if rank < 256 and len(token) != 1:
            raise UserError(f"{where}:{rank + 1}: ranks 0..255 must be the 256 single bytes, got {token!r}")
        if rank >= 256 and not _is_merge_of_earlier(token, rank, ranks):
            raise UserError(f"{where}:{rank + 1}: token {token!r} is not a merge of two earlier tokens")
        ranks[token] = rank
    if len(ranks) < 256:
        raise UserError(f"{where} has {len(ranks)} tokens; it needs at least the 256 single bytes (truncated?)")
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
