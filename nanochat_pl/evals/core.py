"""CORE, the base model's score (DCLM's 22 tasks), as nanochat's core_eval.py and base_eval.py score it.

nanochat's rules: items are shuffled with Random(1337), then cropped to `max_per_task`; item idx's few-shot examples
are Random(1234 + idx).sample(the other indices of the cropped list, k) (all n - 1 where k > n - 1: nanochat crashes).
A prompt is BOS, the few-shot examples each followed by "\\n\\n", then the item. Multiple choice: `query + delimiter +
choice` per choice, scored over the tokens after the choices' common token prefix; schema: `context_option +
delimiter + continuation` per option, scored over their common token suffix; the lowest mean cross-entropy wins (ties
and NaNs resolved as Python's min and list.index resolve them). Language modeling: `context.strip() + delimiter +
continuation`, the prompt without the continuation `.strip()`-ed and required to be a token prefix of the prompt with
it; correct when the greedy argmax predicts every continuation token. A row longer than the model takes
(`model.max_seq_len`, else our GPT's rotary table) is left-cropped. Per task, centered = (accuracy - baseline/100) /
(1 - baseline/100); CORE = their mean. Examples are rank-strided and the counts summed over ranks.

Faster than nanochat, with the same per-example results up to float rounding (tests/test_eval_core.py): examples
are sorted by length and packed, right-padded with BOS (causal attention: padding after a row changes nothing before
it), into forwards of at most `batch_tokens` tokens (0: nanochat's way, one example per forward); only the scored
positions' logits are made (our GPT's `hidden_only` + `readout`) and read back; rows sharing a long token prefix run
it once through the KV cache (`_score_shared`); bf16 autocast on CUDA, fp32 on a CPU (`eval_precision`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from nanochat_pl.common import UserError
from nanochat_pl.evals.core_data import LM, MC, SCHEMA, CoreTask
from nanochat_pl.evals.harness import centered, rank_and_world, rank_share, sum_across_ranks
from nanochat_pl.precision import PRECISIONS, eval_precision

SHUFFLE_SEED = 1337  # nanochat base_eval.py: Random(1337).shuffle(data)
FEWSHOT_SEED = 1234  # nanochat core_eval.py: Random(1234 + idx)
EXAMPLE_SEPARATOR = "\n\n"  # between few-shot examples and before the item (llm-foundry's default is "\n")
DEFAULT_BATCH_TOKENS = 8192  # rows x padded length per forward; the fp32 logits are 4 x batch_tokens x vocab bytes
WINDOW_EXAMPLES = 512  # examples tokenized and sorted together (bounds the memory of their token lists)


@dataclass
class CoreTaskResult:
    label: str
    accuracy: float
    centered: float
    num_examples: int
    random_baseline: float
    source: str


@dataclass
class CoreResult:
    tasks: list[CoreTaskResult]
    skipped: list[str] = field(default_factory=list)
    core: float = float("nan")  # mean centered accuracy over the tasks that ran

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, e.g. CORE of no task, becomes None)."""
        return {**asdict(self), "core": None if math.isnan(self.core) else self.core}


def task_examples(task: CoreTask, max_per_task: int | None = None) -> list[dict[str, Any]]:
    """The items scored: shuffled with Random(1337), then the first `max_per_task` (None or < 0: all)."""
    examples = list(task.examples)
    random.Random(SHUFFLE_SEED).shuffle(examples)
    return examples if max_per_task is None or max_per_task < 0 else examples[:max_per_task]


def fewshot_indices(idx: int, num_examples: int, k: int) -> list[int]:
    """Item idx's few-shot examples: Random(1234 + idx).sample of the other indices; at most all of them."""
    k = min(k, num_examples - 1)
    if k <= 0:
        return []
    # sample() draws positions from the population's length alone, so sampling positions in range(n - 1) and
    # skipping idx gives nanochat's sample of the list [i for i in range(n) if i != idx], without building it
    positions = random.Random(FEWSHOT_SEED + idx).sample(range(num_examples - 1), k)
    return [p + (p >= idx) for p in positions]


