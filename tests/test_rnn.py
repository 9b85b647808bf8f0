"""Tests for transformer_lib.rnn: the GRU seq2seq baseline of chapter 1, with and without attention.

No PyTorch module implements Bahdanau attention, so the oracle for ``AdditiveAttention`` is the
formula v^T tanh(W s + U h) written out again with einsum; the rest are properties.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformer_lib.rnn import AdditiveAttention, RNNDecoder, RNNEncoder, Seq2Seq, make_seq2seq
from transformer_lib.utils import BOS_ID, EOS_ID, FIRST_SYMBOL_ID, PAD_ID, make_sequence_task

ATOL = 1e-6  # float32, the same arithmetic in another order (einsum vs nn.Linear, a sliced row vs the batch)
LOOP_ATOL = 1e-5  # one nn.GRU call over all steps vs one call per step: different kernels, float32
VOCAB, EMB, HIDDEN = FIRST_SYMBOL_ID + 10, 8, 16


def padded_batch() -> torch.Tensor:
    """Three sources of lengths 5, 3 and 1, padded to 5."""
    return torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0], [11, 0, 0, 0, 0]])


# ---- encoder ---------------------------------------------------------------------------------------


def test_encoder_shapes() -> None:
    enc = RNNEncoder(VOCAB, EMB, HIDDEN)
    outputs, final = enc(padded_batch())
    assert outputs.shape == (3, 5, HIDDEN)
    assert final.shape == (3, HIDDEN)


def test_encoder_final_state_ignores_trailing_padding() -> None:
    """The final state of a padded row is the state after its last real token, as if run unpadded."""
    enc = RNNEncoder(VOCAB, EMB, HIDDEN)
    src = padded_batch()
    _, final = enc(src)
    for row, length in enumerate((5, 3, 1)):
        _, alone = enc(src[row : row + 1, :length])
        torch.testing.assert_close(final[row : row + 1], alone, atol=ATOL, rtol=0)


def test_encoder_final_state_is_the_gru_state() -> None:
    """For an unpadded batch, ``final`` equals the hidden state nn.GRU itself returns."""
    enc = RNNEncoder(VOCAB, EMB, HIDDEN)
    src = torch.randint(FIRST_SYMBOL_ID, VOCAB, (4, 6))
    _, final = enc(src)
    _, h_n = enc.gru(enc.embed(src))  # (1, batch, hidden)
    torch.testing.assert_close(final, h_n[0], atol=ATOL, rtol=0)


# ---- additive attention ----------------------------------------------------------------------------


def test_additive_attention_matches_formula() -> None:
    attn = AdditiveAttention(HIDDEN)
    s, h = torch.randn(2, HIDDEN), torch.randn(2, 5, HIDDEN)
    context, weights = attn(s, h)
    W, U, b, v = attn.W.weight, attn.U.weight, attn.U.bias, attn.v.weight[0]
    energy = torch.tanh(torch.einsum("ij,bj->bi", W, s)[:, None, :] + torch.einsum("ij,bmj->bmi", U, h) + b)
    expected_weights = torch.softmax(torch.einsum("i,bmi->bm", v, energy), dim=-1)
    torch.testing.assert_close(weights, expected_weights, atol=ATOL, rtol=0)
    torch.testing.assert_close(context, torch.einsum("bm,bmi->bi", expected_weights, h), atol=ATOL, rtol=0)


def test_additive_attention_mask_zero_on_padding_and_sums_to_one() -> None:
    attn = AdditiveAttention(HIDDEN)
    mask = padded_batch() != PAD_ID  # (3, 5)
    s, h = torch.randn(3, HIDDEN), torch.randn(3, 5, HIDDEN)
    context, weights = attn(s, h, mask)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3), atol=ATOL, rtol=0)
    # masking is the same as cutting the padded positions off
    for row, length in enumerate((5, 3, 1)):
        c_alone, w_alone = attn(s[row : row + 1], h[row : row + 1, :length])
        torch.testing.assert_close(weights[row : row + 1, :length], w_alone, atol=ATOL, rtol=0)
        torch.testing.assert_close(context[row : row + 1], c_alone, atol=ATOL, rtol=0)


def test_additive_attention_all_masked_row_gives_zeros_not_nan() -> None:
    attn = AdditiveAttention(HIDDEN)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    context, weights = attn(torch.randn(2, HIDDEN), torch.randn(2, 3, HIDDEN), mask)
    assert not torch.isnan(weights).any() and not torch.isnan(context).any()
    assert torch.all(weights[1] == 0) and torch.all(context[1] == 0)


def test_additive_attention_projected_keys_cache_gives_same_result() -> None:
    attn = AdditiveAttention(HIDDEN)
    s, h = torch.randn(2, HIDDEN), torch.randn(2, 4, HIDDEN)
    c1, w1 = attn(s, h)
    c2, w2 = attn(s, h, projected_keys=attn.U(h))
    torch.testing.assert_close(w1, w2, atol=ATOL, rtol=0)
    torch.testing.assert_close(c1, c2, atol=ATOL, rtol=0)


# ---- decoder and seq2seq ---------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [False, True])
def test_seq2seq_shapes(attention: bool) -> None:
    model = make_seq2seq(VOCAB, EMB, HIDDEN, attention=attention)
    src, tgt = make_sequence_task("reverse", 4, 2, 6)
    logits = model(src, tgt[:, :-1])
    assert logits.shape == (4, 7, VOCAB)
    if attention:
        assert model.attn_weights is not None and model.attn_weights.shape == (4, 7, 6)
        torch.testing.assert_close(model.attn_weights.sum(-1), torch.ones(4, 7), atol=ATOL, rtol=0)
        assert torch.all(model.attn_weights.masked_select((src == PAD_ID)[:, None, :]) == 0)
    else:
        assert model.attn_weights is None


@pytest.mark.parametrize("attention", [False, True])
def test_teacher_forcing_equals_step_by_step(attention: bool) -> None:
    """``forward`` (all target positions at once where possible) equals a loop over ``step``."""
    dec = RNNDecoder(VOCAB, EMB, HIDDEN, attention=attention)
    tgt_in = torch.randint(FIRST_SYMBOL_ID, VOCAB, (3, 5))
    h0, enc_outputs = torch.randn(3, HIDDEN), torch.randn(3, 4, HIDDEN)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    logits, _ = dec(tgt_in, h0, enc_outputs, mask)
    hidden, stepped = h0, []
    for t in range(5):
        step_logits, hidden, _ = dec.step(tgt_in[:, t], hidden, enc_outputs, mask)
        stepped.append(step_logits)
    torch.testing.assert_close(logits, torch.stack(stepped, dim=1), atol=LOOP_ATOL, rtol=0)


def test_without_attention_only_the_final_state_reaches_the_decoder() -> None:
    """The bottleneck: the decoder's output has zero gradient w.r.t. every encoder output it is given;
    only the initial state (the encoder's final state) carries the source. With attention it does not."""
    tgt_in = torch.randint(FIRST_SYMBOL_ID, VOCAB, (2, 4))
    for attention in (False, True):
        dec = RNNDecoder(VOCAB, EMB, HIDDEN, attention=attention)
        h0 = torch.randn(2, HIDDEN, requires_grad=True)
        enc_outputs = torch.randn(2, 6, HIDDEN, requires_grad=True)
        logits, _ = dec(tgt_in, h0, enc_outputs, torch.ones(2, 6, dtype=torch.bool))
        logits.square().sum().backward()
        assert h0.grad is not None and h0.grad.abs().sum() > 0
        reached = enc_outputs.grad is not None and bool(enc_outputs.grad.abs().sum() > 0)
        assert reached == attention


def test_without_attention_different_encoder_outputs_same_final_state_same_logits() -> None:
    """Two sources that end in the same final state are indistinguishable without attention."""
    tgt_in = torch.randint(FIRST_SYMBOL_ID, VOCAB, (2, 4))
    h0, mask = torch.randn(2, HIDDEN), torch.ones(2, 6, dtype=torch.bool)
    enc_a, enc_b = torch.randn(2, 6, HIDDEN), torch.randn(2, 6, HIDDEN)
    for attention in (False, True):
        dec = RNNDecoder(VOCAB, EMB, HIDDEN, attention=attention)
        same = torch.equal(dec(tgt_in, h0, enc_a, mask)[0], dec(tgt_in, h0, enc_b, mask)[0])
        assert same == (not attention)


@pytest.mark.parametrize("attention", [False, True])
def test_greedy_decode_shape_padding_and_consistency(attention: bool) -> None:
    model = make_seq2seq(VOCAB, EMB, HIDDEN, attention=attention)
    src = padded_batch()
    out = model.greedy_decode(src, max_len=7)
    assert out.shape == (3, 7) and out.dtype == torch.long
    for row in out.tolist():  # after the first <eos>, only padding
        if EOS_ID in row:
            assert all(tok == PAD_ID for tok in row[row.index(EOS_ID) + 1 :])
    # each generated token is the argmax of the teacher-forced logits on the generated prefix
    for i in range(3):
        row = out[i].tolist()
        n = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
        tgt_in = torch.tensor([[BOS_ID] + row[: n - 1]])
        logits = model(src[i : i + 1], tgt_in)
        assert logits.argmax(-1)[0].tolist() == row[:n]


@pytest.mark.parametrize("attention", [False, True])
def test_tiny_model_overfits_a_few_reverse_examples(attention: bool) -> None:
    g = torch.Generator().manual_seed(0)
    src, tgt = make_sequence_task("reverse", 8, 3, 5, generator=g)
    model = make_seq2seq(VOCAB, 16, 32, attention=attention)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert torch.equal(model.greedy_decode(src, max_len=tgt.size(1) - 1), tgt[:, 1:])


# ---- bad inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=0, emb_dim=4, hidden_dim=4), "vocab_size"),
        (dict(vocab_size=10, emb_dim=-1, hidden_dim=4), "emb_dim"),
        (dict(vocab_size=10, emb_dim=4, hidden_dim=2.5), "hidden_dim"),
        (dict(vocab_size=10, emb_dim=4, hidden_dim=4, pad_id=10), "pad_id"),
    ],
)
def test_bad_sizes_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RNNEncoder(**kwargs)
    with pytest.raises(ValueError, match=match):
        RNNDecoder(**kwargs)


