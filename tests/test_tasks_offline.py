"""The offline tasks: spelling, arithmetic, identity and other JSONL conversations, docstring questions.

Each renders through a real tokenizer with the right loss mask; every tool call in the generated data gets from
the calculator exactly the output the data shows; answers score as GSM8K's; examples are fixed by their index
and the splits are disjoint; files that cannot be read fail in one line; downloads run against a local server.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import random
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

from nanochat_pl.common import UserError
from nanochat_pl.sandbox import calculator
from nanochat_pl.tasks import customjson, docstrings, spelling
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tasks.customjson import CustomJSON, IdentityConversations, SmallTalk
from nanochat_pl.tasks.docstrings import DocstringQA
from nanochat_pl.tasks.spelling import SimpleSpelling, SpellingBee, load_words
from nanochat_pl.tasks.task import TaskMixture
from nanochat_pl.tokenizer import Tokenizer
from tests.test_download import ShardServer

WORDS = ["strawberry", "banana", "mississippi", "rhythm", "a", "bookkeeper", "queue", "zz"]


@pytest.fixture(autouse=True)
def fresh_word_lists():
    """Word lists are cached per process; each test starts without them (and leaves none behind)."""
    load_words.cache_clear()
    spelling._shuffled_words.cache_clear()
    yield
    load_words.cache_clear()
    spelling._shuffled_words.cache_clear()


@pytest.fixture
def word_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join([*WORDS, "Capital", "don't", "café"]) + "\n")  # the last three are dropped
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["How many r are in strawberry? 12*7 = 84. Spell the word: banana:b,a,n,a,n,a"] * 20
    return Tokenizer.train_from_iterator(texts, vocab_size=300)


def assistant_parts(message):
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def tool_calls(conversation):
    """(expression, output) of every calculator call in the conversation's assistant turns."""
    calls = []
    for message in conversation["messages"]:
        if message["role"] == "assistant":
            parts = assistant_parts(message)
            for part, following in zip(parts, parts[1:], strict=False):
                if part["type"] == "python":
                    assert following["type"] == "python_output"
                    calls.append((part["text"], following["text"]))
    return calls


def reply_text(conversation):
    """The last assistant turn as the text a model would write (tool outputs included, as the engine forces them)."""
    return "".join(part["text"] for part in assistant_parts(conversation["messages"][-1]))


def check_rendering(tokenizer, conversation):
    """Trained tokens are exactly the assistant's text and tool calls and <|assistant_end|>; the user's turns and
    the tool's outputs are in the untrained ones."""
    ids, mask = tokenizer.render_conversation(conversation, max_tokens=None)
    trained, untrained = "", ""
    for message in conversation["messages"]:
        if message["role"] == "user":
            untrained += f"<|user_start|>{message['content']}<|user_end|>"
            continue
        untrained += "<|assistant_start|>"
        for part in assistant_parts(message):
            if part["type"] == "text":
                trained += part["text"]
            elif part["type"] == "python":
                trained += f"<|python_start|>{part['text']}<|python_end|>"
            else:
                untrained += f"<|output_start|>{part['text']}<|output_end|>"
        trained += "<|assistant_end|>"
    assert tokenizer.decode(t for t, m in zip(ids, mask, strict=True) if m) == trained
    assert tokenizer.decode(t for t, m in zip(ids, mask, strict=True) if not m) == "<|bos|>" + untrained


# ---- rendering ----


def test_every_task_renders_with_the_right_mask(tokenizer, word_file, tmp_path):
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]) + "\n")
    tasks = [
        SpellingBee(size=40, words=word_file),
        SpellingBee(size=40, split="test", words=word_file),
        SimpleSpelling(size=20, words=word_file),
        Arithmetic(size=60),
        Arithmetic(size=20, split="test"),
        IdentityConversations(),
        SmallTalk(stop=50),
        CustomJSON(str(jsonl)),
    ]
    mixture = TaskMixture(tasks)
    assert len(mixture) == sum(len(task) for task in tasks)
    for conversation in mixture:
        check_rendering(tokenizer, conversation)