def render_prompts(task: CoreTask, examples: Sequence[dict[str, Any]], idx: int) -> list[str]:
    """Item idx's prompts: one per choice (MC) or context option (schema); for LM [without, with] the continuation."""
    item, delimiter = examples[idx], task.continuation_delimiter
    shots = [examples[i] for i in fewshot_indices(idx, len(examples), task.num_fewshot)]
    if task.task_type == MC:
        prefix = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}{EXAMPLE_SEPARATOR}" for s in shots)
        return [f"{prefix}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task.task_type == SCHEMA:
        prefix = "".join(
            f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}{EXAMPLE_SEPARATOR}" for s in shots
        )
        return [f"{prefix}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    assert task.task_type == LM, task.task_type  # the bundle's reader accepts these three
    prefix = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}{EXAMPLE_SEPARATOR}" for s in shots)
    without = f"{prefix}{item['context'].strip()}{delimiter}"
    return [without.strip(), f"{without}{item['continuation']}"]


@dataclass
class _Example:
    """One item ready to score: its token rows and, per row, the scored span [start, end) of token positions."""

    index: int  # in the task's shuffled, cropped examples
    rows: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int | None  # None for LM
    prefix: int = 0  # tokens every row starts with, none of them scored

    @property
    def longest(self) -> int:
        return max(len(row) for row in self.rows)


def _common_length(sequences: list[list[int]], from_end: bool) -> int:
    """Length of the token prefix (or suffix) all sequences share."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        position = -1 - i if from_end else i
        if any(s[position] != sequences[0][position] for s in sequences):
            return i
    return shortest


def _prepare(task: CoreTask, index: int, rows: list[list[int]], item: dict[str, Any], limit: int | None) -> _Example:
    """Spans as nanochat's batch_sequences_{mc,schema,lm} find them, then rows longer than `limit` left-cropped."""
    ends = [len(row) for row in rows]
    if task.task_type == MC:
        start = _common_length(rows, from_end=False)
        starts, gold = [start] * len(rows), item["gold"]
    elif task.task_type == SCHEMA:
        suffix = _common_length(rows, from_end=True)
        starts, gold = [end - suffix for end in ends], item["gold"]
    else:
        without, with_ = rows
        if not (len(without) < len(with_) and with_[: len(without)] == without):
            raise UserError(
                f"task {task.label}: the prompt without the continuation is not a token prefix of the prompt with it"
            )
        rows, starts, ends, gold = [with_], [len(without)], [len(with_)], None
    if limit is not None:
        for r, row in enumerate(rows):
            crop = len(row) - limit
            if crop > 0:
                if starts[r] - crop < 1:
                    raise UserError(f"task {task.label}: a continuation longer than the model's {limit} positions")
                rows[r], starts[r], ends[r] = row[crop:], starts[r] - crop, ends[r] - crop
    # of the rows as they run (cropped alike, e.g. one-token choices, they still share what is left of the context)
    prefix = min(_common_length(rows, from_end=False), *starts) if len(rows) > 1 else 0
    return _Example(index, rows, starts, ends, gold, prefix)


def _worth_sharing(example: _Example) -> bool:
    """Whether running the rows' common prefix once (`_score_shared`: prefix + rows x suffix tokens, plus ~100 for
    its second forward and the cache's copies) is cheaper than its whole rows (rows x longest) batched with other
    examples, which is worth ~1.3x (measured on CPU)."""
    if example.prefix < 1:
        return False
    width = max(0, max(example.ends) - 1 - example.prefix)
    shared, whole = example.prefix + len(example.rows) * width, len(example.rows) * example.longest
    return shared + 100 <= whole / 1.3


def _batches(examples: list[_Example], batch_tokens: int) -> Iterator[list[_Example]]:
    """Groups of examples for one forward each, longest first, as many as fit rows x longest row <= batch_tokens."""
    group: list[_Example] = []
    num_rows = longest = 0
    for example in sorted(examples, key=lambda e: e.longest, reverse=True):
        rows, length = num_rows + len(example.rows), max(longest, example.longest)
        if group and rows * length > batch_tokens:
            yield group
            group, rows, length = [], len(example.rows), example.longest
        group.append(example)
        num_rows, longest = rows, length
    if group:
        yield group


