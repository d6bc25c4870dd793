"""Conversations from files: a JSONL file, the identity conversations that tell the model who it is, small talk.

`CustomJSON` reads one conversation per line in nanochat's format (tasks/customjson.py); a bad line is a one-line
error naming the file and line, and a missing file an error, not nanochat's warning, so a typo in a config cannot
silently drop a task. `IdentityConversations` reads one of two files:
- "bundled": ~90 conversations written for this project (tasks/data/identity.jsonl, MIT): the assistant is
  nanochat-pl, a small model its user trained with this project on their own machine;
- "nanochat": nanochat's 1,000 synthetic conversations (by Andrej Karpathy, generated with google/gemini-2.5-flash;
  no licence stated), downloaded once from nanochat's S3 URL into NANOCHAT_PL_HOME/task_data.
`SmallTalk` is chatterbot-corpus's English conversations (BSD-3): greetings and everyday questions answered in
words, so that the demo model answers "hello" in kind and calls no calculator where nothing is to be computed.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Literal

import chatterbot_corpus
import yaml

from nanochat_pl.common import UserError
from nanochat_pl.sources.download import download_file
from nanochat_pl.tasks.hub import task_data_dir
from nanochat_pl.tasks.task import Conversation, Split, Task, is_dialogue, split_of

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


class SmallTalk(Task):
    """chatterbot-corpus's ~1,900 English conversations, less its bot's profile and any asking who the bot is (the
    identity conversations answer those); each in the split a stable hash of its first line picks."""

    def __init__(self, split: Split = "train", **kwargs: Any):
        super().__init__(**kwargs)
        self.split = split

    @functools.cached_property
    def conversations(self) -> list[list[str]]:
        about_the_bot = re.compile(r"\b(who|what) are you\b|\byour name\b|\bare you (a|an)\b", re.IGNORECASE)
        files = (Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml")
        return [
            turns[: len(turns) // 2 * 2]
            for path in sorted(files)
            if path.stem != "botprofile"
            for turns in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
            if isinstance(turns, list)  # one entry of the corpus is a bare string
            and split_of(turns[0]) == self.split
            and not any(about_the_bot.search(turn) for turn in turns)
        ]

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> Conversation:
        turns = self.conversations[index]
        return {"messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]}


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