def test_small_talk_is_the_corpus_less_who_the_bot_is_split_by_first_line():
    import chatterbot_corpus
    import yaml

    files = (Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml")
    corpus = [turns for path in files for turns in yaml.safe_load(path.read_text())["conversations"]]
    train, test = SmallTalk(), SmallTalk(split="test")
    kept = [[m["content"] for m in c["messages"]] for task in (train, test) for c in task]
    firsts = {c["messages"][0]["content"] for c in train}
    assert not firsts & {c["messages"][0]["content"] for c in test}  # a first line is in one split only
    assert all(len(turns) % 2 == 0 and any(turns == t[: len(turns)] for t in corpus) for turns in kept)
    assert 1800 < len(kept) < len(corpus) and len(test) > 50
    assert not any(re.search(r"who are you|your name", turn, re.I) for turns in kept for turn in turns)
    assert ["Hello", "Hi"] in kept  # greetings are answered in kind


# ---- the calculator agrees with the data ----


@pytest.mark.parametrize("split", ["train", "test"])
def test_arithmetic_tool_outputs_are_the_calculators(split):
    task = Arithmetic(size=500, split=split)
    operations = set()
    for conversation in task:
        calls = tool_calls(conversation)
        assert 1 <= len(calls) <= 3
        for expression, output in calls:
            assert calculator(expression) == output
            operations |= set(expression) & set("+-*/")
        parts = conversation["messages"][-1]["content"]
        # each output is written again as text right after the call: a whole number ("12.0" -> "12")
        for i, part in enumerate(parts):
            if part["type"] == "python_output":
                assert parts[i + 1]["type"] == "text"
                assert parts[i + 1]["text"].startswith(str(int(float(part["text"]))))
        assert parts[-1]["text"].endswith(f"\n#### {int(float(calls[-1][1]))}")
    assert operations == set("+-*/")
    assert any(output.endswith(".0") for c in task for _, output in tool_calls(c))  # division shows "n.0"


def test_spelling_bee_tool_calls_are_the_calculators(word_file):
    for split in ("train", "test"):
        for conversation in SpellingBee(size=300, split=split, words=word_file):
            ((expression, output),) = tool_calls(conversation)
            assert calculator(expression) == output
            word, letter = ast.literal_eval(expression.replace(".count(", ",").rstrip(")"))
            assert output == str(word.count(letter))
            assert reply_text(conversation).endswith(f"#### {output}")


# ---- scoring ----


@pytest.mark.parametrize("make", [lambda: Arithmetic(size=30), lambda: SpellingBee(size=30, words="web2")])
def test_gsm8k_style_evaluate(make):
    task = make()
    for conversation in task:
        gold = reply_text(conversation)
        answer = gold.rsplit("#### ", 1)[1]
        assert task.evaluate(conversation, gold) and task.reward(conversation, gold) == 1.0
        assert task.evaluate(conversation, f"I think it is\n#### {answer}")
        assert not task.evaluate(conversation, gold.replace(f"#### {answer}", f"#### {int(answer) + 1}"))
        assert not task.evaluate(conversation, f"#### {answer}.5")
        assert not task.evaluate(conversation, gold.replace("#### ", "")) and task.reward(conversation, "") == 0.0


def test_simple_spelling_evaluates_the_spelled_word(word_file):
    task = SimpleSpelling(size=10, words=word_file)
    conversation = task[0]
    word = conversation["messages"][0]["content"].removeprefix("Spell the word: ")
    assert word in WORDS and conversation["messages"][1]["content"] == f"{word}:{','.join(word)}"
    assert task.evaluate(conversation, f" {word}:{','.join(word)}\n")
    assert not task.evaluate(conversation, f"{word}:{','.join(word[::-1] + 'x')}")


# ---- determinism and splits ----


def test_examples_are_fixed_by_index_and_splits_differ(word_file):
    for make in (
        lambda split: Arithmetic(size=200, split=split),
        lambda split: SpellingBee(size=200, split=split, words=word_file),
        lambda split: SimpleSpelling(size=200, split=split, words=word_file),
    ):
        train, again, test = make("train"), make("train"), make("test")
        assert [train[i] for i in range(200)] == [again[i] for i in reversed(range(200))][::-1]  # any access order
        assert sum(train[i] == test[i] for i in range(200)) < 40  # other seeds (8 words: some coincide)
        assert train[150] == make("train")[150]
    sliced = Arithmetic(size=100, start=10, stop=50, step=4)
    assert len(sliced) == 10 and sliced[2] == Arithmetic(size=100)[18]


def test_the_arithmetic_test_split_asks_in_ways_the_training_split_never_does():
    """Whole templates are held out: no test question has the shape of a training question (its numbers, names and
    things made alike), so the test score measures asking in new ways, not new numbers."""
    from nanochat_pl.tasks import arithmetic

    words = {
        *arithmetic.NAMES,
        *arithmetic.GOODS,
        *(w for place in arithmetic.PLACES for w in place),
        *arithmetic.UNITS,
    }
    things = "|".join(sorted(words, key=len, reverse=True))

    def shape(question: str) -> str:
        return re.sub(r"\d[\d,]*", "N", re.sub(rf"\b({things})\b", "X", question))

    train = [c["messages"][0]["content"] for c in Arithmetic(size=4000)]
    test = [c["messages"][0]["content"] for c in Arithmetic(size=400, split="test")]
    shared = {shape(q) for q in test} & {shape(q) for q in train}
    assert not shared, sorted(shared)[:5]
    assert len({shape(q) for q in test}) > 20  # many held-out ways of asking, not one


def test_spelling_seeds_match_nanochat_draws(word_file):
    """Example i of the test split is drawn from Random(10_000_000 + i): the first draw picks the word."""
    words = load_words(word_file)
    for i in range(20):
        word = random.Random(10_000_000 + i).choice(words)
        assert f"'{word}'.count(" in tool_calls(SpellingBee(size=20, split="test", words=word_file)[i])[0][0]


def test_a_negative_size_is_a_one_line_error():
    with pytest.raises(UserError, match="SpellingBee size must be at least 0"):
        SpellingBee(size=-1)


# ---- word lists ----


@pytest.fixture
def word_server():
    server = ShardServer({"words_alpha.txt": b"aardvark\r\nbee\r\nzebra\r\n"})
    yield server
    server.close()


def closed_port_url(name):
    with socket.socket() as sock:  # a port nothing listens on: the connection is refused, as with no network
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def test_word_lists_fall_back_in_order(word_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    dictionary = tmp_path / "american-english"
    dictionary.write_text("Aaron\nzoo\nant\nzoo's\n")
    monkeypatch.setattr(spelling, "WAMERICAN_PATH", dictionary)

    # 1. dwyl: downloaded once into the task data directory, then read from there
    monkeypatch.setattr(spelling, "WORD_LIST_URL", f"{word_server.url}/words_alpha.txt")
    assert load_words() == ("aardvark", "bee", "zebra")
    assert "the dwyl word list (3 words)" in capsys.readouterr().err
    assert (tmp_path / "task_data" / "words_alpha.txt").exists() and word_server.requests == ["words_alpha.txt"]

    # 2. no network and no copy: the english-words package
    load_words.cache_clear()
    (tmp_path / "task_data" / "words_alpha.txt").unlink()
    monkeypatch.setattr(spelling, "WORD_LIST_URL", closed_port_url("words_alpha.txt"))
    from english_words import get_english_words_set

    assert load_words() == tuple(sorted(get_english_words_set(["web2"], alpha=True, lower=True)))
    assert "the web2 word list (234,450 words)" in capsys.readouterr().err

    # 3. nor that package: Debian's dictionary, lowercase a-z words only
    load_words.cache_clear()
    monkeypatch.setitem(sys.modules, "english_words", None)  # import fails
    assert load_words() == ("ant", "zoo")

    # 4. none of them: one line saying why each failed
    load_words.cache_clear()
    monkeypatch.setattr(spelling, "WAMERICAN_PATH", tmp_path / "missing")
    with pytest.raises(UserError) as error:
        load_words()
    message = str(error.value)
    assert "\n" not in message
    assert "dwyl: could not download" in message and "pip install english-words" in message
    assert "apt-get install wamerican" in message


def test_a_downloaded_page_that_is_no_word_list_is_refused(word_server, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    monkeypatch.setattr(spelling, "WORD_LIST_URL", f"{word_server.url}/words_alpha.txt")
    word_server.plan["words_alpha.txt"] = ["corrupt"]
    with pytest.raises(UserError, match="the downloaded file is not a list of words"):
        load_words("dwyl")
    assert not (tmp_path / "task_data").exists() or not list((tmp_path / "task_data").iterdir())
    with pytest.raises(UserError, match="is none of auto, dwyl, web2, wamerican and not a file"):
        load_words("webster")


# ---- JSONL conversations ----


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", "Expecting property name"),
        ('"hello"', "not a conversation"),
        ('[{"role": "user", "content": "hi"}]', "at least 2 messages"),
        ('[{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]', "not a conversation"),
        ('[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]', "roles alternating"),
        ('[{"role": "user", "content": "a"}, {"role": "assistant", "content": ["b"]}]', "not a conversation"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]}', "every content a string"),
    ],
)
def test_custom_json_bad_line_is_a_one_line_error_naming_file_and_line(tmp_path, line, error):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    path = tmp_path / "chats.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(UserError) as raised:
        len(CustomJSON(str(path)))
    assert str(raised.value).startswith(f"{path}:3: ") and error in str(raised.value)
    assert "\n" not in str(raised.value)


