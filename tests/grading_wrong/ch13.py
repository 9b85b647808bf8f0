"""Known-wrong implementations of the chapter 13 exercises: each must fail its check."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IGNORE = -100


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 13.causal_lm_loss


def _lm_loss(logits, tokens, pad_id, *, shift="right", ignore_pads=True, mean="tokens", fixed_pad=None):
    vocab = logits.size(-1)
    if shift == "none":
        pred, target = logits, tokens
    elif shift == "wrong way":
        pred, target = logits[:, 1:], tokens[:, :-1]
    elif shift == "wrap":
        pred, target = logits, tokens.roll(-1, dims=1)
    else:
        pred, target = logits[:, :-1], tokens[:, 1:]
    pad = pad_id if fixed_pad is None else fixed_pad
    if mean == "tokens":
        ignore = pad if ignore_pads else IGNORE
        return F.cross_entropy(pred.reshape(-1, vocab), target.reshape(-1), ignore_index=ignore)
    losses = F.cross_entropy(pred.transpose(1, 2), target, reduction="none")  # (batch, positions)
    real = target != pad
    per_sentence = (losses * real).sum(1)
    if mean == "batch":
        return per_sentence.sum() / logits.size(0)
    if mean == "sentences":
        return (per_sentence / real.sum(1)).mean()
    if mean == "positions":
        return per_sentence.sum() / real.numel()
    return per_sentence.sum()  # "sum"


def _lm_loss_float(logits, tokens, pad_id):
    return _lm_loss(logits, tokens, pad_id).item()  # a Python float, not a tensor


def _lm_loss_detached(logits, tokens, pad_id):
    return _lm_loss(logits.detach(), tokens, pad_id)


# --------------------------------------------------------------------------- 13.top_k


def _top_k(logits, k, *, keep="k", dim=-1, fill=float("-inf"), clamp=True):
    if clamp:
        k = min(k, logits.size(dim))
    if keep == "k+1":
        k = min(k + 1, logits.size(dim))
    kth = logits.topk(k, dim=dim).values.narrow(dim, k - 1, 1)  # the k-th largest along dim
    removed = logits <= kth if keep == "k-1" else logits < kth
    return logits.masked_fill(removed, fill)


def _top_k_in_place(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill_(logits < kth, float("-inf"))


def _top_k_scatter(logits, k):
    values, indices = logits.topk(min(k, logits.size(-1)), dim=-1)  # exactly k: ties broken by position
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def _top_k_values(logits, k):
    return logits.topk(min(k, logits.size(-1)), dim=-1).values  # the kept values only


# --------------------------------------------------------------------------- 13.bert_masking


def _mask(
    tokens,
    mask_id,
    p,
    first_id,
    generator,
    *,
    specials=False,
    labels_everywhere=False,
    labels_corrupted=False,
    split=(0.8, 0.9),
    second_draw=False,
    fixed_p=None,
    random_range="ordinary",
    use_generator=True,
    label_masked_only=False,
    fixed_first_id=None,
):
    g = generator if use_generator else None
    first = first_id if fixed_first_id is None else fixed_first_id
    picked = torch.rand(tokens.shape, generator=g) < (p if fixed_p is None else fixed_p)
    if not specials:
        picked &= tokens >= first
    action = torch.rand(tokens.shape, generator=g)
    low, high = (first_id, mask_id) if random_range == "ordinary" else (0, mask_id + 1)
    random_ids = torch.randint(low, high, tokens.shape, generator=g)
    masked = picked & (action < split[0])
    if second_draw:  # a fresh draw for the random ones: 10 % of the rest, not half of it
        randomised = picked & ~masked & (torch.rand(tokens.shape, generator=g) < 0.1)
    else:
        randomised = picked & (action >= split[0]) & (action < split[1])
    inputs = tokens.masked_fill(masked, mask_id)
    inputs = torch.where(randomised, random_ids, inputs)
    labelled = masked if label_masked_only else picked
    if labels_everywhere:
        labels = tokens.clone()
    elif labels_corrupted:
        labels = inputs.masked_fill(~labelled, IGNORE)
    else:
        labels = tokens.masked_fill(~labelled, IGNORE)
    return inputs, labels


def _mask_one_tensor(tokens, mask_id, p, first_id, generator):
    inputs, labels = _mask(tokens, mask_id, p, first_id, generator)
    return torch.stack([inputs, labels])  # one tensor, not a pair


WRONG = {
    "13.causal_lm_loss": [
        ("no shift: position t scored on token t", _variant(_lm_loss, shift="none")),
        ("shifted the wrong way: position t scored on token t - 1", _variant(_lm_loss, shift="wrong way")),
        ("torch.roll: the last position scored on the first token", _variant(_lm_loss, shift="wrap")),
        ("<pad> targets counted", _variant(_lm_loss, ignore_pads=False)),
        ("mean over all positions, <pad> included", _variant(_lm_loss, mean="positions")),
        ("sum per sentence, mean over the batch", _variant(_lm_loss, mean="batch")),
        ("mean of the sentences' means", _variant(_lm_loss, mean="sentences")),
        ("summed, not averaged", _variant(_lm_loss, mean="sum")),
        ("<pad> always id 0", _variant(_lm_loss, fixed_pad=0)),
        ("returns a Python float", _lm_loss_float),
        ("the logits detached: no gradient", _lm_loss_detached),
    ],
    "13.top_k": [
        ("keeps k - 1 (the k-th largest removed)", _variant(_top_k, keep="k-1")),
        ("keeps k + 1", _variant(_top_k, keep="k+1")),
        ("along the first dimension, not the last", _variant(_top_k, dim=0)),
        ("changes its input in place", _top_k_in_place),
        ("zeros instead of -inf", _variant(_top_k, fill=0.0)),
        ("-1e9 instead of -inf", _variant(_top_k, fill=-1e9)),
        ("exactly k kept: ties broken", _top_k_scatter),
        ("k not clipped to the vocabulary size", _variant(_top_k, clamp=False)),
        ("returns the kept values only", _top_k_values),
    ],
    "13.bert_masking": [
        ("special tokens can be picked", _variant(_mask, specials=True)),
        ("a label at every position", _variant(_mask, labels_everywhere=True)),
        ("labels are the corrupted inputs", _variant(_mask, labels_corrupted=True)),
        ("every picked token becomes [MASK]", _variant(_mask, split=(1.0, 1.0))),
        ("the 20 % not masked all become random", _variant(_mask, split=(0.8, 1.0))),
        ("random tokens drawn as 10 % of the other 20 %", _variant(_mask, second_draw=True)),
        ("80 / 10 / 10 the wrong way round", _variant(_mask, split=(0.1, 0.2))),
        ("p ignored: always 15 %", _variant(_mask, fixed_p=0.15)),
        ("random ids from the whole vocabulary", _variant(_mask, random_range="all")),
        ("the generator is not used", _variant(_mask, use_generator=False)),
        ("only the [MASK]ed positions labelled", _variant(_mask, label_masked_only=True)),
        ("first_id always 4", _variant(_mask, fixed_first_id=4)),
        ("returns one stacked tensor", _mask_one_tensor),
    ],
}
