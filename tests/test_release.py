"""The released translator: the committed checkpoint is the one the results describe, and it translates."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from transformer_lib.checkpoint import load_translator
from transformer_lib.data import MULTI30K_SPLITS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "multi30k_de_en.json"
RELEASE_LIMIT_BYTES = 25 * 1024 * 1024  # the release must stay small enough to commit


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def test_results_describe_the_committed_checkpoint(results: dict) -> None:
    path = ROOT / results["checkpoint"]["path"]
    assert path.is_file(), f"{path} named in {RESULTS.name} is not committed"
    assert path.stat().st_size == results["checkpoint"]["bytes"] <= RELEASE_LIMIT_BYTES
    assert hashlib.sha256(path.read_bytes()).hexdigest() == results["checkpoint"]["sha256"]
    for split, scores in results["scores"].items():
        assert split in MULTI30K_SPLITS and split.startswith("test")
        assert 0 <= scores["greedy"]["bleu"] <= 100 and 0 <= scores["beam"]["bleu"] <= 100
    assert "test_2016_flickr" in results["scores"]
    assert results["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert (ROOT / "results" / "multi30k_de_en_curves.png").is_file()


def test_released_checkpoint_is_fp16_and_loads(results: dict) -> None:
    import torch

    ckpt = torch.load(ROOT / results["checkpoint"]["path"], map_location="cpu", weights_only=True)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float16}
    model, src_tok, tgt_tok = load_translator(ROOT / results["checkpoint"]["path"])
    assert not model.training and src_tok.vocab_size == model.config.src_vocab
    beside = (ROOT / results["checkpoint"]["path"]).with_suffix(".spm.model")
    assert beside.read_bytes() == src_tok.model_bytes, "the SentencePiece model beside the release must be its own"


def test_cli_translates_with_the_released_checkpoint(results: dict) -> None:
    lines = "Ein Hund läuft durch den Schnee.\n\nZwei Männer spielen Fußball.\n"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "transformer_lib",
            "translate",
            "--checkpoint",
            str(ROOT / results["checkpoint"]["path"]),
            "--beam",
            "4",
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    translations = out.stdout.split("\n")[:3]
    assert translations[1] == "", "an empty input line must stay empty"
    assert translations[0] and translations[2], f"no translation produced: {out.stdout!r}"
    assert "dog" in translations[0].lower(), f"'Ein Hund' should mention a dog: {translations[0]!r}"
