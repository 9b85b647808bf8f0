"""Chapter 14 exercises — what changed since 2017.

* ``14.rmsnorm`` — RMSNorm over the last dimension, ``x / sqrt(mean(x^2) + eps) * weight`` (``rms_norm``);
* ``14.rope`` — rotary position embeddings: the feature pairs (2i, 2i + 1) of the row at position m turned by
  the angle ``m * 10000^(-2i / d_k)``, the rows holding positions ``start, start + 1, ...`` (``apply_rope``);
* ``14.gqa`` — grouped-query attention: ``kv_heads`` key/value heads, query head j reading key/value head
  ``j // (heads / kv_heads)`` (``grouped_query_attention``).

Oracles: PyTorch's ``F.rms_norm`` (the library's formula where PyTorch has none; the hidden tests also use the
library's ``modern.RMSNorm``); a complex multiplication by ``e^(i m theta)`` in float64 for RoPE (the hidden
tests also use the library's ``modern.RotaryEmbedding``); PyTorch's ``F.scaled_dot_product_attention``, one
query head at a time on the key/value head of its group, for grouped-query attention (the hidden tests also
use the library's ``modern.GroupedQueryAttention``). A wrong answer is compared with the results of the usual
slips, so that the message can name the slip without giving the answer away.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .ch06 import randn
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register


def _name_slip(out: Tensor, expected: Tensor, slips: dict[str, Tensor | None], atol: float) -> str:
    """The message of the first known slip that ``out`` equals (within ``atol``) and the right answer does not."""
    out = out.detach().double()
    for message, value in slips.items():
        if value is None or tuple(value.shape) != tuple(out.shape):
            continue
        value = value.detach().double()
        if (value - expected.double()).abs().max() > 10 * atol and bool(((out - value).abs() <= atol).all()):
            return message
    return ""


def _expect_tensor(out: Any, like: Tensor, what: str) -> Tensor:
    """``out`` must be a tensor of ``like``'s shape and dtype."""
    expect_shape(out, tuple(like.shape), what)
    expect(out.dtype == like.dtype, f"{what} has dtype {out.dtype}, the input {like.dtype}")
    return out


def _on_leaves(call: Callable[[], Any], name: str) -> Any:
    """``call()`` on inputs that require grad: an in-place change of an input is named, not a bare RuntimeError."""
    try:
        return call()
    except Exception as exc:  # the producer's RuntimeError arrives as a PeerError
        text = f"{getattr(exc, 'message', '')} {exc}"
        if "in-place" in text or "inplace" in text:
            raise Mismatch(
                f"{name} changes its input in place (autograd refuses to, on a tensor that requires grad): return a "
                "new tensor, leave the input as it was"
            ) from None
        raise


# --------------------------------------------------------------------------- 14.rmsnorm

rmsnorm = register(Exercise("14.rmsnorm", "RMSNorm", target="rms_norm", timeout_s=20))

NORM_ATOL, NORM_RTOL = 1e-5, 1e-5  # float32: only the order of the reduction differs (~1e-7)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The oracle: PyTorch's ``F.rms_norm`` over the last dimension (the library's formula where it is missing)."""
    x, weight = x.detach(), weight.detach()
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.size(-1),), weight, eps)
    return x * x.pow(2).mean(-1, keepdim=True).add(eps).rsqrt() * weight  # pragma: no cover (torch < 2.4)


