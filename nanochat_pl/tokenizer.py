"""The tokenizer: byte-level BPE trained by our Rust trainer, run by tiktoken, plus the chat format.

Training counts and merges in Rust (`nanochat_pl._rustbpe`), splitting text with GPT-4's pattern, numbers in groups
of at most 2 digits (as nanochat); the merge table becomes a `tiktoken.Encoding`, which encodes fast and never turns
user text into special tokens (we only call `encode_ordinary*`). Special tokens follow the merges, as in nanochat.

On disk a tokenizer is a directory of three readable files, each written atomically:

    ranks.tiktoken   one "base64(token bytes) rank" line per merge-table entry, ranks 0, 1, 2, ...
    token_bytes.txt  one integer per token id: its length in bytes, 0 for special tokens (for bits per byte)
    tokenizer.json   the split pattern, the vocabulary size and the special tokens with their ids

Loading parses these files (nothing is unpickled) and rejects anything malformed with a one-line UserError.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken
import torch

from nanochat_pl import nanochat_format
from nanochat_pl._rustbpe import Tokenizer as RustBPETrainer
from nanochat_pl.common import CHECKPOINT_KEY, UserError, atomic_write_text, home_dir

# nanochat's 9 special tokens, in id order right after the merges (nanochat tokenizer.py@dfc8833): <|bos|> begins every
# document; the assistant calls the calculator between python_start/end, the tool's result comes back between output_*
SPECIAL_TOKENS = ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>")
SPECIAL_TOKENS += ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")

RANKS_FILE, TOKEN_BYTES_FILE, CONFIG_FILE = "ranks.tiktoken", "token_bytes.txt", "tokenizer.json"

# the 256 single bytes plus the 9 special tokens: a vocabulary without a single merge
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


class Tokenizer:
    """A trained BPE merge table and split pattern, with the special tokens and the chat format on top."""

    def __init__(self, pattern: str, mergeable_ranks: Mapping[bytes, int]):
        self.pattern = pattern
        self.mergeable_ranks = ranks = dict(mergeable_ranks)
        self.special_tokens = specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        try:
            self.encoding = tiktoken.Encoding(
                "nanochat-pl", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
            )
        except ValueError as e:  # tiktoken compiles the pattern here
            raise UserError(f"tokenizer split pattern does not compile: {e}") from e

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train on a stream of documents; `vocab_size` counts bytes, merges and special tokens together."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise UserError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 9 special tokens)")
        trainer = RustBPETrainer()
        # the trainer learns bytes + merges; the special tokens take the last ids (nanochat tok_train.py)
        trainer.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS))
        return cls(trainer.get_pattern(), dict(trainer.get_mergeable_ranks()))

    def _files(self) -> dict[str, str]:
        """The text of each file `save` writes, in the order it writes them."""
        config = {"pattern": self.pattern, "vocab_size": self.vocab_size, "special_tokens": self.special_tokens}
        return {
            RANKS_FILE: _ranks_text(self.mergeable_ranks),
            TOKEN_BYTES_FILE: "".join(f"{n}\n" for n in self.token_bytes().tolist()),
            # last: after a crash before it, load() finds the new files do not match the previous config
            CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        }

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer's three files into `directory` (created if needed); return the directory."""
        directory = Path(directory)
        for name, text in self._files().items():
            atomic_write_text(directory / name, text)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save`; a missing, malformed or mismatched file is a UserError."""
        directory = Path(directory)
        for name in (CONFIG_FILE, RANKS_FILE, TOKEN_BYTES_FILE):
            if not (directory / name).is_file():
                raise UserError(f"no tokenizer at {directory} (no {name}): run `nanochat-pl tokenizer train` first")
        try:
            config = json.loads((directory / CONFIG_FILE).read_bytes())
            state = {**config, "ranks": (directory / RANKS_FILE).read_text(encoding="utf-8", errors="replace")}
        except (ValueError, TypeError) as e:  # not UTF-8 JSON, or not a JSON object
            raise UserError(f"{directory / CONFIG_FILE} is not a valid JSON object ({e})") from e
        tokenizer = cls.from_state(state, str(directory))
        files = tokenizer._files()
        for name, parse in ((CONFIG_FILE, json.loads), (TOKEN_BYTES_FILE, str.split)):
            if parse((directory / name).read_text(encoding="utf-8", errors="replace")) != parse(files[name]):
                raise UserError(f"{directory / name} does not match {RANKS_FILE} (truncated or mismatched files?)")
        return tokenizer

    def to_state(self) -> dict[str, Any]:
        """Plain data (the ranks file's text; about 1 MB at 65,536 tokens): checkpoints carry their tokenizer."""
        return dict(pattern=self.pattern, ranks=_ranks_text(self.mergeable_ranks), special_tokens=self.special_tokens)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: str) -> Tokenizer:
        """The tokenizer `to_state` gave, checked as a saved one is; `where` names its source in errors."""
        try:
            lines = map(str.split, state["ranks"].splitlines())
            ranks = {base64.b64decode(token, validate=True): int(rank) for token, rank in lines}
            return cls._checked(state["pattern"], ranks, state.get("special_tokens"), where)
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # binascii.Error is a ValueError
            raise UserError(f"{where}: the tokenizer is malformed ({type(e).__name__}: {e})") from e

    @classmethod
    def from_nanochat(cls, path: str | Path) -> Tokenizer:
        """nanochat's tokenizer.pkl (a pickled tiktoken.Encoding), read without running pickled code."""
        return cls._checked(*nanochat_format.read_tokenizer_pickle(path), str(path))

    @classmethod
    def _checked(cls, pattern: str, ranks: dict[bytes, int], specials: Any, where: str) -> Tokenizer:
        """A tokenizer of a merge table read from outside, which must be what BPE training makes: ranks 0, 1, 2, ...,
        the 256 single bytes first, every later token a merge of two earlier ones; then our special tokens."""
        tokens = sorted(ranks, key=ranks.__getitem__)
        if [ranks[t] for t in tokens] != list(range(len(tokens))) or [len(t) for t in tokens[:256]] != [1] * 256:
            raise UserError(f"{where}: the merge table must be the 256 single bytes, then merges, ranked 0, 1, 2, ...")
        for rank, token in enumerate(tokens[256:], 256):
            if not any(
                ranks.get(token[:cut], rank) < rank and ranks.get(token[cut:], rank) < rank
                for cut in range(1, len(token))
            ):
                raise UserError(f"{where}: token {rank} ({token!r:.40}) is not a merge of two earlier tokens")
        tokenizer = cls(pattern, ranks)
        if specials != tokenizer.special_tokens:
            raise UserError(
                f"{where}: special tokens must be {', '.join(SPECIAL_TOKENS)} "
                f"with ids {len(ranks)}..{tokenizer.vocab_size - 1} in that order"
            )
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def bos_token_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    def encode_special(self, name: str) -> int:
        return self.special_tokens[name]

    def token_bytes(self) -> torch.Tensor:
        """int32 [vocab_size]: how many bytes of text each token id stands for, 0 for special tokens.
        Measured from the raw token bytes: decoding mis-measures tokens that are partial UTF-8 sequences."""
        lengths = [0] * self.vocab_size
        for token, rank in self.mergeable_ranks.items():
            lengths[rank] = len(token)
        return torch.tensor(lengths, dtype=torch.int32)

    def encode(
        self,
        text: str | Sequence[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int] | list[list[int]]:
        """Encode ordinary text (one string, or a batch in parallel); special-token text stays plain text.
        `prepend` / `append` add one token, given by id or special-token name, to each encoded text."""
        before = [self.special_tokens.get(prepend, prepend)] if prepend is not None else []
        after = [self.special_tokens.get(append, append)] if append is not None else []
        if isinstance(text, str):
            return before + self.encoding.encode_ordinary(text) + after
        batch = self.encoding.encode_ordinary_batch(list(text), num_threads=num_threads)
        return [before + ids + after for ids in batch]

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def render_conversation(
        self, conversation: Mapping[str, Any] | Sequence[Mapping[str, Any]], max_tokens: int | None = 2048
    ) -> tuple[list[int], list[int]]:
        """Token ids of a conversation in nanochat's chat format (tokenizer.py@92d63d4), cut to `max_tokens`, and the
        loss mask: 1 on what the assistant writes (its text, tool calls <|python_start|>…<|python_end|>,
        <|assistant_end|>), 0 on <|bos|>, the user's turns, <|assistant_start|> (the prompt asks for it) and tool
        outputs <|output_start|>…<|output_end|> (the tool writes them).

            <|bos|><|user_start|>…<|user_end|><|assistant_start|>…<|assistant_end|><|user_start|>…
        """
        ids, mask = self._render(_chat_messages(conversation))
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt asking for the assistant's next turn: the conversation without its last assistant
        turn (if it ends with one), followed by <|assistant_start|>. Not truncated."""
        messages = _chat_messages(conversation)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        ids, _ = self._render(messages)
        return ids + [self.special_tokens["<|assistant_start|>"]]

    def _render(self, messages: list[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
        ids, mask = [self.bos_token_id], [0]

        def add(text: str, trained: bool, start: str | None = None, end: str | None = None) -> None:
            token_ids = self.encode(text, prepend=start, append=end)
            ids.extend(token_ids)
            mask.extend([int(trained)] * len(token_ids))

        for message in messages:
            content = message["content"]
            if message["role"] == "user":
                add(content, False, "<|user_start|>", "<|user_end|>")
                continue
            add("", False, start="<|assistant_start|>")  # the prompt asks for it: not trained
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                if part["type"] == "text":
                    add(part["text"], True)
                elif part["type"] == "python":
                    add(part["text"], True, "<|python_start|>", "<|python_end|>")
                else:
                    add(part["text"], False, "<|output_start|>", "<|output_end|>")
            add("", True, end="<|assistant_end|>")
        return ids, mask


def tokenizer_location(directory: str | Path | None = None) -> Path:
    """Where a tokenizer lives: `directory`, or by default the one `nanochat-pl tokenizer train` writes."""
    return (home_dir() / "tokenizer" if directory is None else Path(directory)).expanduser().resolve()


def get_tokenizer(location: str | Path | None = None) -> Tokenizer:
    """The tokenizer at `location` (default: the one `tokenizer train` wrote): a tokenizer directory of ours,
    nanochat's tokenizer.pkl (any .pkl) or a directory holding one, a nanochat checkpoint (its tokenizer is found as
    nanochat keeps it), or a checkpoint of ours (`carried_tokenizer`)."""
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
            raise UserError(f"{path} is neither a tokenizer nor a nanochat-pl checkpoint: {error!s:.200}") from error
        return carried_tokenizer(meta, path)
    return Tokenizer.load(path)  # says what is missing


def carried_tokenizer(meta: Mapping[str, Any], path: str | Path) -> Tokenizer:
    """The tokenizer checkpoint `path`'s metadata `meta` carries (or, from before they did, the directory it names)."""
    if meta.get("tokenizer") is not None:
        return Tokenizer.from_state(meta["tokenizer"], str(path))
    if meta.get("tokenizer_dir") is None:
        raise UserError(f"{path} has no tokenizer with it or beside it: give one with --tokenizer_dir")
    return get_tokenizer(meta["tokenizer_dir"])


def _chat_messages(conversation: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages of a conversation (`{"messages": [...]}` or the list itself), a leading system message merged
    into the first user turn (nanochat tokenizer.py@92d63d4). The roles are checked: HTTP requests give them."""
    messages = list(conversation["messages"] if isinstance(conversation, Mapping) else conversation)
    if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        system, first = messages[0], messages[1]
        messages = [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *messages[2:]]
    for i, message in enumerate(messages):
        if message["role"] != ("user", "assistant")[i % 2]:
            raise UserError(
                f"message {i} has role {message['role']!r} but roles must alternate user/assistant, "
                "starting with user (an optional system message may come first, followed by a user message)"
            )
    return messages


def _ranks_text(ranks: Mapping[bytes, int]) -> str:
    """The merge table as tiktoken's file format: one "base64(token) rank" line per token, in rank order."""
    tokens = sorted(ranks, key=ranks.__getitem__)
    return "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n" for rank, token in enumerate(tokens))
