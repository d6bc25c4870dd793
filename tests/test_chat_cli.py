"""`nanochat-pl chat`: one-shot and interactive, with a scripted engine whose reply the test chooses and with a
tiny real checkpoint."""

import pytest
import torch

from nanochat_pl.commands import chat as chat_command
from nanochat_pl.commands.chat import chat
from nanochat_pl.common import UserError
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT, ScriptedEngine, make_checkpoint

SCRIPT = [("text", "Adding: "), ("python", "2+3"), ("python_output", "5"), ("text", " so 5. ß中🙂")]
INLINE = "Adding: <<2+3=5>> so 5. ß中🙂"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)


def test_one_shot_prompt_prints_the_answer(tokenizer, monkeypatch, capsys):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir, precision: (engine, {}))
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
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir, precision: (engine, {}))
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
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir, precision: (engine, {}))

    def no_more_input(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", no_more_input)
    chat("unused.ckpt")
    assert engine.prompts == []


@pytest.mark.parametrize(
    "option,message",
    [
        (dict(temperature=-1), "temperature must be between 0 and 2.0, got -1"),
        (dict(temperature=float("nan")), "temperature must be between 0 and 2.0, got nan"),
        (dict(seed=-1), "seed must be between 0 and"),
        (dict(top_k=500), "top_k must be between 0 and 200, got 500"),
        (dict(max_tokens=0), "max_tokens must be between 1 and 4096, got 0"),
    ],
)
def test_bad_sampling_options_are_refused_before_the_model_loads(option, message):
    with pytest.raises(UserError, match=message):
        chat("unused.ckpt", prompt="hi", **option)


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
    monkeypatch.setattr(chat_command, "load_engine", lambda checkpoint, device, tokenizer_dir, precision: (engine, {}))
    lines = iter(["hello", "again", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    chat("unused.ckpt")

    assert "(stopped)" in capsys.readouterr().out
    user_start = tokenizer.encode_special("<|user_start|>")
    assert [prompt.count(user_start) for prompt in engine.prompts] == [1, 1]  # the stopped turn is gone
