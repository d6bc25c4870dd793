"""The RL stage: REINFORCE on a task's rewards, from a tiny chat checkpoint (a random depth-2 GPT)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from nanochat_pl.data.rl_data import RLDataModule, prompt_indices
from nanochat_pl.stages.rl import RLTraining, Rollout, advantages
from nanochat_pl.tasks.task import Task
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import make_checkpoint
from tests.stage_helpers import GradientRecorder, model_parameters, run_ddp_script, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NUM_SAMPLES, CHUNK = 4, 2  # samples per prompt, samples per forward/backward pass


class EvenReplies(Task):
    """'say something': the reward is 1 for a reply of an even number of characters. A random model's replies
    score both ways, so every step has something to learn (a toy: the mechanics, not the task, are tested)."""

    def __init__(self, size: int = 64, offset: int = 0):
        super().__init__()
        self.size, self.offset = size, offset

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        question = f"say something about {self.offset + index}"
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]}

    def evaluate(self, conversation: dict, reply: str) -> bool:
        return len(reply) % 2 == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random depth-2 chat model; the weights nanochat's init zeroes are made random too, so that every matrix
    has a gradient."""
    path = make_checkpoint(tmp_path_factory.mktemp("sft"))
    saved = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for tensor in saved["state_dict"].values():
        if tensor.is_floating_point() and not tensor.any():
            tensor.normal_(std=0.05, generator=generator)
    torch.save(saved, path)
    return path


def rl_module(checkpoint: Path, **overrides) -> RLTraining:
    settings = dict(
        init_from=str(checkpoint),
        num_samples=NUM_SAMPLES,
        device_batch_size=CHUNK,
        max_new_tokens=6,
        eval_every=0,
        eval_samples=2,
        sample_every=0,
    )
    return RLTraining(**{**settings, **overrides})


def rl_data(examples_per_step: int = 2, **overrides) -> RLDataModule:
    settings = dict(train=EvenReplies(), val=EvenReplies(6, offset=1000), examples_per_step=examples_per_step)
    return RLDataModule(**{**settings, **overrides})


class RolloutRecorder:
    """Wraps a module's `rollout` to record (step, problem, sequences, rewards) of every rollout; or, with
    `fixed`, to return those rollouts in turn instead of sampling."""

    def __init__(self, module: RLTraining, fixed: list[Rollout] | None = None):
        self.sample, self.fixed = module.rollout, list(fixed or [])
        self.seen: list[tuple[int, int, list[list[int]], list[float]]] = []
        module.rollout = self

    def __call__(self, task, conversation, index, step) -> Rollout:
        rollout = self.fixed.pop(0) if self.fixed else self.sample(task, conversation, index, step)
        self.seen.append((step, index, rollout.sequences, rollout.rewards))
        return rollout


# ---- which prompts --------------------------------------------------------------------------------------------


