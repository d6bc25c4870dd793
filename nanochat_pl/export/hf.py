"""Export a GPT and its tokenizer as a Hugging Face model directory (transformers>=5).

"native": nanochat's October 2025 architecture as transformers' own `NanoChatForCausalLM`, loadable by
`AutoModelForCausalLM`, lm-eval and vLLM without remote code. "remote": everything else (the 2026 recipe, whose
weights transformers' class would drop): this project's model code, copied with its imports made relative, behind
the thin wrapper in `hf_remote/`, loaded with `trust_remote_code=True`. "auto" picks native when the model fits it.
The directory is built under a temporary name beside the output and renamed onto it at the end.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import torch

from nanochat_pl.common import UserError
from nanochat_pl.model.gpt import GPT, LOGIT_SOFTCAP, GPTConfig
from nanochat_pl.tokenizer import RANKS_FILE, SPECIAL_TOKENS, Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the GPTConfig fields `native_blockers` knows: a new architecture switch must be judged there first
_KNOWN_FIELDS = {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "rope_base", "pad_vocab_to"}
_KNOWN_FIELDS |= {"window_pattern", "short_window", "qk_scale", "value_embeds", "residual_scalars", "smear", "backout"}

# our parameter names -> transformers' NanoChat names, per block (modeling_nanochat.py, transformers 5.0+)
_NATIVE_BLOCK_NAMES = {"attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj"}
_NATIVE_BLOCK_NAMES |= {"attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}

# The remote-code files: our model sources, copied, and the hand-written wrapper beside this module.
_MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
_MODEL_SOURCES = ("gpt.py", "attention.py", "kv_cache.py")
_WRAPPER_DIR = Path(__file__).resolve().parent / "hf_remote"
_WRAPPER_SOURCES = ("configuration_nanochat_pl.py", "modeling_nanochat_pl.py")

# `Tokenizer.render_conversation` (nanochat's tokenizer.py) as a Jinja chat template, token for token; {% generation %}
# marks what its mask trains on, so `return_assistant_tokens_mask=True` gives that mask.
CHAT_TEMPLATE = (Path(__file__).parent / "chat_template.jinja").read_text(encoding="utf-8")

# text the saved tokenizer must encode exactly as ours: contractions, digit runs, punctuation, unicode, whitespace
_PROBE_TEXT = "It's 2026: 1234567 cafés, naïve 東京 🙂!\n\n\tdef f(x):\n        return x  # done  \r\n"


def native_blockers(config: GPTConfig) -> list[str]:
    """What in `config` transformers' NanoChatForCausalLM cannot represent; empty when the native export is exact."""
    unknown = {field.name for field in dataclasses.fields(config)} - _KNOWN_FIELDS
    assert not unknown, f"native_blockers does not know the GPTConfig fields {sorted(unknown)}"
    blockers = []
    if any(window is not None for window in config.layer_windows()):
        blockers.append(f"sliding windows (window_pattern {config.window_pattern!r})")
    if config.qk_scale != 1.0:
        blockers.append(f"qk_scale {config.qk_scale}")
    switches = ("value_embeds", "residual_scalars", "smear", "backout")
    return blockers + [name.replace("_", " ") for name in switches if getattr(config, name)]


