"""Chapter 2 — attention as queries, keys and values.

``scaled_dot_product_attention`` is the formula of the paper,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V,

written out step by step, with a boolean mask in the convention of
``torch.nn.functional.scaled_dot_product_attention``: ``True`` means *may attend*.

``Attention`` is the module of the chapter: it owns W_Q, W_K and W_V and attends
from a sequence X to a sequence X' (self-attention when X' is X).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_attention_inputs, check_fraction, check_positive_ints

__all__ = ["scaled_dot_product_attention", "Attention"]


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Compute softmax(Q K^T / sqrt(d_k)) V and return ``(output, weights)``.

    Args:
        query: ``(..., q_len, d_k)``.
        key: ``(..., k_len, d_k)``.
        value: ``(..., k_len, d_v)``.
        mask: optional boolean tensor broadcastable to ``(..., q_len, k_len)``;
            ``True`` = the query may attend to that key. The mask never enlarges the scores: a
            mask with more (or larger) batch dimensions than the inputs is an error, not a silent
            broadcast of the output.
        dropout_p: dropout probability applied to the attention weights, in ``[0, 1)``. Like
            ``torch.nn.functional.scaled_dot_product_attention``, the function always applies it
            when it is positive; a module passes ``0.0`` in evaluation mode.

    Returns:
        ``output`` of shape ``(..., q_len, d_v)`` and ``weights`` of shape ``(..., q_len, k_len)``.
        A query whose keys are all masked gets a zero output row and zero weights (never NaN).
    """
    check_attention_inputs(query, key, value, mask)
    check_fraction(dropout_p=dropout_p)
    d_k = query.size(-1)
    scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)  # (..., q_len, k_len)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # masked keys get -inf: exp(-inf) = 0
        has_key = mask.any(dim=-1, keepdim=True)  # (..., q_len, 1): rows with at least one visible key
        scores = scores.masked_fill(~has_key, 0.0)  # avoid softmax(-inf, ..., -inf) = NaN
    weights = torch.softmax(scores, dim=-1)  # (..., q_len, k_len), rows sum to 1
    if mask is not None:
        weights = weights.masked_fill(~has_key, 0.0)  # fully masked rows attend to nothing
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    output = weights @ value  # (..., q_len, d_v)
    return output, weights


class Attention(nn.Module):
    """Attn(X, X'): queries from X, keys and values from X' (self-attention when X' is X).

    Args:
        d_model: size of each vector of X.
        d_k: size of queries and keys (W_Q maps d_model -> d_k, W_K maps d_context -> d_k).
        d_v: size of values (W_V maps d_context -> d_v); defaults to ``d_k``.
        d_context: size of each vector of X'; defaults to ``d_model``.

    The projections are bias-free ``nn.Linear`` layers, so ``W_Q.weight`` has shape
    ``(d_k, d_model)``: the transpose of the ``(d_model, d_k)`` matrix W_Q in ``Q = X W_Q``.
    """

    def __init__(self, d_model: int, d_k: int, d_v: int | None = None, d_context: int | None = None) -> None:
        super().__init__()
        d_v = d_k if d_v is None else d_v
        d_context = d_model if d_context is None else d_context
        check_positive_ints(d_model=d_model, d_k=d_k, d_v=d_v, d_context=d_context)
        self.W_Q = nn.Linear(d_model, d_k, bias=False)
        self.W_K = nn.Linear(d_context, d_k, bias=False)
        self.W_V = nn.Linear(d_context, d_v, bias=False)

    def forward(self, x: Tensor, x_context: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend from ``x`` ``(..., len, d_model)`` to ``x_context`` ``(..., len', d_context)``.

        Returns ``(output, weights)`` with shapes ``(..., len, d_v)`` and ``(..., len, len')``.
        """
        x_context = x if x_context is None else x_context
        _check_features(x, self.W_Q.in_features, "x", "d_model")
        _check_features(x_context, self.W_K.in_features, "x_context", "d_context")
        Q = self.W_Q(x)  # (..., len, d_k)
        K = self.W_K(x_context)  # (..., len', d_k)
        V = self.W_V(x_context)  # (..., len', d_v)
        return scaled_dot_product_attention(Q, K, V, mask)


def _check_features(t: Tensor, size: int, name: str, size_name: str) -> None:
    """``t`` is ``(..., len, size)``: the input of a projection with ``size`` input features."""
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (..., len, features), got shape {tuple(t.shape)}")
    if t.size(-1) != size:
        raise ValueError(f"{name} has last dimension {t.size(-1)}, expected {size_name}={size}")
