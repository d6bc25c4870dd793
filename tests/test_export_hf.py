"""The Hugging Face export against our own model and tokenizer: logits, KV-cached greedy generation, the tokenizer
and the chat template, for both targets (transformers' NanoChatForCausalLM and our shipped remote code).

The remote-code export is loaded in a fresh interpreter where `nanochat_pl` cannot be imported, as on a machine
that only has torch and transformers, with transformers' module cache in the test's directory."""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat_pl.cli import main
from nanochat_pl.common import UserError
from nanochat_pl.export import hf
from nanochat_pl.export.hf import export_hf, native_blockers
from nanochat_pl.model.gpt import GPT, OCT_2025, GPTConfig
from nanochat_pl.tokenizer import SPECIAL_TOKENS, Tokenizer
from tests.fixtures_chat import noisy_gpt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

transformers = pytest.importorskip("transformers", minversion="5.24")
safetensors_torch = pytest.importorskip("safetensors.torch")

DOCS = [module.__doc__ for module in (json, csv, argparse, heapq)]  # real text, always installed
T = 60  # tokens per row: several 8-token windows, within the 64-token context
WINDOW = 8
MAX_NEW_TOKENS = 30


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_from_iterator(DOCS * 4, vocab_size=500)  # padded to 512 in the model


@pytest.fixture(scope="module")
def batch(tokenizer) -> torch.Tensor:
    """(4, T) token ids of the docstrings, each starting with <|bos|> as nanochat's documents do."""
    rows = [tokenizer.encode(doc, prepend="<|bos|>")[:T] for doc in DOCS]
    assert all(len(row) == T for row in rows)
    return torch.tensor(rows)


def random_gpt(tokenizer: Tokenizer, **overrides) -> GPT:
    """A 4-layer GQA model (2 query heads, 1 kv head) whose every weight matters: nanochat's init zeroes both
    c_proj and sets the scalars to constants, so noise goes on top."""
    config = GPTConfig(
        sequence_len=64, vocab_size=tokenizer.vocab_size, n_layer=4, n_head=2, n_kv_head=1, n_embd=64, **overrides
    )
    return noisy_gpt(config)


@torch.no_grad()
def greedy(model: GPT, prompt: list[int], stop: set[int]) -> list[int]:
    """Our reference decoding: full forward passes over the growing sequence, argmax, until a stop token."""
    ids = list(prompt)
    for _ in range(MAX_NEW_TOKENS):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        if ids[-1] in stop:
            break
    return ids[len(prompt) :]


def stop_ids(tokenizer: Tokenizer) -> set[int]:
    return {tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id}


@pytest.fixture(scope="module")
def native(tokenizer, tmp_path_factory) -> tuple[GPT, Path]:
    model = random_gpt(tokenizer, **OCT_2025)
    return model, export_hf(model, tokenizer, tmp_path_factory.mktemp("native") / "export")


@pytest.fixture(scope="module")
def remote(tokenizer, tmp_path_factory) -> tuple[GPT, Path]:
    """The 2026 recipe: sliding windows of 8 (SSSL), value embeddings, residual scalars, smear, backout,
    qk_scale 1.2, rope base 100k."""
    model = random_gpt(tokenizer, short_window=WINDOW)
    return model, export_hf(model, tokenizer, tmp_path_factory.mktemp("remote") / "export")


# ----------------------------------------------------------------------------------------------------------
# native: transformers' own NanoChatForCausalLM


def test_native_export_is_transformers_nanochat(native, tokenizer):
    model, directory = native
    files = {path.name for path in directory.iterdir()}
    assert files == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "nanochat" and config["architectures"] == ["NanoChatForCausalLM"]
    assert config["rms_norm_eps"] == torch.finfo(torch.float32).eps
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert (config["intermediate_size"], config["max_position_embeddings"]) == (256, 64)
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert config["eos_token_id"] == [tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id]
    weights = safetensors_torch.load_file(directory / "model.safetensors")
    assert len(weights) == 2 + 6 * model.config.n_layer  # no norm weights: nanochat's RMSNorm has none
    assert model.config.padded_vocab_size == 512  # the export cuts the 12 padding rows
    assert weights["model.embed_tokens.weight"].shape == weights["lm_head.weight"].shape == (500, 64)


def test_native_logits_and_cached_generation_match(native, tokenizer, batch):
    model, directory = native
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert type(hf_model).__name__ == "NanoChatForCausalLM"
    with torch.no_grad():
        assert (hf_model(batch).logits - model(batch)).abs().max() < 1e-5
    prompt = batch[:1, :20]
    generated = hf_model.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, use_cache=True)
    assert generated[0, 20:].tolist() == greedy(model, prompt[0].tolist(), stop_ids(tokenizer))


