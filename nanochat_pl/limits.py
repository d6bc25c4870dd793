"""What a reply may be asked for, checked where a request enters (the `chat` and `eval` commands, the API, the
chat page): sampling settings and the size of a conversation. The bounds are nanochat chat_web.py's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nanochat_pl.common import UserError

MAX_TEMPERATURE, MAX_TOP_K, MAX_NEW_TOKENS = 2.0, 200, 4096
MAX_SEED = 2**63 - 1  # the engine seeds a torch.Generator, which takes an int64
MAX_MESSAGES, MAX_MESSAGE_CHARS, MAX_TOTAL_CHARS = 500, 8_000, 32_000


class LimitError(UserError):
    """A setting or a conversation out of bounds; `field` names what is at fault (the API's `param`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_sampling(
    temperature: float, top_k: int | None, max_tokens: int, top_p: float | None = None, seed: int = 0
) -> None:
    """Refuse sampling settings out of bounds. A top_k of None or 0 and a top_p of None turn those cuts off."""
    for field, value, low, high in (
        ("temperature", temperature, 0, MAX_TEMPERATURE),
        ("top_k", top_k or 0, 0, MAX_TOP_K),
        ("max_tokens", max_tokens, 1, MAX_NEW_TOKENS),
        ("seed", seed, 0, MAX_SEED),
    ):
        if not low <= value <= high:  # NaN fails this too
            raise LimitError(field, f"{field} must be between {low} and {high}, got {value}")
    if top_p is not None and not 0 < top_p <= 1:
        raise LimitError("top_p", f"top_p must be above 0 and at most 1, got {top_p}")


def check_conversation(messages: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a conversation that is empty, does not end with the user's turn, or has too many messages or
    characters (an assistant message's parts, tool calls and outputs included)."""
    if not messages:
        raise LimitError("messages", "the conversation has no message")
    if len(messages) > MAX_MESSAGES:
        raise LimitError("messages", f"the conversation has {len(messages)} messages; at most {MAX_MESSAGES} allowed")
    if messages[-1]["role"] != "user":
        raise LimitError("messages", "the last message must be the user's: the reply is the assistant's next turn")
    contents = [message["content"] for message in messages]
    lengths = [len(c) if isinstance(c, str) else sum(len(part["text"]) for part in c) for c in contents]
    for i, length in enumerate(lengths):
        if length > MAX_MESSAGE_CHARS:
            raise LimitError("messages", f"message {i} has {length:,} characters; at most {MAX_MESSAGE_CHARS:,}")
    if sum(lengths) > MAX_TOTAL_CHARS:
        raise LimitError("messages", f"the messages have {sum(lengths):,} characters; at most {MAX_TOTAL_CHARS:,}")
