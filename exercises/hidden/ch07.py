"""Hidden tests for chapter 7 (only the batch grader runs them): other token ids, equal source and target
lengths, no masks, dropout configured, a model left in training mode, the smallest inputs."""

from __future__ import annotations

from typing import Any

import torch

from transformer_lib.grading import expect, expect_close, expect_equal, get_exercise
from transformer_lib.grading.ch06 import ATOL, RTOL
from transformer_lib.grading.ch07 import (
    GREEDY_LENGTHS,
    GREEDY_MAX_LEN,
    CountingModel,
    _batch,
    _compare_tokens,
    _counting_source,
    _decoder_layer,
    _mask_of,
    _run_greedy,
    _tokens,
    expected_greedy,
    greedy_decode_reference,
    padded_source,
    small_transformer,
)
from transformer_lib.masks import target_mask


@get_exercise("07.decoder_mask").test("another pad id, no padding, a single position", hidden=True)
def _(decoder_mask: Any) -> None:
    for lengths, length, pad_id in (([4, 2, 3], 4, 7), ([5, 5], 5, 0), ([1], 1, 3)):
        tokens = _tokens(lengths, length, pad_id=pad_id, seed=201)
        expect_equal(
            _mask_of(decoder_mask, tokens, pad_id),
            target_mask(tokens, pad_id),
            f"the mask for pad_id={pad_id}, tokens of shape {tuple(tokens.shape)}",
        )


@get_exercise("07.decoder_layer").test("source as long as the target, and no masks", hidden=True)
def _(DecoderLayer: Any) -> None:
    layer, ref = _decoder_layer(DecoderLayer)
    b = _batch(seed=202, tgt_lengths=[5, 5], src_lengths=[5, 5], tgt_len=5, src_len=5)
    with torch.no_grad():
        expect_close(
            layer(b.x, b.memory, b.tgt_mask, b.memory_mask),
            b.reference(ref),
            "the output when source and target have the same length",
            atol=ATOL,
            rtol=RTOL,
        )
        expect_close(layer(b.x, b.memory), ref(b.x, b.memory), "the output without any mask", atol=ATOL, rtol=RTOL)


@get_exercise("07.decoder_layer").test("eval mode with dropout configured", hidden=True)
def _(DecoderLayer: Any) -> None:
    layer, ref = _decoder_layer(DecoderLayer, dropout=0.3)
    layer.eval()
    b = _batch(seed=203)
    with torch.no_grad():
        expect_close(
            layer(b.x, b.memory, b.tgt_mask, b.memory_mask),
            b.reference(ref),
            "the output in eval mode (dropout=0.3 must be off)",
            atol=ATOL,
            rtol=RTOL,
        )


@get_exercise("07.greedy_decode").test("other ids for <bos>, <eos> and <pad>", hidden=True)
def _(greedy_decode: Any) -> None:
    model = CountingModel(vocab=12, bos_id=5, eos_id=6, pad_id=7)
    src, src_mask = _counting_source([[3, 4], [8, 8, 7], [10, 2], [11, 0]], pad_id=7)
    out = _run_greedy(greedy_decode, model, src, src_mask, 8, bos_id=5, eos_id=6, pad_id=7)
    _compare_tokens(out, expected_greedy(model, src, 8), model.eos_id, model.pad_id, 8)


@get_exercise("07.greedy_decode").test("a model left in training mode decodes without dropout", hidden=True)
def _(greedy_decode: Any) -> None:
    model = small_transformer(dropout=0.3)
    src, src_mask = padded_source(GREEDY_LENGTHS, seed=8)
    expected = greedy_decode_reference(model, src, src_mask, GREEDY_MAX_LEN)
    model.train()
    out = _run_greedy(greedy_decode, model, src, src_mask, GREEDY_MAX_LEN)
    _compare_tokens(out, expected, 2, 0, GREEDY_MAX_LEN)


@get_exercise("07.greedy_decode").test("one sentence, max_len = 1", hidden=True)
def _(greedy_decode: Any) -> None:
    model = small_transformer()
    src, src_mask = padded_source([3], seed=204)
    expected = greedy_decode_reference(model, src, src_mask, 1)
    out = _run_greedy(greedy_decode, model, src, src_mask, 1)
    expect(tuple(out.shape) == (1, 2), f"with max_len=1 the output should have shape (1, 2), got {tuple(out.shape)}")
    _compare_tokens(out, expected, 2, 0, 1)
