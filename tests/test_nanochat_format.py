"""nanochat's own checkpoint layout, both ways: ours -> nanochat -> ours is exact for both of nanochat's
architectures, and a directory written here the way nanochat writes one (checkpoint_manager.py@92d63d4: a
torch.compile'd state dict with bf16 embeddings, meta JSON in October's or HEAD's form, the pickled tiktoken
Encoding) loads, chats and starts a chat stage."""

from __future__ import annotations

import copyreg
import dataclasses
import json
import os
import pickle
from pathlib import Path

import lightning as L
import pytest
import tiktoken
import torch

from nanochat_pl.checkpoint import load_model, read_checkpoint
from nanochat_pl.cli import main
from nanochat_pl.common import UserError
from nanochat_pl.engine import Engine
from nanochat_pl.model.gpt import GPT, OCT_2025, GPTConfig
from nanochat_pl.nanochat_format import read_tokenizer_pickle
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer
from tests.fixtures_chat import TRAINING_TEXT, noisy_gpt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SEQUENCE_LEN = 64
STEP = 1234
# nanochat's GPTConfig fields in its meta files: October's, and HEAD's with the window pattern
OCT_FIELDS = ["sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd"]
HEAD_FIELDS = [*OCT_FIELDS, "window_pattern"]
# nanochat HEAD: RoPE base 100k, q.k scale 1.2, every 2026 part, windows derived from sequence_len
HEAD = dict(rope_base=100_000.0, qk_scale=1.2, value_embeds=True, residual_scalars=True, smear=True, backout=True)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=300)  # padded to 320 rows by default


def random_model(tokenizer: Tokenizer, architecture: str, **overrides) -> GPT:
    """A depth-2 GQA model of nanochat's October or HEAD architecture, every weight random and nonzero."""
    settings = OCT_2025 if architecture == "oct" else {**HEAD, "window_pattern": "SSSL"}
    config = GPTConfig(
        sequence_len=SEQUENCE_LEN,
        vocab_size=tokenizer.vocab_size,
        n_layer=2,
        n_head=2,
        n_kv_head=1,
        n_embd=64,
        **{**settings, **overrides},
    )
    return noisy_gpt(config)


def save_ours(path: Path, model: GPT, tokenizer: Tokenizer, stage: str = "sft", step: int = STEP) -> Path:
    """A checkpoint as the stages save one (stages/lm.py on_save_checkpoint): weights under `model.`, the model
    config, the tokenizer itself."""
    meta = {"stage": stage, "gpt_config": dataclasses.asdict(model.config), "tokenizer": tokenizer.to_state()}
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": step, "nanochat_pl": meta}, path)
    return path


