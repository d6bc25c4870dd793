"""nanochat's own checkpoint layout, read and written, so its models and ours go both ways. Under nanochat's base
directory (`$NANOCHAT_BASE_DIR`; hub uploads hold the four files in one folder):

    tokenizer/tokenizer.pkl                       the pickled tiktoken.Encoding (name, pattern, ranks, specials)
    tokenizer/token_bytes.pt                      int32 tensor: bytes per token id, 0 for the special tokens
    {base,mid,chatsft,chatrl}_checkpoints/d20/model_000650.pt   the model's state dict (torch.save)
    {base,mid,chatsft,chatrl}_checkpoints/d20/meta_000650.json  {"step", "model_config": GPTConfig kwargs, ...}

nanochat's two architectures are ours with the 2026 switches all off (October 2025) or all on (HEAD), told apart by
the weights and by the meta's `window_pattern` (HEAD's); a checkpoint written here also records our full config,
which wins. The tokenizer pickle is read by an unpickler that admits only tiktoken's Encoding, kept as data.
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

import tiktoken
import torch

from nanochat_pl.common import UserError, atomic_path, atomic_write_text
from nanochat_pl.model.gpt import OCT_2025, GPTConfig

MODEL_FILE = re.compile(r"model_(\d+)\.pt")
TOKENIZER_PICKLE = "tokenizer.pkl"
# our stage -> the folder nanochat keeps that stage's checkpoints in (checkpoint_manager.py load_model)
STAGE_FOLDERS = dict(base="base_checkpoints", mid="mid_checkpoints", sft="chatsft_checkpoints", rl="chatrl_checkpoints")
# nanochat's GPTConfig fields: October's; HEAD's add the window pattern
OCT_CONFIG_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
# HEAD: all 2026 parts on, the short window derived from sequence_len, the vocabulary padded to 64
HEAD_2026 = dict(rope_base=100_000.0, qk_scale=1.2, value_embeds=True, residual_scalars=True, smear=True, backout=True)
HEAD_PAD_VOCAB_TO = 64
# where our own record of the model rides along in a meta file nanochat writes and reads (it ignores other keys)
OUR_META_KEY = "nanochat_pl"
EMBEDDINGS = ("transformer.wte.weight", "lm_head.weight")  # October's have exactly vocab_size rows


def is_nanochat_checkpoint(path: str | Path) -> bool:
    """A folder or a `model_<step>.pt` file: nanochat's layout (ours are single `.ckpt` files)."""
    path = Path(path)
    return path.is_dir() or bool(MODEL_FILE.fullmatch(path.name))


def find_model_file(path: str | Path) -> Path:
    """The `model_<step>.pt` that `path` names: the file itself, the latest step in a checkpoint folder, or the
    latest step of the one checkpoint folder under a base directory."""
    path = Path(path).expanduser()
    if path.is_file() and MODEL_FILE.fullmatch(path.name):
        return path
    if not path.is_dir():
        raise UserError(f"no nanochat checkpoint (a folder, or its model_<step>.pt) at {path}")
    folders = [path] if any(MODEL_FILE.fullmatch(p.name) for p in path.iterdir()) else []
    folders = folders or sorted(
        {p.parent for p in path.glob("*_checkpoints/*/model_*.pt") if MODEL_FILE.fullmatch(p.name)}
    )
    if len(folders) != 1:
        found = f"several: {', '.join(str(f.relative_to(path)) for f in folders)}" if folders else "none"
        raise UserError(f"{path} has no nanochat model file (model_<step>.pt); checkpoint folders under it: {found}")
    steps = {int(m.group(1)): p for p in folders[0].iterdir() if (m := MODEL_FILE.fullmatch(p.name))}
    return steps[max(steps)]


