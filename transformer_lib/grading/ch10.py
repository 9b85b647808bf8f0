"""Chapter 10 exercises — making it fast.

* ``10.kv_cache_bytes`` — the memory of chapter 9's key/value cache, in bytes (``kv_cache_bytes``);
* ``10.flops`` — the matrix-multiply FLOPs of the encoder–decoder, forward and training (``transformer_flops``);
* ``10.tiled_attention`` — attention one block of keys at a time with an online softmax, masks included
  (``tiled_attention``).

Oracles: the bytes of the tensors a real ``decode.KVCache`` holds after ``decode_step`` has run (on the
``meta`` device for the paper's sizes); PyTorch's ``FlopCounterMode`` around a real model's forward (and
backward) pass, and the library's ``bench.transformer_flops`` where a model would be too large; PyTorch's
``F.scaled_dot_product_attention`` for tiled attention, with the course's convention that a query with no
visible key gets a zero output. A wrong count is compared with the counts of the usual slips (K and V counted
once, the backward pass forgotten, ...), so that the message can name the slip without giving the answer.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from transformer_lib.bench import transformer_flops
from transformer_lib.decode import KVCache, decode_step
from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.model import Transformer, TransformerConfig

from .ch06 import generator
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, register

# --------------------------------------------------------------------------- helpers


def seeded_model(config: TransformerConfig, seed: int = 0, device: str = "cpu") -> Transformer:
    """A Transformer of ``config`` with seeded weights (``meta``: shapes only, no memory), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            return Transformer(config).eval()


def _ids(batch: int, length: int, vocab: int, seed: int, device: str = "cpu") -> Tensor:
    """``(batch, length)`` random token ids >= 1 (never <pad> = 0); all ones on the meta device."""
    if device == "meta":
        return torch.ones(batch, length, dtype=torch.long, device="meta")
    return torch.randint(1, max(vocab, 2), (batch, length), generator=generator(seed))


def _percent_off(got: int, expected: int) -> str:
    """'25% too large' / '0.317% too small': how far a count is off, without the expected value."""
    return f"{abs(got / expected - 1) * 100:.3g}% {'too large' if got > expected else 'too small'}"


def _name_slip(got: int, variants: dict[str, int | None]) -> str:
    """The messages of the known slips whose count equals ``got``, joined by "or" ('' if none does)."""
    return "; or ".join(message for message, value in variants.items() if value is not None and got == value)


def _expect_int(value: Any, what: str) -> int:
    if isinstance(value, float):
        raise Mismatch(f"{what} should be a Python int, got a float: a count is a whole number (avoid `/`)")
    expect(
        isinstance(value, int) and not isinstance(value, bool),
        f"{what} should be a Python int, got {type(value).__name__}",
    )
    expect(value >= 0, f"{what} is negative ({value})")
    return value


# --------------------------------------------------------------------------- 10.kv_cache_bytes

kv_bytes = register(
    Exercise("10.kv_cache_bytes", "The memory of the key/value cache", target="kv_cache_bytes", timeout_s=30)
)

CACHE_CONFIGS = (
    TransformerConfig(11, 13, N=3, d_model=16, d_ff=32, h=4, dropout=0.0),
    TransformerConfig(11, 13, N=2, d_model=12, d_ff=24, h=3, dropout=0.0),
)


def cache_tensors(cache: KVCache) -> list[Tensor]:
    """Every tensor a ``KVCache`` holds: self-attention keys and values (once filled), cross-attention ones."""
    groups = (cache.self_keys, cache.self_values, cache.cross_keys, cache.cross_values)
    return [t for group in groups for t in group if t is not None]


