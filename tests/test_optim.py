"""MuonAdamW against torch's own Muon and AdamW, its pieces against hand formulas, and the depth rules
against nanochat's published numbers (reference/nanochat.md §3)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.optim._muon as torch_muon_module
from torch import nn

from nanochat_pl.common import UserError
from nanochat_pl.optim.muon_adamw import POLAR_EXPRESS_COEFFICIENTS, MuonAdamW, orthogonalize, resolve_ortho_dtype
from nanochat_pl.optim.recipes import Schedule, apply_muon_schedules, build_param_groups
from nanochat_pl.optim.scaling import grad_accumulation_steps, plan_from_depth

PLAIN_MUON = dict(
    orthogonalizer="newton_schulz",
    row_equilibration=False,
    renormalize=False,
    normuon=False,
    cautious_wd=False,
)
SHAPES = [(32, 64), (64, 32), (32, 64), (48, 48)]  # wide, tall, a second wide one (stacked), square


def run_with_random_grads(make_optimizer, shapes=SHAPES, steps=6, seed=1):
    """Fresh parameters, then `steps` optimizer steps on seeded random gradients; returns the parameters."""
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(shape, generator=gen)) for shape in shapes]
    optimizer = make_optimizer(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
    return params


class _TorchWithFp32ForBf16:
    """Stands in for the `torch` module inside torch.optim._muon so its Newton–Schulz runs in fp32."""

    def __getattr__(self, name):
        return torch.float32 if name == "bfloat16" else getattr(torch, name)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_plain_muon_path_matches_torch_muon(precision, monkeypatch):
    # torch.optim.Muon (torch >= 2.9): buf.lerp_(g, 1-m); update = g.lerp(buf, m); X /= max(||X||_F, eps);
    # quintic NS in bf16 on the transposed tall matrix; p *= 1 - lr·wd; p -= lr·sqrt(max(1, rows/cols))·O.
    if precision == "float32":
        monkeypatch.setattr(torch_muon_module, "torch", _TorchWithFp32ForBf16())
    hyper = dict(lr=0.02, weight_decay=0.1, momentum=0.95)
    expected = run_with_random_grads(lambda ps: torch.optim.Muon(ps, **hyper))
    ours = run_with_random_grads(
        lambda ps: MuonAdamW([dict(kind="muon", params=ps, ortho_dtype=precision, **PLAIN_MUON, **hyper)])
    )
    tolerance = dict(rtol=1e-6, atol=1e-6) if precision == "float32" else dict(rtol=1e-3, atol=1e-4)
    for a, b in zip(expected, ours, strict=True):
        torch.testing.assert_close(b, a, **tolerance)


def test_adamw_path_matches_torch_adamw():
    hypers = [
        dict(lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1),
        dict(lr=0.003, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    ]
    shapes = [(7,), (5, 3), (4, 6, 2), ()]

    def groups(ps):
        return [dict(params=ps[:2], **hypers[0]), dict(params=ps[2:], **hypers[1])]

    expected = run_with_random_grads(lambda ps: torch.optim.AdamW(groups(ps), foreach=False), shapes, steps=8)
    ours = run_with_random_grads(lambda ps: MuonAdamW([dict(kind="adamw", **g) for g in groups(ps)]), shapes, steps=8)
    for a, b in zip(expected, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(128, 512), (512, 128)])
def test_orthogonalizers_push_singular_values_into_their_bands(shape, dtype):
    G = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    polar = torch.linalg.svdvals(orthogonalize(G.to(dtype), "polar_express", 5).float())
    newton = torch.linalg.svdvals(orthogonalize(G.to(dtype), "newton_schulz", 5).float())
    # Keller Jordan's quintic is known to leave singular values in roughly Uniform(0.5, 1.5) (torch.optim.Muon
    # docs); Polar Express's minimax polynomials land them in about 1 ± 0.14 (measured 0.859..1.142 here).
    assert newton.min() > 0.5 and newton.max() < 1.5
    assert polar.min() > 0.84 and polar.max() < 1.16
    assert polar.min() > newton.min()
    # and they keep G's singular vectors: U^T O V is diagonal
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    for method in ("polar_express", "newton_schulz"):
        core = U.mT @ orthogonalize(G, method, 5) @ Vh.mT
        off_diagonal = core - torch.diag_embed(core.diagonal(dim1=-2, dim2=-1))
        assert off_diagonal.norm() < 1e-3 * core.norm()


def nanochat_polar_express(G, steps=5):
    """nanochat's orthogonalisation of one matrix, written out from its formula (optim.py@92d63d4): divide by
    1.01·||G||_F + 1e-6, then per iteration A = X X^T, X <- a X + (b A + c A A) X for wide and square matrices,
    and A = X^T X, X <- a X + X (b A + c A A) for tall ones."""
    X = G / (torch.linalg.matrix_norm(G) * 1.01 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:steps]:
        if G.shape[0] > G.shape[1]:
            A = X.T @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.T
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


# small norms too, where the eps shows: dividing by max(1.01·||G||, 1e-7) instead would differ by up to 0.06 at 1e-6
# and 0.13 at 1e-8
@pytest.mark.parametrize("norm", [30.0, 1e-6, 1e-8])
@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (64, 64)])
def test_polar_express_is_nanochats_formula(shape, norm):
    G = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    G = G * (norm / torch.linalg.matrix_norm(G, keepdim=True))
    expected = torch.stack([nanochat_polar_express(g) for g in G])
    torch.testing.assert_close(orthogonalize(G, "polar_express", 5), expected, rtol=1e-5, atol=1e-5)


def nanochat_muon_step(param, grad, momentum_buffer, second_moment, lr, momentum, weight_decay, beta2, steps=5):
    """One step of nanochat's Muon on one fp32 matrix, in place, written out from its formula (optim.py@92d63d4
    muon_step_fused, run on a CPU, where its compute dtype and so its orthogonalisation dtype is fp32): Nesterov
    momentum, MuonEq, Polar Express, Muon+, NorMuon, cautious weight decay. `lr` already carries the shape
    multiplier."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    g = grad.lerp(momentum_buffer, momentum)
    rows, cols = g.shape
    g = g * (torch.linalg.matrix_norm(g) / rows**0.5 / g.norm(dim=1, keepdim=True).clamp_min(1e-6))
    g = nanochat_polar_express(g, steps)
    g = g * (min(rows, cols) ** 0.5 / torch.linalg.matrix_norm(g).clamp_min(1e-6))
    red_dim = 1 if rows >= cols else 0  # a mean square per row of tall and square matrices, per column of wide
    mean_square = g.square().mean(dim=red_dim, keepdim=True)
    second_moment.lerp_(mean_square, 1 - beta2)
    scaled = g * second_moment.clamp_min(1e-10).rsqrt()
    g = scaled * (torch.linalg.matrix_norm(g) / torch.linalg.matrix_norm(scaled).clamp_min(1e-10))
    mask = (g * param) >= 0
    param.sub_(lr * g + lr * weight_decay * param * mask)