def _spans(group: list[_Example]) -> tuple[list[int], list[int]]:
    """Row (numbered over the whole group) and token position of every scored token, example by example."""
    row_of, position_of, r = [], [], 0
    for example in group:
        for start, end in zip(example.starts, example.ends, strict=True):
            row_of += [r] * (end - start)
            position_of += range(start, end)
            r += 1
    return row_of, position_of


def _judge(group: list[_Example], scored: torch.Tensor, targets: torch.Tensor) -> list[tuple[int, bool]]:
    """(index, whether it comes out correct) for each example of `group`, from the logits (fp32) predicting its
    scored tokens `targets`, in `_spans` order: cross-entropy and argmax there, read back in one transfer."""
    losses = F.cross_entropy(scored, targets.to(scored.device), reduction="none").cpu()
    hits = (scored.argmax(dim=-1).cpu() == targets).tolist()
    results, offset = [], 0
    for example in group:
        lengths = [end - start for start, end in zip(example.starts, example.ends, strict=True)]
        if example.gold is None:  # LM, one row: right when the argmax is every continuation token
            results.append((example.index, all(hits[offset : offset + lengths[0]])))
            offset += lengths[0]
            continue
        means = []  # the lowest mean loss wins; an empty span's mean is NaN, resolved by min() and index() as nanochat
        for length in lengths:
            means.append(losses[offset : offset + length].mean().item())
            offset += length
        results.append((example.index, means.index(min(means)) == example.gold))
    return results


@torch.no_grad()
def _score(
    model: torch.nn.Module, group: list[_Example], pad_id: int, device: torch.device, autocast, readout: bool
) -> list[tuple[int, bool]]:
    """Results of the examples of `group` from one forward of all their rows, right-padded with `pad_id`. Position
    t - 1 predicts token t; only the scored positions are gathered, and with `readout` only they are read out."""
    rows = [torch.tensor(row, dtype=torch.long) for example in group for row in example.rows]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id)
    row_of, position_of = map(torch.tensor, _spans(group))
    targets = ids[row_of, position_of]
    row_of, before = row_of.to(device), (position_of - 1).to(device)
    with autocast:
        if readout:
            scored = model.readout(model(ids.to(device), hidden_only=True)[row_of, before])
        else:
            scored = model(ids.to(device))[row_of, before]
    return _judge(group, scored.float(), targets)


@torch.no_grad()
def _score_shared(
    model: torch.nn.Module, example: _Example, pad_id: int, device: torch.device, autocast, cache_dtype
) -> list[tuple[int, bool]]:
    """One example's result, its rows' common prefix run once: the prefix fills a KV cache, replicated to every row,
    then the rows' right-padded suffixes run on top of it. The cache carries all that later tokens need of the prefix
    (keys and values, the last token's embedding for smear), so the results are `_score`'s up to float rounding."""
    P, num_rows = example.prefix, len(example.rows)
    width = max(example.ends) - 1 - P  # suffix positions whose outputs are needed: P .. end - 2
    row_of, position_of = _spans([example])
    targets = torch.tensor([example.rows[r][t] for r, t in zip(row_of, position_of, strict=True)], dtype=torch.long)
    # the hidden state predicting token t: the prefix's last (t == P), else row r's suffix output t - 1 - P
    source = [0 if t == P else 1 + r * width + (t - 1 - P) for r, t in zip(row_of, position_of, strict=True)]
    cache = model.new_kv_cache(1, P + width, dtype=cache_dtype)
    with autocast:
        prefix = torch.tensor([example.rows[0][:P]], device=device)
        hidden = model(prefix, kv_cache=cache, last_only=True, hidden_only=True)[0]
        if width > 0:
            suffixes = [torch.tensor(row[P : P + width], dtype=torch.long) for row in example.rows]
            suffixes = pad_sequence(suffixes, batch_first=True, padding_value=pad_id)  # the longest is `width` long
            out = model(suffixes.to(device), kv_cache=cache.replicate(num_rows), hidden_only=True)
            hidden = torch.cat([hidden, out.reshape(num_rows * width, -1)])
        scored = model.readout(hidden[torch.tensor(source, device=device)])
    return _judge([example], scored.float(), targets)


