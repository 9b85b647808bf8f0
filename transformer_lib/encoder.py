"""Chapter 6 — the encoder.

Each of the N encoder layers has two sub-layers, self-attention and a position-wise feed-forward
network, each wrapped in "Add & Norm": a residual connection and a LayerNorm. The paper normalises
*after* the residual sum (post-LN, ``norm_first=False``); many later models normalise the
sub-layer's input instead (pre-LN, ``norm_first=True``), which trains more stably without warmup.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .checks import check_fraction, check_layer_config, check_positive, check_positive_ints
from .multihead import MultiHeadAttention

__all__ = ["PositionwiseFeedForward", "SublayerConnection", "EncoderLayer", "Encoder"]


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to every position independently."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        check_positive_ints(d_model=d_model, d_ff=d_ff)
        check_fraction(dropout=dropout)
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, len, d_model)`` -> ``(batch, len, d_model)`` through a ``d_ff`` hidden layer."""
        return self.w_2(self.dropout(self.w_1(x).relu()))  # (batch, len, d_ff) -> (batch, len, d_model)


class SublayerConnection(nn.Module):
    """ "Add & Norm" around a sub-layer: post-LN ``norm(x + sublayer(x))`` or pre-LN ``x + sublayer(norm(x))``."""

    def __init__(self, d_model: int, dropout: float = 0.1, norm_first: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive(eps=eps)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply ``sublayer`` to ``x`` ``(batch, len, d_model)`` with a residual connection and LayerNorm."""
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))  # pre-LN
        return self.norm(x + self.dropout(sublayer(x)))  # post-LN, as in the paper


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network, each inside Add & Norm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        fused: bool = False,
    ) -> None:
        super().__init__()
        check_layer_config(d_model, num_heads, d_ff, dropout, layer_norm_eps)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, fused=fused)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.sublayer = nn.ModuleList(
            [SublayerConnection(d_model, dropout, norm_first, layer_norm_eps) for _ in range(2)]
        )

    def forward(self, x: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """``(batch, src_len, d_model)`` -> same shape; ``src_mask`` hides padding (True = may attend)."""
        x = self.sublayer[0](x, lambda y: self.self_attn(y, y, y, src_mask))  # (batch, src_len, d_model)
        return self.sublayer[1](x, self.feed_forward)  # (batch, src_len, d_model)


class Encoder(nn.Module):
    """A stack of N encoder layers (the paper: N = 6).

    ``final_norm`` adds a LayerNorm after the last layer; it defaults to ``norm_first`` because a
    pre-LN stack otherwise ends on an un-normalised residual sum (``nn.Transformer`` always has one).
    """

    def __init__(
        self,
        d_model: int = 512,
        num_heads: int = 8,
        d_ff: int = 2048,
        N: int = 6,
        dropout: float = 0.1,
        norm_first: bool = False,
        final_norm: bool | None = None,
        layer_norm_eps: float = 1e-5,
        fused: bool = False,
    ) -> None:
        super().__init__()
        check_positive_ints(N=N)
        self.layers = nn.ModuleList(
            [EncoderLayer(d_model, num_heads, d_ff, dropout, norm_first, layer_norm_eps, fused) for _ in range(N)]
        )
        final_norm = norm_first if final_norm is None else final_norm
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if final_norm else nn.Identity()

    def forward(self, x: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Run ``x`` ``(batch, src_len, d_model)`` through every layer; returns the memory, same shape."""
        for layer in self.layers:
            x = layer(x, src_mask)  # (batch, src_len, d_model)
        return self.norm(x)
