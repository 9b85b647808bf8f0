"""Tests of chapter 3: token embeddings and positional encodings.

There is no PyTorch module to serve as an oracle here, so the tests compare with the closed form of
the paper (computed independently, in plain Python floats) and check properties: the encoding is a
fixed buffer, its dot products depend only on the distance between positions, and self-attention is
blind to word order until positions are added.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_lib.attention import Attention
from transformer_lib.embeddings import (
    Embeddings,
    LearnedPositionalEmbedding,
    PositionalEncoding,
    sinusoidal_positional_encoding,
)

# The encoding is computed in float64 and stored as float32: entries are in [-1, 1], so float32
# rounding is below 1e-7; sin/cos of arguments up to max_len lose a little more.
PE_ATOL = 1e-6
# Dot products sum d_model float32 products of size <= 1.
DOT_ATOL = 1e-4
# Attention outputs of a permuted input are the same numbers summed in another order.
PERM_ATOL = 1e-5


def closed_form_pe(max_len: int, d_model: int) -> list[list[float]]:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), one entry at a time."""
    table = []
    for pos in range(max_len):
        row = []
        for j in range(d_model):
            two_i = j - (j % 2)  # columns 2i and 2i+1 share the frequency of 2i
            angle = pos / 10000 ** (two_i / d_model)
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        table.append(row)
    return table


# ---------------------------------------------------------------- the sinusoidal table


@pytest.mark.parametrize("max_len, d_model", [(50, 16), (50, 7), (1, 1), (3, 2), (200, 33)])
def test_pe_matches_closed_form(max_len, d_model):
    pe = sinusoidal_positional_encoding(max_len, d_model)
    assert pe.shape == (max_len, d_model)
    assert pe.dtype == torch.float32
    expected = torch.tensor(closed_form_pe(max_len, d_model), dtype=torch.float64)
    torch.testing.assert_close(pe.double(), expected, atol=PE_ATOL, rtol=0)


def test_pe_first_row_is_sin0_cos0():
    pe = sinusoidal_positional_encoding(4, 9)
    assert torch.equal(pe[0, 0::2], torch.zeros(5))  # sin(0)
    assert torch.equal(pe[0, 1::2], torch.ones(4))  # cos(0)


@pytest.mark.parametrize("d_model", [8, 64])
def test_pe_dot_product_depends_only_on_distance(d_model):
    """PE[p] . PE[p+k] = sum_i cos(w_i k): the same for every p (an even d_model pairs every sine with a cosine)."""
    pe = sinusoidal_positional_encoding(200, d_model)
    for k in (0, 1, 5, 37, 100):
        dots = (pe[: 200 - k] * pe[k:]).sum(-1)  # (200 - k,): PE[p] . PE[p+k] for every p
        torch.testing.assert_close(dots, dots[:1].expand_as(dots), atol=DOT_ATOL, rtol=0)
        omega = 1 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
        assert abs(dots[0].item() - torch.cos(omega * k).sum().item()) < DOT_ATOL
    # and so the norm of every row is the same: sqrt(d_model / 2)
    torch.testing.assert_close(pe.norm(dim=-1), torch.full((200,), math.sqrt(d_model / 2)), atol=DOT_ATOL, rtol=0)


def test_pe_shift_is_a_rotation():
    """PE[p+k] = PE[p] R_k with R_k block-diagonal 2x2 rotations: a fixed linear map for each offset k."""
    d_model, k = 16, 7
    pe = sinusoidal_positional_encoding(100, d_model).double()
    omega = 1 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    R = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i, w in enumerate(omega):
        c, s = math.cos(w * k), math.sin(w * k)
        # (sin a, cos a) R = (sin(a + wk), cos(a + wk))
        R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    torch.testing.assert_close(pe[:-k] @ R, pe[k:], atol=DOT_ATOL, rtol=0)


@pytest.mark.parametrize("max_len, d_model", [(0, 8), (8, 0), (-1, 8), (8, 2.5), (True, 8)])
def test_pe_rejects_bad_sizes(max_len, d_model):
    with pytest.raises(ValueError, match="must be a positive integer"):
        sinusoidal_positional_encoding(max_len, d_model)


# ---------------------------------------------------------------- PositionalEncoding (the module)