def find_tokenizer_pickle(model_file: Path) -> Path | None:
    """nanochat's tokenizer for a model file: beside it (hub uploads), or in the base directory's tokenizer/."""
    candidates = (model_file.with_name(TOKENIZER_PICKLE), model_file.parents[2] / "tokenizer" / TOKENIZER_PICKLE)
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def torch_load(path: str | Path, mmap: bool = False) -> Any:
    """A torch file, read with the weights-only unpickler (no code runs from the file); one line if it fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None


def read_model(path: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor], dict[str, Any], Path]:
    """(our GPTConfig, fp32 state dict in our names, the meta dict, the model file) of a nanochat checkpoint."""
    model_file = find_model_file(path)
    meta_file = model_file.with_name(f"meta_{MODEL_FILE.fullmatch(model_file.name).group(1)}.json")
    try:  # nanochat keeps the model's shape there
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        model_config = dict(meta["model_config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{model_file} needs {meta_file.name} beside it, JSON with a model_config: {error}") from error
    # torch.compile prefixes every key with `_orig_mod.`; nanochat stores embeddings in bf16 on CUDA
    state = {
        k.removeprefix("_orig_mod."): v.float() if v.is_floating_point() else v
        for k, v in torch_load(model_file).items()
    }
    if OUR_META_KEY in meta:  # written here: the exact config
        config = GPTConfig(**meta[OUR_META_KEY]["gpt_config"])
    else:
        missing = [name for name in OCT_CONFIG_FIELDS if name not in model_config]
        if missing or EMBEDDINGS[0] not in state:
            raise UserError(f"{meta_file}: not a nanochat GPT (model_config lacks {missing}; weights: wte?)")
        head_era = "window_pattern" in model_config
        era, rows = HEAD_2026 if head_era else OCT_2025, state[EMBEDDINGS[0]].size(0)
        config = GPTConfig(
            **{name: model_config[name] for name in OCT_CONFIG_FIELDS},
            window_pattern=model_config.get("window_pattern", "L"),
            rope_base=era["rope_base"],
            qk_scale=era["qk_scale"],
            value_embeds=any(k.startswith("value_embeds.") for k in state),
            residual_scalars="resid_lambdas" in state,
            smear="smear_gate.weight" in state,
            backout="backout_lambda" in state,
            pad_vocab_to=HEAD_PAD_VOCAB_TO if head_era or rows != model_config["vocab_size"] else 1,
        )
    for name in EMBEDDINGS:  # October's rows padded as our config pads them: zero rows no token reads
        missing_rows = config.padded_vocab_size - state[name].size(0) if name in state else 0
        if missing_rows > 0:
            state[name] = torch.cat([state[name], state[name].new_zeros(missing_rows, config.n_embd)])
    return config, state, meta, model_file


class _PickledEncoding:
    """What tiktoken.Encoding's pickle holds, kept as data: pickle calls __setstate__ with its state dict."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _TokenizerUnpickler(pickle.Unpickler):
    # all a pickled tiktoken.Encoding refers to (pickle protocols 0 and 1 add copyreg's reconstructor and `object`)
    ADMITTED = {
        ("tiktoken.core", "Encoding"): _PickledEncoding,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("builtins", "object"): object,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ADMITTED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a tokenizer pickle holds only an Encoding")
        return self.ADMITTED[(module, name)]


def read_tokenizer_pickle(path: str | Path) -> tuple[str, dict[bytes, int], Any]:
    """(split pattern, mergeable ranks, special tokens) of nanochat's tokenizer.pkl, without running its code. The
    tokenizer checks the merge table and the special tokens (Tokenizer.from_nanochat)."""
    try:
        state = _TokenizerUnpickler(io.BytesIO(Path(path).read_bytes())).load().state
        pattern, ranks = state["pat_str"], state["mergeable_ranks"]
        if not isinstance(pattern, str) or not all(isinstance(k, bytes) and type(v) is int for k, v in ranks.items()):
            raise TypeError("not a tiktoken Encoding's pattern and merge table (bytes -> int ranks)")
        return pattern, ranks, state["special_tokens"]
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError) as error:
        raise UserError(f"cannot read nanochat tokenizer {path}: {error}") from error


def nanochat_architecture(config: GPTConfig) -> str:
    """ "oct" or "head": which of nanochat's two models `config` is; UserError if neither (nanochat could not
    build it). nanochat derives the short window from sequence_len and pads the vocabulary (HEAD) to 64."""
    ours = {name: getattr(config, name) for name in HEAD_2026}
    if ours == {name: OCT_2025[name] for name in HEAD_2026} and set(config.window_pattern.upper()) == {"L"}:
        return "oct"
    derived_windows = dataclasses.replace(config, short_window=None).layer_windows() == config.layer_windows()
    if ours == HEAD_2026 and config.pad_vocab_to == HEAD_PAD_VOCAB_TO and derived_windows:
        return "head"
    differ = ", ".join(f"{k}={v!r}" for k, v in ours.items())
    raise UserError(
        f"nanochat has no architecture for this model ({differ}, window_pattern={config.window_pattern!r}, "
        f"pad_vocab_to={config.pad_vocab_to}): nanochat's models have all of the 2026 parts (HEAD) or none"
    )


def write_checkpoint(
    output: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any], step: int, tokenizer: Any
) -> Path:
    """Write a model (our state dict and metadata entry) and its tokenizer into nanochat's base directory `output`
    in the layout above; returns the checkpoint folder."""
    config = GPTConfig(**meta["gpt_config"])
    model_config = {name: getattr(config, name) for name in OCT_CONFIG_FIELDS}
    if nanochat_architecture(config) == "head":
        model_config["window_pattern"] = config.window_pattern.upper()
    else:
        state = {k: v[: config.vocab_size] if k in EMBEDDINGS else v for k, v in state.items()}
    output = Path(output)
    folder = output / STAGE_FOLDERS.get(meta["stage"], f"{meta['stage']}_checkpoints") / f"d{config.n_layer}"
    nanochat_meta = {"step": step, "model_config": model_config, "max_seq_len": config.sequence_len}
    if "device_batch_size" in meta:
        nanochat_meta["device_batch_size"] = meta["device_batch_size"]
    nanochat_meta[OUR_META_KEY] = {"gpt_config": dataclasses.asdict(config), "stage": meta["stage"]}
    with atomic_path(folder / f"model_{step:06d}.pt") as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    atomic_write_text(folder / f"meta_{step:06d}.json", json.dumps(nanochat_meta, indent=2) + "\n")
    # the tokenizer pickled as nanochat's RustBPETokenizer.save does (its name there is "rustbpe"), and its token bytes
    ranks, specials = tokenizer.mergeable_ranks, tokenizer.special_tokens
    encoding = tiktoken.Encoding("rustbpe", pat_str=tokenizer.pattern, mergeable_ranks=ranks, special_tokens=specials)
    with atomic_path(output / "tokenizer" / TOKENIZER_PICKLE) as tmp:
        tmp.write_bytes(pickle.dumps(encoding))
    with atomic_path(output / "tokenizer" / "token_bytes.pt") as tmp:
        torch.save(tokenizer.token_bytes(), tmp)
    return folder
