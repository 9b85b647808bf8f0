"""Chapter 9 — decoding: the key/value cache against the full decoder, greedy and beam search.

Oracles: the full (uncached) decoder pass for the cache, ``model.greedy_decode`` for greedy search,
brute-force enumeration of every output for beam search, a teacher-forced pass for scores.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lib.decode import (
    KVCache,
    beam_search,
    decode_step,
    gnmt_length_penalty,
    greedy_search,
    make_decoder,
    score_sequences,
)
from transformer_lib.masks import causal_mask, padding_mask, target_mask
from transformer_lib.model import Transformer, greedy_decode, make_model
from transformer_lib.utils import BOS_ID, EOS_ID, PAD_ID, make_sequence_task

# float32 through two decoder layers of width 32: the cached step projects one position at a time
# where the full pass multiplies whole (len, d_model) matrices, so sums are ordered differently and
# log-probabilities differ by a few ulps (~1e-6 measured); 1e-5 is far below what a wrong position,
# a stale cache entry or a wrong norm would change (>= 1e-2).
ATOL = 1e-5

SRC_VOCAB, TGT_VOCAB, MAX_POSITIONS = 11, 13, 64
SRC_LENGTHS = [7, 3, 5, 1, 6, 2]  # real tokens per source row; the rest is padding

# (norm_first, positional, fused): both norm placements, both positional tables, both attention kernels.
CONFIGS = [
    (False, "sinusoidal", False),
    (False, "learned", False),
    (True, "sinusoidal", False),
    (True, "learned", False),
    (True, "sinusoidal", True),
]
CONFIG_IDS = ["post-LN-sinusoidal", "post-LN-learned", "pre-LN-sinusoidal", "pre-LN-learned", "pre-LN-fused"]


def small_model(
    norm_first: bool = True,
    positional: str = "sinusoidal",
    fused: bool = False,
    tgt_vocab: int = TGT_VOCAB,
    sharpen: float = 3.0,
    eos_bias: float = 3.5,
    dropout: float = 0.0,
) -> Transformer:
    """A random 2-layer model in eval mode. Scaling the output layer makes the next-token
    distributions peaked (greedy and beam decisions far from ties), and a bias on <eos> makes
    sentences end at different steps."""
    model = make_model(
        SRC_VOCAB,
        tgt_vocab,
        N=2,
        d_model=32,
        d_ff=64,
        h=4,
        dropout=dropout,
        norm_first=norm_first,
        positional=positional,
        fused=fused,
        max_len=MAX_POSITIONS,
    )
    with torch.no_grad():
        model.generator.proj.weight.mul_(sharpen)
        model.generator.proj.bias[EOS_ID] += eos_bias
    return model.eval()


def padded_sources(lengths: list[int] = SRC_LENGTHS, src_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random source ids ``(batch, src_len)`` with padding after ``lengths[b]`` tokens, and their mask."""
    src_len = src_len or max(lengths)
    src = torch.randint(3, SRC_VOCAB, (len(lengths), src_len))
    src = src.masked_fill(torch.arange(src_len)[None, :] >= torch.tensor(lengths)[:, None], PAD_ID)
    return src, padding_mask(src, PAD_ID)


def hypothesis(row: torch.Tensor) -> list[int]:
    """The generated tokens of one output row: after <bos>, up to and including the first <eos>."""
    tokens = row[1:].tolist()
    return tokens[: tokens.index(EOS_ID) + 1] if EOS_ID in tokens else tokens


def reference_score(model: Transformer, src_row: torch.Tensor, hyp: list[int], alpha: float) -> float:
    """log P(hyp | src) / lp(|hyp|) from one teacher-forced pass over the unpadded source, summed in Python."""
    src_row = src_row[src_row != PAD_ID][None]  # (1, real_len): no padding at all
    ys = torch.tensor([[BOS_ID] + hyp])  # (1, 1 + len)
    with torch.no_grad():
        log_probs = model(src_row, ys[:, :-1], None, causal_mask(len(hyp)))[0]  # (len, vocab)
    total = sum(float(log_probs[i, token]) for i, token in enumerate(hyp))
    return total / ((5 + len(hyp)) / 6) ** alpha


