"""Known-wrong implementations of the chapter 7 exercises: each must fail its check."""

from __future__ import annotations

import functools

import torch
from torch import nn

from transformer_lib.encoder import PositionwiseFeedForward
from transformer_lib.masks import causal_mask
from transformer_lib.multihead import MultiHeadAttention

# --------------------------------------------------------------------------- 07.decoder_mask


def _mask(tgt, pad_id, *, diagonal=0, upper=False, side="key", invert=False, padding=True, pad_value=None, dtype=None):
    length = tgt.size(1)
    ones = torch.ones(length, length, dtype=torch.bool)
    causal = ones.triu(diagonal) if upper else ones.tril(diagonal)
    real = tgt != (pad_id if pad_value is None else pad_value)  # (batch, len)
    if not padding:
        mask = causal.expand(tgt.size(0), 1, length, length)
    elif side == "key":
        mask = real[:, None, None, :] & causal
    elif side == "query":
        mask = real[:, None, :, None] & causal
    else:  # both
        mask = real[:, None, :, None] & real[:, None, None, :] & causal
    mask = ~mask if invert else mask
    return mask if dtype is None else mask.to(dtype)


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 07.decoder_layer


class _DecoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.1):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)


class QueriesFromMemory(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask)))
        x = self.norm2(x + self.dropout(self.cross_attn(memory, x, x)))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


class NoTargetMask(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, memory, memory, memory_mask)))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


class NoMemoryMask(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, memory, memory)))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


class CrossAttentionOnRawInput(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        y = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask)))
        y = self.norm2(y + self.dropout(self.cross_attn(x, memory, memory, memory_mask)))
        return self.norm3(y + self.dropout(self.feed_forward(y)))


class SelfAttentionTwice(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, x, x, tgt_mask)))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


class FeedForwardBeforeCrossAttention(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask)))
        x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return self.norm3(x + self.dropout(self.cross_attn(x, memory, memory, memory_mask)))


class PreLN(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, tgt_mask)
        y = self.norm2(x)
        x = x + self.cross_attn(y, memory, memory, memory_mask)
        return x + self.feed_forward(self.norm3(x))


class InvertedMasks(_DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, ~tgt_mask)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, memory, memory, ~memory_mask)))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


class QueriesFromMemoryWhenSameLength(_DecoderLayer):
    """Queries from the memory where the shapes allow it (the hidden test with equal lengths catches it)."""

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, tgt_mask)))
        if memory.size(1) == x.size(1):
            x = self.norm2(x + self.dropout(self.cross_attn(memory, memory, memory, memory_mask)))
        else:
            x = self.norm2(x + self.dropout(self.cross_attn(x, memory, memory, memory_mask)))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


# --------------------------------------------------------------------------- 07.greedy_decode


def _greedy(
    model,
    src,
    src_mask,
    max_len,
    bos_id,
    eos_id,
    pad_id,
    *,
    feed=True,
    stop=True,
    pad=True,
    bos=True,
    source_mask=True,
    causal=True,
    eval_mode=True,
    steps=0,
    keep_bos=True,
):
    if eval_mode:
        model.eval()
    with torch.no_grad():
        used_mask = src_mask if source_mask else None
        memory = model.encode(src, used_mask)
        ys = torch.full((src.size(0), 1), bos_id if bos else pad_id, dtype=torch.long)
        finished = torch.zeros(src.size(0), dtype=torch.bool)
        for _ in range(max_len + steps):
            inp = ys if feed else ys[:, :1]
            out = model.decode(memory, used_mask, inp, causal_mask(inp.size(1)) if causal else None)
            next_token = model.generator(out[:, -1]).argmax(-1)
            if pad:
                next_token = next_token.masked_fill(finished, pad_id)
            finished |= next_token == eos_id
            ys = torch.cat([ys, next_token[:, None]], dim=1)
            if stop and bool(finished.all()):
                break
    return ys if keep_bos else ys[:, 1:]


WRONG = {
    "07.decoder_mask": [
        ("diagonal excluded (tril(-1))", _variant(_mask, diagonal=-1)),
        ("upper triangle: queries see the future", _variant(_mask, upper=True)),
        ("inverted convention (True = blocked)", _variant(_mask, invert=True)),
        ("padding hidden on the query side", _variant(_mask, side="query")),
        ("padding hidden on both sides", _variant(_mask, side="both")),
        ("causal only, no padding", _variant(_mask, padding=False)),
        ("float mask", _variant(_mask, dtype=torch.float32)),
        ("pad id hard-coded as 0", _variant(_mask, pad_value=0), "hidden"),
    ],
    "07.decoder_layer": [
        ("cross-attention queries from the memory", QueriesFromMemory),
        ("target mask not applied", NoTargetMask),
        ("memory mask not applied", NoMemoryMask),
        ("cross-attention queries from the layer's raw input", CrossAttentionOnRawInput),
        ("self-attention instead of cross-attention", SelfAttentionTwice),
        ("feed-forward before cross-attention", FeedForwardBeforeCrossAttention),
        ("pre-LN instead of post-LN", PreLN),
        ("masks inverted (PyTorch's convention)", InvertedMasks),
        ("cross-attention queries from the memory when the lengths agree", QueriesFromMemoryWhenSameLength, "hidden"),
    ],
    "07.greedy_decode": [
        ("does not feed its own output back", _variant(_greedy, feed=False)),
        ("does not stop when every sentence has ended", _variant(_greedy, stop=False)),
        ("no padding after <eos>", _variant(_greedy, pad=False)),
        ("starts from <pad> instead of <bos>", _variant(_greedy, bos=False)),
        ("drops the <bos> column from the output", _variant(_greedy, keep_bos=False)),
        ("source mask not used", _variant(_greedy, source_mask=False)),
        ("no causal mask in the decoder", _variant(_greedy, causal=False)),
        ("more than max_len steps", _variant(_greedy, steps=3)),
        ("model left in training mode (dropout on)", _variant(_greedy, eval_mode=False), "hidden"),
    ],
}
