"""Hidden tests for chapter 10 (only the batch grader runs them): the paper's base model on the meta device
(shapes only, so its cache and its FLOPs cost nothing to count), a count that does not depend on the number
of heads, sizes of 1, float64 and 3-d inputs for tiled attention, random masks with fully masked blocks, and
the default block size."""

from __future__ import annotations

from typing import Any

import torch

from transformer_lib.grading import expect, get_exercise
from transformer_lib.grading.ch10 import (
    _bytes,
    _expect_attention,
    _expect_cache_bytes,
    _expect_flops,
    _flops,
    counted_flops,
    qkv,
    transformer_flops_reference,
)
from transformer_lib.model import TransformerConfig

BASE = TransformerConfig(37000, 37000, share_embeddings=True, dropout=0.0)  # the paper's base model


@get_exercise("10.kv_cache_bytes").test("the paper's base model in bfloat16; one layer, one sentence", hidden=True)
def _(kv_cache_bytes: Any) -> None:
    _expect_cache_bytes(kv_cache_bytes, BASE, 64, 30, 41, torch.bfloat16, "base model", device="meta")
    tiny = TransformerConfig(7, 9, N=1, d_model=8, d_ff=16, h=1, dropout=0.0)
    _expect_cache_bytes(kv_cache_bytes, tiny, 1, 1, 1, torch.float32, "one of everything")


@get_exercise("10.kv_cache_bytes").test("the number of heads does not change the bytes", hidden=True)
def _(kv_cache_bytes: Any) -> None:
    counts = {
        h: _bytes(kv_cache_bytes, TransformerConfig(11, 13, N=2, d_model=24, h=h), 3, 5, 6, torch.float32)
        for h in (1, 4, 8)
    }
    expect(len(set(counts.values())) == 1, "the count changes with the number of heads h (h * d_k = d_model)")
    _expect_cache_bytes(
        kv_cache_bytes, TransformerConfig(11, 13, N=2, d_model=24, h=8, dropout=0.0), 3, 5, 6, torch.float64, "h=8"
    )


@get_exercise("10.flops").test("the paper's base model, forward on the meta device and training", hidden=True)
def _(transformer_flops: Any) -> None:
    expected = counted_flops(BASE, 25, 27, 2, training=False, device="meta")
    _expect_flops(transformer_flops, BASE, 25, 27, 2, False, expected, "base model, forward")
    expected = transformer_flops_reference(BASE, 40, 38, 32, True)
    _expect_flops(transformer_flops, BASE, 40, 38, 32, True, expected, "base model, training")


@get_exercise("10.flops").test("the number of heads does not change the count; lengths of 1", hidden=True)
def _(transformer_flops: Any) -> None:
    counts = {
        h: _flops(transformer_flops, TransformerConfig(20, 30, N=2, d_model=24, d_ff=40, h=h), 6, 4, 3, False)
        for h in (1, 3, 8)
    }
    expect(len(set(counts.values())) == 1, "the count changes with the number of heads h (h * d_k = d_model)")
    config = TransformerConfig(20, 30, N=2, d_model=24, d_ff=40, h=3, dropout=0.0)
    _expect_flops(
        transformer_flops, config, 1, 1, 5, True, counted_flops(config, 1, 1, 5, training=True), "lengths of 1"
    )


@get_exercise("10.tiled_attention").test("float64, 3-d inputs, d_v != d_k, a random mask", hidden=True)
def _(tiled_attention: Any) -> None:
    q, k, v = (t.double() for t in qkv((3, 13, 6), 29, 7, seed=501))
    g = torch.Generator().manual_seed(502)
    mask = torch.rand(3, 13, 29, generator=g) < 0.3  # (batch, q_len, k_len): many fully masked blocks of 4
    mask[:, :, 0] |= ~mask.any(dim=-1)  # every query sees at least one key ...
    mask[1, 5] = False  # ... but one
    for block in (1, 4, 7, 29, 100):
        _expect_attention(tiled_attention, q, k, v, mask, block, "float64, random mask", atol=1e-10)
    _expect_attention(tiled_attention, q, k, v, None, 6, "float64, no mask", atol=1e-10)


@get_exercise("10.tiled_attention").test("the default block size; a longer sequence", hidden=True)
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((2, 2, 40, 16), 150, 16, seed=503)
    out = tiled_attention(q, k, v)  # mask=None, block_size=64: three blocks, the last one shorter
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expect(
        isinstance(out, torch.Tensor) and out.shape == expected.shape,
        "with the default arguments the output has the wrong shape",
    )
    expect(float((out - expected).abs().max()) < 1e-5, "with the default arguments the output differs")
    causal = torch.ones(40, 150).tril(diagonal=110).bool()  # (q_len, k_len): the last keys are the future
    _expect_attention(tiled_attention, q, k, v, causal, 32, "a causal mask over a longer sequence")
