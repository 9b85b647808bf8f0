"""Chapter 5 exercises: splitting and merging heads, multi-head attention.

Oracles: the library's ``split_heads`` / ``merge_heads`` and PyTorch's own ``nn.MultiheadAttention`` with the
learner's weights copied in (its boolean masks mean the opposite of ours: True = blocked).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..multihead import merge_heads as _reference_merge
from ..multihead import split_heads as _reference_split
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register

ATOL, RTOL = 1e-5, 1e-4  # float32 against PyTorch's fused multi-head kernels


def _head_message(actual: Tensor, expected: Tensor, what: str) -> None:
    """Mismatch naming the first (batch, head, position) whose features are wrong."""
    expect_shape(actual, tuple(expected.shape), what)
    wrong = (actual.detach() - expected).abs().amax(-1) > 1e-6  # (batch, heads, len)
    if wrong.any():
        b, h, t = (int(i) for i in wrong.nonzero()[0])
        raise Mismatch(f"{what}: head {h} at position {t} (batch {b}) holds the wrong features")


# ---------------------------------------------------------------------------------------------------------
# 05.split_heads

split = register(Exercise("05.split_heads", "Split into heads", "split_heads"))


@split.test("shape (batch, heads, len, d_k)")
def _(f: Any) -> None:
    expect_shape(f(torch.zeros(2, 5, 12), 3), (2, 3, 5, 4), "split_heads(x of shape (2, 5, 12), 3)")


@split.test("head i holds the features [i·d_k, (i+1)·d_k) of every position", points=2)
def _(f: Any) -> None:
    x = torch.arange(2 * 4 * 12, dtype=torch.float32).reshape(2, 4, 12)  # every feature is a different number
    _head_message(f(x, 3), _reference_split(x, 3), "split_heads(x, 3)")


@split.test("one head is the input with a heads axis")
def _(f: Any) -> None:
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    expect_close(f(x, 1), x[:, None], "split_heads(x, 1)", 0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------
# 05.merge_heads

merge = register(Exercise("05.merge_heads", "Merge the heads", "merge_heads"))


@merge.test("shape (batch, len, heads·d_k)")
def _(f: Any) -> None:
    expect_shape(f(torch.zeros(2, 3, 5, 4)), (2, 5, 12), "merge_heads(x of shape (2, 3, 5, 4))")


@merge.test("the heads are concatenated in order, position by position", points=2)
def _(f: Any) -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # (batch, heads, len, d_k)
    out = f(x)
    expected = _reference_merge(x)
    expect_shape(out, tuple(expected.shape), "merge_heads(x)")
    wrong = (out - expected).abs().amax(-1) > 0  # (batch, len)
    if wrong.any():
        b, t = (int(i) for i in wrong.nonzero()[0])
        raise Mismatch(f"merge_heads(x): position {t} (batch {b}) gets the wrong features, or in the wrong order")


@merge.test("undoes split_heads")
def _(f: Any) -> None:
    x = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(1))
    expect_close(f(_reference_split(x, 4)), x, "merge_heads(split_heads(x, 4))", 0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------
# 05.multihead

multihead = register(Exercise("05.multihead", "Multi-head attention", "MultiHeadAttention", timeout_s=30.0))


def _mha(cls: Any, d_model: int, heads: int) -> nn.Module:
    module = cls(d_model, heads)
    expect_type(module, nn.Module, f"MultiHeadAttention({d_model}, {heads})")
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        layer = getattr(module, name, None)
        expect_type(layer, nn.Linear, f"attribute {name}")
        expect_shape(layer.weight, (d_model, d_model), f"{name}.weight (d_model, d_model)")
        expect(layer.bias is not None, f"{name} has no bias; nn.MultiheadAttention's projections have one")
    return module.eval()


@torch.no_grad()
def _oracle(module: nn.Module, d_model: int, heads: int) -> nn.MultiheadAttention:
    """PyTorch's multi-head attention holding the learner's weights (packed in-projection, out-projection)."""
    ref = nn.MultiheadAttention(d_model, heads, batch_first=True).eval()
    for i, name in enumerate(("W_Q", "W_K", "W_V")):
        ref.in_proj_weight[i * d_model : (i + 1) * d_model] = getattr(module, name).weight
        ref.in_proj_bias[i * d_model : (i + 1) * d_model] = getattr(module, name).bias
    ref.out_proj.weight.copy_(module.W_O.weight)
    ref.out_proj.bias.copy_(module.W_O.bias)
    return ref


def _randomize(module: nn.Module, seed: int) -> None:
    """Give every bias a random value too (nn.Linear's are small), so a forgotten bias shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _compare(cls: Any, d_model: int, heads: int, q_len: int, k_len: int, seed: int, mask: str | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    module = _mha(cls, d_model, heads)
    _randomize(module, seed)
    ref = _oracle(module, d_model, heads)
    query = torch.randn(2, q_len, d_model, generator=g)
    key = query if k_len == q_len else torch.randn(2, k_len, d_model, generator=g)
    value = key if k_len == q_len else torch.randn(2, k_len, d_model, generator=g)  # cross: keys != values
    ours_mask, kwargs = None, {}
    if mask == "padding":
        keep = torch.ones(2, k_len, dtype=torch.bool)
        keep[1, k_len - 2 :] = False  # the last two keys of sentence 1 are pads
        ours_mask, kwargs = keep[:, None, None, :], {"key_padding_mask": ~keep}  # ours: (batch, 1, 1, k_len)
    elif mask == "causal":
        keep = torch.ones(q_len, k_len, dtype=torch.bool).tril()
        ours_mask, kwargs = keep, {"attn_mask": ~keep}  # (q_len, k_len)
    out = module(query, key, value) if ours_mask is None else module(query, key, value, ours_mask)
    expect_shape(out, (2, q_len, d_model), "the output (batch, q_len, d_model)")
    expected, _ = ref(query, key, value, need_weights=False, **kwargs)
    what = {None: "the output", "padding": "the output with a padding mask", "causal": "the output with a causal mask"}
    expect_close(out, expected, what[mask], ATOL, RTOL)


@multihead.test("four projections W_Q, W_K, W_V, W_O: nn.Linear(d_model, d_model) with biases")
def _(cls: Any) -> None:
    _mha(cls, 8, 2)


@multihead.test("self-attention matches nn.MultiheadAttention", points=2)
def _(cls: Any) -> None:
    _compare(cls, d_model=8, heads=2, q_len=5, k_len=5, seed=0)


@multihead.test("cross-attention (other keys and values, another length) matches nn.MultiheadAttention", points=2)
def _(cls: Any) -> None:
    _compare(cls, d_model=12, heads=3, q_len=4, k_len=6, seed=1)


@multihead.test("a padding mask (batch, 1, 1, k_len) hides the pads in every head")
def _(cls: Any) -> None:
    _compare(cls, d_model=8, heads=4, q_len=5, k_len=5, seed=2, mask="padding")


@multihead.test("a causal mask (q_len, k_len) hides the future in every head")
def _(cls: Any) -> None:
    _compare(cls, d_model=8, heads=2, q_len=6, k_len=6, seed=3, mask="causal")


@multihead.test("gradients reach all four projections")
def _(cls: Any) -> None:
    g = torch.Generator().manual_seed(4)
    module = _mha(cls, 8, 2).train()
    x = torch.randn(2, 3, 8, generator=g)
    module(x, x, x).pow(2).sum().backward()
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        grad = getattr(module, name).weight.grad
        expect(grad is not None and bool(grad.abs().sum() > 0), f"no gradient reaches {name}.weight")