def test_prompts_are_rank_strided_and_shared_the_same_way_by_any_number_of_ranks():
    steps, problems = 7, 10
    alone = [prompt_indices(s, 0, 1, 2, problems) for s in range(steps)]
    ranks = [[prompt_indices(s, r, 2, 1, problems) for r in (0, 1)] for s in range(steps)]
    for step in range(steps):
        assert sorted(ranks[step][0] + ranks[step][1]) == sorted(alone[step])
        assert ranks[step][0][0] % 2 == 0 and ranks[step][1][0] % 2 == 1  # rank r takes r, r + W, ...
    # one epoch (problems // per step steps) practises every problem once
    assert sorted(i for s in range(problems // 2) for i in alone[s]) == list(range(problems))


# ---- the loss and its gradients -------------------------------------------------------------------------------


def fixed_rollouts(tokenizer: Tokenizer, rewards: list[list[float]]) -> list[Rollout]:
    """One rollout per list of rewards: replies of different lengths, each with a calculator call whose output
    the engine forced (mask 0)."""
    special = tokenizer.encode_special
    rollouts = []
    for index, prompt_rewards in enumerate(rewards):
        prompt = tokenizer.render_for_completion(EvenReplies()[index])
        sequences, masks = [], []
        for sample in range(len(prompt_rewards)):
            call = [special("<|python_start|>"), *tokenizer.encode(f"{sample}+{index}"), special("<|python_end|>")]
            forced = [special("<|output_start|>"), *tokenizer.encode(str(sample + index)), special("<|output_end|>")]
            tail = tokenizer.encode(" the answer" + " is" * sample)
            sequences.append(prompt + tokenizer.encode("hello ") + call + forced + tail)
            masks.append(
                [0] * len(prompt) + [1] * len(tokenizer.encode("hello ") + call) + [0] * len(forced) + [1] * len(tail)
            )
        rollouts.append(Rollout(len(prompt), sequences, masks, [""] * len(sequences), prompt_rewards))
    return rollouts


def reinforce_by_hand(model: torch.nn.Module, rollouts: list[Rollout]) -> torch.Tensor:
    """nanochat's REINFORCE loss written out sample by sample and token by token: for every pass (CHUNK samples
    of one prompt), -sum of (r - mean r) x log p over the sampled tokens / the number of sampled tokens; the passes
    averaged."""
    passes = [(r, first) for r in rollouts for first in range(0, len(r.sequences), CHUNK)]
    total = torch.zeros(())
    for rollout, first in passes:
        mean = sum(rollout.rewards) / len(rollout.rewards)
        terms = []
        for sample in range(first, first + CHUNK):
            sequence, mask = rollout.sequences[sample], rollout.masks[sample]
            log_probs = F.log_softmax(model(torch.tensor([sequence[:-1]]))[0], dim=-1)
            for t in range(1, len(sequence)):
                if mask[t]:
                    terms.append((rollout.rewards[sample] - mean) * log_probs[t - 1, sequence[t]])
        total = total - torch.stack(terms).sum() / len(terms) / len(passes)
    return total


def one_step(checkpoint: Path, root: Path, rollouts: list[Rollout], **overrides) -> tuple[RLTraining, dict, float]:
    """One optimizer step on `rollouts` instead of samples: (the module, the gradients it applied, its loss)."""
    module = rl_module(checkpoint, **overrides)
    module.configure_model()
    RolloutRecorder(module, fixed=rollouts)
    grads, losses = GradientRecorder(), []
    loss_of = type("Loss", (L.Callback,), {"on_train_batch_end": lambda s, t, m, out, *a: losses.append(out["loss"])})
    trainer = tiny_trainer(root, max_steps=1, callbacks=[grads, loss_of()])
    trainer.fit(module, rl_data(examples_per_step=len(rollouts)))
    return module, grads.grads[0], losses[0].item()


def test_one_step_is_the_reinforce_loss_computed_by_hand(checkpoint, tmp_path):
    tokenizer = rl_module(checkpoint).tokenizer
    rollouts = fixed_rollouts(tokenizer, [[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.25]])
    _, grads, loss = one_step(checkpoint, tmp_path, rollouts)
    reference = rl_module(checkpoint)  # the same starting weights, untouched by the step
    reference.configure_model()
    by_hand = reinforce_by_hand(reference.model, rollouts)
    by_hand.backward()
    assert loss == pytest.approx(by_hand.item(), rel=1e-5, abs=1e-7)
    for name, param in reference.model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for g in grads.values())


def test_advantages_are_centred_per_prompt_and_optionally_scaled_by_their_spread():
    rewards = [1.0, 0.0, 0.0, 0.0]
    assert advantages(rewards).tolist() == [0.75, -0.25, -0.25, -0.25]
    spread = torch.tensor(rewards).std().item() + 1e-4  # GRPO's z-score (unbiased std, TRL's epsilon)
    assert advantages(rewards, std_normalized=True).tolist() == pytest.approx(
        [a / spread for a in (0.75, -0.25, -0.25, -0.25)]
    )
    assert advantages([0.5] * 4, std_normalized=True).tolist() == [0.0] * 4


def test_forced_tokens_prompt_and_padding_get_no_gradient(checkpoint, tmp_path):
    tokenizer = rl_module(checkpoint).tokenizer
    rollouts = fixed_rollouts(tokenizer, [[1.0, 0.0, 0.5, 0.0]])
    module = rl_module(checkpoint)
    module.configure_model()
    RolloutRecorder(module, fixed=rollouts)
    readout_grads = []  # d loss / d (the readout's output) of every pass: (CHUNK, T, vocab)

    def keep_gradient(layer, inputs, output) -> None:
        output.register_hook(readout_grads.append)

    module.model.lm_head.register_forward_hook(keep_gradient)
    tiny_trainer(tmp_path, max_steps=1).fit(module, rl_data(examples_per_step=1))
    rollout = rollouts[0]
    for chunk, grad in enumerate(readout_grads):
        for row in range(CHUNK):
            sample = chunk * CHUNK + row
            sequence, mask = rollout.sequences[sample], rollout.masks[sample]
            # the position t predicts token t+1: a gradient exactly where that token was sampled
            has_gradient = grad[row].abs().sum(dim=-1) > 0
            expected = [t + 1 < len(sequence) and bool(mask[t + 1]) for t in range(grad.size(1))]
            assert has_gradient.tolist() == expected, (sample, mask)
    assert 0 in rollout.masks[0][rollout.prompt_len :], "the rollouts hold forced tokens"
    assert len({len(s) for s in rollout.sequences}) > 1, "the rollouts are padded"


def test_a_prompt_whose_samples_all_score_alike_contributes_nothing(checkpoint, tmp_path):
    """Its advantages are all 0, so its loss and every gradient it adds are exactly 0 (it still counts among the
    step's passes in the normalisation, as in nanochat)."""
    tokenizer = rl_module(checkpoint).tokenizer
    alike = fixed_rollouts(tokenizer, [[1.0] * NUM_SAMPLES])
    _, grads, loss = one_step(checkpoint, tmp_path, alike)
    assert loss == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads.values())