def test_positional_encoding_adds_the_table():
    module = PositionalEncoding(d_model=6, max_len=20)
    x = torch.randn(3, 11, 6)
    expected = x + torch.tensor(closed_form_pe(11, 6), dtype=torch.float32)
    torch.testing.assert_close(module(x), expected, atol=PE_ATOL, rtol=0)


def test_positional_encoding_is_a_buffer_not_a_parameter():
    module = PositionalEncoding(d_model=8, max_len=30)
    assert "pe" in dict(module.named_buffers())
    assert list(module.parameters()) == []
    assert not module.pe.requires_grad
    assert "pe" not in module.state_dict()  # non-persistent: recomputed, never loaded from a checkpoint
    moved = module.to(torch.float64)  # buffers follow .to(), like parameters
    assert moved.pe.dtype == torch.float64
    assert module.to("meta").pe.device.type == "meta"  # and follow device moves (meta: no GPU needed)


def test_positional_encoding_is_not_trained():
    pe = PositionalEncoding(d_model=8, max_len=30)
    proj = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(pe, proj)
    before = pe.pe.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randn(2, 10, 8)).pow(2).sum().backward()
    optimizer.step()
    assert torch.equal(pe.pe, before)
    assert proj.weight.grad is not None  # the rest of the model did train


def test_positional_encoding_keeps_the_input_dtype():
    module = PositionalEncoding(d_model=4, max_len=10)
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    assert module(x).dtype == torch.float64


@pytest.mark.parametrize("cls, max_len", [(PositionalEncoding, 16), (LearnedPositionalEmbedding, 12)])
def test_too_long_sequence_names_both_lengths(cls, max_len):
    module = cls(d_model=4, max_len=max_len)
    module(torch.randn(1, max_len, 4))  # exactly max_len is fine
    with pytest.raises(ValueError, match=rf"sequence length {max_len + 3} exceeds max_len={max_len}"):
        module(torch.randn(1, max_len + 3, 4))


@pytest.mark.parametrize("cls", [PositionalEncoding, LearnedPositionalEmbedding])
@pytest.mark.parametrize("shape", [(5, 4), (2, 5, 3), (1, 2, 5, 4)])
def test_positional_modules_reject_bad_shapes(cls, shape):
    module = cls(d_model=4, max_len=10)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, len, d_model=4\)"):
        module(torch.randn(shape))


@pytest.mark.parametrize("cls", [PositionalEncoding, LearnedPositionalEmbedding])
def test_positional_modules_reject_token_ids(cls):
    module = cls(d_model=4, max_len=10)
    with pytest.raises(ValueError, match="floating-point vectors, got dtype torch.int64"):
        module(torch.zeros(1, 5, 4, dtype=torch.long))


# ---------------------------------------------------------------- LearnedPositionalEmbedding


def test_learned_positions_are_trained_parameters():
    module = LearnedPositionalEmbedding(d_model=4, max_len=10)
    assert module.pos.weight in set(module.parameters())
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(module(x), x + module.pos.weight[:6])
    module(x).pow(2).sum().backward()
    grad = module.pos.weight.grad
    assert grad is not None
    assert (grad[:6].abs().sum(-1) > 0).all()  # the positions used receive gradients
    assert torch.equal(grad[6:], torch.zeros(4, 4))  # the unused ones do not


def test_learned_positions_reject_bad_sizes():
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        LearnedPositionalEmbedding(d_model=4, max_len=0)


# ---------------------------------------------------------------- Embeddings


def test_embeddings_are_scaled_lookups():
    d_model = 16
    emb = Embeddings(vocab_size=10, d_model=d_model)
    tokens = torch.tensor([[1, 2, 3], [9, 0, 4]])
    raw = F.embedding(tokens, emb.lut.weight)  # the unscaled lookup
    out = emb(tokens)
    assert out.shape == (2, 3, d_model)
    torch.testing.assert_close(out, raw * math.sqrt(d_model))
    torch.testing.assert_close(out[1, 0], emb.lut.weight[9] * 4.0)  # sqrt(16) = 4


def test_embeddings_padding_row_is_zero_and_untrained():
    emb = Embeddings(vocab_size=5, d_model=4, padding_idx=0)
    tokens = torch.tensor([[3, 1, 0, 0]])
    out = emb(tokens)
    assert torch.equal(out[0, 2:], torch.zeros(2, 4))
    out.sum().backward()
    assert torch.equal(emb.lut.weight.grad[0], torch.zeros(4))
    assert emb.lut.weight.grad[3].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_embeddings_reject_non_integer_tokens(dtype):
    emb = Embeddings(vocab_size=5, d_model=4)
    with pytest.raises(ValueError, match=f"tokens must be integer ids, got dtype {dtype}"):
        emb(torch.zeros(1, 3, dtype=dtype))


