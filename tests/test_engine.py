"""The engine against two references: full forward passes of the real GPT over the growing sequence (for the
KV cache and sampling), and a scripted model whose logits the test controls (for tool use and stopping)."""

import copy
from types import SimpleNamespace

import pytest
import torch

from nanochat_pl.engine import Engine, sample_next_token
from nanochat_pl.model.gpt import GPT, OCT_2025, GPTConfig
from nanochat_pl.model.kv_cache import KVCache
from nanochat_pl.sandbox import calculator
from nanochat_pl.stages.precision import NanochatBf16
from nanochat_pl.tokenizer import MIN_VOCAB_SIZE, Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(["hello world, hello there"] * 20, vocab_size=MIN_VOCAB_SIZE + 8)


# ----------------------------------------------------------------------------------------------------------
# the real GPT: KV-cached decoding against full forward passes over the growing sequence

CONFIGS = {
    # sliding windows of 6 (prompt + generation span several), GQA, value embeddings, smear, backout
    "head": dict(window_pattern="SSSL", short_window=6, n_kv_head=1),
    "oct2025": dict(OCT_2025, n_kv_head=2),
}


def random_gpt(vocab_size, options):
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=64, vocab_size=vocab_size, n_layer=4, n_head=2, n_embd=48, **options)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():  # nanochat's init zeroes c_proj and shrinks lm_head: make every path matter
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=1.5 / p.size(1) ** 0.5)
        if config.smear:
            model.smear_lambda.fill_(0.5)
    return model.eval()


@torch.inference_mode()
def naive_generate(model, tokenizer, prompt, num_samples, steps, temperature, top_k=None, seed=42):
    """The reference: every step runs the whole sequence through the model, no cache; rows that ended
    repeat their terminal token, as the engine's stream does."""
    terminal = (tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id)
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.tensor([prompt] * num_samples)
    ended = [None] * num_samples
    columns = []
    for _ in range(steps):
        logits = model(sequences)[:, -1, :]
        column = sample_next_token(logits, generator, temperature, top_k).tolist()
        column = [token if end is None else end for token, end in zip(column, ended, strict=True)]
        ended = [end or (token if token in terminal else None) for token, end in zip(column, ended, strict=True)]
        columns.append(column)
        if all(ended):
            break
        sequences = torch.cat([sequences, torch.tensor(column)[:, None]], dim=1)
    return columns


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_greedy_decoding_equals_argmax_of_full_forward(tokenizer, options):
    model = random_gpt(tokenizer.vocab_size, options)
    prompt = prompt_for(tokenizer, "hello")
    engine = Engine(model, tokenizer, compute_dtype=torch.float32)
    columns = [column for column, _ in engine.generate(prompt, max_tokens=30, temperature=0.0)]
    assert columns == naive_generate(model, tokenizer, prompt, 1, 30, temperature=0.0)
    windows = [w for w in model.config.layer_windows() if w is not None]
    assert len(columns) > 10 and all(len(prompt) + len(columns) > 2 * w for w in windows)


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_sampling_equals_full_forward_with_the_same_seed(tokenizer, options):
    model = random_gpt(tokenizer.vocab_size, options)
    prompt = prompt_for(tokenizer, "hello there")
    engine = Engine(model, tokenizer, compute_dtype=torch.float32)
    stream = list(engine.generate(prompt, num_samples=4, max_tokens=25, temperature=1.0, top_k=50, seed=3))
    columns = [column for column, _ in stream]
    assert columns == naive_generate(model, tokenizer, prompt, 4, 25, temperature=1.0, top_k=50, seed=3)
    assert len({tuple(row) for row in zip(*columns, strict=True)}) == 4  # the samples went their own ways
    # no tool call happened (the reference has no tool): every token up to a row's end was sampled
    assert tokenizer.encode_special("<|python_start|>") not in sum(columns, [])


def test_seeds_reproduce_and_differ_and_top_k_1_is_greedy(tokenizer):
    model = random_gpt(tokenizer.vocab_size, CONFIGS["head"])
    prompt = prompt_for(tokenizer)
    engine = Engine(model, tokenizer, compute_dtype=torch.float32)
    run = lambda **kw: engine.generate_batch(prompt, num_samples=3, max_tokens=20, **kw)[0]  # noqa: E731
    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)
    assert run(temperature=1.0, top_k=1, seed=7) == run(temperature=0.0) == run(temperature=0.0, seed=8)


