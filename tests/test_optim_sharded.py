"""MuonAdamW sharded across ranks (ZeRO-1, as nanochat's DistMuonAdamW): on two gloo processes it trains exactly
as the unsharded optimizer does, each rank holding only its share of the state; its state_dict gathers the whole
state, which loads back at another world size and trains on the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.optim.muon_adamw import MuonAdamW
from nanochat_pl.optim.recipes import build_param_groups
from nanochat_pl.stages.precision import NanochatBf16
from tests.stage_helpers import run_ddp_script

REPO = Path(__file__).resolve().parents[1]
STEPS, MORE_STEPS = 4, 2  # before and after the checkpoint

SCRIPT = r'''
import copy
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat_pl.optim import muon_adamw
from nanochat_pl.optim.muon_adamw import MuonAdamW


def make_params():
    """Two stacks of same-shape Muon matrices (3 tall, 2 wide) and AdamW tensors of several sizes."""
    torch.manual_seed(0)
    muon = [torch.randn(32, 16) for _ in range(3)] + [torch.randn(16, 32) for _ in range(2)]
    adamw = [torch.randn(50, 16), torch.randn(50, 16), torch.randn(4), torch.randn(1)]
    return [p.requires_grad_() for p in muon], [p.requires_grad_() for p in adamw]


def groups(muon, adamw):
    return [dict(kind="muon", params=muon, lr=0.02, weight_decay=0.1), dict(kind="adamw", params=adamw, lr=0.01)]


def train(optimizer, params, steps, first):
    for step in range(first, first + steps):
        generator = torch.Generator().manual_seed(step)  # the same (already averaged) gradients on every rank
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()


def worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    muon, adamw = make_params()
    sharded = MuonAdamW(groups(muon, adamw), shard=True)
    ref_muon, ref_adamw = make_params()
    plain = MuonAdamW(groups(ref_muon, ref_adamw), shard=False)
    params, ref_params = muon + adamw, ref_muon + ref_adamw
    train(sharded, params, STEPS, 0)
    train(plain, ref_params, STEPS, 0)
    whole = sharded.state_dict()  # every rank calls it
    # as under NCCL: the shares travel through a gloo group of their own, made once, and arrive the same
    muon_adamw.dist.get_backend = lambda group=None: "nccl"
    through_own_group = sharded.state_dict()
    assert sharded.state_dict()["state"].keys() == through_own_group["state"].keys() and sharded._gloo_group
    if rank == 0:
        for index, state in whole["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(through_own_group["state"][index][key]), torch.as_tensor(value))
    result = {
        "params": [p.detach().clone() for p in params],
        "reference": [p.detach().clone() for p in ref_params],
        "own_state": len(sharded.state),
        "whole": copy.deepcopy(whole) if rank == 0 else None,
        "plain_state": copy.deepcopy(plain.state_dict()) if rank == 0 else None,  # it trains on below
    }
    # a checkpoint written at 2 ranks resumes on 1: every rank loads the whole state and keeps its share
    if rank == 0:
        resumed_muon, resumed_adamw = [p.detach().clone().requires_grad_() for p in muon], [
            p.detach().clone().requires_grad_() for p in adamw
        ]
        single = MuonAdamW(groups(resumed_muon, resumed_adamw), shard=False)
        single.load_state_dict(whole)
        train(single, resumed_muon + resumed_adamw, MORE_STEPS, STEPS)
        result["resumed_on_one"] = [p.detach().clone() for p in resumed_muon + resumed_adamw]
    train(plain, ref_params, MORE_STEPS, STEPS)
    result["reference_after"] = [p.detach().clone() for p in ref_params]
    torch.save(result, f"{out}.{rank}.pt")
    dist.destroy_process_group()


STEPS, MORE_STEPS = int(sys.argv[3]), int(sys.argv[4])
if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
'''


def test_sharded_equals_unsharded_and_its_state_travels_across_world_sizes(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "init"), str(tmp_path / "out"), str(STEPS), str(MORE_STEPS)]
    result = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"out.{rank}.pt") for rank in (0, 1)]

    for rank in ranks:  # after every step both ranks hold the weights the unsharded optimizer computes
        for sharded, reference in zip(rank["params"], rank["reference"], strict=True):
            assert torch.equal(sharded, reference)
    # each rank kept part of the state; together, all of it (5 Muon matrices + 4 AdamW tensors)
    assert 0 < ranks[0]["own_state"] < 9 and ranks[0]["own_state"] + ranks[1]["own_state"] == 9
    whole, plain = ranks[0]["whole"], ranks[0]["plain_state"]
    assert whole["state"].keys() == plain["state"].keys() == set(range(9))
    for index, state in plain["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(whole["state"][index][key]), torch.as_tensor(value)), (index, key)
    # the gathered state resumed on one process trains on exactly as the unsharded run did
    for resumed, reference in zip(ranks[0]["resumed_on_one"], ranks[0]["reference_after"], strict=True):
        assert torch.equal(resumed, reference)


DDP_SCRIPT = r"""
import functools
import sys
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from nanochat_pl.optim.muon_adamw import MuonAdamW
from nanochat_pl.stages import lm
from tests.stage_helpers import REPO, B, T, model_parameters, tiny_data, tiny_module, tiny_trainer

shards, tokenizer, out, mode = sys.argv[1:5]
resume = sys.argv[5] if len(sys.argv) > 5 else None
torch.set_num_threads(1)
if mode == "unsharded":  # every rank computes every update, with DDP's defaults
    lm.MuonAdamW = functools.partial(MuonAdamW, shard=False)
    strategy = DDPStrategy()
