"""Batched, KV-cached generation with the calculator tool, as nanochat does it (nanochat engine.py@92d63d4).

The prompt is prefilled once with batch 1, its KV cache is replicated to `num_samples` rows, then every step
feeds one column of tokens (one per row) through the model with the cache. Each row runs a small state
machine: tokens written between `<|python_start|>` and `<|python_end|>` are an expression for
`sandbox.calculator`, and its result is forced into that row as `<|output_start|>result<|output_end|>`, one
token per step, with mask 0 so that training (RL) can tell forced tokens from sampled ones. An expression the
calculator refuses forces its "Error: ..." text the same way (nanochat forces nothing then): the model sees
why its call failed, and a bad call never stops the engine. A row ends at
`<|assistant_end|>` or `<|bos|>`; generation ends when every row has, at `max_tokens`, or when the sequence
reaches the model's context length. The sampling settings are checked against `limits`, as every reply's are.

`load_engine` makes an engine of any stage's checkpoint, on the device `resolve_device` names, with its weights
stored in the compute dtype (`cast_for_inference`).
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
from nanochat_pl.limits import check_sampling
from nanochat_pl.precision import PrecisionChoice, choose_precision, model_width
from nanochat_pl.sandbox import calculator


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Pick one token per row of `logits` (B, V): argmax at temperature 0, else a seeded draw from
    softmax(logits / temperature) restricted to the top_k tokens (None or 0: no cut) and then to the smallest
    set of tokens whose probability reaches top_p (nucleus sampling, Holtzman et al. 2019). Returns (B,) int64.

    The draw is made among the candidates only (k of them, not the whole vocabulary): a multinomial over
    32k entries per row cost as much as the model's forward pass when decoding 32 rows on a CPU."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        logits, candidates = logits.topk(top_k, dim=-1)  # sorted, most likely first
    elif top_p is not None and top_p < 1.0:
        logits, candidates = logits.sort(dim=-1, descending=True)
    else:
        candidates = None
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:  # probs are sorted here: drop a token once those before it hold top_p
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    choice = torch.multinomial(probs, num_samples=1, generator=generator)
    return (choice if candidates is None else candidates.gather(-1, choice)).squeeze(-1)


@dataclass
class _Row:
    """One sample's place in the tool-use state machine."""

    forced: deque[int] = field(default_factory=deque)  # tokens to feed instead of sampling (tool output)
    expression: list[int] | None = None  # tokens since <|python_start|>, None outside a python block
    finished_with: int | None = None  # the terminal token once the row is done


