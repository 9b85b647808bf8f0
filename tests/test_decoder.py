"""Chapter 7 — the decoder layer and the decoder stack, against PyTorch's own modules."""

from __future__ import annotations

import pytest
import torch
from oracle import blocked, copy_decoder, copy_decoder_layer
from torch import nn

from transformer_lib.decoder import Decoder, DecoderLayer
from transformer_lib.masks import causal_mask

# float32, a few layers of d_model = 16: both sides do the same arithmetic in a different order,
# which leaves differences of a few ulps; 1e-5 is far below any real bug (wrong mask, wrong norm).
ATOL = 1e-5

D_MODEL, HEADS, D_FF = 16, 4, 32
TGT_LENGTHS = [6, 4, 1]  # real tokens per target row, padding at the end (never a fully hidden row)
SRC_LENGTHS = [5, 2, 3]  # real tokens per source row


def length_mask(lengths: list[int], size: int) -> torch.Tensor:
    """``(batch, size)`` bool: True on the first ``lengths[b]`` positions of row b."""
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


def masks(tgt_len: int = 6, src_len: int = 5) -> dict[str, torch.Tensor]:
    """Our masks (True = may attend) and the pieces PyTorch's modules want."""
    tgt_real, src_real = length_mask(TGT_LENGTHS, tgt_len), length_mask(SRC_LENGTHS, src_len)
    return {
        "tgt_mask": tgt_real[:, None, None, :] & causal_mask(tgt_len),  # (batch, 1, tgt_len, tgt_len)
        "memory_mask": src_real[:, None, None, :],  # (batch, 1, 1, src_len)
        "tgt_real": tgt_real,
        "ref_tgt_mask": blocked(causal_mask(tgt_len)),  # (tgt_len, tgt_len), True = blocked
        "ref_tgt_key_padding_mask": ~tgt_real,  # (batch, tgt_len), True = pad
        "ref_memory_key_padding_mask": ~src_real,  # (batch, src_len), True = pad
    }


def reference_call(ref: nn.Module, x: torch.Tensor, memory: torch.Tensor, m: dict) -> torch.Tensor:
    return ref(
        x,
        memory,
        tgt_mask=m["ref_tgt_mask"],
        tgt_key_padding_mask=m["ref_tgt_key_padding_mask"],
        memory_key_padding_mask=m["ref_memory_key_padding_mask"],
    )


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_decoder_layer_matches_torch(norm_first: bool) -> None:
    ours = DecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=norm_first).eval()
    ref = nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    copy_decoder_layer(ours, ref)
    x, memory, m = torch.randn(3, 6, D_MODEL), torch.randn(3, 5, D_MODEL), masks()
    out = ours(x, memory, m["tgt_mask"], m["memory_mask"])
    expected = reference_call(ref, x, memory, m)
    assert out.shape == (3, 6, D_MODEL)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_decoder_stack_matches_torch(norm_first: bool) -> None:
    ours = Decoder(D_MODEL, HEADS, D_FF, N=3, dropout=0.0, norm_first=norm_first, final_norm=True).eval()
    layer = nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref = nn.TransformerDecoder(layer, num_layers=3, norm=nn.LayerNorm(D_MODEL)).eval()
    with torch.no_grad():  # a non-trivial final norm, so copying it is tested too
        ref.norm.weight.uniform_(0.5, 1.5)
        ref.norm.bias.uniform_(-0.5, 0.5)
    copy_decoder(ours, ref)
    x, memory, m = torch.randn(3, 6, D_MODEL), torch.randn(3, 5, D_MODEL), masks()
    out = ours(x, memory, m["tgt_mask"], m["memory_mask"])
    torch.testing.assert_close(out, reference_call(ref, x, memory, m), atol=ATOL, rtol=0)


def test_post_ln_decoder_has_no_final_norm_by_default_and_matches_torch_without_one() -> None:
    ours = Decoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0).eval()
    assert isinstance(ours.norm, nn.Identity)
    layer = nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True)
    ref = nn.TransformerDecoder(layer, num_layers=2, norm=None).eval()
    copy_decoder(ours, ref)
    x, memory, m = torch.randn(3, 6, D_MODEL), torch.randn(3, 5, D_MODEL), masks()
    out = ours(x, memory, m["tgt_mask"], m["memory_mask"])
    torch.testing.assert_close(out, reference_call(ref, x, memory, m), atol=ATOL, rtol=0)


def test_cross_attention_takes_queries_from_the_decoder_and_keys_from_the_memory() -> None:
    layer = DecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0).eval()
    x, memory, m = torch.randn(3, 6, D_MODEL), torch.randn(3, 5, D_MODEL), masks()
    layer(x, memory, m["tgt_mask"], m["memory_mask"])
    cross = layer.cross_attn.attn_weights  # (batch, heads, tgt_len, src_len)
    assert cross.shape == (3, HEADS, 6, 5)
    assert (cross[~m["memory_mask"].expand_as(cross)] == 0).all(), "a padded memory position got attention"
    self_weights = layer.self_attn.attn_weights  # (batch, heads, tgt_len, tgt_len)
    future = ~causal_mask(6)
    assert (self_weights[..., future] == 0).all(), "masked self-attention looked at the future"


def test_decoder_output_before_t_ignores_inputs_after_t() -> None:
    decoder = Decoder(D_MODEL, HEADS, D_FF, N=2, dropout=0.0).eval()
    x, memory = torch.randn(2, 6, D_MODEL), torch.randn(2, 5, D_MODEL)
    t = 2
    changed = x.clone()
    changed[:, t + 1 :] = torch.randn(2, 6 - t - 1, D_MODEL)
    out, out_changed = decoder(x, memory, causal_mask(6)), decoder(changed, memory, causal_mask(6))
    torch.testing.assert_close(out[:, : t + 1], out_changed[:, : t + 1], atol=ATOL, rtol=0)
    assert not torch.allclose(out[:, t + 1 :], out_changed[:, t + 1 :], atol=1e-3)


def test_decoder_rejects_d_model_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match=r"d_model=10 must be divisible by num_heads=4"):
        DecoderLayer(10, 4, 32)


def test_decoder_rejects_non_positive_number_of_layers() -> None:
    with pytest.raises(ValueError, match=r"N must be a positive integer"):
        Decoder(D_MODEL, HEADS, D_FF, N=0)


def test_decoder_rejects_bad_dropout() -> None:
    with pytest.raises(ValueError, match=r"dropout must be .*\[0, 1\)"):
        DecoderLayer(D_MODEL, HEADS, D_FF, dropout=1.0)
