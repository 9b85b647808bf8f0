"""Chapter 9 exercises — decoding.

* ``09.length_penalty`` — GNMT length-normalised scores of finished hypotheses (``normalised_scores``);
* ``09.kv_cache`` — one step of causal self-attention with a key/value cache (``attend_with_cache``);
* ``09.beam_search`` — beam search with the length penalty, over any next-token scorer (``beam_search``).

Oracles: the library's ``gnmt_length_penalty``; PyTorch's ``F.scaled_dot_product_attention(is_causal=True)``
over the whole sequence for the cache; for beam search, *brute force*: every possible output is scored
and the best one is the answer. The scorers are tiny hand-made tables ("toy scorers") built so that a
correct beam search of the given size finds that optimum while the usual mistakes do not (greedy
choices, no length normalisation, finished hypotheses kept expanding), and a small seeded Transformer
in the hidden tests. The scorers record what they are asked, so a message can say *what* went wrong.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lib.decode import gnmt_length_penalty

from .ch06 import generator
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, register

# --------------------------------------------------------------------------- 09.length_penalty

length_penalty = register(
    Exercise("09.length_penalty", "Length-normalised scores", target="normalised_scores", timeout_s=20)
)

SCORE_ATOL = 1e-5  # float32 sums of a handful of log-probabilities: rounding is ~1e-7


def _hypotheses(seed: int, eos_id: int = 2, vocab: int = 9) -> tuple[Tensor, Tensor]:
    """Generated tokens ``(5, 6)`` with their first <eos> at positions 0, 2, 5, 3 and nowhere (row 4), random
    tokens after it, and their log-probabilities ``(5, 6)``."""
    g = generator(seed)
    tokens = torch.randint(0, vocab, (5, 6), generator=g)
    tokens = torch.where(tokens == eos_id, (tokens + 1) % vocab, tokens)  # no <eos> yet
    for row, at in enumerate((0, 2, 5, 3)):
        tokens[row, at] = eos_id
    tokens[1, 4] = eos_id  # a second <eos> after the first one: still the first one ends the hypothesis
    log_probs = -torch.rand(5, 6, generator=g) * 3.0 - 0.05  # (5, 6), all < 0
    return tokens, log_probs


def normalised_scores_reference(tokens: Tensor, token_log_probs: Tensor, eos_id: int, alpha: float) -> Tensor:
    """The oracle: sums up to and including the first <eos> (or the whole row), divided by the library's lp."""
    is_eos = (tokens == eos_id).long()
    after = (is_eos.cumsum(1) - is_eos) > 0  # strictly after the first <eos>
    length = (~after).sum(1)
    total = token_log_probs.masked_fill(after, 0.0).sum(1)
    return total / gnmt_length_penalty(length.to(total.dtype), alpha)


def _scores(normalised_scores: Any, tokens: Tensor, log_probs: Tensor, eos_id: int, alpha: float) -> Tensor:
    out = normalised_scores(tokens, log_probs, eos_id, alpha)
    expect_shape(out, (tokens.size(0),), f"the scores of {tokens.size(0)} hypotheses")
    expect(out.dtype.is_floating_point, f"the scores should be floating-point, got dtype {out.dtype}")
    return out


def _score_hint(out: Tensor, tokens: Tensor, log_probs: Tensor, eos_id: int, alpha: float) -> str:
    """Which known slip ``out`` equals, described by what differs (or '')."""
    is_eos = (tokens == eos_id).long()
    after = (is_eos.cumsum(1) - is_eos) > 0
    upto = is_eos.cumsum(1) > 0  # at or after the first <eos>
    length = (~after).sum(1).to(log_probs.dtype)
    total = log_probs.masked_fill(after, 0.0).sum(1)
    variants = {
        "tokens after the first <eos> are counted": log_probs.sum(1)
        / gnmt_length_penalty(float(tokens.size(1)), alpha),
        "the <eos> token itself is left out": log_probs.masked_fill(upto, 0.0).sum(1)
        / gnmt_length_penalty((~upto).sum(1).clamp(min=1).to(log_probs.dtype), alpha),
        "the length does not count the <eos> token": total
        / gnmt_length_penalty((length - (tokens == eos_id).any(1).to(length.dtype)).clamp(min=0), alpha),
        "the sum is divided by the length itself, not by lp(length)": total / length,
        "the sum is multiplied by lp(length) instead of divided": total * gnmt_length_penalty(length, alpha),
        "alpha is not used as the exponent of lp": total / ((5 + length) / 6),
    }
    for message, value in variants.items():
        if out.shape == value.shape and bool(((out - value).abs() < SCORE_ATOL).all()):
            return message
    return ""


