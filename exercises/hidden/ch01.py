"""Hidden tests for chapter 1 (only the batch grader runs them): every small length and kernel, exact powers
of k, long sequences; other sizes of the attention, one source position, and masks with holes."""

from __future__ import annotations

from typing import Any

import torch

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch01 import (
    ATOL,
    KINDS,
    RTOL,
    _expect_counts,
    build_additive,
    call_additive,
    compare_additive,
    compare_scores,
    expect_no_leak,
    expect_rows_sum_to_one,
    randn,
    reference_of,
)


@get_exercise("01.layers_needed").test("every length 2-80 and kernel 2-6", hidden=True)
def _(layers_needed: Any) -> None:
    for kind in KINDS:
        _expect_counts(layers_needed, kind, [(n, k) for k in range(2, 7) for n in range(2, 81)])


@get_exercise("01.layers_needed").test("exact powers of k and their neighbours, long sequences", hidden=True)
def _(layers_needed: Any) -> None:
    cases = [(k**p + d, k) for k in range(2, 11) for p in range(1, 40) if k**p <= 10**9 for d in (-1, 0, 1)]
    _expect_counts(layers_needed, "dilated", [(n, k) for n, k in cases if n >= 2])
    _expect_counts(layers_needed, "convolution", [(10**6, 2), (10**6 + 1, 3), (999_999, 1000)])
    _expect_counts(layers_needed, "recurrent", [(10**6, 3)])
    _expect_counts(layers_needed, "self-attention", [(10**6, 3)])


@get_exercise("01.additive_scores").test("one source position, a batch of one, and wider layers", hidden=True)
def _(f: Any) -> None:
    compare_scores(f, batch=3, src_len=1, hidden=4, seed=201)
    compare_scores(f, batch=1, src_len=7, hidden=1, seed=202)
    compare_scores(f, batch=2, src_len=13, hidden=32, seed=203)


@get_exercise("01.additive_attention").test("other sizes, one source position", hidden=True)
def _(cls: Any) -> None:
    compare_additive(cls, batch=2, src_len=11, hidden=16, seed=211, lengths=[11, 7])
    compare_additive(cls, batch=1, src_len=3, hidden=1, seed=212)
    module = build_additive(cls, 6, seed=213)
    keys = randn(2, 1, 6, seed=215)
    context, weights = call_additive(module, randn(2, 6, seed=214), keys)
    expect_close(weights, torch.ones(2, 1), "the weights over a single source position", ATOL, 0.0)
    expect_close(context, keys[:, 0], "the context over a single source position", ATOL, RTOL)


@get_exercise("01.additive_attention").test("a mask with holes, and one visible position", hidden=True)
def _(cls: Any) -> None:
    module = build_additive(cls, 5, seed=221)
    ref = reference_of(module, 5)
    mask = torch.tensor([[True, False, True, False, True, False], [False, False, False, False, True, False]])
    query, keys = randn(2, 5, seed=222), randn(2, 6, 5, seed=223)
    context, weights = call_additive(module, query, keys, mask)
    expect_no_leak(weights, mask)
    expect_rows_sum_to_one(weights, "the weights under a mask with holes")
    with torch.no_grad():
        ref_context, ref_weights = ref(query, keys, mask)
    expect_close(weights, ref_weights, "the weights under a mask with holes", ATOL, RTOL)
    expect_close(context, ref_context, "the context under a mask with holes", ATOL, RTOL)
    expect(
        float(weights[1, 4].detach()) == 1.0,
        "a row with a single visible position must give it weight exactly 1",
    )
