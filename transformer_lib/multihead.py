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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import scaled_dot_product_attention

__all__ = ["split_heads", "merge_heads", "MultiHeadAttention"]


def _check_positive_int(name: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(batch, len, d_model)`` -> ``(batch, heads, len, d_k)`` with ``d_k = d_model // heads``.

    Head ``i`` gets the features ``x[..., i * d_k : (i + 1) * d_k]``.
    """
    _check_positive_int("num_heads", num_heads)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, len, d_model), got shape {tuple(x.shape)}")
    batch, length, d_model = x.shape
    if d_model % num_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    x = x.reshape(batch, length, num_heads, d_model // num_heads)  # (batch, len, heads, d_k)
    return x.transpose(1, 2)  # (batch, heads, len, d_k)


def merge_heads(x: Tensor) -> Tensor:
    """``(batch, heads, len, d_k)`` -> ``(batch, len, heads * d_k)``: the concatenation of the heads."""
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, heads, len, d_k), got shape {tuple(x.shape)}")
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
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("d_model", d_model)
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

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> None:
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.size(-1) != self.d_model:
                raise ValueError(f"{name} must have shape (batch, len, d_model={self.d_model}), got {tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key and value must share (batch, k_len): key {tuple(key.shape)}, value {tuple(value.shape)}")
        if query.size(0) != key.size(0):
            raise ValueError(f"query and key must have the same batch size: query {tuple(query.shape)}, key {tuple(key.shape)}")
        if mask is not None:
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
            scores = (query.size(0), self.num_heads, query.size(1), key.size(1))  # (batch, heads, q_len, k_len)
            try:
                ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, scores) == torch.Size(scores)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not broadcast to (batch, heads, q_len, k_len) = {scores}"
                )

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend from ``query`` ``(batch, q_len, d_model)`` to ``key``/``value`` ``(batch, k_len, d_model)``.

        ``mask`` is boolean (True = may attend), broadcastable to ``(batch, heads, q_len, k_len)``;
        a 3-d mask ``(batch, q_len, k_len)`` is applied to every head. A query that may attend to no
        key gets a zero output row (before W_O). Returns ``(batch, q_len, d_model)``.
        """
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (batch, q_len, k_len) -> (batch, 1, q_len, k_len): same for every head
        self._check_inputs(query, key, value, mask)
        Q = split_heads(self.W_Q(query), self.num_heads)  # (batch, heads, q_len, d_k)
        K = split_heads(self.W_K(key), self.num_heads)  # (batch, heads, k_len, d_k)
        V = split_heads(self.W_V(value), self.num_heads)  # (batch, heads, k_len, d_k)
        p = self.dropout if self.training else 0.0
        if self.fused:
            has_key = None if mask is None else mask.any(dim=-1, keepdim=True)  # (..., q_len, 1)
            if has_key is not None:
                mask = mask | ~has_key  # rows with no visible key attend everywhere: no NaN, forward or backward
            out = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, dropout_p=p)  # (batch, heads, q_len, d_k)
            if has_key is not None:
                out = out.masked_fill(~has_key, 0.0)  # ...and then output zeros, as our own attention does
            self.attn_weights = None
        else:
            out, weights = scaled_dot_product_attention(Q, K, V, mask, dropout_p=p)  # (batch, heads, q_len, d_k)
            self.attn_weights = weights.detach()
        return self.W_O(merge_heads(out))  # (batch, q_len, d_model)
