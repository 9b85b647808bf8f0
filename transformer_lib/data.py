"""Chapter 8 — data: the corpus, fetched once, verified always, and cut into token-budget batches.

Every file has a canonical URL pinned to a commit and a SHA-256. ``fetch`` puts it in a cache
directory, writing to a temporary file and renaming it only once the checksum matches, so a
half-downloaded or corrupted corpus never sits in the cache under its real name.

``CORPORA`` names the corpora a training run can use: Multi30k here; chapter 12 registers
Tatoeba's Chinese–English pairs with ``register_corpus``.

Environment variables:

* ``TRANSFORMER_LIB_CACHE``: the cache directory (default: ``$XDG_CACHE_HOME/transformer_lib``,
  i.e. ``~/.cache/transformer_lib``);
* ``TRANSFORMER_LIB_DATA_MIRROR``: a local folder laid out like the cache (``multi30k/``, ...) to
  copy from instead of the network — the tests and CI point it at ``../shared/data``
  (``use_shared_mirror`` does that for the notebooks of a checkout).
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from .checks import check_positive_ints
from .utils import BOS_ID, EOS_ID, PAD_ID, cache_dir, repo_root, sha256_file

__all__ = [
    "DataError",
    "RemoteFile",
    "MULTI30K_SPLITS",
    "MULTI30K_FILES",
    "fetch",
    "use_shared_mirror",
    "load_multi30k",
    "Corpus",
    "CORPORA",
    "register_corpus",
    "load_pairs",
    "token_batches",
    "collate",
]

MIRROR_ENV = "TRANSFORMER_LIB_DATA_MIRROR"


class DataError(RuntimeError):
    """A corpus file is missing, corrupted, truncated or not what it should be."""


@dataclass(frozen=True)
class RemoteFile:
    """One corpus file: where it lives canonically, its SHA-256, and its folder in the cache."""

    folder: str
    name: str
    url: str
    sha256: str


MULTI30K_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
_MULTI30K_URL = f"https://raw.githubusercontent.com/multi30k/dataset/{MULTI30K_COMMIT}/data/task1/raw/{{}}"
# Sentence pairs per split of Multi30k task 1.
MULTI30K_SPLITS = {
    "train": 29000,
    "val": 1014,
    "test_2016_flickr": 1000,
    "test_2017_flickr": 1000,
    "test_2017_mscoco": 461,
    "test_2018_flickr": 1071,
}
_MULTI30K_SHA256 = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
}
MULTI30K_FILES = {
    name: RemoteFile("multi30k", name, _MULTI30K_URL.format(name), sha) for name, sha in _MULTI30K_SHA256.items()
}


def fetch(remote: RemoteFile, cache: Path | str | None = None, mirror: Path | str | None = None) -> Path:
    """Return the verified local path of ``remote``, copying or downloading it first if needed.

    The file is taken from ``mirror`` (default ``$TRANSFORMER_LIB_DATA_MIRROR``) when one is set,
    otherwise from its canonical URL. It is written to a temporary file beside its final place and
    renamed only when its SHA-256 matches; on a mismatch the temporary file is deleted and
    ``DataError`` names the file and both hashes.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / remote.folder / remote.name
    if target.is_file():
        if sha256_file(target) == remote.sha256:
            return target
        target.unlink()  # a stale or corrupted copy: fetch it again
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{remote.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if mirror:
                source = Path(mirror).expanduser() / remote.folder / remote.name
                if not source.is_file():
                    raise DataError(f"{remote.name} is not in the mirror {MIRROR_ENV}={mirror} (looked for {source})")
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, out)
            else:
                with urllib.request.urlopen(remote.url, timeout=60) as response:
                    shutil.copyfileobj(response, out)
        actual = sha256_file(tmp)
        if actual != remote.sha256:
            raise DataError(
                f"checksum mismatch for {remote.name} (from {source if mirror else remote.url}): "
                f"expected sha256 {remote.sha256}, got {actual}; the file was deleted"
            )
        os.replace(tmp, target)  # atomic: the cache holds either nothing or the verified file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _read_gzip_lines(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read().split("\n")
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a complete UTF-8 gzip file ({type(e).__name__}: {e})") from None


def _read_split(path: Path, expected: int) -> list[str]:
    lines = _read_gzip_lines(path)
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last sentence
    if len(lines) != expected:
        raise DataError(f"{path.name} has {len(lines)} lines, expected {expected}: the corpus is incomplete or wrong")
    return lines


def load_multi30k(
    split: str, src_lang: str = "de", tgt_lang: str = "en", cache: Path | str | None = None
) -> list[tuple[str, str]]:
    """Sentence pairs ``(source, target)`` of a Multi30k task-1 split, e.g. ``load_multi30k("train")``."""
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; choose one of {sorted(MULTI30K_SPLITS)}")
    for lang in (src_lang, tgt_lang):
        if lang not in ("de", "en"):
            raise ValueError(f"Multi30k task 1 has languages 'de' and 'en', got {lang!r}")
    if src_lang == tgt_lang:
        raise ValueError(f"source and target language are both {src_lang!r}")
    expected = MULTI30K_SPLITS[split]
    src = _read_split(fetch(MULTI30K_FILES[f"{split}.{src_lang}.gz"], cache), expected)
    tgt = _read_split(fetch(MULTI30K_FILES[f"{split}.{tgt_lang}.gz"], cache), expected)
    return list(zip(src, tgt))


