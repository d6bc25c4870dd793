"""SmolTalk: general conversations, the bulk of nanochat's midtraining and SFT mixtures.

Data: HuggingFaceTB/smol-smoltalk on the Hugging Face hub (the "smol" version, made for small models): train
460,341 conversations, test 24,229, in a `messages` column of {role, content} (the `source` column is unused).
Licence: Apache-2.0.

A conversation is the row's messages as they are, an optional leading system message included (the tokenizer
merges it into the first user turn). Rows are checked as nanochat checks them (tasks/smoltalk.py@dfc8833): after
the system message, at least two messages, user and assistant alternating, every content a string.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from nanochat_pl.common import UserError
from nanochat_pl.tasks.hub import DatasetTask, check_choice
from nanochat_pl.tasks.task import Conversation

Split = Literal["train", "test"]


class SmolTalk(DatasetTask):
    """SmolTalk's conversations; for training, no evaluation."""

    dataset_id = "HuggingFaceTB/smol-smoltalk"
    columns = ("messages",)

    def __init__(
        self, split: Split, *, path: str | None = None, start: int = 0, stop: int | None = None, step: int = 1
    ):
        check_choice("SmolTalk split", split, get_args(Split))
        super().__init__(None, split, path, start, stop, step)

    def conversation(self, row: dict[str, Any]) -> Conversation:
        messages = row["messages"]
        dialogue = messages[1:] if messages and messages[0]["role"] == "system" else messages
        if len(dialogue) < 2:
            raise UserError(f"SmolTalk: a conversation needs a user and an assistant message, got {messages!r:.200}")
        for i, message in enumerate(dialogue):
            expected = "user" if i % 2 == 0 else "assistant"
            if message["role"] != expected or not isinstance(message["content"], str):
                raise UserError(
                    f"SmolTalk: message {i} should be the {expected}'s, with string content "
                    f"(user and assistant alternate), got {message!r:.200}"
                )
        return {"messages": messages}
