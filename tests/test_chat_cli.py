"""`nanochat-pl chat` and the reply streaming it shares with the web app: a scripted engine whose tokens the
test chooses (split characters, tool calls, the terminal token) and a tiny real checkpoint."""

import pytest
import torch

from nanochat_pl.commands import chat as chat_command
from nanochat_pl.commands.chat import PART_TYPES, InlineToolCalls, Reply, chat
from nanochat_pl.common import UserError
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT, ScriptedEngine, make_checkpoint

SCRIPT = [("text", "Adding: "), ("python", "2+3"), ("output", "5"), ("text", " so 5. ß中🙂")]
INLINE = "Adding: <<2+3=5>> so 5. ß中🙂"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)


def reply_to(engine, content="hi", max_tokens=100) -> Reply:
    return Reply(engine.tokenizer, 1024, [{"role": "user", "content": content}], 0.0, None, max_tokens)


def test_reply_streams_whole_characters_and_the_tool_call(tokenizer):
    assert len(tokenizer.encode("中")) == 3 and len(tokenizer.encode("🙂")) == 2  # characters split across tokens
    engine = ScriptedEngine(tokenizer, SCRIPT)
    reply = reply_to(engine)
    pieces = list(reply.run(engine))

    assert not any("\ufffd" in piece.text for piece in pieces)
    runs = []  # consecutive pieces of one kind joined: the reply's text, expression, output, text
    for piece in pieces:
        if runs and runs[-1][0] == piece.kind:
            runs[-1] = (piece.kind, runs[-1][1] + piece.text)
        else:
            runs.append((piece.kind, piece.text))
    assert runs == SCRIPT
    assert len(pieces) > 2 * len(SCRIPT)  # streamed a token at a time, not a segment at a time
    inline = InlineToolCalls()
    assert "".join(inline.feed(p) for p in pieces) + inline.close() == INLINE
    assert reply.finish_reason == "stop"
    assert reply.completion_tokens == len(engine.reply)  # the terminal token included
    # the parts put back into the conversation render to exactly the tokens the model saw and wrote
    assert reply.parts == [{"type": PART_TYPES[kind], "text": text} for kind, text in SCRIPT]
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply.parts}]
    ids, _ = tokenizer.render_conversation(conversation, max_tokens=None)
    assert ids == engine.prompts[0] + engine.reply


def test_reply_cut_at_max_tokens_inside_a_tool_call(tokenizer):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    cut = engine.reply.index(tokenizer.encode_special("<|python_end|>"))  # stops inside the expression
    reply = reply_to(engine, max_tokens=cut)
    inline = InlineToolCalls()
    text = "".join(inline.feed(p) for p in reply.run(engine)) + inline.close()
    assert text == "Adding: <<2+3>>"
    assert reply.finish_reason == "length" and reply.completion_tokens == cut


def test_a_conversation_longer_than_the_context_is_refused(tokenizer):
    with pytest.raises(UserError, match="the model's context is 16 tokens"):
        Reply(tokenizer, 16, [{"role": "user", "content": "hello world " * 10}], 0.6, 50, 10)


def test_one_shot_prompt_prints_the_answer(tokenizer, monkeypatch, capsys):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir: (engine, {}))
    chat("unused.ckpt", prompt="what is 2+3?")
    assert capsys.readouterr().out == f"Assistant: {INLINE}\n"
    assert tokenizer.decode(engine.prompts[0][2:-2]) == "what is 2+3?"


def test_one_shot_with_a_real_checkpoint(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chat(str(make_checkpoint(tmp_path)), prompt="hello", max_tokens=8, device="cpu")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith("Assistant: ") and out.endswith("\n") and out.count("\n") >= 1


def test_interactive_history_clear_and_quit(tokenizer, monkeypatch, capsys):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir: (engine, {}))
    lines = iter(["hello", "", "more", "clear", "again", "quit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    chat("unused.ckpt")

    assert next(lines) == "never read"  # quit left the loop
    out = capsys.readouterr().out
    assert out.count(f"Assistant: {INLINE}\n") == 3 and "(conversation cleared)" in out
    user_start = tokenizer.encode_special("<|user_start|>")
    assert [prompt.count(user_start) for prompt in engine.prompts] == [1, 2, 1]  # history, then cleared
    # the second prompt holds the first reply as the model wrote it, tool call included
    assert engine.prompts[1][: len(engine.prompts[0]) + len(engine.reply)] == engine.prompts[0] + engine.reply


def test_interactive_ends_at_end_of_input(tokenizer, monkeypatch):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir: (engine, {}))

    def no_more_input(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", no_more_input)
    chat("unused.ckpt")
    assert engine.prompts == []


def test_bad_sampling_options_are_refused():
    with pytest.raises(UserError, match="temperature >= 0"):
        chat("unused.ckpt", prompt="hi", temperature=-1)


def test_ctrl_c_stops_a_reply_and_drops_the_turn(tokenizer, monkeypatch, capsys):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    scripted_generate = engine.generate

    def interrupted_once(tokens, *args, **kwargs):
        stream = scripted_generate(tokens, *args, **kwargs)
        if len(engine.prompts) == 0:
            yield next(stream)
            raise KeyboardInterrupt
        yield from stream

    engine.generate = interrupted_once
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir: (engine, {}))
    lines = iter(["hello", "again", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    chat("unused.ckpt")

    assert "(stopped)" in capsys.readouterr().out
    user_start = tokenizer.encode_special("<|user_start|>")
    assert [prompt.count(user_start) for prompt in engine.prompts] == [1, 1]  # the stopped turn is gone
