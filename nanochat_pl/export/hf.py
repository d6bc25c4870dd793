"""Export a GPT and its tokenizer as a Hugging Face model directory (transformers>=5).

Two targets (reference chat-stages.md §5):
- "native": nanochat's October 2025 architecture is transformers' own `NanoChatForCausalLM` (transformers 5.0+,
  PR #41634): config.json and model.safetensors in its names, loadable by `AutoModelForCausalLM`, lm-eval and
  vLLM without remote code. Its rope_theta is configurable, so any `rope_base` fits.
- "remote": everything else (the 2026 recipe). transformers' class has no value embeddings, residual scalars,
  smear, backout, sliding windows or qk_scale (its own converter drops those weights without a word), so the
  directory ships this project's model code (`gpt.py`, `attention.py`, `rotary.py`, `kv_cache.py`, imports
  rewritten to be relative) behind a thin transformers wrapper (`hf_remote/`), loaded with `trust_remote_code=True`.
"auto" picks native when the model fits it. Both get the same tokenizer files (tokenizer.json,
tokenizer_config.json, chat_template.jinja) and generation_config.json.

The directory is built beside the output under a temporary name and renamed onto it at the end: a crash never
leaves half an export behind.
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
from typing import Any
from unittest import mock

import torch

from nanochat_pl.common import UserError
from nanochat_pl.model.gpt import GPT, LOGIT_SOFTCAP, GPTConfig
from nanochat_pl.tokenizer import RANKS_FILE, SPECIAL_TOKENS, Tokenizer

TARGETS = ("auto", "native", "remote")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# GPTConfig fields whose every value either target represents; any other field is an architecture switch that
# `native_blockers` must judge (a new field fails the export loudly until it does)
_SHAPE_FIELDS = {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "rope_base", "pad_vocab_to"}
_SWITCH_FIELDS = {"window_pattern", "short_window", "qk_scale", "value_embeds", "residual_scalars", "smear", "backout"}

# our parameter names -> transformers' NanoChat names, per block (modeling_nanochat.py, transformers 5.0+)
_NATIVE_BLOCK_NAMES = {
    "attn.c_q": "self_attn.q_proj",
    "attn.c_k": "self_attn.k_proj",
    "attn.c_v": "self_attn.v_proj",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}

# The remote-code files: our model sources, copied, and the hand-written wrapper beside this module.
_MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
_MODEL_SOURCES = ("gpt.py", "attention.py", "rotary.py", "kv_cache.py")
_WRAPPER_DIR = Path(__file__).resolve().parent / "hf_remote"
_WRAPPER_SOURCES = ("configuration_nanochat_pl.py", "modeling_nanochat_pl.py")
# transformers' dynamic-module loader copies only files reached by single-dot relative imports and checks that
# every absolute import is installed, so the copies must not import nanochat_pl. Each rewrite is one exact line
# that must occur exactly once: when the sources change their imports, the export (and its test) fails here
# instead of shipping code that imports nanochat_pl.
_IMPORT_REWRITES = {
    "gpt.py": {
        "from nanochat_pl.common import UserError": "UserError = ValueError  # nanochat_pl.common is not shipped",
        "from nanochat_pl.model.attention import KERNELS, attention": "from .attention import KERNELS, attention",
        "from nanochat_pl.model.kv_cache import KVCache": "from .kv_cache import KVCache",
        "from nanochat_pl.model.rotary import apply_rotary, rotary_tables": (
            "from .rotary import apply_rotary, rotary_tables"
        ),
    },
}
_REMOTE_MODEL_TYPE = "nanochat_pl"
_REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_nanochat_pl.NanochatPLConfig",
    "AutoModelForCausalLM": "modeling_nanochat_pl.NanochatPLForCausalLM",
}

# nanochat's chat format as a Jinja chat template: `Tokenizer.render_conversation` (nanochat tokenizer.py@92d63d4)
# token for token, with a leading system message merged into the first user turn, assistant turns made of typed
# parts (text, python tool calls, python_output tool results) and every assistant turn closed by
# <|assistant_end|>. {% generation %} marks what render_conversation's mask trains on (the assistant's text and
# tool calls, and <|assistant_end|>), so `return_assistant_tokens_mask=True` gives that mask.
CHAT_TEMPLATE = """\
{%- set msgs = messages -%}
{%- if msgs and msgs[0]['role'] == 'system' -%}
    {%- if msgs | length < 2 or msgs[1]['role'] != 'user' -%}
        {{- raise_exception('a system message must be followed by a user message') -}}
    {%- endif -%}
    {%- if msgs[0]['content'] is not string -%}
        {{- raise_exception("a system message's content must be a string") -}}
    {%- endif -%}
    {%- set msgs = [{'role': 'user', 'content': msgs[0]['content'] ~ '\\n\\n' ~ msgs[1]['content']}] + msgs[2:] -%}
{%- endif -%}
{{- bos_token -}}
{%- for message in msgs -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('roles must alternate user/assistant, starting with user (after any system message)') -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {%- if message['content'] is not string -%}
            {{- raise_exception("a user message's content must be a string") -}}
        {%- endif -%}
        <|user_start|>{{ message['content'] }}<|user_end|>
    {%- else -%}
        <|assistant_start|>
        {%- if message['content'] is string -%}
            {%- generation -%}{{ message['content'] }}{%- endgeneration -%}
        {%- else -%}
            {%- for part in message['content'] -%}
                {%- if part['type'] == 'text' -%}
                    {%- generation -%}{{ part['text'] }}{%- endgeneration -%}
                {%- elif part['type'] == 'python' -%}
                    {%- generation -%}<|python_start|>{{ part['text'] }}<|python_end|>{%- endgeneration -%}
                {%- elif part['type'] == 'python_output' -%}
                    <|output_start|>{{ part['text'] }}<|output_end|>
                {%- else -%}
                    {{- raise_exception('an assistant part needs a type in text, python, python_output') -}}
                {%- endif -%}
            {%- endfor -%}
        {%- endif -%}
        {%- generation -%}<|assistant_end|>{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    <|assistant_start|>
{%- endif -%}
"""

# text the saved tokenizer must encode exactly as ours: contractions, digit runs, punctuation, unicode, whitespace
_PROBE_TEXT = "It's 2026: 1234567 cafés, naïve 東京 🙂!\n\n\tdef f(x):\n        return x  # done  \r\n"


def native_blockers(config: GPTConfig) -> list[str]:
    """What in `config` transformers' NanoChatForCausalLM cannot represent; empty when the native export is exact."""
    unknown = {field.name for field in dataclasses.fields(config)} - _SHAPE_FIELDS - _SWITCH_FIELDS
    if unknown:
        raise RuntimeError(f"nanochat_pl/export/hf.py does not know the GPTConfig fields {sorted(unknown)}")
    blockers = []
    if any(window is not None for window in config.layer_windows()):
        blockers.append(f"sliding windows (window_pattern {config.window_pattern!r})")
    if config.qk_scale != 1.0:
        blockers.append(f"qk_scale {config.qk_scale}")
    switches = ("value_embeds", "residual_scalars", "smear", "backout")
    return blockers + [name.replace("_", " ") for name in switches if getattr(config, name)]


def export_hf(
    model: GPT, tokenizer: Tokenizer, output: str | os.PathLike, target: str = "auto", dtype: str = "float32"
) -> Path:
    """Write `model` and `tokenizer` as a Hugging Face model directory at `output` (new, or an empty directory);
    return its path.

    target: "native" (transformers' NanoChatForCausalLM; only for the October 2025 architecture, see
    `native_blockers`), "remote" (this project's model code, `trust_remote_code=True`) or "auto" (native when
    the model fits it). dtype: what the weights are stored in, "float32" (exact), "bfloat16" or "float16".
    """
    if target not in TARGETS:
        raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    transformers = _require_transformers()
    config = model.config
    if config.vocab_size != tokenizer.vocab_size:
        raise UserError(f"the model has a vocabulary of {config.vocab_size}, the tokenizer {tokenizer.vocab_size}")
    blockers = native_blockers(config)
    if target == "native" and blockers:
        raise UserError(
            f"transformers' NanoChatForCausalLM cannot hold this model ({', '.join(blockers)}): "
            "export it as remote code"
        )
    native = target == "native" or (target == "auto" and not blockers)

    output = Path(output).expanduser().absolute()
    staging = _staging_dir(output)
    try:
        token_ids = _special_token_ids(tokenizer)
        _write_tokenizer(tokenizer, staging, model_max_length=config.sequence_len)
        if native:
            _write_native(model, staging, DTYPES[dtype], token_ids)
        else:
            _write_remote(model, staging, dtype, token_ids, transformers.__version__)
        os.replace(staging, output)  # an empty directory at `output` is replaced in the same step
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise UserError('the Hugging Face export needs transformers: pip install "transformers>=5"') from e
    if int(transformers.__version__.split(".")[0]) < 5:
        raise UserError(
            f"the Hugging Face export needs transformers>=5 (NanoChatForCausalLM), found {transformers.__version__}: "
            'pip install -U "transformers>=5"'
        )
    return transformers


def _staging_dir(output: Path) -> Path:
    """A new directory beside `output` to build the export in, after checking that `output` can take it."""
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
    return staging


def _special_token_ids(tokenizer: Tokenizer) -> dict[str, Any]:
    """The token ids transformers' configs name. Generation ends at <|assistant_end|> (a chat reply) or <|bos|>
    (the next document, for a base model), as nanochat's engine does; padding is <|assistant_end|>: pad == eos keeps
    generate from taking the <|bos|> that starts every prompt for padding."""
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    return dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[assistant_end, tokenizer.bos_token_id],
        pad_token_id=assistant_end,
    )


def _write_tokenizer(tokenizer: Tokenizer, directory: Path, model_max_length: int) -> None:
    """tokenizer.json (our merge table, split pattern and special tokens through transformers' TikTokenConverter,
    plus a post-processor that prepends <|bos|> as nanochat does to every document), tokenizer_config.json and
    chat_template.jinja; then reload them with AutoTokenizer and check the special-token ids and an encoding."""
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # The converter reads a tiktoken ranks file, which is what Tokenizer.save writes. tiktoken caches every file it
    # reads under the temporary directory, keyed by the file's path (a path reused later would be read back stale);
    # TIKTOKEN_CACHE_DIR="" turns that off (tiktoken/load.py, read_file_cached). `extra_special_tokens` is the
    # transformers 5 name: the 4.x `additional_special_tokens` is silently ignored and the specials then get other
    # ids (reference §5b), hence the check below.
    with tempfile.TemporaryDirectory() as ranks_dir, mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):
        converter = TikTokenConverter(
            vocab_file=str(tokenizer.save(ranks_dir) / RANKS_FILE),
            pattern=tokenizer.pattern,
            extra_special_tokens=list(SPECIAL_TOKENS),
        )
        fast = converter.converted()
    bos = "<|bos|>"
    fast.post_processor = processors.Sequence(
        [
            fast.post_processor,
            processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]),
        ]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=fast,
        bos_token=bos,
        eos_token="<|assistant_end|>",
        pad_token="<|assistant_end|>",
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)

    reloaded = AutoTokenizer.from_pretrained(directory)
    found = {name: reloaded.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    if found != tokenizer.special_tokens:
        raise UserError(f"the converted tokenizer has the special-token ids {found}, not {tokenizer.special_tokens}")
    if reloaded(_PROBE_TEXT, verbose=False)["input_ids"] != tokenizer.encode(_PROBE_TEXT, prepend=bos):
        raise UserError("the converted tokenizer encodes text differently from ours (transformers/tokenizers version?)")


def _write_native(model: GPT, directory: Path, dtype: torch.dtype, token_ids: dict[str, Any]) -> None:
    """config.json, model.safetensors and generation_config.json of transformers' NanoChatForCausalLM."""
    from transformers import GenerationConfig, NanoChatConfig, NanoChatForCausalLM

    cfg = model.config
    config = NanoChatConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=4 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.sequence_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)},
        # F.rms_norm(eps=None) uses finfo(dtype).eps; transformers' default 1e-6 moves fp32 logits by ~2e-4
        rms_norm_eps=torch.finfo(torch.float32).eps,
        final_logit_softcapping=LOGIT_SOFTCAP,
        tie_word_embeddings=False,
        architectures=["NanoChatForCausalLM"],
        **token_ids,
    )
    with torch.device("meta"):  # no memory and no random initialisation: every tensor is assigned below
        hf_model = NanoChatForCausalLM(config)
    # strict: every name and shape must match transformers' model
    hf_model.load_state_dict(_native_state_dict(model, dtype), strict=True, assign=True)
    hf_model.generation_config = GenerationConfig(**token_ids)
    hf_model.save_pretrained(directory)


