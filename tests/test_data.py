"""Corpus loading: mirror instead of network, checksums, atomic writes, split sizes, no leaks."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from conftest import MIRROR

from transformer_lib import data, utils
from transformer_lib.chinese import load_tatoeba
from transformer_lib.data import DataError, RemoteFile, fetch, load_multi30k


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh cache, and the shared mirror instead of the network."""
    monkeypatch.setenv(utils.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.MIRROR_ENV, str(MIRROR))
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("tests must not use the network"))
    return tmp_path


@pytest.mark.parametrize("split", ["train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"])
def test_multi30k_split_sizes(env, split):
    pairs = load_multi30k(split)
    assert len(pairs) == data.MULTI30K_SPLITS[split]
    assert all(de.strip() and en.strip() for de, en in pairs[:50])
    assert (env / "cache" / "multi30k" / f"{split}.de.gz").is_file()


def test_multi30k_direction_and_content(env):
    de_en, en_de = load_multi30k("val"), load_multi30k("val", "en", "de")
    assert [(b, a) for a, b in de_en] == en_de
    assert "Hund" in " ".join(de for de, _ in de_en) and "dog" in " ".join(en for _, en in de_en)


def test_bad_arguments(env):
    with pytest.raises(ValueError, match="unknown Multi30k split 'tset'"):
        load_multi30k("tset")
    with pytest.raises(ValueError, match="'fr'"):
        load_multi30k("val", "fr", "en")
    with pytest.raises(ValueError, match="unknown Tatoeba split"):
        load_tatoeba("dev")


def test_checksum_mismatch_deletes_the_file_and_names_both_hashes(env):
    remote = data.MULTI30K_FILES["val.de.gz"]
    wrong = RemoteFile(remote.folder, remote.name, remote.url, "0" * 64)
    with pytest.raises(DataError, match=r"val\.de\.gz.*expected sha256 0{64}, got " + remote.sha256):
        fetch(wrong)
    folder = env / "cache" / "multi30k"
    assert list(folder.iterdir()) == [], "nothing half-written may stay in the cache"


def test_corrupted_cache_file_is_replaced(env):
    path = fetch(data.MULTI30K_FILES["val.en.gz"])
    path.write_bytes(b"garbage")
    assert fetch(data.MULTI30K_FILES["val.en.gz"]).read_bytes()[:2] == b"\x1f\x8b"


def test_file_missing_from_mirror_is_named(env):
    with pytest.raises(DataError, match="test_2018_flickr.de.gz is not in the mirror"):
        load_multi30k("test_2018_flickr")


def _fake_mirror(tmp_path: Path, name: str, payload: bytes) -> RemoteFile:
    (tmp_path / "mirror" / "multi30k").mkdir(parents=True)
    (tmp_path / "mirror" / "multi30k" / name).write_bytes(payload)
    return RemoteFile(
        "multi30k", name, "https://example.invalid/" + name, utils.sha256_file(tmp_path / "mirror" / "multi30k" / name)
    )


def test_truncated_gzip_is_an_error(env, monkeypatch):
    payload = (MIRROR / "multi30k" / "val.de.gz").read_bytes()[:5000]  # cut in the middle of the stream
    remote = _fake_mirror(env, "val.de.gz", payload)
    monkeypatch.setitem(data.MULTI30K_FILES, "val.de.gz", remote)
    monkeypatch.setenv(data.MIRROR_ENV, str(env / "mirror"))
    with pytest.raises(DataError, match="not a complete UTF-8 gzip file"):
        load_multi30k("val")


def test_wrong_line_count_is_an_error(env, monkeypatch):
    lines = gzip.decompress((MIRROR / "multi30k" / "val.de.gz").read_bytes()).split(b"\n")
    remote = _fake_mirror(env, "val.de.gz", gzip.compress(b"\n".join(lines[:-10])))
    monkeypatch.setitem(data.MULTI30K_FILES, "val.de.gz", remote)
    monkeypatch.setenv(data.MIRROR_ENV, str(env / "mirror"))
    with pytest.raises(DataError, match=r"val\.de\.gz has \d+ lines, expected 1014"):
        load_multi30k("val")


def test_tatoeba_split_is_deterministic_complete_and_leak_free(env):
    splits = {s: load_tatoeba(s) for s in ("train", "val", "test")}
    english = {s: {en for _, en, _ in triples} for s, triples in splits.items()}
    assert not english["train"] & english["val"] and not english["train"] & english["test"]
    assert not english["val"] & english["test"]
    assert sum(len(t) for t in splits.values()) == 29155
    assert load_tatoeba("test") == splits["test"]
    assert all(attr.startswith("CC-BY") for _, _, attr in splits["val"])
    assert "我" in "".join(zh for zh, _, _ in splits["train"][:200])
