"""Token-budget batching (token_batches) and teacher-forcing tensors (collate)."""

from __future__ import annotations

import random

import pytest
import torch

from transformer_lib.data import collate, token_batches

MAX_TOKENS = 400


@pytest.fixture
def lengths() -> list[tuple[int, int]]:
    """(source_len, target_len) of 500 made-up sentence pairs, lengths 1..60 like captions."""
    rng = random.Random(1)
    return [(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(500)]


def padded_size(lengths, batch):
    """What a batch costs after padding: rows times the longest row (+1 for <bos>/<eos>)."""
    return len(batch) * (max(max(lengths[i]) for i in batch) + 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once(lengths, shuffle):
    batches = token_batches(lengths, MAX_TOKENS, shuffle=shuffle, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(batches), "no empty batch"


@pytest.mark.parametrize("max_tokens", [61, 200, MAX_TOKENS, 5000])
def test_padded_budget_is_respected_and_batches_are_full(lengths, max_tokens):
    batches = token_batches(lengths, max_tokens, shuffle=False)
    assert all(padded_size(lengths, b) <= max_tokens for b in batches)
    # Greedy filling: the next example in length order would not have fitted into the batch before it.
    for b, nxt in zip(batches, batches[1:]):
        assert padded_size(lengths, b + nxt[:1]) > max_tokens


def test_unshuffled_batches_are_in_length_order(lengths):
    flat = [i for b in token_batches(lengths, MAX_TOKENS, shuffle=False) for i in b]
    keys = [(max(lengths[i]), min(lengths[i])) for i in flat]
    assert keys == sorted(keys)
    assert flat == sorted(range(len(lengths)), key=lambda i: (max(lengths[i]), min(lengths[i])))  # ties by index


def test_shuffled_batches_group_similar_lengths(lengths):
    # Shuffling changes the order of the batches, not what makes them cheap: each batch is a run of
    # the length-sorted examples, so the length ranges of two batches overlap at most at one value.
    batches = token_batches(lengths, MAX_TOKENS, shuffle=True, seed=5)
    ranges = sorted((min(max(lengths[i]) for i in b), max(max(lengths[i]) for i in b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))
    longest_in_order = [max(max(lengths[i]) for i in b) for b in batches]
    assert longest_in_order != sorted(longest_in_order), "the batch order is shuffled"


def test_deterministic_per_seed_and_different_across_seeds(lengths):
    a, b, c = (token_batches(lengths, MAX_TOKENS, seed=s) for s in (7, 7, 8))
    assert a == b
    assert a != c
    assert sorted(map(sorted, a)) != sorted(map(sorted, c)), "ties are broken differently, not only the batch order"


def test_too_long_example_is_named(lengths):
    lengths = lengths[:10] + [(3, 80)] + lengths[10:]
    assert token_batches(lengths[:10] + lengths[11:], 61)  # every other example fits in 61 tokens
    with pytest.raises(ValueError, match=r"example 10 has 81 tokens, more than max_tokens=61"):
        token_batches(lengths, 61)


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_bad_max_tokens(lengths, max_tokens):
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        token_batches(lengths, max_tokens)


def test_no_examples_no_batches():
    assert token_batches([], MAX_TOKENS) == []


EXAMPLES = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([15, 16], [])]


def test_collate_shapes_and_dtypes():
    src, tgt_in, tgt_out = collate(EXAMPLES)
    assert src.shape == (3, 3) and tgt_in.shape == (3, 5) and tgt_out.shape == (3, 5)
    assert src.dtype == tgt_in.dtype == tgt_out.dtype == torch.long


def test_collate_teacher_forcing_layout():
    pad, bos, eos = 0, 1, 2
    src, tgt_in, tgt_out = collate(EXAMPLES, pad, bos, eos)
    for b, (s, t) in enumerate(EXAMPLES):
        assert src[b].tolist() == s + [pad] * (3 - len(s))
        assert tgt_in[b, 0] == bos, "the decoder input starts with <bos>"
        assert tgt_out[b, len(t)] == eos, "<eos> right after the target"
        assert (tgt_out == eos).sum(1)[b] == 1
        # tgt_in is tgt_out shifted right by one: the input at position t is the answer of position t - 1.
        assert torch.equal(tgt_in[b, 1 : len(t) + 1], tgt_out[b, : len(t)])
        assert tgt_in[b, 1 : len(t) + 1].tolist() == t
        assert (tgt_in[b, len(t) + 1 :] == pad).all() and (tgt_out[b, len(t) + 1 :] == pad).all()
    # Input and output have their padding in the same places: the loss ignores exactly the padded inputs.
    assert torch.equal(tgt_in == pad, tgt_out == pad)


def test_collate_other_special_ids():
    src, tgt_in, tgt_out = collate([([4], [5])], pad_id=9, bos_id=7, eos_id=8)
    assert tgt_in.tolist() == [[7, 5]] and tgt_out.tolist() == [[5, 8]] and src.tolist() == [[4]]
    src, tgt_in, tgt_out = collate([([4, 4], [5]), ([4], [5, 5])], pad_id=9, bos_id=7, eos_id=8)
    assert src[1].tolist() == [4, 9] and tgt_in[0].tolist() == [7, 5, 9] and tgt_out[0].tolist() == [5, 8, 9]


def test_collate_follows_token_batches(lengths):
    # The padded tensors of a batch never exceed the budget token_batches planned for.
    rng = random.Random(2)
    examples = [([rng.randint(4, 99) for _ in range(s)], [rng.randint(4, 99) for _ in range(t)]) for s, t in lengths]
    for batch in token_batches(lengths, MAX_TOKENS, seed=1):
        src, tgt_in, _ = collate([examples[i] for i in batch])
        assert src.numel() <= MAX_TOKENS and tgt_in.numel() <= MAX_TOKENS


def test_collate_empty_batch():
    with pytest.raises(ValueError, match="cannot collate an empty batch"):
        collate([])