def _norm_slips(x: Tensor, weight: Tensor, eps: float) -> dict[str, Tensor | None]:
    """The result of each known slip (for naming the one a wrong answer equals)."""
    x, weight = x.detach().double(), weight.detach().double()
    ms = x.pow(2).mean(-1, keepdim=True)
    mean = x.mean(-1, keepdim=True)
    slips: dict[str, Tensor | None] = {
        "the mean of the features is subtracted, as LayerNorm does: RMSNorm does not re-centre them": (
            (x - mean) / (x.var(-1, correction=0, keepdim=True) + eps).sqrt() * weight
        ),
        "the vector is divided by its standard deviation (the spread around the mean), not by its root mean square": x
        / (x.var(-1, correction=0, keepdim=True) + eps).sqrt()
        * weight,
        "the vector is divided by its (unbiased) standard deviation, not by its root mean square": (
            x / (x.var(-1, correction=1, keepdim=True) + eps).sqrt() * weight if x.size(-1) > 1 else None
        ),
        "eps is added after the square root, not to the mean square under it": x / (ms.sqrt() + eps) * weight,
        "the weight is not applied": x / (ms + eps).sqrt(),
        "the squares are summed over the features, not averaged": x
        / (x.pow(2).sum(-1, keepdim=True) + eps).sqrt()
        * weight,
        "the vector is divided by the mean square itself, not by its square root": x / (ms + eps) * weight,
        "the mean of |x| is used, not the root mean square": x / (x.abs().mean(-1, keepdim=True) + eps) * weight,
    }
    for fixed in (0.0, 1e-8, 1e-6, 1e-5):
        if eps >= 100 * fixed + 1e-4:  # a fixed eps, far smaller than the one given
            slips[f"eps is not the one given: the result is that of eps = {fixed:g}"] = x / (ms + fixed).sqrt() * weight
            break
    for dim in range(x.dim() - 1):
        wrong = x / (x.pow(2).mean(dim, keepdim=True) + eps).sqrt() * weight
        slips[f"the mean square is taken over dimension {dim}, not over the features (the last dimension)"] = wrong
    return slips


