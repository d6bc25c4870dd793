"""The config of a nanochat-pl model exported as transformers remote code: loading needs torch and transformers,
not nanochat-pl."""

from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from .gpt import GPTConfig

# transformers 5.0 copies a local model's remote code into its module cache one level deep: only the files that the
# loaded file imports itself. gpt.py's own imports are therefore named here too (and in modeling_nanochat_pl.py).
from .kv_cache import KVCache  # noqa: F401


class NanochatPLConfig(PretrainedConfig):
    """Every field of `GPTConfig` as an attribute, plus the standard names transformers and lm-eval read."""

    model_type = "nanochat_pl"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}
    # max_position_embeddings: the training context, to which lm-eval truncates its inputs
    attribute_map |= {"num_key_value_heads": "n_kv_head", "max_position_embeddings": "sequence_len"}

    def __init__(self, **kwargs):
        # GPTConfig is the one list of fields and defaults; the transformers fields (token ids, dtype, ...) go on
        kwargs.setdefault("tie_word_embeddings", False)  # nanochat's lm_head is its own matrix
        # forward's default; PretrainedConfig would drop it from kwargs as a generation parameter
        use_cache = kwargs.pop("use_cache", True)
        fields = {field.name: kwargs.pop(field.name, field.default) for field in dataclasses.fields(GPTConfig)}
        super().__init__(**kwargs)
        self.use_cache = use_cache
        for name, value in fields.items():
            setattr(self, name, value)
        self.gpt_config()  # GPTConfig checks the shape (ValueError on, e.g., n_head not dividing n_embd)

    def gpt_config(self) -> GPTConfig:
        """The `GPTConfig` these attributes describe."""
        return GPTConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(GPTConfig)})
