"""Hidden tests for chapter 4 (only the batch grader runs them; never shown in the book or notebooks)."""

from __future__ import annotations

import torch

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch04 import _bool_mask, _leak, _masked, _reference_masked_softmax, _tokens
from transformer_lib.masks import causal_mask, padding_mask, target_mask


@get_exercise("04.padding_mask").test("a long batch with a pad id in the middle of the vocabulary", hidden=True)
def _(f):
    tokens = _tokens(torch.Generator().manual_seed(20), 8, 30, pad_id=7)
    _leak(_bool_mask(f(tokens, 7), (8, 1, 1, 30), "the padding mask"), padding_mask(tokens, 7), "the padding mask")


@get_exercise("04.causal_mask").test("a large size", hidden=True)
def _(f):
    _leak(_bool_mask(f(64), (64, 64), "causal_mask(64)"), causal_mask(64), "causal_mask(64)")


@get_exercise("04.masked_softmax").test("4-d scores with a broadcast mask and very large scores", hidden=True)
def _(f):
    g = torch.Generator().manual_seed(21)
    scores = torch.randn(2, 3, 4, 5, generator=g) * 200
    mask = torch.rand(2, 3, 4, 5, generator=g) < 0.5
    mask[0, 0, 0] = False
    weights = _masked(f, scores, mask)
    expect(not bool(weights.isnan().any()), "NaN weights for large scores")
    expect_close(weights, _reference_masked_softmax(scores, mask), "the weights for large scores", 1e-6, 1e-5)


@get_exercise("04.target_mask").test("another pad id and a longer batch", hidden=True)
def _(f):
    tokens = _tokens(torch.Generator().manual_seed(22), 5, 12, pad_id=3)
    _leak(_bool_mask(f(tokens, 3), (5, 1, 12, 12), "the target mask"), target_mask(tokens, 3), "the target mask")
