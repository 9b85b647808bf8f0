"""Chapter 13: the decoder-only (GPT) and encoder-only (BERT) language models of ``transformer_lib.lm``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lib.lm import (
    IGNORE,
    LanguageModel,
    LMCache,
    LMConfig,
    causal_lm_loss,
    fit,
    generate,
    lm_batch,
    lm_batches,
    mask_tokens,
    masked_lm_loss,
    next_token_logits,
    perplexity,
    sample_next,
    top_k_logits,
)
from transformer_lib.utils import BOS_ID, EOS_ID, PAD_ID

VOCAB = 50


def model(causal: bool = True, seed: int = 0, **kw) -> LanguageModel:
    torch.manual_seed(seed)
    kw = {"N": 2, "d_model": 32, "d_ff": 64, "h": 4, "dropout": 0.0, **kw}
    return LanguageModel(LMConfig(VOCAB, causal=causal, **kw)).eval()


def tokens(batch: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, length), generator=g)


@pytest.mark.parametrize("t", [0, 3, 7])
def test_a_causal_lm_never_sees_the_future_and_a_masked_lm_does(t):
    gpt, bert = model(True), model(False)
    x = tokens()
    y = x.clone()
    y[:, t + 1 :] = torch.randint(4, VOCAB, y[:, t + 1 :].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(gpt(x)[:, : t + 1], gpt(y)[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(gpt(x)[:, t + 1 :], gpt(y)[:, t + 1 :])  # later positions do change
        assert not torch.allclose(bert(x)[:, : t + 1], bert(y)[:, : t + 1], atol=1e-4)  # BERT sees both sides


def test_logits_shape_and_the_output_layer_is_the_embedding():
    m = model()
    assert m(tokens(2, 5)).shape == (2, 5, VOCAB)
    assert m.head.weight is m.embed.lut.weight


def test_padding_at_the_end_changes_nothing_before_it():
    m = model()
    x = tokens(1, 6)
    padded = torch.cat([x, torch.full((1, 3), PAD_ID)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(m(padded)[:, :6], m(x), rtol=0, atol=1e-5)


def test_causal_lm_loss_is_the_shifted_cross_entropy_without_padding():
    logits = torch.randn(2, 5, VOCAB)
    toks = torch.tensor([[1, 7, 8, 9, 2], [1, 5, 2, 0, 0]])
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), toks[:, 1:].reshape(-1), ignore_index=0)
    torch.testing.assert_close(causal_lm_loss(logits, toks, pad_id=0), expected)
    by_hand = [-logits[b, t].log_softmax(-1)[toks[b, t + 1]] for b in range(2) for t in range(4) if toks[b, t + 1]]
    torch.testing.assert_close(causal_lm_loss(logits, toks, pad_id=0), torch.stack(by_hand).mean())
    changed = logits.clone()
    changed[:, -1] += 5.0  # the last position predicts nothing
    changed[1, 2:] += 3.0  # positions whose target is padding
    torch.testing.assert_close(causal_lm_loss(changed, toks, pad_id=0), expected)


def test_top_k_logits_keeps_k_per_row():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 5.5]])
    kept = top_k_logits(logits, 2)
    assert torch.isfinite(kept).sum(dim=-1).tolist() == [2, 2]
    assert torch.equal(kept[0], torch.tensor([-math.inf, 4.0, 3.0, -math.inf]))
    assert torch.equal(top_k_logits(logits, 10), logits), "k beyond the vocabulary keeps everything"


def test_sampling_respects_top_k_and_temperature():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    top3 = logits.topk(3, dim=-1).indices
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        token = sample_next(logits, temperature=1.5, top_k=3, generator=g)
        assert (top3 == token[:, None]).any(dim=-1).all()
    assert torch.equal(sample_next(logits, temperature=1e-4, generator=g), logits.argmax(-1))
    # temperature 1 samples the softmax: the empirical frequency of a 2-token distribution
    two = torch.tensor([[0.0, math.log(3.0)]]).expand(4000, 2)
    share = sample_next(two, generator=torch.Generator().manual_seed(2)).float().mean()
    assert abs(float(share) - 0.75) < 0.03


def test_one_cached_step_equals_the_full_forward():
    m = model()
    x = tokens(2, 7)
    cache = LMCache(len(m.blocks.layers))
    with torch.no_grad():
        full = m(x)  # (2, 7, vocab)
        for t in range(7):
            step = next_token_logits(m, cache, x[:, t])
            torch.testing.assert_close(step, full[:, t], rtol=1e-5, atol=1e-5)
    assert cache.length == 7


@pytest.mark.parametrize("greedy", [True, False])
def test_cached_and_uncached_generation_agree(greedy):
    m = model()
    prompt = torch.tensor([[BOS_ID, 5, 6], [BOS_ID, 9, 9]])
    runs = [
        generate(m, prompt, 12, greedy=greedy, top_k=10, use_cache=c, generator=torch.Generator().manual_seed(3))
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape[0] == 2 and runs[0].shape[1] <= 3 + 12
    assert torch.equal(runs[0][:, :3], prompt)


def test_rows_that_ended_are_padded():
    m = model()
    m.head = torch.nn.Linear(32, VOCAB)  # an output layer that always prefers <eos>: every row ends at once
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
        m.head.bias[EOS_ID] = 1.0
    for use_cache in (True, False):
        out = generate(m, torch.tensor([[BOS_ID, 7], [BOS_ID, 8]]), 5, greedy=True, use_cache=use_cache)
        assert out.tolist() == [[BOS_ID, 7, EOS_ID], [BOS_ID, 8, EOS_ID]], "stops once every row has ended"
        out = generate(m, torch.tensor([[BOS_ID, 7]]), 3, greedy=True, eos_id=None, use_cache=use_cache)
        assert out.tolist() == [[BOS_ID, 7, EOS_ID, EOS_ID, EOS_ID]], "eos_id=None: no early stop"


def test_mask_tokens_picks_ordinary_tokens_and_splits_80_10_10():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, VOCAB, (200, 100), generator=g)
    x[:, 0], x[:, -5:] = BOS_ID, PAD_ID
    mask_id = VOCAB
    inputs, labels = mask_tokens(x, mask_id, p=0.15, generator=g)
    picked = labels != IGNORE
    ordinary = x >= 4
    assert not picked[~ordinary].any(), "special tokens are never picked"
    assert torch.equal(labels[picked], x[picked]) and torch.equal(inputs[~picked], x[~picked])
    assert abs(picked.sum().item() / ordinary.sum().item() - 0.15) < 0.01
    n = picked.sum().item()
    masked = (inputs == mask_id) & picked
    kept = (inputs == x) & picked
    randomised = picked & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(randomised.sum().item() / n - 0.1 * (1 - 1 / (VOCAB - 4))) < 0.02  # a random draw may hit the same id
    assert abs(kept.sum().item() / n - 0.1) < 0.02
    assert ((inputs[randomised] >= 4) & (inputs[randomised] < mask_id)).all()


def test_masked_lm_loss_counts_only_the_picked_positions():
    logits = torch.randn(2, 4, VOCAB)
    labels = torch.full((2, 4), IGNORE)
    labels[0, 1], labels[1, 3] = 7, 9
    expected = -(logits[0, 1].log_softmax(-1)[7] + logits[1, 3].log_softmax(-1)[9]) / 2
    torch.testing.assert_close(masked_lm_loss(logits, labels), expected)
    other = logits.clone()
    other[0, 0] += 10.0
    torch.testing.assert_close(masked_lm_loss(other, labels), expected)
    none = masked_lm_loss(logits.requires_grad_(), torch.full((2, 4), IGNORE))
    assert none.item() == 0.0 and none.requires_grad


def test_lm_batch_and_the_perplexity_of_a_uniform_model():
    batch = lm_batch([[5, 6, 7], [8]])
    assert batch.tolist() == [[BOS_ID, 5, 6, 7, EOS_ID], [BOS_ID, 8, EOS_ID, PAD_ID, PAD_ID]]
    m = model()
    with torch.no_grad():
        m.head.weight.zero_()  # (tied) every logit 0: the uniform distribution, perplexity = vocabulary size
    assert perplexity(m, [batch]) == pytest.approx(VOCAB, rel=1e-5)


def test_lm_batches_hold_every_sentence_once_in_batches_of_similar_lengths():
    sentences = [[5 + i % 7] * (1 + i % 9) for i in range(60)]
    batches = lm_batches(sentences, max_tokens=40, seed=3)
    rows = sorted(tuple(t for t in row.tolist() if t not in (BOS_ID, EOS_ID, PAD_ID)) for b in batches for row in b)
    assert rows == sorted(tuple(s) for s in sentences)
    assert all(b[:, 0].eq(BOS_ID).all() for b in batches)
    assert lm_batches(sentences, 40, seed=3)[0].tolist() == batches[0].tolist()  # the seed fixes the order


def test_fit_learns_a_repeated_batch():
    m = model()
    batch = lm_batch([[5, 6, 7, 8, 9, 10]] * 4)
    losses = fit(m, lambda mod, b: causal_lm_loss(mod(b), b), [batch], steps=60, lr=3e-3, warmup=5)
    assert len(losses) == 60 and losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: generate(model(False), torch.tensor([[1, 5]]), 3), "needs a causal"),
        (lambda: generate(model(), torch.tensor([[1, 0]]), 3), "must not contain padding"),
        (lambda: generate(model(max_len=8), torch.tensor([[1, 5]]), 8), "exceeds the model's max_len=8"),
        (lambda: generate(model(), torch.tensor([[1, 5]]), 0), "max_new_tokens"),
        (lambda: generate(model(), torch.tensor([[1, VOCAB]]), 3), r"ids in prompt must lie in \[0, vocab_size=50\)"),
        (lambda: sample_next(torch.zeros(1, 4), temperature=0.0), "temperature"),
        (lambda: top_k_logits(torch.zeros(1, 4), 0), "k"),
        (lambda: causal_lm_loss(torch.zeros(2, 4, 5), torch.zeros(2, 5, dtype=torch.long)), "logits must have shape"),
        (lambda: mask_tokens(torch.ones(1, 3, dtype=torch.long), mask_id=3, first_id=4), "first_id < mask_id"),
        (lambda: mask_tokens(torch.ones(1, 3, dtype=torch.long), mask_id=9, p=1.5), "p"),
        (lambda: LMConfig(10, pad_id=10), r"pad_id must be a token id in \[0, vocab_size=10\)"),
        (lambda: model()(tokens(1, 129)), "exceeds the model's max_len=128"),
        (lambda: perplexity(model(), []), "no tokens"),
        (lambda: lm_batch([]), "no sentences"),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
