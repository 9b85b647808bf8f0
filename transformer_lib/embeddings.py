"""Chapter 3 — inputs: token embeddings and positional encoding.

Self-attention treats its input as a *set*: permute the words and the outputs are permuted the
same way. Word order has to be put into the vectors themselves. The paper adds a sinusoidal
positional encoding to the (scaled) token embedding:

    PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_positive_ints, check_token_ids, check_vectors

__all__ = ["Embeddings", "sinusoidal_positional_encoding", "PositionalEncoding", "LearnedPositionalEmbedding"]


class Embeddings(nn.Module):
    """Token ids ``(batch, len)`` -> vectors ``(batch, len, d_model)``, scaled by sqrt(d_model).

    ``lut`` (look-up table) is a plain ``nn.Embedding``; the paper multiplies its output by
    sqrt(d_model) (section 3.4). ``padding_idx`` gets a zero vector that is never trained.
    """

    def __init__(self, vocab_size: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        check_positive_ints(vocab_size=vocab_size, d_model=d_model)
        if padding_idx is not None and not -vocab_size <= padding_idx < vocab_size:
            raise ValueError(f"padding_idx={padding_idx} is outside the vocabulary of size vocab_size={vocab_size}")
        self.lut = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.vocab_size, self.d_model = vocab_size, d_model

    def forward(self, tokens: Tensor) -> Tensor:
        """Look up and scale: ``(batch, len)`` -> ``(batch, len, d_model)``."""
        check_token_ids(tokens, vocab_size=self.vocab_size)
        return self.lut(tokens) * math.sqrt(self.d_model)  # (batch, len, d_model)


def sinusoidal_positional_encoding(max_len: int, d_model: int) -> Tensor:
    """The paper's positional-encoding matrix, shape ``(max_len, d_model)`` (any d_model, even or odd).

    Row ``pos`` is the encoding of position ``pos``; column pair (2i, 2i+1) is a sine and a cosine
    of the same frequency 1 / 10000^(2i / d_model). Computed in float64, returned as float32.
    """
    check_positive_ints(max_len=max_len, d_model=d_model)
    position = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d_model/2),): the even indices 2i
    angle = position / 10000.0 ** (two_i / d_model)  # (max_len, ceil(d_model/2))
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even columns
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # odd columns (one fewer when d_model is odd)
    return pe.float()


class PositionalEncoding(nn.Module):
    """Add the sinusoidal encoding to ``(batch, len, d_model)`` inputs, then apply dropout.

    The table ``pe`` ``(max_len, d_model)`` is a *buffer*: it moves with ``.to()`` but is not a
    parameter, so no optimiser changes it. It is not saved in the ``state_dict`` either
    (``persistent=False``): it is a fixed function of ``max_len`` and ``d_model``.
    """

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, len, d_model)`` -> same shape, with position information added."""
        max_len, d_model = self.pe.shape
        check_vectors(x, d_model)
        if x.size(1) > max_len:
            raise ValueError(
                f"sequence length {x.size(1)} exceeds max_len={max_len} of the positional encoding; "
                "build it with a larger max_len"
            )
        return self.dropout(x + self.pe[: x.size(1)].to(x.dtype))  # (batch, len, d_model)


class LearnedPositionalEmbedding(nn.Module):
    """Add a trained vector per position (as BERT and GPT do) instead of the fixed sinusoids.

    The table ``pos`` is an ``nn.Embedding(max_len, d_model)``: its rows are parameters, trained
    with the rest of the model, and there is no row for a position at or beyond ``max_len``.
    """

    def __init__(self, d_model: int, max_len: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_ints(d_model=d_model, max_len=max_len)
        self.pos = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.max_len, self.d_model = max_len, d_model

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, len, d_model)`` -> same shape, with a learned position vector added."""
        check_vectors(x, self.d_model)
        if x.size(1) > self.max_len:
            raise ValueError(
                f"sequence length {x.size(1)} exceeds max_len={self.max_len} of the learned positions; "
                "a learned table has no vector for later positions (it cannot extrapolate)"
            )
        positions = torch.arange(x.size(1), device=x.device)  # (len,)
        return self.dropout(x + self.pos(positions).to(x.dtype))  # (batch, len, d_model)
