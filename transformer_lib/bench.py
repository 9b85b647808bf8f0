"""Chapter 10 — making it fast: measuring time, memory and FLOPs honestly.

Small tools shared by the benchmark scripts in ``benchmarks/`` and by chapter 10:

* ``benchmark`` times a function (CUDA is synchronised, warm-up runs are excluded, the median of
  several repetitions is reported);
* ``peak_memory`` measures the peak bytes a call allocates: on CUDA with
  ``torch.cuda.max_memory_allocated``, on the CPU by tracking every tensor storage created at the
  dispatcher level (``TensorMemoryTracker``), which is what the CUDA counter counts as well;
* ``transformer_flops`` counts the matrix-multiply FLOPs of the encoder–decoder, and ``mfu`` turns
  a measured throughput into *model FLOPs utilisation*: achieved FLOP/s over the device's peak,
  taken from ``KNOWN_PEAK_TFLOPS`` for known GPUs or measured with ``matmul_peak_flops`` on a CPU;
* ``format_table`` and ``write_json_atomic`` print and store results, always with the device that
  produced them (``results_header``).

The FLOP count follows the convention of Kaplan et al. (2020) and of the Megatron-LM MFU figures:
only matrix multiplications count (2 FLOPs per multiply-add); a backward pass costs twice the
forward pass, so one training step costs 3 forward passes; softmax, LayerNorm, dropout and the
embedding look-ups are left out. Attention scores are counted as computed, for the whole
``len x len`` grid (a causal or padding mask does not make a dense kernel skip the masked half).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .evaluate import device_description
from .model import TransformerConfig
from .utils import write_atomic

__all__ = [
    "Timing",
    "benchmark",
    "TensorMemoryTracker",
    "peak_memory",
    "transformer_flops",
    "KNOWN_PEAK_TFLOPS",
    "gpu_peak_flops",
    "matmul_peak_flops",
    "mfu",
    "format_table",
    "results_header",
    "write_json_atomic",
]


# --------------------------------------------------------------------------- time


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock seconds of the timed repetitions of one function (warm-up runs excluded)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median seconds per call: robust to the odd slow run on a shared machine."""
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        """Fastest run in seconds."""
        return min(self.times)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median: how noisy the measurement was."""
        return (max(self.times) - min(self.times)) / self.median


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def benchmark(
    fn: Callable[[], Any],
    repeat: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    clock: str = "wall",
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    On CUDA, kernels run asynchronously: the device is synchronised before the clock starts and
    before it stops, so each time covers the work ``fn`` launched, not just the launch.
    ``clock="cpu"`` measures the CPU seconds this process used (``time.process_time``) instead of
    wall time: on a machine shared with other jobs, time spent waiting for a core does not count.
    With one thread it is the compute time; with several it is their sum.
    """
    for name, value, low in (("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    device = torch.device(device)
    if clock == "cpu" and device.type == "cuda":
        raise ValueError("clock='cpu' cannot time CUDA work (the GPU's time is not the process's CPU time); use 'wall'")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeat):
        _sync(device)
        start = now()
        fn()
        _sync(device)
        timing.times.append(now() - start)
    return timing


# --------------------------------------------------------------------------- memory


class TensorMemoryTracker(TorchDispatchMode):
    """Count the bytes of every CPU/CUDA tensor storage created while active, and their peak.

    Every operator's outputs pass through ``__torch_dispatch__``; a storage not seen before adds
    its ``nbytes`` to ``current`` and is subtracted again when it is freed (a weak-reference
    finaliser on the storage). ``peak`` is the largest ``current`` reached. This is what
    ``torch.cuda.max_memory_allocated`` measures on a GPU, for any device; what it misses is memory
    a fused kernel allocates internally and frees before returning (small work buffers).
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= nbytes

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak = self.current

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        """Run the operator, then account for the storages of its outputs."""
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata  # the address of the C++ storage: views share it
            if key in self._live:
                continue
            nbytes = storage.nbytes()
            self._live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes)
        return out


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[int, str]:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before; and the method used.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU (or any other
    device): ``TensorMemoryTracker``. The result of ``fn`` is dropped before returning, but counts
    towards the peak while it is alive.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak, "TensorMemoryTracker (tensor storages created at the dispatcher level)"


# --------------------------------------------------------------------------- FLOPs


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def transformer_flops(
    config: TransformerConfig, src_len: int, tgt_len: int, batch: int = 1, training: bool = True
) -> int:
    """Matrix-multiply FLOPs of one pass of the encoder–decoder over ``batch`` padded pairs.

    With ``d = d_model``, ``S = src_len``, ``T = tgt_len``, ``V = tgt_vocab``, forward FLOPs per
    pair (2 per multiply-add):

    * each encoder layer, per source position: ``8 d^2`` (Q, K, V, O projections) + ``4 S d``
      (scores ``Q K^T`` and ``weights V``) + ``4 d d_ff`` (feed-forward);
    * each decoder layer, per target position: ``8 d^2 + 4 T d`` (self-attention) + ``4 d^2 + 4 S d``
      (cross-attention Q and O projections, scores, weighted values) + ``4 d d_ff``; plus, per source
      position, ``4 d^2`` for the cross-attention K and V projections of the memory;
    * the generator, per target position: ``2 d V``.

    ``training=True`` multiplies by 3 (forward + a backward of twice the forward's cost).
    """
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
    S, T, B = _positive_int("src_len", src_len), _positive_int("tgt_len", tgt_len), _positive_int("batch", batch)
    d, d_ff, N, V = config.d_model, config.d_ff, config.N, config.tgt_vocab
    encoder = N * S * (8 * d * d + 4 * S * d + 4 * d * d_ff)
    decoder = N * (T * (8 * d * d + 4 * T * d + 4 * d * d + 4 * S * d + 4 * d * d_ff) + S * 4 * d * d)
    generator = T * 2 * d * V
    forward = B * (encoder + decoder + generator)
    return 3 * forward if training else forward


# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets, by substring of the device name;
# the first match wins, so the more specific names come first. "fp32" is plain FP32 (no TF32).
KNOWN_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "fp32": 60.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},  # SXM ("H100 80GB HBM3")
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "fp32": 31.2},  # the A10G of AWS; the A10 has 125 bf16 / 31.2 fp32
    "A10": {"bf16": 125.0, "fp32": 31.2},
    "T4": {"fp32": 8.1},  # no bfloat16 tensor cores
}


def gpu_peak_flops(name: str, dtype: str) -> float | None:
    """Peak FLOP/s of a GPU called ``name`` (e.g. ``torch.cuda.get_device_name()``) for ``"bf16"``/``"fp32"``.

    ``None`` when the device is not in ``KNOWN_PEAK_TFLOPS`` (then measure it with ``matmul_peak_flops``).
    """
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be 'bf16' or 'fp32', got {dtype!r}")
    for key, peaks in KNOWN_PEAK_TFLOPS.items():
        if key in name:
            return peaks[dtype] * 1e12 if dtype in peaks else None
    return None


def matmul_peak_flops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int = 1024,
    repeat: int = 5,
    clock: str = "wall",
) -> float:
    """Measured FLOP/s of a ``size x size`` matrix product, the best of ``repeat``: a practical peak.

    On a CPU there is no data-sheet number that holds for every machine and thread count, so the
    course takes the fastest large matmul PyTorch runs on it as the ceiling (with ``clock="cpu"``,
    per CPU-second, see ``benchmark``).
    """
    _positive_int("size", size)
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = benchmark(lambda: a @ b, repeat=repeat, warmup=2, device=device, clock=clock)
    return 2 * size**3 / timing.best


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: ``flops / seconds`` as a fraction of ``peak_flops`` (FLOP/s)."""
    for name, value in (("flops", flops), ("seconds", seconds), ("peak_flops", peak_flops)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return flops / seconds / peak_flops


# --------------------------------------------------------------------------- reporting


def format_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".3g") -> str:
    """A plain-text table of ``rows`` (dicts), one column per key (``columns`` picks and orders them)."""
    if not rows:
        raise ValueError("format_table needs at least one row")
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return format(value, floatfmt)
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def results_header(device: str | torch.device, command: str, **extra: Any) -> dict:
    """The fields every results file starts with: what ran, where, with which software."""
    return {
        "device": device_description(device),
        "device_type": torch.device(device).type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **extra,
    }


def write_json_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename: never a half-written file.

    ``obj`` must be a dict with a ``"device"`` entry (a result without its device is meaningless)
    and only JSON values: NaN and infinity are refused (``json`` would write invalid JSON).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"results must be a dict, got {type(obj).__name__}")
    if not obj.get("device"):
        raise ValueError("results must name the device that produced them (a 'device' entry)")
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"results are not plain JSON (numbers must be finite): {e}") from None
    return write_atomic(path, text)
