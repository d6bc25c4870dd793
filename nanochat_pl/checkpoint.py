"""Checkpoints are the hand-off between stages: any stage's `.ckpt` rebuilds its GPT and carries its tokenizer.

`AtomicCheckpointIO` (installed by the CLI) writes Lightning's checkpoint atomically with checksums of the weights,
which every load verifies, and of every other tensor (optimizer, loops, callbacks, data), which a resume verifies.
Every stage adds `checkpoint["nanochat_pl"] = {"stage", "gpt_config", "tokenizer", ...}` so the model loads
without its LightningModule; a nanochat checkpoint is read into the same form.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nanochat_pl import nanochat_format
from nanochat_pl.common import CHECKPOINT_KEY, UserError, atomic_path, home_dir
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.tokenizer import Tokenizer, carried_tokenizer, get_tokenizer

MODEL_PREFIX = "model."  # the stages hold the GPT as `self.model`
STAGES = ("base", "mid", "sft", "rl")  # one name each: its runs/<stage> folder, its checkpoints' stage, its alias
CHECKSUM_KEY = "state_dict_crc32"  # beside Lightning's "state_dict", so any module's checkpoint has one
STATE_CHECKSUM_KEY = "training_state_crc32"  # every tensor outside "state_dict" (older checkpoints lack it)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, staging a local checkpoint in the target's own directory and renaming it
    onto the target (Lightning stages it in $TMPDIR, and a move across filesystems can leave it half-written).
    URLs (s3://, ...) keep Lightning's path. Writes record the checksums; reads verify them."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        checkpoint[CHECKSUM_KEY] = tensors_checksum(checkpoint["state_dict"])
        checkpoint[STATE_CHECKSUM_KEY] = tensors_checksum({k: v for k, v in checkpoint.items() if k != "state_dict"})
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Lightning's resume (`fit`/`validate --ckpt_path`) reads through here: refuse any corrupted tensor."""
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        verify_weights(checkpoint, path)
        rest = {k: v for k, v in checkpoint.items() if k != "state_dict"}  # the checksums are ints: not in theirs
        if checkpoint.get(STATE_CHECKSUM_KEY) not in (None, tensors_checksum(rest)):
            raise UserError(f"{path} is corrupt: its optimizer, loop or callback tensors do not match their checksum")
        return checkpoint


def tensors_checksum(value: Any, path: str = "", crc: int = 0) -> int:
    """CRC-32 over every tensor in `value` and the dicts, lists and tuples in it, in key order (path, dtype, shape,
    bytes): torch.load checks nothing of a tensor's bytes. A state dict's paths are its names."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        crc = zlib.crc32(f"{path} {tensor.dtype} {tuple(tensor.shape)}".encode(), crc)
        return zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    if isinstance(value, dict | list | tuple):
        items = sorted(value.items(), key=lambda kv: str(kv[0])) if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            crc = tensors_checksum(item, f"{path}/{key}" if path else str(key), crc)
    return crc


def verify_weights(checkpoint: dict[str, Any], path: str | Path) -> None:
    """UserError if the weights are not those the checksum was taken of; one written without a checksum loads."""
    expected = checkpoint.get(CHECKSUM_KEY)
    if expected is not None and tensors_checksum(checkpoint["state_dict"]) != expected:
        raise UserError(f"{path} is corrupt: its weights do not match the checksum written with them")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict (weights-only unpickler), its weights verified; a nanochat checkpoint (a folder, or a
    model_<step>.pt) comes back in the same form."""
    path = Path(path)
    if not nanochat_format.is_nanochat_checkpoint(path):
        check_checkpoint_file(path)
        checkpoint = nanochat_format.torch_load(path)
        if CHECKPOINT_KEY not in checkpoint:
            raise UserError(f"{path} is not a nanochat-pl checkpoint (no {CHECKPOINT_KEY!r} entry)")
        verify_weights(checkpoint, path)
        return checkpoint
    config, state, meta, model_file = nanochat_format.read_model(path)
    pickled = nanochat_format.find_tokenizer_pickle(model_file)
    folder_stages = {folder: stage for stage, folder in nanochat_format.STAGE_FOLDERS.items()}
    entry = {
        "stage": meta.get(nanochat_format.OUR_META_KEY, {}).get("stage")
        or folder_stages.get(model_file.parent.parent.name, "base"),
        "gpt_config": asdict(config),
        "tokenizer": None if pickled is None else Tokenizer.from_nanochat(pickled).to_state(),
        # the pretraining recipe a chat stage after it inherits: October's for October's model, else HEAD's
        "recipe": "2026" if config.value_embeds else "oct",
    }
    if isinstance(meta.get("device_batch_size"), int):
        entry["device_batch_size"] = meta["device_batch_size"]
    step = meta.get("step")
    state_dict = {MODEL_PREFIX + k: v for k, v in state.items()}
    return {"state_dict": state_dict, "global_step": step if isinstance(step, int) else 0, CHECKPOINT_KEY: entry}


