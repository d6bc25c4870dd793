"""nanochat's own checkpoint layout, read and written, so its models and ours go both ways.

nanochat keeps everything under one base directory (`$NANOCHAT_BASE_DIR`, default ~/.cache/nanochat;
checkpoint_manager.py@92d63d4, tok_train.py):

    tokenizer/tokenizer.pkl                       the pickled tiktoken.Encoding (name, pattern, ranks, specials)
    tokenizer/token_bytes.pt                      int32 tensor: bytes per token id, 0 for the special tokens
    {base,mid,chatsft,chatrl}_checkpoints/d20/model_000650.pt   the model's state dict (torch.save)
    {base,mid,chatsft,chatrl}_checkpoints/d20/meta_000650.json  {"step", "model_config": GPTConfig kwargs, ...}

Uploads on the Hugging Face hub (karpathy/nanochat-d32, -d34) hold the same four files side by side in one
folder. Either form is accepted here: a checkpoint folder, one `model_<step>.pt` in it, or a base directory
holding exactly one checkpoint folder. The tokenizer is looked for beside the model, then in the base
directory's tokenizer/.

nanochat's two architectures are ours with the 2026 switches all off (October 2025, gpt.py@dfc8833) or all on
(HEAD, gpt.py@92d63d4); parameter names are the same (model/gpt.py). Which one a checkpoint is, is read from its
weights (value embeddings, residual scalars, smear, backout each have their own tensors) and its meta (HEAD
added `window_pattern` to the config). RoPE base and the q·k scale leave no trace in either: a meta with a
window pattern is taken as HEAD's (100,000 and 1.2), one without as October's (10,000 and 1.0). A checkpoint
written here also records our full model config, which wins.

The tokenizer pickle is read without running pickled code: an unpickler that admits only what that file holds
(tiktoken's Encoding class, rebuilt as a plain record of its state, and plain containers).
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from nanochat_pl.common import UserError, atomic_path, atomic_write_text
from nanochat_pl.model.gpt import OCT_2025, GPTConfig

MODEL_FILE = re.compile(r"model_(\d+)\.pt")
TOKENIZER_PICKLE = "tokenizer.pkl"
TOKEN_BYTES = "token_bytes.pt"
# our stage -> the folder nanochat keeps that stage's checkpoints in (checkpoint_manager.py load_model)
STAGE_FOLDERS = {
    "base": "base_checkpoints",
    "mid": "mid_checkpoints",
    "sft": "chatsft_checkpoints",
    "rl": "chatrl_checkpoints",
}
# nanochat's GPTConfig fields: October's, and HEAD's which adds the window pattern (gpt.py@dfc8833, @92d63d4)
OCT_CONFIG_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
HEAD_CONFIG_FIELDS = (*OCT_CONFIG_FIELDS, "window_pattern")
# HEAD: all 2026 parts on, the short window derived from sequence_len, the vocabulary padded to 64 (gpt.py@92d63d4)
HEAD_2026 = dict(rope_base=100_000.0, qk_scale=1.2, value_embeds=True, residual_scalars=True, smear=True, backout=True)
HEAD_PAD_VOCAB_TO = 64
# where our own record of the model rides along in a meta file nanochat writes and reads (it ignores other keys)
OUR_META_KEY = "nanochat_pl"


# ---- finding the files ---------------------------------------------------------------------------------------


def is_nanochat_checkpoint(path: str | Path) -> bool:
    """A folder (nanochat keeps checkpoints in folders) or a `model_<step>.pt` file: nanochat's layout. Our own
    checkpoints are single `.ckpt` files."""
    path = Path(path)
    return path.is_dir() or bool(MODEL_FILE.fullmatch(path.name))


def find_model_file(path: str | Path) -> Path:
    """The `model_<step>.pt` that `path` names: the file itself, the latest step in a checkpoint folder, or the
    latest step of the one checkpoint folder under a base directory."""
    path = Path(path).expanduser()
    if path.is_file():
        if not MODEL_FILE.fullmatch(path.name):
            raise UserError(f"{path} is not a nanochat model file (model_<step>.pt)")
        return path
    if not path.is_dir():
        raise UserError(f"no checkpoint at {path}")
    steps = _model_files(path)
    if not steps:
        folders = sorted({p.parent for p in path.glob("*_checkpoints/*/model_*.pt") if MODEL_FILE.fullmatch(p.name)})
        if len(folders) != 1:
            found = f"several: {', '.join(str(f.relative_to(path)) for f in folders)}" if folders else "none"
            raise UserError(
                f"{path} has no nanochat model file (model_<step>.pt); checkpoint folders under it: {found}"
            )
        steps = _model_files(folders[0])
    return steps[max(steps)]


def _model_files(folder: Path) -> dict[int, Path]:
    files = (p for p in folder.iterdir() if p.is_file())
    return {int(m.group(1)): p for p in files if (m := MODEL_FILE.fullmatch(p.name))}


def find_tokenizer_pickle(model_file: Path) -> Path | None:
    """nanochat's tokenizer for a model file: beside it (hub uploads), or in the base directory's tokenizer/
    (`<base>/chatsft_checkpoints/d32/model_*.pt` -> `<base>/tokenizer/tokenizer.pkl`)."""
    folder = model_file.parent
    for candidate in (folder / TOKENIZER_PICKLE, folder.parent.parent / "tokenizer" / TOKENIZER_PICKLE):
        if candidate.is_file():
            return candidate
    return None


# ---- reading -------------------------------------------------------------------------------------------------


def read_model(path: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor], dict[str, Any], Path]:
    """(our GPTConfig, fp32 state dict in our names, the meta dict, the model file) of a nanochat checkpoint."""
    model_file = find_model_file(path)
    step = MODEL_FILE.fullmatch(model_file.name).group(1)
    meta_file = model_file.with_name(f"meta_{step}.json")
    if not meta_file.is_file():
        raise UserError(f"{model_file} has no {meta_file.name} beside it: nanochat keeps the model's shape there")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        model_config = dict(meta["model_config"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{meta_file} is not a nanochat meta file (JSON with a model_config): {error}") from error
    try:  # the weights-only unpickler: tensors and plain containers, no code from the file
        state = torch.load(model_file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign files raise many kinds
        raise UserError(f"cannot read {model_file}: {str(error).splitlines()[0]}") from error
    if not isinstance(state, dict):
        raise UserError(f"{model_file} does not hold a state dict")
    # torch.compile prefixes every key with `_orig_mod.`; nanochat stores embeddings in bf16 on CUDA
    state = {k.removeprefix("_orig_mod."): v.float() if v.is_floating_point() else v for k, v in state.items()}
    config = _config_from(model_config, meta, state, meta_file)
    return config, _pad_vocab(state, config), meta, model_file


def _pad_vocab(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """October's embedding and lm_head have exactly vocab_size rows; a config that pads them (ours, recorded in the
    meta) gets zero rows added, which no token reads and whose logits are cut off (model/gpt.py)."""
    for name in ("transformer.wte.weight", "lm_head.weight"):
        rows = state[name].size(0) if name in state else config.padded_vocab_size
        if rows < config.padded_vocab_size:
            state[name] = torch.cat(
                [state[name], state[name].new_zeros(config.padded_vocab_size - rows, config.n_embd)]
            )
    return state


def _config_from(model_config: dict[str, Any], meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path):
    ours = meta.get(OUR_META_KEY, {}).get("gpt_config")
    if ours is not None:  # written here: the exact config
        return GPTConfig(**ours)
    missing = [f for f in OCT_CONFIG_FIELDS if f not in model_config]
    if missing or "transformer.wte.weight" not in state:
        raise UserError(f"{where}: not a nanochat GPT (model_config lacks {missing or 'nothing'}; weights: wte?)")
    fields = {name: model_config[name] for name in OCT_CONFIG_FIELDS}
    head_era = "window_pattern" in model_config
    rows = state["transformer.wte.weight"].size(0)
    vocab = fields["vocab_size"]
    if rows != vocab and rows != -(-vocab // HEAD_PAD_VOCAB_TO) * HEAD_PAD_VOCAB_TO:
        raise UserError(f"{where}: the embedding has {rows} rows for a vocabulary of {vocab}")
    fields.update(
        window_pattern=model_config.get("window_pattern", "L"),
        rope_base=HEAD_2026["rope_base"] if head_era else OCT_2025["rope_base"],
        qk_scale=HEAD_2026["qk_scale"] if head_era else OCT_2025["qk_scale"],
        value_embeds=any(k.startswith("value_embeds.") for k in state),
        residual_scalars="resid_lambdas" in state,
        smear="smear_gate.weight" in state,
        backout="backout_lambda" in state,
        pad_vocab_to=HEAD_PAD_VOCAB_TO if rows != vocab or head_era else 1,
    )
    try:
        return GPTConfig(**fields)
    except UserError as error:
        raise UserError(f"{where}: {error}") from error


class _PickledEncoding:
    """What tiktoken.Encoding's pickle holds, kept as data: pickle calls __setstate__ with its state (a dict of
    name, pat_str, mergeable_ranks, special_tokens), and nothing of tiktoken runs."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _TokenizerUnpickler(pickle.Unpickler):
    # everything a pickled tiktoken.Encoding refers to: the class (protocol 2+ builds it with NEWOBJ), and for
    # protocols 0 and 1 copyreg's reconstructor and `object`
    ADMITTED = {
        ("tiktoken.core", "Encoding"): _PickledEncoding,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("builtins", "object"): object,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a tokenizer pickle holds only an Encoding"
            ) from None