def test_custom_json_reads_both_line_formats_in_order(tmp_path):
    path = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4\u2028é"}]
    lines = [json.dumps(turns, ensure_ascii=False), "", json.dumps({"messages": turns * 2}) + "\r"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = CustomJSON(str(path))
    assert len(task) == 2 and task[0] == {"messages": turns} and task[1] == {"messages": turns * 2}
    task[0]["messages"][0]["content"] = "changed"  # a caller's edit does not reach the cached file
    assert CustomJSON(str(path))[0] == {"messages": turns}
    with pytest.raises(UserError, match="missing.jsonl does not exist"):
        len(CustomJSON(str(tmp_path / "missing.jsonl")))
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(turns, ensure_ascii=False).encode("latin-1", "replace"))
    with pytest.raises(UserError, match="latin1.jsonl is not UTF-8 text"):
        len(CustomJSON(str(tmp_path / "latin1.jsonl")))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="holds no conversations"):
        len(CustomJSON(str(tmp_path / "empty.jsonl")))


def test_bundled_identity_conversations():
    task = IdentityConversations()
    assert 60 <= len(task) <= 100
    conversations = list(task)
    assert sum(len(c["messages"]) > 2 for c in conversations) >= 10  # some are multi-turn
    text = " ".join(m["content"] for c in conversations for m in c["messages"])
    assert text.count("nanochat-pl") > 50 and "calculator" in text
    assert len({c["messages"][0]["content"] for c in conversations}) == len(conversations)  # no repeats


