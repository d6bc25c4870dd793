"""The Gradio page: what the model is, a chat whose replies stream from the replica pool, and an Inspect tab.

Each calculator call is its own collapsible message: the expression in a code block (so `2*3*4` is not read as
markdown), the result beside the title (`metadata["log"]`); a final `#### 84` (GSM8K's) shows as an answer. When the
history comes back on the next turn, they become python / python_output parts and `#### 84` again, so the model sees
its earlier turns token for token.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from nanochat_pl.apps.api import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from nanochat_pl.apps.inspector import inspect_tokens, tokens_html
from nanochat_pl.apps.pool import ReplicaPool
from nanochat_pl.common import UserError
from nanochat_pl.limits import MAX_NEW_TOKENS, MAX_TEMPERATURE, MAX_TOP_K, check_sampling
from nanochat_pl.reply import Piece
from nanochat_pl.stages.lm import SAMPLE_PROMPTS

TOOL_TITLE = "🧮 calculator"
RESULT_PREFIX = "= "
FENCE_OPEN, FENCE_CLOSE = "```\n", "\n```"
ANSWER, SHOWN_ANSWER = re.compile(r"^#### (.*)$", re.M), re.compile(r"^🎯 Answer: \*\*(.*)\*\*$", re.M)


def _text(content: Any) -> str:
    """A history message's text: Gradio hands it over as a string or as a list of {"type": "text"} parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def conversation_from_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gradio's history -> the tokenizer's messages: consecutive assistant messages are one turn, the
    calculator messages in it its python / python_output parts."""
    messages: list[dict[str, Any]] = []
    for message in history:
        text, metadata = _text(message["content"]), message.get("metadata") or {}
        if message["role"] != "assistant":
            messages.append({"role": message["role"], "content": text})
            continue
        if not messages or messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": []})
        parts = messages[-1]["content"]
        if metadata.get("title") != TOOL_TITLE:
            parts.append({"type": "text", "text": SHOWN_ANSWER.sub(r"#### \1", text)})
            continue
        parts.append({"type": "python", "text": text.removeprefix(FENCE_OPEN).removesuffix(FENCE_CLOSE)})
        if "log" in metadata:
            parts.append({"type": "python_output", "text": metadata["log"].removeprefix(RESULT_PREFIX)})
    return messages


def _text_part(text: str) -> dict[str, str]:
    """Message content as a text part: Gradio passes it through as is, where a plain string would go through
    `inspect.cleandoc`, losing its leading spaces and indentation."""
    return {"type": "text", "text": text}


def _show(shown: list[gr.ChatMessage], piece: Piece) -> None:
    last = shown[-1] if shown else None
    in_tool = last is not None and last.metadata.get("title") == TOOL_TITLE
    if piece.kind == "python" and piece.text == "":  # a new call opens
        content = _text_part(FENCE_OPEN + FENCE_CLOSE)
        shown.append(gr.ChatMessage(content=content, metadata={"title": TOOL_TITLE, "status": "pending"}))
    elif piece.kind == "python":
        expression = last.content["text"].removesuffix(FENCE_CLOSE) + piece.text
        last.content = _text_part(expression + FENCE_CLOSE)
    elif piece.kind == "python_output" and in_tool:
        # a new dict, not an edit in place: the page compares each update with the last one it sent
        log = last.metadata.get("log", RESULT_PREFIX) + piece.text
        last.metadata = {**last.metadata, "log": log, "status": "done"}
    elif last is None or in_tool:  # text, or a result the model wrote without a call: shown as text
        shown.append(gr.ChatMessage(content=_text_part(piece.text)))
    else:
        last.content = _text_part(last.content["text"] + piece.text)


def _shown(message: gr.ChatMessage) -> gr.ChatMessage:
    """A message as the page shows it: a final line `#### 84` as an answer."""
    text = None if message.metadata.get("title") else ANSWER.sub(r"🎯 Answer: **\1**", message.content["text"])
    return message if text is None else gr.ChatMessage(content=_text_part(text))


def example_prompts(checkpoint: str | Path, chat: bool, count: int = 4) -> list[str]:
    """Questions like those the model was trained on: the first of each task of its run's validation, then training
    mixture (in the config.yaml LightningCLI saved), a task whose data is not here left out; else stages/lm.py's."""
    config = Path(checkpoint).parent.parent / "config.yaml"
    data = (yaml.safe_load(config.read_text()).get("data") or {}).get("init_args", {}) if config.is_file() else {}
    prompts: dict[str, str] = {}  # by task class
    mixtures = [data.get(key) for key in ("val", "train")]  # lists of tasks, or one task (RL's)
    for spec in [task for mixture in mixtures for task in (mixture if isinstance(mixture, list) else [mixture])]:
        if isinstance(spec, dict) and spec["class_path"] not in prompts and len(prompts) < count:
            with contextlib.suppress(UserError):  # a dataset not downloaded here
                module, _, name = spec["class_path"].rpartition(".")
                task = getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
                prompts[spec["class_path"]] = next(m["content"] for m in task[0]["messages"] if m["role"] == "user")
    return list(prompts.values()) or SAMPLE_PROMPTS["chat" if chat else "text"][:count]


