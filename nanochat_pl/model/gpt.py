"""The GPT backbone, a plain nn.Module (no Lightning): nanochat HEAD's architecture, 2026 parts switchable.

Always (both recipes, nanochat gpt.py@dfc8833 and @92d63d4):
- rotary position embeddings (RoPE, arXiv 2104.09864) and no learned ones; QK-norm; ReLU² MLP (4x); no biases anywhere;
- parameter-free RMSNorm before every block, right after the token embedding and before lm_head;
- untied token embedding / lm_head; grouped-query attention through n_kv_head;
- logits soft-capped to 15·tanh(z/15) in fp32; vocabulary padded to a multiple of 64.
2026 additions (GPTConfig switches, all on by default; `OCT_2025` turns them off): sliding windows, RoPE base
100k, q,k scaled by 1.2, gated value embeddings, per-layer residual scalars, smear and backout.

Precision: parameters are fp32 (master weights). Under `torch.autocast(..., torch.bfloat16)` (Lightning's
"bf16-mixed") the matmuls run in bf16, the residual stream stays fp32, the rotary tables are cast to the
activation dtype and the logits are cast to fp32 before the softcap and the loss.

Build large models on the meta device, then materialise: `model.to_empty(device=...)`, `model.init_weights()`
(which also rebuilds the non-persistent rotary tables, so call it before `load_state_dict` too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nanochat_pl.common import UserError
from nanochat_pl.model.attention import KERNELS, attention
from nanochat_pl.model.kv_cache import KVCache

LOGIT_SOFTCAP = 15.0  # 15·tanh(z/15): both recipes
VE_GATE_CHANNELS = 12  # the value-embedding gate reads the first 12 channels of the block's normed input
SMEAR_CHANNELS = 24  # the smear gate reads the first 24 channels of the token's normed embedding
ROTARY_LEN_FACTOR = 10  # rotary tables cover 10x sequence_len positions, as nanochat (cheap; room to decode)

# nanochat's October 2025 architecture (gpt.py@dfc8833) as overrides of the HEAD defaults:
# GPTConfig.from_depth(20, vocab_size=65536, **OCT_2025) has its 560,988,160 parameters.
OCT_2025 = dict(
    window_pattern="L",
    rope_base=10_000.0,
    qk_scale=1.0,
    value_embeds=False,
    residual_scalars=False,
    smear=False,
    backout=False,
)


@dataclass
class GPTConfig:
    """Shape and recipe of a GPT. Plain typed fields so YAML/jsonargparse can fill it.

    Attributes:
        sequence_len: training context T (sets the short window and the rotary table length).
        vocab_size: the tokenizer's vocabulary; embeddings/lm_head are padded to a multiple of `pad_vocab_to`.
        n_layer: number of transformer blocks (the depth); 0: the normed embedding straight into lm_head, a bigram.
        n_head: query heads.
        n_kv_head: key/value heads (GQA when < n_head; must divide n_head).
        n_embd: model width (n_head · head_dim).
        window_pattern: per-layer attention windows, "S" short / "L" full, tiled over the layers; the last
            layer is always "L". "L" = October behaviour (full causal attention everywhere).
        short_window: the "S" window (a query at position i sees keys i-window..i); None derives nanochat's
            ceil(T/4/128)·128 (512 at T=2048).
        rope_base: RoPE base θ (100,000 HEAD, 10,000 October).
        qk_scale: q and k are multiplied by this after QK-norm (1.2 HEAD "sharper attention", 1.0 October).
        value_embeds: ResFormer-style value embeddings on alternating layers (the last always), gated.
        residual_scalars: x = resid_λ[i]·x + x0_λ[i]·x0 before every block (x0 = normed embedding).
        smear: mix the previous token's embedding into each token's embedding through a learned gate.
        backout: subtract λ·(residual after block n_layer//2) before the final norm.
        pad_vocab_to: pad the vocabulary rows to a multiple of this (tensor cores, sharded optimizer).
    """

    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"
    short_window: int | None = None
    rope_base: float = 100_000.0
    qk_scale: float = 1.2
    value_embeds: bool = True
    residual_scalars: bool = True
    smear: bool = True
    backout: bool = True
    pad_vocab_to: int = 64

    def __post_init__(self):
        for name in ("sequence_len", "vocab_size", "n_head", "n_kv_head", "n_embd", "pad_vocab_to"):
            if getattr(self, name) < 1:
                raise UserError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_layer < 0 or (self.n_layer == 0 and self.backout):  # 0: embeddings into the head, a bigram model
            raise UserError(f"GPTConfig.n_layer must be positive, or 0 without backout, got {self.n_layer}")
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise UserError(
                f"need n_embd % n_head == 0 and n_head % n_kv_head == 0, got n_embd={self.n_embd} "
                f"n_head={self.n_head} n_kv_head={self.n_kv_head}"
            )
        if self.head_dim % 2:
            raise UserError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise UserError(f"window_pattern must be made of S and L, got {self.window_pattern!r}")
        if self.short_window is not None and self.short_window < 1:
            raise UserError(f"short_window must be positive, got {self.short_window}")
        gate_channels = SMEAR_CHANNELS if self.smear else VE_GATE_CHANNELS if self.value_embeds else 1
        if self.n_embd < gate_channels:
            raise UserError(f"n_embd={self.n_embd} is narrower than the smear or value-embedding gate's input")

    @classmethod
    def from_depth(
        cls,
        depth: int,
        vocab_size: int = 32768,
        sequence_len: int = 2048,
        aspect_ratio: int = 64,
        head_dim: int = 128,
        **overrides,
    ) -> GPTConfig:
        """The model nanochat HEAD builds for `depth` (base_train.py@92d63d4): width
        ceil(depth·aspect_ratio/head_dim)·head_dim, one head per head_dim channels, n_kv_head = n_head.
        d20 -> 1280 wide, 10 heads. `overrides` set any other field (e.g. **OCT_2025, n_kv_head)."""
        if depth < 1 or aspect_ratio < 1 or head_dim < 1:
            raise UserError(f"depth, aspect_ratio, head_dim must be positive: {depth}, {aspect_ratio}, {head_dim}")
        model_dim = math.ceil(depth * aspect_ratio / head_dim) * head_dim
        n_head = model_dim // head_dim
        fields = dict(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth)
        fields.update(n_head=n_head, n_kv_head=n_head, n_embd=model_dim)
        return cls(**(fields | overrides))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_to) * self.pad_vocab_to

    def layer_windows(self) -> list[int | None]:
        """Each layer's attention window (None: full causal context), nanochat's tiling rule."""
        short = self.short_window or math.ceil(self.sequence_len / 4 / 128) * 128
        pattern = self.window_pattern.upper()
        last = self.n_layer - 1  # the last layer always sees the whole context
        return [short if pattern[i % len(pattern)] == "S" and i < last else None for i in range(self.n_layer)]

    def has_value_embed(self, layer: int) -> bool:
        """Value embeddings sit on every other layer, counted back from the last (which always has one)."""
        return self.value_embeds and layer % 2 == (self.n_layer - 1) % 2


def norm(x: Tensor) -> Tensor:  # parameter-free RMSNorm
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float, device: torch.device | None = None):
    """cos and sin of the angles t·base^(-2i/head_dim) of channel pair i at position t, each (seq_len, head_dim/2)."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the channel pairs (i, i + D/2) of x (B, H, T, D) by -angle, nanochat's convention (gpt.py@92d63d4):
    for training the same as +angle (only q·k's relative rotation matters), and nanochat's checkpoints load. The
    tables are cast to x's dtype, so under bf16 autocast q and k stay bf16 as the matmuls produced them."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Linear(nn.Linear):
    """nn.Linear whose weight meets its input's dtype, as nanochat HEAD's (gpt.py@92d63d4): fp32 master weights
    serve bf16 activations without autocast (stages/precision.py); when the dtypes match it is nn.Linear."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.window = config.layer_windows()[layer_idx]
        self.kernel = "auto"  # the attention kernel (attention.py); GPT.set_attention_kernel sets every layer's
        self.qk_scale = config.qk_scale
        kv_dim = config.n_kv_head * config.head_dim
        self.c_q = Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = Linear(config.n_embd, kv_dim, bias=False)
        self.c_v = Linear(config.n_embd, kv_dim, bias=False)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=False)
        # one gate per kv head, read from the first channels of the block's normed input (gpt.py@92d63d4)
        has_ve = config.has_value_embed(layer_idx)
        self.ve_gate = Linear(VE_GATE_CHANNELS, config.n_kv_head, bias=False) if has_ve else None

    def forward(self, x: Tensor, ve: Tensor | None, cos: Tensor, sin: Tensor, kv_cache: KVCache | None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value residual (ResFormer): v += 3·sigmoid(W_gate·x[:12])·VE(idx)
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, n_kv_head)
            v = v + (gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)).to(v.dtype)
        v = v.transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # back to the activations' dtype: CUDA autocast runs rms_norm in fp32, and fp32 q, k would make decoding
        # convert every layer's whole bf16 cache to fp32 each step (and training pad and copy fp32 q, k)
        q, k = (norm(q) * self.qk_scale).to(v.dtype), (norm(k) * self.qk_scale).to(v.dtype)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer_idx, k, v)
            # a no-op when the cache is allocated in the compute dtype (the engine's); converts any other
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = attention(q, k, v, self.window, self.kernel)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU² (nanochat, both versions)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, ve: Tensor | None, cos: Tensor, sin: Tensor, kv_cache: KVCache | None):
        x = x + self.attn(norm(x), ve, cos, sin, kv_cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """The language model. Parameter names follow nanochat's (transformer.wte, transformer.h.{i}.attn.c_q,
    lm_head, value_embeds.{i}, resid_lambdas, ...) so its checkpoints map over key for key."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V, C = config.padded_vocab_size, config.n_embd
        blocks = [Block(config, i) for i in range(config.n_layer)]
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(V, C), h=nn.ModuleList(blocks)))
        self.lm_head = Linear(C, V, bias=False)
        kv_dim = config.n_kv_head * config.head_dim
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(V, kv_dim) for i in range(config.n_layer) if config.has_value_embed(i)}
        )
        # Tensors made here are placeholders when built on the meta device: init_weights() sets the values.
        if config.residual_scalars:
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        if config.smear:
            self.smear_gate = Linear(SMEAR_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.backout_layer = config.n_layer // 2
        cos, sin = rotary_tables(ROTARY_LEN_FACTOR * config.sequence_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)  # derived from the config: not checkpointed
        self.register_buffer("sin", sin, persistent=False)

    def set_attention_kernel(self, kernel: str) -> None:
        """A run-time choice, not part of the architecture: every kernel gives the same outputs."""
        if kernel not in KERNELS:
            raise UserError(f"attention kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        for block in self.transformer.h:
            block.attn.kernel = kernel

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat HEAD's initialisation (gpt.py@92d63d4 init_weights): uniform rather than normal matrices to
        avoid outliers, zero output projections (every block starts as identity), gates just above their
        midpoint. Also rebuilds the rotary tables on the parameters' device."""
        cfg = self.config
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.8)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = math.sqrt(3) / math.sqrt(cfg.n_embd)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
        for embedding in self.value_embeds.values():
            nn.init.uniform_(embedding.weight, -bound, bound)
        if cfg.residual_scalars:
            depth_frac = torch.arange(cfg.n_layer, dtype=torch.float32) / max(cfg.n_layer - 1, 1)
            self.resid_lambdas.copy_(1.15 - 0.10 * depth_frac)
            self.x0_lambdas.copy_(0.20 - 0.15 * depth_frac)
        if cfg.smear:
            nn.init.zeros_(self.smear_lambda)
            nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
        if cfg.backout:
            nn.init.constant_(self.backout_lambda, 0.2)
        device = self.transformer.wte.weight.device
        self.cos, self.sin = rotary_tables(self.cos.size(0), cfg.head_dim, cfg.rope_base, device=device)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
        loss_reduction: str = "mean",
        last_only: bool = False,
        hidden_only: bool = False,
    ) -> Tensor:
        """Token ids idx (B, T) -> fp32 logits (B, T, vocab_size), or with `targets` (B, T; -1 ignored) the
        cross-entropy, per token (B, T) for loss_reduction "none" (bpb, RL). With a `kv_cache`, idx are the next T
        tokens of every row: they attend to everything cached and the cache advances by T. Without targets,
        `last_only` reads out the last position only (for a long prompt the readout costs more than the blocks of
        a small model); `hidden_only` returns the final normed hidden states, for `readout` of the few positions
        CORE scores."""
        B, T = idx.shape
        pos = 0 if kv_cache is None else kv_cache.pos
        if pos + T > self.cos.size(0):  # reachable from the Hugging Face export, whose callers give any length
            raise UserError(f"{pos + T} positions exceed the model's rotary table of {self.cos.size(0)}")
        cos, sin = self.cos[pos : pos + T], self.sin[pos : pos + T]

        x = norm(self.transformer.wte(idx))
        if self.config.smear:
            x = self._smear(x, kv_cache)
        x0 = x
        x_mid = None
        for i, block in enumerate(self.transformer.h):
            if self.config.residual_scalars:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, kv_cache)
            if i == self.backout_layer:
                x_mid = x
        if self.config.backout:  # remove the low-level features of the middle layer before the readout
            x = x - self.backout_lambda.to(x.dtype) * x_mid
        x = norm(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if last_only and targets is None:
            x = x[:, -1:]
        if hidden_only and targets is None:
            return x

        logits = self.readout(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=loss_reduction)
        return loss.view(B, T) if loss_reduction == "none" else loss

    def readout(self, x: Tensor) -> Tensor:
        """Final normed hidden states (..., n_embd) -> soft-capped fp32 logits (..., vocab_size)."""
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)

    def _smear(self, x: Tensor, kv_cache: KVCache | None) -> Tensor:
        """x[t] += λ·sigmoid(W·x[t, :24])·x[t-1] on the normed embeddings (nanochat HEAD smear, a cheap
        bigram signal). The first token of a sequence has no predecessor; while decoding, the predecessor
        of the first new token is the cache's `prev_embedding`, so cached and full passes agree."""
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))
        if kv_cache is not None:
            if kv_cache.prev_embedding is not None:
                prev = torch.cat([kv_cache.prev_embedding.to(x.dtype), x[:, :-1]], dim=1)
            kv_cache.prev_embedding = x[:, -1:]
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))
        return x + gate * prev

    def new_kv_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache on the model's device, in `dtype` or the parameters' (bf16 halves its memory)."""
        weight, cfg = self.transformer.wte.weight, self.config
        return KVCache(
            batch_size, cfg.n_layer, cfg.n_kv_head, cfg.head_dim, max_len, weight.device, dtype or weight.dtype
        )

    def param_families(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the optimizer family that updates them (nanochat gpt.py@92d63d4 setup_optimizer): AdamW's,
        but "matrices" (everything under transformer.h, the value-embedding gates included) is Muon's."""
        cfg = self.config
        scalars = [self.smear_gate.weight, self.smear_lambda] if cfg.smear else []
        scalars += [self.backout_lambda] if cfg.backout else []
        families = dict(
            lm_head=[self.lm_head.weight],
            wte=[self.transformer.wte.weight],
            value_embeds=list(self.value_embeds.parameters()),
            resid_lambdas=[self.resid_lambdas] if cfg.residual_scalars else [],
            x0_lambdas=[self.x0_lambdas] if cfg.residual_scalars else [],
            scalars=scalars,
            matrices=list(self.transformer.h.parameters()),
        )
        families = {name: params for name, params in families.items() if params}
        assert sum(map(len, families.values())) == len(list(self.parameters())), "a parameter has no family"
        return families

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_scaling_params(self) -> int:
        """Block matrices + lm_head: the count nanochat's scaling laws and horizon use (embeddings are lookups)."""
        families = self.param_families()
        return sum(p.numel() for p in families.get("matrices", []) + families["lm_head"])

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), nanochat HEAD's estimate_flops: 6 per weight of
        every Linear (lm_head and the small gates included; embedding lookups excluded) plus attention's
        12·n_head·head_dim·min(window, T) per layer (PaLM, arXiv 2204.02311)."""
        T = seq_len or self.config.sequence_len
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        cfg = self.config
        attn = sum(12 * cfg.n_head * cfg.head_dim * min(w or T, T) for w in cfg.layer_windows())
        return 6 * matmul_params + attn
