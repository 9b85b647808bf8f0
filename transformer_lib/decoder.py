"""Chapter 7 — the decoder.

Each decoder layer has three sub-layers, each inside Add & Norm:

1. *masked* self-attention over the target prefix (the causal mask hides the future);
2. cross-attention ("encoder–decoder attention"): queries from the decoder, keys and values from
   the encoder's output (the *memory*);
3. the position-wise feed-forward network.
"""

from __future__ import annotations

from torch import Tensor, nn

from .checks import check_layer_config, check_positive_ints
from .encoder import PositionwiseFeedForward, SublayerConnection
from .multihead import MultiHeadAttention

__all__ = ["DecoderLayer", "Decoder"]


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the memory, then the feed-forward network."""

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
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, fused=fused)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.sublayer = nn.ModuleList(
            [SublayerConnection(d_model, dropout, norm_first, layer_norm_eps) for _ in range(3)]
        )

    def forward(
        self, x: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None
    ) -> Tensor:
        """Decode ``x`` ``(batch, tgt_len, d_model)`` against ``memory`` ``(batch, src_len, d_model)``.

        ``tgt_mask`` (causal + padding) broadcasts to ``(batch, heads, tgt_len, tgt_len)``;
        ``memory_mask`` (source padding) to ``(batch, heads, tgt_len, src_len)``.
        """
        x = self.sublayer[0](x, lambda y: self.self_attn(y, y, y, tgt_mask))  # (batch, tgt_len, d_model)
        x = self.sublayer[1](x, lambda y: self.cross_attn(y, memory, memory, memory_mask))  # Q: decoder, K/V: memory
        return self.sublayer[2](x, self.feed_forward)  # (batch, tgt_len, d_model)


class Decoder(nn.Module):
    """A stack of N decoder layers; ``final_norm`` as in ``Encoder``.

    (A deliberate twin of ``encoder.Encoder``: each chapter shows its stack whole.)
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
            [DecoderLayer(d_model, num_heads, d_ff, dropout, norm_first, layer_norm_eps, fused) for _ in range(N)]
        )
        final_norm = norm_first if final_norm is None else final_norm
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if final_norm else nn.Identity()

    def forward(
        self, x: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None
    ) -> Tensor:
        """Run ``x`` ``(batch, tgt_len, d_model)`` through every layer; returns the same shape."""
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask)  # (batch, tgt_len, d_model)
        return self.norm(x)
