"""Hidden tests for chapter 6 (only the batch grader runs them): other sizes and shapes, eval mode with
dropout configured, and a missing mask."""

from __future__ import annotations

from typing import Any

import torch

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch06 import (
    ATOL,
    RTOL,
    _add_norm,
    _encoder_layer,
    _ffn,
    _ffn_oracle,
    _layer_norm,
    _Recorder,
    matches,
    randn,
)


@get_exercise("06.feed_forward").test("other sizes, and inputs with 2 or 4 dimensions", hidden=True)
def _(FeedForward: Any) -> None:
    ffn = _ffn(FeedForward, d_model=8, d_ff=24, seed=101).eval()
    ref = _ffn_oracle(ffn, seed=102)
    for shape in ((5, 8), (2, 3, 4, 8)):
        x = randn(*shape, seed=103)
        with torch.no_grad():
            expect_close(ffn(x), ref(x), f"the output for an input of shape {shape}", atol=ATOL, rtol=RTOL)


@get_exercise("06.add_norm").test("other sizes, both placements", hidden=True)
def _(AddNorm: Any) -> None:
    x, sub = randn(1, 7, 8, seed=111), _Recorder(8, seed=112)
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first, d_model=8, seed=113).eval()
        with torch.no_grad():
            norm = _layer_norm(module)
            expected = x + sub(norm(x)) if norm_first else norm(x + sub(x))
            expect_close(
                module(x, sub), expected, f"the output (d_model=8, norm_first={norm_first})", atol=ATOL, rtol=RTOL
            )


@get_exercise("06.add_norm").test("no dropout in eval mode", hidden=True)
def _(AddNorm: Any) -> None:
    x, sub = randn(3, 4, 16, seed=114), _Recorder(16, seed=115)
    for norm_first in (False, True):
        module = _add_norm(AddNorm, norm_first, dropout=0.5).eval()
        with torch.no_grad():
            norm = _layer_norm(module)
            expected = x + sub(norm(x)) if norm_first else norm(x + sub(x))
            out = module(x, sub)
        expect(
            matches(out, expected, ATOL),
            f"with dropout=0.5 in eval mode the output changed (norm_first={norm_first}): "
            "dropout must be off in eval mode",
        )


@get_exercise("06.encoder_layer").test("no mask, and eval mode with dropout configured", hidden=True)
def _(EncoderLayer: Any) -> None:
    for norm_first in (False, True):
        layer, ref = _encoder_layer(EncoderLayer, norm_first, dropout=0.3)
        layer.eval()  # dropout configured but off: must equal the dropout-free reference
        x = randn(2, 6, 16, seed=121)
        with torch.no_grad():
            expect_close(
                layer(x, None),
                ref(x),
                f"the output without a mask, in eval mode (norm_first={norm_first})",
                atol=ATOL,
                rtol=RTOL,
            )


@get_exercise("06.encoder_layer").test("a batch of one sentence with a per-query mask", hidden=True)
def _(EncoderLayer: Any) -> None:
    layer, ref = _encoder_layer(EncoderLayer, norm_first=False)
    x = randn(1, 4, 16, seed=122)
    allowed = torch.tensor(
        [[True, True, False, False], [True, True, True, False], [True] * 4, [True] * 4]
    )  # (len, len)
    with torch.no_grad():
        out = layer(x, allowed[None, None])  # (1, 1, len, len)
        expected = ref(x, src_mask=~allowed)  # PyTorch: True = blocked
    expect_close(out, expected, "the output with a (1, 1, len, len) mask", atol=ATOL, rtol=RTOL)
