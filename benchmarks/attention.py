"""Attention kernels: the course's attention against F.scaled_dot_product_attention, by length and batch.

For each sequence length n, batch size, and dtype (fp32, bf16), one forward + backward of
self-attention over ``(batch, heads, n, d_k)`` queries, keys and values, with four implementations:

* ``ours``: ``transformer_lib.attention.scaled_dot_product_attention`` (chapter 2), which
  materialises the ``n x n`` scores and weights;
* ``math``: PyTorch's reference C++ implementation (also materialises them);
* ``flash``: the FlashAttention kernel (GPU; PyTorch also has a CPU version), which works on tiles
  and never stores the ``n x n`` matrix;
* ``efficient``: the memory-efficient kernel of xFormers (GPU only).

A backend that cannot run on the device or dtype is recorded as unsupported. Time: median of
several repetitions after a warm-up (CUDA synchronised; on a CPU the process's CPU time, see
``transformer_lib.bench.benchmark``). Memory: peak bytes allocated during the forward + backward
above the inputs (``transformer_lib.bench.peak_memory``: CUDA's allocator counter on a GPU, the
dispatcher-level ``TensorMemoryTracker`` on a CPU).

    OMP_NUM_THREADS=1 python benchmarks/attention.py              # results/bench_attention_cpu.json
    OMP_NUM_THREADS=1 python benchmarks/attention.py --quick      # small sizes, seconds (runs/, not results/)
    python benchmarks/attention.py --device cuda                  # results/bench_attention_cuda.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from transformer_lib.attention import scaled_dot_product_attention
from transformer_lib.bench import benchmark, format_table, peak_memory, results_header, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
HEADS, D_K = 8, 64
GRID = {  # (lengths, batch sizes, repetitions)
    "cpu": ([128, 256, 512, 1024, 2048], [1, 4], 3),
    "cuda": ([256, 512, 1024, 2048, 4096, 8192], [1, 8, 32], 10),
    "quick": ([64, 128, 256], [1, 2], 3),
}
BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attention_fn(impl: str):
    """``f(q, k, v) -> output`` for one implementation."""
    if impl == "ours":
        return lambda q, k, v: scaled_dot_product_attention(q, k, v)[0]

    def fused(q, k, v):
        with sdpa_kernel(BACKENDS[impl]):
            return F.scaled_dot_product_attention(q, k, v)

    return fused


def measure(impl: str, batch: int, n: int, dtype: torch.dtype, device: torch.device, repeat: int, clock: str) -> dict:
    """Time and peak memory of one forward + backward, or why it could not run."""
    q, k, v = (torch.randn(batch, HEADS, n, D_K, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, HEADS, n, D_K, device=device, dtype=dtype)
    fn = attention_fn(impl)

    def step() -> None:
        out = fn(q, k, v)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    row = {"impl": impl, "batch": batch, "n": n, "dtype": str(dtype).removeprefix("torch.")}
    try:
        step()  # also checks that the backend supports these inputs
    except RuntimeError as e:
        return {**row, "supported": False, "reason": str(e).splitlines()[0][:200]}
    timing = benchmark(step, repeat=repeat, warmup=1, device=device, clock=clock)
    peak, method = peak_memory(step, device)
    scores = batch * HEADS * n * n * torch.finfo(dtype).bits // 8  # one (batch, heads, n, n) matrix
    return {
        **row,
        "supported": True,
        "ms": 1000 * timing.median,
        "spread": timing.spread,
        "peak_bytes": peak,
        "score_matrix_bytes": scores,
        "peak_over_scores": peak / scores,
        "memory_method": method,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, for CI and the chapter")
    parser.add_argument("--out", default=None, help="results JSON (default: results/bench_attention_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    lengths, batches, repeat = GRID["quick" if args.quick else device.type]
    clock = "wall" if device.type == "cuda" else "cpu"
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for batch in batches:
            for n in lengths:
                for impl in ("ours", "math", "flash", "efficient"):
                    row = measure(impl, batch, n, dtype, device, repeat, clock)
                    rows.append(row)
                    status = (
                        f"{row['ms']:.2f} ms, {row['peak_bytes'] / 2**20:.1f} MiB"
                        if row["supported"]
                        else "unsupported"
                    )
                    print(f"{row['dtype']:8s} batch {batch:2d} n {n:5d} {impl:9s} {status}", flush=True)
    results = results_header(
        device,
        "python benchmarks/attention.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        quick=args.quick,
        heads=HEADS,
        d_k=D_K,
        clock=clock,
        measured="forward + backward of self-attention, no mask",
        rows=rows,
    )
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / ("runs" if args.quick else "results")
        / f"bench_attention_{device.type}{'_quick' if args.quick else ''}.json"
    )
    ok = [r for r in rows if r["supported"]]
    print(format_table(ok, ["dtype", "batch", "n", "impl", "ms", "peak_bytes", "peak_over_scores"]))
    write_json_atomic(results, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
