"""The course's small toolkit (introduced in chapter 1, used by every chapter).

Nothing here is part of the Transformer itself: seeding, timing, showing library source in a
notebook, the toy sequence tasks that chapters 1 and 7 train on, and one plotting style for all
figures.
"""

from __future__ import annotations

import inspect
import os
import random
import tempfile
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for the annotation: the library itself does not need IPython
    from IPython.display import Code

__all__ = [
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "FIRST_SYMBOL_ID",
    "set_seed",
    "write_atomic",
    "time_it",
    "show_source",
    "make_sequence_task",
    "use_course_style",
]

# Token ids of the toy tasks: 0 pads, 1 starts a target, 2 ends it, symbols start at 3.
PAD_ID, BOS_ID, EOS_ID, FIRST_SYMBOL_ID = 0, 1, 2, 3



def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8 encoded, newlines kept as they are) to ``path`` atomically.

    The bytes go to a temporary file beside ``path``, reach the disk (fsync) and are renamed into
    place, so readers see the old file or the whole new one, never half of it; a failed write leaves
    no temporary file. The file is readable by everyone (0o644). Returns ``path``.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's random number generators, for repeatable experiments."""
    random.seed(seed)
    torch.manual_seed(seed)


def time_it(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs, after ``warmup`` untimed runs."""
    if repeat <= 0:
        raise ValueError(f"repeat must be positive, got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def show_source(obj: Any) -> "Code":
    """Display the library's own source of ``obj`` (a function, class or module) in a notebook.

    Chapters call this instead of retyping library code, so the book can never drift from the package.
    """
    from IPython.display import Code  # imported here: the library itself does not need IPython

    return Code(inspect.getsource(obj), language="python")


def make_sequence_task(
    kind: str,
    num_examples: int,
    min_len: int,
    max_len: int,
    num_symbols: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random symbol sequences and their targets for the toy tasks ``"copy"`` and ``"reverse"``.

    Returns ``src`` ``(num_examples, max_len)`` and ``tgt`` ``(num_examples, max_len + 2)``: the
    target is ``<bos> answer <eos>``; both are padded with ``PAD_ID``. Symbols are ids
    ``FIRST_SYMBOL_ID .. FIRST_SYMBOL_ID + num_symbols - 1``; the vocabulary size is
    ``FIRST_SYMBOL_ID + num_symbols``.
    """
    if kind not in ("copy", "reverse"):
        raise ValueError(f"kind must be 'copy' or 'reverse', got {kind!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if num_examples <= 0 or num_symbols <= 0:
        raise ValueError(f"num_examples and num_symbols must be positive, got {num_examples} and {num_symbols}")
    lengths = torch.randint(min_len, max_len + 1, (num_examples,), generator=generator)  # (n,)
    symbols = torch.randint(FIRST_SYMBOL_ID, FIRST_SYMBOL_ID + num_symbols, (num_examples, max_len), generator=generator)
    positions = torch.arange(max_len)  # (max_len,)
    real = positions[None, :] < lengths[:, None]  # (n, max_len): True on the real symbols
    src = symbols.masked_fill(~real, PAD_ID)  # (n, max_len)
    if kind == "copy":
        answer = src
    else:  # reverse the first `length` symbols of every row, keep the padding at the end
        index = (lengths[:, None] - 1 - positions[None, :]).clamp(min=0)  # (n, max_len)
        answer = src.gather(1, index).masked_fill(~real, PAD_ID)
    tgt = torch.full((num_examples, max_len + 2), PAD_ID, dtype=torch.long)
    tgt[:, 0] = BOS_ID
    tgt[:, 1 : max_len + 1] = answer
    tgt[torch.arange(num_examples), lengths + 1] = EOS_ID  # <eos> right after the answer
    return src, tgt


def use_course_style() -> None:
    """One look for every figure of the book (matplotlib rcParams)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 3.8),
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.titleweight": "bold",
            "font.size": 10,
            "image.cmap": "viridis",
        }
    )
