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

__all__ = ["Embeddings", "sinusoidal_positional_encoding", "PositionalEncoding", "LearnedPositionalEmbedding"]


class Embeddings(nn.Module):
    """Token ids ``(batch, len)`` -> vectors ``(batch, len, d_model)``, scaled by sqrt(d_model)."""

    def __init__(self, vocab_size: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        if vocab_size <= 0 or d_model <= 0:
            raise ValueError(f"vocab_size and d_model must be positive, got {vocab_size} and {d_model}")
        self.lut = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.d_model = d_model

    def forward(self, tokens: Tensor) -> Tensor:
        """Look up and scale: ``(batch, len)`` -> ``(batch, len, d_model)``."""
        if tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        return self.lut(tokens) * math.sqrt(self.d_model)  # (batch, len, d_model)


def sinusoidal_positional_encoding(max_len: int, d_model: int) -> Tensor:
    """The paper's positional-encoding matrix, shape ``(max_len, d_model)`` (any d_model, even or odd)."""
    if max_len <= 0 or d_model <= 0:
        raise ValueError(f"max_len and d_model must be positive, got {max_len} and {d_model}")
    position = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d_model/2),): the even indices 2i
    angle = position / 10000.0 ** (two_i / d_model)  # (max_len, ceil(d_model/2))
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even columns
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # odd columns
    return pe.float()


class PositionalEncoding(nn.Module):
    """Add the sinusoidal encoding to ``(batch, len, d_model)`` inputs, then apply dropout."""

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, len, d_model)`` -> same shape, with position information added."""
        max_len, d_model = self.pe.shape
        if x.dim() != 3 or x.size(-1) != d_model:
            raise ValueError(f"expected input of shape (batch, len, d_model={d_model}), got {tuple(x.shape)}")
        if x.size(1) > max_len:
            raise ValueError(
                f"sequence length {x.size(1)} exceeds max_len={max_len} of the positional encoding; "
                "build it with a larger max_len"
            )
        return self.dropout(x + self.pe[: x.size(1)])  # (batch, len, d_model)


class LearnedPositionalEmbedding(nn.Module):
    """Add a trained vector per position (as BERT and GPT do) instead of the fixed sinusoids."""

    def __init__(self, d_model: int, max_len: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.max_len, self.d_model = max_len, d_model

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, len, d_model)`` -> same shape, with a learned position vector added."""
        if x.dim() != 3 or x.size(-1) != self.d_model:
            raise ValueError(f"expected input of shape (batch, len, d_model={self.d_model}), got {tuple(x.shape)}")
        if x.size(1) > self.max_len:
            raise ValueError(
                f"sequence length {x.size(1)} exceeds max_len={self.max_len} of the learned positions; "
                "a learned table cannot extrapolate beyond the positions it was trained on"
            )
        positions = torch.arange(x.size(1), device=x.device)  # (len,)
        return self.dropout(x + self.pos(positions))  # (batch, len, d_model)
