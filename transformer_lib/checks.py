"""The course's input checks (chapter 1's toolkit): clear errors that name the problem, out of the way.

Every class and function of the library checks its arguments the way PyTorch's ``transformer.py``
does — a ``ValueError`` whose message names the argument, the shape it got and the shape it needs —
but with one-line calls to the helpers below, so that the code a chapter shows is the idea, not
the plumbing. Nothing here is part of the Transformer itself.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Iterable

import torch
from torch import Tensor

__all__ = [
    "is_int",
    "check_positive_ints",
    "check_optional_positive_ints",
    "check_positive",
    "check_fraction",
    "check_choice",
    "check_divisible",
    "check_layer_config",
    "check_token_id",
    "check_token_ids",
    "check_vectors",
    "check_bool_mask",
    "check_attention_inputs",
    "check_multihead_inputs",
]


def is_int(n: object) -> bool:
    """True for Python and NumPy integers; False for bools (``True`` is an ``int`` in Python)."""
    return isinstance(n, Integral) and not isinstance(n, bool)


def check_positive_ints(**sizes: object) -> None:
    """Raise ``ValueError`` naming the first size that is not a positive integer."""
    for name, n in sizes.items():
        if not is_int(n) or n <= 0:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")


def check_optional_positive_ints(**sizes: object) -> None:
    """Like ``check_positive_ints``, but ``None`` is allowed (no limit)."""
    for name, n in sizes.items():
        if n is not None and (not is_int(n) or n <= 0):
            raise ValueError(f"{name} must be a positive integer or None, got {n!r}")


def check_positive(**numbers: object) -> None:
    """Raise ``ValueError`` naming the first value that is not a finite number > 0 (NaN is not)."""
    for name, x in numbers.items():
        if isinstance(x, bool) or not isinstance(x, Real) or not 0 < x < math.inf:
            raise ValueError(f"{name} must be a finite positive number, got {x!r}")


def check_fraction(**values: object) -> None:
    """Raise ``ValueError`` unless each value is a number in [0, 1) (a dropout rate, a smoothing factor)."""
    for name, p in values.items():
        if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p!r}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``, listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_divisible(d_model: int, num_heads: int, heads_name: str = "num_heads") -> None:
    """The heads split ``d_model`` evenly: both positive integers, ``d_model % num_heads == 0``."""
    check_positive_ints(d_model=d_model, **{heads_name: num_heads})
    if d_model % num_heads != 0:
        raise ValueError(f"d_model={d_model} must be divisible by {heads_name}={num_heads}")


def check_layer_config(d_model: int, num_heads: int, d_ff: int, dropout: float, layer_norm_eps: float = 1e-5) -> None:
    """The sizes of an encoder or decoder layer, checked before any weight is built."""
    check_divisible(d_model, num_heads)
    check_positive_ints(d_ff=d_ff)
    check_fraction(dropout=dropout)
    check_positive(layer_norm_eps=layer_norm_eps)


def _compiling() -> bool:
    """True while torch.compile traces the code (then a data-dependent check would break the graph)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling()) if is_compiling is not None else bool(torch._dynamo.is_compiling())


def check_token_ids(tokens: object, name: str = "tokens", vocab_size: int | None = None, lookup: bool = True) -> None:
    """``tokens`` must be a ``(batch, len)`` tensor of integer ids with ``len >= 1``.

    ``lookup``: the ids index an embedding table, which takes int64 or int32 only (other integer
    dtypes are fine for masks). With ``vocab_size`` the ids must also lie in ``[0, vocab_size)``.
    That range check reads two numbers back to the host: free on the CPU, but on a GPU it would
    stall the device at every call, and under ``torch.compile`` it would break the graph. There it
    is skipped, and ``nn.Embedding``'s own bounds check (a device-side assert on CUDA) catches bad ids.
    """
    if not isinstance(tokens, Tensor):
        raise ValueError(f"{name} must be a tensor of token ids, got {type(tokens).__name__}")
    dtype = tokens.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"{name} must be integer ids, got dtype {dtype}")
    if lookup and dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"{name} must be integer ids of dtype int64 (torch.long) or int32, got {dtype}; convert with {name}.long()"
        )
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, len), got shape {tuple(tokens.shape)}")
    if tokens.size(1) == 0:
        raise ValueError(f"{name} must have at least one position (len >= 1), got shape {tuple(tokens.shape)}")
    if vocab_size is not None and tokens.numel() > 0 and tokens.device.type == "cpu" and not _compiling():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"the ids in {name} must lie in [0, vocab_size={vocab_size}), got ids from {low} to {high}"
            )


