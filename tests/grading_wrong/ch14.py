"""Known-wrong implementations of the chapter 14 exercises: each must fail its check."""

from __future__ import annotations

import functools
import math

import torch


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 14.rmsnorm


def _rms_norm(
    x,
    weight,
    eps=1e-6,
    *,
    centre=False,
    spread=False,
    eps_outside=False,
    dim=-1,
    use_weight=True,
    fixed_eps=None,
    reduce="mean",
):
    eps = eps if fixed_eps is None else fixed_eps
    if centre:
        x = x - x.mean(dim=dim, keepdim=True)
    if spread:  # divides by the standard deviation (around the mean), the mean itself kept
        ms = x.var(dim=dim, correction=0, keepdim=True)
    elif reduce == "sum":
        ms = x.pow(2).sum(dim=dim, keepdim=True)
    else:
        ms = x.pow(2).mean(dim=dim, keepdim=True)
    out = x / (ms.sqrt() + eps) if eps_outside else x / (ms + eps).sqrt()
    return out * weight if use_weight else out


def _rms_norm_float32(x, weight, eps=1e-6):
    return _rms_norm(x.float(), weight.float(), eps)  # float64 in, float32 out


def _rms_norm_in_place(x, weight, eps=1e-6):
    return x.div_(x.pow(2).mean(dim=-1, keepdim=True).add(eps).sqrt()).mul_(weight)


def _rms_norm_detached(x, weight, eps=1e-6):
    with torch.no_grad():
        return _rms_norm(x, weight, eps)


# --------------------------------------------------------------------------- 14.rope


def _rope(
    x,
    start=0,
    *,
    pairs="interleaved",
    sign=1.0,
    exponent=2.0,
    use_start=True,
    shift=0,
    out="interleaved",
    swap=False,
    flip=False,
):
    length, d = x.shape[-2:]
    theta = 10000.0 ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)
    if flip:
        theta = theta.flip(0)
    first = (start if use_start else 0) + shift
    angles = sign * torch.arange(first, first + length, dtype=torch.float64)[:, None] * theta  # (len, d / 2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if swap:
        cos, sin = sin, cos
    if pairs == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
    else:  # rotate-half: feature i with feature i + d / 2
        a, b = x[..., : d // 2], x[..., d // 2 :]
    a, b = a * cos - b * sin, a * sin + b * cos
    if (out if pairs == "interleaved" else "halves") == "halves":
        return torch.cat((a, b), dim=-1)
    return torch.stack((a, b), dim=-1).flatten(-2)


def _rope_added(x, start=0):
    """Chapter 3's sinusoids added to x instead of a turn."""
    length, d = x.shape[-2:]
    angles = torch.arange(start, start + length, dtype=torch.float64)[:, None] * 10000.0 ** (
        -torch.arange(0, d, 2, dtype=torch.float64) / d
    )
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2).to(x.dtype)
    return x + pe


def _rope_in_place(x, start=0):
    turned = _rope(x.detach(), start)
    x[...] = turned  # writes into its input
    return x


def _rope_detached(x, start=0):
    return _rope(x.detach(), start)


def _rope_float32(x, start=0):
    return _rope(x.float(), start)


# --------------------------------------------------------------------------- 14.gqa


def _gqa(
    Q,
    K,
    V,
    mask=None,
    *,
    expand="interleave",
    scale="d_k",
    softmax_dim=-1,
    use_mask=True,
    invert=False,
    mask_after=False,
):
    heads, kv = Q.size(1), K.size(1)
    group = heads // kv
    if expand == "interleave":
        K, V = K.repeat_interleave(group, dim=1), V.repeat_interleave(group, dim=1)
    elif expand == "tile":  # 0 1 0 1 instead of 0 0 1 1
        K, V = K.repeat(1, group, 1, 1), V.repeat(1, group, 1, 1)
    else:  # "first": every query head reads key/value head 0
        K, V = K[:, :1].expand(-1, heads, -1, -1), V[:, :1].expand(-1, heads, -1, -1)
    d = {"d_k": Q.size(-1), "none": 1, "d_model": heads * Q.size(-1)}[scale]
    scores = Q @ K.transpose(-2, -1) / math.sqrt(d)
    if mask is not None and use_mask and not mask_after:
        scores = scores.masked_fill(mask if invert else ~mask, float("-inf"))
    weights = torch.softmax(scores, dim=softmax_dim)
    if mask is not None and use_mask and mask_after:
        weights = weights * mask
    return weights @ V


def _gqa_in_place(Q, K, V, mask=None):
    Q.div_(math.sqrt(Q.size(-1)))  # scales the caller's queries
    return _gqa(Q, K, V, mask, scale="none")


def _gqa_detached(Q, K, V, mask=None):
    with torch.no_grad():
        return _gqa(Q, K, V, mask)


WRONG = {
    "14.rmsnorm": [
        ("LayerNorm: the mean subtracted", _variant(_rms_norm, centre=True)),
        ("divides by the standard deviation", _variant(_rms_norm, spread=True)),
        ("eps outside the square root", _variant(_rms_norm, eps_outside=True)),
        ("mean over the first dimension", _variant(_rms_norm, dim=0)),
        ("mean over the second-to-last dimension", _variant(_rms_norm, dim=-2)),
        ("the weight forgotten", _variant(_rms_norm, use_weight=False)),
        ("eps ignored: always 1e-6", _variant(_rms_norm, fixed_eps=1e-6)),
        ("sum of squares, not mean", _variant(_rms_norm, reduce="sum")),
        ("float64 in, float32 out", _rms_norm_float32),
        ("computed under no_grad", _rms_norm_detached),
        ("changes x in place", _rms_norm_in_place),
    ],
    "14.rope": [
        ("rotate-half: pairs (i, i + d_k/2)", _variant(_rope, pairs="halves")),
        ("the angle's sign flipped", _variant(_rope, sign=-1.0)),
        ("frequencies 10000^(-i/d_k)", _variant(_rope, exponent=1.0)),
        ("frequencies reversed", _variant(_rope, flip=True)),
        ("start ignored", _variant(_rope, use_start=False)),
        ("turned by position + 1", _variant(_rope, shift=1)),
        ("pairs written back as halves", _variant(_rope, out="halves")),
        ("cos and sin swapped", _variant(_rope, swap=True)),
        ("sinusoids added, not a turn", _rope_added),
        ("the input detached", _rope_detached),
        ("writes into x in place", _rope_in_place),
        ("float64 in, float32 out", _rope_float32),
    ],
    "14.gqa": [
        ("kv heads tiled (repeat), not repeat_interleave", _variant(_gqa, expand="tile")),
        ("every query head reads kv head 0", _variant(_gqa, expand="first")),
        ("no √d_k", _variant(_gqa, scale="none")),
        ("√d_model, not √d_k", _variant(_gqa, scale="d_model")),
        ("softmax over the queries", _variant(_gqa, softmax_dim=-2)),
        ("the mask ignored", _variant(_gqa, use_mask=False)),
        ("the mask inverted", _variant(_gqa, invert=True)),
        ("the mask applied after the softmax", _variant(_gqa, mask_after=True)),
        ("computed under no_grad", _gqa_detached),
        ("scales Q in place", _gqa_in_place),
    ],
}
