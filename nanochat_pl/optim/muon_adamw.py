"""MuonAdamW: one torch optimizer (as Lightning's automatic optimization wants), Muon for the block matrices and
AdamW for everything else. Each param group says which update it gets (`kind`) and carries its hyperparameters.

Muon step (nanochat optim.py@92d63d4), on each stack of same-shape matrices:
  Nesterov momentum -> [MuonEq row equilibration] -> orthogonalisation (Polar Express | Newton–Schulz)
  -> [Muon+ renormalisation] -> [NorMuon variance reduction] -> update with [cautious] weight decay,
with the learning rate multiplied by max(1, rows/cols)^0.5. Bracketed steps are group switches: with them off it is
the plain Muon of nanochat's October 2025 release and of torch.optim.Muon. Orthogonalisation replaces G = U S V^T
by ~ U V^T with a few odd-polynomial iterations X <- a X + (b A + c A^2) X, A = X X^T, which push every singular
value of a normalised X towards 1 and leave the singular vectors alone.

With several ranks (gradients arrive averaged by DDP) the work and the state are shared out (ZeRO-1, as nanochat's
DistMuonAdamW): each parameter's owner rank keeps its state, computes its update and broadcasts it. `state_dict()`
gathers the shares, so a checkpoint is the same at any world size; `load_state_dict` keeps each rank's share.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

# Keller Jordan's quintic Newton–Schulz coefficients, the same at every iteration, tuned for the largest slope at zero
# rather than for convergence: singular values land in about [0.7, 1.2] (kellerjordan.github.io/posts/muon; also
# torch.optim.Muon and nanochat muon.py@dfc8833).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower, arXiv 2505.16932): a minimax-optimal polynomial per iteration, the
# paper's for 5 iterations with safety factor 2e-2 and cushion 2, as nanochat optim.py@92d63d4 uses them.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# X is first divided by (scale·||X||_F + eps), as nanochat: ||X|| + 1e-7 for Newton–Schulz (muon.py@dfc8833),
# 1.01·||X|| + 1e-6 for Polar Express, leaving room for its safety factor (optim.py@92d63d4).
NORMALIZATION = {"newton_schulz": (1.0, 1e-7), "polar_express": (1.01, 1e-6)}


def orthogonalize(G: Tensor, method: str = "polar_express", steps: int = 5) -> Tensor:
    """Approximately orthogonalise a stack of matrices G (K, m, n), in G's dtype. Each matrix is first divided by
    its Frobenius norm (NORMALIZATION), which bounds its spectral norm; tall ones are transposed so that the Gram
    matrix A = X X^T is the small one. Each iteration is two fused multiply-adds: B = b·A + c·A·A, X = a·X + B·X."""
    if method == "newton_schulz":
        coefficients = [NEWTON_SCHULZ_COEFFICIENTS] * steps
    else:
        assert steps <= len(POLAR_EXPRESS_COEFFICIENTS), "Polar Express has coefficients for 5 steps"
        coefficients = POLAR_EXPRESS_COEFFICIENTS[:steps]
    scale, eps = NORMALIZATION[method]
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * scale + eps)
    for a, b, c in coefficients:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X.mT if tall else X


ADAMW_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
# nanochat HEAD's Muon (optim.py@92d63d4): its settings, and the switches of its additions, which the October recipe
# turns off (recipes.py); ortho_dtype "auto" | "bfloat16" | "float32" (resolve_ortho_dtype)
MUON_DEFAULTS = dict(lr=0.02, momentum=0.95, weight_decay=0.0, ns_steps=5, beta2=0.9, ortho_dtype="auto")
MUON_DEFAULTS |= dict(
    orthogonalizer="polar_express", row_equilibration=True, renormalize=True, normuon=True, cautious_wd=True
)
ORTHO_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_ortho_dtype(name: str, device: torch.device) -> torch.dtype:
    """nanochat's "auto" (optim.py@92d63d4, common.py COMPUTE_DTYPE): bf16 on CUDA GPUs of compute capability 8.0
    on, fp32 everywhere else, CPUs included (fp32 trains like nanochat, and CPUs without native bf16 are slow)."""
    if ORTHO_DTYPES[name] is not None:
        return ORTHO_DTYPES[name]
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float32


class MuonAdamW(torch.optim.Optimizer):
    """Muon for 2-D block matrices, AdamW for embeddings, lm_head and scalars, in one optimizer. `param_groups`:
    dicts with `params`, `kind` ("adamw" | "muon"), an optional `name` (for LearningRateMonitor) and the settings of
    ADAMW_DEFAULTS / MUON_DEFAULTS (missing ones take those). `shard`: share the state and the work out over ranks."""

    def __init__(self, param_groups: Iterable[dict], shard: bool = True):
        self.shard = shard
        super().__init__(list(param_groups), defaults={})

    def add_param_group(self, param_group: dict) -> None:
        group = {**{"adamw": ADAMW_DEFAULTS, "muon": MUON_DEFAULTS}[param_group["kind"]], **param_group}
        params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        group["params"] = params  # a generator would be empty by the time torch reads it
        assert group["kind"] == "adamw" or all(p.ndim == 2 for p in params), "Muon updates matrices only"
        group.setdefault("initial_weight_decay", group["weight_decay"])
        super().add_param_group(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; runs `closure` first (Lightning passes one)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = self._rank_and_world()
        owners = self._owners(world) if world > 1 else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and (owners is None or owners[p] == rank)]
            if not params:
                continue
            if group["kind"] == "adamw":
                self._adamw_step(group, params)
            else:
                for same_shape in _by_shape(params).values():
                    self._muon_step(group, same_shape)
        if world > 1:
            self._broadcast_from_owners(owners, rank, world)
        return loss

    def _rank_and_world(self) -> tuple[int, int]:
        if self.shard and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _owners(self, world: int) -> dict[Tensor, int]:
        """The rank that updates each parameter: a contiguous share of every same-shape Muon stack (as nanochat),
        and AdamW tensors largest first to the least-loaded rank."""
        owners: dict[Tensor, int] = {}
        load = [0] * world
        for group in self.param_groups:
            if group["kind"] == "muon":
                for stack in _by_shape(group["params"]).values():
                    share = -(-len(stack) // world)
                    for index, p in enumerate(stack):
                        owners[p] = index // share
                        load[index // share] += p.numel()
        adamw = [p for group in self.param_groups if group["kind"] == "adamw" for p in group["params"]]
        for p in sorted(adamw, key=lambda p: -p.numel()):  # stable: ties keep the groups' order
            owners[p] = min(range(world), key=lambda r: load[r])
            load[owners[p]] += p.numel()
        return owners

    def _broadcast_from_owners(self, owners: dict[Tensor, int], rank: int, world: int) -> None:
        """Every parameter from its owner to all ranks: one flat buffer per (owner, dtype)."""
        for owner in range(world):
            by_dtype: dict[torch.dtype, list[Tensor]] = defaultdict(list)
            for p, r in owners.items():
                if r == owner:
                    by_dtype[p.dtype].append(p)
            for params in by_dtype.values():
                size = sum(p.numel() for p in params)
                flat = _flatten_dense_tensors(params) if rank == owner else params[0].new_empty(size)
                dist.broadcast(flat, src=owner)
                if rank != owner:
                    torch._foreach_copy_(params, list(_unflatten_dense_tensors(flat, params)))

    def state_dict(self) -> dict[str, Any]:
        """The whole state: under sharding, every rank's share gathered on rank 0 (a collective, as Lightning's
        checkpointing calls it; the other ranks get their own share back)."""
        local = super().state_dict()
        rank, world = self._rank_and_world()
        if world == 1:
            return local
        share = {
            index: {k: v.cpu() if isinstance(v, Tensor) else v for k, v in state.items()}
            for index, state in local["state"].items()
        }
        shares = [None] * world if rank == 0 else None
        dist.gather_object(share, shares, dst=0, group=self._host_group())
        if rank == 0:
            local["state"] = {index: state for rank_share in shares for index, state in rank_share.items()}
        return local

    def _host_group(self) -> dist.ProcessGroup | None:
        """A gloo group for gathering the state as Python objects: under NCCL, gather_object would stage every
        rank's pickled share on rank 0's GPU. Made once, by every rank."""
        if dist.get_backend() == "gloo":
            return None
        if getattr(self, "_gloo_group", None) is None:
            self._gloo_group = dist.new_group(backend="gloo")
        return self._gloo_group

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this rank's share of a whole state (written at any world size)."""
        rank, world = self._rank_and_world()
        if world > 1:
            owners = self._owners(world)
            params = [p for group in self.param_groups for p in group["params"]]  # the state's indices, in order
            own = {index: state for index, state in state_dict["state"].items() if owners[params[index]] == rank}
            state_dict = {**state_dict, "state": own}
        super().load_state_dict(state_dict)

    def _adamw_step(self, group: dict, params: list[Tensor]) -> None:
        """Bias-corrected AdamW with decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101): torch.optim.AdamW's
        single-tensor arithmetic in the same order, batched with torch._foreach_* ops. Math is fp32 even for
        bf16-stored parameters: 1 - beta2 = 0.005 is below bf16's resolution near 1."""
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        p32 = [p.float() for p in params]  # aliases, not copies, for fp32 parameters
        grads = [p.grad.float() for p in params]
        exp_avgs = [s["exp_avg"].float() for s in states]
        exp_avg_sqs = [s["exp_avg_sq"].float() for s in states]
        torch._foreach_mul_(p32, 1 - lr * wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        steps = [s["step"] for s in states]
        step_sizes = [lr / (1 - beta1**t) for t in steps]
        bias2_sqrts = [(1 - beta2**t) ** 0.5 for t in steps]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, bias2_sqrts)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(p32, exp_avgs, denoms, [-s for s in step_sizes])
        _copy_back_if_cast(params, p32)
        _copy_back_if_cast([s["exp_avg"] for s in states], exp_avgs)
        _copy_back_if_cast([s["exp_avg_sq"] for s in states], exp_avg_sqs)

    def _muon_step(self, group: dict, params: list[Tensor]) -> None:
        """Muon on K same-shape matrices, stacked into (K, rows, cols) for batched matmuls."""
        rows, cols = params[0].shape
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
                if group["normuon"]:
                    # one second-moment entry per row (tall or square) or per column (wide), as nanochat
                    state["second_momentum_buffer"] = p.new_zeros((rows, 1) if rows >= cols else (1, cols))

        # Nesterov momentum: buf <- m·buf + (1-m)·g, then step along g + m·(buf - g)
        grads = [p.grad for p in params]
        bufs = [s["momentum_buffer"] for s in states]
        momentum = group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        G = torch.stack(torch._foreach_lerp(grads, bufs, momentum)).float()
        # from here to the orthogonalisation's end in the orthogonalisation dtype, as nanochat
        X = G.to(resolve_ortho_dtype(group["ortho_dtype"], G.device))

        if group["row_equilibration"]:
            # MuonEq (arXiv 2603.28254): give every row the mean row norm, a better-conditioned input
            X32 = X.float()
            mean_row_norm = X32.norm(dim=(-2, -1), keepdim=True) / rows**0.5
            X = X * (mean_row_norm / X32.norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(X.dtype)

        U = orthogonalize(X, group["orthogonalizer"], group["ns_steps"]).float()

        if group["renormalize"]:
            # Muon+ (arXiv 2602.21545): an exactly semi-orthogonal matrix has ||U||_F = sqrt(min(m, n))
            U = U * (min(rows, cols) ** 0.5 / U.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))

        if group["normuon"]:
            U = self._normuon(U, [s["second_momentum_buffer"] for s in states], group["beta2"])

        # Keller Jordan's shape multiplier: tall matrices (c_fc) take larger steps
        lr = group["lr"] * max(1.0, rows / cols) ** 0.5
        wd = group["weight_decay"]
        if group["cautious_wd"]:
            # cautious weight decay (nanochat optim.py@92d63d4, modded-nanogpt): decay only the entries
            # where the update already pulls the weight towards zero, i.e. where update·p >= 0
            P = torch.stack(params).float()
            mask = (U * P) >= 0
            P.sub_(lr * U + lr * wd * P * mask)
            torch._foreach_copy_(params, list(P.unbind(0)))
        else:
            # decoupled weight decay with the unscaled lr, then the step (torch.optim.Muon's order and form)
            torch._foreach_mul_(params, 1 - group["lr"] * wd)
            torch._foreach_add_(params, list(U.to(params[0].dtype).unbind(0)), alpha=-lr)

    @staticmethod
    def _normuon(U: Tensor, second_moments: list[Tensor], beta2: float) -> Tensor:
        """NorMuon variance reduction (Li et al., arXiv 2510.05491; nanochat optim.py@92d63d4): Muon's output has uneven
        scales across neurons, so keep an EMA (beta2) of each row's (tall/square matrices) or column's (wide ones)
        mean squared update, divide by its square root as Adam does per entry, and restore each matrix's norm."""
        rows, cols = U.shape[-2:]
        reduce_dim = -1 if rows >= cols else -2
        mean_square = U.square().mean(dim=reduce_dim, keepdim=True)
        torch._foreach_lerp_(second_moments, [m.to(second_moments[0].dtype) for m in mean_square], 1 - beta2)
        V = torch.stack(second_moments).float()
        scaled = U * V.clamp_min(1e-10).rsqrt()
        norm_before = U.norm(dim=(-2, -1), keepdim=True)
        return scaled * (norm_before / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))


def _by_shape(params: list[Tensor]) -> dict[torch.Size, list[Tensor]]:
    """Same-shape matrices stacked together (in the order given), as the Muon step takes them."""
    stacks: dict[torch.Size, list[Tensor]] = defaultdict(list)
    for p in params:
        stacks[p.shape].append(p)
    return stacks


def _copy_back_if_cast(originals: list[Tensor], updated: list[Tensor]) -> None:
    """Write fp32 working copies back into lower-precision storage (fp32 tensors were updated in place)."""
    for original, new in zip(originals, updated, strict=True):
        if original.data_ptr() != new.data_ptr():
            original.copy_(new)