def test_muon_step_on_the_cpu_is_nanochats():
    hyper = dict(lr=0.02, momentum=0.9, weight_decay=0.2, beta2=0.9)
    ours = run_with_random_grads(lambda ps: MuonAdamW([dict(kind="muon", params=ps, **hyper)]), steps=4)

    gen = torch.Generator().manual_seed(1)  # run_with_random_grads's draws, in its order
    params = [torch.randn(shape, generator=gen) for shape in SHAPES]
    buffers = [torch.zeros_like(p) for p in params]
    second = [torch.zeros((r, 1) if r >= c else (1, c)) for r, c in SHAPES]
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g, buf, v in zip(params, grads, buffers, second, strict=True):
            lr = hyper["lr"] * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            nanochat_muon_step(p, g, buf, v, lr, hyper["momentum"], hyper["weight_decay"], hyper["beta2"])
    for a, b in zip(ours, params, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)


def test_orthogonalisation_dtype_follows_nanochat():
    # bf16 only where nanochat computes in bf16 (CUDA, compute capability >= 8.0); fp32 on every CPU
    assert resolve_ortho_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_ortho_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_ortho_dtype("float32", torch.device("cpu")) == torch.float32


def test_cautious_weight_decay_masks_entries_whose_update_opposes_decay():
    # A diagonal gradient orthogonalises to a diagonal U with the gradient's signs: U = diag(+u1, -u2).
    # With P = [[-2, 3], [0.5, -1]], U·P = [[-2u1, 0], [0, +u2]] -> mask (U·P >= 0) = [[0, 1], [1, 1]].
    grad = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    start = torch.tensor([[-2.0, 3.0], [0.5, -1.0]])
    lr, wd = 0.1, 0.5

    def one_step(weight_decay):
        p = nn.Parameter(start.clone())
        p.grad = grad.clone()
        options = dict(PLAIN_MUON, cautious_wd=True, ortho_dtype="float32")
        MuonAdamW([dict(kind="muon", params=[p], lr=lr, weight_decay=weight_decay, **options)]).step()
        return p.detach()

    without_decay, with_decay = one_step(0.0), one_step(wd)
    update = (start - without_decay) / lr
    assert update[0, 0] > 0 and update[1, 1] < 0 and update[0, 1] == 0 and update[1, 0] == 0
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(without_decay - with_decay, lr * wd * start * mask)


