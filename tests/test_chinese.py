"""Chapter 11, the Chinese track: the Tatoeba split, Chinese tokenization, the zh->en release and its CLI,
and the helpers of transformer_lib.chinese."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import MIRROR

from transformer_lib.checkpoint import CHECKPOINT_FORMAT, load_translator, save_checkpoint
from transformer_lib.chinese import (
    SEED_SENTENCES,
    add_seed_translations,
    cross_attention,
    find_cjk_font,
    load_tatoeba,
    plot_cross_attention,
    translate_seed_sentences,
    use_cjk_font,
)
from transformer_lib.cli import main
from transformer_lib.data import load_pairs
from transformer_lib.decode import make_decoder
from transformer_lib.evaluate import corpus_scores, translate
from transformer_lib.model import Transformer, TransformerConfig
from transformer_lib.multihead import MultiHeadAttention
from transformer_lib.tokenizer import Tokenizer, train_tokenizer
from transformer_lib.train import PRESETS, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "tatoeba_zh_en.json"
RELEASE = ROOT / "release" / "tatoeba_zh_en.pt"
RELEASE_LIMIT_BYTES = 25 * 1024 * 1024  # small enough to commit, and to download on Colab
ATTRIBUTION = re.compile(r"^CC-BY 2\.0 \(France\) Attribution: tatoeba\.org #\d+ \(.+\) & #\d+ \(.+\)$")
RARE = "龘"  # a real character (U+9F98) that does not occur in the Tatoeba training split


# --------------------------------------------------------------------------- the split


@pytest.fixture(scope="module")
def splits(offline) -> dict[str, list[tuple[str, str, str]]]:
    return {s: load_tatoeba(s) for s in ("train", "val", "test")}


def test_split_has_no_english_sentence_in_two_splits(splits):
    english = {s: {en for _, en, _ in t} for s, t in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not english[a] & english[b], f"English sentences in both {a} and {b}"
    # ... so every Chinese translation of an English sentence lies in that sentence's split.
    where = {en: s for s, t in splits.items() for _, en, _ in t}
    assert all(where[en] == s for s, t in splits.items() for _, en, _ in t)


def test_split_is_complete_and_deterministic(splits, offline):
    lines = [line for line in (MIRROR / "tatoeba" / "cmn-eng.txt").read_text("utf-8-sig").splitlines() if line.strip()]
    assert sum(len(t) for t in splits.values()) == len(lines), "every pair is in exactly one split"
    assert load_tatoeba("val") == splits["val"] and load_tatoeba("test") == splits["test"]
    other = load_tatoeba("test", seed=1)
    assert other != splits["test"], "the seed chooses the split"
    n_english = len({en for t in splits.values() for _, en, _ in t})
    assert len({en for _, en, _ in splits["test"]}) == round(0.05 * n_english)


def test_attribution_is_kept_on_every_pair(splits):
    bad = [t for triples in splits.values() for t in triples if not ATTRIBUTION.match(t[2])]
    assert not bad, f"{len(bad)} pairs lost their attribution, e.g. {bad[:1]}"


def test_training_pipeline_reads_chinese_to_english(splits):
    config = TrainConfig(dataset="tatoeba", src_lang="zh", tgt_lang="en", joint_vocab=False, share_embeddings=False)
    pairs = load_pairs(config.dataset, "test", config.src_lang, config.tgt_lang)
    assert pairs == [(zh, en) for zh, en, _ in splits["test"]]
    reverse = load_pairs("tatoeba", "test", "en", "zh")
    assert reverse == [(en, zh) for zh, en in pairs]


# --------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def zh_tok(splits) -> Tokenizer:
    """SentencePiece on the Chinese training sentences, as the tatoeba_cpu preset trains it."""
    return train_tokenizer([zh for zh, _, _ in splits["train"]], vocab_size=4000, character_coverage=0.9995)


def test_chinese_round_trips_up_to_nfkc(zh_tok, splits):
    # SentencePiece normalises with NFKC: full-width ！？，：；（） become ASCII; the rest comes back as it went in.
    checked = 0
    for zh, _, _ in splits["val"]:
        ids = zh_tok.encode(zh)
        if zh_tok.unk_id in ids:
            continue
        assert zh_tok.decode(ids) == unicodedata.normalize("NFKC", zh), zh
        checked += 1
    assert checked > 0.95 * len(splits["val"]), "almost every validation sentence should be fully covered"


@pytest.mark.parametrize("text", ["我爱你", "我欠他100W。", "他欠我100W", "Tom欠Mary三十元。", "我们在2024年见面了。"])
def test_nfkc_stable_text_round_trips_exactly(zh_tok, text):
    assert unicodedata.normalize("NFKC", text) == text
    assert zh_tok.encode(text).count(zh_tok.unk_id) == 0
    assert zh_tok.decode(zh_tok.encode(text)) == text


def test_full_width_punctuation_comes_back_as_ascii(zh_tok):
    assert zh_tok.decode(zh_tok.encode("你好！你呢？")) == "你好!你呢?"


def test_chinese_has_no_spaces_so_only_the_first_piece_starts_a_word(zh_tok):
    pieces = zh_tok.pieces("我欠他100W")
    assert pieces[0].startswith("▁") and not any(p.startswith("▁") for p in pieces[1:])
    assert "".join(pieces).lstrip("▁") == "我欠他100W"


def test_rare_character_becomes_unk(zh_tok, splits):
    assert RARE not in "".join(zh for zh, _, _ in splits["train"])
    ids = zh_tok.encode(f"我爱{RARE}。")
    assert ids.count(zh_tok.unk_id) == 1
    assert zh_tok.decode(ids) == "我爱 ⁇ 。", "the unknown character is written as ' ⁇ ' on the way back"


def test_character_coverage_leaves_the_rarest_characters_out(zh_tok, splits):
    counts = Counter(c for zh, _, _ in splits["train"] for c in zh)
    pieces = {zh_tok.sp.id_to_piece(i) for i in range(zh_tok.vocab_size)}
    # NFKC maps full-width forms to their ASCII twins, spaces become "▁" and format characters (U+200B) vanish:
    # only the other characters must have a piece of their own or become <unk>.
    printable = [c for c in counts if unicodedata.normalize("NFKC", c) == c and unicodedata.category(c)[0] not in "ZC"]
    missing = [c for c in printable if c not in pieces and f"▁{c}" not in pieces]
    assert missing, "coverage < 1 should leave some rare characters without a piece"
    assert all(zh_tok.unk_id in zh_tok.encode(c) for c in missing)
    assert max(counts[c] for c in missing) <= min(counts[c] for c in counts if c in pieces), "the rarest ones"


# --------------------------------------------------------------------------- the release


@pytest.fixture(scope="module")
def results() -> dict:
    if not RESULTS.is_file():
        pytest.fail(
            f"{RESULTS} is missing: run `python -m transformer_lib release` on the tatoeba_cpu run (see README)"
        )
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def test_results_describe_the_committed_release(results, splits):
    path = ROOT / results["checkpoint"]["path"]
    assert path == RELEASE and path.is_file()
    assert path.stat().st_size == results["checkpoint"]["bytes"] <= RELEASE_LIMIT_BYTES
    assert hashlib.sha256(path.read_bytes()).hexdigest() == results["checkpoint"]["sha256"]
    assert results["task"] == "tatoeba zh-en" and results["config"]["dataset"] == "tatoeba"
    assert results["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|")
    assert results["chrf_signature"].startswith("nrefs:1|")
    assert list(results["scores"]) == ["test"]
    for name in ("greedy", "beam"):
        scores = results["scores"]["test"][name]
        assert scores["sentences"] == len(splits["test"]), "the whole held-out test split is scored"
        assert 0 < scores["bleu"] <= 100 and 0 < scores["chrf"] <= 100
    for suffix in ("_log.jsonl", "_curves.png"):
        assert (RESULTS.parent / f"tatoeba_zh_en{suffix}").is_file()


def test_release_is_fp16_with_its_sentencepiece_models_beside_it(results):
    ckpt = torch.load(RELEASE, map_location="cpu", weights_only=True)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float16}
    model, src_tok, tgt_tok = load_translator(RELEASE)
    assert (src_tok.vocab_size, tgt_tok.vocab_size) == (model.config.src_vocab, model.config.tgt_vocab)
    assert RELEASE.with_suffix(".src.spm.model").read_bytes() == src_tok.model_bytes
    assert RELEASE.with_suffix(".tgt.spm.model").read_bytes() == tgt_tok.model_bytes
    assert not RELEASE.with_suffix(".spm.model").exists(), "separate vocabularies: no joint model file"


def test_seed_sentence_table_is_the_checkpoints_own(results):
    table = results["seed_sentences"]
    assert [r["chinese"] for r in table["rows"]] == [s.chinese for s in SEED_SENTENCES]
    model, src_tok, tgt_tok = load_translator(RELEASE)
    greedy = translate(model, src_tok, tgt_tok, [s.chinese for s in SEED_SENTENCES], decoder=make_decoder("greedy"))
    assert [r["greedy"] for r in table["rows"]] == greedy


def test_cli_translates_chinese_with_the_released_checkpoint(results):
    lines = "我爱你。\n\n他欠我钱。\n"
    out = subprocess.run(
        [sys.executable, "-m", "transformer_lib", "translate", "--checkpoint", str(RELEASE), "--beam", "4"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    translations = out.stdout.split("\n")[:3]
    assert translations[1] == "", "an empty input line must stay empty"
    assert "love" in translations[0].lower(), f"我爱你 should be about love: {translations[0]!r}"
    assert translations[2] and not re.search(r"[\u4e00-\u9fff]", translations[2]), translations[2]


# --------------------------------------------------------------------------- release of a tatoeba run (CLI)


@pytest.fixture(scope="module")
def tiny_run(offline, tmp_path_factory) -> Path:
    config = TrainConfig(
        name="zh-test",
        dataset="tatoeba",
        src_lang="zh",
        tgt_lang="en",
        joint_vocab=False,
        share_embeddings=False,
        train_limit=3000,
        valid_limit=20,
        vocab_size=1200,
        character_coverage=0.995,
        N=1,
        d_model=16,
        d_ff=32,
        h=2,
        max_tokens=600,
        warmup=10,
        max_steps=4,
        log_every=2,
        eval_every=4,
        save_every=2,
    )
    out = tmp_path_factory.mktemp("zh_run")
    train(config, out, progress=False, device="cpu")
    return out


def test_release_of_a_tatoeba_run_scores_its_test_split(tiny_run, tmp_path, splits, capsys):
    out, res = tmp_path / "rel" / "zh.pt", tmp_path / "res" / "zh.json"
    args = [
        "release",
        "--run",
        tiny_run,
        "--out",
        out,
        "--results",
        res,
        "--average",
        "2",
        "--choose-on",
        "20",
        "--beam",
        "2",
        "--command-line",
        "test",
    ]
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    results = json.loads(res.read_text(encoding="utf-8"))
    assert results["task"] == "tatoeba zh-en" and list(results["scores"]) == ["test"]
    assert results["scores"]["test"]["greedy"]["sentences"] == len(splits["test"])
    assert "tok:13a" in results["bleu_signature"] and results["bleu_signature"] in printed
    assert results["checkpoint"]["validation_sentences"] == 20
    assert len(results["checkpoint"]["averaged_steps"]) == results["checkpoint"]["averaged_checkpoints"]
    assert {p.name for p in out.parent.iterdir()} == {"zh.pt", "zh.src.spm.model", "zh.tgt.spm.model"}
    assert {p.name for p in res.parent.iterdir()} == {"zh.json", "zh_log.jsonl", "zh_curves.png"}


def test_evaluate_scores_the_checkpoints_own_corpus(tiny_run, splits, capsys):
    assert (
        main(["evaluate", "--checkpoint", str(tiny_run / "checkpoint_last.pt"), "--split", "val", "--beam", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "decoding: greedy search" in out and re.search(r"^val: BLEU [\d.]+  chrF [\d.]+$", out, flags=re.M)
    assert "BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a" in out
    assert main(["evaluate", "--checkpoint", str(tiny_run / "checkpoint_last.pt"), "--split", "test_2016_flickr"]) == 2
    assert "unknown Tatoeba split 'test_2016_flickr'" in capsys.readouterr().err


def test_bleu_tokenizer_follows_the_output_language():
    assert "tok:zh" in corpus_scores(["我爱你。"], ["我爱你。"], tokenize="zh")["bleu_signature"]
    assert "tok:13a" in corpus_scores(["I love you."], ["I love you."])["bleu_signature"]


# --------------------------------------------------------------------------- the chinese module


@pytest.fixture(scope="module")
def tiny_translator(splits, zh_tok) -> tuple[Transformer, Tokenizer, Tokenizer]:
    """An untrained model with real Chinese and English tokenizers (the helpers do not need a good model)."""
    en_tok = train_tokenizer([en for _, en, _ in splits["train"][:5000]], vocab_size=500)
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(
            zh_tok.vocab_size, en_tok.vocab_size, N=2, d_model=32, d_ff=64, h=4, share_embeddings=False, fused=True
        )
    )
    return model.eval(), zh_tok, en_tok


def test_seed_sentences_are_the_articles_examples():
    by_chinese = {s.chinese: s for s in SEED_SENTENCES}
    assert by_chinese["我爱你"].english == "I love you."
    a, b = by_chinese["我欠他100W"], by_chinese["他欠我100W"]
    assert sorted(a.chinese) == sorted(b.chinese) and a.chinese != b.chinese, "same characters, other order"
    assert a.english != b.english
    assert all(s.origin and s.english for s in SEED_SENTENCES)


def test_translate_seed_sentences_matches_translate(tiny_translator):
    model, src_tok, tgt_tok = tiny_translator
    seeds = SEED_SENTENCES[:3]
    rows = translate_seed_sentences(model, src_tok, tgt_tok, seeds, beam_size=2)
    assert [r["chinese"] for r in rows] == [s.chinese for s in seeds]
    beam = translate(model, src_tok, tgt_tok, [s.chinese for s in seeds], decoder=make_decoder("beam", beam_size=2))
    assert [r["beam"] for r in rows] == beam
    assert all(r["pieces"] == src_tok.pieces(r["chinese"]) and r["unknown"] == 0 for r in rows)
    with pytest.raises(ValueError, match="no seed sentences"):
        translate_seed_sentences(model, src_tok, tgt_tok, ())


def test_cross_attention_rows_are_distributions_over_the_source(tiny_translator):
    model, src_tok, tgt_tok = tiny_translator
    amap = cross_attention(model, src_tok, tgt_tok, "我欠他100W", max_extra_len=6)
    n_src, n_out = len(src_tok.encode("我欠他100W")), len(amap.output_pieces)
    assert amap.source_pieces == src_tok.pieces("我欠他100W")
    assert amap.weights.shape == (2, 4, n_out, n_src)  # (layers, heads, output_len, source_len)
    torch.testing.assert_close(amap.weights.sum(-1), torch.ones(2, 4, n_out))
    greedy = translate(model, src_tok, tgt_tok, ["我欠他100W"], max_extra_len=6)
    assert amap.translation == greedy[0]
    assert all(m.fused for m in model.modules() if isinstance(m, MultiHeadAttention)), "fused kernels restored"


def test_cross_attention_and_plot_reject_bad_input(tiny_translator):
    model, src_tok, tgt_tok = tiny_translator
    with pytest.raises(ValueError, match="empty sentence"):
        cross_attention(model, src_tok, tgt_tok, "  ")
    amap = cross_attention(model, src_tok, tgt_tok, "他爱我", max_extra_len=3)
    with pytest.raises(ValueError, match="layer must be in"):
        plot_cross_attention(amap, layer=5)
    with pytest.raises(ValueError, match="head must be None"):
        plot_cross_attention(amap, head=4)


def test_plot_labels_axes_with_the_pieces(tiny_translator):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, src_tok, tgt_tok = tiny_translator
    amap = cross_attention(model, src_tok, tgt_tok, "我爱你", max_extra_len=3)
    ax = plot_cross_attention(amap, head=1)
    assert [t.get_text() for t in ax.get_xticklabels()] == amap.source_pieces
    assert [t.get_text() for t in ax.get_yticklabels()] == amap.output_pieces
    assert ax.images[0].get_array().shape == (len(amap.output_pieces), len(amap.source_pieces))
    plt.close("all")


def _glyph_warnings(draw) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw()
    return [str(w.message) for w in caught if "missing from" in str(w.message)]


def test_without_a_cjk_font_glyph_warnings_are_silenced():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw() -> None:
        fig, ax = plt.subplots()
        ax.set_title("我爱你")
        fig.canvas.draw()
        plt.close(fig)

    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
        assert _glyph_warnings(draw), "DejaVu Sans has no Chinese glyphs: matplotlib warns"

        def silenced() -> None:
            assert use_cjk_font(("No Such Font Family",)) is None
            draw()

        assert _glyph_warnings(silenced) == []


def test_a_found_cjk_font_draws_chinese():
    from matplotlib import font_manager

    family = find_cjk_font()
    if family is None:
        pytest.skip("no CJK font installed here (Debian/Ubuntu: apt-get install fonts-noto-cjk)")
    font = font_manager.get_font(
        font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    )
    assert all(font.get_char_index(ord(c)) for c in "我爱你欠他")
    assert find_cjk_font(("No Such Font Family",), scan=False) is None


def test_add_seed_translations_checks_the_checkpoint_and_writes_the_table(tiny_translator, tmp_path):
    model, src_tok, tgt_tok = tiny_translator
    ckpt = save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "model_config": dataclasses.asdict(model.config),
            "model": model.state_dict(),
            "tokenizers": {"src": src_tok.model_bytes, "tgt": tgt_tok.model_bytes},
        },
        tmp_path / "m.pt",
    )
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"checkpoint": {"sha256": "0" * 64}}), encoding="utf-8")
    with pytest.raises(ValueError, match="SHA-256 of the checkpoint differs"):
        add_seed_translations(ckpt, results)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    results.write_text(json.dumps({"checkpoint": {"sha256": sha}, "task": "x"}), encoding="utf-8")
    rows = add_seed_translations(ckpt, results, beam_size=2)
    written = json.loads(results.read_text(encoding="utf-8"))
    assert written["task"] == "x" and written["seed_sentences"]["rows"] == rows
    assert written["seed_sentences"]["beam_size"] == 2 and len(rows) == len(SEED_SENTENCES)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


# --------------------------------------------------------------------------- coverage per side (issue 16)


def test_the_english_side_keeps_every_character_while_chinese_drops_the_rarest(offline):
    """tatoeba_cpu: coverage < 1 for Chinese only, so no English digit or symbol can decode as ⁇."""
    from transformer_lib.train import prepare_data

    preset = PRESETS["tatoeba_cpu"]
    assert preset.character_coverage < 1.0 and preset.tgt_character_coverage == 1.0
    config = dataclasses.replace(preset, train_limit=10000, valid_limit=10, vocab_size=2000)
    data = prepare_data(config)
    english = {ch for _, en in load_pairs("tatoeba", "train", "zh", "en")[:10000] for ch in en if not ch.isspace()}
    chinese = {ch for zh, _ in load_pairs("tatoeba", "train", "zh", "en")[:10000] for ch in zh if not ch.isspace()}
    assert all(data.tgt_tok.unk_id not in data.tgt_tok.encode(ch) for ch in english)
    assert any(data.src_tok.unk_id in data.src_tok.encode(ch) for ch in chinese), "the rarest Chinese characters"


def test_a_config_from_before_the_target_coverage_field_keeps_its_meaning():
    """Old checkpoints applied character_coverage to both vocabularies; from_dict says so."""
    old = dataclasses.asdict(PRESETS["tatoeba_cpu"])
    del old["tgt_character_coverage"]
    assert TrainConfig.from_dict(old).tgt_character_coverage == old["character_coverage"]
    joint = dataclasses.asdict(TrainConfig())
    del joint["tgt_character_coverage"]
    assert TrainConfig.from_dict(joint).tgt_character_coverage == 1.0


def test_a_target_coverage_needs_a_separate_target_vocabulary():
    with pytest.raises(ValueError, match="tgt_character_coverage needs joint_vocab=False"):
        TrainConfig(tgt_character_coverage=0.99)
    with pytest.raises(ValueError, match=r"tgt_character_coverage must be in \(0, 1\]"):
        TrainConfig(joint_vocab=False, share_embeddings=False, tgt_character_coverage=0.0)
