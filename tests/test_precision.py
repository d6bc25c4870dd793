"""The compute dtype: forced, or chosen on a CPU by timing the model's kind of matmul in bf16 and in fp32; the
engine runs in the choice and says it at start."""

import pytest
import torch

from nanochat_pl import precision
from nanochat_pl.checkpoint import load_model
from nanochat_pl.cli import main
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine, load_engine
from nanochat_pl.precision import choose_precision, measured_cpu_seconds, model_width
from tests.fixtures_chat import make_checkpoint

CPU = torch.device("cpu")


def test_a_forced_precision_is_used_as_given():
    assert choose_precision(CPU, 64, "bf16").dtype == torch.bfloat16
    assert choose_precision(CPU, 64, "fp32") == precision.PrecisionChoice(torch.float32, "fp32 (asked for)")
    with pytest.raises(UserError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        choose_precision(CPU, 64, "fp16")


@pytest.mark.parametrize(("seconds", "expected"), [((2e-3, 1e-3), torch.bfloat16), ((1e-3, 2e-3), torch.float32)])
def test_auto_on_a_cpu_takes_the_faster_measured_dtype(seconds, expected, monkeypatch):
    monkeypatch.setattr(precision, "measured_cpu_seconds", lambda width: seconds)
    choice = choose_precision(CPU, 256)
    assert choice.dtype == expected
    winner = "bf16" if expected == torch.bfloat16 else "fp32"
    timings = f"bf16 {seconds[1] * 1e3:.2f} ms vs fp32 {seconds[0] * 1e3:.2f} ms"
    assert choice.reason == f"{winner} (measured on this CPU at width 256: {timings})"


def test_the_measurement_runs_here_once_per_width():
    measured_cpu_seconds.cache_clear()
    fp32, bf16 = measured_cpu_seconds(64)
    assert fp32 > 0 and bf16 > 0
    assert measured_cpu_seconds(64) == (fp32, bf16)  # cached: not measured again
    assert measured_cpu_seconds.cache_info().hits == 1
    assert choose_precision(CPU, 64).dtype == (torch.bfloat16 if bf16 < fp32 else torch.float32)


def test_the_engine_runs_in_the_choice_and_the_chat_command_says_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "measured_cpu_seconds", lambda width: (2e-3, 1e-3))  # bf16 measured faster
    checkpoint = make_checkpoint(tmp_path)
    model, tokenizer, _ = load_model(checkpoint)
    assert model_width(model) == model.config.n_embd
    engine = Engine(model, tokenizer)
    assert engine.compute_dtype == torch.bfloat16 and engine.precision.startswith("bf16 (measured")
    assert Engine(model, tokenizer, compute_dtype=torch.float32).compute_dtype == torch.float32

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for forced, said in (("auto", "engine: cpu, bf16 (measured"), ("fp32", "engine: cpu, fp32 (asked for)")):
            main(["chat", "--checkpoint", str(checkpoint), "-p", "hi", "--max_tokens", "2", "--precision", forced])
            assert said in capsys.readouterr().err
        # an engine of a loaded checkpoint holds its weights in the compute dtype: nothing to cast
        for asked, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            engine, _ = load_engine(str(checkpoint), CPU, precision=asked)
            assert {p.dtype for p in engine.model.parameters()} == {dtype} and not engine.casts_weights
    finally:
        torch.set_num_threads(threads)
