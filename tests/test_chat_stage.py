"""The chat stage (midtraining and SFT): from a tiny pretrained checkpoint, on a tiny conversation task."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from nanochat_pl.checkpoint import load_model
from nanochat_pl.data.chat_data import ChatDataModule, ChatStream, rows_to_masked_batch
from nanochat_pl.engine import Engine
from nanochat_pl.stages.chat_sft import ChatTraining
from nanochat_pl.tasks.task import Task
from nanochat_pl.tokenizer import Tokenizer
from tests.stage_helpers import (
    B,
    StepLosses,
    T,
    model_parameters,
    run_ddp_script,
    tiny_data,
    tiny_module,
    tiny_trainer,
    write_corpus,
)

WORDS = ("cat", "mat", "dog", "park", "sun", "sky", "book", "song")


class Echo(Task):
    """'say X Y' -> 'X Y': short conversations of a few turns, learnable by a depth-1 model."""

    def __init__(self, size: int = 64, seed: int = 0):
        super().__init__()
        self.size, self.seed = size, seed

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        rng = random.Random(self.seed * 100_003 + index)
        messages = []
        for _ in range(rng.randint(1, 3)):
            words = " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
            messages += [{"role": "user", "content": f"say {words}"}, {"role": "assistant", "content": words}]
        return {"messages": messages}


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny pretrained model's last.ckpt and its tokenizer directory."""
    root = tmp_path_factory.mktemp("base")
    shards, tokenizer = write_corpus(root)
    L.seed_everything(0)
    module = tiny_module(tokenizer, num_iterations=6, lr_scale=1.0)
    trainer = tiny_trainer(root, callbacks=[ModelCheckpoint(root / "ckpt", save_last=True)], enable_checkpointing=True)
    trainer.fit(module, tiny_data(shards, tokenizer))
    return root / "ckpt" / "last.ckpt", tokenizer


def chat_module(checkpoint: Path, **overrides) -> ChatTraining:
    settings = dict(init_from=str(checkpoint), recipe="sft", eval_every=1000, sample_every=0, load_optimizer=True)
    return ChatTraining(**{**settings, **overrides})


def chat_data(packing: str | None = None, size: int = 64, **overrides) -> ChatDataModule:
    """The data module; `packing` None: the stage's recipe's."""
    settings = dict(train=[Echo(size)], val=[Echo(16, seed=1)], packing=packing, val_tokens=2 * B * T)
    return ChatDataModule(**{**settings, **overrides})


def test_sft_inherits_the_checkpoint_and_runs_one_epoch(base_checkpoint, tmp_path):
    checkpoint, _ = base_checkpoint
    L.seed_everything(0)
    module, data = chat_module(checkpoint), chat_data()
    record = StepLosses()
    trainer = tiny_trainer(tmp_path, callbacks=[record])
    trainer.fit(module, data)
    # inherited: the model, the batch shape (B x T, total batch B*T: no accumulation), the optimizer recipe
    assert module.gpt_config.n_layer == 1 and data.sequence_len == T and data.device_batch_size == B
    assert trainer.accumulate_grad_batches == 1
    assert data.data_progress >= 1.0 and trainer.global_step == len(record.train)
    # one epoch: the run used up the mixture and stopped within one batch of it
    positions = list(data.progress.positions.values())
    assert sum(p.fetched - len(p.buffered) for p in positions) >= len(data.train_mixture)
    losses = [loss for *_, loss in record.train]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    # the LR ran on data progress: the last step of the second half decays towards 0
    assert module.lr_multiplier(trainer.global_step) < 0.3
    # every group starts at 0.8 of the base run's LR (recipe sft), whatever the warm-started state held
    base_groups = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]["param_groups"]
    sft_groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in sft_groups] == [g["name"] for g in base_groups]
    for sft, base in zip(sft_groups, base_groups, strict=True):
        assert sft["initial_lr"] == pytest.approx(0.8 * base["initial_lr"]), sft["name"]
        assert sft["lr"] == pytest.approx(sft["initial_lr"] * module.lr_multiplier(trainer.global_step - 1))


def stage_for_steps(checkpoint: Path, root: Path) -> ChatTraining:
    """The stage with its model built and a Trainer attached, to call training_step directly."""
    module = chat_module(checkpoint)
    trainer = tiny_trainer(root)
    trainer.datamodule = chat_data()  # what training_step reads its stats from
    module.configure_model()
    module.log = lambda *args, **kwargs: None
    module._trainer = trainer
    return module


