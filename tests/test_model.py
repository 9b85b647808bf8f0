"""Chapter 7 — the whole Transformer: PyTorch's nn.Transformer as oracle, masking properties,
the parameter count of the paper's base model, weight sharing, config checks, greedy decoding."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import blocked, copy_decoder, copy_encoder
from torch import nn

from transformer_lib.masks import causal_mask, padding_mask, target_mask
from transformer_lib.model import Generator, Transformer, TransformerConfig, greedy_decode, make_model
from transformer_lib.utils import BOS_ID, EOS_ID, PAD_ID, make_sequence_task

# float32 through two encoder and two decoder layers of width 16, then a log-softmax: the two
# implementations add and multiply in a different order, which costs a few ulps; 1e-5 is orders of
# magnitude below what a wrong mask, norm or weight would change.
ATOL = 1e-5

SRC_VOCAB, TGT_VOCAB, D_MODEL, HEADS, D_FF = 11, 13, 16, 4, 32


def length_mask(lengths: list[int], size: int) -> torch.Tensor:
    """``(batch, size)`` bool: True on the first ``lengths[b]`` positions of row b (padding at the end)."""
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


def random_tokens(real: torch.Tensor, vocab: int) -> torch.Tensor:
    """Random symbol ids where ``real`` is True, PAD_ID elsewhere."""
    tokens = torch.randint(3, vocab, real.shape)
    return tokens.masked_fill(~real, PAD_ID)


# --------------------------------------------------------------------------- the oracle


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # PyTorch's note on its pre-LN fast path
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_whole_model_matches_torch_transformer(norm_first: bool) -> None:
    # nn.Transformer always ends its encoder and its decoder with a LayerNorm: final_norm=True.
    model = make_model(
        SRC_VOCAB,
        TGT_VOCAB,
        N=2,
        d_model=D_MODEL,
        d_ff=D_FF,
        h=HEADS,
        dropout=0.0,
        norm_first=norm_first,
        final_norm=True,
    ).eval()
    ref = nn.Transformer(
        D_MODEL,
        HEADS,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=D_FF,
        dropout=0.0,
        batch_first=True,
        norm_first=norm_first,
    ).eval()
    with torch.no_grad():  # non-trivial final norms, so that copying them is tested too
        for norm in (ref.encoder.norm, ref.decoder.norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    copy_encoder(model.encoder, ref.encoder)
    copy_decoder(model.decoder, ref.decoder)

    src_real, tgt_real = length_mask([5, 2, 4], 5), length_mask([6, 3, 1], 6)
    src, tgt = random_tokens(src_real, SRC_VOCAB), random_tokens(tgt_real, TGT_VOCAB)
    src_mask, tgt_mask = padding_mask(src, PAD_ID), target_mask(tgt, PAD_ID)
    ours = model.generator(model.decode(model.encode(src, src_mask), src_mask, tgt, tgt_mask))
    theirs = model.generator(
        ref(
            model.src_pos(model.src_embed(src)),
            model.tgt_pos(model.tgt_embed(tgt)),
            tgt_mask=blocked(causal_mask(6)),  # PyTorch: True = blocked
            src_key_padding_mask=~src_real,
            tgt_key_padding_mask=~tgt_real,
            memory_key_padding_mask=~src_real,
        )
    )
    assert ours.shape == theirs.shape == (3, 6, TGT_VOCAB)
    # Only the real target positions are compared: outputs at <pad> positions are never used, and
    # nn.Transformer's encoder fast path (nested tensors, taken in eval mode without autograd) is free
    # to put zeros at padded positions, which then differ from ours by design.
    torch.testing.assert_close(ours[tgt_real], theirs[tgt_real], atol=ATOL, rtol=0)
    torch.testing.assert_close(model(src, tgt, src_mask, tgt_mask), ours, atol=ATOL, rtol=0)  # forward = the pieces


def test_forward_returns_log_probabilities_over_the_target_vocabulary() -> None:
    model = make_model(SRC_VOCAB, TGT_VOCAB, N=1, d_model=D_MODEL, d_ff=D_FF, h=HEADS).eval()
    src, tgt = torch.randint(3, SRC_VOCAB, (2, 7)), torch.randint(3, TGT_VOCAB, (2, 4))
    log_probs = model(src, tgt, None, causal_mask(4))
    assert log_probs.shape == (2, 4, TGT_VOCAB)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 4))


def test_generator_is_a_linear_layer_then_log_softmax() -> None:
    generator = Generator(D_MODEL, TGT_VOCAB)
    x = torch.randn(2, 3, D_MODEL)
    expected = F.log_softmax(x @ generator.proj.weight.T + generator.proj.bias, dim=-1)
    torch.testing.assert_close(generator(x), expected)


# --------------------------------------------------------------------------- properties


@functools.lru_cache(maxsize=None)
def small_model() -> Transformer:
    """One small random model (dropout on, but in eval mode) shared by the property tests."""
    torch.manual_seed(0)
    return make_model(SRC_VOCAB, TGT_VOCAB, N=2, d_model=D_MODEL, d_ff=D_FF, h=HEADS, dropout=0.1).eval()


@settings(max_examples=20, deadline=None)
@given(
    tgt_len=st.integers(2, 8),
    t_frac=st.floats(0, 1, exclude_max=True),
    seed=st.integers(0, 2**16),
)
def test_no_future_leak(tgt_len: int, t_frac: float, seed: int) -> None:
    """Changing target tokens after position t never changes the log-probabilities at positions <= t."""
    model, g = small_model(), torch.Generator().manual_seed(seed)
    t = int(t_frac * (tgt_len - 1))  # 0 .. tgt_len - 2: there is at least one later position to change
    src = torch.randint(3, SRC_VOCAB, (2, 5), generator=g)
    tgt = torch.randint(3, TGT_VOCAB, (2, tgt_len), generator=g)
    changed = tgt.clone()
    changed[:, t + 1 :] = (tgt[:, t + 1 :] - 3 + 1) % (TGT_VOCAB - 3) + 3  # every later token differs
    mask = target_mask(tgt, PAD_ID)  # no padding here: this is the causal mask, per batch row
    with torch.no_grad():
        before, after = model(src, tgt, None, mask), model(src, changed, None, mask)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=ATOL, rtol=0)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :], atol=1e-4)  # the test can see a change


@settings(max_examples=20, deadline=None)
@given(
    src_lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    tgt_lengths_frac=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_pad_invariance(src_lengths: list[int], tgt_lengths_frac: list[float], seed: int) -> None:
    """Whatever sits in the padded source and target slots, the outputs at real positions stay put."""
    model, g = small_model(), torch.Generator().manual_seed(seed)
    batch, src_len, tgt_len = len(src_lengths), 6, 7
    tgt_lengths = [1 + int(f * (tgt_len - 1)) for f in tgt_lengths_frac[:batch]]  # at least <bos>
    src_real, tgt_real = length_mask(src_lengths, src_len), length_mask(tgt_lengths, tgt_len)
    src_mask = src_real[:, None, None, :]  # from the lengths, not from the token values
    tgt_mask = tgt_real[:, None, None, :] & causal_mask(tgt_len)

    def fill(real: torch.Tensor, vocab: int) -> torch.Tensor:
        return torch.randint(0, vocab, real.shape, generator=g)  # anything, <pad> included

    src, tgt = fill(src_real, SRC_VOCAB), fill(tgt_real, TGT_VOCAB)
    src2 = torch.where(src_real, src, fill(src_real, SRC_VOCAB))  # new tokens in the source's pad slots only
    tgt2 = torch.where(tgt_real, tgt, fill(tgt_real, TGT_VOCAB))  # and in the target's
    with torch.no_grad():
        before, after = model(src, tgt, src_mask, tgt_mask), model(src2, tgt2, src_mask, tgt_mask)
    torch.testing.assert_close(before[tgt_real], after[tgt_real], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- parameter count


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a shared tensor once


def by_hand(src_vocab: int, tgt_vocab: int, N: int, d: int, d_ff: int, shared: bool, final_norm: bool) -> int:
    """The parameter count from the sizes of the pieces, as the chapter derives it."""
    attention = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O, each d x d with a bias of d
    ffn = (d * d_ff + d_ff) + (d_ff * d + d)  # W_1, b_1, W_2, b_2
    layer_norm = 2 * d  # a gain and a bias
    encoder_layer = attention + ffn + 2 * layer_norm
    decoder_layer = 2 * attention + ffn + 3 * layer_norm  # masked self-attention and cross-attention
    stacks = N * (encoder_layer + decoder_layer) + (2 * layer_norm if final_norm else 0)
    if shared:  # one (vocab, d) matrix: source embedding = target embedding = generator weight
        embeddings = src_vocab * d
    else:  # source embedding, target embedding, generator weight
        embeddings = src_vocab * d + tgt_vocab * d + tgt_vocab * d
    generator_bias = tgt_vocab
    return embeddings + stacks + generator_bias  # sinusoidal positions are a buffer, not parameters


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
def test_base_model_parameter_count_matches_the_formula(shared: bool) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = make_model(37000, 37000, share_embeddings=shared)  # the paper's base model, 37000 BPE tokens
    assert count(model) == by_hand(37000, 37000, N=6, d=512, d_ff=2048, shared=shared, final_norm=False)
    if shared:  # the paper reports about 65 million parameters for the base model (Table 3)
        assert 60e6 < count(model) < 66e6


@pytest.mark.parametrize("norm_first", [False, True])
def test_parameter_count_with_other_sizes_and_final_norms(norm_first: bool) -> None:
    model = make_model(23, 17, N=3, d_model=24, d_ff=40, h=3, norm_first=norm_first)  # final_norm follows
    assert count(model) == by_hand(23, 17, N=3, d=24, d_ff=40, shared=False, final_norm=norm_first)


def test_learned_positions_add_one_table_per_side() -> None:
    model = make_model(23, 17, N=1, d_model=24, d_ff=40, h=3, positional="learned", max_len=50)
    sinusoidal = make_model(23, 17, N=1, d_model=24, d_ff=40, h=3)
    assert count(model) - count(sinusoidal) == 2 * 50 * 24


# --------------------------------------------------------------------------- weight sharing


def test_share_embeddings_ties_source_target_and_generator_to_one_tensor() -> None:
    model = make_model(20, 20, N=1, d_model=D_MODEL, d_ff=D_FF, h=HEADS, share_embeddings=True)
    weight = model.src_embed.lut.weight
    assert model.tgt_embed.lut.weight is weight and model.generator.proj.weight is weight
    src, tgt = torch.randint(3, 20, (2, 4)), torch.randint(3, 20, (2, 3))
    model(src, tgt, None, causal_mask(3)).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # one gradient, from all three uses


def test_separate_embeddings_are_separate_tensors() -> None:
    model = make_model(20, 20, N=1, d_model=D_MODEL, d_ff=D_FF, h=HEADS)
    weights = [model.src_embed.lut.weight, model.tgt_embed.lut.weight, model.generator.proj.weight]
    assert len({w.data_ptr() for w in weights}) == 3


def test_share_embeddings_rejects_two_vocabularies() -> None:
    with pytest.raises(ValueError, match=r"share_embeddings needs one shared vocabulary.*src_vocab=20.*tgt_vocab=21"):
        make_model(20, 21, N=1, d_model=D_MODEL, d_ff=D_FF, h=HEADS, share_embeddings=True)


# --------------------------------------------------------------------------- config validation


def test_config_rejects_d_model_not_divisible_by_h() -> None:
    with pytest.raises(ValueError, match=r"d_model=10 must be divisible by h=4"):
        TransformerConfig(10, 10, d_model=10, h=4)


@pytest.mark.parametrize("name", ["src_vocab", "tgt_vocab"])
@pytest.mark.parametrize("value", [0, -3])
def test_config_rejects_non_positive_vocabulary(name: str, value: int) -> None:
    sizes = {"src_vocab": 10, "tgt_vocab": 10, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value}"):
        TransformerConfig(**sizes)


def test_config_rejects_unknown_positional_encoding() -> None:
    with pytest.raises(ValueError, match=r"positional must be one of 'sinusoidal', 'learned'; got 'rotary'"):
        make_model(10, 10, positional="rotary")


@pytest.mark.parametrize("name", ["N", "d_model", "d_ff", "h", "max_len"])
def test_config_rejects_non_positive_sizes(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
        TransformerConfig(10, 10, **{name: 0})


def test_config_rejects_bad_dropout() -> None:
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        TransformerConfig(10, 10, dropout=1.5)


def test_forward_rejects_float_tokens_and_mismatched_batches() -> None:
    model = make_model(SRC_VOCAB, TGT_VOCAB, N=1, d_model=D_MODEL, d_ff=D_FF, h=HEADS)
    with pytest.raises(ValueError, match=r"src must be integer ids"):
        model(torch.randn(2, 4), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"same batch size, got 2 and 3"):
        model(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 3, dtype=torch.long))


# --------------------------------------------------------------------------- greedy decoding


class ScriptedModel(nn.Module):
    """A stand-in model whose next token at step t is ``script[row, t]``, whatever it is fed.

    It records every decoder input, so a test can check what greedy decoding feeds back.
    """

    def __init__(self, script: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.script, self.vocab, self.fed = script, vocab, []
        self.generator = nn.Identity()  # decode already returns one-hot "scores"

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros(src.size(0), src.size(1), 1)

    def decode(self, memory, src_mask, tgt: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
        self.fed.append(tgt.clone())
        assert torch.equal(tgt_mask, causal_mask(tgt.size(1)))
        step = tgt.size(1) - 1
        out = torch.zeros(tgt.size(0), tgt.size(1), self.vocab)  # (batch, t, vocab)
        out[:, -1] = F.one_hot(self.script[:, step], self.vocab).float()
        return out


SCRIPT = torch.tensor([[5, EOS_ID, 7, 7, 7, 7], [6, 6, 6, EOS_ID, 8, 8]])  # row 0 ends at step 2, row 1 at 4


def test_greedy_decode_starts_with_bos_stops_at_eos_and_pads_finished_rows() -> None:
    model = ScriptedModel(SCRIPT, vocab=10)
    out = greedy_decode(
        model, torch.ones(2, 3, dtype=torch.long), None, max_len=6, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID
    )
    expected = torch.tensor([[BOS_ID, 5, EOS_ID, PAD_ID, PAD_ID], [BOS_ID, 6, 6, 6, EOS_ID]])
    assert torch.equal(out, expected)  # stopped after 4 steps, not max_len = 6
    assert len(model.fed) == 4
    for step, fed in enumerate(model.fed):  # the decoder input grows: <bos>, <bos> y1, ...
        assert torch.equal(fed, out[:, : step + 1])


def test_greedy_decode_pads_with_eos_when_no_pad_id() -> None:
    out = greedy_decode(
        ScriptedModel(SCRIPT, 10), torch.ones(2, 3, dtype=torch.long), None, max_len=6, bos_id=BOS_ID, eos_id=EOS_ID
    )
    assert out[0].tolist() == [BOS_ID, 5, EOS_ID, EOS_ID, EOS_ID]


def test_greedy_decode_without_eos_runs_max_len_steps() -> None:
    out = greedy_decode(ScriptedModel(SCRIPT, 10), torch.ones(2, 3, dtype=torch.long), None, max_len=5, bos_id=BOS_ID)
    assert out.shape == (2, 6)
    assert torch.equal(out[:, 1:], SCRIPT[:, :5])


def test_greedy_decode_rejects_non_positive_max_len() -> None:
    with pytest.raises(ValueError, match=r"max_len must be a positive integer, got 0"):
        greedy_decode(ScriptedModel(SCRIPT, 10), torch.ones(2, 3, dtype=torch.long), None, max_len=0, bos_id=BOS_ID)


def test_greedy_decode_agrees_with_a_teacher_forced_pass_over_its_own_output() -> None:
    """Step-by-step decoding and one parallel pass over the finished prefix pick the same tokens."""
    model = small_model()
    src = torch.randint(3, SRC_VOCAB, (4, 6))
    src[1, 3:] = PAD_ID
    src_mask = padding_mask(src, PAD_ID)
    out = greedy_decode(model, src, src_mask, max_len=7, bos_id=BOS_ID)  # no eos: every row runs 7 steps
    assert out.shape == (4, 8) and (out[:, 0] == BOS_ID).all()
    with torch.no_grad():
        parallel = model(src, out[:, :-1], src_mask, causal_mask(7)).argmax(-1)  # (4, 7)
    assert torch.equal(parallel, out[:, 1:])


def test_greedy_decode_runs_in_eval_mode_and_restores_training_mode() -> None:
    torch.manual_seed(0)
    model = make_model(SRC_VOCAB, TGT_VOCAB, N=1, d_model=D_MODEL, d_ff=D_FF, h=HEADS, dropout=0.5)
    src = torch.randint(3, SRC_VOCAB, (8, 6))
    assert model.training
    runs = [greedy_decode(model, src, None, max_len=6, bos_id=BOS_ID) for _ in range(3)]
    assert model.training, "greedy_decode left the model in eval mode"
    assert all(torch.equal(r, runs[0]) for r in runs), "dropout was active during decoding"


# --------------------------------------------------------------------------- end to end


def test_tiny_model_learns_to_copy_and_greedy_decode_reproduces_the_examples() -> None:
    torch.manual_seed(0)
    src, tgt = make_sequence_task("copy", 6, 2, 5, num_symbols=6, generator=torch.Generator().manual_seed(0))
    vocab = 3 + 6
    model = make_model(vocab, vocab, N=1, d_model=32, d_ff=64, h=2, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # teacher forcing: <bos> y1 .. -> y1 .. <eos>
    for _ in range(200):  # Adam at lr 1e-2 oscillates on the way down: 100 steps end at 0.04-0.07 by CPU kind
        log_probs = model(src, tgt_in, padding_mask(src, PAD_ID), target_mask(tgt_in, PAD_ID))
        loss = F.nll_loss(log_probs.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    out = greedy_decode(
        model, src, padding_mask(src, PAD_ID), max_len=tgt.size(1) - 1, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID
    )
    padded = F.pad(out, (0, tgt.size(1) - out.size(1)), value=PAD_ID)  # decoding may stop early
    assert torch.equal(padded, tgt)
