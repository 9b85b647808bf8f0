"""Tests of transformer_lib.masks (chapter 4): padding, causal and target masks.

Expected values are computed independently with Python loops; PyTorch serves as the oracle for the
causal mask (``nn.Transformer.generate_square_subsequent_mask``) and for how the masks combine and
act inside attention (``nn.MultiheadAttention`` with ``key_padding_mask`` / ``attn_mask``).
Hypothesis checks the two promises of masking: no information flows from the future, and none
flows from padding.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import blocked, copy_mha
from torch import nn

from transformer_lib.attention import Attention
from transformer_lib.embeddings import Embeddings, PositionalEncoding
from transformer_lib.masks import causal_mask, padding_mask, target_mask
from transformer_lib.multihead import MultiHeadAttention

PAD = 0
VOCAB = 8
D_MODEL = 8

# Our attention vs nn.MultiheadAttention: same float32 maths, different order of operations.
ORACLE_ATOL = 1e-5
# Masked keys get exactly zero weight, so outputs at unaffected positions should agree to the last
# bit; allow float32 round-off in case a backend reorders a sum.
INVARIANCE_ATOL = 1e-6

# Small and fast: each example is a tiny attention call.
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, database=None)


def random_tokens(batch: int, length: int, pad_fraction: float = 0.3) -> torch.Tensor:
    """Integer ids in 1..VOCAB-1 with PAD sprinkled in anywhere."""
    tokens = torch.randint(1, VOCAB, (batch, length))
    return tokens.masked_fill(torch.rand(batch, length) < pad_fraction, PAD)


def right_padded(lengths: list[int], max_len: int) -> torch.Tensor:
    """A batch of real tokens of the given lengths, padded on the right (every row has a real token)."""
    tokens = torch.randint(1, VOCAB, (len(lengths), max_len))
    for b, n in enumerate(lengths):
        tokens[b, n:] = PAD
    return tokens


# ---------------------------------------------------------------- exact values (Python loops)


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 5), (3, 7)])
def test_padding_mask_values(batch: int, length: int) -> None:
    tokens = random_tokens(batch, length)
    mask = padding_mask(tokens, PAD)
    ids = tokens.tolist()
    for b in range(batch):
        for j in range(length):
            assert mask[b, 0, 0, j].item() == (ids[b][j] != PAD)


def test_padding_mask_other_pad_id() -> None:
    tokens = torch.tensor([[4, 4, 9, 9]])
    assert padding_mask(tokens, 9)[0, 0, 0].tolist() == [True, True, False, False]
    assert padding_mask(tokens, 4)[0, 0, 0].tolist() == [False, False, True, True]


@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_causal_mask_values(size: int) -> None:
    mask = causal_mask(size)
    for i in range(size):
        for j in range(size):
            assert mask[i, j].item() == (j <= i), (i, j)


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 4), (3, 6)])
def test_target_mask_values(batch: int, length: int) -> None:
    tokens = random_tokens(batch, length)
    mask = target_mask(tokens, PAD)
    ids = tokens.tolist()
    for b in range(batch):
        for i in range(length):
            for j in range(length):
                expected = j <= i and ids[b][j] != PAD
                assert mask[b, 0, i, j].item() == expected, (b, i, j)


# ---------------------------------------------------------------- shapes, dtype, device, broadcasting


def test_shapes_and_dtype() -> None:
    tokens = random_tokens(3, 5)
    assert padding_mask(tokens, PAD).shape == (3, 1, 1, 5)
    assert causal_mask(5).shape == (5, 5)
    assert target_mask(tokens, PAD).shape == (3, 1, 5, 5)
    for mask in (padding_mask(tokens, PAD), causal_mask(5), target_mask(tokens, PAD)):
        assert mask.dtype == torch.bool


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_any_integer_dtype(dtype: torch.dtype) -> None:
    tokens = torch.tensor([[3, 1, 0]], dtype=dtype)
    assert padding_mask(tokens, 0)[0, 0, 0].tolist() == [True, True, False]
    assert target_mask(tokens, 0).dtype == torch.bool


def test_device_follows_tokens_and_argument() -> None:
    tokens = random_tokens(2, 3)
    assert target_mask(tokens, PAD).device == tokens.device
    assert causal_mask(3, device="cpu").device.type == "cpu"
    assert causal_mask(3, device=torch.device("cpu")).device.type == "cpu"


def test_masks_broadcast_to_scores() -> None:
    batch, heads, tgt_len, src_len = 2, 3, 4, 6
    src, tgt = random_tokens(batch, src_len), random_tokens(batch, tgt_len)
    self_scores = torch.randn(batch, heads, src_len, src_len)
    cross_scores = torch.randn(batch, heads, tgt_len, src_len)
    decoder_scores = torch.randn(batch, heads, tgt_len, tgt_len)
    cases = [
        (self_scores, padding_mask(src, PAD)),  # encoder self-attention
        (cross_scores, padding_mask(src, PAD)),  # cross-attention: any q_len
        (decoder_scores, causal_mask(tgt_len)),
        (decoder_scores, target_mask(tgt, PAD)),  # decoder self-attention
    ]
    for scores, mask in cases:
        assert torch.broadcast_shapes(mask.shape, scores.shape) == scores.shape
        filled = scores.masked_fill(~mask, float("-inf"))  # (batch, heads, q_len, k_len)
        assert filled.shape == scores.shape
        # the mask is the same for every head
        assert torch.equal(filled[:, 0].isinf(), filled[:, heads - 1].isinf())


def test_target_mask_is_padding_and_causal() -> None:
    tokens = random_tokens(4, 6)
    expected = padding_mask(tokens, PAD) & causal_mask(6)
    assert torch.equal(target_mask(tokens, PAD), expected)


def test_size_accepts_numpy_integer() -> None:
    assert torch.equal(causal_mask(np.int64(4)), causal_mask(4))


# ---------------------------------------------------------------- oracles (PyTorch)


@pytest.mark.parametrize("size", range(1, 10))
def test_causal_mask_matches_pytorch(size: int) -> None:
    # PyTorch's float mask has -inf where attention is blocked and 0 where it is allowed.
    reference = nn.Transformer.generate_square_subsequent_mask(size)
    assert torch.equal(causal_mask(size), ~reference.isinf())


def test_target_mask_matches_pytorch_merge() -> None:
    """nn.MultiheadAttention merges attn_mask and key_padding_mask (both True = blocked) itself."""
    batch, length, heads = 3, 5, 2
    tokens = random_tokens(batch, length)
    mha = nn.MultiheadAttention(D_MODEL, heads, batch_first=True)
    query = torch.randn(batch, length, D_MODEL)
    pytorch_causal = nn.Transformer.generate_square_subsequent_mask(length).isinf()  # True = blocked
    merged, mask_type = mha.merge_masks(pytorch_causal, tokens == PAD, query)
    assert mask_type == 2
    assert torch.equal(blocked(merged), target_mask(tokens, PAD).expand(batch, heads, length, length))


@pytest.mark.parametrize("kind", ["encoder", "decoder", "cross"])
def test_masked_attention_matches_nn_multiheadattention(kind: str) -> None:
    batch, heads, src_len, tgt_len = 3, 2, 6, 5
    src = right_padded([6, 3, 1], src_len)  # right padding: no query loses all its keys (PyTorch gives NaN)
    tgt = right_padded([5, 2, 4], tgt_len)
    ours = MultiHeadAttention(D_MODEL, heads).eval()
    ref = nn.MultiheadAttention(D_MODEL, heads, batch_first=True).eval()
    copy_mha(ours, ref)
    x_src, x_tgt = torch.randn(batch, src_len, D_MODEL), torch.randn(batch, tgt_len, D_MODEL)
    if kind == "encoder":
        q, kv, mask = x_src, x_src, padding_mask(src, PAD)
        ref_kwargs = {"key_padding_mask": src == PAD}
    elif kind == "decoder":
        q, kv, mask = x_tgt, x_tgt, target_mask(tgt, PAD)
        future = nn.Transformer.generate_square_subsequent_mask(tgt_len).isinf()  # PyTorch's own, True = blocked
        ref_kwargs = {"key_padding_mask": tgt == PAD, "attn_mask": future}
    else:
        q, kv, mask = x_tgt, x_src, padding_mask(src, PAD)
        ref_kwargs = {"key_padding_mask": src == PAD}
    with torch.no_grad():
        expected, _ = ref(q, kv, kv, need_weights=False, **ref_kwargs)
        actual = ours(q, kv, kv, mask)
    torch.testing.assert_close(actual, expected, atol=ORACLE_ATOL, rtol=0)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("fn", [padding_mask, target_mask])
def test_float_tokens_rejected(fn) -> None:
    with pytest.raises(ValueError, match="tokens must be integer ids.*float"):
        fn(torch.tensor([[1.0, 2.0, 0.0]]), PAD)


@pytest.mark.parametrize("fn", [padding_mask, target_mask])
def test_bool_tokens_rejected(fn) -> None:
    with pytest.raises(ValueError, match="tokens must be integer ids.*bool"):
        fn(torch.tensor([[True, False]]), PAD)


@pytest.mark.parametrize("fn", [padding_mask, target_mask])
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_tokens_must_be_2d(fn, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"shape \(batch, len\)"):
        fn(torch.ones(shape, dtype=torch.long), PAD)


@pytest.mark.parametrize("fn", [padding_mask, target_mask])
def test_tokens_must_be_a_tensor(fn) -> None:
    with pytest.raises(ValueError, match="tokens must be a tensor.*list"):
        fn([[1, 2, 0]], PAD)


@pytest.mark.parametrize("fn", [padding_mask, target_mask])
def test_empty_sequence_rejected(fn) -> None:
    with pytest.raises(ValueError, match="at least one position"):
        fn(torch.ones(2, 0, dtype=torch.long), PAD)


@pytest.mark.parametrize("fn", [padding_mask, target_mask])
@pytest.mark.parametrize("pad_id", [0.0, True, None, "0"])
def test_pad_id_must_be_an_integer(fn, pad_id) -> None:
    with pytest.raises(ValueError, match="pad_id must be an integer"):
        fn(torch.ones(2, 3, dtype=torch.long), pad_id)


@pytest.mark.parametrize("size", [0, -3, 2.0, 3.5, True, False, "4", None])
def test_causal_size_must_be_positive_int(size) -> None:
    with pytest.raises(ValueError, match="size must be a positive integer"):
        causal_mask(size)


# ---------------------------------------------------------------- the leaks the masks prevent (properties)


@functools.cache
def embedded_attention(d_k: int = 4) -> tuple[Embeddings, PositionalEncoding, Attention]:
    """Seeded modules, built once: every test and Hypothesis example sees the same weights."""
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    modules = Embeddings(VOCAB, D_MODEL), PositionalEncoding(D_MODEL, max_len=16), Attention(D_MODEL, d_k)
    torch.set_rng_state(generator_state)
    return modules


def self_attend(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One attention head: the masks are shaped (batch, heads, q, k), so x gets a heads axis of size 1."""
    embed, pos, attn = embedded_attention()
    with torch.no_grad():
        x = pos(embed(tokens))[:, None]  # (batch, 1, len, d_model)
        out, _ = attn(x, mask=mask)  # (batch, 1, len, d_k)
    return out[:, 0]  # (batch, len, d_k)