class Engine:
    """Generates from a `GPT` (any stage's checkpoint) and its tokenizer. The model's options (sliding
    windows, value embeddings, GQA, ...) live in the model and its KV cache; the engine does not see them."""

    def __init__(self, model: torch.nn.Module, tokenizer, compute_dtype: torch.dtype | None = None):
        """`compute_dtype`: what the model and the KV cache compute in. None: a model held in bf16 (`load_engine`'s,
        `cast_for_inference`) in bf16; over fp32 weights bf16 on CUDA (as nanochat) and on a CPU whichever of bf16
        and fp32 a short measurement finds faster (precision.py). In bf16 the engine reads bf16 weights: a model
        held in fp32 (a training module's master weights) is copied in bf16 once per generation, not cast by
        autocast at every step. On 2 cores of an AMD EPYC without native bf16 (depth 4, 128-token prompt,
        `nanochat-pl bench infer`), batch-1 decoding took 6.8-7.1 ms/token in fp32, 8.3-8.5 under bf16 autocast
        and 4.4-5.7 over bf16 weights; the first token 16-20 ms in fp32, 53-61 in bf16."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
        held = next(iter(floating)) if len(floating) == 1 else None  # the one dtype all weights are stored in
        if compute_dtype is None and held is not None and held != torch.float32:
            choice = PrecisionChoice(held, f"{held} (the dtype of the model's weights)")
        elif compute_dtype is None:
            choice = choose_precision(self.device, model_width(model))
        else:
            choice = PrecisionChoice(compute_dtype, f"{compute_dtype} (given)")
        if held is not None and held != torch.float32 and choice.dtype != held:
            raise UserError(f"the model's weights are {held}: it cannot compute in {choice.dtype}")
        self.compute_dtype, self.precision = choice.dtype, choice.reason
        # weights not all in the compute dtype (fp32 under bf16, or fp32 linears beside bf16 embeddings) are cast
        self.casts_weights = held != self.compute_dtype
        special = tokenizer.encode_special
        self.terminal_tokens = (special("<|assistant_end|>"), tokenizer.bos_token_id)
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")

    def _model_for_generation(self) -> torch.nn.Module:
        """The model to generate with: the model itself where its weights are all in the compute dtype, else a
        copy of it whose floating-point parameters and buffers are cast once, for this generation (`deepcopy` with
        the cast tensors in its memo: the fp32 weights are not copied, the model is not touched). Decoding at
        batch 1 reads every weight once per token: the bf16 copy is read as it is (2 bytes a weight), where
        autocast over fp32 weights read, cast and re-read each at every step (8 bytes); its numbers are
        `cast_for_inference`'s."""
        if not self.casts_weights:
            return self.model

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.compute_dtype) if t.is_floating_point() else t

        memo: dict[int, Any] = {id(b): cast(b) for b in self.model.buffers()}
        memo.update({id(p): torch.nn.Parameter(cast(p), requires_grad=False) for p in self.model.parameters()})
        return copy.deepcopy(self.model, memo)

    def _forward(self, model: torch.nn.Module, ids: torch.Tensor, kv_cache) -> torch.Tensor:
        """Logits of the last position, (B, V) fp32."""
        return model(ids, kv_cache=kv_cache, last_only=True)[:, -1, :].float()

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
        """Stream `(token_ids, masks)`, one column (one token per sample) per step; mask 0 marks a token the
        engine forced (tool output) rather than sampled. After a sample's terminal token its later entries
        repeat that token with mask 0 and carry nothing."""
        vocab_size = self.model.config.vocab_size
        if not tokens or not all(isinstance(t, int) and 0 <= t < vocab_size for t in tokens):
            raise UserError("the prompt must be a non-empty list of token ids within the vocabulary")
        if num_samples < 1:
            raise UserError(f"need num_samples >= 1, got {num_samples}")
        check_sampling(temperature, top_k, max_tokens, top_p, seed)
        context = self.model.config.sequence_len
        if len(tokens) >= context:
            raise UserError(f"the prompt has {len(tokens)} tokens; the model's context is {context} tokens")
        steps = min(max_tokens, context - len(tokens))  # the whole sequence stays within the context

        generator = torch.Generator(device=self.device).manual_seed(seed)
        # the cache holds the prompt and every generated token but the last, which is never fed back
        prefill_cache = self.model.new_kv_cache(1, len(tokens) + steps, dtype=self.compute_dtype)
        prompt = torch.tensor([tokens], dtype=torch.long, device=self.device)
        model = self._model_for_generation()
        logits = self._forward(model, prompt, prefill_cache).expand(num_samples, -1)
        kv_cache = prefill_cache.replicate(num_samples)
        del prefill_cache

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
            feed = sampled if masks == [1] * num_samples else torch.tensor(column, device=self.device)
            logits = self._forward(model, feed.view(num_samples, 1), kv_cache)

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
        """Generate to the end and return, per sample, prompt + generated tokens (terminal token stripped) and
        masks (0 on the prompt and on forced tokens). `kwargs` are `generate`'s."""
        sequences = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks, strict=True)):
                done[i] = done[i] or token in self.terminal_tokens
                if not done[i]:
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
    """An Engine for `checkpoint` (any stage's) on `device` and the checkpoint's metadata, and a line on stderr
    saying the precision it runs in: `precision` "bf16" or "fp32", or "auto" (bf16 on CUDA; on a CPU the faster
    of the two, measured)."""
    # read on the CPU and cast there: the device never holds the fp32 weights beside their bf16 copy
    model, tokenizer, meta = load_model(checkpoint, device=torch.device("cpu"), tokenizer_dir=tokenizer_dir)
    choice = choose_precision(device, model_width(model), precision)
    print(f"engine: {device.type}, {choice.reason}", file=sys.stderr)
    model = cast_for_inference(model, choice.dtype).to(device)
    return Engine(model, tokenizer, compute_dtype=choice.dtype), meta


def cast_for_inference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model`, in place, with its floating-point weights and buffers stored in `dtype`, for a model that only
    generates (never a training module's: its fp32 master weights must stay). At batch 1 decoding reads every
    weight once per token: bf16 weights are read once (2 bytes a parameter), where autocast over fp32 weights
    reads each, writes its bf16 copy and reads that every step (8 bytes), and they take half the memory. The
    forward is then bf16 throughout with the logits in fp32, as nanochat HEAD computes (its Linear casts its fp32
    master weight to bf16 at every call: the same numbers; tests/test_engine.py)."""
    return model if dtype == torch.float32 else model.to(dtype)