def test_bf16_decoding_of_an_fp32_model_reads_a_bf16_copy_and_leaves_the_model_as_it_was(tokenizer):
    """A training module's model (fp32 master weights; or NanochatBf16's, bf16 embeddings beside fp32 linears)
    decodes in bf16 over weights cast once per generation: the tokens of the same model cast for inference, every
    one of them, with nothing changed in the model and no autocast around the caller's code."""
    model = random_gpt(tokenizer.vocab_size, CONFIGS["head"])
    mixed = copy.deepcopy(model)
    NanochatBf16().convert_module(SimpleNamespace(model=mixed))
    prompt = prompt_for(tokenizer)
    reference = Engine(copy.deepcopy(model).to(torch.bfloat16), tokenizer)
    expected = [column for column, _ in reference.generate(prompt, max_tokens=30, temperature=0.0)]
    for trained in (model, mixed):
        dtypes = [p.dtype for p in trained.parameters()]
        engine = Engine(trained, tokenizer, compute_dtype=torch.bfloat16)
        assert engine.casts_weights
        columns = []
        for column, _ in engine.generate(prompt, max_tokens=30, temperature=0.0):
            assert not torch.is_autocast_enabled("cpu")
            columns.append(column)
        assert columns == expected and [p.dtype for p in trained.parameters()] == dtypes
    # NanochatBf16's model in fp32: its bf16 embeddings are widened for the generation
    fp32 = Engine(mixed, tokenizer, compute_dtype=torch.float32)
    assert fp32.casts_weights and len(list(fp32.generate(prompt, max_tokens=5, temperature=0.0))) == 5
    assert not Engine(model, tokenizer, compute_dtype=torch.float32).casts_weights


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_model_held_in_bf16_computes_as_nanochats_bf16_and_decodes_as_its_full_forward(tokenizer, options):
    model = random_gpt(tokenizer.vocab_size, options)
    nanochat_head = copy.deepcopy(model)  # fp32 master weights that every Linear casts to bf16 at each call
    NanochatBf16().convert_module(SimpleNamespace(model=nanochat_head))
    inference = model.to(torch.bfloat16)  # as load_engine holds it
    assert inference is model and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.randint(tokenizer.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(inference(ids), nanochat_head(ids))  # the same numbers, weights cast once
    engine = Engine(inference, tokenizer)  # the dtype of its weights
    assert engine.compute_dtype == torch.bfloat16 and not engine.casts_weights  # nothing left to cast
    with pytest.raises(AssertionError, match="torch.bfloat16 weights cannot compute in torch.float32"):
        Engine(inference, tokenizer, compute_dtype=torch.float32)
    prompt = prompt_for(tokenizer)
    columns = [column for column, _ in engine.generate(prompt, max_tokens=30, temperature=0.0)]
    assert len(columns) == 30
    # bf16 rounding may move near-ties of this random model late in the sequence, not at its start
    assert columns[:10] == naive_generate(inference, tokenizer, prompt, 1, 10, temperature=0.0)


# ----------------------------------------------------------------------------------------------------------
# a model whose logits the test writes: next-token logits are a function of the last input token only


class ScriptedModel(torch.nn.Module):
    """`script[token]` is the next-token logits (a {token: logit} dict) after `token`; anything unscripted is
    followed by `fallback` with certainty. Records the shape of every forward's input."""

    def __init__(self, vocab_size, script, fallback, sequence_len=64):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, sequence_len=sequence_len)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where the engine finds the device
        self.script, self.fallback, self.calls = script, fallback, []

    def new_kv_cache(self, batch_size, max_len, dtype=None):
        return KVCache(batch_size, num_layers=1, num_kv_heads=1, head_dim=1, max_len=max_len)

    def forward(self, idx, targets=None, kv_cache=None, last_only=False):
        self.calls.append(tuple(idx.shape))
        nothing = torch.zeros(*idx.shape[:1], 1, idx.size(1), 1)
        kv_cache.append(0, nothing, nothing)  # raises if the engine sized the cache too small
        kv_cache.advance(idx.size(1))
        logits = torch.full((*idx.shape, self.config.vocab_size), -1e4)
        for b, last in enumerate(idx[:, -1].tolist()):
            for token, logit in self.script.get(last, {self.fallback: 0.0}).items():
                logits[b, -1, token] = logit
        return logits


def chain(*tokens):
    """A script that writes `tokens` in order, each with certainty."""
    return {a: {b: 0.0} for a, b in zip(tokens, tokens[1:], strict=False)}


def special(tokenizer, name):
    return tokenizer.encode_special(name)


def prompt_for(tokenizer, text="hello"):
    return tokenizer.render_for_completion([{"role": "user", "content": text}, {"role": "assistant", "content": ""}])


def test_tool_call_is_executed_and_its_output_forced(tokenizer):
    s = lambda name: special(tokenizer, name)  # noqa: E731
    prompt = prompt_for(tokenizer)
    expression = tokenizer.encode("6*7")
    script = chain(prompt[-1], s("<|python_start|>"), *expression, s("<|python_end|>"))
    script.update(chain(s("<|output_end|>"), *tokenizer.encode(" done"), s("<|assistant_end|>")))
    model = ScriptedModel(tokenizer.vocab_size, script, fallback=tokenizer.bos_token_id)
    engine = Engine(model, tokenizer, compute_dtype=torch.float32)

    sequences, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=40, temperature=1.0)

    output = [s("<|output_start|>"), *tokenizer.encode(calculator("6*7")), s("<|output_end|>")]
    call = [s("<|python_start|>"), *expression, s("<|python_end|>")]
    done = tokenizer.encode(" done")
    expected = call + output + done
    assert tokenizer.decode(output) == "<|output_start|>42<|output_end|>"
    for sequence, mask in zip(sequences, masks, strict=True):
        assert sequence == prompt + expected  # <|assistant_end|> stripped
        assert mask == [0] * len(prompt) + [1] * len(call) + [0] * len(output) + [1] * len(done)


