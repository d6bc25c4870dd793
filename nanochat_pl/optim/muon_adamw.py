"""MuonAdamW: one torch optimizer, Muon for the block matrices and AdamW for everything else.

One optimizer object (not two) keeps Lightning's automatic optimization working: gradient accumulation,
clipping, LearningRateMonitor, checkpointing and `global_step` (see peers-and-lightning.md §2.3). Each param
group says which update it gets with `kind="adamw"|"muon"` and carries its own hyperparameters, so one
LambdaLR (a lambda per group, or one for all) scales every group's `initial_lr`.

Muon step (nanochat optim.py@92d63d4), on each stack of same-shape matrices:
  Nesterov momentum -> [MuonEq row equilibration] -> orthogonalisation (Polar Express | Newton–Schulz)
  -> [Muon+ renormalisation] -> [NorMuon variance reduction] -> update with [cautious] weight decay,
with the learning rate multiplied by max(1, rows/cols)^0.5. Bracketed steps are group switches, so the plain
Muon of nanochat's October 2025 release (and of torch.optim.Muon) is the same class with them off.

Gradients are used as they arrive: under Lightning's DDP they are already averaged, so nothing here averages
them again. What is shared out is the work and the state (ZeRO-1, as nanochat's DistMuonAdamW shards both): with
several ranks each parameter has one owner (a contiguous share of every same-shape Muon stack, AdamW tensors
balanced by size), only the owner keeps its optimizer state and computes its update, and the updated parameters
are then broadcast from their owners. Every rank ends the step with the same weights, as without sharding, while
holding 1/world of the optimizer state and doing 1/world of the orthogonalisations. `state_dict()` gathers the
shards into one (every rank must call it, as Lightning's checkpointing does), so a checkpoint is the same whatever
the world size it was written at, and `load_state_dict` keeps each rank's share.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from nanochat_pl.common import UserError
from nanochat_pl.optim.orthogonalize import ORTHOGONALIZERS, iteration_coefficients, orthogonalize

ADAMW_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
# nanochat HEAD's Muon (optim.py@92d63d4); the October recipe switches the extras off (param_groups.py).
MUON_DEFAULTS = dict(
    lr=0.02,
    momentum=0.95,
    weight_decay=0.0,
    ns_steps=5,
    orthogonalizer="polar_express",
    row_equilibration=True,
    renormalize=True,
    normuon=True,
    beta2=0.9,
    cautious_wd=True,
    ortho_dtype="auto",
)
ORTHO_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_ortho_dtype(name: str, device: torch.device) -> torch.dtype:
    """nanochat's rule for "auto" (optim.py@92d63d4 with common.py's COMPUTE_DTYPE): bf16 on CUDA GPUs of compute
    capability 8.0 or more (Ampere on), fp32 everywhere else, CPUs included.

    On a CPU without native bf16 (AVX2 only: 2 cores of an AMD EPYC Zen 3), the demo model's (d4) orthogonalisation
    takes ~20x longer in bf16 than in fp32 (43 s vs 2.0-2.6 s per step on a loaded machine, interleaved), and a
    whole training step ~4x longer. On one with AVX512-BF16, bf16 ran a 4x512x2048 stack 2.4x faster (512 vs
    1228 ms), but fp32 is what trains like nanochat: with it and nanochat's normalisation, the validation bpb gap to
    nanochat's base_train at d4 after 200 steps fell from 0.021 to 0.008 (issue 7)."""
    if ORTHO_DTYPES[name] is not None:
        return ORTHO_DTYPES[name]
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float32


