"""A reply read from the tokens the model writes: pieces streamed with whole characters, the parts that render
back to exactly those tokens, the plain text with calculator calls inline, and the conversation bounds (its
context length when the reply is made). A scripted engine whose tokens the test chooses (split characters, tool
calls, the terminal token) stands in for the model."""

import pytest

from nanochat_pl.limits import LimitError, check_conversation
from nanochat_pl.reply import InlineToolCalls, Reply, read_reply
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT, ScriptedEngine, reply_tokens

SCRIPT = [("text", "Adding: "), ("python", "2+3"), ("python_output", "5"), ("text", " so 5. ß中🙂")]
INLINE = "Adding: <<2+3=5>> so 5. ß中🙂"
USER = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)


def reply_to(tokenizer, max_tokens=100) -> Reply:
    return Reply(tokenizer, 1024, [USER], temperature=0.0, top_k=None, max_tokens=max_tokens)


def as_parts(script: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"type": kind, "text": text} for kind, text in script]


def streamed_text(reply: Reply, engine: ScriptedEngine) -> str:
    inline = InlineToolCalls()
    return "".join(inline.feed(piece) for piece in reply.run(engine)) + inline.close()


def test_reply_streams_whole_characters_and_the_tool_call(tokenizer):
    assert len(tokenizer.encode("中")) == 3 and len(tokenizer.encode("🙂")) == 2  # characters split across tokens
    engine = ScriptedEngine(tokenizer, SCRIPT)
    reply = reply_to(tokenizer)
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
    assert "".join(inline.feed(p) for p in pieces) + inline.close() == INLINE == reply.text
    assert reply.finish_reason == "stop"
    assert reply.completion_tokens == len(engine.reply)  # the terminal token included
    # the parts put back into the conversation render to exactly the tokens the model saw and wrote
    assert reply.parts == as_parts(SCRIPT)
    ids, _ = tokenizer.render_conversation([USER, {"role": "assistant", "content": reply.parts}], max_tokens=None)
    assert ids == engine.prompts[0] + engine.reply


def test_reply_cut_at_max_tokens_inside_a_tool_call(tokenizer):
    engine = ScriptedEngine(tokenizer, SCRIPT)
    cut = engine.reply.index(tokenizer.encode_special("<|python_end|>"))  # stops inside the expression
    reply = reply_to(tokenizer, max_tokens=cut)
    assert streamed_text(reply, engine) == "Adding: <<2+3>>" == reply.text
    assert reply.parts == as_parts(SCRIPT[:2])
    assert reply.finish_reason == "length" and reply.completion_tokens == cut


TOOL_USE = {
    "a call and its result": (SCRIPT, INLINE),
    "two calls in a row": (
        [("python", "1+1"), ("python_output", "2"), ("python", "2*3"), ("python_output", "6"), ("text", " done")],
        "<<1+1=2>><<2*3=6>> done",
    ),
    "calls with no result, one empty": ([("text", "so "), ("python", "7-1"), ("python", "")], "so <<7-1>><<>>"),
    "a result written with no call": ([("python_output", "9"), ("text", " it is")], "<<=9>> it is"),
}


@pytest.mark.parametrize("script,text", TOOL_USE.values(), ids=TOOL_USE.keys())
def test_generated_tokens_read_as_the_tokenizers_parts_and_as_text(tokenizer, script, text):
    """What evaluation and RL do with each sample of a batch; streamed, the text is the same."""
    tokens = reply_tokens(tokenizer, script)
    reply = read_reply(tokenizer, [*tokens, *tokenizer.encode("after the end")])
    assert reply.ended
    assert reply.parts == as_parts(script)
    assert reply.text == text
    assert streamed_text(reply_to(tokenizer), ScriptedEngine(tokenizer, script)) == text
    ids, _ = tokenizer.render_conversation([USER, {"role": "assistant", "content": reply.parts}], max_tokens=None)
    assert ids[-len(tokens) :] == tokens


def test_tokens_cut_short_read_as_an_unended_reply(tokenizer):
    tokens = reply_tokens(tokenizer, SCRIPT)
    reply = read_reply(tokenizer, tokens[: tokens.index(tokenizer.encode_special("<|output_end|>"))])
    assert not reply.ended
    assert reply.parts == as_parts(SCRIPT[:3]) and reply.text == "Adding: <<2+3=5>>"


def test_a_conversation_longer_than_the_context_fails_when_the_reply_is_made(tokenizer):
    with pytest.raises(LimitError, match="the model's context is 16 tokens") as error:
        Reply(tokenizer, 16, [{"role": "user", "content": "hello world " * 10}], temperature=0.6, top_k=0, max_tokens=1)
    assert error.value.field == "messages"


def test_conversation_bounds_count_the_tool_parts_too():
    call = {"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "python", "text": "1" * 8_000}]}
    with pytest.raises(LimitError, match="message 1 has 8,001 characters; at most 8,000"):
        check_conversation([USER, call, USER])
