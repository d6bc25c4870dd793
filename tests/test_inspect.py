"""The inspector (`nanochat-pl inspect` and the page's Inspect tab) against what it claims to show: the loss and the
mask the SFT stage computes for the same conversation, the top 5 of a direct forward pass, the tokens the engine
forces; the terminal output with colour and without; and the chat page's example prompts, from the run's mixture."""

import json
import math

import pytest
import torch
import yaml

from nanochat_pl.apps.inspector import describe, inspect_tokens
from nanochat_pl.apps.ui import example_prompts
from nanochat_pl.cli import main
from nanochat_pl.data.chat_data import ChatStream
from nanochat_pl.engine import Engine, load_engine
from nanochat_pl.model.gpt import GPTConfig
from nanochat_pl.stages.lm import SAMPLE_PROMPTS
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT, ScriptedEngine, make_checkpoint, noisy_gpt

CALL = [{"type": "text", "text": "Adding: "}, {"type": "python", "text": "2+3"}, {"type": "python_output", "text": "5"}]
CONVERSATION = [
    {"role": "user", "content": "hello world, what is 2+3?"},
    {"role": "assistant", "content": [*CALL, {"type": "text", "text": " so 5.\n#### 5"}]},
    {"role": "user", "content": "café?"},
    {"role": "assistant", "content": "naïve 日本語"},
]


@pytest.fixture(scope="module")
def engine(one_thread):
    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)
    config = GPTConfig.from_depth(2, vocab_size=tokenizer.vocab_size, sequence_len=128, head_dim=32)
    return Engine(noisy_gpt(config), tokenizer, compute_dtype=torch.float32)


def test_loss_and_mask_are_those_the_sft_stage_computes(engine):
    tokens = inspect_tokens(engine, json.dumps(CONVERSATION))
    # the SFT stage's batch of this one conversation (chat_data.py, "pad" packing) and its per-token loss
    stream = ChatStream([CONVERSATION], engine.tokenizer, 1, len(tokens) - 1, "pad")
    inputs, targets, _ = next(stream.batches(0, 1, None))
    losses = engine.model(inputs, targets, loss_reduction="none")[0]
    assert inputs[0].tolist() == [t.id for t in tokens[:-1]]
    assert [t.trained for t in tokens[1:]] == (targets[0] >= 0).tolist()
    trained = targets[0] >= 0
    assert torch.allclose(torch.tensor([t.loss for t in tokens[1:]])[trained], losses[trained], atol=1e-5)
    # the calculator's output, as the engine forces it: <|output_start|>5<|output_end|>
    special = engine.tokenizer.encode_special
    output = [special("<|output_start|>"), *engine.tokenizer.encode("5"), special("<|output_end|>")]
    assert [t.id for t in tokens if t.forced] == output
    assert tokens[0].text == "<|bos|>" and tokens[0].loss is None


def test_top5_and_losses_are_those_of_a_direct_forward_pass(engine):
    tokens = inspect_tokens(engine, json.dumps({"messages": CONVERSATION}))
    ids = torch.tensor([[t.id for t in tokens]])
    with torch.no_grad():
        log_probs = engine.model(ids[:, :-1])[0].float().log_softmax(-1)
    for position, token in enumerate(tokens[1:]):
        best = log_probs[position].topk(5)
        assert [text for text, _ in token.top] == [engine.tokenizer.decode([i]) for i in best.indices.tolist()]
        assert [p for _, p in token.top] == pytest.approx(best.values.exp().tolist(), abs=1e-5)
        assert token.loss == pytest.approx(-log_probs[position, token.id].item(), abs=1e-4)
        assert f"p {math.exp(-token.loss):.3f}" in describe(token)


def test_a_prompt_is_answered_first_with_the_engine_forcing_the_calculator_output():
    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)
    script = [("text", "Adding: "), ("python", "2+3"), ("python_output", "5"), ("text", " so 5.")]
    engine = ScriptedEngine(tokenizer, script)
    tokens = inspect_tokens(engine, "what is 2+3?", max_tokens=64)
    prompt = tokenizer.render_for_completion([{"role": "user", "content": "what is 2+3?"}])
    answer = [{"role": "assistant", "content": [{"type": kind, "text": text} for kind, text in script]}]
    expected, mask = tokenizer.render_conversation([{"role": "user", "content": "what is 2+3?"}, *answer])
    assert engine.prompts == [prompt] and [t.id for t in tokens] == expected
    assert [t.trained for t in tokens] == [bool(m) for m in mask]
    assert tokenizer.decode([t.id for t in tokens if t.forced]) == "<|output_start|>5<|output_end|>"
    # a base model reads a text as a text: after <|bos|>, no chat tokens and no mask; 0 tokens: nothing answered
    text = inspect_tokens(engine, "what is 2+3?", max_tokens=0, chat=False)
    assert [t.id for t in text] == tokenizer.encode("what is 2+3?", prepend="<|bos|>")
    assert all(t.trained is None and not t.forced for t in text) and len(engine.prompts) == 1


def test_the_terminal_output_reads_without_colour_and_has_it_on_a_tty(tmp_path, monkeypatch, capsys, one_thread):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    checkpoints = f"{make_checkpoint(tmp_path / 'a')},{make_checkpoint(tmp_path / 'b')}"
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps(CONVERSATION))
    command = ["inspect", "--checkpoint", checkpoints, "--file", str(conversation), "--device", "cpu"]
    main([*command, "--precision", "fp32"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("== ") == 2 and "sft, step 0, mean loss" in out
    engine, _ = load_engine(str(tmp_path / "a" / "tiny.ckpt"), torch.device("cpu"), precision="fp32")
    tokens = inspect_tokens(engine, json.dumps(CONVERSATION))
    assert "|".join(t.text for t in tokens) in out  # the cut, token by token
    rows = [line.split(maxsplit=1) for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 2 * len(tokens)  # a line per token: its position, text, id, loss, p, mask and top 5
    for (_, row), token in zip(rows, tokens * 2, strict=True):
        assert row.endswith(describe(token)) and row.startswith(repr(token.text)[:18])
    assert [int(position) for position, _ in rows] == [*range(len(tokens))] * 2
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    main([*command, "--precision", "fp32"])
    assert "\x1b[48;2;255;" in capsys.readouterr().out
    monkeypatch.setenv("NO_COLOR", "1")
    main([*command, "--precision", "fp32"])
    assert "\x1b" not in capsys.readouterr().out


def test_the_example_prompts_come_from_the_run_mixture(tmp_path):
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert example_prompts(checkpoint, chat=True) == SAMPLE_PROMPTS["chat"][:4]  # no config beside it
    assert example_prompts(checkpoint, chat=False) == SAMPLE_PROMPTS["text"][:4]
    missing = {"class_path": "nanochat_pl.tasks.customjson.CustomJSON", "init_args": {"filepath": "/no/such.jsonl"}}
    arithmetic = {"class_path": "nanochat_pl.tasks.arithmetic.Arithmetic", "init_args": {"size": 5, "split": "test"}}
    config = {"data": {"init_args": {"train": arithmetic, "val": [missing, arithmetic]}}}  # RL's: one task
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert example_prompts(checkpoint, chat=True) == [Arithmetic(size=5, split="test")[0]["messages"][0]["content"]]
