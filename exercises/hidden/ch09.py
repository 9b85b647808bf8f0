"""Hidden tests for chapter 9 (only the batch grader runs them): other ids and alphas, a cache that already
holds earlier positions, float64, beam size 1, and a small seeded Transformer as the next-token model
(with the brute-force optimum as the oracle)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from transformer_lib.grading import Mismatch, expect, expect_close, get_exercise
from transformer_lib.grading.ch09 import (
    CACHE_ATOL,
    SCORE_ATOL,
    ToyScorer,
    _hypotheses,
    _lp,
    _scores,
    _search,
    _step,
    brute_force,
    causal_reference,
    normalised_scores_reference,
)
from transformer_lib.masks import causal_mask
from transformer_lib.model import make_model


@get_exercise("09.length_penalty").test("another <eos> id, alpha = 2, float64, <eos> first", hidden=True)
def _(normalised_scores: Any) -> None:
    tokens, log_probs = _hypotheses(seed=401, eos_id=0)
    log_probs = log_probs.double()
    out = _scores(normalised_scores, tokens, log_probs, 0, 2.0)
    expect_close(
        out,
        normalised_scores_reference(tokens, log_probs, 0, 2.0),
        "the scores (eos_id=0, alpha=2, float64)",
        atol=SCORE_ATOL,
        rtol=0,
    )
    one = _scores(normalised_scores, torch.tensor([[2, 5, 2]]), torch.tensor([[-0.7, -3.0, -1.0]]), 2, 0.6)
    expect_close(
        one, torch.tensor([-0.7]) / _lp(1, 0.6), "the score of a hypothesis that is just <eos>", atol=SCORE_ATOL, rtol=0
    )


@get_exercise("09.kv_cache").test("a cache that already holds earlier positions; float64; one head", hidden=True)
def _(attend_with_cache: Any) -> None:
    for batch, heads, d_k, dtype in ((3, 2, 5, torch.float32), (1, 1, 3, torch.float64)):
        g = torch.Generator().manual_seed(402)
        Q, K, V = (torch.randn(batch, heads, 7, d_k, generator=g, dtype=dtype) for _ in range(3))
        expected = causal_reference(Q, K, V)
        cache = {"k": K[:, :, :4].clone(), "v": V[:, :, :4].clone()}  # positions 0-3 were decoded before
        for t in range(4, 7):
            out = _step(attend_with_cache, Q[:, :, t : t + 1], K[:, :, t : t + 1], V[:, :, t : t + 1], cache)
            expect_close(
                out,
                expected[:, :, t : t + 1],
                f"the output at position {t} ({dtype}, {heads} head(s))",
                atol=CACHE_ATOL,
                rtol=0,
            )
        expect(
            cache["k"].shape[2] == 7, f'after 3 more steps cache["k"] holds {cache["k"].shape[2]} positions, expected 7'
        )


def _greedy(scorer: Callable[[torch.Tensor], torch.Tensor], bos_id: int, eos_id: int, max_len: int) -> list[int]:
    tokens = [bos_id]
    for _ in range(max_len):
        tokens.append(int(scorer(torch.tensor([tokens]))[0].argmax()))
        if tokens[-1] == eos_id:
            break
    return tokens


def _remapped(ids: dict[int, int]) -> ToyScorer:
    """The "beam beats greedy" table with the token ids renamed (<bos> = 4, <eos> = 0, a = 1, b = 2, <pad> = 3)."""
    BOS, EOS, A, B = ids["bos"], ids["eos"], ids["a"], ids["b"]
    return ToyScorer(
        {
            (BOS,): {EOS: 0.1, A: 0.5, B: 0.4},
            (BOS, A): {EOS: 0.3, A: 0.36, B: 0.34},
            (BOS, B): {EOS: 0.95, A: 0.025, B: 0.025},
        },
        default={EOS: 0.6, A: 0.2, B: 0.2},
        bos_id=BOS,
        eos_id=EOS,
    )


IDS = {"bos": 4, "eos": 0, "a": 1, "b": 2}


@get_exercise("09.beam_search").test("other ids for <bos> and <eos>; beam size 1 is greedy", hidden=True)
def _(beam_search: Any) -> None:
    expected, expected_score = brute_force(_remapped(IDS), IDS["bos"], IDS["eos"], 4, 0.0, 5)
    tokens, score = _search(beam_search, _remapped(IDS), 4, 2, 0.0, bos_id=IDS["bos"], eos_id=IDS["eos"])
    expect(tokens == expected, "with <bos> = 4 and <eos> = 0, the returned hypothesis is not the best one")
    greedy = _greedy(_remapped(IDS), IDS["bos"], IDS["eos"], 4)
    tokens, _ = _search(beam_search, _remapped(IDS), 4, 1, 0.0, bos_id=IDS["bos"], eos_id=IDS["eos"])
    expect(tokens == greedy, "with beam_size=1 the result is not the greedy one")


def _transformer_scorer(seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A random 1-layer Transformer (target vocabulary 6) translating one fixed sentence, as next_log_probs."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make_model(7, 6, N=1, d_model=16, d_ff=32, h=2, dropout=0.0, max_len=16).eval()
    with torch.no_grad():
        model.generator.proj.weight.mul_(1.5)
        model.generator.proj.bias[:2] -= 5.0  # <pad> and <bos> are unlikely
        memory = model.encode(torch.tensor([[3, 5, 4, 6]]), None)  # (1, 4, d_model)

    def next_log_probs(prefixes: torch.Tensor) -> torch.Tensor:
        if not isinstance(prefixes, torch.Tensor) or prefixes.dim() != 2:
            raise Mismatch("next_log_probs takes a LongTensor of prefixes of shape (n, t)")
        with torch.no_grad():
            n, t = prefixes.shape
            out = model.decode(memory.expand(n, -1, -1), None, prefixes, causal_mask(t))  # (n, t, d_model)
            return model.generator(out[:, -1])  # (n, vocab)

    return next_log_probs


@get_exercise("09.beam_search").test("a small Transformer as the model: finds the best hypothesis", hidden=True)
def _(beam_search: Any) -> None:
    for seed in (4, 0):  # greedy misses the optimum for both; with seed 0 the best hypothesis has no <eos>
        scorer = _transformer_scorer(seed)
        expected, expected_score = brute_force(scorer, 1, 2, 4, 0.6, 6)
        tokens, score = _search(beam_search, scorer, 4, 3, 0.6)
        expect(
            tokens == expected, f"with a small Transformer (seed {seed}), the returned hypothesis is not the best one"
        )
        expect(
            abs(score - expected_score) < SCORE_ATOL,
            "with a small Transformer, the returned score is not the hypothesis' log P / lp(length)",
        )