def _normed(rms_norm: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The learner's ``rms_norm(x, weight, eps)``, checked for type, shape and dtype."""
    return _expect_tensor(rms_norm(x, weight, eps), x, f"rms_norm(x of shape {tuple(x.shape)}, ...)")


def _expect_norm(out: Tensor, x: Tensor, weight: Tensor, eps: float, what: str, atol: float = NORM_ATOL) -> None:
    expected = rms_norm_reference(x, weight, eps)
    hint = _name_slip(out, expected, _norm_slips(x, weight, eps), atol)
    expect_close(out, expected, what, atol=atol, rtol=NORM_RTOL, hint=hint)


def norm_inputs(shape: tuple[int, ...], seed: int, offset: float = 1.0, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Seeded ``x`` of ``shape`` (features with a mean far from 0, so that re-centring shows) and a ``weight``."""
    x = (randn(*shape, seed=seed) + offset) * scale
    weight = randn(shape[-1], seed=seed + 1, scale=0.5) + 1.0  # near 1, every feature its own
    return x, weight


@rmsnorm.test("same shape and dtype as the input (float32 and float64)")
def _(rms_norm: Any) -> None:
    x, weight = norm_inputs((2, 5, 8), seed=201)
    _normed(rms_norm, x, weight, 1e-6)
    _normed(rms_norm, x.double(), weight.double(), 1e-6)


@rmsnorm.test("x / sqrt(mean(x²) + eps) · weight for every vector", points=2)
def _(rms_norm: Any) -> None:
    x, weight = norm_inputs((2, 5, 8), seed=202)
    _expect_norm(_normed(rms_norm, x, weight, 1e-6), x, weight, 1e-6, "the output of features with a mean of ~1")


@rmsnorm.test("eps is used as given, under the square root (small vectors, eps = 0.01)")
def _(rms_norm: Any) -> None:
    x, weight = norm_inputs((4, 6), seed=204, offset=0.0, scale=0.1)  # mean square ~0.01: as large as eps
    _expect_norm(_normed(rms_norm, x, weight, 1e-2), x, weight, 1e-2, "the output with eps = 0.01")


@rmsnorm.test("with weight 1 every output vector has a root mean square of 1")
def _(rms_norm: Any) -> None:
    x, _ = norm_inputs((3, 4, 16), seed=206, scale=7.0)
    out = _normed(rms_norm, x, torch.ones(16), 1e-6).detach()
    rms = out.pow(2).mean(-1).sqrt()  # (3, 4)
    bad = (rms - 1).abs() > 1e-4
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise Mismatch(
            f"with weight 1, the output vector at index {where} (of the leading dimensions) has a root mean square "
            f"of {float(rms[where]):.4g}, not 1"
        )


@rmsnorm.test("over the last dimension, whatever the leading ones")
def _(rms_norm: Any) -> None:
    for shape, seed in (((10,), 207), ((4, 3, 6), 209), ((2, 3, 4, 5), 211)):
        x, weight = norm_inputs(shape, seed=seed)
        _expect_norm(_normed(rms_norm, x, weight, 1e-6), x, weight, 1e-6, f"the output for x of shape {shape}")


@rmsnorm.test("gradients with respect to x and the weight")
def _(rms_norm: Any) -> None:
    x, weight = norm_inputs((3, 7), seed=213)
    g = randn(3, 7, seed=215)
    x.requires_grad_(), weight.requires_grad_()
    out = _on_leaves(lambda: _normed(rms_norm, x, weight, 1e-5), "rms_norm")
    expect(out.requires_grad, "the output does not require a gradient: is it detached, or computed under no_grad?")
    (out * g).sum().backward()
    ours = x.grad, weight.grad
    expect(ours[0] is not None, "no gradient reached x")
    expect(ours[1] is not None, "no gradient reached the weight")
    x.grad = weight.grad = None
    (x * x.pow(2).mean(-1, keepdim=True).add(1e-5).rsqrt() * weight * g).sum().backward()  # the formula, by autograd
    expect_close(ours[0], x.grad, "the gradient with respect to x", atol=1e-5, rtol=1e-4)
    expect_close(ours[1], weight.grad, "the gradient with respect to the weight", atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- 14.rope

rope = register(Exercise("14.rope", "Rotary position embeddings", target="apply_rope", timeout_s=30))

BASE = 10000.0
ROPE_ATOL = 1e-4  # float32 angles of positions up to ~100 against float64 ones: ~1e-5 apart


def inv_frequencies(d_k: int, exponent: float = 2.0) -> Tensor:
    """``(d_k // 2,)`` float64: ``theta_i = 10000^(-exponent * i / d_k)`` (exponent 2: the right ones)."""
    return BASE ** (-exponent * torch.arange(d_k // 2, dtype=torch.float64) / d_k)


def rope_angles(length: int, d_k: int, start: int = 0, exponent: float = 2.0) -> Tensor:
    """``(length, d_k // 2)`` float64: the angle by which pair i of the row at position ``start + t`` is turned."""
    positions = torch.arange(start, start + length, dtype=torch.float64)
    return positions[:, None] * inv_frequencies(d_k, exponent)


def turn(x: Tensor, angles: Tensor, pairs: str = "interleaved", out_layout: str | None = None) -> Tensor:
    """``x`` ``(..., len, d_k)`` with each pair turned by ``angles`` ``(len, d_k // 2)``, as a complex product.

    ``pairs``: "interleaved" (features 2i, 2i + 1) or "halves" (features i, i + d_k / 2, the rotate-half
    convention); ``out_layout`` (default: as ``pairs``) is how the turned pairs are written back. float64.
    """
    x = x.detach().double()
    d = x.size(-1)
    if pairs == "interleaved":
        z = torch.complex(x[..., 0::2], x[..., 1::2])  # (..., len, d_k // 2)
    else:
        z = torch.complex(x[..., : d // 2], x[..., d // 2 :])
    z = z * torch.polar(torch.ones_like(angles), angles)  # e^(i * angle): a turn of every pair
    layout = out_layout or pairs
    if layout == "interleaved":
        return torch.stack((z.real, z.imag), dim=-1).flatten(-2)  # (..., len, d_k)
    return torch.cat((z.real, z.imag), dim=-1)


def rope_reference(x: Tensor, start: int = 0) -> Tensor:
    """The oracle: each pair (2i, 2i + 1) of the row at position m times e^(i m theta_i), in float64."""
    return turn(x, rope_angles(x.size(-2), x.size(-1), start)).to(x.dtype)


def _rope_slips(x: Tensor, start: int) -> dict[str, Tensor | None]:
    """The result of each known slip (for naming the one a wrong answer equals)."""
    length, d = x.size(-2), x.size(-1)
    right = rope_angles(length, d, start)
    return {
        "the features are paired as (i, i + d_k/2), the rotate-half convention: this exercise pairs "
        "neighbours, (2i, 2i + 1)": turn(x, right, pairs="halves"),
        "every pair is turned the other way round: the sign of the angle is flipped": turn(x, -right),
        "the frequencies fall too slowly from pair to pair: pair i turns at 10000^(-i/d_k) per position": turn(
            x, rope_angles(length, d, start, exponent=1.0)
        ),
        "the frequencies run the wrong way: the fastest pair is the last one, not pair 0": turn(x, right.flip(-1)),
        "every row is turned by one position too many: the first row of start = 0 is position 0": turn(
            x, rope_angles(length, d, start + 1)
        ),
        "start is ignored: the rows are turned as positions 0, 1, 2, ... whatever start is": (
            turn(x, rope_angles(length, d, 0)) if start else None
        ),
        "the pairs are turned, but written back as two halves (all first coordinates, then all second ones), "
        "not interleaved": turn(x, right, out_layout="halves"),
        "cos and sin are swapped": turn(x, math.pi / 2 - right),
    }


def _turned(apply_rope: Any, x: Tensor, start: int | None = None) -> Tensor:
    """The learner's ``apply_rope(x)`` (or ``apply_rope(x, start=start)``), checked for type, shape and dtype."""
    out = apply_rope(x) if start is None else apply_rope(x, start=start)
    call = f"apply_rope(x of shape {tuple(x.shape)}{'' if start is None else f', start={start}'})"
    return _expect_tensor(out, x, call)


def _where_rope(out: Tensor, expected: Tensor, start: int) -> str:
    """'position m, pair i (features 2i, 2i + 1)' of the first wrong pair."""
    d = out.size(-1)
    diff = (out.detach().double() - expected.double()).abs()
    wrong = (diff > ROPE_ATOL).reshape(*out.shape[:-1], d // 2, 2).any(-1)  # (..., len, d_k // 2)
    if not bool(wrong.any()):
        return ""
    index = tuple(int(i) for i in wrong.nonzero()[0])
    t, i = index[-2], index[-1]
    lead = f" of the vector at {index[:-2]}" if len(index) > 2 else ""
    return f"the first wrong pair is pair {i} (features {2 * i}, {2 * i + 1}) at position {start + t}{lead}"


def _expect_rope(out: Tensor, x: Tensor, start: int, what: str, atol: float = ROPE_ATOL) -> None:
    expected = rope_reference(x, start)
    hint = _name_slip(out, expected, _rope_slips(x, start), atol) or _where_rope(out, expected, start)
    expect_close(out, expected, what, atol=atol, rtol=0, hint=hint)


@rope.test("same shape and dtype as the input (float32 and float64)")
def _(apply_rope: Any) -> None:
    x = randn(2, 5, 8, seed=221)
    _turned(apply_rope, x)
    _turned(apply_rope, x.double())


@rope.test("position 0 is left as it is")
def _(apply_rope: Any) -> None:
    x = randn(3, 4, 16, seed=222)
    out = _turned(apply_rope, x).detach()
    expect_close(
        out[..., 0, :],
        x[..., 0, :],
        "the first row (position 0)",
        atol=1e-6,
        rtol=0,
        hint="at position 0 every angle is 0, and a turn by 0 changes nothing",
    )


@rope.test("each pair (2i, 2i + 1) keeps its length")
def _(apply_rope: Any) -> None:
    x = randn(2, 6, 8, seed=223)
    out = _turned(apply_rope, x).detach()
    norms_in, norms_out = x.norm(dim=-1), out.norm(dim=-1)
    if bool(((norms_in - norms_out).abs() > 1e-4).any()):
        raise Mismatch("the vectors do not keep their length: a turn changes no length")
    pairs_in = x.reshape(2, 6, 4, 2).norm(dim=-1)  # (batch, len, pairs)
    pairs_out = out.reshape(2, 6, 4, 2).norm(dim=-1)
    bad = (pairs_in - pairs_out).abs() > 1e-4
    if bool(bad.any()):
        b, t, i = (int(v) for v in bad.nonzero()[0])
        raise Mismatch(
            f"the vectors keep their length, but pair {i} (features {2 * i}, {2 * i + 1}) at position {t} "
            f"(batch {b}) does not: are the features paired as neighbours, and written back in their places?"
        )


@rope.test("pair i of the row at position m is turned by the angle m · 10000^(-2i/d_k)", points=2)
def _(apply_rope: Any) -> None:
    for shape, seed in (((3, 12, 16), 224), ((2, 9, 6), 225)):
        x = randn(*shape, seed=seed)
        _expect_rope(_turned(apply_rope, x), x, 0, f"the output for x of shape {shape}")


@rope.test("the score of a query at m and a key at n depends on m − n only")
def _(apply_rope: Any) -> None:
    length, d = 10, 16
    q, k = randn(d, seed=226), randn(d, seed=227)
    rq = _turned(apply_rope, q.expand(length, d).contiguous()).detach().double()  # the same q at every position
    rk = _turned(apply_rope, k.expand(length, d).contiguous()).detach().double()
    scores = rq @ rk.T  # (length, length): query position m, key position n
    for s in range(-length + 1, length):
        diagonal = scores.diagonal(s)  # the pairs with n - m = s
        spread = float(diagonal.max() - diagonal.min())
        if spread > 1e-3:
            m = int((diagonal - diagonal[0]).abs().argmax())
            m0, n0, m1, n1 = max(-s, 0), max(s, 0), max(-s, 0) + m, max(s, 0) + m
            raise Mismatch(
                f"the score of the same query and key at positions (m, n) = ({m0}, {n0}) and ({m1}, {n1}) differs "
                f"by {spread:.3g}, though m − n is the same: RoPE scores depend on the distance only"
            )


@rope.test("start: the rows are positions start, start + 1, …; one row at a time gives the same", points=2)
def _(apply_rope: Any) -> None:
    x = randn(2, 7, 8, seed=228)
    for start in (5, 40):
        _expect_rope(_turned(apply_rope, x, start), x, start, f"the output with start = {start}")
    whole = _turned(apply_rope, x, 0).detach()
    for t in range(x.size(-2)):  # cached decoding: one new position at a time
        one = _turned(apply_rope, x[:, t : t + 1].contiguous(), t)
        expect_close(
            one,
            whole[:, t : t + 1],
            f"row t = {t} turned alone with start = {t}, against the whole sequence's row t",
            atol=ROPE_ATOL,
            rtol=0,
        )


@rope.test("any leading dimensions: (len, d_k), (batch, heads, len, d_k); d_k = 2")
def _(apply_rope: Any) -> None:
    for shape, seed in (((5, 4), 230), ((2, 3, 6, 8), 231), ((4, 2), 232)):
        x = randn(*shape, seed=seed)
        _expect_rope(_turned(apply_rope, x), x, 0, f"the output for x of shape {shape}")


@rope.test("the gradient with respect to x (a turn back)")
def _(apply_rope: Any) -> None:
    x = randn(2, 5, 8, seed=233).requires_grad_()
    g = randn(2, 5, 8, seed=234)
    out = _on_leaves(lambda: _turned(apply_rope, x, 3), "apply_rope")
    expect(out.requires_grad, "the output does not require a gradient: is it detached, or computed under no_grad?")
    (out * g).sum().backward()
    expect(x.grad is not None, "no gradient reached x")
    expected = turn(g, -rope_angles(5, 8, 3)).float()  # the transpose of a turn is the turn back
    expect_close(x.grad, expected, "the gradient with respect to x", atol=ROPE_ATOL, rtol=0)


# --------------------------------------------------------------------------- 14.gqa

gqa = register(Exercise("14.gqa", "Grouped-query attention", target="grouped_query_attention", timeout_s=30))

ATTN_ATOL, ATTN_RTOL = 1e-5, 1e-4  # float32 against PyTorch's attention kernel


def qkv_heads(
    batch: int, heads: int, kv_heads: int, q_len: int, k_len: int, d_k: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded ``Q`` ``(batch, heads, q_len, d_k)``, ``K``, ``V`` ``(batch, kv_heads, k_len, d_k)``; every key/value
    head has its own scale and offset, so that reading the wrong one shows."""
    Q = randn(batch, heads, q_len, d_k, seed=seed)
    scale = torch.linspace(0.5, 2.0, kv_heads)[None, :, None, None]  # (1, kv_heads, 1, 1)
    K = randn(batch, kv_heads, k_len, d_k, seed=seed + 1) * scale
    V = randn(batch, kv_heads, k_len, d_k, seed=seed + 2) + 3.0 * torch.arange(kv_heads)[None, :, None, None]
    return Q, K, V


def _one_head(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None, j: int, c: int, **kwargs: Any) -> Tensor:
    """Attention of query head j with key/value head c (PyTorch's kernel): ``(batch, q_len, d_k)``."""
    full = None if mask is None else torch.broadcast_to(mask, (Q.size(0), Q.size(1), Q.size(-2), K.size(-2)))
    return F.scaled_dot_product_attention(
        Q[:, j], K[:, c], V[:, c], attn_mask=None if full is None else full[:, j], **kwargs
    )


def _per_head(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None, reads: list[int], **kwargs: Any) -> Tensor:
    """Attention of query head j with key/value head ``reads[j]``, one head at a time."""
    return torch.stack([_one_head(Q, K, V, mask, j, c, **kwargs) for j, c in enumerate(reads)], dim=1)


def groups_of(heads: int, kv_heads: int) -> list[int]:
    """The key/value head each query head reads: ``j // (heads / kv_heads)``."""
    return [j // (heads // kv_heads) for j in range(heads)]


def gqa_reference(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """The oracle: query head j attends, with PyTorch's kernel, with key/value head ``j // (heads / kv_heads)``."""
    return _per_head(Q, K, V, mask, groups_of(Q.size(1), K.size(1)))


def _gqa_slips(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> dict[str, Tensor | None]:
    """The result of each known slip (for naming the one a wrong answer equals)."""
    Q, K, V = Q.detach(), K.detach(), V.detach()
    heads, kv, d_k = Q.size(1), K.size(1), Q.size(-1)
    right = groups_of(heads, kv)
    slips: dict[str, Tensor | None] = {
        "the scores are not divided by √d_k": _per_head(Q, K, V, mask, right, scale=1.0),
        "the scores are divided by √(heads · d_k), not by √d_k": _per_head(
            Q, K, V, mask, right, scale=1 / math.sqrt(heads * d_k)
        ),
    }
    if mask is not None:
        slips["the mask is ignored"] = _per_head(Q, K, V, None, right)
        inverted = torch.broadcast_to(~mask, (Q.size(0), heads, Q.size(-2), K.size(-2)))
        if bool(inverted.any(-1).all()):
            slips["the mask is inverted: True marks a key the query may see, False one it may not"] = _per_head(
                Q, K, V, inverted, right
            )
    return slips


def _kv_heads_text(heads: int, kv: int) -> str:
    return f"{heads} query heads and {kv} key/value head{'s' if kv > 1 else ''}"


def _head_report(out: Tensor, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> str:
    """Which key/value head the first wrong query head reads, when it reads one of them exactly (else where it is)."""
    out, Q, K, V = out.detach(), Q.detach(), K.detach(), V.detach()
    heads, kv = Q.size(1), K.size(1)
    right, group = groups_of(heads, kv), heads // kv
    expected = gqa_reference(Q, K, V, mask)

    def same(a: Tensor, b: Tensor) -> bool:
        return bool(((a - b).abs() <= ATTN_ATOL + ATTN_RTOL * b.abs()).all())

    for j in range(heads):
        if same(out[:, j], expected[:, j]):
            continue
        for c in range(kv):
            if c != right[j] and same(out[:, j], _one_head(Q, K, V, mask, j, c)):
                first = right[j] * group
                groups = (
                    "each query head has a key/value head of its own"
                    if group == 1
                    else f"heads {first}–{first + group - 1} form a group"
                )
                return (
                    f"query head {j} attends with key/value head {c}, which serves other query heads: with "
                    f"{_kv_heads_text(heads, kv)}, {groups}"
                )
        return f"the first wrong query head is head {j} (with {_kv_heads_text(heads, kv)})"
    return ""


def _attended(grouped_query_attention: Any, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """The learner's output, checked for type, shape and dtype."""
    out = grouped_query_attention(Q, K, V) if mask is None else grouped_query_attention(Q, K, V, mask)
    call = f"grouped_query_attention(Q {tuple(Q.shape)}, K and V {tuple(K.shape)}{'' if mask is None else ', mask'})"
    expect_type(out, Tensor, call)
    expect_shape(out, tuple(Q.shape), f"{call} (batch, heads, q_len, d_k)")
    expect(out.dtype == Q.dtype, f"{call} has dtype {out.dtype}, the queries {Q.dtype}")
    return out


def _expect_gqa(out: Tensor, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None, what: str) -> None:
    expected = gqa_reference(Q.detach(), K.detach(), V.detach(), mask)
    atol = ATTN_ATOL if Q.dtype != torch.float64 else 1e-10
    hint = _name_slip(out, expected, _gqa_slips(Q, K, V, mask), 10 * atol) or _head_report(out, Q, K, V, mask)
    expect_close(out, expected, what, atol=atol, rtol=ATTN_RTOL, hint=hint)


def _case(
    f: Any, batch: int, heads: int, kv: int, q_len: int, k_len: int, d_k: int, seed: int, mask: Tensor | None = None
) -> None:
    Q, K, V = qkv_heads(batch, heads, kv, q_len, k_len, d_k, seed)
    what = f"the output with {_kv_heads_text(heads, kv)}"
    _expect_gqa(_attended(f, Q, K, V, mask), Q, K, V, mask, what + ("" if mask is None else ", masked"))


@gqa.test("output shape (batch, heads, q_len, d_k), the queries' dtype")
def _(grouped_query_attention: Any) -> None:
    _attended(grouped_query_attention, *qkv_heads(2, 4, 2, 5, 5, 8, seed=241))


@gqa.test("as many key/value heads as query heads: chapter 2's attention in every head")
def _(grouped_query_attention: Any) -> None:
    _case(grouped_query_attention, 2, 3, 3, 5, 5, 8, seed=242)


@gqa.test("query head j reads key/value head j // (heads / kv_heads)", points=2)
def _(grouped_query_attention: Any) -> None:
    for heads, kv, seed in ((4, 2, 245), (6, 2, 248), (6, 3, 251)):
        _case(grouped_query_attention, 2, heads, kv, 5, 5, 8, seed=seed)


@gqa.test("multi-query attention: one key/value head for every query head")
def _(grouped_query_attention: Any) -> None:
    _case(grouped_query_attention, 2, 4, 1, 6, 6, 4, seed=254)


@gqa.test("a causal mask (q_len, k_len) and a padding mask (batch, 1, 1, k_len)", points=2)
def _(grouped_query_attention: Any) -> None:
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    _case(grouped_query_attention, 2, 4, 2, 6, 6, 8, seed=257, mask=causal)
    padding = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    padding[1, ..., 5:] = padding[2, ..., 3:] = False  # the last keys of sentences 1 and 2 are <pad>
    _case(grouped_query_attention, 3, 4, 2, 7, 7, 8, seed=260, mask=padding)


@gqa.test("one new query against a cache of keys (q_len = 1, k_len = 7)")
def _(grouped_query_attention: Any) -> None:
    _case(grouped_query_attention, 2, 6, 2, 1, 7, 8, seed=263)


@gqa.test("gradients reach Q, K and V; a key/value head gathers those of its whole group")
def _(grouped_query_attention: Any) -> None:
    Q, K, V = qkv_heads(2, 4, 2, 5, 5, 8, seed=266)
    g = randn(2, 4, 5, 8, seed=269)
    for t in (Q, K, V):
        t.requires_grad_()
    out = _on_leaves(lambda: _attended(grouped_query_attention, Q, K, V), "grouped_query_attention")
    expect(out.requires_grad, "the output does not require a gradient: is it detached, or computed under no_grad?")
    (out * g).sum().backward()
    ours = [t.grad for t in (Q, K, V)]
    for name, grad in zip("QKV", ours):
        expect(grad is not None, f"no gradient reached {name}")
        expect(bool(grad.abs().sum() > 0), f"the gradient with respect to {name} is zero")
    for t in (Q, K, V):
        t.grad = None
    (gqa_reference(Q, K, V) * g).sum().backward()
    for name, grad, t in zip("QKV", ours, (Q, K, V)):
        expect_close(grad, t.grad, f"the gradient with respect to {name}", atol=1e-5, rtol=1e-4)
