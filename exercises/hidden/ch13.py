"""Hidden tests for chapter 13 (only the batch grader runs them): the loss on the logits of a small GPT against
the library's causal_lm_loss, gradients of the model's weights included, and other sizes and <pad> ids; top-k
against an independent oracle (torch.sort), in float64, on logits full of ties or already filtered; BERT's
masking with p = 0 and p = 0.95, ten ordinary ids, picks spread over every stretch of the sentence, and a batch
with no ordinary token at all."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch06 import randn
from transformer_lib.grading.ch13 import (
    IGNORE,
    LOSS_ATOL,
    NEG_INF,
    _corrupt,
    _expect_consistent,
    _expect_loss,
    _expect_picked_share,
    _expect_split,
    _expect_top_k,
    _filtered,
    _loss,
    corpus,
    lm_logits,
    lm_tokens,
    spread_over_positions,
    top_k_reference,
)
from transformer_lib.lm import LanguageModel, LMConfig, causal_lm_loss, lm_batch


@get_exercise("13.causal_lm_loss").test(
    "the logits of a small GPT: the library's loss, and the same gradients of the model's weights", hidden=True
)
def _(learner_loss: Any) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(401)
        model = LanguageModel(LMConfig(vocab_size=17, N=1, d_model=16, d_ff=32, h=2, dropout=0.0, max_len=32))
    g = torch.Generator().manual_seed(402)
    sentences = [torch.randint(4, 17, (n,), generator=g).tolist() for n in (7, 2, 5, 1)]
    tokens = lm_batch(sentences)  # (4, 9): <bos> ids <eos> <pad> ...
    loss = _loss(learner_loss, model(tokens), tokens, 0)
    expected = causal_lm_loss(model(tokens), tokens, 0)
    expect_close(loss.detach(), expected.detach(), "the loss of a GPT's logits", atol=LOSS_ATOL, rtol=0)
    expect(loss.requires_grad, "the loss does not require a gradient: is it detached?")
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected.backward()
    for (name, p), g_ours in zip(model.named_parameters(), ours):
        expect_close(g_ours, p.grad, f"the gradient of {name}", atol=1e-6, rtol=1e-4)


@get_exercise("13.causal_lm_loss").test(
    "other sizes and <pad> ids: two tokens, a vocabulary of two, a sentence with one token", hidden=True
)
def _(learner_loss: Any) -> None:
    for lengths, length, vocab, pad_id, seed in (
        ([2], 2, 7, 0, 411),
        ([3, 3], 3, 2, 1, 413),
        ([5, 1, 3], 5, 9, 8, 415),
        ([12, 7, 9, 4], 12, 50, 3, 417),
    ):
        logits = lm_logits(len(lengths), length, seed, vocab)
        tokens = lm_tokens(lengths, length, seed + 1, pad_id, vocab)
        loss = _loss(learner_loss, logits, tokens, pad_id)
        _expect_loss(loss, logits, tokens, pad_id, f"lengths {lengths}, vocabulary {vocab}, pad_id = {pad_id}")
    logits = lm_logits(3, 6, 419).double()
    tokens = lm_tokens([6, 4, 2], 6, 420)
    _expect_loss(_loss(learner_loss, logits, tokens, 0), logits, tokens, 0, "float64 logits")


def sorted_top_k(logits: Tensor, k: int) -> Tensor:
    """An independent oracle: sort each row, and keep what is at least its k-th value."""
    k = min(k, logits.size(-1))
    kth = logits.sort(dim=-1, descending=True).values[..., k - 1 : k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, NEG_INF))


@get_exercise("13.top_k").test("an independent oracle (torch.sort): other sizes, float64, many ties", hidden=True)
def _(top_k_logits: Any) -> None:
    cases = [
        (randn(3, 4, 50, seed=421).double(), 10),
        (randn(50, seed=422) * 100, 1),
        (randn(2, 3, seed=423) - 10, 2),
        (torch.randint(0, 3, (8, 20), generator=torch.Generator().manual_seed(424)).float(), 4),
    ]
    for logits, k in cases:
        out = _filtered(top_k_logits, logits, k)
        what = f"logits of shape {tuple(logits.shape)} ({logits.dtype}), k = {k}"
        expect_close(out, sorted_top_k(logits, k), what, atol=0, rtol=0)
        _expect_top_k(out, logits, k, what)


@get_exercise("13.top_k").test("logits already holding -inf: a row filtered once, then again", hidden=True)
def _(top_k_logits: Any) -> None:
    once = top_k_reference(randn(4, 16, seed=425), 6)  # six finite logits per row
    for k in (3, 6, 10):
        out = _filtered(top_k_logits, once, k)
        expect(not bool(torch.isnan(out).any()), f"k = {k} on logits holding -inf gives NaN")
        _expect_top_k(out, once, k, f"logits with six finite values per row, k = {k}")


@get_exercise("13.bert_masking").test("p = 0 picks nothing, p = 0.95 nearly every ordinary token", hidden=True)
def _(mask_tokens: Any) -> None:
    tokens = corpus(64, 64, seed=431)
    inputs, labels = _corrupt(mask_tokens, tokens, 104, 0.0, 4, seed=432)
    expect(bool((labels == IGNORE).all()), "with p = 0 some tokens are picked")
    expect(torch.equal(inputs, tokens), "with p = 0 the inputs differ from the tokens")
    inputs, labels = _corrupt(mask_tokens, tokens, 104, 0.95, 4, seed=433)
    _expect_consistent(inputs, labels, tokens, 104, 4, "p = 0.95")
    _expect_picked_share(labels, tokens, 0.95, 4, "p = 0.95")
    _expect_split(inputs, labels, tokens, 104, 4, "p = 0.95")


@get_exercise("13.bert_masking").test("ten ordinary ids: first_id = 2, mask_id = 12", hidden=True)
def _(mask_tokens: Any) -> None:
    tokens = corpus(128, 128, seed=434, first_id=2, mask_id=12)
    inputs, labels = _corrupt(mask_tokens, tokens, 12, 0.3, 2, seed=435)
    what = "first_id = 2, mask_id = 12, p = 0.3"
    _expect_consistent(inputs, labels, tokens, 12, 2, what)
    _expect_picked_share(labels, tokens, 0.3, 2, what)
    _expect_split(inputs, labels, tokens, 12, 2, what)


@get_exercise("13.bert_masking").test("picks are spread over every stretch of the sentence", hidden=True)
def _(mask_tokens: Any) -> None:
    tokens = corpus(256, 64, seed=436, special=0.0)
    tokens[:, 1:] = tokens[:, 1:].masked_fill(tokens[:, 1:] == 0, 50)  # no padding: every stretch is full
    inputs, labels = _corrupt(mask_tokens, tokens, 104, 0.15, 4, seed=437)
    _expect_consistent(inputs, labels, tokens, 104, 4, "p = 0.15")
    problem = spread_over_positions(labels, tokens, 0.15, 4)
    expect(not problem, problem)


@get_exercise("13.bert_masking").test("a batch without ordinary tokens: nothing is picked", hidden=True)
def _(mask_tokens: Any) -> None:
    tokens = torch.tensor([[1, 3, 3, 2, 0, 0], [1, 2, 0, 0, 0, 0]])
    inputs, labels = _corrupt(mask_tokens, tokens, 104, 0.5, 4, seed=438)
    expect(bool((labels == IGNORE).all()), "some special tokens are picked")
    expect(torch.equal(inputs, tokens), "the inputs differ from the tokens, though no token is ordinary")