def kv_cache_bytes_reference(
    config: TransformerConfig,
    batch: int,
    src_len: int,
    tgt_len: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> int:
    """The oracle: the bytes of the tensors of a real ``KVCache`` after ``tgt_len`` calls of ``decode_step``."""
    model = seeded_model(config, device=device).to(dtype)
    src = _ids(batch, src_len, config.src_vocab, seed=101, device=device)
    tokens = _ids(batch, max(tgt_len, 1), config.tgt_vocab, seed=102, device=device)
    with torch.no_grad():
        cache = KVCache(model, model.encode(src, None))  # cross-attention keys/values of the memory
        for t in range(tgt_len):
            decode_step(model, cache, None, tokens[:, t])  # appends one position to every layer's self-attention
    return sum(t.numel() * t.element_size() for t in cache_tensors(cache))


def _cache_slips(config: TransformerConfig, batch: int, src_len: int, tgt_len: int, dtype: torch.dtype) -> dict:
    """{message: count} of the usual slips (computed from the sizes; only used to name a wrong count)."""
    size = torch.empty((), dtype=dtype).element_size()
    N, d, h = config.N, config.d_model, config.h

    def one_kind(positions: int) -> int:
        return N * batch * positions * d * size  # the keys (or the values) of all layers

    right = 2 * one_kind(src_len) + 2 * one_kind(tgt_len)
    return {
        "the keys and the values are counted as one tensor: each layer caches both": right // 2,
        "the cross-attention keys and values (computed once from the encoder's memory) are missing": 2
        * one_kind(tgt_len),
        "only the cross-attention keys and values are counted: the self-attention ones are missing": (
            2 * one_kind(src_len) if tgt_len else None
        ),
        "the cross-attention keys and values are counted for tgt_len positions: they cover the source": 4
        * one_kind(tgt_len),
        "the bytes per number do not follow dtype": (right // size * 4) if size != 4 else None,
        "the count is in bits, not bytes": 8 * right,
        "only one decoder layer is counted": (right // N) if N > 1 else None,
        "each position is counted with d_k numbers per layer: every head caches its own d_k, h * d_k in all": (
            right // h if h > 1 else None
        ),
    }


def _bytes(kv_cache_bytes: Any, config: TransformerConfig, batch: int, src_len: int, tgt_len: int, dtype) -> int:
    return _expect_int(kv_cache_bytes(config, batch, src_len, tgt_len, dtype), "kv_cache_bytes(...)")


def _expect_cache_bytes(
    kv_cache_bytes: Any,
    config: TransformerConfig,
    batch: int,
    src_len: int,
    tgt_len: int,
    dtype,
    what: str,
    device: str = "cpu",
) -> None:
    got = _bytes(kv_cache_bytes, config, batch, src_len, tgt_len, dtype)
    expected = kv_cache_bytes_reference(config, batch, src_len, tgt_len, dtype, device=device)
    if got != expected:
        hint = _name_slip(got, _cache_slips(config, batch, src_len, tgt_len, dtype))
        where = f"N={config.N}, d_model={config.d_model}, h={config.h}, batch={batch}, src_len={src_len}, "
        where += f"tgt_len={tgt_len}, {str(dtype).removeprefix('torch.')}"
        raise Mismatch(
            f"{what} ({where}): your count is {_percent_off(got, expected)} against the bytes the library's "
            f"KVCache holds" + (f" — {hint}" if hint else "")
        )


@kv_bytes.test("returns a Python int")
def _(kv_cache_bytes: Any) -> None:
    _bytes(kv_cache_bytes, CACHE_CONFIGS[0], 3, 5, 4, torch.float32)


@kv_bytes.test("before the first step: the cross-attention keys and values of the memory")
def _(kv_cache_bytes: Any) -> None:
    for config, batch, src_len in ((CACHE_CONFIGS[0], 3, 5), (CACHE_CONFIGS[1], 2, 9)):
        _expect_cache_bytes(kv_cache_bytes, config, batch, src_len, 0, torch.float32, "before the first step")


@kv_bytes.test("after tgt_len steps: self- and cross-attention, every layer", points=2)
def _(kv_cache_bytes: Any) -> None:
    for config, batch, src_len, tgt_len in ((CACHE_CONFIGS[0], 3, 5, 4), (CACHE_CONFIGS[1], 2, 4, 7)):
        _expect_cache_bytes(kv_cache_bytes, config, batch, src_len, tgt_len, torch.float32, "after the steps")


@kv_bytes.test("the bytes per number follow dtype: bfloat16, float16, float64")
def _(kv_cache_bytes: Any) -> None:
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        _expect_cache_bytes(kv_cache_bytes, CACHE_CONFIGS[0], 2, 7, 3, dtype, "another dtype")


# --------------------------------------------------------------------------- 10.flops

flops = register(Exercise("10.flops", "The FLOPs of a Transformer", target="transformer_flops", timeout_s=30))

SMALL = TransformerConfig(50, 60, N=2, d_model=32, d_ff=64, h=4, dropout=0.0)
FLOP_CASES = (  # (config, src_len, tgt_len, batch): source and target lengths differ, so do the vocabularies
    (SMALL, 9, 7, 4),
    (TransformerConfig(30, 20, N=1, d_model=16, d_ff=48, h=2, dropout=0.0), 5, 11, 2),
    (TransformerConfig(40, 40, N=3, d_model=24, d_ff=40, h=3, dropout=0.0, share_embeddings=True), 1, 3, 1),
)


def counted_flops(
    config: TransformerConfig, src_len: int, tgt_len: int, batch: int, training: bool, device: str = "cpu"
) -> int:
    """The oracle: what PyTorch's ``FlopCounterMode`` counts for a real model's forward (and backward) pass."""
    model = seeded_model(config, device=device).train(training)
    src = _ids(batch, src_len, config.src_vocab, seed=111, device=device)
    tgt = _ids(batch, tgt_len, config.tgt_vocab, seed=112, device=device)
    with torch.enable_grad() if training else torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            out = model(src, tgt, padding_mask(src, 0), target_mask(tgt, 0))  # (batch, tgt_len, tgt_vocab)
            if training:
                out.sum().backward()
    return int(counter.get_total_flops())


def _flop_parts(config: TransformerConfig, S: int, T: int, B: int) -> dict[str, int]:
    """Forward FLOPs of the parts of the model, each *one* product kind over all layers and the batch."""
    d, d_ff, N, V = config.d_model, config.d_ff, config.N, config.tgt_vocab

    def mm(rows: int, a: int, b: int) -> int:
        return 2 * rows * a * b  # (rows x a) @ (a x b)

    return {
        "enc_proj": N * B * mm(S, d, d),  # one of Q, K, V, O of the encoder's self-attention
        "self_proj": N * B * mm(T, d, d),  # one of Q, K, V, O of the decoder's self-attention
        "cross_qo": N * B * mm(T, d, d),  # Q or O of the cross-attention: per target position
        "cross_kv": N * B * mm(S, d, d),  # K or V of the cross-attention: per source position (the memory)
        "enc_scores": N * B * mm(S, S, d),  # Q K^T (or weights V) of the encoder, all heads
        "self_scores": N * B * mm(T, T, d),
        "cross_scores": N * B * mm(T, S, d),
        "enc_ff": N * B * mm(S, d, d_ff),  # one of the feed-forward network's two products
        "dec_ff": N * B * mm(T, d, d_ff),
        "generator": B * mm(T, d, V),
    }


def _forward_slips(config: TransformerConfig, S: int, T: int, B: int) -> dict[str, int | None]:
    """{message: forward count} of the usual slips."""
    p = _flop_parts(config, S, T, B)
    total = (
        4 * (p["enc_proj"] + p["self_proj"])
        + 2 * (p["cross_qo"] + p["cross_kv"])
        + 2 * (p["enc_scores"] + p["self_scores"] + p["cross_scores"])
        + 2 * (p["enc_ff"] + p["dec_ff"])
        + p["generator"]
    )
    scores = p["enc_scores"] + p["self_scores"] + p["cross_scores"]
    return {
        "a multiply-add is counted as 1 FLOP, not 2": total // 2,
        "the generator's product is missing": total - p["generator"],
        "the weighted sum of the values (weights @ V) is missing": total - scores,
        "the output projection W_O is counted twice": total + p["enc_proj"] + p["self_proj"] + p["cross_qo"],
        "the keys and values are counted once (K and V are two projections)": total
        - p["enc_proj"]
        - p["self_proj"]
        - p["cross_kv"],
        "the cross-attention keys and values are projected per target position: they come from the source "
        "(the memory)": total - 2 * p["cross_kv"] + 2 * p["cross_qo"] if S != T else None,
        "the decoder's cross-attention is missing": total - 2 * (p["cross_qo"] + p["cross_kv"] + p["cross_scores"]),
        "the feed-forward network counts one product: it has two": total - p["enc_ff"] - p["dec_ff"],
        "the batch is not counted": total // B if B > 1 else None,
        "only one layer of each stack is counted": (total - p["generator"]) // config.N + p["generator"]
        if config.N > 1
        else None,
    }


def _training_slips(config: TransformerConfig, S: int, T: int, B: int) -> dict[str, int | None]:
    forward = transformer_flops(config, S, T, batch=B, training=False)
    slips: dict[str, int | None] = {
        "the backward pass is not counted (a training step is a forward and a backward pass)": forward,
        "the backward pass is counted as one forward pass: it costs two (gradients for the inputs and for the "
        "weights)": 2 * forward,
    }
    slips.update({message: 3 * value for message, value in _forward_slips(config, S, T, B).items() if value})
    return slips


def _flops(transformer_flops: Any, config: TransformerConfig, S: int, T: int, B: int, training: bool) -> int:
    return _expect_int(transformer_flops(config, S, T, B, training), "transformer_flops(...)")


def _expect_flops(
    transformer_flops: Any,
    config: TransformerConfig,
    S: int,
    T: int,
    B: int,
    training: bool,
    expected: int,
    what: str,
) -> None:
    got = _flops(transformer_flops, config, S, T, B, training)
    if got != expected:
        slips = _training_slips(config, S, T, B) if training else _forward_slips(config, S, T, B)
        hint = _name_slip(got, slips)
        where = f"N={config.N}, d_model={config.d_model}, d_ff={config.d_ff}, tgt_vocab={config.tgt_vocab}, "
        where += f"src_len={S}, tgt_len={T}, batch={B}"
        raise Mismatch(
            f"{what} ({where}): your count is {_percent_off(got, expected)}" + (f" — {hint}" if hint else "")
        )


@flops.test("returns a Python int")
def _(transformer_flops: Any) -> None:
    for training in (False, True):
        _flops(transformer_flops, SMALL, 9, 7, 4, training)


@flops.test("every size 1: a model small enough to count by hand")
def _(transformer_flops: Any) -> None:
    ones = TransformerConfig(1, 1, N=1, d_model=1, d_ff=1, h=1)
    got = _flops(transformer_flops, ones, 1, 1, 1, False)
    if got != transformer_flops_reference(ones, 1, 1, 1, False):
        hint = _name_slip(got, _forward_slips(ones, 1, 1, 1))
        raise Mismatch(
            f"with N = d_model = d_ff = h = tgt_vocab = src_len = tgt_len = batch = 1, your forward count is {got}; "
            "count the products by hand: an encoder layer, a decoder layer (self-attention, cross-attention, "
            "feed-forward) and the generator" + (f" — {hint}" if hint else "")
        )


@flops.test("grows with tgt_vocab and d_ff as the generator and the feed-forward networks do")
def _(transformer_flops: Any) -> None:
    base = TransformerConfig(50, 60, N=2, d_model=32, d_ff=64, h=4)
    for field, other, part in (
        ("tgt_vocab", TransformerConfig(50, 100, N=2, d_model=32, d_ff=64, h=4), "the generator"),
        ("d_ff", TransformerConfig(50, 60, N=2, d_model=32, d_ff=96, h=4), "the feed-forward networks"),
    ):
        grew = _flops(transformer_flops, other, 9, 7, 4, False) - _flops(transformer_flops, base, 9, 7, 4, False)
        expected = transformer_flops_reference(other, 9, 7, 4, False) - transformer_flops_reference(
            base, 9, 7, 4, False
        )
        expect(grew != 0, f"your count does not change when {field} grows: do you count the FLOPs of {part}?")
        expect(
            grew == expected,
            f"when {field} grows (src_len=9, tgt_len=7, batch=4, forward), the increase of your count is "
            f"{_percent_off(grew, expected)} against the extra FLOPs of {part}",
        )


@flops.test("a forward pass: what PyTorch's FlopCounterMode counts", points=2)
def _(transformer_flops: Any) -> None:
    for config, S, T, B in FLOP_CASES:
        expected = counted_flops(config, S, T, B, training=False)
        _expect_flops(transformer_flops, config, S, T, B, False, expected, "forward")


@flops.test("a training step: forward and backward, as FlopCounterMode counts them")
def _(transformer_flops: Any) -> None:
    for config, S, T, B in FLOP_CASES[:2]:
        expected = counted_flops(config, S, T, B, training=True)
        _expect_flops(transformer_flops, config, S, T, B, True, expected, "training")


def transformer_flops_reference(config: TransformerConfig, S: int, T: int, B: int, training: bool) -> int:
    """The oracle where a model would be too large to run: the library's ``bench.transformer_flops``."""
    return transformer_flops(config, S, T, batch=B, training=training)


# --------------------------------------------------------------------------- 10.tiled_attention

tiled = register(
    Exercise("10.tiled_attention", "Tiled attention with an online softmax", target="tiled_attention", timeout_s=20)
)

TILE_ATOL = 1e-5  # float32 softmax-weighted means of unit-size values: only the summation order differs


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """The oracle: ``F.scaled_dot_product_attention``; a query with no visible key gets zeros (the course's rule)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (..., q_len, d_v)
    if mask is not None:
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # rows that may attend to nothing
    return out


def _online(
    q: Tensor, k: Tensor, v: Tensor, block: int, rescale_acc: bool = True, rescale_denom: bool = True
) -> Tensor:
    """An online softmax without a mask, with the rescaling of either sum switched off (to name that slip)."""
    m = torch.full((*q.shape[:-1], 1), -math.inf, dtype=q.dtype)  # (..., q_len, 1)
    denom = torch.zeros_like(m)
    acc = torch.zeros((*q.shape[:-1], v.size(-1)), dtype=q.dtype)  # (..., q_len, d_v)
    for start in range(0, k.size(-2), block):
        scores = q @ k[..., start : start + block, :].transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., q_len, b)
        m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
        correction = torch.exp(m - m_new)
        p = torch.exp(scores - m_new)
        denom = (denom * correction if rescale_denom else denom) + p.sum(dim=-1, keepdim=True)
        acc = (acc * correction if rescale_acc else acc) + p @ v[..., start : start + block, :]
        m = m_new
    return acc / denom


def _tile_slips(out: Tensor, q: Tensor, k: Tensor, v: Tensor, block: int) -> str:
    """Name the known slip (no mask) that ``out`` equals, or ''."""
    full = (k.size(-2) // block) * block
    variants: dict[str, Callable[[], Tensor | None]] = {
        "the scores are not scaled by 1/sqrt(d_k)": lambda: F.scaled_dot_product_attention(q, k, v, scale=1.0),
        "the last, shorter block of keys is left out (block_size does not divide k_len)": lambda: (
            F.scaled_dot_product_attention(q, k[..., :full, :], v[..., :full, :]) if 0 < full < k.size(-2) else None
        ),
        "what was summed before is not rescaled by exp(m - m_new) when a block raises the maximum": lambda: _online(
            q, k, v, block, rescale_acc=False, rescale_denom=False
        ),
        "the numerator (the weighted sum of values) is not rescaled when the maximum changes": lambda: _online(
            q, k, v, block, rescale_acc=False
        ),
        "the denominator is not rescaled when the maximum changes": lambda: _online(
            q, k, v, block, rescale_denom=False
        ),
    }
    for message, make in variants.items():
        value = make()
        if value is not None and value.shape == out.shape and bool(((out - value).abs() < TILE_ATOL).all()):
            return message
    return ""


def _tiled(tiled_attention: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, block: int) -> Tensor:
    out = tiled_attention(q, k, v, mask, block)
    expect_shape(out, (*q.shape[:-1], v.size(-1)), f"the output (block_size={block})")
    expect(out.dtype == q.dtype, f"the output has dtype {out.dtype}, the inputs {q.dtype}")
    return out


def _mask_slip(out: Tensor, q: Tensor, k: Tensor, v: Tensor) -> str:
    """Name the known slip of a masked output, or ''."""
    if torch.isnan(out).any():
        return "NaN where a block (or a whole row) has no visible key: exp(-inf - (-inf)) is NaN, and so is 0 / 0"
    unmasked = attention_reference(q, k, v, None)
    if bool(((out - unmasked).abs() < TILE_ATOL).all()):
        return "the output does not depend on the mask"
    return ""


def _expect_attention(
    tiled_attention: Any,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    block: int,
    what: str,
    atol: float = TILE_ATOL,
) -> None:
    out = _tiled(tiled_attention, q, k, v, mask, block)
    expected = attention_reference(q, k, v, mask)
    if out.shape == expected.shape and bool(((out - expected).abs() <= atol).all()):
        return
    if mask is not None:
        hint = _mask_slip(out, q, k, v)
    else:
        hint = "" if torch.isnan(out).any() else _tile_slips(out, q, k, v, block)
    expect_close(out, expected, f"{what}, block_size={block}", atol=atol, rtol=0, hint=hint)


def qkv(shape_q: tuple, k_len: int, d_v: int, seed: int, scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded queries ``shape_q`` = ``(..., q_len, d_k)``, keys ``(..., k_len, d_k)``, values ``(..., k_len, d_v)``."""
    g = generator(seed)
    *batch, _, d_k = shape_q
    q = torch.randn(*shape_q, generator=g) * scale
    k = torch.randn(*batch, k_len, d_k, generator=g) * scale
    return q, k, torch.randn(*batch, k_len, d_v, generator=g)


@tiled.test("output shape (..., q_len, d_v)")
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((2, 3, 6, 8), 10, 5, seed=121)
    _tiled(tiled_attention, q, k, v, None, 4)


@tiled.test("no mask: softmax(Q Kᵀ / √d_k) V for block sizes that divide k_len, and that do not", points=2)
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((2, 3, 6, 8), 10, 5, seed=122)
    for block in (1, 5, 4, 3, 10, 64):  # 4 and 3 leave a shorter last block; 64 > k_len: one block
        _expect_attention(tiled_attention, q, k, v, None, block, "no mask")


@tiled.test("a later block raises the maximum: the running sums are rescaled")
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((1, 2, 5, 8), 12, 4, seed=123)
    q[..., 0] = q[..., 0].abs() + 1.0  # every query has a positive first feature ...
    k[..., 0] = torch.arange(12.0) * 1.5  # ... so every later block of keys scores higher
    for block in (3, 4, 5):
        _expect_attention(tiled_attention, q, k, v, None, block, "scores that rise block by block")


@tiled.test("large scores stay finite: exponentials are taken of score - maximum")
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((2, 4, 8), 9, 4, seed=124, scale=10.0)  # scores of a few hundred: exp(score) overflows float32
    for block in (2, 9):
        _expect_attention(tiled_attention, q, k, v, None, block, "scores of several hundred", atol=1e-4)


@tiled.test("with a mask (True = may attend): causal and padding masks", points=2)
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((2, 3, 10, 8), 10, 6, seed=125)
    causal = torch.ones(10, 10).tril().bool()  # (q_len, k_len)
    padding = (torch.arange(10) < torch.tensor([10, 6])[:, None])[:, None, None, :]  # (batch, 1, 1, k_len)
    for name, mask in (("causal mask", causal), ("padding mask", padding), ("both", causal & padding)):
        for block in (3, 4):
            _expect_attention(tiled_attention, q, k, v, mask, block, name)


@tiled.test("a block with no visible key (the first keys masked) gives no NaN")
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((2, 2, 5, 8), 12, 4, seed=126)
    visible = torch.arange(12) >= torch.tensor([0, 7])[:, None]  # (batch, k_len): row 1 sees only keys 7..11
    mask = visible[:, None, None, :]  # (batch, 1, 1, k_len): blocks before key 7 are fully masked in row 1
    for block in (2, 3, 5):
        _expect_attention(tiled_attention, q, k, v, mask, block, "the first keys masked")


@tiled.test("a query with no visible key at all gets a zero output")
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((1, 6, 8), 8, 4, seed=127)
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[2] = False  # query 2 may attend to nothing
    mask[4, :5] = False  # query 4 only to the last keys
    for block in (3, 8):
        out = _tiled(tiled_attention, q, k, v, mask, block)
        expect(
            not torch.isnan(out).any(),
            f"block_size={block}: the output contains NaN (a query with no visible key: 0 / 0?)",
        )
        what = f"query 2 sees no key, query 4 only the last three; block_size={block}"
        expect_close(out, attention_reference(q, k, v, mask), what, atol=TILE_ATOL, rtol=0)


def trace_reference(q: Tensor, k: Tensor, block: int) -> list[tuple[Tensor, Tensor]]:
    """The running maximum and denominator ``(..., q_len)`` after each block (no mask)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., q_len, k_len)
    out = []
    for end in range(block, k.size(-2) + block, block):
        seen = scores[..., :end]
        m = seen.amax(dim=-1, keepdim=True)  # (..., q_len, 1)
        out.append((m[..., 0], torch.exp(seen - m).sum(dim=-1)))
    return out


def _trace_entry(entry: Any, shape: tuple, i: int) -> tuple[Tensor, Tensor]:
    expect(
        isinstance(entry, (tuple, list)) and len(entry) == 2,
        f"trace entry {i} should be a pair (m, denom), got {type(entry).__name__}",
    )
    pair = []
    for name, t in zip(("m", "denom"), entry):
        if isinstance(t, Tensor) and tuple(t.shape) == (*shape, 1):
            t = t[..., 0]  # (..., q_len, 1) is fine too
        expect_shape(t, shape, f"{name} of trace entry {i}")
        pair.append(t)
    return pair[0], pair[1]


@tiled.test("the trace: the running maximum and denominator after every block")
def _(tiled_attention: Any) -> None:
    q, k, v = qkv((1, 2, 5, 4), 10, 3, seed=128)
    for block in (4, 10):
        trace: list = []
        tiled_attention(q, k, v, None, block, trace)
        expected = trace_reference(q, k, block)
        expect(
            len(trace) == len(expected),
            f"block_size={block}, k_len=10: the trace has {len(trace)} entries, one per block of keys expected",
        )
        for i, (got, (m, denom)) in enumerate(zip(trace, expected)):
            m_got, denom_got = _trace_entry(got, tuple(m.shape), i)
            expect_close(m_got, m, f"block_size={block}: m after block {i}", atol=1e-5, rtol=0)
            expect_close(
                denom_got,
                denom,
                f"block_size={block}: denom after block {i}",
                atol=1e-5,
                rtol=1e-5,
                hint="denom is the sum of exp(score - m) over the keys seen so far, m the maximum after that block",
            )
