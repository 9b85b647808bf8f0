"""Known-wrong implementations of the chapter 10 exercises: each must fail its check."""

from __future__ import annotations

import functools
import math

import torch


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 10.kv_cache_bytes


def _cache_bytes(
    config,
    batch,
    src_len,
    tgt_len,
    dtype=torch.float32,
    *,
    kinds=2,
    cross=True,
    self_attention=True,
    cross_len="src",
    fixed_size=None,
    bits=False,
    layers=None,
    per_head=False,
    as_tensor=False,
):
    size = fixed_size or torch.empty((), dtype=dtype).element_size()
    features = config.d_model // config.h if per_head else config.d_model
    positions = (tgt_len if self_attention else 0) + ((src_len if cross_len == "src" else tgt_len) if cross else 0)
    total = (config.N if layers is None else layers) * kinds * batch * positions * features * size
    total = 8 * total if bits else total
    return torch.tensor(total) if as_tensor else total


# --------------------------------------------------------------------------- 10.flops


def _flops(
    config,
    src_len,
    tgt_len,
    batch=1,
    training=True,
    *,
    backward=2,
    per_mac=2,
    o_twice=False,
    kv_once=False,
    cross_kv_per_target=False,
    generator=True,
    weighted_values=True,
    ff_products=2,
    use_batch=True,
    as_float=False,
):
    S, T, d, d_ff, N, V = src_len, tgt_len, config.d_model, config.d_ff, config.N, config.tgt_vocab

    def mm(rows, a, b):
        return per_mac * rows * a * b

    projections = 4 + (1 if o_twice else 0) - (1 if kv_once else 0)
    attention = 2 if weighted_values else 1
    cross_kv_rows = T if cross_kv_per_target else S
    encoder = projections * mm(S, d, d) + attention * mm(S, S, d) + ff_products * mm(S, d, d_ff)
    decoder = projections * mm(T, d, d) + attention * mm(T, T, d) + ff_products * mm(T, d, d_ff)
    decoder += (2 + (1 if o_twice else 0)) * mm(T, d, d) + (1 if kv_once else 2) * mm(cross_kv_rows, d, d)
    decoder += attention * mm(T, S, d)
    forward = N * (encoder + decoder) + (mm(T, d, V) if generator else 0)
    forward *= batch if use_batch else 1
    total = (1 + backward) * forward if training else forward
    return total / 1 if as_float else total


# --------------------------------------------------------------------------- 10.tiled_attention


def _tiled(
    query,
    key,
    value,
    mask=None,
    block_size=64,
    trace=None,
    *,
    rescale_acc=True,
    rescale_denom=True,
    scale=True,
    use_mask=True,
    guard_tile=True,
    guard_row=True,
    drop_last=False,
    subtract_max=True,
    whole=False,
):
    if whole:  # ignores block_size: one block of all the keys (the whole score matrix at once), no trace
        block_size, trace = key.size(-2), None
    factor = 1.0 / math.sqrt(query.size(-1)) if scale else 1.0
    m = torch.full((*query.shape[:-1], 1), -math.inf, dtype=query.dtype)
    denom = torch.zeros_like(m)
    acc = torch.zeros((*query.shape[:-1], value.size(-1)), dtype=query.dtype)
    stop = (key.size(-2) // block_size) * block_size if drop_last else key.size(-2)
    for start in range(0, stop, block_size):
        scores = query @ key[..., start : start + block_size, :].transpose(-2, -1) * factor
        if mask is not None and use_mask:
            scores = scores.masked_fill(~mask[..., start : start + block_size], -math.inf)
        if subtract_max:
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
        else:
            m_new = torch.zeros_like(m)
        safe = m_new.masked_fill(m_new == -math.inf, 0.0) if guard_tile else m_new
        correction = torch.exp(m - safe)
        p = torch.exp(scores - safe)
        denom = (denom * correction if rescale_denom else denom) + p.sum(dim=-1, keepdim=True)
        acc = (acc * correction if rescale_acc else acc) + p @ value[..., start : start + block_size, :]
        m = m_new
        if trace is not None:
            trace.append((m[..., 0].clone(), denom[..., 0].clone()))
    return acc / (denom.masked_fill(denom == 0, 1.0) if guard_row else denom)


def _trace_before_rescaling(query, key, value, mask=None, block_size=64, trace=None):
    """Right output, but the trace records the denominator before the block is added."""
    inner: list = []
    out = _tiled(query, key, value, mask, block_size, inner)
    if trace is not None:
        previous = [torch.zeros_like(inner[0][1])] + [d for _, d in inner[:-1]]
        trace.extend((m, d) for (m, _), d in zip(inner, previous))
    return out


WRONG = {
    "10.kv_cache_bytes": [
        ("keys and values counted as one tensor", _variant(_cache_bytes, kinds=1)),
        ("no cross-attention cache", _variant(_cache_bytes, cross=False)),
        ("no self-attention cache", _variant(_cache_bytes, self_attention=False)),
        ("cross-attention cache over tgt_len", _variant(_cache_bytes, cross_len="tgt")),
        ("always 4 bytes per number", _variant(_cache_bytes, fixed_size=4)),
        ("bits instead of bytes", _variant(_cache_bytes, bits=True)),
        ("one decoder layer", _variant(_cache_bytes, layers=1)),
        ("d_k per position instead of d_model", _variant(_cache_bytes, per_head=True)),
        ("returns a tensor", _variant(_cache_bytes, as_tensor=True)),
    ],
    "10.flops": [
        ("backward pass not counted", _variant(_flops, backward=0)),
        ("backward pass counted as one forward", _variant(_flops, backward=1)),
        ("a multiply-add counted as one FLOP", _variant(_flops, per_mac=1)),
        ("output projection counted twice", _variant(_flops, o_twice=True)),
        ("K and V counted once", _variant(_flops, kv_once=True)),
        ("cross-attention K and V per target position", _variant(_flops, cross_kv_per_target=True)),
        ("generator missing", _variant(_flops, generator=False)),
        ("weights @ V missing", _variant(_flops, weighted_values=False)),
        ("feed-forward counted as one product", _variant(_flops, ff_products=1)),
        ("batch ignored", _variant(_flops, use_batch=False)),
        ("returns a float", _variant(_flops, as_float=True)),
    ],
    "10.tiled_attention": [
        ("no rescaling when the maximum changes", _variant(_tiled, rescale_acc=False, rescale_denom=False)),
        ("numerator not rescaled", _variant(_tiled, rescale_acc=False)),
        ("denominator not rescaled", _variant(_tiled, rescale_denom=False)),
        ("no 1/sqrt(d_k)", _variant(_tiled, scale=False)),
        ("mask ignored", _variant(_tiled, use_mask=False)),
        ("NaN on a fully masked block", _variant(_tiled, guard_tile=False)),
        ("NaN for a query with no visible key", _variant(_tiled, guard_row=False)),
        ("last shorter block dropped", _variant(_tiled, drop_last=True)),
        ("no maximum subtracted", _variant(_tiled, subtract_max=False)),
        ("the whole score matrix at once, no trace", _variant(_tiled, whole=True)),
        ("trace records the denominator before the block", _trace_before_rescaling),
    ],
}
