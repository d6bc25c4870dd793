"""The GPT backbone against independent references: nanochat's published parameter and FLOP counts (d20),
a naive masked softmax attention, and the model's own full forward pass for every KV-cached decoding path."""

import math

import pytest
import torch

from nanochat_pl.common import UserError
from nanochat_pl.model.attention import attention, banded_attention
from nanochat_pl.model.gpt import GPT, OCT_2025, GPTConfig

# ----------------------------------------------------------------------------------------------------------
# d20 on the meta device: shapes, parameter counts and FLOPs as nanochat computes them


def meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(config)


def test_d20_head_recipe_shapes_and_parameter_count():
    config = GPTConfig.from_depth(20)
    assert (config.n_embd, config.n_head, config.n_kv_head, config.head_dim) == (1280, 10, 10, 128)
    assert config.layer_windows() == [512, 512, 512, None] * 5  # SSSL, short = ceil(2048/4/128)*128
    model = meta_model(config)
    assert sorted(map(int, model.value_embeds)) == list(range(1, 20, 2))  # i % 2 == 19 % 2, the last included
    families = {name: sum(p.numel() for p in ps) for name, ps in model.param_families().items()}
    assert families == {
        "wte": 41_943_040,
        "lm_head": 41_943_040,
        "value_embeds": 10 * 41_943_040,
        "matrices": 393_216_000 + 10 * 12 * 10,  # 20 blocks of 12·1280², plus the 10 VE gates (10 heads × 12)
        "resid_lambdas": 20,
        "x0_lambdas": 20,
        "scalars": 24 + 1 + 1,  # smear gate, smear λ, backout λ
    }
    assert model.num_params() == 896_533_746  # nanochat gpt.py@92d63d4, reference table
    assert model.num_scaling_params() == 393_216_000 + 1_200 + 41_943_040


def test_d20_october_recipe_parameter_count():
    model = meta_model(GPTConfig.from_depth(20, vocab_size=65536, **OCT_2025))
    assert model.num_params() == 560_988_160  # README@dfc8833 "561M"
    assert set(model.param_families()) == {"wte", "lm_head", "matrices"}
    assert model.config.layer_windows() == [None] * 20


def test_d20_flops_per_token():
    model = meta_model(GPTConfig.from_depth(20))
    linear_weights = 20 * 12 * 1280**2 + 10 * (10 * 12) + 24 + 32768 * 1280  # blocks, VE gates, smear gate, lm_head
    attention_flops = 12 * 10 * 128 * (15 * 512 + 5 * 2048)  # 15 short layers, 5 full, at T = 2048
    assert model.flops_per_token() == 6 * linear_weights + attention_flops
    assert model.flops_per_token() == pytest.approx(2.89e9, rel=2e-3)


def test_vocab_is_padded_and_logits_are_not():
    config = tiny_config(vocab_size=1000)
    assert config.padded_vocab_size == 1024
    model = make_model(config)
    assert model.lm_head.weight.shape == (1024, config.n_embd)
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 1000)


@pytest.mark.parametrize(
    "overrides",
    [dict(window_pattern="SXL"), dict(window_pattern=""), dict(n_kv_head=3), dict(n_embd=20), dict(n_head=0)],
)
def test_bad_configs_raise_user_error(overrides):
    with pytest.raises(UserError):
        tiny_config(**overrides)


# ----------------------------------------------------------------------------------------------------------
# attention against a naive reference


def naive_attention(q, k, v, window):
    """Softmax attention written out: the queries are the last Tq of the Tk positions, query i sees key j iff
    j <= i and (window is None or i - j <= window); kv heads repeated for GQA."""
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    Tq, Tk = q.size(2), k.size(2)
    i = torch.arange(Tk - Tq, Tk)[:, None]
    j = torch.arange(Tk)[None, :]
    visible = (j <= i) if window is None else (j <= i) & (i - j <= window)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    return scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("T,window", [(64, 8), (67, 8), (40, 5), (32, 16)])
def test_banded_attention_matches_naive(T, window):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, T, 16), torch.randn(2, 2, T, 16), torch.randn(2, 2, T, 16)
    torch.testing.assert_close(banded_attention(q, k, v, window), naive_attention(q, k, v, window))


@pytest.mark.parametrize("window", [None, 3, 8, 100])
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 20), (7, 20), (20, 20), (48, 48)])
def test_attention_paths_match_naive(window, Tq, Tk):
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, Tq, 16), torch.randn(2, 1, Tk, 16), torch.randn(2, 1, Tk, 16)
    torch.testing.assert_close(attention(q, k, v, window), naive_attention(q, k, v, window))


# ----------------------------------------------------------------------------------------------------------
# tiny models


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(sequence_len=64, vocab_size=96, n_layer=4, n_head=4, n_kv_head=2, n_embd=64, short_window=8)
    return GPTConfig(**(fields | overrides))