@pytest.mark.parametrize("shape", [(3,), (1, 2, 3)])
def test_embeddings_reject_wrong_shapes(shape):
    emb = Embeddings(vocab_size=5, d_model=4)
    with pytest.raises(ValueError, match=r"tokens must have shape \(batch, len\)"):
        emb(torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("bad_id", [5, -1])
def test_embeddings_reject_ids_outside_the_vocabulary(bad_id):
    emb = Embeddings(vocab_size=5, d_model=4)
    with pytest.raises(ValueError, match=r"the ids in tokens must lie in \[0, vocab_size=5\)"):
        emb(torch.tensor([[0, bad_id]]))


@pytest.mark.parametrize("vocab_size, d_model", [(0, 4), (5, 0), (5, 4.0)])
def test_embeddings_reject_bad_sizes(vocab_size, d_model):
    with pytest.raises(ValueError, match="must be a positive integer"):
        Embeddings(vocab_size, d_model)


def test_embeddings_reject_padding_idx_outside_the_vocabulary():
    with pytest.raises(ValueError, match="padding_idx=7 is outside the vocabulary"):
        Embeddings(vocab_size=5, d_model=4, padding_idx=7)


# ---------------------------------------------------------------- word order and self-attention


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(perm=st.integers(1, 9).flatmap(lambda n: st.permutations(list(range(n)))), seed=st.integers(0, 2**16))
def test_self_attention_without_positions_is_permutation_equivariant(perm, seed):
    """Attn(P X) = P Attn(X): reordering the words only reorders the outputs."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attn = Attention(d_model=8, d_k=8)
    x = torch.randn(2, len(perm), 8, generator=g)  # (batch, len, d_model)
    perm = torch.tensor(perm)
    out, weights = attn(x)
    out_p, weights_p = attn(x[:, perm])
    torch.testing.assert_close(out_p, out[:, perm], atol=PERM_ATOL, rtol=0)
    torch.testing.assert_close(weights_p, weights[:, perm][:, :, perm], atol=PERM_ATOL, rtol=0)
    # hence any order-free summary (here the mean over the words) cannot tell the two orders apart
    torch.testing.assert_close(out_p.mean(1), out.mean(1), atol=PERM_ATOL, rtol=0)


def test_positional_encoding_breaks_permutation_equivariance():
    """With positions added, every reordering of 4 distinct words changes the (permuted-back) outputs."""
    vocab = {"我": 0, "欠": 1, "他": 2, "100W": 3}
    embed, pos, attn = Embeddings(len(vocab), 16), PositionalEncoding(16, max_len=8), Attention(16, 16)
    tokens = torch.tensor([[vocab[w] for w in ["我", "欠", "他", "100W"]]])  # (1, 4)
    out_plain = attn(embed(tokens))[0]
    out_pos = attn(pos(embed(tokens)))[0]
    for perm in itertools.permutations(range(4)):
        if perm == (0, 1, 2, 3):
            continue
        p = torch.tensor(perm)
        # without positions: the same vectors, reordered
        torch.testing.assert_close(attn(embed(tokens[:, p]))[0], out_plain[:, p], atol=PERM_ATOL, rtol=0)
        # with positions: different vectors
        diff = (attn(pos(embed(tokens[:, p])))[0] - out_pos[:, p]).abs().max()
        assert diff > 1e-2, f"permutation {perm} left the outputs unchanged (max difference {diff:.2e})"


def test_embeddings_id_check_reads_nothing_back_from_other_devices():
    # On a GPU the min/max check would stall the device at every call; off the CPU it is skipped.
    # A meta tensor has no values to read back: the old check failed on it, the new one never reads.
    emb = Embeddings(vocab_size=5, d_model=4).to("meta")
    out = emb(torch.zeros(2, 3, dtype=torch.long, device="meta"))
    assert out.shape == (2, 3, 4) and out.device.type == "meta"


def test_embeddings_compile_without_graph_breaks():
    # The id-range check is data-dependent Python control flow: traced, it would split the graph.
    explanation = torch._dynamo.explain(Embeddings(vocab_size=5, d_model=4))(torch.tensor([[0, 4, 2]]))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
