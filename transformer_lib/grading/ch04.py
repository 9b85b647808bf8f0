"""Chapter 4 exercises: the padding mask, the causal mask, the masked softmax, the decoder's target mask.

Masks are boolean, ``True`` = may attend. Oracles: the library's ``masks`` module and ``torch.softmax`` over
the visible keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..masks import causal_mask as _reference_causal
from ..masks import padding_mask as _reference_padding
from ..masks import target_mask as _reference_target
from .core import Exercise, Mismatch, expect, expect_close, expect_equal, expect_shape, expect_type, register

ATOL, RTOL = 1e-6, 1e-5


def _bool_mask(mask: Any, shape: tuple[int, ...], what: str) -> Tensor:
    expect_type(mask, Tensor, what)
    expect(mask.dtype == torch.bool, f"{what} should be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    expect_shape(mask, shape, what)
    return mask


def _tokens(g: torch.Generator, batch: int, length: int, pad_id: int, vocab: int = 20) -> Tensor:
    """Token ids with padding at the end of each row (row 0 is never padded), ids != pad_id elsewhere."""
    tokens = torch.randint(0, vocab - 1, (batch, length), generator=g)
    tokens = tokens + (tokens >= pad_id).long()  # every real id differs from pad_id
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    return tokens.masked_fill(torch.arange(length)[None, :] >= lengths[:, None], pad_id)


def _leak(mask: Tensor, expected: Tensor, what: str, labels: tuple[str, str] = ("query", "key")) -> None:
    """Mismatch naming the first (query, key) where the mask lets through what it should hide, or the reverse."""
    if mask.shape != expected.shape:
        raise Mismatch(f"{what} has shape {tuple(mask.shape)}, expected {tuple(expected.shape)}")
    leaks = mask & ~expected
    if leaks.any():
        where = tuple(int(i) for i in leaks.nonzero()[0])
        raise Mismatch(f"{what} leaks: it lets through an entry that must be hidden, at index {where}")
    hides = ~mask & expected
    if hides.any():
        where = tuple(int(i) for i in hides.nonzero()[0])
        raise Mismatch(f"{what} hides too much: it blocks an entry that must stay visible, at index {where}")


# ---------------------------------------------------------------------------------------------------------
# 04.padding_mask

padding = register(Exercise("04.padding_mask", "The padding mask", "padding_mask"))


@padding.test("boolean, shape (batch, 1, 1, seq_len)")
def _(f: Any) -> None:
    tokens = _tokens(torch.Generator().manual_seed(0), 3, 5, pad_id=0)
    _bool_mask(f(tokens, 0), (3, 1, 1, 5), "padding_mask(tokens, 0) (batch, 1, 1, seq_len)")


@padding.test("True exactly on the real tokens", points=2)
def _(f: Any) -> None:
    tokens = _tokens(torch.Generator().manual_seed(1), 4, 7, pad_id=0)
    mask = _bool_mask(f(tokens, 0), (4, 1, 1, 7), "the padding mask")
    _leak(mask, _reference_padding(tokens, 0), "the padding mask")


@padding.test("uses the pad_id it is given")
def _(f: Any) -> None:
    tokens = _tokens(torch.Generator().manual_seed(2), 3, 6, pad_id=5)
    mask = _bool_mask(f(tokens, 5), (3, 1, 1, 6), "the padding mask for pad_id=5")
    _leak(mask, _reference_padding(tokens, 5), "the padding mask for pad_id=5")


# ---------------------------------------------------------------------------------------------------------
# 04.causal_mask

causal = register(Exercise("04.causal_mask", "The causal mask", "causal_mask"))


@causal.test("boolean, shape (size, size)")
def _(f: Any) -> None:
    _bool_mask(f(5), (5, 5), "causal_mask(5)")


@causal.test("no query sees the future", points=2)
def _(f: Any) -> None:
    mask = _bool_mask(f(6), (6, 6), "causal_mask(6)")
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)  # (query, key) with key > query
    if (mask & future).any():
        q, k = (int(i) for i in (mask & future).nonzero()[0])
        raise Mismatch(f"mask leak: query {q} may attend to key {k}, which comes later (the future)")


@causal.test("every query sees itself and the whole past", points=2)
def _(f: Any) -> None:
    mask = _bool_mask(f(6), (6, 6), "causal_mask(6)")
    hidden = ~mask & _reference_causal(6)
    if hidden.any():
        q, k = (int(i) for i in hidden.nonzero()[0])
        who = "itself" if q == k else f"key {k}, which comes before it"
        raise Mismatch(f"query {q} may not attend to {who}; only later keys should be hidden")


@causal.test("size 1")
def _(f: Any) -> None:
    expect_equal(_bool_mask(f(1), (1, 1), "causal_mask(1)"), _reference_causal(1), "causal_mask(1)")


# ---------------------------------------------------------------------------------------------------------
# 04.masked_softmax

masked_softmax = register(Exercise("04.masked_softmax", "Masked softmax (−∞ before the softmax)", "masked_softmax"))


def _masked(f: Any, scores: Tensor, mask: Tensor) -> Tensor:
    weights = f(scores, mask)
    expect_shape(weights, tuple(scores.shape), "the weights (same shape as the scores)")
    return weights


def _reference_masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    filled = scores.masked_fill(~mask, float("-inf"))
    visible = mask.any(-1, keepdim=True)
    return torch.softmax(filled.masked_fill(~visible, 0.0), -1).masked_fill(~visible, 0.0)


def _scores_and_mask(seed: int, *shape: int, full_rows: bool = True) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(*shape, generator=g) * 3
    mask = torch.rand(*shape, generator=g) < 0.6
    if full_rows:
        mask[..., 0] |= ~mask.any(-1)  # every row keeps at least one key
    return scores, mask


@masked_softmax.test("hidden keys get exactly zero weight", points=2)
def _(f: Any) -> None:
    scores, mask = _scores_and_mask(0, 2, 4, 6)
    weights = _masked(f, scores, mask)
    leaked = weights.detach().masked_fill(mask, 0).abs()
    if leaked.max() > 0:
        where = tuple(int(i) for i in (leaked > 0).nonzero()[0])
        raise Mismatch(f"mask leak: weight {leaked.max().item():.2g} on a hidden key (first at index {where})")


@masked_softmax.test("the visible keys share all the weight, as a softmax over them alone", points=2)
def _(f: Any) -> None:
    scores, mask = _scores_and_mask(1, 2, 4, 6)
    weights = _masked(f, scores, mask)
    sums = weights.detach().sum(-1)
    expect(bool(torch.isfinite(sums).all()), "the weights contain NaN or inf")
    worst = (sums - 1).abs().max().item()
    expect(worst < 1e-5, f"the weights of a row do not sum to 1 (off by up to {worst:.3g})")
    expect_close(weights, _reference_masked_softmax(scores, mask), "the weights", ATOL, RTOL)


@masked_softmax.test("a row with every key hidden gets zero weights, not NaN", points=2)
def _(f: Any) -> None:
    scores, mask = _scores_and_mask(2, 3, 5)
    mask[1] = False  # query 1 may attend to nothing
    weights = _masked(f, scores, mask)
    expect(not bool(weights.isnan().any()), "a row whose keys are all hidden gives NaN weights")
    expect_close(weights[1], torch.zeros(5), "the weights of the fully hidden row", ATOL, 0.0)
    expect_close(weights, _reference_masked_softmax(scores, mask), "the weights", ATOL, RTOL)


@masked_softmax.test("gradients are finite, even for a fully hidden row")
def _(f: Any) -> None:
    scores, mask = _scores_and_mask(3, 3, 5)
    mask[2] = False
    scores.requires_grad_(True)
    weights = _masked(f, scores, mask)
    expect(weights.requires_grad, "the weights do not depend on the scores through autograd (detached?)")
    upstream = torch.randn(3, 5, generator=torch.Generator().manual_seed(9))
    (weights * upstream).sum().backward()
    expect(scores.grad is not None, "no gradient reaches the scores")
    expect(bool(torch.isfinite(scores.grad).all()), "the gradient with respect to the scores contains NaN or inf")
    ref_scores = scores.detach().clone().requires_grad_(True)
    (_reference_masked_softmax(ref_scores, mask) * upstream).sum().backward()
    expect_close(scores.grad, ref_scores.grad, "the gradient with respect to the scores", 1e-5, 1e-4)


# ---------------------------------------------------------------------------------------------------------
# 04.target_mask

target = register(Exercise("04.target_mask", "The decoder's target mask", "target_mask"))


@target.test("boolean, shape (batch, 1, tgt_len, tgt_len)")
def _(f: Any) -> None:
    tokens = _tokens(torch.Generator().manual_seed(4), 2, 5, pad_id=0)
    _bool_mask(f(tokens, 0), (2, 1, 5, 5), "target_mask(tokens, 0) (batch, 1, tgt_len, tgt_len)")


@target.test("no position sees the future", points=2)
def _(f: Any) -> None:
    tokens = _tokens(torch.Generator().manual_seed(5), 3, 6, pad_id=0)
    mask = _bool_mask(f(tokens, 0), (3, 1, 6, 6), "the target mask")
    future = torch.ones(6, 6, dtype=torch.bool).triu(1).expand(3, 1, 6, 6)
    if (mask & future).any():
        b, _, q, k = (int(i) for i in (mask & future).nonzero()[0])
        raise Mismatch(f"mask leak: in sentence {b}, position {q} may attend to the later position {k}")


@target.test("no position sees a pad, every position sees its real past", points=2)
def _(f: Any) -> None:
    tokens = _tokens(torch.Generator().manual_seed(6), 4, 6, pad_id=0)
    mask = _bool_mask(f(tokens, 0), (4, 1, 6, 6), "the target mask")
    _leak(mask, _reference_target(tokens, 0), "the target mask")