@length_penalty.test("one score per hypothesis")
def _(normalised_scores: Any) -> None:
    tokens, log_probs = _hypotheses(seed=81)
    _scores(normalised_scores, tokens, log_probs, 2, 0.6)


@length_penalty.test("alpha = 0: the log-probability up to and including the first <eos>", points=2)
def _(normalised_scores: Any) -> None:
    tokens, log_probs = _hypotheses(seed=82)
    out = _scores(normalised_scores, tokens, log_probs, 2, 0.0)
    expected = normalised_scores_reference(tokens, log_probs, 2, 0.0)
    expect_close(
        out,
        expected,
        "the scores with alpha = 0",
        atol=SCORE_ATOL,
        rtol=0,
        hint=_score_hint(out, tokens, log_probs, 2, 0.0),
    )


@length_penalty.test("alpha = 0.6 and 1: divided by lp = ((5 + length) / 6) ** alpha", points=2)
def _(normalised_scores: Any) -> None:
    tokens, log_probs = _hypotheses(seed=83)
    for alpha in (0.6, 1.0):
        out = _scores(normalised_scores, tokens, log_probs, 2, alpha)
        expected = normalised_scores_reference(tokens, log_probs, 2, alpha)
        expect_close(
            out,
            expected,
            f"the scores with alpha = {alpha}",
            atol=SCORE_ATOL,
            rtol=0,
            hint=_score_hint(out, tokens, log_probs, 2, alpha),
        )


@length_penalty.test("a larger alpha favours the longer of two equally likely hypotheses")
def _(normalised_scores: Any) -> None:
    tokens = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 2]])  # lengths 2 and 4
    log_probs = torch.tensor([[-1.0, -1.0, -9.0, -9.0], [-0.5, -0.5, -0.5, -0.5]])  # both total -2
    low, high = (_scores(normalised_scores, tokens, log_probs, 2, a) for a in (0.0, 1.0))
    expect(
        abs(float(low[0] - low[1])) < SCORE_ATOL,
        "with alpha = 0, two hypotheses of equal log-probability should get equal scores",
    )
    expect(
        float(high[1]) > float(high[0]),
        "with alpha = 1, the longer hypothesis should score higher than the shorter one of equal log-probability",
    )


# --------------------------------------------------------------------------- 09.kv_cache

kv_cache = register(
    Exercise("09.kv_cache", "Attention with a key/value cache", target="attend_with_cache", timeout_s=20)
)

CACHE_ATOL = 1e-5  # float32 attention over a few positions: only the summation order differs