def check_token_id(name: str, token_id: object, vocab_size: int) -> None:
    """One id of a vocabulary of ``vocab_size`` tokens, such as ``bos_id`` or ``pad_id``."""
    if not is_int(token_id) or not 0 <= token_id < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, vocab_size={vocab_size}), got {token_id!r}")


def check_vectors(x: object, d_model: int, name: str = "x") -> None:
    """``x`` must be a floating-point ``(batch, len, d_model)`` tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of shape (batch, len, d_model={d_model}), got {type(x).__name__}")
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"{name} must have shape (batch, len, d_model={d_model}), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must hold floating-point vectors, got dtype {x.dtype}; embed token ids first")


def check_bool_mask(mask: object, scores_shape: tuple[int, ...], max_dims: int | None = None) -> None:
    """``mask`` must be boolean (True = may attend) and broadcast to ``scores_shape`` without enlarging it."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a boolean tensor (True = may attend), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
            "convert it with `mask.bool()` or build it with transformer_lib's mask helpers"
        )
    try:  # the mask may be smaller than the scores (it broadcasts), never larger
        fits = torch.broadcast_shapes(mask.shape, scores_shape) == torch.Size(scores_shape)
    except RuntimeError:
        fits = False
    if not fits or (max_dims is not None and mask.dim() > max_dims):
        hint = ""
        if mask.dim() > len(scores_shape):
            hint = (
                "; the mask has more dimensions than the scores (a (batch, 1, 1, k_len) padding mask "
                "needs inputs with a heads axis, e.g. x[:, None])"
            )
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores "
            f"(..., q_len, k_len) = {tuple(scores_shape)}{hint}"
        )


def check_attention_inputs(query: object, key: object, value: object, mask: object = None) -> None:
    """Queries ``(..., q_len, d_k)``, keys ``(..., k_len, d_k)``, values ``(..., k_len, d_v)`` that fit together."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., len, dim), got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    q, k, v = (tuple(t.shape) for t in (query, key, value))
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"query, key and value must share one dtype, got {query.dtype}, {key.dtype} and {value.dtype}")
    if q[-1] != k[-1]:
        raise ValueError(f"query and key must share d_k (last dimension): query {q}, key {k}")
    if k[-2] != v[-2]:
        raise ValueError(f"key and value must have the same length k_len (dimension -2): key {k}, value {v}")
    try:
        torch.broadcast_shapes(q[:-2], k[:-2], v[:-2])
    except RuntimeError:
        raise ValueError(f"batch dimensions do not broadcast: query {q}, key {k}, value {v}") from None
    if mask is not None:
        check_bool_mask(mask, (*torch.broadcast_shapes(q[:-2], k[:-2]), q[-2], k[-2]))


def check_multihead_inputs(query: object, key: object, value: object, mask: object, d_model: int, heads: int) -> None:
    """Inputs of multi-head attention: ``(batch, len, d_model)`` each, a mask for ``(batch, heads, q_len, k_len)``."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 3 or t.size(-1) != d_model:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape (batch, len, d_model={d_model}), got {shape}")
    if key.shape[:2] != value.shape[:2]:
        raise ValueError(f"key and value must share (batch, k_len): key {tuple(key.shape)}, value {tuple(value.shape)}")
    if query.size(0) != key.size(0):
        raise ValueError(
            f"query and key must have the same batch size: query {tuple(query.shape)}, key {tuple(key.shape)}"
        )
    if mask is not None:
        check_bool_mask(mask, (query.size(0), heads, query.size(1), key.size(1)), max_dims=4)