# ---- a real run: sampling, ranks, resume ------------------------------------------------------------------------


def test_rl_starts_from_the_checkpoint_at_a_twentieth_of_its_learning_rates(checkpoint, tmp_path):
    module, data = rl_module(checkpoint, eval_every=2), rl_data()
    recorder, lr_fractions = RolloutRecorder(module), []
    on_step = lambda trainer, module, optimizer: lr_fractions.append(  # noqa: E731
        [group["lr"] / group["initial_lr"] for group in optimizer.param_groups]
    )
    record_lr = type("LRs", (L.Callback,), {"on_before_optimizer_step": lambda self, *args: on_step(*args)})
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[record_lr()])
    trainer.fit(module, data)
    assert module.hparams.device_batch_size == CHUNK and trainer.global_step == 3
    assert [(step, index) for step, index, *_ in recorder.seen] == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]
    assert all(len(sequences) == NUM_SAMPLES for *_, sequences, _ in recorder.seen)
    # the LR: 0.05 x the base's, linearly to 0 over the run (here 3 steps: x 1, 2/3, 1/3), every group alike
    assert module.plan.lr_frac == 0.05
    assert lr_fractions == [pytest.approx([fraction] * len(lr_fractions[0])) for fraction in (1, 2 / 3, 1 / 3)]
    # pass@1..2 on the held-out problems at step 0, 2 and after the last step
    assert set(module.last_eval) == {"eval/pass@1", "eval/pass@2"}
    assert 0.0 <= module.last_eval["eval/pass@1"] <= module.last_eval["eval/pass@2"] <= 1.0


