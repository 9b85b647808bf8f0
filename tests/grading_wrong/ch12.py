"""Known-wrong implementations of the chapter 12 exercises: each must fail its check."""

from __future__ import annotations

import functools

import torch

from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.multihead import keep_attention_weights


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 12.character_coverage


def _kept(counts, coverage, *, distinct=False, strict=False, early=False, ties="code point", drop_singletons=False):
    if ties == "code point":
        order = sorted(counts, key=lambda c: (-counts[c], c))
    elif ties == "reversed":
        order = sorted(counts, key=lambda c: (counts[c], c), reverse=True)
    else:  # the dict's own order for equal counts (what Counter.most_common does)
        order = sorted(counts, key=lambda c: -counts[c])
    total, kept, covered = sum(counts.values()), [], 0
    for char in order:
        share = len(kept) / len(counts) if distinct else covered / total
        if early:
            share = (covered + counts[char]) / total
        if (share > coverage) if strict else (share >= coverage):
            break
        if drop_singletons and counts[char] == 1:
            continue
        kept.append(char)
        covered += counts[char]
    return kept


def _as_string(counts, coverage):
    return "".join(_kept(counts, coverage))  # a string, not a list


# --------------------------------------------------------------------------- 12.cross_attention_map


def _maps(
    model,
    src,
    tgt,
    pad_id,
    layer,
    *,
    reduce="mean",
    transpose=False,
    keep_padding=False,
    which="cross",
    src_masked=True,
    tgt_masked=True,
    evaluate=True,
    fixed_layer=None,
    extra_row=False,
):
    if evaluate:
        model.eval()
    tgt_in = tgt[:, :-1]
    src_mask = padding_mask(src, pad_id) if src_masked else None
    tgt_mask = target_mask(tgt_in, pad_id) if tgt_masked else None
    with torch.no_grad(), keep_attention_weights(model):
        model(src, tgt_in, src_mask, tgt_mask)
    attn = model.decoder.layers[layer if fixed_layer is None else fixed_layer]
    weights = (attn.cross_attn if which == "cross" else attn.self_attn).attn_weights  # (batch, heads, q, k)
    weights = {"mean": weights.mean(1), "sum": weights.sum(1), "first": weights[:, 0]}[reduce]
    maps = []
    for b in range(src.size(0)):
        rows = int((tgt[b, 1:] != pad_id).sum()) + (1 if extra_row else 0)
        cols = int((src[b] != pad_id).sum())
        m = weights[b] if keep_padding else weights[b, :rows, :cols]
        maps.append(m.T if transpose else m)
    return maps


WRONG = {
    "12.character_coverage": [
        ("cumulative share counted in distinct characters, not occurrences", _variant(_kept, distinct=True)),
        ("off by one at the threshold: share > c instead of >= c", _variant(_kept, strict=True)),
        ("off by one at the threshold: stops before the character that reaches c", _variant(_kept, early=True)),
        ("ties in the counts' own order (most_common)", _variant(_kept, ties="insertion")),
        ("ties in reverse code-point order", _variant(_kept, ties="reversed")),
        ("characters seen once are never kept", _variant(_kept, drop_singletons=True)),
        ("returns a string instead of a list", _as_string),
    ],
    "12.cross_attention_map": [
        ("heads summed instead of averaged", _variant(_maps, reduce="sum")),
        ("only the first head", _variant(_maps, reduce="first")),
        ("source and target axes swapped", _variant(_maps, transpose=True)),
        ("padding kept", _variant(_maps, keep_padding=True)),
        ("one row too many (a <pad> position's row)", _variant(_maps, extra_row=True)),
        ("self-attention weights instead of cross-attention", _variant(_maps, which="self")),
        ("no source padding mask in the pass", _variant(_maps, src_masked=False)),
        ("no target mask in the pass (the decoder sees the future)", _variant(_maps, tgt_masked=False)),
        ("the model is left in training mode", _variant(_maps, evaluate=False)),
        ("always the last layer", _variant(_maps, fixed_layer=-1)),
    ],
}
