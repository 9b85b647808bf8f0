"""Known-wrong implementations of the chapter 9 exercises: each must fail its check."""

from __future__ import annotations

import functools
import math

import torch


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 09.length_penalty


def _scores(
    tokens,
    token_log_probs,
    eos_id,
    alpha,
    *,
    count_after=False,
    drop_eos=False,
    length_without_eos=False,
    mean=False,
    multiply=False,
    no_alpha=False,
):
    is_eos = (tokens == eos_id).long()
    after = (is_eos.cumsum(1) - is_eos) > 0  # strictly after the first <eos>
    from_eos = is_eos.cumsum(1) > 0  # the first <eos> and after
    ignored = torch.zeros_like(after) if count_after else (from_eos if drop_eos else after)
    length = (~ignored).sum(1).to(token_log_probs.dtype)
    total = token_log_probs.masked_fill(ignored, 0.0).sum(1)
    if length_without_eos:
        length = length - (tokens == eos_id).any(1).to(length.dtype)
    if mean:
        return total / length
    lp = (5 + length) / 6 if no_alpha else ((5 + length) / 6) ** alpha
    return total * lp if multiply else total / lp


def _last_eos(tokens, token_log_probs, eos_id, alpha):
    scores = []
    for row in range(tokens.size(0)):
        where = (tokens[row] == eos_id).nonzero()
        end = int(where[-1]) + 1 if len(where) else tokens.size(1)
        scores.append(token_log_probs[row, :end].sum() / ((5 + end) / 6) ** alpha)
    return torch.stack(scores)


# --------------------------------------------------------------------------- 09.kv_cache


def _attend(q, k, v, cache, *, scale="sqrt", prepend=False, store=True, attend_first=False, dim=-1):
    if attend_first and "k" in cache:  # attends over the cache before the new position joins it
        out = (q @ cache["k"].transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1) @ cache["v"]
    else:
        out = None
    if "k" in cache:
        keys = torch.cat([k, cache["k"]] if prepend else [cache["k"], k], dim=2)
        values = torch.cat([v, cache["v"]] if prepend else [cache["v"], v], dim=2)
    else:
        keys, values = k, v
    if store:
        cache["k"], cache["v"] = keys, values
    if attend_first:
        return v if out is None else out
    scores = q @ keys.transpose(-2, -1)
    if scale == "sqrt":
        scores = scores / math.sqrt(q.size(-1))
    elif scale == "d_k":
        scores = scores / q.size(-1)
    return scores.softmax(dim) @ values


# --------------------------------------------------------------------------- 09.beam_search


def _beam(
    next_log_probs,
    bos_id,
    eos_id,
    max_len,
    beam_size,
    alpha,
    *,
    normalise=True,
    extend_finished=False,
    width=None,
    keep_unfinished=True,
    start_with_bos=True,
    stop_at_first=False,
    length_shift=0,
    raw_score=False,
):
    def lp(n):
        return ((5 + n) / 6) ** alpha if normalise else 1.0

    k = beam_size if width is None else width
    live = [([bos_id] if start_with_bos else [eos_id + 1], 0.0)]
    finished = []
    for step in range(1, max_len + 1):
        log_probs = next_log_probs(torch.tensor([p for p, _ in live]))
        vocab = log_probs.size(1)
        candidates = [(p + [t], s + float(log_probs[i, t])) for i, (p, s) in enumerate(live) for t in range(vocab)]
        candidates.sort(key=lambda c: c[1], reverse=True)
        live = []
        for p, s in candidates if k == "all" else candidates[:k]:
            if p[-1] == eos_id and not extend_finished:
                finished.append((p, s / lp(step + length_shift), s))
            else:
                live.append((p, s))
        if (stop_at_first and finished) or not live:
            break
    if keep_unfinished or not finished:
        finished += [(p, s / lp(max_len), s) for p, s in live]
    tokens, score, raw = max(finished, key=lambda f: f[1])
    return tokens, (raw if raw_score else score)


WRONG = {
    "09.length_penalty": [
        ("tokens after the first <eos> are counted", _variant(_scores, count_after=True)),
        ("the <eos> token is left out", _variant(_scores, drop_eos=True)),
        ("the length does not count <eos>", _variant(_scores, length_without_eos=True)),
        ("divided by the length (a mean)", _variant(_scores, mean=True)),
        ("multiplied by lp instead of divided", _variant(_scores, multiply=True)),
        ("alpha not used", _variant(_scores, no_alpha=True)),
        ("hypothesis ends at the last <eos>", _last_eos),
    ],
    "09.kv_cache": [
        ("no scaling by sqrt(d_k)", _variant(_attend, scale="none")),
        ("scaled by d_k", _variant(_attend, scale="d_k")),
        ("new positions prepended (newest first)", _variant(_attend, prepend=True)),
        ("the cache dict is never updated", _variant(_attend, store=False)),
        ("attends over the cache before adding the new position", _variant(_attend, attend_first=True)),
        ("softmax over the query axis", _variant(_attend, dim=-2)),
    ],
    "09.beam_search": [
        ("no length normalisation", _variant(_beam, normalise=False)),
        ("finished hypotheses keep expanding", _variant(_beam, extend_finished=True)),
        ("beam of one (greedy)", _variant(_beam, width=1)),
        ("unfinished hypotheses dropped at max_len", _variant(_beam, keep_unfinished=False)),
        ("prefixes do not start with <bos>", _variant(_beam, start_with_bos=False)),
        ("stops at the first finished hypothesis", _variant(_beam, stop_at_first=True)),
        ("length off by one in lp", _variant(_beam, length_shift=1)),
        ("keeps every candidate (no pruning)", _variant(_beam, width="all")),
        ("returns the raw log-probability as the score", _variant(_beam, raw_score=True)),
    ],
}