def make_model(config: GPTConfig, seed: int = 0, activate: bool = True) -> GPT:
    """A model initialised on CPU; `activate` also makes the zero-initialised parameters (the output
    projections, smear λ) non-zero, so that every feature changes the output and every path is tested."""
    model = GPT(config)
    torch.manual_seed(seed)
    model.init_weights()
    if activate:
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_proj.weight.normal_(0, 0.05)
                block.mlp.c_proj.weight.normal_(0, 0.05)
            if config.smear:
                model.smear_lambda.fill_(0.7)
    return model.eval()


CACHE_CONFIGS = {
    "all-features-SSSL-gqa": dict(),
    "all-features-SL-mha": dict(window_pattern="SL", n_kv_head=4, short_window=5),
    "all-features-full-window": dict(window_pattern="L"),
    "october": dict(OCT_2025),
}


@pytest.mark.parametrize("overrides", CACHE_CONFIGS.values(), ids=CACHE_CONFIGS.keys())
def test_kv_cached_decoding_matches_full_forward(overrides):
    config = tiny_config(**overrides)
    model = make_model(config)
    torch.manual_seed(2)
    idx = torch.randint(0, config.vocab_size, (2, 40))
    with torch.no_grad():
        expected = model(idx)
        # prefill 12 tokens, a second chunk of 9, then one token at a time
        cache = model.new_kv_cache(batch_size=2, max_len=40)
        pieces = [model(idx[:, :12], kv_cache=cache), model(idx[:, 12:21], kv_cache=cache)]
        pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(21, 40)]
    assert cache.pos == 40
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_sliding_windows_only_change_positions_beyond_the_window():
    windowed = make_model(tiny_config(window_pattern="SSSL", short_window=8))
    full = make_model(tiny_config(window_pattern="L"))
    assert [b.attn.window for b in windowed.transformer.h] == [8, 8, 8, None]
    full.load_state_dict(windowed.state_dict())  # same weights, only the windows differ
    idx = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = windowed(idx), full(idx)
    torch.testing.assert_close(a[:, :9], b[:, :9])  # positions 0..8 see all their keys in either model
    assert (a[:, 9:] - b[:, 9:]).abs().amax(dim=-1).min() > 1e-4


def test_replicated_cache_gives_the_logits_of_prefilling_every_row():
    config = tiny_config()
    model = make_model(config)
    torch.manual_seed(3)
    prompt = torch.randint(0, config.vocab_size, (1, 17)).expand(3, -1)
    continuations = torch.randint(0, config.vocab_size, (3, 6))
    with torch.no_grad():
        single = model.new_kv_cache(batch_size=1, max_len=23)
        model(prompt[:1], kv_cache=single)
        replicated = single.replicate(3)
        full = model.new_kv_cache(batch_size=3, max_len=23)
        model(prompt, kv_cache=full)
        steps = []
        for t in range(6):
            column = continuations[:, t : t + 1]
            steps.append(model(column, kv_cache=replicated))
            torch.testing.assert_close(steps[-1], model(column, kv_cache=full))
        expected = model(torch.cat([prompt, continuations], dim=1))[:, 17:]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)
    assert replicated.pos == full.pos == 23


def test_cache_overflow_and_wrong_batch_are_caught():
    model = make_model(tiny_config())
    cache = model.new_kv_cache(batch_size=2, max_len=4)
    with torch.no_grad(), pytest.raises(AssertionError):
        model(torch.zeros(2, 5, dtype=torch.long), kv_cache=cache)
    with torch.no_grad(), pytest.raises(AssertionError):
        model(torch.zeros(3, 1, dtype=torch.long), kv_cache=model.new_kv_cache(batch_size=2, max_len=4))


# ----------------------------------------------------------------------------------------------------------
# initialisation, loss, gradients, precision


def test_init_statistics_follow_nanochat_head():
    config = tiny_config(n_embd=256, n_head=8, n_kv_head=8, vocab_size=4096, n_layer=5)
    model = make_model(config, activate=False)
    d = config.n_embd
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.8, rel=0.02)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.02)
    for block in model.transformer.h:
        for w in (block.attn.c_q.weight, block.attn.c_k.weight, block.attn.c_v.weight):
            assert w.abs().max().item() <= math.sqrt(3 / d)  # uniform: bounded, std 1/sqrt(d)
            assert w.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.03)
        assert block.mlp.c_fc.weight.abs().max().item() <= 0.4 * math.sqrt(3 / d)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.4 / math.sqrt(d), rel=0.03)
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    for ve in model.value_embeds.values():
        assert ve.weight.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.03)
    gates = [b.attn.ve_gate.weight for b in model.transformer.h if b.attn.ve_gate is not None]
    gates.append(model.smear_gate.weight)
    assert all(g.min().item() >= 0 and g.max().item() <= 0.02 for g in gates)
    torch.testing.assert_close(model.resid_lambdas, torch.tensor([1.15, 1.125, 1.10, 1.075, 1.05]))
    torch.testing.assert_close(model.x0_lambdas, torch.tensor([0.20, 0.1625, 0.125, 0.0875, 0.05]))
    assert model.smear_lambda.item() == 0 and model.backout_lambda.item() == pytest.approx(0.2)


