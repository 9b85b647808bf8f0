"""Hidden tests for chapter 2 (only the batch grader runs them; never shown in the book or notebooks)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch02 import ATOL, RTOL, _call_sdpa, _random_mask, _std


@get_exercise("02.score_std").test("large d_k and the default generator", hidden=True)
def _(f):
    ratio = _std(f, 1024, False, seed=3) / math.sqrt(1024)
    expect(0.9 < ratio < 1.1, f"without scaling, d_k=1024 gives {ratio:.2f}× the predicted spread")
    value = float(f(64, True, num_samples=5000))  # generator left to its default
    expect(0.85 < value < 1.15, f"with the default generator and scaling, d_k=64 gives {value:.3g}")


@get_exercise("02.sdpa").test("4-d inputs (batch, heads, len, d_k) with a (batch, 1, 1, k_len) mask", hidden=True)
def _(f):
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(2, 3, 4, 5, generator=g) for _ in range(3))
    mask = _random_mask(g, 2, 1, 1, 4)
    output, weights = _call_sdpa(f, q, k, v, mask)
    expect_close(
        output, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "the output for 4-d inputs", ATOL, RTOL
    )
    expect_close(weights.sum(-1), torch.ones(2, 3, 4), "the row sums of the weights for 4-d inputs", 1e-4, 0)


@get_exercise("02.sdpa").test("large scores stay finite and exact", hidden=True)
def _(f):
    g = torch.Generator().manual_seed(11)
    q, k, v = (
        torch.randn(2, 6, 16, generator=g) * 12,
        torch.randn(2, 6, 16, generator=g) * 12,
        torch.randn(2, 6, 3, generator=g),
    )
    output, _ = _call_sdpa(f, q, k, v)
    expect_close(output, F.scaled_dot_product_attention(q, k, v), "the output for large scores", 1e-4, 1e-4)


@get_exercise("02.attention_module").test("d_k different from d_model, one query", hidden=True)
def _(cls):
    from transformer_lib.grading.ch02 import _build, _copy_into_reference

    g = torch.Generator().manual_seed(12)
    module = _build(cls, 12, 3)
    x, context = torch.randn(3, 1, 12, generator=g), torch.randn(3, 4, 12, generator=g)
    out = module(x, context)
    ref_out, ref_weights = _copy_into_reference(module, 12, 3)(x, context)
    expect_close(out[0], ref_out, "the output for d_model=12, d_k=3", ATOL, RTOL)