@pytest.mark.parametrize("shape", [(3, 2), (2, 3), (2, 2)])
def test_normuon_normalises_rows_or_columns_by_their_running_rms(shape):
    gen = torch.Generator().manual_seed(0)
    rows, cols = shape
    per_row = rows >= cols  # tall and square matrices keep one statistic per row, wide ones per column
    beta2 = 0.9
    second_moment = [torch.zeros((rows, 1) if per_row else (1, cols))]
    ema = [0.0] * (rows if per_row else cols)
    for _ in range(2):  # the second call checks the running average
        U = torch.randn(1, rows, cols, generator=gen)
        out = MuonAdamW._normuon(U, second_moment, beta2)[0]
        expected = torch.empty(rows, cols)
        for i in range(len(ema)):
            line = U[0, i, :] if per_row else U[0, :, i]
            ema[i] = beta2 * ema[i] + (1 - beta2) * float((line**2).mean())
            if per_row:
                expected[i, :] = line / math.sqrt(ema[i])
            else:
                expected[:, i] = line / math.sqrt(ema[i])
        expected *= U[0].norm() / expected.norm()
        torch.testing.assert_close(out, expected)
        assert second_moment[0].flatten().tolist() == pytest.approx(ema)


def test_step_runs_the_closure_with_grad_enabled_and_returns_its_loss():
    p = nn.Parameter(torch.ones(3))
    optimizer = MuonAdamW([dict(kind="adamw", params=[p], lr=0.1)])

    def closure():
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert loss.item() == 3.0 and p.grad is not None
    assert (p < 1).all()


