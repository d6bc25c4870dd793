"""A nanochat-pl GPT as a transformers causal LM, loaded as remote code (`trust_remote_code=True`): the network is
nanochat-pl's own `GPT` (copied next to this file at export), adapted to transformers' loading, loss and `generate`.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_nanochat_pl import NanochatPLConfig
from .gpt import GPT, rotary_tables
from .kv_cache import KVCache

# transformers 5.24 renamed `past_key_values` to `cache`: use the name this version's outputs carry
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GrowingKVCache(KVCache):
    """nanochat-pl's KV cache, doubling whenever a write would overflow it (transformers does not say how long a
    sequence will get). The first forward with use_cache creates one; generate passes it back on every step."""

    # generate asks this on Apple's MPS before deferring its stop check; rolling a step back is not supported
    is_croppable = False

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        if end > self.max_len:  # layer 0 grows it before anything of this step is written
            self.max_len = max(end, 2 * self.max_len)
            for name in ("k", "v"):
                old = getattr(self, name)  # (layer, batch, kv_head, time, head_dim)
                new = old.new_zeros((*old.shape[:3], self.max_len, old.size(4)))
                new[:, :, :, : self.pos] = old[:, :, :, : self.pos]
                setattr(self, name, new)
        return super().append(layer, k, v)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows beam search chose: generate calls this after every step when num_beams > 1."""
        self.k, self.v = self.k.index_select(1, beam_idx), self.v.index_select(1, beam_idx)
        if self.prev_embedding is not None:
            self.prev_embedding = self.prev_embedding.index_select(0, beam_idx)


class NanochatPLForCausalLM(PreTrainedModel, GenerationMixin):
    """nanochat-pl's GPT under `self.model`: the weights are its state dict, keys prefixed "model."."""

    config_class = NanochatPLConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]  # device_map="auto" keeps each transformer block on one device

    def __init__(self, config: NanochatPLConfig):
        super().__init__(config)
        self.model = GPT(config.gpt_config())
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Compute the rotary tables, which are not saved; every other tensor comes from model.safetensors."""
        if isinstance(module, GPT):
            cfg = module.config
            cos, sin = rotary_tables(module.cos.size(0), cfg.head_dim, cfg.rope_base, device=module.cos.device)
            module.cos.copy_(cos)
            module.sin.copy_(sin)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No transformers DynamicCache: GPT writes to the KVCache interface, so forward makes a GrowingKVCache."""
        return False

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: GrowingKVCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: GrowingKVCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """fp32 logits (B, T, vocab_size), and transformers' causal-LM loss with `labels`. attention_mask: right
        padding is harmless under causal attention (lm-eval pads on the right); left padding would need per-row
        positions, which GPT does not take, and is refused. Other keywords transformers passes have no effect."""
        cache = cache if cache is not None else past_key_values
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError(
                "NanochatPLForCausalLM: a row of attention_mask has a 0 before a 1 (left padding); nanochat's GPT has "
                "no per-row positions: pad on the right, and generate from prompts of one length or one at a time."
            )
        if (self.config.use_cache if use_cache is None else use_cache) and cache is None:
            cfg, weight = self.model.config, self.model.transformer.wte.weight
            shape = (input_ids.size(0), cfg.n_layer, cfg.n_kv_head, cfg.head_dim, input_ids.size(1))
            cache = GrowingKVCache(*shape, device=weight.device, dtype=weight.dtype)
        hidden = self.model(input_ids, kv_cache=cache, hidden_only=True)
        logits = self.model.readout(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache})

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, past_key_values=None, attention_mask=None, use_cache=True, logits_to_keep=0, **_
    ) -> dict:
        """With a cache, only the tokens it has not seen; the other keywords concern transformers' own caches."""
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            input_ids = input_ids[:, cache.pos :]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
        return inputs | {"logits_to_keep": logits_to_keep, CACHE_NAME: cache}