else:  # the multi-GPU presets' own strategy
    preset = yaml.safe_load((REPO / "configs/trainer/gpu8.yaml").read_text())["trainer"]["strategy"]
    assert preset["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    strategy = DDPStrategy(**preset["init_args"])


class GradientStorages(L.Callback):
    # how many separate buffers hold the gradients when the optimizer steps
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.counts = (len(grads), len({g.untyped_storage().data_ptr() for g in grads}))


L.seed_everything(0)
module = tiny_module(tokenizer, num_iterations=4, lr_scale=1.0, total_batch_tokens=2 * B * T)
checkpoints = ModelCheckpoint(dirpath=out + ".ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1)
storages = GradientStorages()
settings = dict(devices=2, strategy=strategy, callbacks=[checkpoints, storages], enable_checkpointing=True)
trainer = tiny_trainer(Path(out + ".root"), **settings)
trainer.fit(module, tiny_data(shards, tokenizer), ckpt_path=resume)
torch.save({**model_parameters(module), "grad_storages": storages.counts}, f"{out}.{trainer.global_rank}.pt")
"""


def test_under_lightning_ddp_sharded_trains_checkpoints_and_resumes_as_unsharded(corpus, tmp_path):
    """Two gloo processes, 4 steps, checkpoints at steps 2 and 4: the sharded optimizer under the multi-GPU
    presets' DDP (gradients as views of its buckets) gives the weights and checkpointed state (gathered from both
    ranks) of the unsharded one under DDP's defaults, and a sharded run resumed from step 2 ends where the straight
    one did."""
    shards, tokenizer = corpus

    def run(name: str, mode: str, *resume: str) -> Path:
        out = tmp_path / name
        run_ddp_script(DDP_SCRIPT, [str(shards), str(tokenizer), str(out), mode, *resume], tmp_path, timeout=180)
        return out

    sharded, unsharded = run("sharded", "sharded"), run("unsharded", "unsharded")
    resumed = run("resumed", "sharded", str(tmp_path / "sharded.ckpt" / "step=2.ckpt"))
    final = torch.load(f"{sharded}.0.pt")
    # the presets' DDP keeps the gradients in its all-reduce buckets (a few buffers), not a second copy per tensor
    num_grads, num_storages = final.pop("grad_storages")
    assert num_storages < num_grads / 4
    assert torch.load(f"{unsharded}.0.pt")["grad_storages"] == (num_grads, num_grads)
    for rank in (0, 1):
        for other in (unsharded, resumed):
            for name, value in torch.load(f"{other}.{rank}.pt").items():
                if name != "grad_storages":
                    assert torch.equal(value, final[name]), (other.name, rank, name)
    states = [
        torch.load(tmp_path / f"{run}.ckpt" / "step=4.ckpt")["optimizer_states"][0] for run in ("sharded", "unsharded")
    ]
    assert states[0]["state"].keys() == states[1]["state"].keys() and len(states[0]["state"]) > 0
    for index, state in states[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(states[0]["state"][index][key]), torch.as_tensor(value)), (index, key)


def static_memory_per_gpu(depth: int, world: int, nanochat_bf16: bool, sharded: bool, bucket_view: bool) -> float:
    """Bytes one GPU holds before any activation: weights, their gradients, DDP's buckets (unless the gradients
    are views of them) and the optimizer state it owns, counted from the tensors a real step creates (on the meta
    device: shapes and dtypes, no memory)."""
    with torch.device("meta"):
        model = GPT(GPTConfig.from_depth(depth))
    if nanochat_bf16:
        NanochatBf16().convert_module(SimpleNamespace(model=model))
    optimizer = MuonAdamW(build_param_groups(model.param_families(), model.config.n_embd, recipe="2026"))
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    optimizer.step()
    owners = optimizer._owners(world)

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    weights = nbytes(model.parameters())
    per_rank = [
        nbytes(v for p, state in optimizer.state.items() if not sharded or owners[p] == rank for v in state.values())
        for rank in range(world)
    ]
    return (weights * (2 if bucket_view else 3) + max(per_rank)) / 1e9


def test_the_readmes_static_memory_at_d20_is_what_the_tensors_take():
    readme = (REPO / "README.md").read_text()
    rows = {
        "bf16-mixed, every rank holding the whole optimizer state, DDP's defaults": (False, False, False),
        "+ MuonAdamW sharded": (False, True, False),
        "+ NanochatBf16 (bf16 embeddings and their state)": (True, True, False),
        "+ gradients as bucket views (the configs as shipped, with NanochatBf16)": (True, True, True),
    }
    for label, (nanochat_bf16, sharded, bucket_view) in rows.items():
        gigabytes = static_memory_per_gpu(20, 8, nanochat_bf16, sharded, bucket_view)
        assert f"| {label} | {gigabytes:.1f} GB" in readme, (label, gigabytes)


def test_every_multi_gpu_config_keeps_gradients_in_ddps_buckets():
    """The DDP block is written out in each config that runs on several GPUs: none may fall back to DDP's defaults
    (`strategy: ddp`, a second copy of every gradient)."""
    bucket_view_ddp = {
        "class_path": "lightning.pytorch.strategies.DDPStrategy",
        "init_args": {"gradient_as_bucket_view": True},
    }
    multi_gpu = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        strategy = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("strategy")
        assert strategy in (None, "auto", bucket_view_ddp), path
        multi_gpu += [path.name] if strategy == bucket_view_ddp else []
    assert "gpu8.yaml" in multi_gpu and "base_d20.yaml" in multi_gpu and len(multi_gpu) == 9
