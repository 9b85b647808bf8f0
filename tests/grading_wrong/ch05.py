"""Known-wrong implementations of the chapter 5 exercises: each must fail its check."""

from __future__ import annotations

import math

from torch import nn

from transformer_lib.attention import scaled_dot_product_attention
from transformer_lib.multihead import merge_heads, split_heads


class _MHA(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(d_model, d_model) for _ in range(4))

    def split(self, x):
        return split_heads(x, self.num_heads)

    def merge(self, x):
        return merge_heads(x)

    def attend(self, q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask)[0]

    def output(self, merged):
        return self.W_O(merged)

    def forward(self, query, key, value, mask=None):
        out = self.attend(self.split(self.W_Q(query)), self.split(self.W_K(key)), self.split(self.W_V(value)), mask)
        return self.output(self.merge(out))


class NoOutputProjection(_MHA):
    def output(self, merged):
        return merged


class ScaledByDModel(_MHA):
    def attend(self, q, k, v, mask):  # divides by sqrt(d_model) instead of sqrt(d_k)
        return scaled_dot_product_attention(q / math.sqrt(self.num_heads), k, v, mask)[0]


class MergedInWrongOrder(_MHA):
    def merge(self, x):
        b, h, n, d = x.shape
        return x.reshape(b, n, h * d)  # no transpose: heads and positions mixed up


class InvertedMask(_MHA):
    def attend(self, q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, None if mask is None else ~mask | ~(~mask).any(-1, keepdim=True))[
            0
        ]


class OneHead(_MHA):
    def split(self, x):
        return x[:, None]


class KeysForValues(_MHA):
    def forward(self, query, key, value, mask=None):
        out = self.attend(self.split(self.W_Q(query)), self.split(self.W_K(key)), self.split(self.W_V(key)), mask)
        return self.output(self.merge(out))


class NoBias(_MHA):
    def __init__(self, d_model, num_heads):
        super().__init__(d_model, num_heads)
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(d_model, d_model, bias=False) for _ in range(4))


def _split_view(x, h):
    b, n, d = x.shape
    return x.reshape(b, h, n, d // h)  # no transpose: positions and features mixed up


def _split_interleaved(x, h):
    b, n, d = x.shape
    return x.reshape(b, n, d // h, h).permute(0, 3, 1, 2)  # head i gets features i, i+h, i+2h, ...


WRONG = {
    "05.split_heads": [
        ("reshape straight to (batch, heads, len, d_k)", _split_view),
        ("interleaved features (head i gets i, i+h, ...)", _split_interleaved),
        ("heads axis last", lambda x, h: x.reshape(*x.shape[:2], h, -1).permute(0, 1, 3, 2)),
    ],
    "05.merge_heads": [
        ("heads merged in the wrong order (no transpose)", lambda x: x.reshape(x.size(0), x.size(2), -1)),
        ("interleaved heads", lambda x: x.permute(0, 2, 3, 1).reshape(x.size(0), x.size(2), -1)),
        ("keeps only the first head", lambda x: x[:, 0]),
    ],
    "05.multihead": [
        ("no output projection W_O", NoOutputProjection),
        ("scores divided by sqrt(d_model) instead of sqrt(d_k)", ScaledByDModel),
        ("heads merged in the wrong order", MergedInWrongOrder),
        ("inverted mask convention", InvertedMask),
        ("a single head", OneHead),
        ("values projected from the keys", KeysForValues),
        ("projections without biases", NoBias),
    ],
}
