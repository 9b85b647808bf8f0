"""Copy weights between transformer_lib modules and PyTorch's own, so PyTorch can serve as the oracle.

PyTorch masks use the opposite convention for booleans (True = *blocked*), so tests invert ours.
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_lib.decoder import Decoder, DecoderLayer
from transformer_lib.encoder import Encoder, EncoderLayer
from transformer_lib.multihead import MultiHeadAttention


@torch.no_grad()
def copy_mha(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    """Load ``ref``'s packed in-projection and out-projection into our W_Q, W_K, W_V, W_O."""
    d = ours.d_model
    for i, linear in enumerate((ours.W_Q, ours.W_K, ours.W_V)):
        linear.weight.copy_(ref.in_proj_weight[i * d : (i + 1) * d])
        linear.bias.copy_(ref.in_proj_bias[i * d : (i + 1) * d])
    ours.W_O.weight.copy_(ref.out_proj.weight)
    ours.W_O.bias.copy_(ref.out_proj.bias)


@torch.no_grad()
def copy_encoder_layer(ours: EncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    copy_mha(ours.self_attn, ref.self_attn)
    ours.feed_forward.w_1.load_state_dict(ref.linear1.state_dict())
    ours.feed_forward.w_2.load_state_dict(ref.linear2.state_dict())
    ours.sublayer[0].norm.load_state_dict(ref.norm1.state_dict())
    ours.sublayer[1].norm.load_state_dict(ref.norm2.state_dict())


@torch.no_grad()
def copy_decoder_layer(ours: DecoderLayer, ref: nn.TransformerDecoderLayer) -> None:
    copy_mha(ours.self_attn, ref.self_attn)
    copy_mha(ours.cross_attn, ref.multihead_attn)
    ours.feed_forward.w_1.load_state_dict(ref.linear1.state_dict())
    ours.feed_forward.w_2.load_state_dict(ref.linear2.state_dict())
    for i, norm in enumerate((ref.norm1, ref.norm2, ref.norm3)):
        ours.sublayer[i].norm.load_state_dict(norm.state_dict())


@torch.no_grad()
def copy_encoder(ours: Encoder, ref: nn.TransformerEncoder) -> None:
    for layer, ref_layer in zip(ours.layers, ref.layers, strict=True):
        copy_encoder_layer(layer, ref_layer)
    if ref.norm is not None:
        ours.norm.load_state_dict(ref.norm.state_dict())


@torch.no_grad()
def copy_decoder(ours: Decoder, ref: nn.TransformerDecoder) -> None:
    for layer, ref_layer in zip(ours.layers, ref.layers, strict=True):
        copy_decoder_layer(layer, ref_layer)
    if ref.norm is not None:
        ours.norm.load_state_dict(ref.norm.state_dict())


def blocked(mask: torch.Tensor) -> torch.Tensor:
    """Our convention (True = may attend) -> PyTorch's nn.* convention (True = blocked)."""
    return ~mask