token_rows = st.integers(1, 3).flatmap(
    lambda batch: st.integers(2, 7).flatmap(
        lambda length: st.lists(
            st.lists(st.integers(0, VOCAB - 1), min_size=length, max_size=length), min_size=batch, max_size=batch
        )
    )
)


@PROPERTY_SETTINGS
@given(rows=token_rows, data=st.data(), use_target_mask=st.booleans())
def test_future_tokens_never_change_the_past(rows, data, use_target_mask: bool) -> None:
    tokens = torch.tensor(rows)
    batch, length = tokens.shape
    t = data.draw(st.integers(0, length - 2), label="t")
    future = data.draw(
        st.lists(st.integers(0, VOCAB - 1), min_size=batch * (length - 1 - t), max_size=batch * (length - 1 - t)),
        label="new future tokens",
    )
    changed = tokens.clone()
    changed[:, t + 1 :] = torch.tensor(future).view(batch, length - 1 - t)

    def mask_for(tok: torch.Tensor) -> torch.Tensor:  # each run builds its mask from its own tokens
        return target_mask(tok, PAD) if use_target_mask else causal_mask(length)

    before, after = self_attend(tokens, mask_for(tokens)), self_attend(changed, mask_for(changed))
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=INVARIANCE_ATOL, rtol=0)