def test_bfloat16_export_stores_bfloat16(tokenizer, tmp_path):
    (tmp_path / "bf16").mkdir()  # an empty directory is replaced by the export
    directory = export_hf(random_gpt(tokenizer, **OCT_2025), tokenizer, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((directory / "config.json").read_text())["dtype"] == "bfloat16"
    weights = safetensors_torch.load_file(directory / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------
# remote code: our GPT, loaded by transformers without nanochat_pl

REMOTE_SCRIPT = """
import sys
sys.modules["nanochat_pl"] = None  # the shipped code must not need this project
import torch
from transformers import AutoModelForCausalLM

directory, inputs, outputs = sys.argv[1:]
batch = torch.load(inputs)
model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32)
lengths = []  # tokens per forward call: with the cache, the prompt and then one token at a time
record = lambda module, args, kwargs: lengths.append((args[0] if args else kwargs["input_ids"]).shape[1])
model.register_forward_pre_hook(record, with_kwargs=True)
results = {"class": type(model).__name__}
with torch.no_grad():
    results["logits"] = model(batch).logits
    results["loss"] = model(batch, labels=batch).loss
    padded = batch[:2].clone()
    mask = torch.ones_like(padded)
    padded[1, 40:], mask[1, 40:] = 0, 0  # right padding, as lm-eval pads its loglikelihood batches
    results["right_padded"] = model(padded, attention_mask=mask).logits
    try:
        model(padded, attention_mask=mask.flip(1))
    except ValueError as e:
        results["left_padding_error"] = str(e)
generate = dict(max_new_tokens=%(max_new_tokens)d, do_sample=False)
lengths.clear()
results["greedy"] = model.generate(batch[:2, :20], use_cache=True, **generate)
results["lengths"] = list(lengths)
results["greedy_no_cache"] = model.generate(batch[:2, :20], use_cache=False, **generate)
results["beam"] = model.generate(batch[:1, :20], num_beams=3, use_cache=True, **generate)
results["beam_no_cache"] = model.generate(batch[:1, :20], num_beams=3, use_cache=False, **generate)
torch.save(results, outputs)
"""


@pytest.fixture(scope="module")
def remote_results(remote, batch, tmp_path_factory) -> dict:
    _, directory = remote
    work = tmp_path_factory.mktemp("remote_run")
    torch.save(batch, work / "batch.pt")
    env = dict(os.environ, HF_MODULES_CACHE=str(work / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = REMOTE_SCRIPT % dict(max_new_tokens=MAX_NEW_TOKENS)
    args = [sys.executable, "-c", script, str(directory), str(work / "batch.pt"), str(work / "results.pt")]
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return torch.load(work / "results.pt")


def test_remote_export_ships_our_code(remote):
    model, directory = remote
    for name in ("gpt.py", "attention.py", "kv_cache.py", "configuration_nanochat_pl.py", "modeling_nanochat_pl.py"):
        assert "nanochat_pl." not in "".join(
            line for line in (directory / name).read_text().splitlines() if line.lstrip().startswith(("from", "import"))
        )
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "nanochat_pl" and config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_")
    assert config["short_window"] == WINDOW and config["smear"] is True
    weights = safetensors_torch.load_file(directory / "model.safetensors")
    assert weights.keys() == {f"model.{name}" for name in model.state_dict()}


def test_remote_logits_and_loss_match(remote, remote_results, batch):
    model, _ = remote
    assert remote_results["class"] == "NanochatPLForCausalLM"
    with torch.no_grad():
        ours = model(batch)
        our_loss = model(batch[:, :-1], targets=batch[:, 1:])
    assert (remote_results["logits"] - ours).abs().max() < 1e-5
    assert abs(remote_results["loss"] - our_loss) < 1e-5
    # right padding leaves the real tokens' logits alone; left padding is refused, not answered wrongly
    assert (remote_results["right_padded"][1, :40] - ours[1, :40]).abs().max() < 1e-5
    assert "left padding" in remote_results["left_padding_error"]


def test_remote_cached_generation_matches_ours(remote, remote_results, tokenizer, batch):
    model, _ = remote
    for row in range(2):
        ours = greedy(model, batch[row, :20].tolist(), stop_ids(tokenizer))
        assert remote_results["greedy"][row, 20 : 20 + len(ours)].tolist() == ours
    assert remote_results["lengths"][:3] == [20, 1, 1]  # the prompt once, then only the new token
    assert torch.equal(remote_results["greedy"], remote_results["greedy_no_cache"])
    assert torch.equal(remote_results["beam"], remote_results["beam_no_cache"])  # the cache follows the beams


# ----------------------------------------------------------------------------------------------------------
# the tokenizer and the chat template

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello.\nPlease."},
        {"role": "assistant", "content": "Hello!  "},
    ],
    [
        {"role": "user", "content": "What is 12*7?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute it. "},
                {"type": "python", "text": "12*7"},
                {"type": "python_output", "text": "84"},
                {"type": "text", "text": " It is 84."},
            ],
        },
        {"role": "user", "content": "And this?"},
        {"role": "assistant", "content": "No idea."},
    ],
]