def test_a_chat_checkpoint_loads_for_chat_serve_and_the_next_stage(base_checkpoint, tmp_path):
    checkpoint, _ = base_checkpoint
    L.seed_everything(0)
    save = ModelCheckpoint(tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(tmp_path, callbacks=[save], enable_checkpointing=True)
    trainer.fit(chat_module(checkpoint, num_iterations=2), chat_data())
    model, tokenizer, meta = load_model(tmp_path / "ckpt" / "last.ckpt")
    assert meta["stage"] == "sft" and meta["recipe"] == "2026" and meta["total_batch_tokens"] == B * T
    engine = Engine(model, tokenizer)  # what `chat` and `serve` build from it
    prompt = tokenizer.render_for_completion([{"role": "user", "content": "say cat"}])
    sequences, _ = engine.generate_batch(prompt, max_tokens=4, temperature=0.0)
    assert len(sequences[0]) > len(prompt)
    following = chat_module(tmp_path / "ckpt" / "last.ckpt", recipe="sft_oct")  # e.g. SFT after mid
    assert following.inherited["stage"] == "sft" and following.gpt_config == model.config


def test_sft_loss_is_the_masked_cross_entropy(base_checkpoint, tmp_path):
    checkpoint, tokenizer_dir = base_checkpoint
    module = stage_for_steps(checkpoint, tmp_path)
    stream = ChatStream(Echo(32), Tokenizer.load(tokenizer_dir), batch_size=B, sequence_len=T, packing="pad")
    inputs, targets, _ = next(iter(stream))
    assert (targets == -1).any() and (targets >= 0).any()
    loss = module.training_step((inputs, targets), 0)
    with torch.no_grad():
        log_probs = F.log_softmax(module.model(inputs), dim=-1)
    by_hand = [-log_probs[b, t, targets[b, t]] for b in range(B) for t in range(T) if targets[b, t] >= 0]
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)


def test_an_all_masked_micro_batch_gives_zero_loss_not_nan(base_checkpoint, tmp_path):
    checkpoint, _ = base_checkpoint
    module = stage_for_steps(checkpoint, tmp_path)
    loss = module.training_step((torch.randint(0, 100, (B, T)), torch.full((B, T), -1)), 0)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in module.model.parameters())


def test_pad_packing_keeps_every_token_and_masks_all_but_the_assistant(base_checkpoint):
    _, tokenizer_dir = base_checkpoint
    tokenizer = Tokenizer.load(tokenizer_dir)
    task = Echo(40)
    stream = ChatStream(task, tokenizer, batch_size=B, sequence_len=T, packing="pad")
    batches = iter(stream)
    trained = 0
    for _ in range(6):
        inputs, targets, position = next(batches)
        assert inputs.shape == targets.shape == (B, T)
        assert (inputs[:, 0] == tokenizer.bos_token_id).all(), "every row starts a conversation"
        trained += int((targets >= 0).sum())
    # the trained targets of the conversations the packer has used equal their masks' ones (no crop, no loss
    # on padding); the first token's mask never counts (a row's first token is not a target)
    used = [task[k] for k in range(position.fetched) if k not in position.buffered]
    expected = sum(sum(tokenizer.render_conversation(c, max_tokens=T + 1)[1][1:]) for c in used)
    assert trained == expected


def test_rows_to_masked_batch_shifts_and_masks():
    rows = torch.tensor([[5, -8, 6, -1], [7, 8, -10, -10]]).numpy()
    inputs, targets = rows_to_masked_batch(rows)
    assert inputs.tolist() == [[5, 7, 6], [7, 8, 9]]
    assert targets.tolist() == [[-1, 6, -1], [8, -1, -1]]