def pad_to(ys: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(ys, (0, width - ys.size(1)), value=PAD_ID)


# --------------------------------------------------------------------------- the cached step


@pytest.mark.parametrize("norm_first, positional, fused", CONFIGS, ids=CONFIG_IDS)
def test_cached_steps_match_the_full_decoder(norm_first: bool, positional: str, fused: bool) -> None:
    model = small_model(norm_first, positional, fused)
    src, src_mask = padded_sources()
    tgt = torch.randint(0, TGT_VOCAB, (src.size(0), 9))  # any target prefix, teacher-forced
    tgt[:, 0] = BOS_ID
    with torch.no_grad():
        memory = model.encode(src, src_mask)  # (batch, src_len, d_model)
        full = model.generator(model.decode(memory, src_mask, tgt, causal_mask(tgt.size(1))))  # (batch, 9, vocab)
        cache = KVCache(model, memory)
        for t in range(tgt.size(1)):
            assert cache.length == t
            step = decode_step(model, cache, src_mask, tgt[:, t])  # (batch, vocab)
            torch.testing.assert_close(step, full[:, t], atol=ATOL, rtol=0)
    assert cache.self_keys[0].shape == (src.size(0), 4, tgt.size(1), 8)  # (batch, heads, t, d_k)
    assert cache.cross_keys[1].shape == (src.size(0), 4, src.size(1), 8)  # (batch, heads, src_len, d_k)


def test_cache_computes_only_the_newest_position_and_the_memory_once() -> None:
    model = small_model(eos_bias=-100.0)  # never <eos>: all max_len steps run
    src, src_mask = padded_sources()
    self_q_lengths, cross_kv_calls = [], []
    hooks = [
        model.decoder.layers[0].self_attn.W_Q.register_forward_hook(
            lambda m, i, o: self_q_lengths.append(i[0].size(1))
        ),
        model.decoder.layers[0].cross_attn.W_K.register_forward_hook(
            lambda m, i, o: cross_kv_calls.append(i[0].size(1))
        ),
    ]
    try:
        greedy_search(model, src, src_mask, 12, BOS_ID, EOS_ID)
    finally:
        for h in hooks:
            h.remove()
    assert self_q_lengths == [1] * 12  # one new position per step, never the whole prefix
    assert cross_kv_calls == [src.size(1)]  # the memory's keys: once per sentence


def test_cache_reorder_follows_the_index() -> None:
    model = small_model()
    src, src_mask = padded_sources()
    with torch.no_grad():
        cache = KVCache(model, model.encode(src, src_mask))
        decode_step(model, cache, src_mask, torch.full((src.size(0),), BOS_ID))
        before = [t.clone() for t in cache.self_keys + cache.cross_values]
        index = torch.tensor([2, 2, 0, 5, 1, 3])
        cache.reorder(index)
    for old, new in zip(before, cache.self_keys + cache.cross_values):
        torch.testing.assert_close(new, old[index], atol=0, rtol=0)


def test_decode_step_refuses_positions_beyond_the_table() -> None:
    model = make_model(SRC_VOCAB, TGT_VOCAB, N=1, d_model=16, d_ff=32, h=2, dropout=0.0, max_len=2).eval()
    src, src_mask = padded_sources([2])
    with torch.no_grad():
        cache = KVCache(model, model.encode(src, src_mask))
        for _ in range(2):
            decode_step(model, cache, src_mask, torch.tensor([BOS_ID]))
        with pytest.raises(ValueError, match="position 2 is beyond the 2 target positions"):
            decode_step(model, cache, src_mask, torch.tensor([BOS_ID]))


# --------------------------------------------------------------------------- greedy search


@pytest.mark.parametrize("norm_first, positional, fused", CONFIGS, ids=CONFIG_IDS)
def test_greedy_search_cached_equals_uncached_and_greedy_decode(norm_first: bool, positional: str, fused: bool) -> None:
    model = small_model(norm_first, positional, fused)
    src, src_mask = padded_sources()
    cached = greedy_search(model, src, src_mask, 20, BOS_ID, EOS_ID, PAD_ID)
    uncached = greedy_search(model, src, src_mask, 20, BOS_ID, EOS_ID, PAD_ID, use_cache=False)
    reference = greedy_decode(model, src, src_mask, 20, BOS_ID, EOS_ID, PAD_ID)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, reference)
    assert cached.size(1) <= 21 and (cached[:, 0] == BOS_ID).all()


def test_greedy_search_pads_finished_rows_and_stops_early() -> None:
    model = small_model(eos_bias=100.0)  # <eos> at once: every row finishes at the first step
    src, src_mask = padded_sources()
    ys = greedy_search(model, src, src_mask, 20, BOS_ID, EOS_ID, PAD_ID)
    assert ys.tolist() == [[BOS_ID, EOS_ID]] * src.size(0)


def test_greedy_search_restores_the_training_mode_and_ignores_dropout() -> None:
    model = small_model(dropout=0.5).train()
    src, src_mask = padded_sources()
    first = greedy_search(model, src, src_mask, 10, BOS_ID, EOS_ID)
    assert model.training  # put back as it was
    assert torch.equal(first, greedy_search(model, src, src_mask, 10, BOS_ID, EOS_ID))  # no random dropout