@PROPERTY_SETTINGS
@given(rows=token_rows, data=st.data(), use_target_mask=st.booleans())
def test_padding_content_never_changes_real_tokens(rows, data, use_target_mask: bool) -> None:
    tokens = torch.tensor(rows)
    is_pad = tokens == PAD
    # Whatever sits in the padded slots (here: any token id), the mask still comes from the real layout.
    replacement = data.draw(
        st.lists(st.integers(0, VOCAB - 1), min_size=tokens.numel(), max_size=tokens.numel()), label="pad content"
    )
    changed = torch.where(is_pad, torch.tensor(replacement).view_as(tokens), tokens)
    mask = target_mask(tokens, PAD) if use_target_mask else padding_mask(tokens, PAD)
    before, after = self_attend(tokens, mask), self_attend(changed, mask)
    real = ~is_pad  # (batch, len)
    torch.testing.assert_close(after[real], before[real], atol=INVARIANCE_ATOL, rtol=0)


@PROPERTY_SETTINGS
@given(src_rows=token_rows, tgt_len=st.integers(1, 5), data=st.data())
def test_padded_source_never_reaches_the_decoder(src_rows, tgt_len: int, data) -> None:
    src = torch.tensor(src_rows)
    batch, src_len = src.shape
    replacement = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=src.numel(), max_size=src.numel()))
    changed = torch.where(src == PAD, torch.tensor(replacement).view_as(src), src)
    embed, pos, attn = embedded_attention()
    queries = torch.randn(batch, 1, tgt_len, D_MODEL, generator=torch.Generator().manual_seed(1))  # one head
    mask = padding_mask(src, PAD)  # (batch, 1, 1, src_len): broadcasts over tgt_len
    with torch.no_grad():
        before, _ = attn(queries, pos(embed(src))[:, None], mask=mask)  # (batch, 1, tgt_len, d_k)
        after, _ = attn(queries, pos(embed(changed))[:, None], mask=mask)
    torch.testing.assert_close(after, before, atol=INVARIANCE_ATOL, rtol=0)


