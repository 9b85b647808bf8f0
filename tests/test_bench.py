"""transformer_lib.bench: FLOPs against a hand count and PyTorch's FLOP counter, MFU arithmetic, the
timer, the memory tracker against known allocations, and the atomic JSON writer."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from transformer_lib.bench import (
    TensorMemoryTracker,
    benchmark,
    format_table,
    gpu_peak_flops,
    matmul_peak_flops,
    mfu,
    peak_memory,
    results_header,
    transformer_flops,
    write_json_atomic,
)
from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.model import Transformer, TransformerConfig

TINY = TransformerConfig(10, 10, N=1, d_model=4, d_ff=8, h=2, dropout=0.0)


def test_flops_match_a_hand_count():
    # N=1, d=4, h=2 (d_k=2), d_ff=8, V=10, one pair with S=3 source and T=2 target positions.
    # Every matrix product of the forward pass as (rows, inner, columns), written out by hand:
    S, T, d, dk, ff, V = 3, 2, 4, 2, 8, 10
    products = (
        [(S, d, d)] * 4  # encoder self-attention: W_Q, W_K, W_V, W_O
        + [(S, dk, S)] * 2
        + [(S, S, dk)] * 2  # per head: scores, weights @ V
        + [(S, d, ff), (S, ff, d)]  # encoder feed-forward
        + [(T, d, d)] * 4  # decoder self-attention projections
        + [(T, dk, T)] * 2
        + [(T, T, dk)] * 2
        + [(T, d, d), (S, d, d), (S, d, d), (T, d, d)]  # cross-attention: W_Q(x), W_K(memory), W_V(memory), W_O
        + [(T, dk, S)] * 2
        + [(T, S, dk)] * 2
        + [(T, d, ff), (T, ff, d)]  # decoder feed-forward
        + [(T, d, V)]  # generator
    )
    forward = sum(2 * m * k * n for m, k, n in products)
    assert transformer_flops(TINY, S, T, training=False) == forward
    assert transformer_flops(TINY, S, T, batch=5, training=True) == 3 * 5 * forward


@pytest.mark.parametrize("norm_first", [False, True])
def test_flops_match_pytorchs_flop_counter(norm_first):
    # torch.utils.flop_counter counts every mm/bmm/addmm PyTorch runs, forward and backward.
    config = TransformerConfig(50, 50, N=2, d_model=16, d_ff=24, h=4, dropout=0.0, norm_first=norm_first)
    model = Transformer(config)  # chapter 2's attention (fused=False): the products are plain bmm calls
    src, tgt = torch.randint(1, 50, (3, 7)), torch.randint(1, 50, (3, 5))
    with FlopCounterMode(display=False) as forward_only:
        with torch.no_grad():
            model(src, tgt, padding_mask(src, 0), target_mask(tgt, 0))
    assert forward_only.get_total_flops() == transformer_flops(config, 7, 5, batch=3, training=False)
    with FlopCounterMode(display=False) as training:
        model(src, tgt, padding_mask(src, 0), target_mask(tgt, 0)).sum().backward()
    assert training.get_total_flops() == transformer_flops(config, 7, 5, batch=3, training=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(config="base", src_len=3, tgt_len=2), "config must be a TransformerConfig"),
        (dict(config=TINY, src_len=0, tgt_len=2), "src_len must be a positive integer"),
        (dict(config=TINY, src_len=3, tgt_len=2.5), "tgt_len must be a positive integer"),
        (dict(config=TINY, src_len=3, tgt_len=2, batch=True), "batch must be a positive integer"),
    ],
)
def test_flops_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        transformer_flops(**kwargs)


def test_mfu_arithmetic():
    assert mfu(1e12, 2.0, 1e12) == pytest.approx(0.5)
    assert mfu(3 * 10**9, 0.5, 1.2e10) == pytest.approx(0.5)
    for bad in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="must be a positive finite number"):
            mfu(1e12, bad, 1e12)


def test_gpu_peaks_from_the_data_sheet_table():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989e12)
    assert gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12), "the more specific name wins"
    assert gpu_peak_flops("NVIDIA H200", "fp32") == pytest.approx(67e12)
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5e12)
    assert gpu_peak_flops("Tesla T4", "bf16") is None, "no bfloat16 tensor cores"
    assert gpu_peak_flops("Some Future GPU", "bf16") is None
    with pytest.raises(ValueError, match="dtype must be 'bf16' or 'fp32'"):
        gpu_peak_flops("NVIDIA H100", "fp16")


def test_matmul_peak_is_a_plausible_rate():
    peak = matmul_peak_flops(size=128, repeat=2)
    assert 1e7 < peak < 1e14  # FLOP/s: more than a 1990s PC, less than a whole GPU


def test_benchmark_times_the_function_and_skips_the_warmup():
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(0.01)

    timing = benchmark(fn, repeat=3, warmup=2)
    assert len(calls) == 5 and len(timing.times) == 3
    assert all(0.01 <= t < 1.0 for t in timing.times)
    assert timing.best <= timing.median and timing.spread >= 0
    # The CPU clock does not count sleeping (waiting for a core counts the same way): about zero.
    assert benchmark(fn, repeat=3, warmup=0, clock="cpu").median < 0.005


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(repeat=0), "repeat must be an integer >= 1"),
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(clock="gpu"), "clock must be 'wall' or 'cpu'"),
        (dict(clock="cpu", device="cuda"), "clock='cpu' cannot time CUDA work"),
    ],
)
def test_benchmark_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark(lambda: None, **kwargs)


def test_memory_tracker_counts_allocations_and_frees():
    with TensorMemoryTracker() as tracker:
        a = torch.zeros(1000)  # 4,000 bytes
        b = torch.zeros(500, dtype=torch.float64)  # 4,000 bytes
        view = a[10:20]  # a view: no new storage
        assert tracker.current == 8000 and tracker.peak == 8000
        del a, view
        assert tracker.current == 4000, "a's storage is freed once its last view is gone"
        tracker.reset_peak()
        c = torch.ones(250)  # 1,000 bytes
        assert tracker.peak == 5000
        del b, c
    assert tracker.current == 0


def test_peak_memory_of_attention_scores():
    # Chapter 2's attention materialises the (batch, heads, n, n) scores; the fused kernel does not.
    from transformer_lib.attention import scaled_dot_product_attention

    q = torch.randn(2, 4, 128, 16)
    scores_bytes = 2 * 4 * 128 * 128 * 4
    ours, method = peak_memory(lambda: scaled_dot_product_attention(q, q, q))
    fused, _ = peak_memory(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert "TensorMemoryTracker" in method
    assert ours >= 2 * scores_bytes, "scores and softmax weights are both (batch, heads, n, n)"
    assert fused < scores_bytes, "the CPU flash kernel works on tiles"


def test_format_table():
    text = format_table([{"name": "ours", "ms": 1.23456}, {"name": "nn.Transformer", "ms": 10.0, "note": "x"}])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "ms", "note"]
    assert lines[2].split() == ["ours", "1.23"] and lines[3].split() == ["nn.Transformer", "10", "x"]
    assert len({len(line) for line in lines}) == 1, "columns are aligned"
    with pytest.raises(ValueError, match="at least one row"):
        format_table([])


def test_write_json_atomic(tmp_path):
    path = tmp_path / "results" / "bench.json"
    data = results_header("cpu", "python benchmarks/x.py", rows=[{"ms": 1.5}])
    assert write_json_atomic(data, path) == path
    assert json.loads(path.read_text()) == data and data["device"].startswith("CPU")
    # Bad input is refused before the file is touched: the old results stay.
    for bad, message in [
        ({**data, "rows": [{"ms": float("nan")}]}, "numbers must be finite"),
        ({**data, "rows": [object()]}, "not plain JSON"),
        ({"rows": []}, "must name the device"),
        ([data], "results must be a dict"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_json_atomic(bad, path)
    assert json.loads(path.read_text()) == data
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"], "no temporary file left behind"
