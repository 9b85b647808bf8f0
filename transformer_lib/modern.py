"""Chapter 14 — what changed since 2017: four refinements that most models trained since carry.

Each is a switch of ``ModernConfig`` on chapter 13's decoder-only language model (``ModernLM``):

* ``norm="rms"``: **RMSNorm** (Zhang & Sennrich, 2019) divides by the root mean square of the
  features and scales; LayerNorm also subtracts the mean and adds a bias.
* ``ffn="swiglu"``: the **SwiGLU** feed-forward network (Shazeer, 2020), ``W2 (silu(x W1) * x W3)``:
  a gated hidden layer, two-thirds as wide, so that it has as many weights as the ReLU network.
* ``positions="rope"``: **rotary position embeddings** (Su et al., 2021). Nothing is added to the
  token vectors; inside attention, each pair of query and key features is rotated by an angle
  proportional to the position, so that the score of a query at m and a key at n depends on m - n only.
* ``kv_heads=g``: **grouped-query attention** (Ainslie et al., 2023): only ``g`` key/value heads, each
  shared by ``h / g`` query heads (``g = 1`` is multi-query attention, Shazeer, 2019). The key/value
  cache of decoding shrinks by the factor ``h / g``.

With every switch off, ``ModernLM`` computes what ``LanguageModel`` computes (the same weights give
the same logits). ``REFINEMENTS`` lists the ablation runs of ``benchmarks/modern_ablations.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_choice, check_divisible, check_fraction, check_positive, check_positive_ints
from .lm import LanguageModel, LMCache, LMConfig
from .multihead import MultiHeadAttention, merge_heads, split_heads

__all__ = [
    "RMSNorm",
    "swiglu_hidden",
    "SwiGLU",
    "rotary_angles",
    "RotaryEmbedding",
    "GroupedQueryAttention",
    "ModernConfig",
    "ModernLM",
    "cache_bytes",
    "REFINEMENTS",
]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension: LayerNorm without mean and bias."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        check_positive_ints(d_model=d_model)
        check_positive(eps=eps)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d_model)`` -> same shape and dtype; computed in float32 whatever the input's dtype."""
        inv_rms = x.float().pow(2).mean(dim=-1, keepdim=True).add(self.eps).rsqrt()  # (..., 1)
        return (x.float() * inv_rms * self.weight).to(x.dtype)


def swiglu_hidden(d_ff: int, multiple: int = 8) -> int:
    """The SwiGLU width with the weights of a ReLU network of width ``d_ff``: 2/3 of it, rounded to ``multiple``."""
    check_positive_ints(d_ff=d_ff, multiple=multiple)
    return max(multiple, multiple * round(2 * d_ff / 3 / multiple))


class SwiGLU(nn.Module):
    """FFN(x) = W2 (silu(x W1) * x W3), no biases: the gate ``silu(x W1)`` scales each hidden feature."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        check_positive_ints(d_model=d_model, d_hidden=d_hidden)
        check_fraction(dropout=dropout)
        self.w_1 = nn.Linear(d_model, d_hidden, bias=False)  # the gate
        self.w_3 = nn.Linear(d_model, d_hidden, bias=False)  # the value it gates
        self.w_2 = nn.Linear(d_hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, len, d_model)`` -> same shape, through a ``d_hidden`` gated layer."""
        return self.w_2(self.dropout(F.silu(self.w_1(x)) * self.w_3(x)))  # (batch, len, d_hidden) -> d_model


def rotary_angles(max_len: int, d_k: int, base: float = 10000.0) -> Tensor:
    """``(max_len, d_k // 2)``: the angle ``m * base^(-2i / d_k)`` by which RoPE turns pair i at position m."""
    check_positive_ints(max_len=max_len, d_k=d_k)
    check_positive(base=base)
    if d_k % 2:
        raise ValueError(f"rotary embeddings turn pairs of features: d_k must be even, got d_k={d_k}")
    inv_freq = base ** (-torch.arange(0, d_k, 2, dtype=torch.float64) / d_k)  # (d_k // 2,): theta_i
    return torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq  # (max_len, d_k // 2)


