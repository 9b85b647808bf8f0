"""Tests of transformer_lib.multihead (chapter 5).

Oracle: torch.nn.MultiheadAttention (batch_first=True, dropout 0) with our weights copied in.
"""

from __future__ import annotations

import pytest
import torch
from oracle import blocked, copy_mha
from torch import nn

from transformer_lib.masks import causal_mask
from transformer_lib.multihead import MultiHeadAttention, merge_heads, split_heads

# float32, d_model <= 32: the two implementations sum the same products in a different order,
# so they differ by a few ulps (~1e-7); 1e-5 leaves room without hiding a real bug (those are ~1e-1).
ATOL = 1e-5
RTOL = 1e-5

D_MODEL, HEADS, BATCH = 16, 4, 3


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def make_pair(d_model: int = D_MODEL, heads: int = HEADS) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    ref = nn.MultiheadAttention(d_model, heads, dropout=0.0, batch_first=True)
    # nn.MultiheadAttention starts with zero biases; make them random so the copy is really tested.
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    ours = MultiHeadAttention(d_model, heads)
    copy_mha(ours, ref)
    return ours.eval(), ref.eval()


def lengths_to_keep(lengths: list[int], k_len: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, k_len) bool, True on the real (non-pad) keys."""
    return torch.arange(k_len)[None, :] < torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------- oracle: nn.MultiheadAttention


def test_self_attention_matches_pytorch_without_mask():
    ours, ref = make_pair()
    x = torch.randn(BATCH, 5, D_MODEL)
    expected, _ = ref(x, x, x, need_weights=False)
    close(ours(x, x, x), expected)


def test_key_padding_mask_matches_pytorch():
    ours, ref = make_pair()
    x = torch.randn(BATCH, 6, D_MODEL)
    keep = lengths_to_keep([6, 4, 2], 6)  # (batch, k_len)
    expected, _ = ref(x, x, x, key_padding_mask=blocked(keep), need_weights=False)
    close(ours(x, x, x, mask=keep[:, None, None, :]), expected)  # (batch, 1, 1, k_len)


def test_causal_mask_matches_pytorch():
    ours, ref = make_pair()
    x = torch.randn(BATCH, 7, D_MODEL)
    causal = causal_mask(7)  # (q_len, k_len)
    expected, _ = ref(x, x, x, attn_mask=blocked(causal), need_weights=False)
    close(ours(x, x, x, mask=causal), expected)


def test_combined_per_example_mask_matches_pytorch():
    ours, ref = make_pair()
    x = torch.randn(BATCH, 6, D_MODEL)
    keep = lengths_to_keep([6, 5, 3], 6)
    combined = keep[:, None, None, :] & causal_mask(6)  # (batch, 1, q_len, k_len); no row is empty
    per_head = combined.expand(-1, HEADS, -1, -1).reshape(BATCH * HEADS, 6, 6)  # nn.MHA wants (batch*heads, q, k)
    expected, _ = ref(x, x, x, attn_mask=blocked(per_head), need_weights=False)
    close(ours(x, x, x, mask=combined), expected)
    close(ours(x, x, x, mask=combined[:, 0]), expected)  # a 3-d (batch, q_len, k_len) mask means the same


def test_cross_attention_with_different_lengths_matches_pytorch():
    ours, ref = make_pair()
    query = torch.randn(BATCH, 4, D_MODEL)
    memory = torch.randn(BATCH, 9, D_MODEL)  # k_len != q_len
    keep = lengths_to_keep([9, 7, 1], 9)
    expected, _ = ref(query, memory, memory, key_padding_mask=blocked(keep), need_weights=False)
    out = ours(query, memory, memory, mask=keep[:, None, None, :])
    assert out.shape == (BATCH, 4, D_MODEL)
    close(out, expected)


def test_distinct_key_and_value_match_pytorch():
    ours, ref = make_pair()
    query, key, value = (torch.randn(BATCH, n, D_MODEL) for n in (3, 5, 5))
    expected, _ = ref(query, key, value, need_weights=False)
    close(ours(query, key, value), expected)


def test_averaged_attention_weights_match_pytorch():
    ours, ref = make_pair()
    query, memory = torch.randn(BATCH, 4, D_MODEL), torch.randn(BATCH, 6, D_MODEL)
    keep = lengths_to_keep([6, 3, 5], 6)
    _, expected = ref(
        query, memory, memory, key_padding_mask=blocked(keep), need_weights=True, average_attn_weights=True
    )
    ours(query, memory, memory, mask=keep[:, None, None, :])
    assert ours.attn_weights.shape == (BATCH, HEADS, 4, 6)
    close(ours.attn_weights.mean(dim=1), expected)
    # and head by head
    _, per_head = ref(query, memory, memory, key_padding_mask=blocked(keep), average_attn_weights=False)
    close(ours.attn_weights, per_head)


# ---------------------------------------------------------------- fused == unfused


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "combined"])
def test_fused_equals_unfused(mask_kind):
    plain = MultiHeadAttention(D_MODEL, HEADS).eval()
    fused = MultiHeadAttention(D_MODEL, HEADS, fused=True).eval()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(BATCH, 6, D_MODEL)
    keep = lengths_to_keep([6, 4, 2], 6)[:, None, None, :]  # (batch, 1, 1, k_len)
    mask = {"none": None, "padding": keep, "causal": causal_mask(6), "combined": keep & causal_mask(6)}[mask_kind]
    close(fused(x, x, x, mask=mask), plain(x, x, x, mask=mask))
    assert fused.attn_weights is None and plain.attn_weights is not None


def test_fully_masked_query_row_gives_zeros_not_nan_in_both_paths():
    plain = MultiHeadAttention(D_MODEL, HEADS, bias=False).eval()  # no bias: a zero row stays zero after W_O
    fused = MultiHeadAttention(D_MODEL, HEADS, bias=False, fused=True).eval()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, D_MODEL, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, 0, 2] = False  # query 2 of example 1 may attend to nothing
    outputs = []
    for mha in (plain, fused):
        out = mha(x, x, x, mask=mask)
        assert not out.isnan().any()
        assert torch.equal(out[1, 2], torch.zeros(D_MODEL))
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        assert grad.isfinite().all()
        outputs.append(out)
    close(outputs[1], outputs[0])


def test_fused_path_survives_a_backend_that_gives_nan_for_empty_rows(monkeypatch):
    """PyTorch < 2.5 (which pyproject allows) returned NaN for a query with no visible key."""

    def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0):
        scores = (q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5
        scores = scores.masked_fill(~attn_mask, float("-inf"))  # an all -inf row -> softmax NaN
        return torch.softmax(scores, dim=-1) @ v

    monkeypatch.setattr("transformer_lib.multihead.F.scaled_dot_product_attention", naive_sdpa)
    fused = MultiHeadAttention(D_MODEL, HEADS, bias=False, fused=True).eval()
    x = torch.randn(2, 4, D_MODEL, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = False
    out = fused(x, x, x, mask=mask)
    assert torch.equal(out[0, 1], torch.zeros(D_MODEL))
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.isfinite().all()


# ---------------------------------------------------------------- split / merge


def test_split_heads_puts_slice_h_into_head_h():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    for h in range(3):
        assert torch.equal(heads[:, h], x[..., h * 4 : (h + 1) * 4])


def test_split_and_merge_are_inverses():
    x = torch.randn(2, 5, 12)
    assert torch.equal(merge_heads(split_heads(x, 4)), x)
    y = torch.randn(2, 3, 5, 4)
    assert torch.equal(split_heads(merge_heads(y), 3), y)


def test_split_heads_accepts_non_contiguous_input():
    x = torch.randn(5, 2, 12).transpose(0, 1)  # (2, 5, 12), not contiguous
    assert torch.equal(merge_heads(split_heads(x, 4)), x)


# ---------------------------------------------------------------- bad inputs


def test_d_model_not_divisible_names_both_numbers():
    with pytest.raises(ValueError, match=r"d_model=10.*num_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"d_model=10.*num_heads=4"):
        split_heads(torch.randn(1, 2, 10), 4)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_num_heads_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        MultiHeadAttention(8, bad)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        split_heads(torch.randn(1, 2, 8), bad)


def test_bad_dropout_raises():
    with pytest.raises(ValueError, match="dropout must be in"):
        MultiHeadAttention(8, 2, dropout=1.0)


def test_query_with_wrong_width_raises():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    x = torch.randn(2, 3, D_MODEL)
    with pytest.raises(ValueError, match=r"query must have shape \(batch, len, d_model=16\), got \(2, 3, 8\)"):
        mha(torch.randn(2, 3, 8), x, x)


def test_unbatched_input_raises():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    x = torch.randn(3, D_MODEL)
    with pytest.raises(ValueError, match=r"key must have shape .*got \(3, 16\)"):
        mha(torch.randn(2, 3, D_MODEL), x, x)


def test_key_and_value_of_different_length_raise():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    with pytest.raises(ValueError, match="key and value must share"):
        mha(torch.randn(2, 3, D_MODEL), torch.randn(2, 4, D_MODEL), torch.randn(2, 5, D_MODEL))


def test_query_and_key_batch_mismatch_raises():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    memory = torch.randn(1, 4, D_MODEL)
    with pytest.raises(ValueError, match="same batch size"):
        mha(torch.randn(2, 3, D_MODEL), memory, memory)


@pytest.mark.parametrize("fused", [False, True])
def test_mask_of_wrong_shape_raises(fused):
    mha = MultiHeadAttention(D_MODEL, HEADS, fused=fused)
    x = torch.randn(2, 3, D_MODEL)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 1, 4\) does not broadcast"):
        mha(x, x, x, mask=torch.ones(2, 1, 1, 4, dtype=torch.bool))


@pytest.mark.parametrize("fused", [False, True])
def test_float_mask_raises(fused):
    mha = MultiHeadAttention(D_MODEL, HEADS, fused=fused)
    x = torch.randn(2, 3, D_MODEL)
    with pytest.raises(ValueError, match="mask must be a boolean tensor"):
        mha(x, x, x, mask=torch.ones(3, 3))


def test_split_and_merge_reject_wrong_rank():
    with pytest.raises(ValueError, match=r"\(batch, len, d_model\)"):
        split_heads(torch.randn(5, 8), 2)
    with pytest.raises(ValueError, match=r"\(batch, heads, len, d_k\)"):
        merge_heads(torch.randn(2, 5, 8))


# ---------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("fused", [False, True])
def test_gradients_reach_all_four_projections(fused):
    mha = MultiHeadAttention(D_MODEL, HEADS, fused=fused)
    query, memory = torch.randn(2, 3, D_MODEL), torch.randn(2, 5, D_MODEL)
    mha(query, memory, memory).square().sum().backward()
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        grad = getattr(mha, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {name}"


@pytest.mark.parametrize("fused", [False, True])
def test_dropout_only_in_train_mode(fused):
    mha = MultiHeadAttention(D_MODEL, HEADS, dropout=0.5, fused=fused)
    x = torch.randn(2, 6, D_MODEL)
    mha.eval()
    assert torch.equal(mha(x, x, x), mha(x, x, x)), "eval mode must be deterministic"
    mha.train()
    first, second = mha(x, x, x), mha(x, x, x)
    assert not torch.allclose(first, second), "train mode must drop attention weights at random"
    no_dropout = MultiHeadAttention(D_MODEL, HEADS, fused=fused).train()
    no_dropout.load_state_dict(mha.state_dict())
    assert torch.equal(no_dropout(x, x, x), no_dropout(x, x, x)), "dropout=0 must be deterministic in train mode"
