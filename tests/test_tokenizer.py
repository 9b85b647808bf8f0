"""SentencePiece tokenizer: the course's special ids, lossless round trips, robust loading and saving."""

from __future__ import annotations

import io

import pytest
from conftest import MIRROR

from transformer_lib import data, tokenizer
from transformer_lib.tokenizer import Tokenizer, train_tokenizer

N_PAIRS = 2000  # Multi30k training pairs the module's tokenizer learns from (both languages)
VOCAB = 1000


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> list[str]:
    """German and English sentences of the first N_PAIRS training pairs, read through the offline mirror."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data.MIRROR_ENV, str(MIRROR))
        mp.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("tests must not use the network"))
        pairs = data.load_multi30k("train", cache=tmp_path_factory.mktemp("cache"))[:N_PAIRS]
    return [s for pair in pairs for s in pair]


@pytest.fixture(scope="module")
def tok(sentences) -> Tokenizer:
    return train_tokenizer(sentences, VOCAB)


def test_special_ids_are_the_course_ones(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert (tok.sp.pad_id(), tok.sp.bos_id(), tok.sp.eos_id(), tok.sp.unk_id()) == (0, 1, 2, 3)
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]


def test_vocab_size_is_respected(sentences, tok):
    assert tok.vocab_size == VOCAB
    ids = [i for s in sentences[:500] for i in tok.encode(s)]
    assert max(ids) < VOCAB and min(ids) >= 0
    assert train_tokenizer(sentences[:400], 300).vocab_size == 300


def test_round_trip_of_every_training_sentence(sentences, tok):
    # SentencePiece normalises runs of spaces to one (a handful of Multi30k captions have "  "),
    # otherwise decoding the encoding gives back the sentence exactly.
    assert any("ä" in s for s in sentences) and any("ß" in s for s in sentences)  # umlauts are really tested
    normalised = [" ".join(s.split()) for s in sentences]
    decoded = [tok.decode(ids) for ids in tok.encode_batch(sentences)]
    wrong = [(s, d) for s, d in zip(normalised, decoded) if s != d]
    assert not wrong, wrong[:3]


@pytest.mark.parametrize(
    "text",
    [
        "Ein Mädchen überquert die Straße.",
        "Zwei Männer, drei „Frauen“ lächeln; ein Kind!",
        "A dog's ball (red) - it's gone!",
    ],
)
def test_round_trip_of_umlauts_and_punctuation(sentences, tok, text):
    assert set(text) <= set("".join(sentences)), "every character occurs in the training text"
    ids = tok.encode(text)
    assert tok.unk_id not in ids, tok.pieces(text)
    assert tok.decode(ids) == text


def test_encode_has_no_special_tokens_and_batch_matches_single(sentences, tok):
    batch = tok.encode_batch(sentences[:50])
    assert batch == [tok.encode(s) for s in sentences[:50]]
    assert all(i not in (tok.pad_id, tok.bos_id, tok.eos_id) for ids in batch for i in ids)
    assert "".join(tok.pieces(sentences[0])).replace("▁", " ").strip() == " ".join(sentences[0].split())


def test_decode_drops_pad_bos_and_eos(tok):
    ids = tok.encode("Ein Hund rennt durch den Schnee.")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.pad_id]) == tok.decode(ids)
    assert tok.decode([tok.bos_id, tok.eos_id, tok.pad_id]) == ""


def test_unknown_characters_become_unk_without_crashing(tok):
    text = "Ein Hund 你好 rennt"
    ids = tok.encode(text)
    assert tok.unk_id in ids
    decoded = tok.decode(ids)
    assert decoded.startswith("Ein Hund") and decoded.endswith("rennt") and "⁇" in decoded


def test_training_is_deterministic(sentences):
    assert train_tokenizer(sentences[:400], 300).model_bytes == train_tokenizer(sentences[:400], 300).model_bytes


def test_unigram_model_type(sentences):
    uni = train_tokenizer(sentences[:400], 300, model_type="unigram")
    assert uni.vocab_size == 300 and uni.unk_id == 3
    assert uni.decode(uni.encode(sentences[0])) == " ".join(sentences[0].split())


def test_save_and_reload(tmp_path, tok, sentences):
    path = tok.save(tmp_path / "run" / "spm.model")  # creates the folder
    assert path == tmp_path / "run" / "spm.model" and path.read_bytes() == tok.model_bytes
    again = Tokenizer(path)
    assert again.encode_batch(sentences[:100]) == tok.encode_batch(sentences[:100])
    assert Tokenizer(str(path)).vocab_size == VOCAB  # a str path works too
    assert sorted(p.name for p in path.parent.iterdir()) == ["spm.model"], "no temporary file may stay behind"


def test_save_is_atomic_when_the_write_fails(tmp_path, tok, sentences, monkeypatch):
    path = tmp_path / "spm.model"
    old = train_tokenizer(sentences[:400], 300)
    old.save(path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        tok.save(path)
    assert path.read_bytes() == old.model_bytes, "the previous model must stay intact"
    assert [p.name for p in tmp_path.iterdir()] == ["spm.model"], "the temporary file must be removed"


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"spm\.model does not exist"):
        Tokenizer(tmp_path / "spm.model")


@pytest.mark.parametrize("payload", [b"", b"not a sentencepiece model", "truncated"])
def test_bad_model_bytes_are_a_clear_error(tmp_path, tok, payload):
    if payload == "truncated":
        payload = tok.model_bytes[: len(tok.model_bytes) // 2]
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        Tokenizer(payload)
    (tmp_path / "bad.model").write_bytes(payload)
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        Tokenizer(tmp_path / "bad.model")


def test_model_with_other_special_ids_is_rejected(sentences):
    spm = tokenizer._spm()
    model = io.BytesIO()  # SentencePiece's own defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences[:400]), model_writer=model, vocab_size=300, minloglevel=2
    )
    with pytest.raises(ValueError, match="the course expects"):
        Tokenizer(model.getvalue())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model_type="wordpiece"), "model_type must be 'bpe' or 'unigram'"),
        (dict(vocab_size=4), "vocab_size must be an integer of at least 8"),
        (dict(vocab_size=300.0), "vocab_size must be an integer"),
        (dict(vocab_size=True), "vocab_size must be an integer"),
        (dict(character_coverage=0.0), r"character_coverage must be in \(0, 1\]"),
        (dict(character_coverage=1.5), r"character_coverage must be in \(0, 1\]"),
    ],
)
def test_bad_arguments(sentences, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_tokenizer(sentences[:100], **{"vocab_size": 300, **kwargs})


def test_vocab_too_large_for_the_corpus_is_a_value_error():
    with pytest.raises(ValueError, match=r"vocab_size=5000 on 2 sentences: .*too high"):
        train_tokenizer(["Ein Hund.", "Zwei Katzen."], 5000)


def test_no_sentences(sentences):
    with pytest.raises(ValueError, match="no non-empty sentences"):
        train_tokenizer(["", "   ", "\n"], 300)
