"""Hidden tests for chapter 3 (only the batch grader runs them; never shown in the book or notebooks)."""

from __future__ import annotations

import torch

from transformer_lib.embeddings import sinusoidal_positional_encoding
from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch03 import PE_ATOL, _embedder, _pe, _positional


@get_exercise("03.pe").test("the paper's size: max_len=200, d_model=512", hidden=True)
def _(f):
    table = _pe(f, 200, 512)
    expect_close(table, sinusoidal_positional_encoding(200, 512), "the encoding for d_model=512", PE_ATOL, 0.0)
    expect(bool((table.abs() <= 1 + 1e-6).all()), "some values of the encoding lie outside [-1, 1]")


@get_exercise("03.embeddings").test("one token, a large d_model", hidden=True)
def _(cls):
    module = _embedder(cls, 3, 256)
    tokens = torch.tensor([[2]])
    expect_close(
        module(tokens), module.lut.weight[2].detach()[None, None] * 16.0, "the output for d_model=256", 1e-5, 1e-5
    )


@get_exercise("03.positional_encoding").test("the buffer follows .to(dtype) and the batch broadcasts", hidden=True)
def _(cls):
    module = _positional(cls, 6, 12).to(torch.float64)
    x = torch.zeros(4, 12, 6, dtype=torch.float64)
    out = module(x)
    expect(out.dtype == torch.float64, f"after .to(torch.float64) the output has dtype {out.dtype}")
    expect_close(
        out,
        sinusoidal_positional_encoding(12, 6).double().expand(4, 12, 6),
        "the encoding added to zeros",
        PE_ATOL,
        0.0,
    )