# ---- nanochat's identity file: download ----

IDENTITY_LINES = [
    [{"role": "user", "content": "who are you?"}, {"role": "assistant", "content": "I'm nanochat."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
]


@pytest.fixture
def identity_server():
    body = "".join(json.dumps(line) + "\n" for line in IDENTITY_LINES).encode()
    server = ShardServer({"identity_conversations.jsonl": body})
    yield server
    server.close()


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(customjson, "download_file", functools.partial(customjson.download_file, backoff_s=0.001))


def test_nanochat_identity_is_downloaded_once(identity_server, tmp_path, monkeypatch, fast_retries):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    monkeypatch.setattr(customjson, "IDENTITY_URL", f"{identity_server.url}/identity_conversations.jsonl")
    identity_server.plan["identity_conversations.jsonl"] = ["500", "corrupt", "truncated"]  # each retried
    task = IdentityConversations(source="nanochat")
    assert identity_server.requests == []  # nothing is fetched until the data is used
    assert [c["messages"] for c in task] == IDENTITY_LINES
    assert identity_server.requests == ["identity_conversations.jsonl"] * 4
    assert sorted(p.name for p in (tmp_path / "task_data").iterdir()) == ["identity_conversations.jsonl"]
    assert len(IdentityConversations(source="nanochat", stop=1)) == 1
    assert len(identity_server.requests) == 4  # the file is there now


def test_nanochat_identity_without_network_says_where_to_put_it(tmp_path, monkeypatch, fast_retries):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    monkeypatch.setattr(customjson, "IDENTITY_URL", closed_port_url("identity_conversations.jsonl"))
    with pytest.raises(UserError) as error:
        len(IdentityConversations(source="nanochat"))
    message = str(error.value)
    destination = tmp_path / "task_data" / "identity_conversations.jsonl"
    assert "\n" not in message and message.startswith("could not download http://127.0.0.1:")
    assert f"copy nanochat's identity_conversations.jsonl to {destination}" in message
    assert "source='bundled'" in message

    destination.write_text(json.dumps(IDENTITY_LINES[0]) + "\n")  # copied by hand: used as it is
    assert [c["messages"] for c in IdentityConversations(source="nanochat")] == IDENTITY_LINES[:1]


# ---- docstring questions ----


def test_docstring_questions(tokenizer):
    """The real thing: the standard library of this Python (~3 s of CPU to build)."""
    train, test = DocstringQA(), DocstringQA(split="test")
    assert len(train) > 5000 and len(test) > 300
    names = {
        split: {c["messages"][0]["content"].split("`")[1] for c in task if "`" in c["messages"][0]["content"]}
        for split, task in (("train", train), ("test", test))
    }
    assert not names["train"] & names["test"]  # both questions about a function are in one split

    everything = list(train) + list(test)
    about_dumps = [c for c in everything if "`json.dumps`" in c["messages"][0]["content"]]
    answers = {c["messages"][1]["content"] for c in about_dumps}
    first_paragraph = inspect.getdoc(json.dumps).split("\n\n")[0]
    signature = f"`json.dumps{inspect.signature(json.dumps)}`"
    assert answers == {first_paragraph, signature}
    assert not any("`_" in c["messages"][0]["content"] or "._" in c["messages"][0]["content"] for c in everything)
    for conversation in everything[:50]:
        check_rendering(tokenizer, conversation)
        assert train.evaluate(conversation, conversation["messages"][1]["content"] + "\n")
        assert not train.evaluate(conversation, "I don't know")


def test_docstring_questions_are_the_same_when_built_again(tmp_path, monkeypatch):
    shutil.copytree(Path(json.__file__).parent, tmp_path / "json")  # a small tree to walk: the json package
    monkeypatch.setattr(docstrings, "source_roots", lambda: ([tmp_path], []))
    build = docstrings._questions_by_split.__wrapped__  # uncached
    first, second = build(False), build(False)
    assert first == second and len(first["train"]) + len(first["test"]) > 10
    assert all(question.count("`json.") == 1 for question, _ in first["train"] if "`" in question)
