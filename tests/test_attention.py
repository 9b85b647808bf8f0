"""Tests of transformer_lib.attention (chapter 2).

Oracle: ``torch.nn.functional.scaled_dot_product_attention`` (same boolean mask convention:
True = may attend). Properties where PyTorch has no counterpart: the returned weights, fully
masked rows, gradients, dropout, and the ``Attention`` module's projections.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_lib.attention import Attention, scaled_dot_product_attention

# Tolerances against PyTorch's fused/math kernels. They sum in a different order than our
# `softmax(Q K^T / sqrt(d_k)) @ V`, so float32 results agree to a few ulps of O(1) numbers.
ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
# Rows of weights must sum to 1 up to rounding of a k_len-term sum.
SUM_ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}

# The mean over 4000 dropout draws vs the clean output (see test_dropout_is_seeded_and_unbiased_on_average).
DROPOUT_MEAN_ATOL = 0.04

DTYPES = [torch.float32, torch.float64]


def random_case(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random query, key, value with broadcasting batch dims, and a random broadcastable bool mask."""
    g = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    batch = [randint(1, 3) for _ in range(randint(0, 2))]  # 0, 1 or 2 batch dims

    def maybe_ones(shape: list[int]) -> list[int]:  # set some batch dims to 1, or drop leading ones
        shape = [1 if torch.rand((), generator=g) < 0.4 else n for n in shape]
        return shape[randint(0, len(shape)) :] if torch.rand((), generator=g) < 0.3 else shape

    q_len, k_len, d_k, d_v = randint(1, 6), randint(1, 7), randint(1, 16), randint(1, 9)
    query = torch.randn(*maybe_ones(batch), q_len, d_k, generator=g, dtype=dtype)
    key = torch.randn(*maybe_ones(batch), k_len, d_k, generator=g, dtype=dtype)
    value = torch.randn(*maybe_ones(batch), k_len, d_v, generator=g, dtype=dtype)
    scores_batch = list(
        torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    )  # the mask may shrink these, not grow them
    mask_shape = [*maybe_ones(scores_batch), 1 if torch.rand((), generator=g) < 0.3 else q_len, k_len]
    mask = torch.rand(mask_shape, generator=g) < 0.7  # True = may attend
    if torch.rand((), generator=g) < 0.5:  # hide every key from one query row (of the mask's rows)
        mask[..., randint(0, mask.size(-2) - 1), :] = False
    return query, key, value, mask


def reference(query, key, value, mask=None):
    """PyTorch's attention on explicitly broadcast inputs (no reliance on its own broadcasting)."""
    masks = [] if mask is None else [mask.shape[:-2]]
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2], *masks)
    q = query.expand(*batch, *query.shape[-2:])
    k = key.expand(*batch, *key.shape[-2:])
    v = value.expand(*batch, *value.shape[-2:])
    if mask is not None:
        mask = mask.expand(*batch, q.size(-2), k.size(-2))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# --------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(20))
def test_matches_pytorch_without_mask(seed: int, dtype: torch.dtype) -> None:
    query, key, value, _ = random_case(seed, dtype)
    out, _ = scaled_dot_product_attention(query, key, value)
    expected = reference(query, key, value)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=ATOL[dtype], rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(20))
def test_matches_pytorch_with_random_mask_on_rows_with_a_visible_key(seed: int, dtype: torch.dtype) -> None:
    query, key, value, mask = random_case(seed, dtype)
    out, _ = scaled_dot_product_attention(query, key, value, mask)
    expected = reference(query, key, value, mask)
    assert out.shape == expected.shape
    visible = mask.any(dim=-1).expand(out.shape[:-1])  # (..., q_len): rows with at least one visible key
    torch.testing.assert_close(out[visible], expected[visible], atol=ATOL[dtype], rtol=RTOL[dtype])