def read_tokenizer_pickle(path: str | Path) -> tuple[str, dict[bytes, int], dict[str, int]]:
    """(split pattern, mergeable ranks, special tokens) of nanochat's tokenizer.pkl, without running its code."""
    path = Path(path)
    try:
        encoding = _TokenizerUnpickler(io.BytesIO(path.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise UserError(f"cannot read nanochat tokenizer {path}: {error}") from error
    state = getattr(encoding, "state", None)
    if not isinstance(encoding, _PickledEncoding) or not isinstance(state, dict):
        raise UserError(f"{path} does not hold a pickled tiktoken Encoding with its merge table")
    pattern, ranks, specials = state.get("pat_str"), state.get("mergeable_ranks"), state.get("special_tokens")
    if not isinstance(pattern, str) or not isinstance(ranks, dict) or not isinstance(specials, dict):
        raise UserError(f"{path}: the Encoding lacks its pattern, merge table or special tokens")
    if not all(isinstance(k, bytes) and type(v) is int for k, v in ranks.items()):
        raise UserError(f"{path}: the merge table must map bytes to int ranks")
    if not all(isinstance(k, str) and type(v) is int for k, v in specials.items()):
        raise UserError(f"{path}: the special tokens must map names to int ids")
    return pattern, ranks, specials


# ---- writing -------------------------------------------------------------------------------------------------


def nanochat_architecture(config: GPTConfig) -> str:
    """ "oct" or "head": which of nanochat's two models `config` is; UserError if neither (nanochat could not
    build it). nanochat derives the short window from sequence_len and pads the vocabulary (HEAD) to 64."""
    switches = ("value_embeds", "residual_scalars", "smear", "backout", "rope_base", "qk_scale")
    ours = {name: getattr(config, name) for name in switches}
    if ours == {name: OCT_2025[name] for name in switches} and set(config.window_pattern.upper()) == {"L"}:
        return "oct"
    derived_windows = dataclasses.replace(config, short_window=None).layer_windows() == config.layer_windows()
    head = ours == {name: HEAD_2026[name] for name in switches} and config.pad_vocab_to == HEAD_PAD_VOCAB_TO
    if head and derived_windows:
        return "head"
    differ = ", ".join(f"{k}={v!r}" for k, v in ours.items())
    raise UserError(
        f"nanochat has no architecture for this model ({differ}, window_pattern={config.window_pattern!r}, "
        f"short_window={config.short_window}, pad_vocab_to={config.pad_vocab_to}): its October model has none of "
        "the 2026 parts, its HEAD model all of them with RoPE base 100,000, q·k scale 1.2 and the derived window"
    )


def write_checkpoint(
    output: str | Path,
    state: dict[str, torch.Tensor],
    config: GPTConfig,
    tokenizer: Any,
    stage: str,
    step: int,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write a model (our state dict and config) and its tokenizer as nanochat's base directory `output`:
    tokenizer/{tokenizer.pkl, token_bytes.pt} and <stage folder>/d<depth>/{model,meta}_<step>.pt|json.
    Returns the checkpoint folder. `NANOCHAT_BASE_DIR=output` then lets nanochat's scripts load it."""
    architecture = nanochat_architecture(config)
    fields = HEAD_CONFIG_FIELDS if architecture == "head" else OCT_CONFIG_FIELDS
    model_config = {name: getattr(config, name) for name in fields}
    if architecture == "head":
        model_config["window_pattern"] = config.window_pattern.upper()
    if architecture == "oct":  # October's embedding and lm_head have exactly vocab_size rows
        vocab = config.vocab_size
        state = {k: v[:vocab] if k in ("transformer.wte.weight", "lm_head.weight") else v for k, v in state.items()}
    output = Path(output)
    folder = output / STAGE_FOLDERS.get(stage, f"{stage}_checkpoints") / f"d{config.n_layer}"
    meta = {"step": step, "model_config": model_config, "max_seq_len": config.sequence_len, **(extra_meta or {})}
    meta[OUR_META_KEY] = {"gpt_config": dataclasses.asdict(config), "stage": stage}
    with atomic_path(folder / f"model_{step:06d}.pt") as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    atomic_write_text(folder / f"meta_{step:06d}.json", json.dumps(meta, indent=2) + "\n")
    write_tokenizer(output / "tokenizer", tokenizer)
    return folder


def write_tokenizer(folder: Path, tokenizer: Any) -> None:
    """nanochat's tokenizer files: the tiktoken.Encoding pickled as nanochat's RustBPETokenizer.save does (its
    name there is "rustbpe"), and the bytes of every token id."""
    import tiktoken

    encoding = tiktoken.Encoding(
        name="rustbpe",
        pat_str=tokenizer.pattern,
        mergeable_ranks=tokenizer.mergeable_ranks,
        special_tokens=tokenizer.special_tokens,
    )
    with atomic_path(folder / TOKENIZER_PICKLE) as tmp:
        tmp.write_bytes(pickle.dumps(encoding))
    with atomic_path(folder / TOKEN_BYTES) as tmp:
        torch.save(tokenizer.token_bytes(), tmp)
