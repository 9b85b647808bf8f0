"""Hidden tests for chapter 14 (only the batch grader runs them): RMSNorm against the library's module, in
float64, with a single feature, a zero vector and large values; RoPE against the library's RotaryEmbedding,
far positions, float64, and the relative property across calls with different starts; grouped-query attention
inside the library's GroupedQueryAttention (its projections and rotary embeddings, the learner's attention, its
output layer), eight query heads with four, two and one key/value heads, and float64 with a combined mask."""

from __future__ import annotations

from typing import Any

import torch

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch06 import randn
from transformer_lib.grading.ch14 import (
    ROPE_ATOL,
    _attended,
    _expect_gqa,
    _expect_norm,
    _expect_rope,
    _normed,
    _turned,
    norm_inputs,
    qkv_heads,
)
from transformer_lib.modern import GroupedQueryAttention, RMSNorm, RotaryEmbedding
from transformer_lib.multihead import merge_heads

# --------------------------------------------------------------------------- 14.rmsnorm


@get_exercise("14.rmsnorm").test("the library's RMSNorm module: d_model = 64, eps = 1e-5, its weight", hidden=True)
def _(rms_norm: Any) -> None:
    module = RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        module.weight.copy_(randn(64, seed=501, scale=0.3) + 1.0)
    x = randn(3, 9, 64, seed=502) * 2.0 - 0.5
    out = _normed(rms_norm, x, module.weight.detach().clone(), 1e-5)
    with torch.no_grad():
        expected = module(x)
    expect_close(out, expected, "the output against the library's RMSNorm", atol=1e-5, rtol=1e-5)


@get_exercise("14.rmsnorm").test("float64, a single feature, a zero vector, large values", hidden=True)
def _(rms_norm: Any) -> None:
    x, weight = norm_inputs((4, 12), seed=503)
    x, weight = x.double(), weight.double()
    _expect_norm(_normed(rms_norm, x, weight, 1e-6), x, weight, 1e-6, "the output in float64", atol=1e-6)
    x, weight = norm_inputs((5, 1), seed=505)
    _expect_norm(_normed(rms_norm, x, weight, 1e-6), x, weight, 1e-6, "the output for a single feature (d = 1)")
    x, weight = norm_inputs((3, 8), seed=507)
    x[1] = 0.0
    out = _normed(rms_norm, x, weight, 1e-6).detach()
    expect(not bool(torch.isnan(out).any()), "a vector of zeros gives NaN: eps keeps the root mean square above 0")
    _expect_norm(out, x, weight, 1e-6, "the output with a vector of zeros")
    x, weight = norm_inputs((2, 16), seed=509, scale=1e3)
    _expect_norm(_normed(rms_norm, x, weight, 1e-6), x, weight, 1e-6, "the output for values of ~1000")


# --------------------------------------------------------------------------- 14.rope


@get_exercise("14.rope").test("the library's RotaryEmbedding: d_k = 64 from start = 30, and d_k = 2", hidden=True)
def _(apply_rope: Any) -> None:
    for shape, start, seed in (((2, 4, 50, 64), 30, 521), ((3, 9, 2), 0, 522), ((1, 2, 4), 11, 523)):
        x = randn(*shape, seed=seed)
        out = _turned(apply_rope, x, start)
        expected = RotaryEmbedding(shape[-1], start + shape[-2])(x, start)
        what = f"x of shape {shape}, start = {start}, against the library's RotaryEmbedding"
        expect_close(out, expected, what, atol=ROPE_ATOL, rtol=0)


@get_exercise("14.rope").test("far positions (start = 2000), float64, a single row", hidden=True)
def _(apply_rope: Any) -> None:
    x = randn(2, 16, 32, seed=524)
    _expect_rope(_turned(apply_rope, x, 2000), x, 2000, "the output with start = 2000", atol=1e-3)
    x = randn(3, 10, 12, seed=525).double()
    _expect_rope(_turned(apply_rope, x, 7), x, 7, "the output in float64")
    x = randn(1, 8, seed=526)
    _expect_rope(_turned(apply_rope, x, 123), x, 123, "one row (len = 1) at position 123")


@get_exercise("14.rope").test("a query at start m and a key at start n: the score depends on m − n only", hidden=True)
def _(apply_rope: Any) -> None:
    q, k = randn(1, 16, seed=527), randn(1, 16, seed=528)

    def score(m: int, n: int) -> float:
        return float((_turned(apply_rope, q, m).detach() * _turned(apply_rope, k, n).detach()).sum())

    for m, n in ((0, 3), (9, 2)):
        reference = score(m, n)
        for shift in (1, 50, 400):
            other = score(m + shift, n + shift)
            expect(
                abs(other - reference) < 1e-3,
                f"the score at positions (m, n) = ({m + shift}, {n + shift}) differs from the one at ({m}, {n}) by "
                f"{abs(other - reference):.3g}, though m − n is the same",
            )


# --------------------------------------------------------------------------- 14.gqa


def _library_attention(heads: int, kv: int, d_model: int, length: int, seed: int) -> GroupedQueryAttention:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rope = RotaryEmbedding(d_model // heads, length)
        attn = GroupedQueryAttention(d_model, heads, kv, dropout=0.0, rope=rope).eval()
        for p in attn.parameters():
            p.data.normal_(0.0, 0.3)  # biases too, so that a forgotten one would show
    return attn


@get_exercise("14.gqa").test(
    "inside the library's GroupedQueryAttention: its projections and RoPE, your attention, its W_O", hidden=True
)
def _(grouped_query_attention: Any) -> None:
    for heads, kv, seed in ((8, 2, 531), (8, 4, 532), (8, 1, 533)):
        attn = _library_attention(heads, kv, 32, 7, seed)
        x = randn(2, 7, 32, seed=seed + 10)
        causal = torch.ones(7, 7, dtype=torch.bool).tril()
        with torch.no_grad():
            Q, K, V = attn.project(x)  # (2, heads, 7, 4), (2, kv, 7, 4), (2, kv, 7, 4)
            expected = attn(x, x, x, causal)
        out = _attended(grouped_query_attention, Q, K, V, causal)
        with torch.no_grad():
            ours = attn.W_O(merge_heads(out.detach()))
        what = f"the layer's output with {heads} query heads and {kv} key/value head{'s' if kv > 1 else ''}"
        expect_close(ours, expected, what, atol=1e-5, rtol=1e-4)


@get_exercise("14.gqa").test("float64, a causal and padding mask combined (batch, 1, q_len, k_len)", hidden=True)
def _(grouped_query_attention: Any) -> None:
    Q, K, V = (t.double() for t in qkv_heads(3, 8, 4, 6, 6, 4, seed=541))
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[1, 4:] = keep[2, 2:] = False
    mask = keep[:, None, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()  # (3, 1, 6, 6)
    _expect_gqa(_attended(grouped_query_attention, Q, K, V, mask), Q, K, V, mask, "the output in float64, masked")
