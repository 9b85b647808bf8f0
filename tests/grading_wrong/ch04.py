"""Known-wrong implementations of the chapter 4 exercises: each must fail its check."""

from __future__ import annotations

import torch


def _causal(size, diagonal=0):
    return torch.ones(size, size, dtype=torch.bool).tril(diagonal)


def _padding(tokens, pad_id):
    return (tokens != pad_id)[:, None, None, :]


def _masked_softmax(scores, mask, *, after=False, fill=float("-inf"), guard=True, invert=False):
    keep = ~mask if invert else mask
    if after:
        return torch.softmax(scores, -1).masked_fill(~keep, 0.0)
    scores = scores.masked_fill(~keep, fill)
    if not guard:
        return torch.softmax(scores, -1)
    visible = keep.any(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(~visible, 0.0), -1).masked_fill(~visible, 0.0)


WRONG = {
    "04.padding_mask": [
        ("inverted convention (True on the pads)", lambda t, p: (t == p)[:, None, None, :]),
        ("shape (batch, seq_len), not broadcastable to the scores", lambda t, p: t != p),
        ("hides pad queries instead of keys: shape (batch, 1, seq_len, 1)", lambda t, p: (t != p)[:, None, :, None]),
        ("a float mask", lambda t, p: (t != p)[:, None, None, :].float()),
        ("pad id hard-coded to 0", lambda t, p: (t != 0)[:, None, None, :]),
    ],
    "04.causal_mask": [
        ("off by one: a query cannot see itself", lambda n: _causal(n, -1)),
        ("off by one: a query sees the next key", lambda n: _causal(n, 1)),
        ("inverted (upper triangle)", lambda n: torch.ones(n, n, dtype=torch.bool).triu()),
        ("inverted convention (True = blocked)", lambda n: ~_causal(n)),
        ("an integer mask", lambda n: _causal(n).long()),
    ],
    "04.masked_softmax": [
        ("mask applied after the softmax", lambda s, m: _masked_softmax(s, m, after=True)),
        ("hidden scores set to 0 instead of -inf", lambda s, m: _masked_softmax(s, m, fill=0.0)),
        ("a fully hidden row gives NaN", lambda s, m: _masked_softmax(s, m, guard=False)),
        ("inverted mask convention", lambda s, m: _masked_softmax(s, m, invert=True)),
        ("large negative number instead of -inf", lambda s, m: _masked_softmax(s, m, fill=-1e4, guard=False)),
    ],
    "04.target_mask": [
        ("padding OR causal instead of AND", lambda t, p: _padding(t, p) | _causal(t.size(1))),
        ("causal mask only", lambda t, p: _causal(t.size(1)).expand(t.size(0), 1, -1, -1)),
        ("padding mask only", lambda t, p: _padding(t, p).expand(-1, 1, t.size(1), -1)),
        ("off-by-one causal part", lambda t, p: _padding(t, p) & _causal(t.size(1), -1)),
    ],
}
