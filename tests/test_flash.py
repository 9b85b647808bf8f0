"""Chapter 10's tiled attention: the online softmax gives exactly chapter 2's attention, one block at a time."""

from __future__ import annotations

import math

import pytest
import torch

from transformer_lib.attention import scaled_dot_product_attention
from transformer_lib.flash import tiled_attention
from transformer_lib.viz import tiled_attention_figure


@pytest.mark.parametrize("block_size", [1, 3, 16, 64, 1000])
@pytest.mark.parametrize("shape", [(1, 5, 7), (2, 4, 33, 8)])
def test_tiled_attention_equals_the_full_softmax(shape: tuple[int, ...], block_size: int) -> None:
    *batch, k_len, d = shape
    q = torch.randn(*batch, 6, d, dtype=torch.float64)
    k, v = torch.randn(*batch, k_len, d, dtype=torch.float64), torch.randn(*batch, k_len, 5, dtype=torch.float64)
    expected, _ = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(tiled_attention(q, k, v, block_size), expected, rtol=1e-12, atol=1e-12)


def test_large_scores_do_not_overflow() -> None:
    q, k, v = torch.randn(1, 3, 4) * 100, torch.randn(1, 40, 4) * 100, torch.randn(1, 40, 2)  # scores ~ 1e4
    out = tiled_attention(q, k, v, block_size=8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(q @ k.transpose(-2, -1) / 2, -1) @ v, rtol=1e-4, atol=1e-4)


def test_trace_holds_the_running_max_and_denominator_per_block() -> None:
    q, k, v = torch.randn(2, 4), torch.randn(10, 4), torch.randn(10, 3)
    trace: list = []
    tiled_attention(q, k, v, block_size=4, trace=trace)
    assert len(trace) == 3  # blocks of 4, 4 and 2 keys
    scores = q @ k.T / 2  # sqrt(d_k) = 2
    final_max, final_denom = trace[-1]
    torch.testing.assert_close(final_max, scores.max(-1).values)
    torch.testing.assert_close(final_denom, torch.exp(scores - final_max[:, None]).sum(-1))
    maxima = torch.stack([m for m, _ in trace])  # (blocks, q_len): never decreases
    assert (maxima[1:] >= maxima[:-1]).all()


def test_bad_inputs_name_the_problem() -> None:
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        tiled_attention(q, q, q, block_size=0)
    with pytest.raises(ValueError, match="query and key must share d_k"):
        tiled_attention(q, torch.randn(3, 5), torch.randn(3, 5))


def test_tiled_attention_figure_draws_one_tile_per_block_and_the_running_state() -> None:
    trace: list = []
    q, k = torch.randn(6, 8), torch.randn(20, 8)
    tiled_attention(q, k, torch.randn(20, 3), block_size=8, trace=trace)
    fig = tiled_attention_figure(6, 20, 8, [float(m[-1]) for m, _ in trace], [float(s[-1]) for _, s in trace])
    left, right = fig.axes
    assert [t.get_text() for t in left.texts] == ["tile 1", "tile 2", "tile 3"]
    assert len(right.lines) == 4 and right.get_xlabel() == "tiles of keys seen"
    last = right.lines[1].get_ydata()[-1]
    assert math.isclose(last, float(trace[-1][1][-1]), rel_tol=1e-6)
    with pytest.raises(ValueError, match="one running value per block of keys"):
        tiled_attention_figure(6, 20, 8, [1.0, 2.0], [1.0, 2.0])
