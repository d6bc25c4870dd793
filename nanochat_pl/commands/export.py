"""`nanochat-pl export hf|nanochat`: any checkpoint (ours or nanochat's) as a Hugging Face model directory, or in
nanochat's own layout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from nanochat_pl.checkpoint import checkpoint_tokenizer, gpt_state, load_model, read_checkpoint
from nanochat_pl.common import CHECKPOINT_KEY
from nanochat_pl.export.hf import export_hf, native_blockers
from nanochat_pl.nanochat_format import write_checkpoint


def hf(
    checkpoint: str,
    output: str,
    target: Literal["auto", "native", "remote"] = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    tokenizer_dir: str | None = None,
) -> None:
    """Write a checkpoint as a Hugging Face transformers model directory (config, safetensors, tokenizer, chat
    template), for transformers, lm-eval and vLLM.

    Args:
        checkpoint: A checkpoint by name ("base", "sft@step=100", ...), a .ckpt, or a nanochat checkpoint folder.
        output: The directory to create (it must not exist, or be empty).
        target: "native" (transformers' own NanoChatForCausalLM: the October 2025 architecture only), "remote"
            (this project's model code, loaded with trust_remote_code=True) or "auto" (native when it fits).
        dtype: What the weights are stored in: "float32" (exact), "bfloat16" or "float16".
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries.
    """
    model, tokenizer, _ = load_model(checkpoint, "cpu", tokenizer_dir)
    blockers = native_blockers(model.config)
    path = export_hf(model, tokenizer, output, target=target, dtype=dtype)
    if target == "auto" and blockers:
        print(f"transformers' NanoChatForCausalLM cannot hold {', '.join(blockers)}: exported as remote code")
    if blockers or target == "remote":
        print(f"wrote {path}; load it with trust_remote_code=True (transformers, lm_eval --model_args)")
    else:
        print(f"wrote {path} as transformers' NanoChatForCausalLM")


def nanochat(checkpoint: str, output: str, tokenizer_dir: str | None = None) -> None:
    """Write a checkpoint in nanochat's own layout, as a base directory nanochat's scripts read with
    NANOCHAT_BASE_DIR=<output>.

    Args:
        checkpoint: A checkpoint by name ("base", "sft@step=100", ...), a .ckpt, or a nanochat checkpoint folder.
        output: nanochat's base directory to write into (created if missing); an existing checkpoint of the
            same stage, depth and step is replaced.
        tokenizer_dir: A tokenizer to use instead of the one the checkpoint carries.
    """
    read = read_checkpoint(checkpoint)
    tokenizer = checkpoint_tokenizer(read, checkpoint, tokenizer_dir)
    output_dir = Path(output).expanduser()
    step = int(read.get("global_step", 0))
    folder = write_checkpoint(output_dir, gpt_state(read), read[CHECKPOINT_KEY], step, tokenizer)
    print(f"wrote {folder} (and the tokenizer in {output_dir / 'tokenizer'})")
