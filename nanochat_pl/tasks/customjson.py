"""Conversations from a JSONL file, and the identity conversations that tell the model who it is.

`CustomJSON` reads one conversation per line: a JSON array of `{"role", "content"}` messages (nanochat's
format, tasks/customjson.py@23c5171) or an object `{"messages": [...]}`. Roles alternate user/assistant
starting with the user, and every content is a string; a line that breaks this is a one-line error naming the
file and the line (nanochat asserts; a missing file there only warns and gives no conversations, here it is
an error, so a typo in a config cannot silently drop a task).

`IdentityConversations` is a `CustomJSON` of one of two files:
- "bundled": ~90 conversations written for this project (nanochat_pl/tasks/data/identity.jsonl, installed
  with the package, MIT like the rest of it): the assistant is nanochat-pl, a small model its user trained
  with this open-source project on their own machine. Works offline.
- "nanochat": nanochat's 1,000 synthetic conversations (about nanochat, by Andrej Karpathy), generated with
  google/gemini-2.5-flash (nanochat dev/gen_synthetic_data.py@dfc8833; no licence stated), downloaded once
  from nanochat's S3 URL (speedrun.sh@00f1a32) into NANOCHAT_PL_HOME/task_data.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal, get_args

from nanochat_pl.common import UserError
from nanochat_pl.sources.download import download_file
from nanochat_pl.tasks.hub import check_choice, task_data_dir
from nanochat_pl.tasks.task import Conversation, Task

IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
BUNDLED_IDENTITY = Path(__file__).parent / "data" / "identity.jsonl"
IdentitySource = Literal["bundled", "nanochat"]


class CustomJSON(Task):
    """The conversations of a JSONL file, one a line, in the file's order; blank lines are skipped.

    Args:
        filepath: The file. Each line: `[{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]`
            or `{"messages": [...]}`.
    """

    def __init__(self, filepath: str, *, start: int = 0, stop: int | None = None, step: int = 1):
        super().__init__(start, stop, step)
        self.filepath = filepath

    def path(self) -> Path:
        """The file to read, made present first if it has to be (see IdentityConversations)."""
        return Path(self.filepath).expanduser()

    def num_examples(self) -> int:
        return len(read_conversations(self.path()))

    def get_example(self, index: int) -> Conversation:
        return {"messages": [dict(message) for message in read_conversations(self.path())[index]]}

    def __repr__(self) -> str:
        return f"CustomJSON(filepath={self.filepath!r}, start={self.start}, stop={self.stop}, step={self.step})"


class IdentityConversations(CustomJSON):
    """Conversations that give the model its name and tell it what it is and is not.

    Args:
        source: "bundled" (this project's, offline) or "nanochat" (nanochat's, downloaded once).
    """

    def __init__(self, source: IdentitySource = "bundled", *, start: int = 0, stop: int | None = None, step: int = 1):
        check_choice("identity source", source, get_args(IdentitySource))
        where = BUNDLED_IDENTITY if source == "bundled" else task_data_dir() / "identity_conversations.jsonl"
        super().__init__(str(where), start=start, stop=stop, step=step)
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

    def __repr__(self) -> str:
        return f"IdentityConversations(source={self.source!r}, start={self.start}, stop={self.stop}, step={self.step})"


@functools.cache
def read_conversations(path: Path) -> tuple[tuple[dict[str, str], ...], ...]:
    """The checked conversations of a JSONL file (cached: a task listed twice reads its file once)."""
    return _parse(path)


def _parse(path: Path) -> tuple[tuple[dict[str, str], ...], ...]:
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a JSONL file of conversations)")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    conversations = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                conversations.append(_check_conversation(json.loads(line)))
            except (ValueError, UserError) as e:  # json.JSONDecodeError is a ValueError
                raise UserError(f"{path}:{number}: {e}") from e
    if not conversations:
        raise UserError(f"{path} holds no conversations")
    return tuple(conversations)


def _check_conversation(line: Any) -> tuple[dict[str, str], ...]:
    messages = line.get("messages") if isinstance(line, dict) else line
    if not isinstance(messages, list):
        raise UserError('expected a JSON array of messages or an object {"messages": [...]}')
    if len(messages) < 2:
        raise UserError(f"a conversation needs at least 2 messages, got {len(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"message {i} needs a 'role' and a 'content'")
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise UserError(
                f"message {i} has role {message['role']!r}, expected {expected!r} "
                "(roles alternate user/assistant, starting with user)"
            )
        if not isinstance(message["content"], str):
            raise UserError(f"message {i}: content must be a string")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)