def test_meta_build_materialises_with_init_weights():
    config = tiny_config()
    model = meta_model(config)
    assert model.cos.is_meta
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert "cos" not in model.state_dict() and "sin" not in model.state_dict()
    reference = make_model(config, seed=0, activate=False)
    torch.testing.assert_close(model.cos, reference.cos)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_loss_at_init_is_log_vocab():
    config = tiny_config(vocab_size=1000)
    model = make_model(config, activate=False)
    torch.manual_seed(4)
    idx, targets = torch.randint(0, 1000, (4, 64)), torch.randint(0, 1000, (4, 64))
    targets[0, :10] = -1
    with torch.no_grad():
        loss = model(idx, targets)
        per_token = model(idx, targets, loss_reduction="none")
    assert loss.item() == pytest.approx(math.log(1000), abs=0.01)  # lm_head std 0.001: uniform predictions
    assert per_token.shape == (4, 64) and not per_token[0, :10].any()
    assert per_token.sum().item() / (4 * 64 - 10) == pytest.approx(loss.item(), rel=1e-5)


# zero-initialised by design: both output projections (a block starts as the identity) and smear λ. Behind a
# zero they pass no gradient at init: c_q, c_k, c_v, the VE gates and value embeddings (behind attn.c_proj),
# c_fc (behind mlp.c_proj) and the smear gate (behind smear λ). One step of training makes them non-zero.
ZERO_GRAD_AT_INIT = (
    "attn.c_q",
    "attn.c_k",
    "attn.c_v",
    "attn.ve_gate",
    "value_embeds",
    "mlp.c_fc",
    "smear_gate",
)


def test_backward_reaches_every_parameter():
    config = tiny_config()
    torch.manual_seed(5)
    idx, targets = torch.randint(0, config.vocab_size, (2, 48)), torch.randint(0, config.vocab_size, (2, 48))
    at_init = make_model(config, activate=False).train()
    at_init(idx, targets).backward()
    for name, p in at_init.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.any()) != any(part in name for part in ZERO_GRAD_AT_INIT), name
    trained = make_model(config, activate=True).train()
    trained(idx, targets).backward()
    for name, p in trained.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_on_cpu():
    config = tiny_config()
    model = make_model(config)
    torch.manual_seed(6)
    idx = torch.randint(0, config.vocab_size, (2, 48))
    with torch.no_grad():
        reference = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()(idx, idx).backward()
        model.eval()
        with torch.no_grad():
            logits = model(idx)
            cache = model.new_kv_cache(batch_size=2, max_len=48, dtype=torch.bfloat16)
            pieces = [model(idx[:, :40], kv_cache=cache)]
            pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(40, 48)]
    cached = torch.cat(pieces, dim=1)
    assert logits.dtype == torch.float32 and model.transformer.wte.weight.dtype == torch.float32
    assert (logits - reference).abs().max() < 0.1
    assert (cached - logits).abs().max() < 0.1
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_last_only_logits_are_the_last_position_of_the_full_ones():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(2, vocab_size=300, sequence_len=64, head_dim=16))
    model.init_weights()
    idx = torch.randint(0, 300, (3, 40))
    full = model(idx)
    assert model(idx, last_only=True).shape == (3, 1, 300)
    torch.testing.assert_close(model(idx, last_only=True), full[:, -1:], rtol=1e-5, atol=1e-5)


def test_readout_of_hidden_states_at_some_positions_equals_those_full_logits():
    model = make_model(tiny_config())
    idx = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(4))
    rows, positions = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 7, 19, 3, 12])
    with torch.no_grad():
        full = model(idx)
        hidden = model(idx, hidden_only=True)
        assert hidden.shape == (3, 20, 64)
        torch.testing.assert_close(model.readout(hidden), full, rtol=0, atol=0)  # forward's own readout
        torch.testing.assert_close(model.readout(hidden[rows, positions]), full[rows, positions], rtol=1e-5, atol=1e-5)
        cache = model.new_kv_cache(3, 20)  # with a cache too: a prefix, then the rest
        cached = [
            model(idx[:, :9], kv_cache=cache, hidden_only=True),
            model(idx[:, 9:], kv_cache=cache, hidden_only=True),
        ]
    torch.testing.assert_close(torch.cat(cached, dim=1), hidden, rtol=1e-5, atol=1e-5)