def test_random_cases_cover_broadcasting_and_fully_masked_rows() -> None:
    """Guard the test generator itself: the oracle tests above must see the interesting cases."""
    cases = [random_case(seed, torch.float64) for seed in range(20)]
    assert any(q.shape[:-2] != k.shape[:-2] for q, k, _, _ in cases), "no case broadcasts batch dims"
    assert any(q.dim() >= 4 for q, _, _, _ in cases), "no case has two batch dims"
    assert any((~m.any(dim=-1)).any() for _, _, _, m in cases), "no case has a fully masked row"
    assert any(m.size(-2) == 1 and q.size(-2) > 1 for q, _, _, m in cases), "no mask broadcasts over queries"


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(10))
def test_weights_are_a_distribution_over_visible_keys(seed: int, dtype: torch.dtype) -> None:
    query, key, value, mask = random_case(seed, dtype)
    out, weights = scaled_dot_product_attention(query, key, value, mask)
    mask = mask.expand(weights.shape)
    visible = mask.any(dim=-1)  # (..., q_len)
    assert (weights >= 0).all()
    assert (weights[~mask] == 0).all(), "a masked key got weight"
    sums = weights.sum(dim=-1)
    torch.testing.assert_close(sums[visible], torch.ones_like(sums[visible]), atol=SUM_ATOL[dtype], rtol=0)
    torch.testing.assert_close(out, weights @ value, atol=ATOL[dtype], rtol=RTOL[dtype])


def test_weights_are_softmax_of_scaled_scores() -> None:
    query, key, value = (torch.randn(3, n, d, dtype=torch.float64) for n, d in ((5, 8), (4, 8), (4, 2)))
    _, weights = scaled_dot_product_attention(query, key, value)
    expected = torch.softmax(query @ key.transpose(-2, -1) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(weights, expected, atol=ATOL[torch.float64], rtol=RTOL[torch.float64])


# --------------------------------------------------------------------------- fully masked rows


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_masked_row_is_exactly_zero_and_its_gradients_are_finite(dtype: torch.dtype) -> None:
    query = torch.randn(2, 4, 8, dtype=dtype, requires_grad=True)
    key = torch.randn(2, 5, 8, dtype=dtype, requires_grad=True)
    value = torch.randn(2, 5, 3, dtype=dtype, requires_grad=True)
    mask = torch.rand(2, 4, 5) < 0.6
    mask[:, 0] = True  # every batch keeps a row that sees every key ...
    mask[0, 1] = False  # ... and these two rows see no key at all
    mask[1, 3] = False
    out, weights = scaled_dot_product_attention(query, key, value, mask)
    for b, row in ((0, 1), (1, 3)):
        assert (out[b, row] == 0).all() and (weights[b, row] == 0).all()
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    (out.square().sum() + weights.sum()).backward()
    for t in (query, key, value):
        assert torch.isfinite(t.grad).all(), "NaN/inf gradient through a fully masked row"
    assert (query.grad[0, 1] == 0).all() and (query.grad[1, 3] == 0).all(), "a fully masked query got a gradient"
    assert query.grad[0, 0].abs().sum() > 0, "gradient does not flow through visible rows"


def test_all_keys_masked_everywhere_gives_zeros() -> None:
    query, key, value = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)
    out, weights = scaled_dot_product_attention(query, key, value, torch.zeros(3, 5, dtype=torch.bool))
    assert (out == 0).all() and (weights == 0).all()


def test_mask_beats_any_score() -> None:
    """A masked key gets weight 0 even when its score dwarfs the visible ones (-inf, not a big negative)."""
    key = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # (k_len=2, d_k=2)
    query = torch.tensor([[1e6, 0.0]])  # scores: +7e5 for the masked key, -7e5 for the visible one
    value = torch.tensor([[1.0], [2.0]])
    out, weights = scaled_dot_product_attention(query, key, value, torch.tensor([[False, True]]))
    assert weights.tolist() == [[0.0, 1.0]] and out.tolist() == [[2.0]]


