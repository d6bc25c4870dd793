"""The compute dtype: forced; for evaluations fixed per device (fp32 on a CPU); for chat and serve chosen on a CPU
by timing the model's kind of matmul in bf16 and in fp32, said at start. The peak FLOP/s MFU divides by."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from nanochat_pl import precision
from nanochat_pl.checkpoint import load_model
from nanochat_pl.cli import main
from nanochat_pl.engine import Engine, load_engine
from nanochat_pl.precision import choose_precision, eval_precision, measured_cpu_seconds, peak_flops
from nanochat_pl.stages.callbacks import TokenThroughputMonitor
from nanochat_pl.stages.precision import NanochatBf16
from tests.fixtures_chat import make_checkpoint

CPU = torch.device("cpu")


def test_a_forced_precision_is_used_as_given():
    assert choose_precision(CPU, 64, "bf16") == ("bf16", "asked for") and eval_precision(CPU, "bf16") == "bf16"
    assert choose_precision(CPU, 64, "fp32") == ("fp32", "asked for")


def test_evaluations_run_in_a_fixed_precision_per_device_never_a_measured_one(monkeypatch):
    monkeypatch.setattr(precision, "measured_cpu_seconds", lambda width: pytest.fail("an evaluation timed matmuls"))
    assert eval_precision(CPU) == "fp32"
    for bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert eval_precision(torch.device("cuda", 0)) == expected
        assert choose_precision(torch.device("cuda", 0), 64) == (expected, "the default on cuda")  # chat, serve


@pytest.mark.parametrize("command", [["chat"], ["serve"], ["eval", "core"], ["eval", "chat"], ["bench", "eval"]])
def test_an_unknown_precision_is_refused_on_the_command_line(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--checkpoint", "x.pt", "--precision", "fp16"])
    assert "fp16" in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "expected"), [((2e-3, 1e-3), "bf16"), ((1e-3, 2e-3), "fp32")])
def test_auto_on_a_cpu_takes_the_faster_measured_dtype(seconds, expected, monkeypatch):
    monkeypatch.setattr(precision, "measured_cpu_seconds", lambda width: seconds)
    timings = f"bf16 {seconds[1] * 1e3:.2f} ms vs fp32 {seconds[0] * 1e3:.2f} ms"
    assert choose_precision(CPU, 256) == (expected, f"faster on this CPU at width 256: {timings}")


def test_the_measurement_runs_here_once_per_width():
    measured_cpu_seconds.cache_clear()
    fp32, bf16 = measured_cpu_seconds(64)
    assert fp32 > 0 and bf16 > 0
    assert measured_cpu_seconds(64) == (fp32, bf16)  # cached: not measured again
    assert measured_cpu_seconds.cache_info().hits == 1
    assert choose_precision(CPU, 64)[0] == ("bf16" if bf16 < fp32 else "fp32")


def test_chat_runs_in_the_measured_choice_and_says_it_an_engine_in_the_fixed_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "measured_cpu_seconds", lambda width: (2e-3, 1e-3))  # bf16 measured faster
    checkpoint = make_checkpoint(tmp_path)
    model, tokenizer, _ = load_model(checkpoint)
    assert Engine(model, tokenizer).compute_dtype == torch.float32  # over fp32 weights: the evaluations' fixed dtype
    assert Engine(model, tokenizer, compute_dtype=torch.bfloat16).compute_dtype == torch.bfloat16

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for forced, said in (
            ("auto", "engine: cpu, precision bf16 (faster on this CPU at width 128: bf16 1.00 ms vs fp32 2.00 ms)\n"),
            ("fp32", "engine: cpu, precision fp32 (asked for)\n"),
        ):
            main(["chat", "--checkpoint", str(checkpoint), "-p", "hi", "--max_tokens", "2", "--precision", forced])
            assert said in capsys.readouterr().err
        # an engine of a loaded checkpoint holds its weights in the compute dtype: nothing to cast
        for asked, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            engine, _ = load_engine(str(checkpoint), CPU, precision=asked)
            assert {p.dtype for p in engine.model.parameters()} == {dtype} and not engine.casts_weights
    finally:
        torch.set_num_threads(threads)


CARDS = [
    ("NVIDIA H100 80GB HBM3", 989.4e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989.4e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),  # Lightning's table
]


@pytest.mark.parametrize(("name", "peak"), CARDS)
def test_mfu_divides_by_the_cards_dense_bf16_peak(name, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda", 0), torch.bfloat16) == peak
    assert peak_flops(CPU, torch.bfloat16) is None


def test_the_logged_mfu_of_a_nanochat_bf16_run_takes_the_bf16_peak(monkeypatch):
    """Lightning reads NanochatBf16 (a plain Precision plugin) as fp32 and would divide by the fp32 peak."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    trainer = SimpleNamespace(
        precision="bf16-mixed",
        precision_plugin=NanochatBf16(),
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
        enable_validation=True,
        world_size=8,
        state=SimpleNamespace(stage=RunningStage.TRAINING),
    )
    monitor = TokenThroughputMonitor()
    monitor.setup(trainer, None, TrainerFn.FITTING)
    assert monitor.available_flops == 989.4e12
    assert {t.available_flops for t in monitor._throughputs.values()} == {989.4e12}
