"""Known-wrong implementations of the chapter 6 exercises: each must fail its check."""

from __future__ import annotations

import torch
from torch import nn

from transformer_lib.encoder import PositionwiseFeedForward
from transformer_lib.multihead import MultiHeadAttention

# --------------------------------------------------------------------------- 06.feed_forward


class _FFN(nn.Module):
    bias = True

    def __init__(self, d_model, d_ff):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff, bias=self.bias)
        self.w_2 = nn.Linear(d_ff, d_model, bias=self.bias)

    def forward(self, x):
        return self.w_2(self.w_1(x).relu())


class NoReLU(_FFN):
    def forward(self, x):
        return self.w_2(self.w_1(x))


class NoBias(_FFN):
    bias = False


class BiasesUnused(_FFN):
    def forward(self, x):
        return torch.relu(x @ self.w_1.weight.T) @ self.w_2.weight.T


class LayersSwapped(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d_ff, d_model), nn.Linear(d_model, d_ff)

    def forward(self, x):
        return self.w_1(self.w_2(x).relu())


class MixesPositions(_FFN):
    def forward(self, x):
        return self.w_2(self.w_1(x).relu()).softmax(dim=1)


# --------------------------------------------------------------------------- 06.add_norm


class _AddNorm(nn.Module):
    def __init__(self, d_model, dropout=0.1, norm_first=False):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first


class PrePostSwapped(_AddNorm):
    def forward(self, x, sublayer):
        if not self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class AlwaysPostLN(_AddNorm):
    def forward(self, x, sublayer):
        return self.norm(x + self.dropout(sublayer(x)))


class NoResidual(_AddNorm):
    def forward(self, x, sublayer):
        if self.norm_first:
            return self.dropout(sublayer(self.norm(x)))
        return self.norm(self.dropout(sublayer(x)))


class DropoutOnResidual(_AddNorm):
    def forward(self, x, sublayer):
        if self.norm_first:
            return self.dropout(x + sublayer(self.norm(x)))
        return self.norm(self.dropout(x + sublayer(x)))


class NoDropout(_AddNorm):
    def forward(self, x, sublayer):
        if self.norm_first:
            return x + sublayer(self.norm(x))
        return self.norm(x + sublayer(x))


class DropoutInEval(_AddNorm):
    def forward(self, x, sublayer):
        drop = lambda t: nn.functional.dropout(t, self.dropout.p, training=True)  # noqa: E731
        if self.norm_first:
            return x + drop(sublayer(self.norm(x)))
        return self.norm(x + drop(sublayer(x)))


class OwnNormWithoutParameters(_AddNorm):
    def forward(self, x, sublayer):
        norm = lambda t: nn.functional.layer_norm(t, t.shape[-1:])  # noqa: E731
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))


# --------------------------------------------------------------------------- 06.encoder_layer


class _EncoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1, norm_first=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm_first = norm_first

    def layer(self, x, mask):
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.dropout1(self.self_attn(y, y, y, mask))
            return x + self.dropout2(self.feed_forward(self.norm2(x)))
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, mask)))
        return self.norm2(x + self.dropout2(self.feed_forward(x)))


class IgnoresMask(_EncoderLayer):
    def forward(self, x, src_mask=None):
        return self.layer(x, None)


class InvertedMask(_EncoderLayer):
    def forward(self, x, src_mask=None):
        return self.layer(x, None if src_mask is None else ~src_mask)


class AlwaysPost(_EncoderLayer):
    def forward(self, x, src_mask=None):
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, src_mask)))
        return self.norm2(x + self.dropout2(self.feed_forward(x)))


class FeedForwardFirst(_EncoderLayer):
    def forward(self, x, src_mask=None):
        if self.norm_first:
            x = x + self.feed_forward(self.norm1(x))
            y = self.norm2(x)
            return x + self.self_attn(y, y, y, src_mask)
        x = self.norm1(x + self.feed_forward(x))
        return self.norm2(x + self.self_attn(x, x, x, src_mask))


class NoResidualAroundAttention(_EncoderLayer):
    def forward(self, x, src_mask=None):
        if self.norm_first:
            y = self.norm1(x)
            x = self.self_attn(y, y, y, src_mask)
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(self.self_attn(x, x, x, src_mask))
        return self.norm2(x + self.feed_forward(x))


class OneNormTwice(_EncoderLayer):
    def forward(self, x, src_mask=None):
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.self_attn(y, y, y, src_mask)
            return x + self.feed_forward(self.norm1(x))
        x = self.norm1(x + self.self_attn(x, x, x, src_mask))
        return self.norm1(x + self.feed_forward(x))


class PreLNResidualFromNormed(_EncoderLayer):
    def forward(self, x, src_mask=None):
        if self.norm_first:
            x = self.norm1(x)
            x = x + self.self_attn(x, x, x, src_mask)
            y = self.norm2(x)
            return y + self.feed_forward(y)
        return self.layer(x, src_mask)


class DropoutAlwaysOn(_EncoderLayer):
    def forward(self, x, src_mask=None):
        p = self.dropout1.p
        if self.norm_first:
            y = self.norm1(x)
            x = x + nn.functional.dropout(self.self_attn(y, y, y, src_mask), p, training=True)
            return x + nn.functional.dropout(self.feed_forward(self.norm2(x)), p, training=True)
        x = self.norm1(x + nn.functional.dropout(self.self_attn(x, x, x, src_mask), p, training=True))
        return self.norm2(x + nn.functional.dropout(self.feed_forward(x), p, training=True))


WRONG = {
    "06.feed_forward": [
        ("no ReLU between the layers", NoReLU),
        ("linear layers without bias", NoBias),
        ("biases created but not used", BiasesUnused),
        ("w_1 and w_2 swapped", LayersSwapped),
        ("mixes positions (softmax over the sequence)", MixesPositions),
    ],
    "06.add_norm": [
        ("pre-LN and post-LN swapped", PrePostSwapped),
        ("always post-LN, norm_first ignored", AlwaysPostLN),
        ("residual connection forgotten", NoResidual),
        ("dropout applied to the residual path too", DropoutOnResidual),
        ("no dropout at all", NoDropout),
        ("a parameter-free LayerNorm instead of self.norm", OwnNormWithoutParameters),
        ("dropout also in eval mode", DropoutInEval, "hidden"),
    ],
    "06.encoder_layer": [
        ("padding mask ignored", IgnoresMask),
        ("padding mask inverted (PyTorch's convention)", InvertedMask),
        ("always post-LN, norm_first ignored", AlwaysPost),
        ("feed-forward before self-attention", FeedForwardFirst),
        ("no residual around self-attention", NoResidualAroundAttention),
        ("norm1 used for both sub-layers", OneNormTwice),
        ("pre-LN residual taken from the normalised x", PreLNResidualFromNormed),
        ("dropout also in eval mode", DropoutAlwaysOn, "hidden"),
    ],
}