@pytest.mark.parametrize("recipe", ["sft", "mid"])
def test_chat_resume_equals_an_uninterrupted_run(base_checkpoint, tmp_path, recipe):
    """SFT packs its data "pad", midtraining "crop" (the recipe says so); either resumes exactly."""
    checkpoint, _ = base_checkpoint
    steps = 6
    runs = []
    for resume in (None, tmp_path / "ckpt" / f"step={steps // 2}.ckpt"):
        L.seed_everything(0)
        module = chat_module(
            checkpoint, recipe=recipe, total_batch_tokens=2 * B * T, num_iterations=steps, eval_every=2
        )
        data = chat_data(size=400, num_workers=2 if recipe == "mid" else 0)
        record = StepLosses()
        save = ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=steps // 2, save_top_k=-1)
        trainer = tiny_trainer(tmp_path, callbacks=[record, save], enable_checkpointing=True)
        trainer.fit(module, data, ckpt_path=resume)
        assert trainer.global_step == steps and trainer.accumulate_grad_batches == 2
        assert data.packing == {"sft": "pad", "mid": "crop"}[recipe] and module.stage_name == recipe
        runs.append((record, model_parameters(module)))
    (straight, straight_params), (resumed, resumed_params) = runs
    assert resumed.train == straight.train[2 * steps // 2 :]
    assert resumed.val_bpb[-1] == straight.val_bpb[-1]
    for name, value in straight_params.items():
        assert torch.equal(value, resumed_params[name]), name


def test_resuming_from_a_base_checkpoint_is_refused(base_checkpoint, tmp_path):
    checkpoint, _ = base_checkpoint
    module, data = chat_module(checkpoint), chat_data()
    with pytest.raises(Exception, match="give it as model.init_from"):
        tiny_trainer(tmp_path).fit(module, data, ckpt_path=checkpoint)


DDP_SCRIPT = """
import sys

import torch

from tests.test_chat_stage import train_on_split_batches

torch.set_num_threads(1)
train_on_split_batches(sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:]))
"""


class SplitBatches(L.LightningDataModule):
    """Global batches of 2B packed conversation rows: with 2 ranks rank r takes rows [rB, (r+1)B); alone, the
    process takes the two halves as consecutive micro-batches. Exposes what the chat stage reads of its data;
    with `rank1_runs_out_after`, rank 1 says its data is used up after that many steps, and rank 0 never does."""

    def __init__(self, tokenizer_dir: str, rank1_runs_out_after: int | None = None) -> None:
        super().__init__()
        self.train_mixture = Echo(10_000)
        self.tokenizer = Tokenizer.load(tokenizer_dir)
        self.device_batch_size = B
        self.rank1_runs_out_after = rank1_runs_out_after

    @property
    def data_progress(self) -> float:
        limit, trainer = self.rank1_runs_out_after, self.trainer
        return float(limit is not None and trainer.global_rank == 1 and trainer.global_step >= limit)

    def inherit(self, tokenizer, sequence_len: int, device_batch_size: int, packing: str) -> None:
        pass

    def training_stats(self) -> dict[str, float]:
        return {}

    def train_dataloader(self):
        stream = ChatStream(self.train_mixture, self.tokenizer, 2 * B, T, "pad")
        rank, world = self.trainer.global_rank, self.trainer.world_size

        def batches():
            for inputs, targets, _ in stream:
                for half in range(2) if world == 1 else (rank,):
                    rows = slice(half * B, (half + 1) * B)
                    yield inputs[rows], targets[rows]

        return torch.utils.data.DataLoader(_Iterable(batches), batch_size=None)


class _Iterable(torch.utils.data.IterableDataset):
    def __init__(self, make) -> None:
        self.make = make

    def __iter__(self):
        return self.make()


def train_on_split_batches(checkpoint: str, out: str, devices: int, rank1_runs_out_after: int | None = None) -> None:
    """3 SFT steps (10 when rank 1 runs out of data) of a global batch of 2B rows on `devices` CPU processes;
    saves the losses, gradients, weights and the step it stopped at."""
    from tests.stage_helpers import GradientRecorder

    L.seed_everything(0)
    steps = 3 if rank1_runs_out_after is None else 10
    module = chat_module(Path(checkpoint), total_batch_tokens=2 * B * T, num_iterations=steps)
    data = SplitBatches(module.inherited["tokenizer_dir"], rank1_runs_out_after)
    losses, grads = StepLosses(), GradientRecorder()
    strategy = "ddp" if devices > 1 else "auto"
    trainer = tiny_trainer(Path(out + ".root"), devices=devices, strategy=strategy, callbacks=[losses, grads])
    trainer.fit(module, data)
    assert trainer.accumulate_grad_batches == 2 // devices
    result = {"losses": losses.train, "grads": grads.grads, "params": model_parameters(module)}
    torch.save({**result, "global_step": trainer.global_step}, f"{out}.{trainer.global_rank}.pt")


def test_two_gloo_processes_equal_one(base_checkpoint, tmp_path):
    """Two ranks that each train on half of every global batch give the first step's gradients of one process
    that takes the two halves as two accumulated micro-batches: each micro-batch's loss is its mean over trained
    tokens, and the ranks' gradients are averaged as the accumulated ones are (see the base stage's DDP test for
    why only the first step's gradients are compared exactly)."""
    checkpoint, _ = base_checkpoint
    run_ddp_script(DDP_SCRIPT, [str(checkpoint), str(tmp_path / "ddp"), "2"], tmp_path, timeout=300)
    train_on_split_batches(str(checkpoint), str(tmp_path / "single"), devices=1)
    single = torch.load(tmp_path / "single.0.pt")
    ranks = [torch.load(tmp_path / f"ddp.{rank}.pt") for rank in (0, 1)]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], value), name
    first_single, first_ddp = single["grads"][0], ranks[0]["grads"][0]
    scale = max(g.abs().max().item() for g in first_single.values())
    for name, grad in first_single.items():
        torch.testing.assert_close(first_ddp[name], grad, rtol=1e-5, atol=1e-6 * scale, msg=name)
    # Lightning reports a micro-batch's loss divided by the accumulation count: 2 alone, 1 on each rank
    singles = [2 * loss for *_, loss in single["losses"]]
    for step, (rank0, rank1) in enumerate(zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)):
        assert [rank0[-1], rank1[-1]] == pytest.approx(singles[2 * step : 2 * step + 2], abs=1e-5)


def test_ranks_stop_together_when_one_runs_out_of_data(base_checkpoint, tmp_path):
    """Rank 1 uses up its data after 2 steps, rank 0 never: both stop after step 2 (nanochat's all_reduce MAX of
    last_step), where waiting for each other's gradients would otherwise hang the run."""
    checkpoint, _ = base_checkpoint
    run_ddp_script(DDP_SCRIPT, [str(checkpoint), str(tmp_path / "ddp"), "2", "2"], tmp_path, timeout=300)
    assert [torch.load(tmp_path / f"ddp.{rank}.pt")["global_step"] for rank in (0, 1)] == [2, 2]