def test_decoder_attention_flag_must_be_bool() -> None:
    with pytest.raises(ValueError, match="attention must be True or False"):
        RNNDecoder(VOCAB, EMB, HIDDEN, attention="yes")


def test_additive_attention_bad_size_raises() -> None:
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        AdditiveAttention(0)


@pytest.mark.parametrize(
    "src, match",
    [
        (torch.tensor([3, 4, 5]), r"src must have shape \(batch, len\)"),
        (torch.zeros(2, 0, dtype=torch.long), r"src must have at least one position"),
        (torch.tensor([[3.0, 4.0]]), "src must be integer ids"),
        (torch.tensor([[3, VOCAB]]), rf"the ids in src must lie in \[0, vocab_size={VOCAB}\)"),
        (torch.tensor([[3, 4], [0, 0]]), "at least one non-padding token"),
    ],
)
def test_encoder_bad_src_raises(src: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RNNEncoder(VOCAB, EMB, HIDDEN)(src)


@pytest.mark.parametrize(
    "query, keys, mask, match",
    [
        (torch.randn(2, HIDDEN + 1), torch.randn(2, 3, HIDDEN), None, "query must have shape"),
        (torch.randn(2, HIDDEN), torch.randn(2, 3, HIDDEN + 1), None, "keys must have shape"),
        (torch.randn(2, HIDDEN), torch.randn(3, 3, HIDDEN), None, "keys must have shape"),
        (torch.randn(2, HIDDEN), torch.randn(2, 3, HIDDEN), torch.ones(2, 3), "mask must be a boolean"),
        (torch.randn(2, HIDDEN), torch.randn(2, 3, HIDDEN), torch.ones(2, 4, dtype=torch.bool), "mask must have shape"),
    ],
)
def test_additive_attention_bad_inputs_raise(query, keys, mask, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdditiveAttention(HIDDEN)(query, keys, mask)


def test_decoder_bad_inputs_raise() -> None:
    dec = RNNDecoder(VOCAB, EMB, HIDDEN, attention=True)
    tgt_in = torch.tensor([[BOS_ID, 3]])
    with pytest.raises(ValueError, match="hidden must have shape"):
        dec(tgt_in, torch.randn(2, HIDDEN), torch.randn(1, 3, HIDDEN))
    with pytest.raises(ValueError, match="needs enc_outputs"):
        dec(tgt_in, torch.randn(1, HIDDEN))
    with pytest.raises(ValueError, match="needs enc_outputs"):
        dec.step(tgt_in[:, 0], torch.randn(1, HIDDEN))
    with pytest.raises(ValueError, match=r"the ids in tgt_in must lie in \[0, vocab_size"):
        dec(torch.tensor([[BOS_ID, -1]]), torch.randn(1, HIDDEN), torch.randn(1, 3, HIDDEN))


def test_seq2seq_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="must share hidden_dim"):
        Seq2Seq(RNNEncoder(VOCAB, EMB, HIDDEN), RNNDecoder(VOCAB, EMB, HIDDEN * 2))
    model = make_seq2seq(VOCAB, EMB, HIDDEN)
    src = padded_batch()
    with pytest.raises(ValueError, match="same batch size"):
        model(src, torch.full((2, 4), BOS_ID))
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        model.greedy_decode(src, max_len=0)
    with pytest.raises(ValueError, match="eos_id"):
        model.greedy_decode(src, max_len=3, eos_id=VOCAB)
