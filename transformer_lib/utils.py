"""The course's small toolkit (introduced in chapter 1, used by every chapter).

Nothing here is part of the Transformer itself: seeding, timing, showing library source in a
notebook, the toy sequence tasks that chapters 1 and 7 train on, one plotting style for all
figures, and the file plumbing every later chapter shares (an atomic writer, a checksum, the
cache directory, and the repository's own files — results, released checkpoints — on Colab).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

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
    "resolve_device",
    "write_atomic",
    "remove_stale_parts",
    "sha256_file",
    "cache_dir",
    "REPOSITORY",
    "repo_root",
    "repo_file",
    "time_it",
    "show_source",
    "make_sequence_task",
    "use_course_style",
]

# Token ids of the toy tasks: 0 pads, 1 starts a target, 2 ends it, symbols start at 3.
PAD_ID, BOS_ID, EOS_ID, FIRST_SYMBOL_ID = 0, 1, 2, 3


# Where the corpora and downloaded repository files are kept (see ``cache_dir``).
CACHE_ENV = "TRANSFORMER_LIB_CACHE"
# The course repository on GitHub (the same as _config.yml's repository.url) and its published branch.
REPOSITORY = "transformer-course/transformer-chapter-by-chapter"
BRANCH = "main"


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the whole new one, never half of it.

    ``data`` is text (UTF-8 encoded, newlines kept as they are), bytes, or a function that writes
    to the binary file it is given (``lambda f: torch.save(obj, f)`` streams a checkpoint). The
    bytes go to a temporary file beside ``path``, reach the disk (fsync) and are renamed into
    place; a failed write leaves no temporary file. The file is readable by everyone (0o644).
    Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def remove_stale_parts(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files ``write_atomic`` left in ``folder`` (for ``name``) by a process killed mid-write."""
    stale = sorted(Path(folder).glob(f".{name}.*.part"))
    for part in stale:
        part.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as 64 hexadecimal digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where corpora and downloads are kept: ``$TRANSFORMER_LIB_CACHE``, else ``$XDG_CACHE_HOME/transformer_lib``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "transformer_lib"


def repo_root() -> Path:
    """The folder above the package: the repository, when the library is installed from a checkout."""
    return Path(__file__).resolve().parent.parent


def repo_file(relative: str) -> Path:
    """A file of the course repository, e.g. ``repo_file("release/multi30k_de_en.pt")``.

    In a checkout (locally, in CI) this is the file itself. Where only the library is installed
    (Colab), the file is downloaded once from the repository on GitHub into
    ``cache_dir() / "repository"`` (atomically: a broken download leaves nothing) and that copy is
    returned.
    """
    local = repo_root() / relative
    if local.is_file():
        return local
    cached = cache_dir() / "repository" / relative
    if not cached.is_file():
        url = f"https://raw.githubusercontent.com/{REPOSITORY}/{BRANCH}/{relative}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                write_atomic(cached, lambda f: shutil.copyfileobj(response, f))
        except OSError as e:
            raise FileNotFoundError(
                f"{relative} is not in this checkout and could not be downloaded from {url}: {e}"
            ) from e
    return cached


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device`` this PyTorch can use (default: CUDA if there is a GPU), or a one-line error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {str(device)!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this PyTorch sees no CUDA GPU; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but MPS is not available here; use cpu")
    return device


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
    symbols = torch.randint(
        FIRST_SYMBOL_ID, FIRST_SYMBOL_ID + num_symbols, (num_examples, max_len), generator=generator
    )
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
