"""Chapter 2 exercises: the √d_k experiment, scaled dot-product attention, the attention module.

Oracles: ``torch.nn.functional.scaled_dot_product_attention`` for outputs and gradients, the library's
``scaled_dot_product_attention`` (which also returns the weights) and ``Attention`` for the module.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import Attention as _ReferenceAttention
from ..attention import scaled_dot_product_attention as _reference_sdpa
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register

ATOL, RTOL = 1e-5, 1e-4  # float32 attention against PyTorch's kernels: a few ulps of difference


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=g) * scale


def _as_float(x: Any, what: str) -> float:
    if isinstance(x, Tensor) and x.numel() == 1:
        return float(x)
    if isinstance(x, Real) and not isinstance(x, bool):
        return float(x)
    shape = f" of shape {tuple(x.shape)}" if isinstance(x, Tensor) else ""
    raise Mismatch(f"{what} should be one number (a Python float), got {type(x).__name__}{shape}")


# ---------------------------------------------------------------------------------------------------------
# 02.score_std — the √d_k experiment

score_std = register(Exercise("02.score_std", "The √d_k experiment: how spread out are the scores?", "score_std"))


def _std(f: Any, d_k: int, scaled: bool, seed: int = 0, num_samples: int = 5000) -> float:
    g = torch.Generator().manual_seed(seed)
    value = _as_float(f(d_k, scaled, num_samples=num_samples, generator=g), f"score_std({d_k}, {scaled})")
    expect(math.isfinite(value), f"score_std({d_k}, scaled={scaled}) returned {value}, not a finite number")
    return value


@score_std.test("returns one number")
def _(f: Any) -> None:
    _std(f, 4, False)


@score_std.test("unscaled: the spread of q·k grows with d_k as the theory says", points=2)
def _(f: Any) -> None:
    for d_k in (1, 16, 256):
        ratio = _std(f, d_k, False) / math.sqrt(d_k)
        expect(
            0.9 < ratio < 1.1,
            f"without scaling, the std you measure for d_k={d_k} is {ratio:.2f}× what the theory predicts "
            "for vectors with independent standard-normal entries",
        )


@score_std.test("scaled: dividing by √d_k keeps the spread the same for every d_k", points=2)
def _(f: Any) -> None:
    for d_k in (1, 16, 256):
        value = _std(f, d_k, True)
        expect(
            0.9 < value < 1.1,
            f"with scaling, the std you measure for d_k={d_k} is {value:.3g}; it should not depend on d_k "
            "(check what you divide by)",
        )


@score_std.test("repeatable: draws its random numbers from the generator it is given")
def _(f: Any) -> None:
    first, again, other = _std(f, 8, False, seed=1), _std(f, 8, False, seed=1), _std(f, 8, False, seed=2)
    expect(first == again, "two calls with generators seeded alike gave different results: use `generator=`")
    expect(first != other, "generators with different seeds gave the same result: is the generator used?")


# ---------------------------------------------------------------------------------------------------------
# 02.sdpa — scaled dot-product attention

sdpa = register(Exercise("02.sdpa", "Scaled dot-product attention", "scaled_dot_product_attention"))


def _call_sdpa(f: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    out = f(q, k, v) if mask is None else f(q, k, v, mask)
    expect(
        isinstance(out, (tuple, list)) and len(out) == 2,
        f"should return a pair (output, weights), got {type(out).__name__}"
        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""),
    )
    output, weights = out
    expect_type(output, Tensor, "output")
    expect_type(weights, Tensor, "weights")
    return output, weights


def _random_mask(g: torch.Generator, *shape: int) -> Tensor:
    """A boolean mask (True = may attend) with at least one visible key per query."""
    mask = torch.rand(*shape, generator=g) < 0.6
    mask[..., 0] |= ~mask.any(dim=-1)  # a row with no visible key gets key 0
    return mask


def _expect_no_leak(weights: Tensor, mask: Tensor) -> None:
    leaked = weights.detach().masked_fill(mask, 0.0).abs()
    if leaked.max() > 1e-6:
        where = tuple(int(i) for i in torch.unravel_index(leaked.flatten().argmax(), leaked.shape))
        raise Mismatch(
            f"mask leak: a query gives weight {leaked.max().item():.2g} to a key the mask hides (index {where}); "
            "masked keys must get exactly zero weight"
        )


def _expect_rows_sum_to_one(weights: Tensor, what: str = "the weights") -> None:
    sums = weights.detach().double().sum(-1)
    worst = (sums - 1).abs().max().item()
    expect(math.isfinite(worst), f"{what} contain NaN or inf")
    expect(worst < 1e-4, f"the rows of {what} do not sum to 1 (off by up to {worst:.3g}): normalise over the keys")


@sdpa.test("returns (output, weights) of the right shapes")
def _(f: Any) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = _randn(g, 2, 3, 4), _randn(g, 2, 5, 4), _randn(g, 2, 5, 6)  # q_len 3, k_len 5, d_k 4, d_v 6
    output, weights = _call_sdpa(f, q, k, v)
    expect_shape(weights, (2, 3, 5), "weights (batch, q_len, k_len)")
    expect_shape(output, (2, 3, 6), "output (batch, q_len, d_v)")


@sdpa.test("each query's weights sum to 1")
def _(f: Any) -> None:
    g = torch.Generator().manual_seed(1)
    _, weights = _call_sdpa(f, _randn(g, 2, 4, 8), _randn(g, 2, 6, 8), _randn(g, 2, 6, 8))
    expect_shape(weights, (2, 4, 6), "weights (batch, q_len, k_len)")
    _expect_rows_sum_to_one(weights)


@sdpa.test("weights and output match softmax(QKᵀ/√d_k)·V", points=2)
def _(f: Any) -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = _randn(g, 2, 6, 6), _randn(g, 2, 6, 6), _randn(g, 2, 6, 6)  # square on purpose: shapes can't tell
    output, weights = _call_sdpa(f, q, k, v)
    ref_out, ref_weights = _reference_sdpa(q, k, v)
    expect_close(weights, ref_weights, "the weights", ATOL, RTOL)
    expect_close(
        output,
        F.scaled_dot_product_attention(q, k, v),
        "the output",
        ATOL,
        RTOL,
        hint="the weights are right, so look at how they combine the values",
    )


@sdpa.test("a boolean mask (True = may attend) hides keys", points=2)
def _(f: Any) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = _randn(g, 2, 4, 8), _randn(g, 2, 5, 8), _randn(g, 2, 5, 3)
    mask = _random_mask(g, 2, 4, 5)
    output, weights = _call_sdpa(f, q, k, v, mask)
    expect_shape(weights, (2, 4, 5), "weights (batch, q_len, k_len)")
    _expect_no_leak(weights, mask)
    _expect_rows_sum_to_one(weights, "the masked weights")
    expect_close(weights, _reference_sdpa(q, k, v, mask)[1], "the masked weights", ATOL, RTOL)
    expect_close(output, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "the masked output", ATOL, RTOL)


@sdpa.test("gradients reach query, key and value", points=1)
def _(f: Any) -> None:
    g = torch.Generator().manual_seed(4)
    mine = [
        _randn(g, 2, 3, 4).requires_grad_(),
        _randn(g, 2, 5, 4).requires_grad_(),
        _randn(g, 2, 5, 4).requires_grad_(),
    ]
    ref = [t.detach().clone().requires_grad_() for t in mine]
    upstream = _randn(g, 2, 3, 4)  # a random gradient flowing into the output
    output, _ = _call_sdpa(f, *mine)
    expect_shape(output, (2, 3, 4), "output (batch, q_len, d_v)")
    expect(output.requires_grad, "the output does not depend on the inputs through autograd (detached?)")
    (output * upstream).sum().backward()
    (F.scaled_dot_product_attention(*ref) * upstream).sum().backward()
    for name, a, b in zip(("query", "key", "value"), mine, ref):
        expect(a.grad is not None, f"no gradient reaches {name} (is it detached, or rebuilt from numbers?)")
        expect_close(a.grad, b.grad, f"the gradient with respect to {name}", ATOL, RTOL)


# ---------------------------------------------------------------------------------------------------------
# 02.attention_module — the Attention module with W_Q, W_K, W_V

attention_module = register(Exercise("02.attention_module", "The attention module Attn(X, X')", "Attention"))


def _build(cls: Any, d_model: int, d_k: int) -> nn.Module:
    module = cls(d_model, d_k)
    expect_type(module, nn.Module, f"{getattr(cls, '__name__', 'Attention')}({d_model}, {d_k})")
    return module


@torch.no_grad()
def _copy_into_reference(module: nn.Module, d_model: int, d_k: int) -> _ReferenceAttention:
    ref = _ReferenceAttention(d_model, d_k)
    for name in ("W_Q", "W_K", "W_V"):
        getattr(ref, name).weight.copy_(getattr(module, name).weight)
    return ref


@attention_module.test("has bias-free projections W_Q, W_K, W_V of the right sizes")
def _(cls: Any) -> None:
    module = _build(cls, 8, 4)
    for name in ("W_Q", "W_K", "W_V"):
        layer = getattr(module, name, None)
        expect_type(layer, nn.Linear, f"attribute {name}")
        expect_shape(layer.weight, (4, 8), f"{name}.weight (out_features d_k, in_features d_model)")
        expect(layer.bias is None, f"{name} has a bias; the projections of the chapter have none (bias=False)")


@attention_module.test("self-attention: output and weights match the reference", points=2)
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(5)
    module = _build(cls, 8, 4)
    ref = _copy_into_reference(module, 8, 4)
    x = _randn(g, 2, 5, 8)
    out = module(x)
    expect(isinstance(out, (tuple, list)) and len(out) == 2, "forward should return a pair (output, weights)")
    ref_out, ref_weights = ref(x)
    expect_close(out[1], ref_weights, "the weights of self-attention", ATOL, RTOL)
    expect_close(out[0], ref_out, "the output of self-attention", ATOL, RTOL)


@attention_module.test("cross-attention: keys and values come from x_context", points=2)
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(6)
    module = _build(cls, 8, 4)
    ref = _copy_into_reference(module, 8, 4)
    x, context = _randn(g, 2, 3, 8), _randn(g, 2, 7, 8)  # 3 queries attend to 7 context vectors
    out = module(x, context)
    expect(isinstance(out, (tuple, list)) and len(out) == 2, "forward should return a pair (output, weights)")
    ref_out, ref_weights = ref(x, context)
    expect_shape(out[1], (2, 3, 7), "the weights (batch, len, len_context)")
    expect_close(out[1], ref_weights, "the weights of cross-attention", ATOL, RTOL)
    expect_close(out[0], ref_out, "the output of cross-attention", ATOL, RTOL)


@attention_module.test("the mask is passed on to the attention")
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(7)
    module = _build(cls, 8, 4)
    x = _randn(g, 2, 5, 8)
    mask = _random_mask(g, 2, 5, 5)
    out = module(x, mask=mask)
    expect(isinstance(out, (tuple, list)) and len(out) == 2, "forward should return a pair (output, weights)")
    _expect_no_leak(out[1], mask)
    expect_close(out[0], _copy_into_reference(module, 8, 4)(x, mask=mask)[0], "the masked output", ATOL, RTOL)