@dataclass(frozen=True)
class Corpus:
    """A parallel corpus a training run can use: its languages, splits, and a loader of sentence pairs."""

    name: str
    languages: tuple[str, str]
    test_splits: tuple[str, ...]
    load: Callable[[str, str, str], list[tuple[str, str]]]  # (split, src_lang, tgt_lang) -> pairs


CORPORA: dict[str, Corpus] = {
    "multi30k": Corpus(
        "multi30k", ("de", "en"), tuple(s for s in MULTI30K_SPLITS if s.startswith("test")), load_multi30k
    ),
}


def register_corpus(corpus: Corpus) -> Corpus:
    """Make ``corpus`` usable by name in ``TrainConfig.dataset`` and ``load_pairs`` (later chapters add theirs)."""
    CORPORA[corpus.name] = corpus
    return corpus


def load_pairs(dataset: str, split: str, src_lang: str, tgt_lang: str) -> list[tuple[str, str]]:
    """``(source, target)`` sentence pairs of one split of a corpus in ``CORPORA``."""
    if dataset not in CORPORA:
        raise ValueError(f"unknown corpus {dataset!r}; known: {', '.join(sorted(CORPORA))}")
    corpus = CORPORA[dataset]
    if {src_lang, tgt_lang} != set(corpus.languages):
        raise ValueError(
            f"the {dataset} corpus translates between {' and '.join(map(repr, corpus.languages))}, "
            f"got src_lang={src_lang!r}, tgt_lang={tgt_lang!r}"
        )
    return corpus.load(split, src_lang, tgt_lang)


def use_shared_mirror() -> Path | None:
    """Point ``TRANSFORMER_LIB_DATA_MIRROR`` at the offline corpora beside the repository, if they are there.

    A checkout of the course sits next to ``shared/data`` (tests and CI use it); the notebooks call
    this first, so they never touch the network there. Where no such folder exists (Colab), or a
    mirror is already set, nothing changes and ``fetch`` downloads from the canonical URLs.
    Returns the mirror in use, or ``None``.
    """
    shared = repo_root().parent / "shared" / "data"
    if not os.environ.get(MIRROR_ENV) and shared.is_dir():
        os.environ[MIRROR_ENV] = str(shared)
    return Path(os.environ[MIRROR_ENV]) if os.environ.get(MIRROR_ENV) else None


def token_batches(
    lengths: Sequence[tuple[int, int]], max_tokens: int, shuffle: bool = True, seed: int = 0
) -> list[list[int]]:
    """Group example indices into batches of about ``max_tokens`` tokens, similar lengths together.

    ``lengths[i]`` is ``(source_len, target_len)`` of example i. Examples are sorted by length (with
    random tie-breaking when ``shuffle``), cut into batches whose padded size
    ``batch_size * longest`` stays within ``max_tokens``, and the batch order is shuffled. Little
    padding, and every batch costs about the same. ``seed`` makes the order repeatable (pass a
    different one each epoch).
    """
    check_positive_ints(max_tokens=max_tokens)
    rng = random.Random(seed)
    noise = [rng.random() if shuffle else 0.0 for _ in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (max(lengths[i]), min(lengths[i]), noise[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        size = max(lengths[i]) + 1  # +1: the <bos>/<eos> added to the target
        if size > max_tokens:
            raise ValueError(f"example {i} has {size} tokens, more than max_tokens={max_tokens}")
        if batch and max(longest, size) * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, size)
    if batch:
        batches.append(batch)
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int = PAD_ID,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pad a list of ``(source_ids, target_ids)`` into tensors for teacher forcing.

    Returns ``src`` ``(batch, S)``, ``tgt_in`` = ``<bos> y`` and ``tgt_out`` = ``y <eos>``, both
    ``(batch, T + 1)``, padded with ``pad_id``.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    S = max(len(s) for s, _ in examples)
    T = max(len(t) for _, t in examples) + 1
    src = torch.full((len(examples), S), pad_id, dtype=torch.long)
    tgt_in = torch.full((len(examples), T), pad_id, dtype=torch.long)
    tgt_out = torch.full((len(examples), T), pad_id, dtype=torch.long)
    for b, (s, t) in enumerate(examples):
        src[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        tgt_in[b, : len(t) + 1] = torch.as_tensor([bos_id, *t], dtype=torch.long)  # (T,): shifted right
        tgt_out[b, : len(t) + 1] = torch.as_tensor([*t, eos_id], dtype=torch.long)  # (T,): what to predict
    return src, tgt_in, tgt_out
