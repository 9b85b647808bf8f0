"""Chapter 8 — data: the corpora, fetched once, verified always.

Every file has a canonical URL pinned to a commit and a SHA-256. ``fetch`` puts it in a cache
directory, writing to a temporary file and renaming it only once the checksum matches, so a
half-downloaded or corrupted corpus never sits in the cache under its real name.

Environment variables:

* ``TRANSFORMER_LIB_CACHE``: the cache directory (default: ``$XDG_CACHE_HOME/transformer_lib``,
  i.e. ``~/.cache/transformer_lib``);
* ``TRANSFORMER_LIB_DATA_MIRROR``: a local folder laid out like the cache (``multi30k/``,
  ``tatoeba/``) to copy from instead of the network — the tests and CI point it at ``../shared/data``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "DataError",
    "RemoteFile",
    "MULTI30K_SPLITS",
    "MULTI30K_FILES",
    "TATOEBA_FILE",
    "cache_dir",
    "fetch",
    "load_multi30k",
    "load_tatoeba",
    "token_batches",
    "collate",
]

CACHE_ENV, MIRROR_ENV = "TRANSFORMER_LIB_CACHE", "TRANSFORMER_LIB_DATA_MIRROR"


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
TATOEBA_FILE = RemoteFile(
    "tatoeba",
    "cmn-eng.txt",
    "https://raw.githubusercontent.com/13luoyu/Transformer-machine-translation/"
    "aa43963320ccfacebd1d3542deae559bbca58d03/cmn.txt",
    "aa264a2447b26ab7c9d413f8321f9e2a779fd134b5118306b6e26a3499b3926e",
)


def cache_dir() -> Path:
    """Where corpora are kept: ``$TRANSFORMER_LIB_CACHE``, else ``$XDG_CACHE_HOME/transformer_lib``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "transformer_lib"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        if _sha256(target) == remote.sha256:
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
        actual = _sha256(tmp)
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


def load_tatoeba(
    split: str,
    cache: Path | str | None = None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """Tatoeba Mandarin–English triples ``(chinese, english, attribution)`` of ``split``.

    The split is deterministic and made by *distinct English sentence*: all Chinese translations of
    one English sentence fall in the same split, so no English sentence leaks between splits.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown Tatoeba split {split!r}; choose 'train', 'val' or 'test'")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: valid={valid_fraction}, test={test_fraction}")
    path = fetch(TATOEBA_FILE, cache)
    triples = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"{path.name} line {number}: expected 3 tab-separated fields, got {len(fields)}")
        english, chinese, attribution = fields
        triples.append((chinese, english, attribution))
    english = sorted({t[1] for t in triples})
    random.Random(seed).shuffle(english)
    n_test, n_valid = round(len(english) * test_fraction), round(len(english) * valid_fraction)
    chosen = {"test": english[:n_test], "val": english[n_test : n_test + n_valid], "train": english[n_test + n_valid :]}
    keep = set(chosen[split])
    return [t for t in triples if t[1] in keep]


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
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
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
    examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0, bos_id: int = 1, eos_id: int = 2
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