class TinyModel(nn.Module):
    """Every family the GPT hands the optimizer, in miniature, including two matrix shapes."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(11, 8)
        self.value_embed = nn.Embedding(11, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8, bias=False), nn.Linear(8, 16, bias=False)])
        self.down = nn.Linear(16, 8, bias=False)
        self.lm_head = nn.Linear(8, 11, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(2))
        self.x0_lambdas = nn.Parameter(torch.full((2,), 0.1))
        self.smear = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        x0 = self.wte(idx) + self.value_embed(idx)
        x = self.resid_lambdas[0] * x0 + self.x0_lambdas[0] * x0 + self.smear * x0.roll(1, dims=1)
        x = self.resid_lambdas[1] * x + self.x0_lambdas[1] * x0 + self.blocks[0](x).relu()
        x = x + self.down(self.blocks[1](x).relu().square())
        return self.lm_head(x)

    def families(self):
        return {
            "lm_head": [self.lm_head.weight],
            "wte": [self.wte.weight],
            "value_embeds": [self.value_embed.weight],
            "resid_lambdas": [self.resid_lambdas],
            "x0_lambdas": [self.x0_lambdas],
            "scalars": [self.smear],
            "matrices": [self.blocks[0].weight, self.blocks[1].weight, self.down.weight],
        }


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    data = torch.randint(0, 11, (12, 4, 6))
    total_steps = 12
    schedule = Schedule(total_steps=total_steps, warmup_steps=2, momentum_warmup_steps=4)

    def make(model):
        groups = build_param_groups(model.families(), model_dim=8, weight_decay=0.2)
        optimizer = MuonAdamW(groups)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_multiplier)

    def train(model, optimizer, scheduler, steps):
        for step in steps:
            apply_muon_schedules(optimizer, step, schedule)
            logits = model(data[step])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), data[step].roll(-1, 1).flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    model = TinyModel()
    optimizer, scheduler = make(model)
    train(model, optimizer, scheduler, range(5))
    buffer = io.BytesIO()  # as a checkpoint would hold it
    torch.save(
        dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict()),
        buffer,
    )
    train(model, optimizer, scheduler, range(5, total_steps))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = TinyModel()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer, resumed_scheduler = make(resumed)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    train(resumed, resumed_optimizer, resumed_scheduler, range(5, total_steps))

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in resumed_optimizer.param_groups]


def test_schedules_hit_nanochat_values_at_key_steps():
    head = Schedule.for_recipe("2026", total_steps=2000)  # warmdown: last 1300 steps, from step 700
    assert head.lr_multiplier(0) == pytest.approx(1 / 40)
    assert head.lr_multiplier(39) == 1.0
    assert head.lr_multiplier(700) == 1.0
    assert head.lr_multiplier(1350) == pytest.approx(0.5 + 0.5 * 0.05)
    assert head.lr_multiplier(2000) == pytest.approx(0.05)
    assert head.muon_momentum(0) == pytest.approx(0.85)
    assert head.muon_momentum(200) == pytest.approx(0.91)
    assert head.muon_momentum(400) == pytest.approx(0.97)
    assert head.muon_momentum(1350) == pytest.approx(0.935)
    assert head.muon_momentum(2000) == pytest.approx(0.90)
    assert head.weight_decay_multiplier(0) == 1.0
    assert head.weight_decay_multiplier(1000) == pytest.approx(0.5)
    assert head.weight_decay_multiplier(2000) == pytest.approx(0.0)

    october = Schedule.for_recipe("oct", total_steps=1000)  # no warmup, last 20% linearly to 0
    assert october.lr_multiplier(0) == 1.0 and october.lr_multiplier(800) == 1.0
    assert october.lr_multiplier(900) == pytest.approx(0.5)
    assert october.lr_multiplier(1000) == 0.0
    assert october.muon_momentum(150) == pytest.approx(0.90)
    assert october.muon_momentum(300) == pytest.approx(0.95) and october.muon_momentum(999) == pytest.approx(0.95)
    assert october.weight_decay_multiplier(500) == 1.0


def test_apply_muon_schedules_sets_only_muon_groups():
    matrix, scalar = nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(2))
    optimizer = MuonAdamW(
        build_param_groups({"matrices": [matrix], "scalars": [scalar]}, model_dim=768, weight_decay=0.2)
    )
    schedule = Schedule(total_steps=100)
    apply_muon_schedules(optimizer, 50, schedule)
    muon, adamw = sorted(optimizer.param_groups, key=lambda g: g["kind"] != "muon")
    assert muon["momentum"] == pytest.approx(schedule.muon_momentum(50))
    assert muon["weight_decay"] == pytest.approx(0.1)  # cosine at half the run
    assert muon["initial_weight_decay"] == 0.2
    assert adamw["weight_decay"] == 0.0 and "momentum" not in adamw


def test_lambda_lr_scales_every_group_initial_lr():
    groups = build_param_groups(
        {"wte": [nn.Parameter(torch.zeros(3, 2))], "matrices": [nn.Parameter(torch.zeros(2, 2))]},
        model_dim=768,
    )
    optimizer = MuonAdamW(groups)
    schedule = Schedule(total_steps=100, warmup_steps=10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_multiplier)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.3 * 0.4, 0.02 * 0.4])


def test_param_groups_follow_both_recipes():
    def p(*shape):
        return nn.Parameter(torch.zeros(shape))

    families = {
        "lm_head": [p(5, 4)],
        "wte": [p(5, 4)],
        "value_embeds": [p(5, 4), p(5, 4)],
        "resid_lambdas": [p(2)],
        "x0_lambdas": [p(2)],
        "scalars": [p(1), p(1, 3)],
        "matrices": [p(4, 4), p(16, 4)],
    }
    s = (1280 / 768) ** -0.5
    groups = {g["name"]: g for g in build_param_groups(families, model_dim=1280, lr_scale=2.0, weight_decay=0.1)}
    expected = {  # nanochat gpt.py@92d63d4 setup_optimizer with base_train's LR defaults
        "lm_head": (0.008 * s * 2, (0.8, 0.96), 0.01),
        "wte": (0.3 * s * 2, (0.8, 0.995), 0.001),
        "value_embeds": (0.15 * s * 2, (0.8, 0.995), 0.01),
        "resid_lambdas": (0.005 * 2, (0.8, 0.95), 0.05),
        "x0_lambdas": (0.5 * 2, (0.96, 0.95), 0.0),
        "scalars": (0.2, (0.8, 0.95), 0.0),
    }
    for name, (lr, betas, wd) in expected.items():
        group = groups[name]
        assert (group["kind"], group["betas"], group["eps"], group["weight_decay"]) == (
            "adamw",
            betas,
            1e-10,
            wd,
        )
        assert group["lr"] == pytest.approx(lr), name
    optimizer = MuonAdamW(list(groups.values()))
    assert len(optimizer.param_groups) == 7
    muon = optimizer.param_groups[-1]
    assert muon["kind"] == "muon" and muon["lr"] == pytest.approx(0.04) and muon["weight_decay"] == 0.1
    assert (muon["momentum"], muon["ns_steps"], muon["orthogonalizer"]) == (0.95, 5, "polar_express")

    october = build_param_groups(
        {
            "lm_head": families["lm_head"],
            "wte": families["wte"],
            "value_embeds": [],
            "matrices": families["matrices"],
        },
        model_dim=1280,
        recipe="oct",
    )
    by_name = {g["name"]: g for g in october}
    assert set(by_name) == {"lm_head", "wte", "matrices"}  # the empty family is skipped
    assert by_name["lm_head"]["lr"] == pytest.approx(0.004 * s) and by_name["wte"]["lr"] == pytest.approx(0.2 * s)
    assert all(by_name[n]["betas"] == (0.8, 0.95) and by_name[n]["weight_decay"] == 0 for n in ("lm_head", "wte"))
    assert by_name["matrices"]["orthogonalizer"] == "newton_schulz" and not by_name["matrices"]["normuon"]
    with pytest.raises(UserError):
        build_param_groups({"value_embeds": families["value_embeds"]}, model_dim=1280, recipe="oct")
    with pytest.raises(AssertionError):
        build_param_groups({"embeddings": families["wte"]}, model_dim=1280)


def test_bad_groups_fail_loudly():
    # groups come from the recipes, not from users: a wrong one is a bug, and fails where it is made or used
    with pytest.raises(KeyError):
        MuonAdamW([dict(params=[nn.Parameter(torch.zeros(2, 2))])])
    with pytest.raises(AssertionError):
        MuonAdamW([dict(kind="muon", params=[nn.Parameter(torch.zeros(2))])])
    with pytest.raises(AssertionError):
        orthogonalize(torch.zeros(1, 2, 2), "polar_express", 6)


def head_scaling_params(depth: int, vocab_size: int = 32768, aspect_ratio: int = 64, head_dim: int = 128) -> int:
    """nanochat HEAD's block matrices + lm_head, from its architecture (reference/nanochat.md §2).

    width d = ceil(depth·64 / 128)·128 with n_head = n_kv_head = d/128. Per layer: q, k, v, o are d×d and the
    MLP is d×4d + 4d×d, so 12·d². Value-embedding layers (every other one, the last included) add a gate of
    n_kv_head × 12. lm_head is d × V (V already a multiple of 64).
    """
    d = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    value_embedding_layers = sum(1 for i in range(depth) if i % 2 == (depth - 1) % 2)
    return depth * 12 * d * d + value_embedding_layers * (d // head_dim) * 12 + d * vocab_size


def test_depth_rules_reproduce_nanochat_numbers():
    reference = head_scaling_params(12)
    # reference/nanochat.md §2 table: scaling params 110.1M / 435.2M / 729.8M / 1677.7M
    assert [round(head_scaling_params(d) / 1e5) / 10 for d in (12, 20, 24, 32)] == [
        110.1,
        435.2,
        729.8,
        1677.7,
    ]

    d12 = plan_from_depth(12, reference, reference)
    assert (d12.total_batch_tokens, d12.num_iterations, d12.lr_scale) == (524_288, 2_520, 1.0)
    assert d12.weight_decay == pytest.approx(0.28)

    d20 = plan_from_depth(20, head_scaling_params(20), reference)
    assert (d20.total_batch_tokens, d20.num_iterations) == (1_048_576, 4_980)
    assert d20.weight_decay == pytest.approx(0.100, abs=5e-4)

    speedrun = plan_from_depth(24, head_scaling_params(24), reference, target_param_data_ratio=8)
    assert round(speedrun.target_tokens / 1e7) / 100 == 5.84
    assert (speedrun.total_batch_tokens, speedrun.num_iterations) == (1_048_576, 5_568)
    assert speedrun.lr_scale == pytest.approx(1.414, abs=1e-3)
    assert speedrun.weight_decay == pytest.approx(0.060, abs=5e-4)

    assert plan_from_depth(32, head_scaling_params(32), reference).total_batch_tokens == 2_097_152

    forced = plan_from_depth(20, head_scaling_params(20), reference, total_batch_tokens=2**19, num_iterations=10)
    assert (forced.total_batch_tokens, forced.num_iterations, forced.lr_scale) == (2**19, 10, 1.0)
    assert "optimizer steps" in forced.describe() and "524,288" in forced.describe()


def test_grad_accumulation_steps():
    assert grad_accumulation_steps(524_288, device_batch_size=32, seq_len=2048, world_size=8) == 1
    assert grad_accumulation_steps(524_288, device_batch_size=16, seq_len=2048, world_size=1) == 16
    with pytest.raises(UserError, match="not a multiple"):
        grad_accumulation_steps(524_288, device_batch_size=12, seq_len=2048, world_size=1)


def test_muon_adamw_fits_a_small_mlp():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    teacher = torch.randn(16, 32, generator=gen)
    y = torch.tanh(x @ teacher) @ torch.randn(32, 1, generator=gen) / 4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    matrices = [model[0].weight, model[2].weight]
    others = [model[0].bias, model[2].bias, model[4].weight, model[4].bias]
    optimizer = MuonAdamW(
        [
            dict(kind="muon", name="matrices", params=matrices, lr=0.02, weight_decay=0.01),
            dict(kind="adamw", name="rest", params=others, lr=3e-3, betas=(0.8, 0.95)),
        ]
    )
    losses = []
    for _ in range(60):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_lightning_automatic_optimization_with_accumulation():
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = TinyModel()
            self.schedule = Schedule(total_steps=4, warmup_steps=2)
            self.start = copy.deepcopy(self.model.state_dict())

        def training_step(self, batch, batch_idx):
            (tokens,) = batch
            logits = self.model(tokens)
            return nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten())

        def on_train_batch_start(self, batch, batch_idx):
            apply_muon_schedules(self.trainer.optimizers[0], self.trainer.global_step, self.schedule)

        def configure_optimizers(self):
            optimizer = MuonAdamW(build_param_groups(self.model.families(), model_dim=8))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.lr_multiplier)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    data = torch.utils.data.TensorDataset(torch.randint(0, 11, (16, 6), generator=torch.Generator().manual_seed(0)))
    module = Module()
    trainer = pl.Trainer(
        max_steps=4,
        accumulate_grad_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    assert trainer.global_step == 4
    optimizer = trainer.optimizers[0]
    assert all(
        g["lr"] == pytest.approx(g["initial_lr"] * module.schedule.lr_multiplier(4)) for g in optimizer.param_groups
    )
    moved = [not torch.equal(v, module.start[k]) for k, v in module.model.state_dict().items()]
    assert all(moved)


def test_the_gpt_families_and_counts_fit_the_optimizer():
    from nanochat_pl.model.gpt import GPT, GPTConfig

    for depth in (12, 20):  # the model's own count agrees with the formula the depth rules were checked with
        with torch.device("meta"):
            assert GPT(GPTConfig.from_depth(depth)).num_scaling_params() == head_scaling_params(depth)

    torch.manual_seed(0)
    config = GPTConfig.from_depth(2, vocab_size=100, sequence_len=16, head_dim=32)
    model = GPT(config)
    model.init_weights()
    optimizer = MuonAdamW(build_param_groups(model.param_families(), model_dim=config.n_embd))
    assert {g["name"] for g in optimizer.param_groups} == set(model.param_families())
    tokens = torch.randint(0, 100, (4, 17), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
