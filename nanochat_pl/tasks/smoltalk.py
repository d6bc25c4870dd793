"""SmolTalk: general conversations, the bulk of nanochat's midtraining and SFT mixtures (nanochat tasks/smoltalk.py).

Data: HuggingFaceTB/smol-smoltalk on the Hugging Face hub (Apache-2.0). A conversation is the row's messages as they
are, with an optional leading system message (the tokenizer merges it into the first user turn).
"""

from __future__ import annotations

from typing import Any

from nanochat_pl.common import UserError
from nanochat_pl.tasks.hub import DatasetTask
from nanochat_pl.tasks.task import Conversation, Split, is_dialogue


class SmolTalk(DatasetTask):
    """SmolTalk's conversations; for training, no evaluation."""

    dataset_id = "HuggingFaceTB/smol-smoltalk"
    columns = ("messages",)

    def __init__(self, split: Split, **kwargs: Any):
        super().__init__(None, split, **kwargs)

    def conversation(self, row: dict[str, Any]) -> Conversation:
        messages = row["messages"]
        dialogue = messages[1:] if messages and messages[0]["role"] == "system" else messages
        if not is_dialogue(list(dialogue)):
            raise UserError(
                "SmolTalk: a conversation is user and assistant messages, alternating, at least two, with string "
                f"contents; got {messages!r:.200}"
            )
        return {"messages": messages}