def encoding(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """The tiktoken.Encoding nanochat's RustBPETokenizer holds and pickles (tokenizer.py@92d63d4)."""
    return tiktoken.Encoding(
        name="rustbpe",
        pat_str=tokenizer.pattern,
        mergeable_ranks=tokenizer.mergeable_ranks,
        special_tokens=tokenizer.special_tokens,
    )


def write_as_nanochat(base: Path, model: GPT, tokenizer: Tokenizer, meta_format: str) -> Path:
    """`base` laid out as nanochat leaves it after SFT, written with nanochat's own calls, not ours: the state
    dict of a torch.compile'd model (keys prefixed `_orig_mod.`) with the embeddings in bf16 as they are kept on
    CUDA, meta_<step>.json in October's form (no window pattern) or HEAD's, and tokenizer/ beside."""
    folder = base / "chatsft_checkpoints" / f"d{model.config.n_layer}"
    folder.mkdir(parents=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if name in ("transformer.wte.weight", "lm_head.weight") and meta_format == "oct":
            tensor = tensor[: model.config.vocab_size]  # October: exactly vocab_size rows
        if name.startswith(("transformer.wte", "value_embeds")):
            tensor = tensor.to(torch.bfloat16)
        state["_orig_mod." + name] = tensor.clone()
    torch.save(state, folder / f"model_{STEP:06d}.pt")
    fields = OCT_FIELDS if meta_format == "oct" else HEAD_FIELDS
    model_config = {name: getattr(model.config, name) for name in fields}
    meta = {"step": STEP, "val_bpb": 0.81, "model_config": model_config, "user_config": {"run": "d2"}}
    (folder / f"meta_{STEP:06d}.json").write_text(json.dumps(meta))
    (base / "tokenizer").mkdir()
    with open(base / "tokenizer" / "tokenizer.pkl", "wb") as f:
        pickle.dump(encoding(tokenizer), f)
    torch.save(tokenizer.token_bytes(), base / "tokenizer" / "token_bytes.pt")
    return folder


def as_stored_by_nanochat(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights after the round trip through bf16 that nanochat's storage makes."""
    return {
        k: v.to(torch.bfloat16).float() if k.startswith(("transformer.wte", "value_embeds")) else v
        for k, v in model.state_dict().items()
    }


@torch.no_grad()
def greedy(model: GPT, prompt: list[int], steps: int = 12) -> list[int]:
    """Reference decoding: a full forward pass per token, argmax."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


# ---- ours -> nanochat -> ours ---------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["oct", "head"])
def test_ours_to_nanochat_and_back_is_exact(architecture, tokenizer, tmp_path, capsys):
    model = random_model(tokenizer, architecture)
    ours = save_ours(tmp_path / "sft.ckpt", model, tokenizer)
    main(["export", "nanochat", "--checkpoint", str(ours), "--output", str(tmp_path / "nanochat")])
    folder = tmp_path / "nanochat" / "chatsft_checkpoints" / "d2"
    assert f"wrote {folder}" in capsys.readouterr().out

    # what nanochat reads: its config fields, its parameter names and shapes (October: exactly vocab_size rows)
    meta = json.loads((folder / f"meta_{STEP:06d}.json").read_text())
    assert meta["step"] == STEP
    assert list(meta["model_config"]) == (OCT_FIELDS if architecture == "oct" else HEAD_FIELDS)
    assert meta["model_config"]["n_kv_head"] == 1
    if architecture == "head":
        assert meta["model_config"]["window_pattern"] == "SSSL"
    stored = torch.load(folder / f"model_{STEP:06d}.pt", weights_only=True)
    assert stored.keys() == model.state_dict().keys()
    rows = tokenizer.vocab_size if architecture == "oct" else model.config.padded_vocab_size
    assert stored["transformer.wte.weight"].shape[0] == stored["lm_head.weight"].shape[0] == rows

    # nanochat's tokenizer: the pickle is a tiktoken Encoding that encodes as ours, with token_bytes beside it
    with open(tmp_path / "nanochat" / "tokenizer" / "tokenizer.pkl", "rb") as f:
        unpickled = pickle.load(f)  # as nanochat loads it (a trusted file: written by the test)
    text = "Hello world: 12 + 30 = 42. <|bos|> stays text"
    assert unpickled.encode_ordinary(text) == tokenizer.encode(text)
    assert unpickled._special_tokens == tokenizer.special_tokens
    token_bytes = torch.load(tmp_path / "nanochat" / "tokenizer" / "token_bytes.pt", weights_only=True)
    assert torch.equal(token_bytes, tokenizer.token_bytes())

    # and back: the same config, bit-exact weights (October's padding rows come back as zeros, which nothing
    # reads), the same tokenizer, stage and step
    for path in (tmp_path / "nanochat", folder, folder / f"model_{STEP:06d}.pt"):
        back, back_tokenizer, back_meta = load_model(path)
        assert back.config == model.config
        assert back_meta["stage"] == "sft" and read_checkpoint(path)["global_step"] == STEP
        assert back_tokenizer.to_state() == tokenizer.to_state()
        for name, tensor in model.state_dict().items():
            if name in ("transformer.wte.weight", "lm_head.weight"):
                assert torch.equal(back.state_dict()[name][: tokenizer.vocab_size], tensor[: tokenizer.vocab_size])
            else:
                assert torch.equal(back.state_dict()[name], tensor), name
        batch = torch.tensor([tokenizer.encode(text, prepend="<|bos|>")])
        assert torch.equal(back(batch), model(batch))

    # and back to ours again, through `export nanochat` from a nanochat folder: the same files
    main(["export", "nanochat", "--checkpoint", str(folder), "--output", str(tmp_path / "again")])
    again = tmp_path / "again" / "chatsft_checkpoints" / "d2"
    assert json.loads((again / f"meta_{STEP:06d}.json").read_text()) == meta
    restored = torch.load(again / f"model_{STEP:06d}.pt", weights_only=True)
    assert all(torch.equal(restored[k], v) for k, v in stored.items())


def test_an_architecture_nanochat_lacks_is_a_one_line_error(tokenizer, tmp_path, capsys):
    model = random_model(tokenizer, "oct", qk_scale=1.2)  # October's model with one 2026 part
    ours = save_ours(tmp_path / "mixed.ckpt", model, tokenizer)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "nanochat", "--checkpoint", str(ours), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nanochat has no architecture for this model" in errors[0]
    assert not (tmp_path / "out").exists()


# ---- nanochat's own directories -------------------------------------------------------------------------------


@pytest.mark.parametrize("meta_format", ["oct", "head"])
def test_a_nanochat_directory_loads_and_generates(meta_format, tokenizer, tmp_path):
    model = random_model(tokenizer, meta_format, **({"pad_vocab_to": 1} if meta_format == "oct" else {}))
    folder = write_as_nanochat(tmp_path / "base", model, tokenizer, meta_format)

    for path in (tmp_path / "base", folder, folder / f"model_{STEP:06d}.pt"):
        loaded, loaded_tokenizer, meta = load_model(path)
        # the architecture is read from the weights and the meta: October's switches all off, HEAD's all on with
        # its RoPE base and q.k scale; the short window derived from sequence_len as nanochat does
        assert loaded.config == model.config
        assert loaded.config.layer_windows() == ([None, None] if meta_format == "oct" else [128, None])
        assert meta["stage"] == "sft" and meta["recipe"] == ("oct" if meta_format == "oct" else "2026")
        assert loaded_tokenizer.to_state() == tokenizer.to_state()
        expected = as_stored_by_nanochat(model)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())

    # it generates: the engine's KV-cached greedy decoding equals full forward passes of the same weights
    reference = GPT(model.config)
    reference.load_state_dict(as_stored_by_nanochat(model))
    prompt = tokenizer.render_for_completion([{"role": "user", "content": "What is 2+2?"}])
    sequences, _ = Engine(loaded, loaded_tokenizer).generate_batch(prompt, max_tokens=12, temperature=0.0)
    assert sequences[0][len(prompt) :] == greedy(reference.eval(), prompt)[: len(sequences[0]) - len(prompt)]


def test_chat_takes_a_nanochat_folder(tokenizer, tmp_path, capsys):
    folder = write_as_nanochat(tmp_path / "base", random_model(tokenizer, "head"), tokenizer, "head")
    main(["chat", "--checkpoint", str(folder), "-p", "Hello!", "--max_tokens", "6", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith("Assistant: ") and out.endswith("\n")


def test_a_chat_stage_starts_from_a_nanochat_base_model(tokenizer, tmp_path):
    from nanochat_pl.data.chat_data import ChatDataModule
    from nanochat_pl.stages.chat_sft import ChatTraining
    from tests.stage_helpers import tiny_trainer
    from tests.test_chat_stage import Echo

    model = random_model(tokenizer, "head")
    folder = write_as_nanochat(tmp_path / "nanochat", model, tokenizer, "head")
    base_folder = folder.parent.parent / "base_checkpoints"
    folder.parent.rename(base_folder)  # a published base model's layout
    L.seed_everything(0)
    module = ChatTraining(
        init_from=str(base_folder / "d2"),
        total_batch_tokens=2 * SEQUENCE_LEN,  # nanochat's meta has no batch shape to inherit
        device_batch_size=2,
        eval_every=1000,
        load_optimizer=False,  # nanochat's model files hold no optimizer state
    )
    data = ChatDataModule(train=[Echo(16)], val=[Echo(8, seed=1)], val_tokens=2 * SEQUENCE_LEN)
    first = FirstWeights()
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[first])
    trainer.fit(module, data)
    assert module.inherited["stage"] == "base" and module.gpt_config == model.config
    assert module.tokenizer.to_state() == tokenizer.to_state() and data.sequence_len == SEQUENCE_LEN
    assert trainer.global_step == 2
    # the stage started from nanochat's weights, and trained them
    start = as_stored_by_nanochat(model)
    assert all(torch.equal(first.weights[k], v) for k, v in start.items())
    assert not torch.equal(module.model.state_dict()["lm_head.weight"], start["lm_head.weight"])


class FirstWeights(L.Callback):
    """The model's weights as the first training step finds them."""

    def on_train_start(self, trainer, module) -> None:
        self.weights = {k: v.clone() for k, v in module.model.state_dict().items()}


# ---- what is refused --------------------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call of os.system: what a hostile tokenizer.pkl would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_tokenizer_pickle_with_code_in_it_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "tokenizer.pkl"
    hostile.write_bytes(pickle.dumps(_Payload(f"touch {marker}")))
    with pytest.raises(UserError, match=r"refusing posix\.system: a tokenizer pickle holds only an Encoding"):
        read_tokenizer_pickle(hostile)
    assert not marker.exists()
    # the same code hidden inside an Encoding's state
    inside = tmp_path / "inside" / "tokenizer.pkl"
    inside.parent.mkdir()
    state = {"name": "x", "pat_str": "a", "mergeable_ranks": {b"a": 0}, "special_tokens": _Payload(f"touch {marker}")}
    inside.write_bytes(pickle.dumps(_StateCarrier(state)))
    with pytest.raises(UserError, match="refusing"):
        get_tokenizer(inside)
    assert not marker.exists()


class _StateCarrier:
    """Pickles as tiktoken's Encoding does (its class, then __setstate__ with a dict) with any state."""

    __class__ = tiktoken.Encoding  # what pickle writes as the class of the object

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (copyreg.__newobj__, (tiktoken.Encoding,), self.state)


def test_a_nanochat_folder_without_a_model_file_is_a_one_line_error(tokenizer, tmp_path, capsys):
    empty = tmp_path / "chatsft_checkpoints" / "d2"
    empty.mkdir(parents=True)
    for command in (["chat", "--checkpoint", str(empty), "-p", "hi"], ["eval", "chat", "--checkpoint", str(empty)]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: {empty} has no nanochat model file (model_<step>.pt); checkpoint folders under it: none"
        ]
    # a model file without its meta file
    torch.save({}, empty / "model_000001.pt")
    with pytest.raises(UserError, match="needs meta_000001.json beside it"):
        load_model(empty)
    # a model nobody's meta describes
    (empty / "meta_000001.json").write_text(json.dumps({"step": 1, "model_config": {"n_layer": 2}}))
    with pytest.raises(UserError, match="not a nanochat GPT"):
        load_model(empty)


def test_a_nanochat_model_without_its_tokenizer_needs_one_given(tokenizer, tmp_path):
    model = random_model(tokenizer, "head")
    folder = write_as_nanochat(tmp_path / "base", model, tokenizer, "head")
    (tmp_path / "base" / "tokenizer" / "tokenizer.pkl").rename(tmp_path / "elsewhere.pkl")
    with pytest.raises(UserError, match="has no tokenizer with it or beside it: give one with --tokenizer_dir"):
        load_model(folder)
    _, given, _ = load_model(folder, tokenizer_dir=tmp_path / "elsewhere.pkl")
    assert given.to_state() == tokenizer.to_state()
