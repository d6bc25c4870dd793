"""What a reply may be asked for, checked here and nowhere else: the sampling settings (checked by the engine
and, before anything streams, by everything that makes a reply) and the size of a conversation (checked by the
web app, whose input comes from whoever can reach it).

The bounds are nanochat chat_web.py's (@dfc8833): temperature 0-2, top-k 0-200 (0: no cut), 1-4,096 new tokens;
at most 500 messages, 8,000 characters per message and 32,000 in all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nanochat_pl.common import UserError

MAX_TEMPERATURE = 2.0
MAX_TOP_K = 200
MAX_NEW_TOKENS = 4096
MAX_SEED = 2**63 - 1  # the engine seeds a torch.Generator, which takes an int64
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000


class LimitError(UserError):
    """A setting or a conversation out of bounds; `field` names what is at fault (the API's `param`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_sampling(
    temperature: float, top_k: int | None, max_tokens: int, top_p: float | None = None, seed: int = 0
) -> None:
    """Refuse sampling settings out of bounds. A top_k of None or 0 and a top_p of None turn those cuts off."""
    _check_between("temperature", temperature, 0, MAX_TEMPERATURE)
    _check_between("top_k", top_k or 0, 0, MAX_TOP_K)
    _check_between("max_tokens", max_tokens, 1, MAX_NEW_TOKENS)
    _check_between("seed", seed, 0, MAX_SEED)
    if top_p is not None and not 0 < top_p <= 1:
        raise LimitError("top_p", f"top_p must be above 0 and at most 1, got {top_p}")


def _check_between(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # NaN fails this too
        raise LimitError(field, f"{field} must be between {low} and {high}, got {value}")


def check_conversation(messages: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a conversation a server should not take from a stranger: empty, ending with anything but the
    user's turn (the reply is the assistant's next turn), or too many messages or characters. An assistant
    message's characters are those of all its parts, tool calls and outputs included."""
    if not messages:
        raise LimitError("messages", "the conversation has no message")
    if len(messages) > MAX_MESSAGES:
        raise LimitError("messages", f"the conversation has {len(messages)} messages; at most {MAX_MESSAGES} allowed")
    if messages[-1]["role"] != "user":
        raise LimitError("messages", "the last message must be the user's: the reply is the assistant's next turn")
    lengths = [_characters(message["content"]) for message in messages]
    for i, length in enumerate(lengths):
        if length > MAX_MESSAGE_CHARS:
            raise LimitError(
                "messages", f"message {i} has {length:,} characters; at most {MAX_MESSAGE_CHARS:,} allowed"
            )
    if sum(lengths) > MAX_TOTAL_CHARS:
        raise LimitError(
            "messages", f"the messages have {sum(lengths):,} characters; at most {MAX_TOTAL_CHARS:,} allowed"
        )


def _characters(content: str | Sequence[Mapping[str, str]]) -> int:
    return len(content) if isinstance(content, str) else sum(len(part["text"]) for part in content)
