"""Chapter 5 — multi-head attention.

h heads each attend in their own d_k = d_model / h dimensional subspace; their outputs are
concatenated and mixed by W_O:

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O,  head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i).

All heads are computed at once: one (d_model -> d_model) projection, then ``split_heads`` reshapes
``(batch, len, d_model)`` into ``(batch, heads, len, d_k)``; head i owns the features
``[i * d_k, (i + 1) * d_k)`` of the projection, i.e. the rows of W_Q_i, W_K_i, W_V_i are stacked
in one big matrix.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import scaled_dot_product_attention
from .checks import check_divisible, check_fraction, check_multihead_inputs, check_positive_ints

__all__ = ["split_heads", "merge_heads", "fused_attention", "MultiHeadAttention", "keep_attention_weights"]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(batch, len, d_model)`` -> ``(batch, heads, len, d_k)`` with ``d_k = d_model // heads``.

    Head ``i`` gets the features ``x[..., i * d_k : (i + 1) * d_k]``.
    """
    check_positive_ints(num_heads=num_heads)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, len, d_model), got shape {tuple(x.shape)}")
    batch, length, d_model = x.shape
    check_divisible(d_model, num_heads)
    x = x.reshape(batch, length, num_heads, d_model // num_heads)  # (batch, len, heads, d_k)
    return x.transpose(1, 2)  # (batch, heads, len, d_k)


def merge_heads(x: Tensor) -> Tensor:
    """``(batch, heads, len, d_k)`` -> ``(batch, len, heads * d_k)``: the concatenation of the heads."""
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, heads, len, d_k), got shape {tuple(x.shape)}")
    batch, heads, length, d_k = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * d_k)  # (batch, len, d_model)


def fused_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention`` (PyTorch's fused kernels), with chapter 2's rule for empty rows.

    PyTorch's kernel returns NaN for a query whose keys are all masked; chapter 2's function returns
    a zero row. So such rows attend everywhere (no NaN, forward or backward), and their output is
    then set to zero. ``Q`` ``(batch, heads, q_len, d_k)``, ``K``/``V`` ``(batch, heads, k_len, d_k)``.
    """
    if mask is None:
        return F.scaled_dot_product_attention(Q, K, V, dropout_p=dropout_p)  # (batch, heads, q_len, d_k)
    has_key = mask.any(dim=-1, keepdim=True)  # (..., q_len, 1): rows with at least one visible key
    out = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask | ~has_key, dropout_p=dropout_p)
    return out.masked_fill(~has_key, 0.0)  # (batch, heads, q_len, d_k)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of size ``d_model // num_heads``.

    Args:
        d_model: model width.
        num_heads: number of heads h (the paper uses 8).
        dropout: dropout on the attention weights (training only).
        bias: whether the four projections have biases (``nn.MultiheadAttention`` has them).
        fused: use ``fused_attention`` (PyTorch's fused kernels) instead of the chapter-2 function;
            same results, but no weights are kept for plotting.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True, fused: bool = False):
        super().__init__()
        check_divisible(d_model, num_heads)
        check_fraction(dropout=dropout)
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.dropout, self.fused = dropout, fused
        self.W_Q = nn.Linear(d_model, d_model, bias=bias)
        self.W_K = nn.Linear(d_model, d_model, bias=bias)
        self.W_V = nn.Linear(d_model, d_model, bias=bias)
        self.W_O = nn.Linear(d_model, d_model, bias=bias)
        self.attn_weights: Tensor | None = None  # (batch, heads, q_len, k_len) of the last call

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend from ``query`` ``(batch, q_len, d_model)`` to ``key``/``value`` ``(batch, k_len, d_model)``.

        ``mask`` is boolean (True = may attend), broadcastable to ``(batch, heads, q_len, k_len)``;
        a 3-d mask ``(batch, q_len, k_len)`` is applied to every head. A query that may attend to no
        key gets a zero output row (before W_O). Returns ``(batch, q_len, d_model)``.
        """
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (batch, q_len, k_len) -> (batch, 1, q_len, k_len): same for every head
        check_multihead_inputs(query, key, value, mask, self.d_model, self.num_heads)
        Q = split_heads(self.W_Q(query), self.num_heads)  # (batch, heads, q_len, d_k)
        K = split_heads(self.W_K(key), self.num_heads)  # (batch, heads, k_len, d_k)
        V = split_heads(self.W_V(value), self.num_heads)  # (batch, heads, k_len, d_k)
        return self.W_O(merge_heads(self.attend(Q, K, V, mask)))  # (batch, q_len, d_model)

    def attend(self, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> Tensor:
        """Every head at once: ``(batch, heads, q_len, d_k)`` outputs, before the heads are merged."""
        p = self.dropout if self.training else 0.0
        if self.fused:
            self.attn_weights = None
            return fused_attention(Q, K, V, mask, dropout_p=p)
        out, weights = scaled_dot_product_attention(Q, K, V, mask, dropout_p=p)
        self.attn_weights = weights.detach()  # (batch, heads, q_len, k_len), for plotting
        return out


@contextlib.contextmanager
def keep_attention_weights(model: nn.Module) -> Iterator[None]:
    """Every ``MultiHeadAttention`` of ``model`` on chapter 2's function, keeping ``attn_weights`` (restored after)."""
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    fused = [m.fused for m in layers]
    try:
        for m in layers:
            m.fused = False
        yield
    finally:
        for m, f in zip(layers, fused):
            m.fused = f
