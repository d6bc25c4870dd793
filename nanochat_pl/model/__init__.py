"""The GPT backbone (plain nn.Module) and its KV cache."""

from nanochat_pl.model.gpt import GPT, OCT_2025, GPTConfig
from nanochat_pl.model.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "OCT_2025"]
