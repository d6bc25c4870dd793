"""A run repeats itself to the last digit: two identical CPU fits give identical losses, as nanochat's do.

What used to break it is torch.compile, not the fit: Inductor's CPU backward of an embedding adds each token's
gradient row into the table with atomic adds from several threads, so rows hit by more than one token sum in
whichever order the threads arrive (measured on the demo model, d4 with 2 threads: the wte gradient differs by
~2e-13 in about half of identical backward passes, and the losses of two 200-step runs by up to 0.014). With
`torch.use_deterministic_algorithms(True)`, which `trainer.deterministic: true` sets, Inductor leaves that
scatter to ATen's deterministic kernel (torch/_inductor/lowering.py, index_put_); the CPU configs set it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.stage_helpers import write_corpus

REPO = Path(__file__).resolve().parents[1]

FIT_SCRIPT = """
import json, sys
import lightning as L
from tests.stage_helpers import StepLosses, model_parameters, tiny_data, tiny_module, tiny_trainer

shards, tokenizer, root = sys.argv[1:4]
L.seed_everything(42)  # as `nanochat-pl fit` does with the configs' seed_everything
losses = StepLosses()
trainer = tiny_trainer(root, callbacks=[losses])
module = tiny_module(tokenizer, num_iterations=12, eval_every=6)
trainer.fit(module, datamodule=tiny_data(shards, tokenizer, tokenizer_threads=2))
weights = sum(p.double().abs().sum().item() for p in model_parameters(module).values())
print(json.dumps({"train": losses.train, "val_bpb": losses.val_bpb, "weights": weights}))
"""


def test_two_identical_fits_give_identical_losses(tmp_path):
    """Two processes at once, each on the machine's threads (2 on the build machine; tokenizer threads too)."""
    shards, tokenizer = write_corpus(tmp_path / "corpus")
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NANOCHAT_PL_HOME": str(tmp_path / "home")}
    env.pop("OMP_NUM_THREADS", None)
    runs = [
        subprocess.Popen(
            [sys.executable, str(script), str(shards), str(tokenizer), str(tmp_path / f"run{i}")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    assert len(first["train"]) == 12 and first["val_bpb"][-1][0] == 12
    assert first == second  # every loss, every bpb, the final weights: equal, not close


@pytest.fixture
def deterministic_algorithms_on_two_threads():
    """What `trainer.deterministic: true` sets, on 2 threads (other test modules drop the process to 1, and one
    thread never races); both restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def test_compiled_embedding_backward_repeats_itself_in_deterministic_mode(deterministic_algorithms_on_two_threads):
    """The mechanism the CPU configs rely on, checked on the installed torch. Without deterministic mode, 24 of 29
    repeats of this backward differed from the first on the 2-core build machine."""
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(300, 64, generator=gen))
    weights = torch.randn(8, 256, 64, generator=gen)
    tokens = torch.randint(0, 300, (8, 256), generator=gen)  # 2,048 tokens in 300 rows: ~7 hits per row
    loss = torch.compile(lambda tokens: (torch.nn.functional.embedding(tokens, table) * weights).sum())
    grads = []
    for _ in range(10):
        table.grad = None
        loss(tokens).backward()
        grads.append(table.grad.clone())
    assert all(torch.equal(grad, grads[0]) for grad in grads)