def _native_state_dict(model: GPT, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our weights in NanoChatForCausalLM's names, the embedding and lm_head cut from the padded vocabulary (a
    multiple of 64) back to the real one. Every tensor of ours must be used: one left over would be a part of
    the model that the export silently dropped."""
    ours = model.state_dict()
    vocab_size = model.config.vocab_size
    state = {
        "model.embed_tokens.weight": ours.pop("transformer.wte.weight")[:vocab_size],
        "lm_head.weight": ours.pop("lm_head.weight")[:vocab_size],
    }
    for i in range(model.config.n_layer):
        for our_name, hf_name in _NATIVE_BLOCK_NAMES.items():
            state[f"model.layers.{i}.{hf_name}.weight"] = ours.pop(f"transformer.h.{i}.{our_name}.weight")
    if ours:
        raise RuntimeError(f"the native export has no place for {sorted(ours)}")
    return {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in state.items()}


def _write_remote(model: GPT, directory: Path, dtype: str, token_ids: dict[str, Any], version: str) -> None:
    """Our model code, config.json (GPTConfig's fields, auto_map to the wrapper), model.safetensors (our state dict
    under "model.", the padded vocabulary rows kept since GPT is built with them) and generation_config.json."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    for name in _MODEL_SOURCES:
        (directory / name).write_text(_rewrite_imports(name, (_MODEL_DIR / name).read_text(encoding="utf-8")))
    for name in _WRAPPER_SOURCES:
        shutil.copyfile(_WRAPPER_DIR / name, directory / name)
    config = {
        "architectures": ["NanochatPLForCausalLM"],
        "auto_map": _REMOTE_AUTO_MAP,
        "model_type": _REMOTE_MODEL_TYPE,
        **dataclasses.asdict(model.config),
        **token_ids,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": dtype,
        "transformers_version": version,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {f"model.{name}": tensor.detach().to("cpu", DTYPES[dtype]) for name, tensor in model.state_dict().items()}
    # "format": "pt" is the metadata transformers' save_pretrained writes and its loader expects
    save_file({name: t.contiguous() for name, t in state.items()}, directory / "model.safetensors", {"format": "pt"})
    GenerationConfig(**token_ids).save_pretrained(directory)


def _rewrite_imports(name: str, source: str) -> str:
    """`source` (our model file `name`) with its nanochat_pl imports made relative (see _IMPORT_REWRITES)."""
    lines = source.splitlines()
    for old, new in _IMPORT_REWRITES.get(name, {}).items():
        where = [i for i, line in enumerate(lines) if line == old]
        if len(where) != 1:
            raise RuntimeError(f"{name}: expected the line {old!r} once, found it {len(where)} times")
        lines[where[0]] = new
    left = [line for line in lines if re.match(r"\s*(from|import)\s+nanochat_pl\b", line)]
    if left:
        raise RuntimeError(f"{name} still imports nanochat_pl after rewriting: {left}")
    return "\n".join(lines) + "\n"
