"""Chapter 5 — multi-head attention.

h heads each attend in their own d_k = d_model / h dimensional subspace; their outputs are
concatenated and mixed by W_O:

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O,  head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i).

All heads are computed at once: one (d_model -> d_model) projection, then ``split_heads`` reshapes
``(batch, len, d_model)`` into ``(batch, heads, len, d_k)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import scaled_dot_product_attention

__all__ = ["split_heads", "merge_heads", "MultiHeadAttention"]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(batch, len, d_model)`` -> ``(batch, heads, len, d_k)`` with ``d_k = d_model // heads``."""
    batch, length, d_model = x.shape
    if d_model % num_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    x = x.view(batch, length, num_heads, d_model // num_heads)  # (batch, len, heads, d_k)
    return x.transpose(1, 2)  # (batch, heads, len, d_k)


def merge_heads(x: Tensor) -> Tensor:
    """``(batch, heads, len, d_k)`` -> ``(batch, len, heads * d_k)``: the concatenation of the heads."""
    batch, heads, length, d_k = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d_k)  # (batch, len, d_model)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of size ``d_model // num_heads``.

    Args:
        d_model: model width.
        num_heads: number of heads h (the paper uses 8).
        dropout: dropout on the attention weights (training only).
        bias: whether the four projections have biases (``nn.MultiheadAttention`` has them).
        fused: use ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused kernels)
            instead of the chapter-2 function; same results, but no weights are kept for plotting.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True, fused: bool = False):
        super().__init__()
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.dropout, self.fused = dropout, fused
        self.W_Q = nn.Linear(d_model, d_model, bias=bias)
        self.W_K = nn.Linear(d_model, d_model, bias=bias)
        self.W_V = nn.Linear(d_model, d_model, bias=bias)
        self.W_O = nn.Linear(d_model, d_model, bias=bias)
        self.attn_weights: Tensor | None = None  # (batch, heads, q_len, k_len) of the last call

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend from ``query`` ``(batch, q_len, d_model)`` to ``key``/``value`` ``(batch, k_len, d_model)``.

        ``mask`` is boolean (True = may attend), broadcastable to ``(batch, heads, q_len, k_len)``.
        Returns ``(batch, q_len, d_model)``.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.size(-1) != self.d_model:
                raise ValueError(f"{name} must have shape (batch, len, d_model={self.d_model}), got {tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key and value must share (batch, k_len): key {tuple(key.shape)}, value {tuple(value.shape)}")
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (batch, q_len, k_len) -> (batch, 1, q_len, k_len): same for every head
        Q = split_heads(self.W_Q(query), self.num_heads)  # (batch, heads, q_len, d_k)
        K = split_heads(self.W_K(key), self.num_heads)  # (batch, heads, k_len, d_k)
        V = split_heads(self.W_V(value), self.num_heads)  # (batch, heads, k_len, d_k)
        p = self.dropout if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, dropout_p=p)  # (batch, heads, q_len, d_k)
            if mask is not None:  # rows with no visible key: zeros, as in our own attention
                out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
            self.attn_weights = None
        else:
            out, weights = scaled_dot_product_attention(Q, K, V, mask, dropout_p=p)  # (batch, heads, q_len, d_k)
            self.attn_weights = weights.detach()
        return self.W_O(merge_heads(out))  # (batch, q_len, d_model)
