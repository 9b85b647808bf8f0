"""Chapter 3 exercises: the sinusoidal positional encoding, scaled embeddings, the positional-encoding module.

Oracles: the library's ``sinusoidal_positional_encoding`` and ``Embeddings`` (with the learner's weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..embeddings import sinusoidal_positional_encoding as _reference_pe
from .core import Exercise, expect, expect_close, expect_shape, expect_type, register

PE_ATOL = 1e-4  # float32 sines of angles up to a few hundred radians: ~1e-5 apart between correct formulas
ATOL, RTOL = 1e-5, 1e-5

# ---------------------------------------------------------------------------------------------------------
# 03.pe — the sinusoidal positional encoding

pe = register(Exercise("03.pe", "Sinusoidal positional encoding", "sinusoidal_pe"))


def _pe(f: Any, max_len: int, d_model: int) -> Tensor:
    table = f(max_len, d_model)
    expect_shape(table, (max_len, d_model), f"sinusoidal_pe({max_len}, {d_model}) (max_len, d_model)")
    expect(table.dtype.is_floating_point, f"the encoding should hold floating-point numbers, got dtype {table.dtype}")
    return table


def _expect_columns(table: Tensor, ref: Tensor, cols: slice, what: str) -> None:
    expect_close(table[:, cols], ref[:, cols], what, PE_ATOL, 0.0)


@pe.test("shape (max_len, d_model), floating point")
def _(f: Any) -> None:
    _pe(f, 10, 8)


@pe.test("position 0 is the encoding of angle 0 everywhere")
def _(f: Any) -> None:
    table = _pe(f, 4, 8)
    expect_close(
        table[0],
        _reference_pe(4, 8)[0],
        "row 0 (position 0)",
        PE_ATOL,
        0.0,
        hint="at position 0 every angle is 0: which columns are sines, which cosines?",
    )


@pe.test("even columns (0, 2, 4, …): sines of the right frequencies", points=2)
def _(f: Any) -> None:
    _expect_columns(_pe(f, 50, 16), _reference_pe(50, 16), slice(0, None, 2), "the even columns")


@pe.test("odd columns (1, 3, 5, …): cosines of the same frequencies", points=2)
def _(f: Any) -> None:
    _expect_columns(_pe(f, 50, 16), _reference_pe(50, 16), slice(1, None, 2), "the odd columns")


@pe.test("the whole table for max_len=100, d_model=64")
def _(f: Any) -> None:
    expect_close(_pe(f, 100, 64), _reference_pe(100, 64), "the encoding", PE_ATOL, 0.0)


# ---------------------------------------------------------------------------------------------------------
# 03.embeddings — token embeddings scaled by √d_model

embeddings = register(Exercise("03.embeddings", "Token embeddings, scaled by √d_model", "Embeddings"))


def _embedder(cls: Any, vocab: int, d_model: int) -> nn.Module:
    module = cls(vocab, d_model)
    expect_type(module, nn.Module, f"Embeddings({vocab}, {d_model})")
    lut = getattr(module, "lut", None)
    expect_type(lut, nn.Embedding, "attribute lut")
    expect_shape(lut.weight, (vocab, d_model), "lut.weight (vocab_size, d_model)")
    return module


def _tokens(g: torch.Generator, vocab: int, *shape: int) -> Tensor:
    return torch.randint(0, vocab, shape, generator=g)


@embeddings.test("has a look-up table lut = nn.Embedding(vocab_size, d_model) and nothing else to train")
def _(cls: Any) -> None:
    module = _embedder(cls, 11, 6)
    count = sum(p.numel() for p in module.parameters())
    expect(count == 11 * 6, f"the module has {count} trainable numbers; the look-up table alone has {11 * 6}")


@embeddings.test("output shape (batch, len, d_model)")
def _(cls: Any) -> None:
    module = _embedder(cls, 11, 6)
    out = module(_tokens(torch.Generator().manual_seed(0), 11, 2, 5))
    expect_shape(out, (2, 5, 6), "the output (batch, len, d_model)")


@embeddings.test("values: the looked-up vectors, scaled as in the paper", points=2)
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(1)
    module = _embedder(cls, 20, 16)
    tokens = _tokens(g, 20, 3, 7)
    with torch.no_grad():
        expected = module.lut.weight[tokens] * math.sqrt(16)  # (3, 7, 16)
    out = module(tokens)
    expect_shape(out, (3, 7, 16), "the output (batch, len, d_model)")
    ratio = (out.detach().norm() / expected.norm()).item()
    expect_close(
        out,
        expected,
        "the output",
        ATOL,
        RTOL,
        hint=f"your vectors are {ratio:.3g}× as long as they should be" if abs(ratio - 1) > 1e-3 else "",
    )


@embeddings.test("the gradient reaches the look-up table")
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(2)
    module = _embedder(cls, 9, 4)
    tokens = _tokens(g, 9, 2, 3)
    module(tokens).sum().backward()
    grad = module.lut.weight.grad
    expect(grad is not None, "no gradient reaches lut.weight (did you detach, or copy the vectors?)")
    expected = torch.zeros(9, 4).index_add_(0, tokens.flatten(), torch.full((6, 4), math.sqrt(4)))
    expect_close(grad, expected, "the gradient of lut.weight", ATOL, RTOL)


# ---------------------------------------------------------------------------------------------------------
# 03.positional_encoding — the module that adds the encoding

positional = register(Exercise("03.positional_encoding", "The positional-encoding module", "PositionalEncoding"))


def _positional(cls: Any, d_model: int, max_len: int) -> nn.Module:
    module = cls(d_model, max_len)
    expect_type(module, nn.Module, f"PositionalEncoding({d_model}, {max_len})")
    return module


@positional.test("keeps the table in a buffer `pe`, not in a parameter")
def _(cls: Any) -> None:
    module = _positional(cls, 8, 20)
    buffers = dict(module.named_buffers())
    expect("pe" in buffers, "there is no buffer named `pe` (register it with self.register_buffer)")
    expect_shape(buffers["pe"], (20, 8), "the buffer pe (max_len, d_model)")
    count = sum(p.numel() for p in module.parameters())
    expect(count == 0, f"the module has {count} trainable numbers; the encoding is fixed, nothing should train")


@positional.test("adds the encoding of positions 0, 1, … to the input", points=2)
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(3)
    module = _positional(cls, 8, 20)
    x = torch.randn(2, 6, 8, generator=g)
    out = module(x)
    expect_shape(out, (2, 6, 8), "the output (batch, len, d_model)")
    expect_close(out - x, _reference_pe(6, 8).expand(2, 6, 8), "output − input (the added encoding)", PE_ATOL, 0.0)


@positional.test("works for every length up to max_len")
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(4)
    module = _positional(cls, 4, 9)
    for length in (1, 9):
        x = torch.randn(1, length, 4, generator=g)
        expect_close(
            module(x) - x, _reference_pe(length, 4)[None], f"the added encoding for length {length}", PE_ATOL, 0.0
        )


@positional.test("the gradient flows back to the input unchanged")
def _(cls: Any) -> None:
    x = torch.randn(2, 3, 4, requires_grad=True)
    module = _positional(cls, 4, 10)
    out = module(x)
    expect(isinstance(out, Tensor) and out.requires_grad, "the output does not depend on the input through autograd")
    out.sum().backward()
    expect_close(x.grad, torch.ones(2, 3, 4), "the gradient with respect to the input", ATOL, 0.0)
