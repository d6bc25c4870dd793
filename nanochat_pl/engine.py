"""Batched, KV-cached generation with the calculator tool, as nanochat's engine.py does it.

The prompt is prefilled once and its KV cache replicated to `num_samples` rows. An expression a row writes between
`<|python_start|>` and `<|python_end|>` goes to `sandbox.calculator`, whose result (or "Error: ...", where nanochat
forces nothing) is forced into the row as `<|output_start|>result<|output_end|>` with mask 0, so RL can tell forced
tokens from sampled ones. Sampling settings are checked where they enter (CLI, HTTP, the page), not here.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nanochat_pl.checkpoint import load_model
from nanochat_pl.common import UserError
from nanochat_pl.precision import PRECISIONS, choose_precision, eval_precision
from nanochat_pl.sandbox import calculator


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token per row of `logits` (B, V): argmax at temperature 0, else a seeded draw from softmax(logits /
    temperature) cut to the top_k tokens (None or 0: no cut), then to the smallest set reaching top_p (nucleus
    sampling, Holtzman et al. 2019). The draw is among the candidates only: over the whole vocabulary it costs
    as much as the forward pass on a CPU."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    nucleus = top_p is not None and top_p < 1.0
    candidates = None
    if top_k and top_k < logits.size(-1):
        logits, candidates = logits.topk(top_k, dim=-1)  # sorted, most likely first
    elif nucleus:
        logits, candidates = logits.sort(dim=-1, descending=True)
    probs = F.softmax(logits, dim=-1)
    if nucleus:  # probs are sorted here: drop a token once those before it hold top_p
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
    choice = torch.multinomial(probs, num_samples=1, generator=generator)
    return (choice if candidates is None else candidates.gather(-1, choice)).squeeze(-1)


@dataclass
class _Row:
    """One sample's place in the tool-use state machine."""

    forced: deque[int] = field(default_factory=deque)  # tokens to feed instead of sampling (tool output)
    expression: list[int] | None = None  # tokens since <|python_start|>, None outside a python block
    finished_with: int | None = None  # the terminal token once the row is done


class Engine:
    """Generates from a `GPT` and its tokenizer. `compute_dtype` (None: the weights' dtype, or over fp32 weights the
    device's fixed `eval_precision`): fp32 weights (a training module's) are copied in it once per generation rather
    than cast by autocast at every step, since decoding reads every weight once per token."""

    def __init__(self, model: torch.nn.Module, tokenizer, compute_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
        held = floating.pop() if len(floating) == 1 else None  # the one dtype all weights are stored in
        if compute_dtype is None:
            compute_dtype = held if held not in (None, torch.float32) else PRECISIONS[eval_precision(self.device)]
        assert held in (None, torch.float32, compute_dtype), f"{held} weights cannot compute in {compute_dtype}"
        self.compute_dtype, self.casts_weights = compute_dtype, held != compute_dtype
        special = tokenizer.encode_special
        self.terminal_tokens = (special("<|assistant_end|>"), tokenizer.bos_token_id)
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")

    @torch.inference_mode()
    def generate(
        self,
        tokens: list[int],
        num_samples: int = 1,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 42,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Stream `(token_ids, masks)`, one token per sample per step; mask 0 marks a forced token (tool output).
        After a sample's terminal token its later entries repeat that token with mask 0."""
        context = self.model.config.sequence_len
        assert 0 < len(tokens) < context, f"a prompt of {len(tokens)} tokens in a context of {context}"
        assert num_samples >= 1 and max_tokens >= 1 and temperature >= 0, (num_samples, max_tokens, temperature)
        steps = min(max_tokens, context - len(tokens))  # the whole sequence stays within the context

        generator = torch.Generator(device=self.device).manual_seed(seed)
        # the cache holds the prompt and every generated token but the last, which is never fed back
        kv_cache = self.model.new_kv_cache(1, len(tokens) + steps, dtype=self.compute_dtype)
        model = self.model
        if self.casts_weights:  # a copy of the model with its tensors cast (in deepcopy's memo: not copied first)
            dtype = self.compute_dtype
            memo: dict[int, Any] = {id(b): b.to(dtype) if b.is_floating_point() else b for b in model.buffers()}
            memo.update({id(p): torch.nn.Parameter(p.to(dtype), requires_grad=False) for p in model.parameters()})
            model = copy.deepcopy(model, memo)

        def forward(ids: torch.Tensor) -> torch.Tensor:  # the last position's logits, (B, V) fp32
            return model(ids, kv_cache=kv_cache, last_only=True)[:, -1, :].float()

        logits = forward(torch.tensor([tokens], dtype=torch.long, device=self.device)).expand(num_samples, -1)
        kv_cache = kv_cache.replicate(num_samples)
        rows = [_Row() for _ in range(num_samples)]
        for step in range(steps):
            sampled = sample_next_token(logits, generator, temperature, top_k, top_p)
            column, masks = sampled.tolist(), [1] * num_samples
            for i, row in enumerate(rows):
                if row.finished_with is not None:
                    column[i], masks[i] = row.finished_with, 0
                elif row.forced:
                    column[i], masks[i] = row.forced.popleft(), 0
                self._advance(row, column[i])
            yield column, masks
            if step == steps - 1 or all(row.finished_with is not None for row in rows):
                return
            feed = sampled if all(masks) else torch.tensor(column, device=self.device)
            logits = forward(feed.view(num_samples, 1))

    def _advance(self, row: _Row, token: int) -> None:
        """Move a row's state machine past `token`; a finished `<|python_end|>` runs the calculator."""
        if token in self.terminal_tokens:
            row.finished_with = token
        elif token == self.python_start:
            row.expression = []
        elif token == self.python_end and row.expression is not None:
            result = calculator(self.tokenizer.decode(row.expression))
            row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
            row.expression = None
        elif row.expression is not None:
            row.expression.append(token)

    def generate_batch(
        self, tokens: list[int], num_samples: int = 1, **kwargs
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Per sample: prompt + generated tokens (no terminal token), and masks (0 on prompt and forced tokens)."""
        sequences = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks, strict=True)):
                if token not in self.terminal_tokens:  # a finished row repeats its terminal token
                    sequences[i].append(token)
                    masks[i].append(mask)
        return sequences, masks


def resolve_device(device: str) -> torch.device:
    """ "auto" -> the first CUDA device if there is one, else the CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def load_engine(
    checkpoint: str, device: torch.device, tokenizer_dir: str | None = None, precision: str = "auto"
) -> tuple[Engine, dict[str, Any]]:
    """An Engine for `checkpoint` (any stage's) on `device` in `precision` (said on stderr) and its metadata."""
    # read and cast on the CPU: the device never holds the fp32 weights beside their bf16 copy
    model, tokenizer, meta = load_model(checkpoint, device=torch.device("cpu"), tokenizer_dir=tokenizer_dir)
    name, why = choose_precision(device, model.config.n_embd, precision)
    print(f"engine: {device.type}, precision {name} ({why})", file=sys.stderr)
    return Engine(model.to(PRECISIONS[name]).to(device), tokenizer, compute_dtype=PRECISIONS[name]), meta