def test_mask_hides_keys_completely() -> None:
    """Changing a masked key or value must not change anything."""
    query, key, value = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)
    mask = torch.tensor([True, True, False, True, False])  # (k_len,): broadcasts over the queries
    out, weights = scaled_dot_product_attention(query, key, value, mask)
    key2, value2 = key.clone(), value.clone()
    key2[~mask], value2[~mask] = 100.0, -100.0
    out2, weights2 = scaled_dot_product_attention(query, key2, value2, mask)
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    torch.testing.assert_close(weights2, weights, atol=0, rtol=0)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_without_mask() -> None:
    inputs = [
        torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v), inputs)


def test_gradcheck_with_mask_including_a_fully_masked_row() -> None:
    inputs = [
        torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True),
    ]
    mask = torch.rand(2, 3, 5) < 0.5
    mask[:, :, 0] = True  # every row sees a key ...
    mask[1, 2] = False  # ... except this one
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask), inputs)


# --------------------------------------------------------------------------- dropout


def test_dropout_zero_is_deterministic() -> None:
    query, key, value, mask = random_case(3, torch.float32)
    a = scaled_dot_product_attention(query, key, value, mask, dropout_p=0.0)
    b = scaled_dot_product_attention(query, key, value, mask, dropout_p=0.0)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_dropout_zeroes_weights_and_rescales_the_rest() -> None:
    p = 0.5
    query, key, value = torch.randn(2, 6, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 4)
    clean_out, clean = scaled_dot_product_attention(query, key, value)
    out, dropped = scaled_dot_product_attention(query, key, value, dropout_p=p)
    kept = dropped != 0
    assert (~kept).any() and kept.any(), "dropout with p=0.5 should drop some weights and keep others"
    torch.testing.assert_close(dropped[kept], clean[kept] / (1 - p), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, dropped @ value, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, clean_out)


def test_dropout_is_seeded_and_unbiased_on_average() -> None:
    p = 0.3
    query, key, value = (torch.randn(n, d, dtype=torch.float64) for n, d in ((4, 8), (6, 8), (6, 3)))
    torch.manual_seed(1)
    a, _ = scaled_dot_product_attention(query, key, value, dropout_p=p)
    torch.manual_seed(1)
    b, _ = scaled_dot_product_attention(query, key, value, dropout_p=p)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    clean, _ = scaled_dot_product_attention(query, key, value)
    draws, _ = scaled_dot_product_attention(query.expand(4000, 4, 8), key, value, dropout_p=p)  # 4000 independent draws
    mean = draws.mean(0)
    # Inverted dropout keeps the expectation: the mean of 4000 draws lies within ~6 standard errors
    # (one is ~0.007 here), while forgetting the 1/(1-p) rescaling would be off by up to p*|clean| ~ 0.2.
    torch.testing.assert_close(mean, clean, atol=DROPOUT_MEAN_ATOL, rtol=0)


def test_module_is_the_same_in_train_and_eval_mode() -> None:
    """`Attention` has no dropout of its own: train and eval mode give the same output."""
    attn = Attention(d_model=8, d_k=4)
    x = torch.randn(2, 5, 8)
    out_train, _ = attn.train()(x)
    out_eval, _ = attn.eval()(x)
    torch.testing.assert_close(out_train, out_eval, atol=0, rtol=0)


# --------------------------------------------------------------------------- bad inputs


def test_query_of_rank_one_raises() -> None:
    with pytest.raises(ValueError, match=r"query must have at least 2 dimensions.*\(4,\)"):
        scaled_dot_product_attention(torch.randn(4), torch.randn(5, 4), torch.randn(5, 2))


def test_key_of_rank_one_raises() -> None:
    with pytest.raises(ValueError, match=r"key must have at least 2 dimensions.*\(4,\)"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(4), torch.randn(5, 2))


def test_value_of_rank_one_raises() -> None:
    with pytest.raises(ValueError, match=r"value must have at least 2 dimensions.*\(5,\)"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5))


def test_mismatched_d_k_raises_naming_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"d_k.*query \(3, 4\), key \(5, 6\)"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 6), torch.randn(5, 2))