def run_steps(checkpoint: str, out: str, devices: int, steps: int, resume: str | None = None) -> None:
    """`steps` RL steps of 2 prompts (on `devices` CPU processes: 1 prompt per rank with 2), with pass@k every 2
    steps and a checkpoint every 2 steps; each rank saves its rollouts, gradients and final weights."""
    module, data = rl_module(Path(checkpoint), eval_every=2), rl_data()
    recorder, grads = RolloutRecorder(module), GradientRecorder()
    save = ModelCheckpoint(Path(out + ".ckpt"), "{step}", every_n_train_steps=2, save_top_k=-1)
    strategy = "ddp" if devices > 1 else "auto"
    callbacks = [grads, save]
    trainer = tiny_trainer(
        Path(out + ".root"),
        devices=devices,
        strategy=strategy,
        max_steps=steps,
        callbacks=callbacks,
        enable_checkpointing=True,
    )
    evaluations, evaluate = [], module.evaluate
    module.evaluate = lambda: evaluations.append((module.global_step, evaluate()))
    trainer.fit(module, data, ckpt_path=resume)
    result = {
        "rollouts": recorder.seen,
        "grads": grads.grads,
        "params": model_parameters(module),
        "evaluations": evaluations,
    }
    torch.save(result, f"{out}.{trainer.global_rank}.pt")


DDP_SCRIPT = """
import sys

import torch

from tests.test_rl_stage import run_steps

torch.set_num_threads(1)
run_steps(sys.argv[1], sys.argv[2], devices=2, steps=2)
"""


def test_two_gloo_processes_equal_one(checkpoint, tmp_path):
    """Each of two ranks takes one of a step's two prompts and draws the very samples one process draws for it;
    the ranks' gradients, synced once per step, equal the single process's."""
    run_ddp_script(DDP_SCRIPT, [str(checkpoint), str(tmp_path / "ddp")], tmp_path, timeout=300)
    run_steps(str(checkpoint), str(tmp_path / "single"), devices=1, steps=2)
    single = torch.load(tmp_path / "single.0.pt")
    ranks = [torch.load(tmp_path / f"ddp.{rank}.pt") for rank in (0, 1)]
    # the first step's samples: problem 0 on rank 0, problem 1 on rank 1, exactly as the single process drew them
    assert [ranks[0]["rollouts"][0], ranks[1]["rollouts"][0]] == single["rollouts"][:2]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], value), name
    scale = max(g.abs().max().item() for g in single["grads"][0].values())
    assert scale > 0
    for name, grad in single["grads"][0].items():
        torch.testing.assert_close(ranks[0]["grads"][0][name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)
    # pass@k summed over the ranks (problems 0, 2, 4 on rank 0; 1, 3, 5 on rank 1): before any update, exactly the
    # single process's figures; every rank logs the same
    assert ranks[0]["evaluations"] == ranks[1]["evaluations"]
    assert ranks[0]["evaluations"][0] == single["evaluations"][0] and single["evaluations"][0][0] == 0


def test_resume_equals_an_uninterrupted_run(checkpoint, tmp_path):
    run_steps(str(checkpoint), str(tmp_path / "straight"), devices=1, steps=4)
    run_steps(
        str(checkpoint),
        str(tmp_path / "resumed"),
        devices=1,
        steps=4,
        resume=str(tmp_path / "straight.ckpt" / "step=2.ckpt"),
    )
    straight, resumed = torch.load(tmp_path / "straight.0.pt"), torch.load(tmp_path / "resumed.0.pt")
    # the same prompts and the same samples at steps 2 and 3, the same weights and held-out figures at the end
    assert resumed["rollouts"] == straight["rollouts"][4:]
    assert [step for step, *_ in resumed["rollouts"]] == [2, 2, 3, 3]
    for name, value in straight["params"].items():
        assert torch.equal(value, resumed["params"][name]), name
    assert resumed["evaluations"] == straight["evaluations"][-2:]  # at step 2 (start) and after step 4
    # resuming with other prompts per step would not be the same run
    with pytest.raises(Exception, match="cannot resume RL exactly"):
        tiny_trainer(tmp_path, max_steps=4).fit(
            rl_module(checkpoint), rl_data(4), ckpt_path=tmp_path / "straight.ckpt" / "step=2.ckpt"
        )
