"""Checkpoints are the hand-off between stages: any stage's `.ckpt` rebuilds its GPT and names its tokenizer.

Lightning writes the checkpoint; `AtomicCheckpointIO` (installed by the CLI) makes that write a temporary file
beside the target renamed onto it, so a crash mid-save leaves the previous checkpoint intact. Every stage adds
`checkpoint["nanochat_pl"] = {"stage", "gpt_config", "tokenizer_dir"}` so the engine, evals, `chat` and `serve`
can load the model without the LightningModule that trained it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nanochat_pl.common import UserError, atomic_path
from nanochat_pl.model.gpt import GPT, GPTConfig
from nanochat_pl.tokenizer import Tokenizer, get_tokenizer

CHECKPOINT_KEY = "nanochat_pl"
MODEL_PREFIX = "model."  # the stages hold the GPT as `self.model`


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, staging a local checkpoint in the target's own directory.

    Lightning 2.6 writes through an fsspec transaction, which stages local files in $TMPDIR and then moves them;
    across filesystems (a tmpfs /tmp, a node-local /tmp under a network home) that move copies over the previous
    checkpoint, which a crash leaves half-written, and a small $TMPDIR fails the save (Lightning #21253). URLs
    (s3://, ...) keep Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded with torch's weights-only unpickler (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from error
    if CHECKPOINT_KEY not in checkpoint:
        raise UserError(f"{path} is not a nanochat-pl checkpoint (no {CHECKPOINT_KEY!r} entry)")
    return checkpoint


def check_checkpoint_file(path: str | Path) -> None:
    """Fail early, in one line, on a missing or truncated checkpoint file, without reading it.

    torch.save writes a zip archive whose directory is at the end, so a truncated file has none."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"cannot read checkpoint {path}: not a complete torch checkpoint (truncated or foreign?)")


def check_vocab_matches(checkpoint: dict[str, Any], tokenizer: Tokenizer) -> None:
    vocab_size = checkpoint[CHECKPOINT_KEY]["gpt_config"]["vocab_size"]
    if vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"the checkpoint's model has a vocabulary of {vocab_size:,} but the tokenizer has "
            f"{tokenizer.vocab_size:,}: use the tokenizer the model was trained with"
        )


def load_model(
    path: str | Path, device: str | torch.device = "cpu", tokenizer_dir: str | Path | None = None
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Rebuild any stage's GPT (eval mode, fp32 weights on `device`), its tokenizer, and the stage's metadata.

    `tokenizer_dir` overrides the tokenizer location recorded in the checkpoint.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint[CHECKPOINT_KEY]
    tokenizer = get_tokenizer(tokenizer_dir or meta["tokenizer_dir"])
    check_vocab_matches(checkpoint, tokenizer)
    config = GPTConfig(**meta["gpt_config"])
    state = {k[len(MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # rebuilds the rotary tables, which are not saved
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"{path} does not match its own model config: {str(error).splitlines()[0]}") from error
    return model.eval(), tokenizer, meta