def export_hf(
    model: GPT,
    tokenizer: Tokenizer,
    output: str | os.PathLike,
    target: Literal["auto", "native", "remote"] = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
) -> Path:
    """Write `model` and `tokenizer` as a Hugging Face model directory at `output` (new, or an empty directory);
    `target` and `dtype` as `nanochat-pl export hf` takes them. Returns the directory."""
    assert model.config.vocab_size == tokenizer.vocab_size, "load_model checks that the tokenizer fits the model"
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is None or int(transformers.__version__.split(".")[0]) < 5:  # 5 brought NanoChatForCausalLM
        raise UserError('the Hugging Face export needs transformers>=5: pip install "transformers>=5"')
    blockers = native_blockers(model.config)
    if target == "native" and blockers:
        raise UserError(f"NanoChatForCausalLM cannot hold this model ({', '.join(blockers)}): export it as remote code")
    output = Path(output).expanduser().absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output} exists and is not an empty directory: export into a new directory")
    # a staging directory a killed export left behind; each output has one writer at a time
    for leftover in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = output.parent / f".{output.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot write the export next to {output}: {e.strerror or e}") from e
    # generation ends at <|assistant_end|> or <|bos|> as in nanochat's engine; pad == eos, not the prompts' <|bos|>
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    eos = [assistant_end, tokenizer.bos_token_id]
    token_ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=assistant_end)
    try:
        _write_tokenizer(tokenizer, staging, model.config.sequence_len)
        if target == "native" or (target == "auto" and not blockers):
            _write_native(model, staging, DTYPES[dtype], token_ids)
        else:
            _write_remote(model, staging, dtype, token_ids, transformers.__version__)
        os.replace(staging, output)  # an empty directory at `output` is replaced in the same step
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _write_tokenizer(tokenizer: Tokenizer, directory: Path, max_length: int) -> None:
    """tokenizer.json (through transformers' TikTokenConverter, with <|bos|> prepended as nanochat does),
    tokenizer_config.json and chat_template.jinja, reloaded and checked against ours."""
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # tiktoken would cache the ranks file under its temporary path, read back stale were the path reused
    with tempfile.TemporaryDirectory() as ranks_dir, mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):
        ranks = str(tokenizer.save(ranks_dir) / RANKS_FILE)
        fast = TikTokenConverter(
            vocab_file=ranks, pattern=tokenizer.pattern, extra_special_tokens=[*SPECIAL_TOKENS]
        ).converted()
    bos = "<|bos|>"
    prepend_bos = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    fast.post_processor = processors.Sequence([fast.post_processor, prepend_bos])
    end = "<|assistant_end|>"
    options = dict(bos_token=bos, eos_token=end, pad_token=end, model_max_length=max_length)
    PreTrainedTokenizerFast(tokenizer_object=fast, chat_template=CHAT_TEMPLATE, **options).save_pretrained(directory)

    reloaded = AutoTokenizer.from_pretrained(directory)
    found = {name: reloaded.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    same_text = reloaded(_PROBE_TEXT, verbose=False)["input_ids"] == tokenizer.encode(_PROBE_TEXT, prepend=bos)
    if found != tokenizer.special_tokens or not same_text:
        raise UserError("the converted tokenizer encodes differently from ours (transformers/tokenizers version?)")


def _write_native(model: GPT, directory: Path, dtype: torch.dtype, token_ids: dict[str, Any]) -> None:
    """config.json, model.safetensors and generation_config.json of transformers' NanoChatForCausalLM."""
    from transformers import GenerationConfig, NanoChatConfig, NanoChatForCausalLM

    cfg = model.config
    shape = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd)
    shape |= dict(num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head)
    config = NanoChatConfig(
        **shape,
        max_position_embeddings=cfg.sequence_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)},
        # F.rms_norm(eps=None) uses finfo(dtype).eps; transformers' default 1e-6 moves fp32 logits by ~2e-4
        rms_norm_eps=torch.finfo(torch.float32).eps,
        final_logit_softcapping=LOGIT_SOFTCAP,
        tie_word_embeddings=False,
        architectures=["NanoChatForCausalLM"],
        **token_ids,
    )
    # our weights in its names, the embedding and lm_head cut from the padded vocabulary back to the real one
    ours, vocab_size = model.state_dict(), cfg.vocab_size
    state = {
        "model.embed_tokens.weight": ours.pop("transformer.wte.weight")[:vocab_size],
        "lm_head.weight": ours.pop("lm_head.weight")[:vocab_size],
    }
    for i in range(cfg.n_layer):
        for our_name, hf_name in _NATIVE_BLOCK_NAMES.items():
            state[f"model.layers.{i}.{hf_name}.weight"] = ours.pop(f"transformer.h.{i}.{our_name}.weight")
    assert not ours, f"the native export has no place for {sorted(ours)}"  # a part of the model silently dropped
    with torch.device("meta"):  # no memory and no random initialisation: every tensor is assigned below
        hf_model = NanoChatForCausalLM(config)
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in state.items()}
    hf_model.load_state_dict(state, strict=True, assign=True)  # strict: every name and shape must match
    hf_model.generation_config = GenerationConfig(**token_ids)
    hf_model.save_pretrained(directory)


def _write_remote(model: GPT, directory: Path, dtype: str, token_ids: dict[str, Any], version: str) -> None:
    """Our model code, config.json (GPTConfig's fields, auto_map to the wrapper), model.safetensors (our state dict
    under "model.", padded vocabulary rows kept) and generation_config.json."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    for name in _MODEL_SOURCES:
        (directory / name).write_text(_rewrite_imports((_MODEL_DIR / name).read_text(encoding="utf-8")))
    for name in _WRAPPER_SOURCES:
        shutil.copyfile(_WRAPPER_DIR / name, directory / name)
    auto_map = {"AutoConfig": "configuration_nanochat_pl.NanochatPLConfig"}
    auto_map["AutoModelForCausalLM"] = "modeling_nanochat_pl.NanochatPLForCausalLM"
    config = {"architectures": ["NanochatPLForCausalLM"], "auto_map": auto_map, "model_type": "nanochat_pl"}
    config |= {**dataclasses.asdict(model.config), **token_ids, "tie_word_embeddings": False, "use_cache": True}
    config |= {"dtype": dtype, "transformers_version": version}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {f"model.{name}": tensor.detach().to("cpu", DTYPES[dtype]) for name, tensor in model.state_dict().items()}
    # "format": "pt" is the metadata transformers' save_pretrained writes and its loader expects
    save_file({name: t.contiguous() for name, t in state.items()}, directory / "model.safetensors", {"format": "pt"})
    GenerationConfig(**token_ids).save_pretrained(directory)


def _rewrite_imports(source: str) -> str:
    """`source` with its nanochat_pl imports made relative: transformers' dynamic-module loader copies only files
    reached by single-dot relative imports and checks that every absolute import is installed."""
    source = source.replace("from nanochat_pl.common import UserError", "UserError = ValueError  # not shipped")
    shipped = "|".join(Path(name).stem for name in _MODEL_SOURCES)
    source = re.sub(rf"^from nanochat_pl\.model\.({shipped}) import", r"from .\1 import", source, flags=re.M)
    left = re.findall(r"^\s*(?:from|import)\s+nanochat_pl\b.*", source, flags=re.M)
    assert not left, f"a shipped model file still imports nanochat_pl after rewriting: {left}"
    return source