def _sequence(batch: int, heads: int, length: int, d_k: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = generator(seed)
    return tuple(torch.randn(batch, heads, length, d_k, generator=g) for _ in range(3))  # type: ignore[return-value]


def _step(attend_with_cache: Any, q: Tensor, k: Tensor, v: Tensor, cache: dict) -> Tensor:
    out = attend_with_cache(q, k, v, cache)
    expect_shape(out, tuple(q.shape), "the output of one step")
    return out


def causal_reference(Q: Tensor, K: Tensor, V: Tensor) -> Tensor:
    """The oracle: PyTorch's causal attention over the whole sequence at once."""
    return F.scaled_dot_product_attention(Q, K, V, is_causal=True)


def _cache_hint(out: Tensor, Q: Tensor, K: Tensor, V: Tensor, t: int) -> str:
    """Name the known slip that the step-``t`` output equals (or '')."""
    q, k, v = Q[:, :, t : t + 1], K[:, :, : t + 1], V[:, :, : t + 1]
    d_k = Q.size(-1)
    variants = {
        "the scores are not scaled by 1/sqrt(d_k)": (q @ k.transpose(-2, -1)).softmax(-1) @ v,
        "the scores are scaled by 1/d_k instead of 1/sqrt(d_k)": (q @ k.transpose(-2, -1) / d_k).softmax(-1) @ v,
        "the newest position does not attend to itself": (
            (q @ K[:, :, :t].transpose(-2, -1) / math.sqrt(d_k)).softmax(-1) @ V[:, :, :t] if t > 0 else None
        ),
        "the softmax runs over the wrong axis": (q @ k.transpose(-2, -1) / math.sqrt(d_k)).softmax(-2) @ v,
    }
    for message, value in variants.items():
        if value is not None and value.shape == out.shape and bool(((out - value).abs() < CACHE_ATOL).all()):
            return message
    return ""


@kv_cache.test("first step (empty cache): the only key is the new one")
def _(attend_with_cache: Any) -> None:
    Q, K, V = _sequence(2, 3, 1, 4, seed=91)
    cache: dict = {}
    out = _step(attend_with_cache, Q, K, V, cache)
    expect_close(
        out,
        V,
        "the output of the first step",
        atol=CACHE_ATOL,
        rtol=0,
        hint="with one key, all attention goes to it: the output is its value",
    )


@kv_cache.test("the cache grows by one position per step, oldest first")
def _(attend_with_cache: Any) -> None:
    Q, K, V = _sequence(2, 3, 4, 4, seed=92)
    cache: dict = {}
    for t in range(4):
        _step(attend_with_cache, Q[:, :, t : t + 1], K[:, :, t : t + 1], V[:, :, t : t + 1], cache)
        for name, full in (("k", K), ("v", V)):
            expect(
                name in cache,
                f'after step {t + 1} the cache has no entry "{name}": store the keys and values in the dict',
            )
            expect_shape(cache[name], (2, 3, t + 1, 4), f'cache["{name}"] after step {t + 1}')
            expect(
                torch.equal(cache[name], full[:, :, : t + 1]),
                f'after step {t + 1}, cache["{name}"] does not hold the positions 0..{t} in order (oldest first)',
            )


@kv_cache.test("outputs match causal attention over the whole sequence", points=2)
def _(attend_with_cache: Any) -> None:
    Q, K, V = _sequence(2, 4, 6, 8, seed=93)
    expected = causal_reference(Q, K, V)  # (batch, heads, len, d_k)
    cache: dict = {}
    for t in range(6):
        out = _step(attend_with_cache, Q[:, :, t : t + 1], K[:, :, t : t + 1], V[:, :, t : t + 1], cache)
        expect_close(
            out,
            expected[:, :, t : t + 1],
            f"the output of step {t + 1}",
            atol=CACHE_ATOL,
            rtol=0,
            hint=_cache_hint(out, Q, K, V, t),
        )


# --------------------------------------------------------------------------- 09.beam_search

beam = register(Exercise("09.beam_search", "Beam search with a length penalty", target="beam_search", timeout_s=30))

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4  # the toy vocabulary: <pad>, <bos>, <eos> and two words
TOY_VOCAB = 5


class ToyScorer:
    """A next-token model given as a table: ``prefix (tuple of ids, <bos> first) -> probabilities``.

    Prefixes not in the table get ``default``. ``<pad>`` and ``<bos>`` get a tiny probability (they are
    valid tokens, just never good ones). Called like a model: ``scorer(prefixes)`` with a LongTensor
    ``(n, t)`` returns ``(n, vocab)`` float32 log-probabilities. It records every prefix it was asked about.
    """

    def __init__(
        self,
        table: dict[tuple[int, ...], dict[int, float]],
        default: dict[int, float],
        vocab: int = TOY_VOCAB,
        bos_id: int = BOS,
        eos_id: int = EOS,
    ) -> None:
        self.vocab, self.bos_id, self.eos_id = vocab, bos_id, eos_id
        self.table = {k: self._log_probs(v) for k, v in table.items()}
        self.default = self._log_probs(default)
        self.seen: list[tuple[int, ...]] = []
        self.batch_sizes: list[int] = []

    def _log_probs(self, probs: dict[int, float]) -> Tensor:
        p = torch.full((self.vocab,), 1e-4, dtype=torch.float64)
        for token, value in probs.items():
            p[token] = value
        return (p / p.sum()).log().float()

    def row(self, prefix: tuple[int, ...]) -> Tensor:
        return self.table.get(prefix, self.default)

    def __call__(self, prefixes: Any) -> Tensor:
        if not isinstance(prefixes, Tensor) or prefixes.dim() != 2 or prefixes.dtype.is_floating_point:
            shape = tuple(prefixes.shape) if isinstance(prefixes, Tensor) else type(prefixes).__name__
            raise Mismatch(f"next_log_probs takes a LongTensor of prefixes of shape (n, t), got {shape}")
        self.batch_sizes.append(prefixes.size(0))
        rows = []
        for prefix in prefixes.tolist():
            self.seen.append(tuple(prefix))
            rows.append(self.row(tuple(prefix)))
        return torch.stack(rows) if rows else torch.empty(0, self.vocab)


def _lp(length: int, alpha: float) -> float:
    return float(gnmt_length_penalty(length, alpha))


def brute_force(
    scorer: Callable[[Tensor], Tensor], bos_id: int, eos_id: int, max_len: int, alpha: float, vocab: int
) -> tuple[list[int], float]:
    """The oracle: the best of ALL hypotheses (finished with <eos> within max_len tokens, or max_len tokens
    without one) by ``log P / lp(length)``. ``scorer`` is called level by level on every live prefix."""
    best: tuple[list[int], float] = ([], -math.inf)
    live: list[tuple[list[int], float]] = [([bos_id], 0.0)]
    for step in range(1, max_len + 1):
        log_probs = scorer(torch.tensor([p for p, _ in live]))  # (n, vocab)
        grown = []
        for i, (prefix, score) in enumerate(live):
            for token in range(vocab):
                total = score + float(log_probs[i, token])
                if token == eos_id or step == max_len:
                    normalised = total / _lp(step, alpha)
                    if normalised > best[1]:
                        best = (prefix + [token], normalised)
                else:
                    grown.append((prefix + [token], total))
        live = grown
    return best


def case_beats_greedy() -> ToyScorer:
    """Greedy takes the likelier first word `a`, but `b <eos>` is the best sentence: a beam of 2 finds it."""
    return ToyScorer(
        {
            (BOS,): {EOS: 0.1, A: 0.5, B: 0.4},
            (BOS, A): {EOS: 0.3, A: 0.36, B: 0.34},
            (BOS, B): {EOS: 0.95, A: 0.025, B: 0.025},
        },
        default={EOS: 0.6, A: 0.2, B: 0.2},
    )


def case_length() -> ToyScorer:
    """`<eos>` at once is likelier than `a a <eos>`, but the longer one wins once scores are length-normalised
    (alpha = 1); both stay in a beam of 2."""
    return ToyScorer(
        {(BOS,): {EOS: 0.46, A: 0.54}, (BOS, A): {A: 0.9, EOS: 0.1}, (BOS, A, A): {EOS: 0.9, A: 0.1}},
        default={EOS: 0.9, A: 0.05, B: 0.05},
    )


def case_no_end() -> ToyScorer:
    """`<eos>` is always unlikely: the best hypothesis is cut off at max_len without one."""
    return ToyScorer({}, default={EOS: 0.01, A: 0.6, B: 0.39})


def case_cut_off() -> ToyScorer:
    """`<eos>` at once is likely enough to finish early, but the best hypothesis (alpha = 1) is `a a a`, which
    has no `<eos>` when max_len = 3 cuts it off."""
    return ToyScorer({(BOS,): {EOS: 0.3, A: 0.7}}, default={EOS: 0.01, A: 0.6, B: 0.39})


def _search(
    beam_search: Any,
    scorer: Callable[[Tensor], Tensor],
    max_len: int,
    beam_size: int,
    alpha: float,
    bos_id: int = BOS,
    eos_id: int = EOS,
) -> tuple[list[int], float]:
    result = beam_search(scorer, bos_id, eos_id, max_len, beam_size, alpha)
    expect(isinstance(result, tuple) and len(result) == 2, "beam_search should return a pair (tokens, score)")
    tokens, score = result
    if isinstance(tokens, Tensor):
        tokens = tokens.tolist()
    expect(
        isinstance(tokens, list) and all(isinstance(t, int) for t in tokens),
        "the tokens should be a list of ints (or a 1-d tensor)",
    )
    if isinstance(score, Tensor):
        expect(score.numel() == 1, f"the score should be one number, got a tensor of shape {tuple(score.shape)}")
        score = float(score)
    expect(isinstance(score, (int, float)), f"the score should be a float, got {type(score).__name__}")
    expect(
        len(tokens) >= 2 and tokens[0] == bos_id,
        f"the hypothesis should start with <bos> (id {bos_id}) and have at least one generated token",
    )
    expect(
        len(tokens) <= max_len + 1,
        f"the hypothesis has {len(tokens) - 1} generated tokens, more than max_len={max_len}",
    )
    expect(eos_id not in tokens[1:-1], "the hypothesis goes on after its <eos>")
    expect(
        tokens[-1] == eos_id or len(tokens) == max_len + 1,
        f"the hypothesis has no <eos> but only {len(tokens) - 1} of max_len={max_len} tokens: it is neither "
        "finished nor cut off at max_len",
    )
    return tokens, float(score)


def _expect_best(
    beam_search: Any, make: Callable[[], ToyScorer], max_len: int, beam_size: int, alpha: float, what: str
) -> ToyScorer:
    scorer = make()
    expected, expected_score = brute_force(make(), BOS, EOS, max_len, alpha, TOY_VOCAB)
    tokens, score = _search(beam_search, scorer, max_len, beam_size, alpha)
    if tokens != expected:
        own = _normalised(make(), tokens, alpha)
        raise Mismatch(
            f"{what}: the returned hypothesis ({len(tokens) - 1} tokens, score {own:.4f}) is not the best "
            f"one (which scores {expected_score:.4f})"
        )
    expect(
        abs(score - expected_score) < SCORE_ATOL,
        f"{what}: the returned score differs from log P / lp(length) of the "
        f"returned hypothesis by {abs(score - expected_score):.3g}",
    )
    return scorer


def _normalised(scorer: ToyScorer, tokens: list[int], alpha: float) -> float:
    total = sum(float(scorer.row(tuple(tokens[:i]))[tokens[i]]) for i in range(1, len(tokens)))
    return total / _lp(len(tokens) - 1, alpha)


@beam.test("returns (tokens, score) starting with <bos>")
def _(beam_search: Any) -> None:
    _search(beam_search, case_beats_greedy(), 4, 2, 0.0)


@beam.test("keeps more than one candidate: a beam of 2 beats greedy", points=2)
def _(beam_search: Any) -> None:
    _expect_best(beam_search, case_beats_greedy, max_len=4, beam_size=2, alpha=0.0, what="beam 2, alpha 0")


@beam.test("length normalisation: alpha = 1 prefers the longer sentence, alpha = 0 the shorter", points=2)
def _(beam_search: Any) -> None:
    _expect_best(beam_search, case_length, max_len=4, beam_size=2, alpha=1.0, what="alpha 1")
    _expect_best(beam_search, case_length, max_len=4, beam_size=2, alpha=0.0, what="alpha 0")


@beam.test("finished hypotheses are not extended; every prefix starts with <bos>")
def _(beam_search: Any) -> None:
    for make, alpha in ((case_beats_greedy, 0.0), (case_length, 1.0)):
        scorer = make()
        _search(beam_search, scorer, 4, 2, alpha)
        expect(bool(scorer.seen), "next_log_probs was never called")
        for prefix in scorer.seen:
            expect(
                prefix[0] == BOS,
                f"next_log_probs was asked about a prefix that does not start with <bos>: {list(prefix)}",
            )
            expect(
                EOS not in prefix, "next_log_probs was asked to continue a hypothesis that had already ended with <eos>"
            )


@beam.test("never more than beam_size live prefixes")
def _(beam_search: Any) -> None:
    scorer = case_no_end()
    _search(beam_search, scorer, 4, 3, 0.6)
    most = max(scorer.batch_sizes, default=0)
    expect(most <= 3, f"next_log_probs was called with {most} prefixes at once, more than beam_size=3")
    per_length: dict[int, int] = {}
    for prefix in scorer.seen:
        per_length[len(prefix)] = per_length.get(len(prefix), 0) + 1
    wide = {n - 1: c for n, c in per_length.items() if c > 3}
    expect(
        not wide,
        f"after {min(wide, default=0)} generated tokens the beam held {max(wide.values(), default=0)} "
        "prefixes, more than beam_size=3",
    )


@beam.test("stops after max_len tokens; an unfinished hypothesis can win")
def _(beam_search: Any) -> None:
    _expect_best(beam_search, case_no_end, max_len=3, beam_size=2, alpha=0.6, what="<eos> never likely, max_len 3")
    _expect_best(
        beam_search,
        case_cut_off,
        max_len=3,
        beam_size=2,
        alpha=1.0,
        what="an early <eos> against a better unfinished hypothesis",
    )
