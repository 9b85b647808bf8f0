"""Chapter 4 — masking.

Two masks tell attention which keys a query may look at. Both are boolean, ``True`` = may attend,
and shaped to broadcast to the scores ``(batch, heads, q_len, k_len)``:

* the *padding mask* hides the ``<pad>`` tokens that make sentences of a batch equally long;
* the *causal* (or *sequence*) mask hides the future from the decoder, so that position t only
  sees positions <= t.

The decoder's self-attention uses both at once (``target_mask``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_positive_ints, check_token_ids, is_int

__all__ = ["padding_mask", "causal_mask", "target_mask"]


def _check_tokens(tokens: Tensor, pad_id: int) -> None:
    check_token_ids(tokens, lookup=False)
    if not is_int(pad_id):
        raise ValueError(f"pad_id must be an integer token id, got {pad_id!r}")


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """Mask of the real (non-pad) tokens: ``(batch, seq_len)`` ids -> ``(batch, 1, 1, seq_len)`` bool.

    Every query may attend to every key that is not ``pad_id``. Only *keys* are hidden: the outputs
    at pad positions are still computed (from the real tokens) and are simply ignored later, e.g.
    by the loss. Used by the encoder's self-attention and, with the source tokens, by the
    decoder's cross-attention (it broadcasts to any ``q_len``).
    """
    _check_tokens(tokens, pad_id)
    return (tokens != pad_id)[:, None, None, :]  # (batch, 1, 1, k_len): same for every head and query


def causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Lower-triangular ``(size, size)`` bool mask: query t may attend to keys 0..t only.

    The same for every sentence and head, so it broadcasts to ``(batch, heads, size, size)``.
    """
    check_positive_ints(size=size)
    size = int(size)
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()  # (q_len, k_len)


def target_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """Decoder self-attention mask: not a pad *and* not in the future.

    ``(batch, tgt_len)`` ids -> ``(batch, 1, tgt_len, tgt_len)`` bool.
    """
    _check_tokens(tokens, pad_id)
    causal = causal_mask(tokens.size(1), device=tokens.device)  # (tgt_len, tgt_len)
    return padding_mask(tokens, pad_id) & causal  # (batch, 1, tgt_len, tgt_len)
