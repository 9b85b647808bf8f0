"""Known-wrong implementations of the chapter 3 exercises: each must fail its check."""

from __future__ import annotations

import math

import torch
from torch import nn


def _pe(max_len, d_model, *, swap=False, exponent="2i", base=10000.0, halves=False, start=0):
    position = torch.arange(start, start + max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    power = two_i / d_model if exponent == "2i" else (two_i / 2) / d_model
    angle = position / base**power
    first, second = (torch.cos(angle), torch.sin(angle)) if swap else (torch.sin(angle), torch.cos(angle))
    if halves:
        return torch.cat([first, second], dim=1).float()
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = first, second
    return table.float()


class _Embeddings(nn.Module):
    factor = staticmethod(math.sqrt)

    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.lut = nn.Embedding(vocab_size, d_model)
        self.d_model = d_model

    def forward(self, tokens):
        return self.lut(tokens) * self.factor(self.d_model)


class Unscaled(_Embeddings):
    factor = staticmethod(lambda d: 1.0)


class DividedByRoot(_Embeddings):
    factor = staticmethod(lambda d: 1 / math.sqrt(d))


class ScaledByDModel(_Embeddings):
    factor = staticmethod(float)


class ExtraLinear(_Embeddings):
    def __init__(self, vocab_size, d_model):
        super().__init__(vocab_size, d_model)
        self.proj = nn.Linear(d_model, d_model)


class _Positional(nn.Module):
    def __init__(self, d_model, max_len=5000):
        super().__init__()
        self.register_buffer("pe", _pe(max_len, d_model))

    def forward(self, x):
        return x + self.pe[: x.size(1)]


class ParameterTable(_Positional):
    def __init__(self, d_model, max_len=5000):
        nn.Module.__init__(self)
        self.pe = nn.Parameter(_pe(max_len, d_model))


class PlainAttribute(_Positional):
    def __init__(self, d_model, max_len=5000):
        nn.Module.__init__(self)
        self.table = _pe(max_len, d_model)

    def forward(self, x):
        return x + self.table[: x.size(1)]


class PositionsFromOne(_Positional):
    def forward(self, x):
        return x + self.pe[1 : x.size(1) + 1]


class Multiplies(_Positional):
    def forward(self, x):
        return x * self.pe[: x.size(1)]


WRONG = {
    "03.pe": [
        ("sine and cosine swapped", lambda n, d: _pe(n, d, swap=True)),
        ("exponent i/d_model instead of 2i/d_model", lambda n, d: _pe(n, d, exponent="i")),
        ("base 1000 instead of 10000", lambda n, d: _pe(n, d, base=1000.0)),
        ("sines and cosines in two halves, not interleaved", lambda n, d: _pe(n, d, halves=True)),
        ("positions start at 1", lambda n, d: _pe(n, d, start=1)),
    ],
    "03.embeddings": [
        ("no scaling", Unscaled),
        ("divided by sqrt(d_model)", DividedByRoot),
        ("scaled by d_model", ScaledByDModel),
        ("an extra trainable layer", ExtraLinear),
    ],
    "03.positional_encoding": [
        ("the table is a trainable parameter", ParameterTable),
        ("the table is a plain attribute, not a buffer", PlainAttribute),
        ("positions start at 1", PositionsFromOne),
        ("multiplies instead of adding", Multiplies),
    ],
}
