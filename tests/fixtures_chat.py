"""What the chat, API and browser tests share: a tiny real checkpoint, a scripted stand-in engine whose reply
the test chooses, and a real uvicorn server on a free local port."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import uvicorn

from nanochat_pl.engine import Engine
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.tokenizer import Tokenizer

# text with multi-byte characters, so the tokenizer keeps some of them as several byte tokens
TRAINING_TEXT = ["hello world, the answer is 42. café, naïve, 日本語, € and 🙂 "] * 50


def noisy_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """An eval-mode GPT of `config` in which every weight matters: nanochat's init zeroes the c_proj matrices and
    sets the scalars to constants, so a little noise goes on top (export and format round trips compare them)."""
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def make_checkpoint(directory: Path) -> Path:
    """A tiny random GPT (depth 2) and its tokenizer, saved the way the stages save them."""
    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)
    torch.manual_seed(0)
    config = GPTConfig.from_depth(2, vocab_size=tokenizer.vocab_size, sequence_len=128, head_dim=32)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():  # nanochat's init zeroes the output projections; make the model say varied things
        model.lm_head.weight.normal_(std=0.5)
    state = {"model." + name: tensor for name, tensor in model.state_dict().items()}
    meta = {"stage": "sft", "gpt_config": dataclasses.asdict(config), "tokenizer": tokenizer.to_state()}
    path = directory / "tiny.ckpt"
    torch.save({"state_dict": state, "nanochat_pl": meta}, path)
    return path


# where each kind of tool part sits in the token stream
BLOCKS = {"python": ("<|python_start|>", "<|python_end|>"), "python_output": ("<|output_start|>", "<|output_end|>")}


def reply_tokens(tokenizer: Tokenizer, script: list[tuple[str, str]]) -> list[int]:
    """The tokens of an assistant reply written as (part type, text) pairs, the terminal token last."""
    special = tokenizer.encode_special
    tokens: list[int] = []
    for kind, text in script:
        if kind == "text":
            tokens += tokenizer.encode(text)
        else:
            start, end = BLOCKS[kind]
            tokens += [special(start), *tokenizer.encode(text), special(end)]
    return [*tokens, special("<|assistant_end|>")]


class ScriptedEngine(Engine):
    """Stands in for `Engine`: replies with `script` ((part type, text) pairs: text and calculator calls, the
    tool's output included and masked 0 as the real engine forces it), one token every `delay` seconds; records every
    prompt it is given and how many tokens each reply got out before it ended or was abandoned. Its model is a tiny
    random GPT, which the Inspect tab scores with."""

    def __init__(self, tokenizer: Tokenizer, script: list[tuple[str, str]], delay: float = 0.0):
        config = GPTConfig.from_depth(1, vocab_size=tokenizer.vocab_size, sequence_len=1024, head_dim=32)
        super().__init__(noisy_gpt(config), tokenizer, compute_dtype=torch.float32)
        self.delay = delay
        self.prompts: list[list[int]] = []
        self.produced: list[int] = []
        self.reply = reply_tokens(tokenizer, script)

    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int = 256, **sampling):
        self.prompts.append(list(tokens))
        self.produced.append(0)
        forced = False
        for token in self.reply[:max_tokens]:
            time.sleep(self.delay)
            self.produced[-1] += 1
            forced |= token == self.output_start
            yield [token] * num_samples, [int(not forced)] * num_samples
            forced &= token != self.output_end


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yield its base URL; shut it down afterwards."""
    port = free_port()
    # open connections (a browser's event stream) get 1 s to finish when the test is done with the server
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
