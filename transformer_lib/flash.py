"""Chapter 10 — attention one block of keys at a time: the online softmax behind FlashAttention.

Chapter 2's attention builds the whole ``(q_len, k_len)`` score matrix, then its softmax, then
multiplies by the values. ``tiled_attention`` gives exactly the same result without ever holding
more than one ``(q_len, block)`` tile of scores: it walks over the keys block by block and keeps,
for every query, three running quantities —

* ``m``, the largest score seen so far (for a numerically safe exponential),
* ``denom``, the sum of ``exp(score - m)`` over the keys seen so far (the softmax's denominator),
* ``acc``, the sum of ``exp(score - m) * value`` (the numerator).

When a new block raises the maximum from ``m`` to ``m_new``, everything accumulated so far is
rescaled by ``exp(m - m_new)``, so ``acc / denom`` is always the softmax-weighted mean of the values
seen so far. FlashAttention (Dao et al., 2022) runs this loop inside one GPU kernel, with the tiles
in fast on-chip memory; this module writes it in PyTorch, to show the arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import check_attention_inputs, check_positive_ints

__all__ = ["tiled_attention"]


def tiled_attention(
    query: Tensor, key: Tensor, value: Tensor, block_size: int = 64, trace: list | None = None
) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V, computed over blocks of ``block_size`` keys with an online softmax.

    ``query`` ``(..., q_len, d_k)``, ``key`` ``(..., k_len, d_k)``, ``value`` ``(..., k_len, d_v)``;
    returns ``(..., q_len, d_v)``, equal to chapter 2's ``scaled_dot_product_attention`` (no mask)
    up to float rounding. With a list as ``trace``, one ``(m, l)`` pair of ``(..., q_len)`` tensors is
    appended per block: the running maximum and denominator after that block, for plotting.
    """
    check_attention_inputs(query, key, value)
    check_positive_ints(block_size=block_size)
    scale = 1.0 / math.sqrt(query.size(-1))
    m = torch.full((*query.shape[:-1], 1), -math.inf, dtype=query.dtype, device=query.device)  # (..., q_len, 1)
    denom = torch.zeros_like(m)  # (..., q_len, 1)
    acc = torch.zeros((*query.shape[:-1], value.size(-1)), dtype=query.dtype, device=query.device)  # (..., q_len, d_v)
    for start in range(0, key.size(-2), block_size):
        k, v = key[..., start : start + block_size, :], value[..., start : start + block_size, :]
        scores = query @ k.transpose(-2, -1) * scale  # (..., q_len, block): one tile, never the whole matrix
        m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))  # (..., q_len, 1)
        correction = torch.exp(m - m_new)  # rescales what was summed under the old maximum (0 at the start)
        p = torch.exp(scores - m_new)  # (..., q_len, block)
        denom = denom * correction + p.sum(dim=-1, keepdim=True)
        acc = acc * correction + p @ v  # (..., q_len, d_v)
        m = m_new
        if trace is not None:
            trace.append((m[..., 0].clone(), denom[..., 0].clone()))
    return acc / denom  # (..., q_len, d_v)
