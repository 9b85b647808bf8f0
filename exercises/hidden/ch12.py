"""Hidden tests for chapter 12 (only the batch grader runs them): other texts and coverages against
SentencePiece, tiny coverages, one-character counts and a short text; cross-attention maps of a deeper model
with another <pad> id, recomputed from the queries and keys that reach its cross-attention, and a batch of one."""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch08 import step_batch
from transformer_lib.grading.ch12 import (
    MAP_ATOL,
    _expect_kept,
    _expect_maps,
    _expect_spm,
    _kept,
    _maps,
    crop,
    kept_reference,
    map_model,
)
from transformer_lib.masks import padding_mask, target_mask


@get_exercise("12.character_coverage").test("other texts and coverages, compared with SentencePiece", hidden=True)
def _(kept_characters: Any) -> None:
    for corpus, c in (("English (seed 1)", 0.999), ("English (seed 1)", 0.98), ("Chinese-like (seed 1)", 0.995)):
        _expect_spm(kept_characters, corpus, c)
    _expect_spm(kept_characters, "Chinese-like (seed 1)", 1.0)


@get_exercise("12.character_coverage").test("a tiny coverage, a single character, a short Chinese text", hidden=True)
def _(kept_characters: Any) -> None:
    counts = Counter("▁我爱你▁我爱您▁他爱我")
    for c in (1e-6, 0.01):
        out = _kept(kept_characters, counts, c)
        expect(len(out) == 1, f"coverage {c} should keep only the most frequent character, the list has {len(out)}")
        _expect_kept(out, kept_reference(counts, c), counts, c, f"coverage {c}")
    for c in (0.3, 1.0):
        _expect_kept(_kept(kept_characters, {"a": 7}, c), ["a"], {"a": 7}, c, f"a single character, coverage {c}")


def recomputed_maps(model: Any, src: Tensor, tgt: Tensor, pad_id: int, layer: int) -> list[Tensor]:
    """An independent oracle: softmax(Q Kᵀ / √d_k) from the inputs that reach ``layer``'s cross-attention."""
    model = copy.deepcopy(model).eval()
    attn = model.decoder.layers[layer].cross_attn
    seen: dict = {}

    def record(_module: Any, args: tuple, kwargs: dict) -> None:
        names = ("query", "key", "value", "mask")
        seen.update(dict(zip(names, args)), **kwargs)

    handle = attn.register_forward_pre_hook(record, with_kwargs=True)
    tgt_in = tgt[:, :-1]
    try:
        with torch.no_grad():
            model(src, tgt_in, padding_mask(src, pad_id), target_mask(tgt_in, pad_id))
    finally:
        handle.remove()
    batch, h, d_k = src.size(0), attn.num_heads, attn.d_k
    with torch.no_grad():
        Q = attn.W_Q(seen["query"]).view(batch, -1, h, d_k).transpose(1, 2)  # (batch, heads, tgt_len - 1, d_k)
        K = attn.W_K(seen["key"]).view(batch, -1, h, d_k).transpose(1, 2)  # (batch, heads, src_len, d_k)
        scores = Q @ K.transpose(-2, -1) / math.sqrt(d_k)  # (batch, heads, tgt_len - 1, src_len)
        scores = scores.masked_fill(~seen["mask"], float("-inf"))
        return crop(scores.softmax(-1).mean(1), src, tgt, pad_id)


@get_exercise("12.cross_attention_map").test(
    "three layers, two heads, <pad> = 3: the weights recomputed from the cross-attention's queries and keys",
    hidden=True,
)
def _(cross_attention_maps: Any) -> None:
    src, tgt = step_batch(401, (2, 6, 4, 1), (5, 2, 3, 7), pad_id=3)
    model = map_model(seed=402, N=3, h=2)
    for layer in (1, -3):
        out = _maps(cross_attention_maps, model, src, tgt, 3, layer)
        for b, (m, e) in enumerate(zip(out, recomputed_maps(model, src, tgt, 3, layer))):
            expect_close(m, e, f"layer {layer}, the map of sentence {b}", atol=MAP_ATOL, rtol=0)


@get_exercise("12.cross_attention_map").test("a batch of one sentence, without padding", hidden=True)
def _(cross_attention_maps: Any) -> None:
    src, tgt = step_batch(403, (6,), (4,))
    model = map_model(seed=404, N=2, h=4)
    out = _maps(cross_attention_maps, model, src, tgt, 0, -1)
    _expect_maps(out, model, src, tgt, 0, -1, "one sentence, the last layer")