def test_mismatched_k_len_raises_naming_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"k_len.*key \(5, 4\), value \(6, 2\)"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(6, 2))


def test_batch_dims_that_do_not_broadcast_raise() -> None:
    with pytest.raises(ValueError, match=r"batch dimensions do not broadcast.*\(2, 3, 4\).*\(3, 5, 4\)"):
        scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 2))


def test_float_mask_raises_naming_the_dtype() -> None:
    with pytest.raises(ValueError, match=r"mask must be a boolean tensor.*torch\.float32"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2), torch.ones(3, 5))


def test_integer_mask_raises_naming_the_dtype() -> None:
    with pytest.raises(ValueError, match=r"mask must be a boolean tensor.*torch\.int64"):
        scaled_dot_product_attention(
            torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2), torch.ones(3, 5, dtype=torch.long)
        )


def test_mask_of_wrong_shape_raises_naming_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\) does not broadcast.*\(3, 5\)"):
        scaled_dot_product_attention(
            torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2), torch.ones(3, 4, dtype=torch.bool)
        )


def test_mask_with_batch_dims_that_do_not_broadcast_raises() -> None:
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3, 5\) does not broadcast.*\(2, 3, 5\)"):
        scaled_dot_product_attention(
            torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(5, 2), torch.ones(3, 3, 5, dtype=torch.bool)
        )


def test_mask_may_not_stretch_q_len_or_k_len() -> None:
    with pytest.raises(ValueError, match=r"mask of shape \(3, 5\) does not broadcast.*\(1, 5\)"):
        scaled_dot_product_attention(
            torch.randn(1, 4), torch.randn(5, 4), torch.randn(5, 2), torch.ones(3, 5, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) does not broadcast.*\(2, 1\)"):
        scaled_dot_product_attention(
            torch.randn(2, 4), torch.randn(1, 4), torch.randn(1, 2), torch.ones(2, 4, dtype=torch.bool)
        )


def test_mask_may_not_enlarge_the_scores() -> None:
    """A mask with more batch dimensions than the inputs is an error, not a silently bigger output.

    (PyTorch's function would broadcast the output to (2, 3, 2) here; the course's function refuses,
    because a (batch, 1, 1, k_len) padding mask applied to 3-D inputs would otherwise mix examples.)
    """
    query, key, value = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2)
    mask = torch.rand(2, 3, 5) < 0.7
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3, 5\) does not broadcast.*\(3, 5\).*more dimensions"):
        scaled_dot_product_attention(query, key, value, mask)
    x = torch.randn(2, 5, 4)  # (batch, len, d) without a heads axis
    padding = torch.ones(2, 1, 1, 5, dtype=torch.bool)  # (batch, 1, 1, k_len)
    with pytest.raises(ValueError, match="heads axis"):
        scaled_dot_product_attention(x, x, x, padding)
    out, _ = scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], padding)  # with a heads axis: fine
    assert out.shape == (2, 1, 5, 4)


def test_mixed_dtypes_raise_naming_the_dtypes() -> None:
    with pytest.raises(ValueError, match=r"share one dtype.*torch\.float64.*torch\.float32"):
        scaled_dot_product_attention(torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4), torch.randn(5, 2))


def test_integer_inputs_raise_naming_the_dtype() -> None:
    with pytest.raises(ValueError, match=r"query must be a floating-point tensor.*torch\.int64"):
        scaled_dot_product_attention(torch.ones(3, 4, dtype=torch.long), torch.randn(5, 4), torch.randn(5, 2))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 2), dropout_p=p)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d_model": 0, "d_k": 4}, "d_model"),
        ({"d_model": 8, "d_k": -1}, "d_k"),
        ({"d_model": 8, "d_k": 4, "d_v": 2.5}, "d_v"),
        ({"d_model": 8, "d_k": 4, "d_context": True}, "d_context"),
    ],
)
def test_attention_bad_sizes_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
        Attention(**kwargs)