def peek_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file's dict, memory-mapped: its metadata can be read without reading its weights."""
    return nanochat_format.torch_load(path, mmap=True)


def checkpoint_tokenizer(checkpoint: dict[str, Any], path: str | Path, tokenizer_dir: str | Path | None) -> Tokenizer:
    """`tokenizer_dir`'s tokenizer when given, else the one the checkpoint carries; it must fit the model."""
    tokenizer = (
        carried_tokenizer(checkpoint[CHECKPOINT_KEY], path) if tokenizer_dir is None else get_tokenizer(tokenizer_dir)
    )
    check_vocab_matches(checkpoint, tokenizer)
    return tokenizer


def check_checkpoint_file(path: str | Path) -> None:
    """Fail early, in one line, on a missing or truncated checkpoint file without reading it (torch.save writes a
    zip whose directory is at the end). A nanochat checkpoint is checked for its model file."""
    path = Path(path)
    if nanochat_format.is_nanochat_checkpoint(path):
        nanochat_format.find_model_file(path)
    elif not path.is_file():
        raise UserError(f"no checkpoint at {path} (a path, or a name: {', '.join(STAGES)}, or e.g. sft@step=100)")
    elif not zipfile.is_zipfile(path):
        raise UserError(f"cannot read checkpoint {path}: not a complete torch checkpoint (truncated or foreign?)")


def check_vocab_matches(checkpoint: dict[str, Any], tokenizer: Tokenizer) -> None:
    ours, theirs = checkpoint[CHECKPOINT_KEY]["gpt_config"]["vocab_size"], tokenizer.vocab_size
    if ours != theirs:
        raise UserError(f"the model has a vocabulary of {ours:,}, the tokenizer {theirs:,}: use the model's own")


def gpt_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The GPT's weights in a checkpoint's state dict, without the `model.` prefix."""
    return {k[len(MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}


def load_model(
    path: str | Path, device: str | torch.device = "cpu", tokenizer_dir: str | Path | None = None
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Any stage's GPT (eval mode, fp32 weights on `device`), its tokenizer and its metadata entry with its optimizer
    `step`, from a checkpoint of ours or of nanochat's."""
    checkpoint = read_checkpoint(path)
    tokenizer = checkpoint_tokenizer(checkpoint, path, tokenizer_dir)
    with torch.device("meta"):
        model = GPT(GPTConfig(**checkpoint[CHECKPOINT_KEY]["gpt_config"]))
    model.to_empty(device=device)
    model.init_weights()  # rebuilds the rotary tables, which are not saved
    try:
        model.load_state_dict(gpt_state(checkpoint))
    except RuntimeError as error:
        raise UserError(f"{path} does not match its own model config: {str(error).splitlines()[0]}") from error
    return model.eval(), tokenizer, {**checkpoint[CHECKPOINT_KEY], "step": checkpoint.get("global_step", 0)}


def stage_checkpoints(root_dir: Path) -> list[Path]:
    """The checkpoint files of a stage's runs (`runs/<stage>`), newest first; `last.ckpt` links are left out."""
    files = [p for p in root_dir.glob("lightning_logs/*/checkpoints/*.ckpt") if not p.is_symlink()]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_checkpoint(root_dir: Path) -> Path:
    """The newest checkpoint of a stage's runs: what `--ckpt_path last` resumes (Lightning alone looks only in the new
    run's own folder and silently starts from scratch)."""
    found = stage_checkpoints(root_dir)
    if not found:
        raise UserError(f"no checkpoint under {root_dir}/lightning_logs/*/checkpoints (`nanochat-pl runs` lists them)")
    return found[0]


def resolve_checkpoint(name: str | Path) -> Path:
    """A checkpoint by name: `base`, `mid`, `sft`, `rl` (the newest of that stage's runs in the home), `sft@step=100`
    (the newest of that stage at that optimizer step), or a path (a `.ckpt`, a nanochat checkpoint)."""
    stage, _, step = str(name).partition("@step=")
    if stage not in STAGES or Path(name).exists():
        return Path(name).expanduser()
    if step and not step.isdigit():
        raise UserError(f"{name}: the step must be a number, as in {stage}@step=100")
    root = home_dir() / "runs" / stage
    found = [p for p in stage_checkpoints(root) if not step or peek_checkpoint(p).get("global_step") == int(step)]
    if not found:
        raise UserError(f"no {name} checkpoint under {root} (`nanochat-pl runs` lists them)")
    return found[0]