# --------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("norm_first, positional, fused", CONFIGS, ids=CONFIG_IDS)
def test_beam_search_cached_equals_uncached(norm_first: bool, positional: str, fused: bool) -> None:
    model = small_model(norm_first, positional, fused)
    src, src_mask = padded_sources()
    cached, cached_scores = beam_search(
        model, src, src_mask, 15, BOS_ID, EOS_ID, PAD_ID, beam_size=4, return_scores=True
    )
    uncached, uncached_scores = beam_search(
        model, src, src_mask, 15, BOS_ID, EOS_ID, PAD_ID, beam_size=4, use_cache=False, return_scores=True
    )
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(cached_scores, uncached_scores, atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first, positional, fused", CONFIGS, ids=CONFIG_IDS)
def test_beam_size_one_without_length_penalty_is_greedy(norm_first: bool, positional: str, fused: bool) -> None:
    model = small_model(norm_first, positional, fused)
    src, src_mask = padded_sources()
    greedy = greedy_search(model, src, src_mask, 15, BOS_ID, EOS_ID, PAD_ID)
    beam = beam_search(model, src, src_mask, 15, BOS_ID, EOS_ID, PAD_ID, beam_size=1, length_penalty=0.0)
    assert torch.equal(pad_to(beam, 16), pad_to(greedy, 16))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_scores_are_teacher_forced_length_normalised_log_probs(alpha: float) -> None:
    model = small_model(sharpen=1.5, eos_bias=1.0)
    src, src_mask = padded_sources()
    ys, scores = beam_search(
        model, src, src_mask, 8, BOS_ID, EOS_ID, PAD_ID, beam_size=3, length_penalty=alpha, return_scores=True
    )
    expected = torch.tensor([reference_score(model, src[b], hypothesis(ys[b]), alpha) for b in range(src.size(0))])
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(score_sequences(model, src, src_mask, ys, EOS_ID, alpha), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_exhaustive_beam_finds_the_best_output_and_never_loses_to_greedy(alpha: float) -> None:
    # A vocabulary of 5 and at most 4 output tokens: 4^3 * 5 = 320 beams keep every prefix and rank
    # every <eos> candidate among the best, so beam search must return the best of all outputs.
    # (With a small beam that is not guaranteed, not even "at least as good as greedy".)
    vocab, max_len = 5, 4
    model = small_model(tgt_vocab=vocab, sharpen=1.5, eos_bias=1.0)
    src, src_mask = padded_sources()
    beam, beam_scores = beam_search(
        model,
        src,
        src_mask,
        max_len,
        BOS_ID,
        EOS_ID,
        PAD_ID,
        beam_size=(vocab - 1) ** (max_len - 1) * vocab,
        length_penalty=alpha,
        return_scores=True,
    )
    greedy = greedy_search(model, src, src_mask, max_len, BOS_ID, EOS_ID, PAD_ID)
    others = [t for t in range(vocab) if t != EOS_ID]
    outputs = [list(p) + [EOS_ID] for n in range(max_len) for p in itertools.product(others, repeat=n)]
    outputs += [list(p) for p in itertools.product(others, repeat=max_len)]  # cut at max_len, no <eos>
    assert len(outputs) == 1 + 4 + 16 + 64 + 256
    for b in range(src.size(0)):
        # All outputs of sentence b in one teacher-forced batch.
        ys = torch.tensor([[BOS_ID] + pad_to(torch.tensor([o]), max_len)[0].tolist() for o in outputs])
        with torch.no_grad():
            log_probs = model(
                src[b : b + 1].expand(len(outputs), -1), ys[:, :-1], src_mask[b : b + 1], causal_mask(max_len)
            )  # (n, max_len, vocab)
        token_lp = log_probs.gather(2, ys[:, 1:, None])[:, :, 0]  # (n, max_len)
        lengths = torch.tensor([len(o) for o in outputs])
        real = torch.arange(max_len)[None, :] < lengths[:, None]
        best = float((token_lp * real).sum(1).div(gnmt_length_penalty(lengths.float(), alpha)).max())
        assert beam_scores[b].item() == pytest.approx(best, abs=ATOL)
        assert reference_score(model, src[b], hypothesis(beam[b]), alpha) == pytest.approx(best, abs=ATOL)
        assert reference_score(model, src[b], hypothesis(greedy[b]), alpha) <= beam_scores[b].item() + ATOL


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_sentence_does_not_depend_on_its_batch_mates(method: str) -> None:
    model = small_model(sharpen=2.0, eos_bias=2.0)
    src, src_mask = padded_sources(src_len=9)  # extra padding columns on every row
    decode = make_decoder(method, beam_size=3, length_penalty=0.6)
    together = decode(model, src, src_mask, 12)
    for b, length in enumerate(SRC_LENGTHS):
        alone_src = src[b : b + 1, :length]  # (1, length): no padding at all
        alone = decode(model, alone_src, padding_mask(alone_src, PAD_ID), 12)
        assert hypothesis(together[b]) == hypothesis(alone[0]), f"sentence {b}"


@pytest.fixture(scope="module")
def copy_model() -> Transformer:
    """A tiny model trained for a few seconds to copy sequences of 1-4 symbols."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    vocab, steps = 3 + 6, 200
    model = make_model(vocab, vocab, N=2, d_model=32, d_ff=64, h=4, dropout=0.0, positional="learned", max_len=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps, pct_start=0.2)
    for _ in range(steps):
        src, tgt = make_sequence_task("copy", 64, 1, 4, num_symbols=6, generator=generator)
        log_probs = model(src, tgt[:, :-1], padding_mask(src, PAD_ID), target_mask(tgt[:, :-1], PAD_ID))
        loss = F.nll_loss(log_probs.reshape(-1, vocab), tgt[:, 1:].reshape(-1), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_trained_copy_model_decodes_new_sequences(copy_model: Transformer, method: str) -> None:
    src, tgt = make_sequence_task("copy", 64, 1, 4, num_symbols=6, generator=torch.Generator().manual_seed(123))
    ys = make_decoder(method, beam_size=4)(copy_model, src, padding_mask(src, PAD_ID), 6)
    correct = [hypothesis(ys[b]) == hypothesis(tgt[b]) for b in range(src.size(0))]
    # 200 training steps get >= 99% right (measured over 500 sequences and 3 seeds); a broken cache,
    # reorder or stopping rule gets most of them wrong.
    assert sum(correct) >= 0.95 * len(correct)


def test_make_decoder_lowers_max_len_to_the_positions_of_the_model() -> None:
    model = make_model(SRC_VOCAB, TGT_VOCAB, N=1, d_model=16, d_ff=32, h=2, dropout=0.0, max_len=6).eval()
    with torch.no_grad():
        model.generator.proj.bias[EOS_ID] -= 100.0  # never ends: runs to the limit
    src, src_mask = padded_sources([3, 2])
    for method in ("greedy", "beam"):
        assert make_decoder(method)(model, src, src_mask, 1000).shape == (2, 7)
    with pytest.raises(ValueError, match="max_len=7 exceeds the 6 target positions"):
        greedy_search(model, src, src_mask, 7, BOS_ID, EOS_ID)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("beam_size", [0, -2, 1.5, True])
def test_bad_beam_size(beam_size: object) -> None:
    model = small_model()
    src, src_mask = padded_sources()
    with pytest.raises(ValueError, match="beam_size must be a positive integer"):
        beam_search(model, src, src_mask, 5, BOS_ID, EOS_ID, beam_size=beam_size)
    with pytest.raises(ValueError, match="beam_size"):
        make_decoder("beam", beam_size=beam_size)


@pytest.mark.parametrize("alpha", [-0.1, math.nan, math.inf, "0.6"])
def test_bad_length_penalty(alpha: object) -> None:
    model = small_model()
    src, src_mask = padded_sources()
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, src, src_mask, 5, BOS_ID, EOS_ID, length_penalty=alpha)
    with pytest.raises(ValueError, match="length_penalty"):
        make_decoder("beam", length_penalty=alpha)


@pytest.mark.parametrize("search", [greedy_search, beam_search])
@pytest.mark.parametrize("max_len", [0, -1, 2.0, None])
def test_bad_max_len(search, max_len: object) -> None:
    src, src_mask = padded_sources()
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        search(small_model(), src, src_mask, max_len, BOS_ID, EOS_ID)


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_bad_inputs_name_the_argument(search) -> None:
    model = small_model()
    src, src_mask = padded_sources()
    with pytest.raises(ValueError, match="src must be integer ids"):
        search(model, src.float(), src_mask, 5, BOS_ID, EOS_ID)
    with pytest.raises(ValueError, match=r"src must have shape \(batch, len\)"):
        search(model, src[0], src_mask, 5, BOS_ID, EOS_ID)
    with pytest.raises(ValueError, match="src_mask must be None or a boolean tensor"):
        search(model, src, src_mask.float(), 5, BOS_ID, EOS_ID)
    with pytest.raises(ValueError, match="eos_id must be a token id in"):
        search(model, src, src_mask, 5, BOS_ID, TGT_VOCAB)
    with pytest.raises(ValueError, match="bos_id must be a token id in"):
        search(model, src, src_mask, 5, -1, EOS_ID)


def test_bad_decoder_method() -> None:
    with pytest.raises(ValueError, match="method must be 'greedy' or 'beam'"):
        make_decoder("sampling")


def test_bad_sequences_to_score() -> None:
    model = small_model()
    src, src_mask = padded_sources()
    with pytest.raises(ValueError, match="ys must have shape"):
        score_sequences(model, src, src_mask, torch.full((src.size(0), 1), BOS_ID), EOS_ID)
