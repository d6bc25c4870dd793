"""A nanochat-pl GPT as a transformers causal LM, loaded as remote code (`trust_remote_code=True`).

The network is nanochat-pl's own `GPT` (`gpt.py`, `rotary.py`, `kv_cache.py`, copied next to this file at export),
not a re-implementation: value embeddings, residual scalars, smear, backout, sliding windows and qk_scale compute
exactly as in training. This file only adapts it to transformers: `PreTrainedModel` loading, a `forward` that
returns `CausalLMOutputWithPast` (with the loss when given labels), and KV-cached `generate`.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_nanochat_pl import NanochatPLConfig
from .gpt import GPT
from .kv_cache import KVCache
from .rotary import rotary_tables

# transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache` (the old name is
# deprecated until 5.40): use the name this version's outputs carry, so generate finds the cache it passes back
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GrowingKVCache(KVCache):
    """nanochat-pl's KV cache (`append`, `advance`, `pos`, `batch_size`, `prev_embedding`: what GPT writes and
    reads), growing as generate feeds it. transformers does not tell the model how long a sequence will get, so
    the capacity doubles whenever a write would overflow it: amortised O(1) copying per token.

    generate makes no cache of its own for this model (`_supports_default_dynamic_cache` is False): the first
    forward with use_cache creates one, returns it in the output, and generate passes it back on every step."""

    # generate asks this on Apple's MPS before deferring its stop check; rolling a step back is not supported
    is_croppable = False

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        if end > self.max_len:  # layer 0 grows it before anything of this step is written
            self._grow(max(end, 2 * self.max_len))
        return super().append(layer, k, v)

    def _grow(self, max_len: int) -> None:
        for name in ("k", "v"):
            old = getattr(self, name)  # (layer, batch, kv_head, time, head_dim)
            new = old.new_zeros((*old.shape[:3], max_len, old.size(4)))
            new[:, :, :, : self.pos] = old[:, :, :, : self.pos]
            setattr(self, name, new)
        self.max_len = max_len

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
        """Compute the rotary tables: they derive from the config and are not saved (non-persistent buffers), and
        transformers 5 builds the model on the meta device before loading the weights. Every other tensor comes
        from model.safetensors; a model built from a bare config keeps torch's default initialisation (train with
        nanochat-pl, which initialises as nanochat does)."""
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
        """fp32 logits (B, T, vocab_size), soft-capped, exactly as nanochat-pl's GPT computes them; with `labels`
        also transformers' causal-LM loss (labels are the inputs, shifted inside; -100 is ignored).

        attention_mask: causal attention makes right padding harmless (the logits of the real tokens do not depend
        on pad tokens after them; lm-eval pads its loglikelihood batches on the right), so a mask whose rows are
        ones then zeros is accepted and has no other effect. A zero before a one (left padding, or decoding on
        after right padding) would need per-row positions, which GPT does not take: that is refused with a
        ValueError rather than answered with wrong logits. Batch only prompts of one length, or generate one by one.

        cache (`past_key_values` before transformers 5.24): the GrowingKVCache of earlier calls; input_ids are then
        only the tokens it has not seen. use_cache (default config.use_cache) makes a cache when none is given.
        logits_to_keep > 0: the logits of that many last positions only (generate's prefill asks for 1).
        Other keyword arguments transformers passes (return_dict, output_attentions, ...) are accepted and have no
        effect: the output is always a CausalLMOutputWithPast, without hidden states or attention weights.
        """
        cache = cache if cache is not None else past_key_values
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError(
                "NanochatPLForCausalLM: a row of attention_mask has a 0 before a 1 (left padding, or generating after "
                "right padding); nanochat's GPT has no per-row positions. Pad on the right for scoring "
                "(tokenizer.padding_side = 'right'), and generate from prompts of one length or one at a time."
            )
        if use_cache is None:
            use_cache = self.config.use_cache
        if use_cache and cache is None:
            cfg = self.model.config
            weight = self.model.transformer.wte.weight
            batch_size, num_tokens = input_ids.shape
            cache = GrowingKVCache(
                batch_size,
                cfg.n_layer,
                cfg.n_kv_head,
                cfg.head_dim,
                num_tokens,
                device=weight.device,
                dtype=weight.dtype,
            )
        hidden = self.model(input_ids, kv_cache=cache, hidden_only=True)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.model.readout(hidden)
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: GrowingKVCache | None = None,
        past_key_values: GrowingKVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> dict:
        """What generate feeds forward at each step: with a cache only the tokens it has not seen yet (the whole
        prompt, then one new token per step), without one the whole sequence so far. The other keywords generate
        keeps (next_sequence_length, is_first_iteration, ...) concern transformers' own caches and are dropped."""
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            input_ids = input_ids[:, cache.pos :]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
            "logits_to_keep": logits_to_keep,
            CACHE_NAME: cache,
        }