# ---------------------------------------------------------------- the same leaks, without the masks


def test_without_causal_mask_the_future_leaks() -> None:
    """The property above is not vacuous: drop the mask and a future token changes the past."""
    tokens = torch.tensor([[3, 4, 5, 6]])
    changed = torch.tensor([[3, 4, 5, 7]])
    leaked = (self_attend(changed, None)[:, 0] - self_attend(tokens, None)[:, 0]).abs().max()
    assert leaked > 100 * INVARIANCE_ATOL
    kept = (self_attend(changed, causal_mask(4))[:, 0] - self_attend(tokens, causal_mask(4))[:, 0]).abs().max()
    assert kept <= INVARIANCE_ATOL


def test_without_padding_mask_the_padding_leaks() -> None:
    tokens = torch.tensor([[3, 4, PAD, PAD]])
    changed = torch.tensor([[3, 4, 6, 7]])  # different content in the padded slots
    leaked = (self_attend(changed, None)[:, :2] - self_attend(tokens, None)[:, :2]).abs().max()
    assert leaked > 100 * INVARIANCE_ATOL
    mask = padding_mask(tokens, PAD)
    kept = (self_attend(changed, mask)[:, :2] - self_attend(tokens, mask)[:, :2]).abs().max()
    assert kept <= INVARIANCE_ATOL
