"""Chapter 8 — subword tokenization with SentencePiece.

A translator needs a fixed vocabulary that still covers rare words. Subword units do both: frequent
words stay whole, rare ones split into pieces ("Schneemobil" -> "▁Schnee", "mobil"). We train a
SentencePiece model (BPE or unigram) on the *training* split only, with the course's special ids:
``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

from .utils import BOS_ID, EOS_ID, PAD_ID, write_atomic

__all__ = ["UNK_ID", "Tokenizer", "train_tokenizer"]

UNK_ID = 3  # after the course's <pad> = 0, <bos> = 1, <eos> = 2 (utils)
PAD, BOS, EOS, UNK = PAD_ID, BOS_ID, EOS_ID, UNK_ID


def _spm():
    try:
        import sentencepiece
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the tokenizer needs SentencePiece: pip install 'transformer-lib[train]'") from None
    return sentencepiece


class Tokenizer:
    """A trained SentencePiece model: text <-> token ids (without ``<bos>``/``<eos>``)."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, model: str | os.PathLike | bytes) -> None:
        spm = _spm()
        if isinstance(model, bytes):
            self.model_bytes = model
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model {path} does not exist")
            self.model_bytes = path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except Exception as e:  # SentencePiece raises a bare RuntimeError/OSError on garbage
            raise ValueError(f"not a valid SentencePiece model ({e})") from None
        for name, expected in (("pad", PAD), ("bos", BOS), ("eos", EOS), ("unk", UNK)):
            actual = getattr(self.sp, f"{name}_id")()
            if actual != expected:
                raise ValueError(f"SentencePiece model has {name}_id={actual}, the course expects {expected}")

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ones included."""
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of one sentence (no ``<bos>``/``<eos>``)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many sentences at once."""
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a list of ids; special ids (pad, bos, eos) are dropped, ``<unk>`` becomes ' ⁇ '."""
        return self.sp.decode([int(i) for i in ids if int(i) not in (PAD, BOS, EOS)])

    def pieces(self, text: str) -> list[str]:
        """The subword pieces of ``text`` (for display)."""
        return self.sp.encode(text, out_type=str)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file atomically (temporary file + rename); returns the path."""
        return write_atomic(path, self.model_bytes)


def train_tokenizer(
    sentences: Iterable[str],
    vocab_size: int = 8000,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    seed_sentencepiece_size: int = 1_000_000,
) -> Tokenizer:
    """Train a SentencePiece model on ``sentences`` (use the training split only!).

    ``character_coverage`` below 1.0 (e.g. 0.9995) suits scripts with many rare characters (Chinese).
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
        raise ValueError(f"vocab_size must be an integer of at least 8, got {vocab_size!r}")
    if not 0.0 < character_coverage <= 1.0:
        raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage}")
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError("no non-empty sentences to train the tokenizer on")
    model = io.BytesIO()
    spm = _spm()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD,
            bos_id=BOS,
            eos_id=EOS,
            unk_id=UNK,
            seed_sentencepiece_size=seed_sentencepiece_size,
            num_threads=2,
            minloglevel=2,  # quiet
        )
    except RuntimeError as e:  # e.g. "Vocabulary size too high (8000). Please set it to a value <= 715."
        raise ValueError(
            f"SentencePiece could not train a {model_type} model with vocab_size={vocab_size} on "
            f"{len(sentences)} sentences: {str(e).split('] ')[-1]}"
        ) from None
    return Tokenizer(model.getvalue())
