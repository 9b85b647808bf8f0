"""Known-wrong implementations of the chapter 2 exercises: each must fail its check."""

from __future__ import annotations

import math

import torch
from torch import nn


def _score_std(d_k, scaled, num_samples=20000, generator=None, divide=math.sqrt, stat="std", use_generator=True):
    g = generator if use_generator else None
    q, k = torch.randn(num_samples, d_k, generator=g), torch.randn(num_samples, d_k, generator=g)
    scores = (q * k).sum(-1)
    if scaled:
        scores = scores / divide(d_k)
    return (scores.std() if stat == "std" else scores.var()).item()


def _sdpa(
    query,
    key,
    value,
    mask=None,
    *,
    scale=True,
    transpose=True,
    mask_after=False,
    fill=float("-inf"),
    invert=False,
    dim=-1,
):
    k = key.transpose(-2, -1) if transpose else key
    scores = query @ k
    if scale:
        scores = scores / math.sqrt(query.size(-1))
    keep = None if mask is None else (~mask if invert else mask)
    if keep is not None and not mask_after:
        scores = scores.masked_fill(~keep, fill)
    weights = torch.softmax(scores, dim=dim)
    if keep is not None and mask_after:
        weights = weights.masked_fill(~keep, 0.0)
    return weights @ value, weights


class _Attention(nn.Module):
    bias = False
    use_context_for_values = True

    def __init__(self, d_model, d_k):
        super().__init__()
        self.W_Q = nn.Linear(d_model, d_k, bias=self.bias)
        self.W_K = nn.Linear(d_model, d_k, bias=self.bias)
        self.W_V = nn.Linear(d_model, d_k, bias=self.bias)

    def forward(self, x, x_context=None, mask=None):
        context = x if x_context is None else x_context
        values = context if self.use_context_for_values else x
        return _sdpa(self.W_Q(x), self.W_K(context), self.W_V(values), mask)


class WithBias(_Attention):
    bias = True


class ValuesFromQueries(_Attention):
    use_context_for_values = False


class IgnoresMask(_Attention):
    def forward(self, x, x_context=None, mask=None):
        return super().forward(x, x_context)


WRONG = {
    "02.score_std": [
        ("divides by d_k instead of its square root", lambda *a, **k: _score_std(*a, **k, divide=float)),
        ("returns the variance, not the standard deviation", lambda *a, **k: _score_std(*a, **k, stat="var")),
        ("ignores the generator", lambda *a, **k: _score_std(*a, **k, use_generator=False)),
    ],
    "02.sdpa": [
        ("no division by sqrt(d_k)", lambda *a: _sdpa(*a, scale=False)),
        ("key not transposed", lambda *a: _sdpa(*a, transpose=False)),
        ("mask applied after the softmax", lambda *a: _sdpa(*a, mask_after=True)),
        ("masked scores set to 0 instead of -inf", lambda *a: _sdpa(*a, fill=0.0)),
        ("inverted mask convention (True = blocked)", lambda *a: _sdpa(*a, invert=True)),
        ("softmax over the queries (dim=-2)", lambda *a: _sdpa(*a, dim=-2)),
        ("returns only the output", lambda *a: _sdpa(*a)[0]),
    ],
    "02.attention_module": [
        ("projections with a bias", WithBias),
        ("values projected from the queries' sequence", ValuesFromQueries),
        ("the mask is ignored", IgnoresMask),
    ],
}