def page(pool: ReplicaPool, checkpoint: str | Path, meta: dict[str, Any]) -> gr.Blocks:
    """What the model is (its checkpoint's stage and step, its size), the chat and the Inspect tab."""
    engine, chat = pool.engines[0], meta["stage"] != "base"
    about = f"**{meta['stage']}** model, step {meta['step']:,}, {engine.model.num_params():,} parameters"
    chat_tab = chat_page(pool, example_prompts(checkpoint, chat))  # built outside the page, rendered in it
    with gr.Blocks(title="nanochat-pl", fill_height=True, analytics_enabled=False) as blocks:
        gr.Markdown(f"## nanochat-pl\n{about}")
        with gr.Tab("Chat"):
            chat_tab.render()
        with gr.Tab("Inspect"):
            text = gr.Textbox(label="A prompt, a text, or a JSON conversation", lines=3)
            answer = gr.Slider(0, 512, value=64, step=1, label="The model answers first, up to (0: as given)")
            button, shown = gr.Button("Inspect"), gr.HTML()

            def inspect(text: str, max_tokens: float) -> str:  # a UserError shows in the page's error box
                return tokens_html(inspect_tokens(engine, text, int(max_tokens), chat))

            gr.on([button.click, text.submit], inspect, [text, answer], shown)
    return blocks


def chat_page(pool: ReplicaPool, examples: list[str]) -> gr.ChatInterface:
    async def respond(
        message: str, history: list[dict[str, Any]], temperature: float, top_k: int, max_tokens: int
    ) -> AsyncIterator[list[gr.ChatMessage]]:
        messages = [*conversation_from_history(history), {"role": "user", "content": message}]
        try:
            # Gradio's own API bypasses the sliders: check what arrives, before its numbers are made whole
            check_sampling(temperature, top_k, max_tokens)
            _, pieces = pool.reply(messages, temperature=temperature, top_k=int(top_k), max_tokens=int(max_tokens))
        except UserError as error:
            raise gr.Error(str(error)) from error
        shown: list[gr.ChatMessage] = []
        async for piece in pieces:
            _show(shown, piece)
            yield list(map(_shown, shown))
        if not shown:  # the model ended its turn at once
            yield [gr.ChatMessage(content=_text_part(""))]

    controls = [
        gr.Slider(0.0, MAX_TEMPERATURE, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature"),
        gr.Slider(0, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="Top-k (0: off)"),
        gr.Slider(1, MAX_NEW_TOKENS, value=DEFAULT_MAX_TOKENS, step=1, label="Max new tokens"),
    ]
    return gr.ChatInterface(
        respond,
        additional_inputs=controls,
        additional_inputs_accordion=gr.Accordion("Sampling", open=False),
        examples=[[prompt, None, None, None] for prompt in examples],  # shown in the empty chat; a click sends one
        concurrency_limit=None,  # the replica pool queues the requests, not Gradio
        fill_height=True,
        analytics_enabled=False,  # no telemetry and no version check calling out from a self-hosted server
    )