class MuonAdamW(torch.optim.Optimizer):
    """Muon for 2-D block matrices, AdamW for embeddings, lm_head and scalars, in one optimizer.

    Args:
        param_groups: dicts with `params`, `kind` ("adamw" or "muon"), an optional `name` (shown by
            LearningRateMonitor) and hyperparameters; missing ones take ADAMW_DEFAULTS / MUON_DEFAULTS.
            AdamW: lr, betas, eps, weight_decay. Muon: lr, momentum, weight_decay, ns_steps,
            orthogonalizer ("polar_express"|"newton_schulz"), row_equilibration, renormalize, normuon,
            beta2, cautious_wd, ortho_dtype ("auto"|"bfloat16"|"float32", see resolve_ortho_dtype).
            A Muon group may mix shapes; same-shape matrices are orthogonalised together in one batched
            matmul. Each group's starting weight decay is kept as `initial_weight_decay` for schedules.
        shard: Under torch.distributed with several ranks, share the state and the work out (see the module's
            docstring); False has every rank compute every update.
    """

    def __init__(self, param_groups: Iterable[dict], shard: bool = True):
        self.shard = shard
        self._owners_by_world: dict[int, dict[Tensor, int]] = {}  # computed once per world size (and groups)
        super().__init__(list(param_groups), defaults={})

    def add_param_group(self, param_group: dict) -> None:
        kind = param_group.get("kind")
        if kind not in ("adamw", "muon"):
            raise UserError(f"MuonAdamW param group needs kind='adamw' or 'muon', got {kind!r}")
        group = {**(ADAMW_DEFAULTS if kind == "adamw" else MUON_DEFAULTS), **param_group}
        params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        group["params"] = params  # a generator would be empty by the time torch reads it
        if kind == "muon":
            if any(p.ndim != 2 for p in params):
                shapes = [tuple(p.shape) for p in params if p.ndim != 2]
                raise UserError(f"Muon group {group.get('name', '')!r} holds non-matrix parameters {shapes}")
            if group["orthogonalizer"] not in ORTHOGONALIZERS:
                raise UserError(f"orthogonalizer must be one of {ORTHOGONALIZERS}, got {group['orthogonalizer']!r}")
            if group["ortho_dtype"] not in ORTHO_DTYPES:
                raise UserError(f"ortho_dtype must be one of {tuple(ORTHO_DTYPES)}, got {group['ortho_dtype']!r}")
            try:
                iteration_coefficients(group["orthogonalizer"], group["ns_steps"])
            except ValueError as error:
                raise UserError(str(error)) from None
        group.setdefault("initial_weight_decay", group["weight_decay"])
        super().add_param_group(group)
        self._owners_by_world.clear()  # ownership depends on the groups

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

    # ---- sharing the work out across ranks -----------------------------------------------------------------

    def _rank_and_world(self) -> tuple[int, int]:
        if self.shard and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _owners(self, world: int) -> dict[Tensor, int]:
        """The rank that updates each parameter: a contiguous share of every same-shape Muon stack (nanochat
        splits its stacks so), and AdamW tensors largest first to the least-loaded rank. The same on every rank:
        it depends on the groups and the world size only."""
        if world in self._owners_by_world:
            return self._owners_by_world[world]
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
        self._owners_by_world[world] = owners
        return owners

    def _broadcast_from_owners(self, owners: dict[Tensor, int], rank: int, world: int) -> None:
        """Every parameter from its owner to all ranks: one flat buffer per (owner, dtype)."""
        for owner in range(world):
            by_dtype: dict[torch.dtype, list[Tensor]] = defaultdict(list)
            for p, r in owners.items():
                if r == owner:
                    by_dtype[p.dtype].append(p)
            for params in by_dtype.values():
                if rank == owner:
                    flat = torch.cat([p.detach().reshape(-1) for p in params])
                else:
                    flat = params[0].new_empty(sum(p.numel() for p in params))
                dist.broadcast(flat, src=owner)
                if rank != owner:
                    pieces = flat.split([p.numel() for p in params])
                    torch._foreach_copy_(params, [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)])

    def state_dict(self) -> dict[str, Any]:
        """The whole optimizer's state: under sharding, every rank's share gathered on rank 0 (a collective:
        every rank calls it, as Lightning's checkpointing does; the other ranks get their own share back)."""
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
        """A gloo group over all ranks for gathering the state as Python objects: under NCCL, gather_object would
        stage every rank's pickled share on rank 0's GPU (world x a share, mid-run, at each checkpoint). Made once,
        by every rank (state_dict is called on all of them)."""
        if dist.get_backend() == "gloo":
            return None
        if getattr(self, "_gloo_group", None) is None:
            self._gloo_group = dist.new_group(backend="gloo")
        return self._gloo_group

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load this rank's share of a whole state (from a checkpoint written at any world size): the other ranks'
        entries are dropped before torch moves the state onto the parameters' device."""
        rank, world = self._rank_and_world()
        if world > 1:
            owners = self._owners(world)
            params = [p for group in self.param_groups for p in group["params"]]  # the state's indices, in order
            own = {index: state for index, state in state_dict["state"].items() if owners[params[index]] == rank}
            state_dict = {**state_dict, "state": own}
        super().load_state_dict(state_dict)

    def _adamw_step(self, group: dict, params: list[Tensor]) -> None:
        """Bias-corrected AdamW with decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101).

        Same arithmetic, in the same order, as torch.optim.AdamW's single-tensor path, batched over the
        group with torch._foreach_* ops. Math is fp32 even for bf16-stored parameters: 1 - beta2 = 0.005
        is below bf16's resolution near 1 (nanochat e02b339).
        """
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
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
        """NorMuon variance reduction (Li et al., arXiv 2510.05491; nanochat optim.py@92d63d4).

        Muon's output has uneven scales across neurons. Keep an EMA (beta2) of each row's (tall/square
        matrices) or each column's (wide ones) mean squared update, divide the update by its square root
        like Adam does per entry, then restore the Frobenius norm each matrix had before.
        """
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