def test_failing_tool_call_forces_the_error_text(tokenizer):
    s = lambda name: special(tokenizer, name)  # noqa: E731
    prompt = prompt_for(tokenizer)
    expression = tokenizer.encode("exit()")  # distinct tokens: the script keys on the last token only
    script = chain(prompt[-1], s("<|python_start|>"), *expression, s("<|python_end|>"))
    script.update(chain(s("<|output_end|>"), s("<|assistant_end|>")))
    engine = Engine(ScriptedModel(tokenizer.vocab_size, script, tokenizer.bos_token_id), tokenizer, torch.float32)
    (sequence,), _ = engine.generate_batch(prompt, max_tokens=100, temperature=0.0)
    output = tokenizer.decode(sequence[len(prompt) + len(expression) + 2 :])
    assert output == f"<|output_start|>{calculator('exit()')}<|output_end|>"
    assert output.startswith("<|output_start|>Error: ")


def test_samples_share_one_prefill_and_stop_independently(tokenizer):
    a, b, c, d = tokenizer.encode("hello world there")[:4]
    end = special(tokenizer, "<|assistant_end|>")
    prompt = prompt_for(tokenizer)
    script = {
        prompt[-1]: {a: 0.0, b: 0.0},
        a: {end: 0.0},
        **chain(b, c, d, end),
    }  # a fair coin, then a or b c d
    model = ScriptedModel(tokenizer.vocab_size, script, fallback=tokenizer.bos_token_id)
    engine = Engine(model, tokenizer, compute_dtype=torch.float32)

    columns = list(engine.generate(prompt, num_samples=16, max_tokens=50, seed=0))

    assert model.calls[0] == (1, len(prompt))  # one prefill with batch 1, replicated to 16 rows
    assert model.calls[1:] == [(16, 1)] * (len(columns) - 1)
    assert len(columns) == 4  # every row has ended: the longest is b c d <|assistant_end|>
    rows = [[column[0][i] for column in columns] for i in range(16)]
    short, long = [a, end, end, end], [b, c, d, end]
    assert all(row in (short, long) for row in rows) and short in rows and long in rows
    for i, row in enumerate(rows):  # after its end a row repeats the terminal token, marked as not sampled
        finished = row.index(end)
        assert [column[1][i] for column in columns] == [1] * (finished + 1) + [0] * (3 - finished)


def test_max_tokens_and_context_length_are_respected(tokenizer):
    prompt = prompt_for(tokenizer)
    forever = {}  # everything is followed by the fallback, which never ends a row
    model = ScriptedModel(tokenizer.vocab_size, forever, fallback=tokenizer.encode("x")[0], sequence_len=40)
    engine = Engine(model, tokenizer, compute_dtype=torch.float32)
    assert len(list(engine.generate(prompt, num_samples=3, max_tokens=5))) == 5
    (sequence,), _ = engine.generate_batch(prompt, max_tokens=1000)
    assert len(sequence) == 40  # stopped at the model's context length
    with pytest.raises(AssertionError, match="a prompt of 40 tokens in a context of 40"):  # Reply refuses it first
        list(engine.generate(list(range(40)), max_tokens=1))


# ----------------------------------------------------------------------------------------------------------
# sampling on distributions the test controls


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20_000, -1)
    generator = torch.Generator().manual_seed(0)
    for top_p, allowed in [
        (0.4, {0}),
        (0.5, {0}),
        (0.7, {0, 1}),
        (0.8, {0, 1}),
        (0.81, {0, 1, 2}),
        (1.0, {0, 1, 2, 3}),
    ]:
        draws = sample_next_token(logits, generator, temperature=1.0, top_p=top_p)
        assert set(draws.tolist()) == allowed, top_p
    draws = sample_next_token(logits, generator, temperature=1.0, top_p=0.7)
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.02  # renormalised within the nucleus


def test_top_k_and_temperature():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]]).expand(20_000, -1)
    generator = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, generator, top_k=2).tolist()) == {1, 2}
    assert set(sample_next_token(logits, generator, top_k=1).tolist()) == {1}
    assert set(sample_next_token(logits, generator, top_k=0).tolist()) == {0, 1, 2, 3}  # 0: no cut, as None
    assert sample_next_token(logits, generator, temperature=0.0).unique().tolist() == [1]
    cold = (sample_next_token(logits, generator, temperature=0.25) == 1).float().mean()
    warm = (sample_next_token(logits, generator, temperature=4.0) == 1).float().mean()
    expected_cold = torch.softmax(logits[0] / 0.25, -1)[1]
    assert abs(cold - expected_cold) < 0.02 and warm < cold
