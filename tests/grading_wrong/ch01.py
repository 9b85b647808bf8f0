"""Known-wrong implementations of the chapter 1 exercises: each must fail its check."""

from __future__ import annotations

import math

import torch
from torch import nn

# --------------------------------------------------------------------------- 01.layers_needed


def _layers(kind, n, k=3, *, recurrent=None, conv=None, dilated=None, attention=None, unknown=None):
    """The right counts, except where a keyword replaces one kind's formula (or makes an unknown kind return)."""
    if kind == "recurrent":
        return n if recurrent is None else recurrent(n)
    if kind == "convolution":
        return math.ceil((n - 1) / (k - 1)) if conv is None else conv(n, k)
    if kind == "dilated":
        return next(L for L in range(n + 1) if k**L >= n) if dilated is None else dilated(n, k)
    if kind == "self-attention":
        return 1 if attention is None else attention(n)
    if unknown is not None:
        return unknown
    raise ValueError(f"unknown kind {kind!r}")


def _wrong(**kwargs):
    return lambda kind, n, k=3: _layers(kind, n, k, **kwargs)


# --------------------------------------------------------------------------- 01.additive_scores


def _scores(query, keys, W, U, v, *, swap=False, tanh=True, unsqueeze=True, use_v=True, squeeze=True):
    q, h = (U(query), W(keys)) if swap else (W(query), U(keys))
    energy = (q.unsqueeze(1) if unsqueeze else q) + h  # without unsqueeze: (batch, hidden) + (batch, src_len, hidden)
    if tanh:
        energy = torch.tanh(energy)
    out = v(energy) if use_v else energy.sum(-1, keepdim=True)
    return out.squeeze(-1) if squeeze else out


# --------------------------------------------------------------------------- 01.additive_attention


class _Additive(nn.Module):
    bias_W, bias_U = False, True

    def __init__(self, hidden_dim):
        super().__init__()
        self.W = nn.Linear(hidden_dim, hidden_dim, bias=self.bias_W)
        self.U = nn.Linear(hidden_dim, hidden_dim, bias=self.bias_U)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def scores(self, query, keys):
        return self.v(torch.tanh(self.W(query).unsqueeze(1) + self.U(keys))).squeeze(-1)  # (batch, src_len)

    def weights(self, scores, mask):
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def average(self, weights, keys):
        return (weights.unsqueeze(-1) * keys).sum(1)  # (batch, hidden)

    def forward(self, query, keys, mask=None):
        weights = self.weights(self.scores(query, keys), mask)
        return self.average(weights, keys), weights


class SoftmaxOverTheBatch(_Additive):
    def weights(self, scores, mask):
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=0)


class IgnoresMask(_Additive):
    def weights(self, scores, mask):
        return torch.softmax(scores, dim=-1)


class MaskAfterSoftmax(_Additive):
    def weights(self, scores, mask):
        weights = torch.softmax(scores, dim=-1)
        return weights if mask is None else weights * mask  # the visible weights no longer sum to 1


class MaskedScoresZero(_Additive):
    def weights(self, scores, mask):
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        return torch.softmax(scores, dim=-1)


class InvertedMask(_Additive):
    def weights(self, scores, mask):
        return super().weights(scores, None if mask is None else ~mask | ~(~mask).any(-1, keepdim=True))


class AveragesProjectedKeys(_Additive):
    def average(self, weights, keys):
        return (weights.unsqueeze(-1) * self.U(keys)).sum(1)


class BiasInW(_Additive):
    bias_W = True


class NoBiasInU(_Additive):
    bias_U = False


class ScaledDotProductScores(_Additive):
    def scores(self, query, keys):  # chapter 2's score, not the additive one
        return (keys @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(query.size(-1))


class ReturnsWeightsFirst(_Additive):
    def forward(self, query, keys, mask=None):
        context, weights = super().forward(query, keys, mask)
        return weights, context


WRONG = {
    "01.layers_needed": [
        ("recurrent: n - 1 sweeps", _wrong(recurrent=lambda n: n - 1)),
        ("convolution: ceil(n / (k - 1))", _wrong(conv=lambda n, k: math.ceil(n / (k - 1)))),
        ("convolution: (n - 1) // (k - 1), rounded down", _wrong(conv=lambda n, k: (n - 1) // (k - 1))),
        ("convolution: n // (k - 1)", _wrong(conv=lambda n, k: n // (k - 1))),
        ("convolution: (n - 1) / (k - 1), a float", _wrong(conv=lambda n, k: (n - 1) / (k - 1))),
        ("convolution: n / k, the table's O(n/k) taken literally", _wrong(conv=lambda n, k: math.ceil(n / k))),
        ("dilated: ceil(log_k n) in floating point", _wrong(dilated=lambda n, k: math.ceil(math.log(n, k)))),
        ("dilated: floor(log_k n)", _wrong(dilated=lambda n, k: int(math.log(n, k)))),
        ("dilated: log2 n whatever k", _wrong(dilated=lambda n, k: math.ceil(math.log2(n)))),
        ("dilated: ceil(log_k n) + 1", _wrong(dilated=lambda n, k: next(L for L in range(n + 1) if k**L >= n) + 1)),
        ("self-attention: zero layers", _wrong(attention=lambda n: 0)),
        ("self-attention: log n layers", _wrong(attention=lambda n: max(1, math.ceil(math.log2(n))))),
        ("an unknown kind returns 0 instead of raising", _wrong(unknown=0)),
    ],
    "01.additive_scores": [
        ("W and U swapped", lambda *a: _scores(*a, swap=True)),
        ("no tanh", lambda *a: _scores(*a, tanh=False)),
        ("query not unsqueezed (broadcasts wrongly when batch = src_len)", lambda *a: _scores(*a, unsqueeze=False)),
        ("features summed instead of weighted by v", lambda *a: _scores(*a, use_v=False)),
        ("returns (batch, src_len, 1)", lambda *a: _scores(*a, squeeze=False)),
        ("softmax applied to the scores", lambda *a: torch.softmax(_scores(*a), dim=-1)),
        ("the query detached", lambda q, *a: _scores(q.detach(), *a)),
    ],
    "01.additive_attention": [
        ("softmax over the batch axis", SoftmaxOverTheBatch),
        ("the mask is ignored", IgnoresMask),
        ("mask applied after the softmax (not renormalised)", MaskAfterSoftmax),
        ("masked scores set to 0 instead of -inf", MaskedScoresZero),
        ("inverted mask convention (True = hidden)", InvertedMask),
        ("the context averages U h_j instead of h_j", AveragesProjectedKeys),
        ("W with a bias", BiasInW),
        ("U without a bias", NoBiasInU),
        ("scaled dot-product scores instead of additive ones", ScaledDotProductScores),
        ("returns (weights, context)", ReturnsWeightsFirst),
    ],
}