@pytest.fixture(scope="module")
def hf_tokenizer(native):
    return transformers.AutoTokenizer.from_pretrained(native[1])


def test_tokenizer_encodes_like_ours(hf_tokenizer, tokenizer):
    assert {name: hf_tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS} == tokenizer.special_tokens
    assert hf_tokenizer.bos_token_id == tokenizer.bos_token_id
    assert hf_tokenizer.eos_token == hf_tokenizer.pad_token == "<|assistant_end|>"
    for doc in DOCS:
        ids = tokenizer.encode(doc)
        assert hf_tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"] == ids
        assert hf_tokenizer(doc, verbose=False)["input_ids"] == [tokenizer.bos_token_id, *ids]  # lm-eval's default
        assert hf_tokenizer.decode(ids) == doc


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["system", "tools"])
def test_chat_template_renders_our_ids_and_mask(hf_tokenizer, tokenizer, conversation):
    ids, mask = tokenizer.render_conversation(conversation)
    assert hf_tokenizer.apply_chat_template(conversation, return_dict=True)["input_ids"] == ids
    masked = hf_tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    assert masked["assistant_masks"] == mask
    prompt = hf_tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, return_dict=True)
    assert prompt["input_ids"] == tokenizer.render_for_completion(conversation)


def test_special_token_text_in_messages(hf_tokenizer, tokenizer):
    """Ours encodes message text as plain text; transformers turns special-token text in the rendered chat into
    special tokens unless asked not to (sanitize_control_tokens, transformers 5.24+, the dev extra's floor)."""
    conversation = [{"role": "user", "content": "what does <|bos|> mean?"}]
    ids = tokenizer.render_for_completion(conversation)
    prompt = dict(add_generation_prompt=True, return_dict=True)
    assert hf_tokenizer.apply_chat_template(conversation, **prompt)["input_ids"].count(tokenizer.bos_token_id) == 2
    assert hf_tokenizer.apply_chat_template(conversation, sanitize_control_tokens=True, **prompt)["input_ids"] == ids


def test_chat_template_refuses_what_render_conversation_refuses(hf_tokenizer):
    with pytest.raises(Exception, match="alternate"):
        hf_tokenizer.apply_chat_template([{"role": "assistant", "content": "hi"}])
    with pytest.raises(Exception, match="part"):
        hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}]
        )


# ----------------------------------------------------------------------------------------------------------
# refusals


def test_export_refusals(tokenizer, tmp_path, monkeypatch, capsys):
    head = random_gpt(tokenizer)
    assert native_blockers(head.config) == [
        "sliding windows (window_pattern 'SSSL')",
        "qk_scale 1.2",
        "value embeds",
        "residual scalars",
        "smear",
        "backout",
    ]
    with pytest.raises(UserError, match="cannot hold this model"):
        export_hf(head, tokenizer, tmp_path / "out", target="native")
    with pytest.raises(SystemExit):  # the command's options are checked where they enter
        main(["export", "hf", "--checkpoint", "unused.ckpt", "--output", str(tmp_path / "out"), "--dtype", "int8"])
    assert "dtype" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        export_hf(head, tokenizer, tmp_path / "full")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match='pip install "transformers>=5"'):
        export_hf(head, tokenizer, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["full"]


def test_a_failed_export_leaves_nothing(tokenizer, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "_write_remote", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_hf(random_gpt(tokenizer), tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_changed_model_imports_fail_the_export_loudly():
    for source in ("from nanochat_pl.common import home_dir\n", "from nanochat_pl.model.unshipped import x\n"):
        with pytest.raises(AssertionError, match="still imports nanochat_pl"):
            hf._rewrite_imports("import torch\n" + source)
