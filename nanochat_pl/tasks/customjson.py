"""Conversations from a JSONL file, and the identity conversations that tell the model who it is.

`CustomJSON` reads one conversation per line in nanochat's format (tasks/customjson.py); a bad line is a one-line
error naming the file and line, and a missing file an error, not nanochat's warning, so a typo in a config cannot
silently drop a task. `IdentityConversations` reads one of two files:
- "bundled": ~90 conversations written for this project (tasks/data/identity.jsonl, MIT): the assistant is
  nanochat-pl, a small model its user trained with this project on their own machine;
- "nanochat": nanochat's 1,000 synthetic conversations (by Andrej Karpathy, generated with google/gemini-2.5-flash;
  no licence stated), downloaded once from nanochat's S3 URL into NANOCHAT_PL_HOME/task_data.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

from nanochat_pl.common import UserError
from nanochat_pl.sources.download import download_file
from nanochat_pl.tasks.hub import task_data_dir
from nanochat_pl.tasks.task import Conversation, Task, is_dialogue

IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
BUNDLED_IDENTITY = Path(__file__).parent / "data" / "identity.jsonl"
CONVERSATION_FORMAT = (
    'not a conversation: expected a JSON array of {"role", "content"} messages or an object {"messages": [...]}, '
    "at least 2 messages, roles alternating user/assistant from the user, every content a string"
)


class CustomJSON(Task):
    """The conversations of a JSONL file, in the file's order. Each line: a JSON array of messages,
    `[{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]`, or `{"messages": [...]}`."""

    def __init__(self, filepath: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.filepath = filepath

    def path(self) -> Path:  # the file to read, made present first where it has to be
        return Path(self.filepath).expanduser()

    def num_examples(self) -> int:
        return len(read_conversations(self.path()))

    def get_example(self, index: int) -> Conversation:
        return {"messages": [dict(message) for message in read_conversations(self.path())[index]]}


class IdentityConversations(CustomJSON):
    """The conversations that tell the model who it is: "bundled" (offline) or "nanochat" (downloaded once)."""

    def __init__(self, source: Literal["bundled", "nanochat"] = "bundled", **kwargs: Any):
        where = BUNDLED_IDENTITY if source == "bundled" else task_data_dir() / "identity_conversations.jsonl"
        super().__init__(str(where), **kwargs)
        self.source = source

    def path(self) -> Path:
        path = super().path()
        if self.source == "nanochat":
            try:
                download_file(IDENTITY_URL, path, check=_parse)
            except UserError as e:
                raise UserError(
                    f"{e}; with no network, copy nanochat's identity_conversations.jsonl to {path}, "
                    "or use IdentityConversations(source='bundled')"
                ) from e
        return path


def _parse(path: Path) -> tuple[tuple[dict[str, str], ...], ...]:
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a JSONL file of conversations)")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    conversations = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise UserError(f"{path}:{number}: {e}") from e
        messages = record.get("messages") if isinstance(record, dict) else record
        if not is_dialogue(messages):
            raise UserError(f"{path}:{number}: {CONVERSATION_FORMAT}")
        conversations.append(tuple({"role": m["role"], "content": m["content"]} for m in messages))
    if not conversations:
        raise UserError(f"{path} holds no conversations")
    return tuple(conversations)


read_conversations = functools.cache(_parse)  # a task listed twice reads its file once