class RotaryEmbedding(nn.Module):
    """Turn the feature pairs (2i, 2i + 1) of queries or keys by the angle of their position.

    The frequencies are those of chapter 3's sinusoids; the tables are buffers, not parameters.
    """

    def __init__(self, d_k: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        angles = rotary_angles(max_len, d_k, base)  # (max_len, d_k // 2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """``x`` ``(..., len, d_k)`` holds positions ``start .. start + len - 1``; returns them rotated."""
        length, max_len = x.size(-2), self.cos.size(0)
        if x.size(-1) != 2 * self.cos.size(1):
            raise ValueError(f"expected vectors of size d_k={2 * self.cos.size(1)}, got shape {tuple(x.shape)}")
        if start < 0 or start + length > max_len:
            raise ValueError(f"positions {start}..{start + length - 1} exceed the rotary table's max_len={max_len}")
        cos = self.cos[start : start + length].to(x.dtype)  # (len, d_k // 2)
        sin = self.sin[start : start + length].to(x.dtype)  # (len, d_k // 2)
        even, odd = x[..., 0::2], x[..., 1::2]  # (..., len, d_k // 2): the two coordinates of every pair
        turned = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (..., len, d_k // 2, 2)
        return turned.flatten(-2)  # (..., len, d_k): the pairs interleaved again


class GroupedQueryAttention(MultiHeadAttention):
    """Self-attention with ``kv_heads`` key/value heads, each shared by ``num_heads // kv_heads`` query heads.

    ``kv_heads == num_heads`` is chapter 5's multi-head attention (the same weights give the same
    result); ``kv_heads == 1`` is multi-query attention. With ``rope`` the queries and keys are rotated
    by their positions after the projection.
    """

    def __init__(
        self, d_model: int, num_heads: int, kv_heads: int, dropout: float = 0.0, rope: RotaryEmbedding | None = None
    ) -> None:
        super().__init__(d_model, num_heads, dropout=dropout)
        _check_kv_heads(num_heads, kv_heads)
        self.kv_heads = kv_heads
        self.W_K = nn.Linear(d_model, kv_heads * self.d_k)  # (d_model -> kv_heads * d_k)
        self.W_V = nn.Linear(d_model, kv_heads * self.d_k)
        self.rope = rope

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Self-attention of ``query`` ``(batch, len, d_model)`` (``key`` and ``value`` must be ``query``)."""
        if key is not query or value is not query:
            raise ValueError("GroupedQueryAttention is self-attention: pass the same tensor as query, key and value")
        Q, K, V = self.project(query)
        return self.mix(Q, K, V, mask)  # (batch, len, d_model)

    def project(self, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``(batch, heads, len, d_k)``, keys and values ``(batch, kv_heads, len, d_k)``, from ``start`` on."""
        Q = split_heads(self.W_Q(x), self.num_heads)  # (batch, heads, len, d_k)
        K = split_heads(self.W_K(x), self.kv_heads)  # (batch, kv_heads, len, d_k)
        V = split_heads(self.W_V(x), self.kv_heads)  # (batch, kv_heads, len, d_k)
        if self.rope is not None:
            Q, K = self.rope(Q, start), self.rope(K, start)  # the values are not rotated
        return Q, K, V

    def mix(self, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> Tensor:
        """Attend with every key/value head repeated for its group of query heads, then W_O."""
        group = self.num_heads // self.kv_heads
        K = K.repeat_interleave(group, dim=1)  # (batch, heads, k_len, d_k): head j reads kv head j // group
        V = V.repeat_interleave(group, dim=1)  # (batch, heads, k_len, d_k)
        return self.W_O(merge_heads(self.attend(Q, K, V, mask)))  # (batch, q_len, d_model)


def _check_kv_heads(num_heads: int, kv_heads: int) -> None:
    check_positive_ints(kv_heads=kv_heads)
    if num_heads % kv_heads:
        raise ValueError(
            f"each key/value head serves a whole group: {num_heads} heads must be divisible by kv_heads={kv_heads}"
        )


@dataclass
class ModernConfig(LMConfig):
    """Chapter 13's ``LMConfig`` plus one switch per refinement; the defaults are the 2017 choices."""

    norm: str = "layer"  # or "rms"
    ffn: str = "relu"  # or "swiglu"
    positions: str = "sinusoidal"  # or "rope"
    kv_heads: int | None = None  # key/value heads; None: h (multi-head), 1: multi-query
    tie: bool = True  # the output layer shares the embedding matrix (chapter 13)
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("norm", self.norm, ("layer", "rms"))
        check_choice("ffn", self.ffn, ("relu", "swiglu"))
        check_choice("positions", self.positions, ("sinusoidal", "rope"))
        check_divisible(self.d_model, self.h, "h")
        if self.kv_heads is not None:
            _check_kv_heads(self.h, self.kv_heads)
        if self.positions == "rope" and (self.d_model // self.h) % 2:
            raise ValueError(f"RoPE turns pairs of features: d_model / h = {self.d_model // self.h} must be even")


class ModernLM(LanguageModel):
    """Chapter 13's language model with the refinements that ``config`` switches on."""

    def __init__(self, config: ModernConfig) -> None:
        super().__init__(config)
        c = config
        rope = RotaryEmbedding(c.d_model // c.h, c.max_len, c.rope_base) if c.positions == "rope" else None
        if rope is not None:
            self.pos = nn.Dropout(c.dropout)  # nothing is added to the tokens: attention turns q and k
        for layer in self.blocks.layers:
            layer.self_attn = GroupedQueryAttention(c.d_model, c.h, c.kv_heads or c.h, c.dropout, rope)
            if c.ffn == "swiglu":
                layer.feed_forward = SwiGLU(c.d_model, swiglu_hidden(c.d_ff), c.dropout)
            if c.norm == "rms":
                for sublayer in layer.sublayer:
                    sublayer.norm = RMSNorm(c.d_model)
        if c.norm == "rms":
            self.blocks.norm = RMSNorm(c.d_model)
        if not c.tie:
            self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for p in self.parameters():  # every variant starts from the same kind of weights
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def next_token_logits(self, cache: LMCache, last_tokens: Tensor) -> Tensor:
        """Chapter 13's cached step; the cache keeps ``kv_heads`` heads, RoPE turns the new position."""
        position = cache.length
        self._check_length(position + 1)
        x = self.embed(last_tokens[:, None])  # (batch, 1, d_model)
        if self.config.positions == "rope":
            x = self.pos(x)  # dropout only
        else:
            x = self.pos.dropout(x + self.pos.pe[position].to(x.dtype))
        for i, layer in enumerate(self.blocks.layers):

            def self_attention(y: Tensor, attn: GroupedQueryAttention = layer.self_attn, i: int = i) -> Tensor:
                Q, K, V = attn.project(y, start=position)  # (batch, heads | kv_heads, 1, d_k)
                K, V = cache.append(i, K, V)  # (batch, kv_heads, t + 1, d_k): only kv_heads heads are kept
                return attn.mix(Q, K, V, None)  # (batch, 1, d_model)

            x = layer.sublayer[0](x, self_attention)  # (batch, 1, d_model)
            x = layer.sublayer[1](x, layer.feed_forward)  # (batch, 1, d_model)
        return self.head(self.blocks.norm(x))[:, 0]  # (batch, vocab)


def cache_bytes(cache: LMCache) -> int:
    """The bytes of every key and value tensor a cache holds."""
    tensors = [t for t in cache.self_keys + cache.self_values if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


# One run per refinement in benchmarks/modern_ablations.py: (description, ModernConfig changes).
REFINEMENTS: dict[str, tuple[str, dict]] = {
    "base": ("2017: LayerNorm, ReLU, sinusoidal, 4 kv heads, tied", {}),
    "rmsnorm": ("RMSNorm", {"norm": "rms"}),
    "swiglu": ("SwiGLU feed-forward", {"ffn": "swiglu"}),
    "rope": ("rotary positions", {"positions": "rope"}),
    "gqa_2": ("grouped-query, 2 kv heads", {"kv_heads": 2}),
    "mqa_1": ("multi-query, 1 kv head", {"kv_heads": 1}),
    "untied": ("untied output layer", {"tie": False}),
    "modern": (
        "all four: RMSNorm, SwiGLU, RoPE, 2 kv heads",
        {"norm": "rms", "ffn": "swiglu", "positions": "rope", "kv_heads": 2},
    ),
}