def test_attention_wrong_input_width_raises() -> None:
    attn = Attention(d_model=8, d_k=4, d_context=6)
    with pytest.raises(ValueError, match=r"x has last dimension 7, expected d_model=8"):
        attn(torch.randn(3, 7), torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"x_context has last dimension 8, expected d_context=6"):
        attn(torch.randn(3, 8))  # self-attention needs d_context == d_model


def test_attention_rank_one_input_raises() -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., len, features\), got shape \(8,\)"):
        Attention(d_model=8, d_k=4)(torch.randn(8))


# --------------------------------------------------------------------------- the Attention module


def test_seed_shapes_thinking_machines() -> None:
    """Two words of d_model=512 projected to d_k=64: (2, 64) output and (2, 2) weights."""
    attn = Attention(d_model=512, d_k=64)
    assert attn.W_Q.weight.shape == attn.W_K.weight.shape == attn.W_V.weight.shape == (64, 512)
    out, weights = attn(torch.randn(2, 512))
    assert out.shape == (2, 64) and weights.shape == (2, 2)


def test_self_attention_equals_passing_x_twice() -> None:
    attn = Attention(d_model=16, d_k=8, d_v=5)
    x = torch.randn(3, 7, 16)
    out, weights = attn(x)
    out2, weights2 = attn(x, x)
    torch.testing.assert_close(out, out2, atol=0, rtol=0)
    torch.testing.assert_close(weights, weights2, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_module_matches_pytorch_on_projected_inputs(dtype: torch.dtype) -> None:
    """Attn(X, X') = softmax((X W_Q)(X' W_K)^T / sqrt(d_k)) (X' W_V), checked with PyTorch's attention."""
    attn = Attention(d_model=12, d_k=6, d_v=5, d_context=10).to(dtype)
    x, x_context = torch.randn(2, 4, 12, dtype=dtype), torch.randn(2, 9, 10, dtype=dtype)
    mask = torch.rand(2, 4, 9) < 0.7
    mask[..., 0] = True
    out, _ = attn(x, x_context, mask)
    W_Q, W_K, W_V = attn.W_Q.weight.T, attn.W_K.weight.T, attn.W_V.weight.T  # (d_in, d_out), as in the paper
    expected = F.scaled_dot_product_attention(x @ W_Q, x_context @ W_K, x_context @ W_V, attn_mask=mask)
    torch.testing.assert_close(out, expected, atol=ATOL[dtype], rtol=RTOL[dtype])


def test_cross_attention_shapes_with_different_d_context() -> None:
    attn = Attention(d_model=16, d_k=8, d_v=4, d_context=24)
    assert attn.W_Q.weight.shape == (8, 16)
    assert attn.W_K.weight.shape == (8, 24) and attn.W_V.weight.shape == (4, 24)
    x, x_context = torch.randn(3, 5, 16), torch.randn(3, 9, 24)  # (batch, len, d_model), (batch, len', d_context)
    out, weights = attn(x, x_context)
    assert out.shape == (3, 5, 4) and weights.shape == (3, 5, 9)


def test_every_output_of_self_attention_depends_on_every_input() -> None:
    """Changing one word changes every context vector (article 3: C_i depends on all of X)."""
    attn = Attention(d_model=8, d_k=4)
    x = torch.randn(5, 8)
    out, _ = attn(x)
    x2 = x.clone()
    x2[3] += 1.0
    out2, _ = attn(x2)
    assert ((out2 - out).abs().sum(dim=-1) > 0).all()


def test_self_attention_is_permutation_equivariant() -> None:
    """Without positions, permuting the words permutes the outputs the same way (chapter 3's motivation)."""
    attn = Attention(d_model=8, d_k=4).double()
    x = torch.randn(6, 8, dtype=torch.float64)
    perm = torch.randperm(6)
    out, _ = attn(x)
    out_perm, _ = attn(x[perm])
    torch.testing.assert_close(out_perm, out[perm], atol=1e-12, rtol=1e-12)