def _max_positions(model: torch.nn.Module) -> int | None:
    """The longest row the model can take: nanochat's `max_seq_len` attribute, else our GPT's rotary table."""
    if getattr(model, "max_seq_len", None) is not None:
        return int(model.max_seq_len)
    cos = getattr(model, "cos", None)
    return int(cos.size(0)) if isinstance(cos, torch.Tensor) else None


def _score_task(
    model, tokenizer, task: CoreTask, examples: list[dict], indices: Sequence[int], batch_tokens: int, precision: str
) -> Iterator[list[tuple[int, bool]]]:
    """Per forward, (index, correct) of its examples: `indices` a window at a time, tokenized together, batched."""
    device = next(model.parameters()).device
    dtype = PRECISIONS[eval_precision(device, precision)]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    limit = _max_positions(model)
    for begin in range(0, len(indices), WINDOW_EXAMPLES):
        window = indices[begin : begin + WINDOW_EXAMPLES]
        prompts = [render_prompts(task, examples, idx) for idx in window]
        flat = tokenizer.encode([p for group in prompts for p in group], prepend=tokenizer.bos_token_id)
        prepared, offset = [], 0
        for idx, group in zip(window, prompts, strict=True):
            prepared.append(_prepare(task, idx, flat[offset : offset + len(group)], examples[idx], limit))
            offset += len(group)
        if batch_tokens <= 0:  # nanochat's way: one example per forward, in order, whole rows, all logits
            for example in prepared:
                yield _score(model, [example], tokenizer.bos_token_id, device, autocast, readout=False)
            continue
        readout = callable(getattr(model, "readout", None))
        shares = readout and callable(getattr(model, "new_kv_cache", None))
        rest = []
        for example in prepared:
            if shares and _worth_sharing(example):
                yield _score_shared(model, example, tokenizer.bos_token_id, device, autocast, dtype)
            else:
                rest.append(example)
        for batch in _batches(rest, batch_tokens):
            yield _score(model, batch, tokenizer.bos_token_id, device, autocast, readout)


def evaluate_core(
    model: torch.nn.Module,
    tokenizer,
    tasks: list[CoreTask],
    *,
    max_per_task: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool = True,
    skipped: Sequence[str] = (),
    precision: str = "auto",
) -> CoreResult:
    """Score `model` (ids (B, T) -> logits (B, T, V); our GPT's `hidden_only` + `readout` and KV cache where it has
    them) on `tasks`; every rank returns the same result. `batch_tokens`: rows x padded length per forward (0: one
    example per forward, as nanochat); `skipped`: `load_core_tasks`'s reasons, carried into the result; `precision`:
    "bf16" (autocast), "fp32" or "auto" (the device's `eval_precision`)."""
    cropped = [task_examples(task, max_per_task) for task in tasks]
    shares = [list(rank_share(len(examples))) for examples in cropped]
    correct = [0] * len(tasks)
    was_training = model.training
    model.eval()
    bar = tqdm(total=sum(map(len, shares)), desc="CORE", unit="ex", disable=not progress or rank_and_world()[0] != 0)
    try:
        for t, (task, examples, share) in enumerate(zip(tasks, cropped, shares, strict=True)):
            bar.set_postfix_str(task.label)
            for batch in _score_task(model, tokenizer, task, examples, share, batch_tokens, precision):
                correct[t] += sum(ok for _, ok in batch)
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    totals = sum_across_ranks(correct, device=next(model.parameters()).device).tolist()
    results, reasons = [], list(skipped)
    for task, examples, num_correct in zip(tasks, cropped, totals, strict=True):
        if not examples:
            reasons.append(f"{task.label}: no examples")
            continue
        accuracy, baseline = num_correct / len(examples), task.random_baseline
        above_chance = centered(accuracy, baseline / 100)
        results.append(CoreTaskResult(task.label, accuracy, above_chance, len(examples), baseline, task.source))
    core = sum(r.centered for r in results) / len(results) if results else float("nan")
    return CoreResult(results, reasons, core)
