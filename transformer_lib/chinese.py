"""Chapter 12 — the Chinese track: the source articles' own examples, translated.

The source articles explain the Transformer with Chinese sentences ("我爱你" → "I love you",
"我欠他100W" versus "他欠我100W"). This module holds what chapter 12 needs to translate them with a
model trained on Tatoeba's Mandarin–English pairs:

* ``TATOEBA_FILE`` / ``load_tatoeba``: the corpus, split by distinct English sentence; importing
  this module registers it as the corpus ``"tatoeba"`` (``data.CORPORA``) and adds the training
  preset ``PRESETS["tatoeba_cpu"]``;
* ``SEED_SENTENCES``: the articles' sentences (and a few variants), with reference translations;
* ``translate_seed_sentences``: their greedy and beam-search translations by a trained model;
* ``cross_attention``: the cross-attention weights of every decoder layer and head while the model
  writes its translation of one sentence, and ``plot_cross_attention`` to draw them;
* ``find_cjk_font`` / ``use_cjk_font``: a matplotlib font with Chinese glyphs, when one is installed
  (Debian/Ubuntu: ``apt-get install fonts-noto-cjk``), so that Chinese labels are readable.

``add_seed_translations(checkpoint, results)`` adds the seed-sentence table of a released checkpoint
to the results JSON that ``python -m transformer_lib release`` wrote for it.
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from .checkpoint import load_translator
from .data import Corpus, DataError, RemoteFile, fetch, register_corpus
from .decode import make_decoder
from .evaluate import translate
from .masks import causal_mask, padding_mask
from .model import Transformer
from .multihead import keep_attention_weights
from .tokenizer import Tokenizer
from .train import PRESETS, TrainConfig
from .utils import sha256_file, write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "TATOEBA_FILE",
    "load_tatoeba",
    "SeedSentence",
    "SEED_SENTENCES",
    "CJK_FONT_FAMILIES",
    "find_cjk_font",
    "use_cjk_font",
    "translate_seed_sentences",
    "AttentionMap",
    "cross_attention",
    "plot_cross_attention",
    "add_seed_translations",
]


TATOEBA_FILE = RemoteFile(
    "tatoeba",
    "cmn-eng.txt",
    "https://raw.githubusercontent.com/13luoyu/Transformer-machine-translation/"
    "aa43963320ccfacebd1d3542deae559bbca58d03/cmn.txt",
    "aa264a2447b26ab7c9d413f8321f9e2a779fd134b5118306b6e26a3499b3926e",
)


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


def _tatoeba_pairs(split: str, src_lang: str, tgt_lang: str) -> list[tuple[str, str]]:
    triples = load_tatoeba(split)  # (chinese, english, attribution)
    return [(zh, en) for zh, en, _ in triples] if src_lang == "zh" else [(en, zh) for zh, en, _ in triples]


register_corpus(Corpus("tatoeba", ("zh", "en"), ("test",), _tatoeba_pairs))

# Chinese -> English on Tatoeba: short sentences, so a small model on CPU. Chinese and English get
# their own SentencePiece models (few shared pieces, so no shared embeddings); character_coverage < 1
# maps the rarest Chinese characters to <unk> instead of the vocabulary, while the English side keeps
# every character (tgt_character_coverage=1.0): a digit or symbol it dropped would come out as ⁇.
PRESETS["tatoeba_cpu"] = TrainConfig(
    name="tatoeba_cpu",
    dataset="tatoeba",
    src_lang="zh",
    tgt_lang="en",
    vocab_size=4000,
    joint_vocab=False,
    share_embeddings=False,
    character_coverage=0.9995,
    tgt_character_coverage=1.0,
    N=3,
    d_model=256,
    d_ff=1024,
    h=4,
    dropout=0.2,
    max_tokens=3000,
    warmup=400,
    lr_factor=0.5,
    max_steps=3600,
    max_minutes=100,
    eval_every=300,
    save_every=150,
)


@dataclass(frozen=True)
class SeedSentence:
    """A Chinese sentence of the source articles, a reference English translation, and where it comes from."""

    chinese: str
    english: str
    origin: str


# Written as the articles write them: no final "。" (Tatoeba's sentences all end with punctuation).
# The article numbers are those of the book's Further reading page. The English references are ours.
SEED_SENTENCES: tuple[SeedSentence, ...] = (
    SeedSentence(
        "我爱你",
        "I love you.",
        "article 4: the running example (the article's model reads I LOVE YOU and writes 我爱你; ours goes zh→en)",
    ),
    SeedSentence("我欠他100W", "I owe him a million.", "article 4: word order matters (W = 万, ten thousand)"),
    SeedSentence("他欠我100W", "He owes me a million.", "article 4: the same characters in another order"),
    SeedSentence("我欠他一百万", "I owe him a million.", "variant: 100W written out in standard Chinese"),
    SeedSentence("他欠我一百万", "He owes me a million.", "variant: 100W written out in standard Chinese"),
    SeedSentence(
        "他爱我", "He loves me.", "variant: other subject and object than 我爱你, as article 4 swaps 我 and 他 in 100W"
    ),
    SeedSentence(
        "注意力就是你所需要的一切", "Attention is all you need.", "the paper's title, cited by articles 2 and 5"
    ),
)

# Families with Chinese glyphs, most wanted first: Noto/Source Han (Linux), then Windows and macOS fonts.
CJK_FONT_FAMILIES: tuple[str, ...] = (
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "Noto Sans SC",
    "Noto Serif CJK SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Heiti SC",
    "Hiragino Sans GB",
    "Arial Unicode MS",
)
# File names of such fonts, for fonts installed after matplotlib built its font cache.
_CJK_FILE = re.compile(
    r"cjk|sourcehan|notosanssc|wqy|wenquanyi|droidsansfallback|uming|ukai|msyh|simhei|pingfang", re.I
)
# matplotlib's warning for a character that no font in the family list can draw.
_GLYPH_WARNING = r"Glyph \d+ .* missing from (current )?font"


def find_cjk_font(candidates: tuple[str, ...] = CJK_FONT_FAMILIES, scan: bool = True) -> str | None:
    """The first family of ``candidates`` that matplotlib can use, or ``None`` if none is installed.

    With ``scan``, font files on the system whose names look like CJK fonts are registered with
    matplotlib first (its font list is cached, so fonts installed later are otherwise unseen).
    """
    from matplotlib import font_manager

    def known() -> set[str]:
        return {f.name for f in font_manager.fontManager.ttflist}

    found = next((family for family in candidates if family in known()), None)
    if found is None and scan:
        for path in font_manager.findSystemFonts():
            if _CJK_FILE.search(Path(path).name):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it
                    continue
        found = next((family for family in candidates if family in known()), None)
    return found


def use_cjk_font(candidates: tuple[str, ...] = CJK_FONT_FAMILIES) -> str | None:
    """Let matplotlib draw Chinese characters; returns the CJK family used, or ``None``.

    The CJK family is appended to ``rcParams["font.family"]``: Latin text keeps the current font
    and matplotlib falls back to the CJK font for the characters the first one lacks. Without a
    CJK font, Chinese characters are drawn as empty boxes; the "Glyph ... missing" warnings that
    matplotlib would print for each of them are silenced, and ``None`` tells the caller to say so.
    """
    import matplotlib.pyplot as plt

    family = find_cjk_font(candidates)
    if family is None:
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
        return None
    current = plt.rcParams["font.family"]
    current = [current] if isinstance(current, str) else list(current)
    if family not in current:
        plt.rcParams["font.family"] = current + [family]
    return family


def translate_seed_sentences(
    model: Transformer,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    seeds: tuple[SeedSentence, ...] = SEED_SENTENCES,
    beam_size: int = 4,
    length_penalty: float = 0.6,
) -> list[dict]:
    """Greedy and beam-search translations of ``seeds``, one dict per sentence.

    Keys: ``chinese``, ``reference``, ``origin``, ``pieces`` (the source's SentencePiece pieces),
    ``unknown`` (how many of them are ``<unk>``), ``greedy`` and ``beam``.
    """
    if not seeds:
        raise ValueError("no seed sentences to translate")
    sources = [s.chinese for s in seeds]
    outputs = {
        "greedy": translate(model, src_tok, tgt_tok, sources, decoder=make_decoder("greedy")),
        "beam": translate(
            model,
            src_tok,
            tgt_tok,
            sources,
            decoder=make_decoder("beam", beam_size=beam_size, length_penalty=length_penalty),
        ),
    }
    return [
        {
            "chinese": s.chinese,
            "reference": s.english,
            "origin": s.origin,
            "pieces": src_tok.pieces(s.chinese),
            "unknown": src_tok.encode(s.chinese).count(src_tok.unk_id),
            "greedy": outputs["greedy"][i],
            "beam": outputs["beam"][i],
        }
        for i, s in enumerate(seeds)
    ]


@dataclass
class AttentionMap:
    """The cross-attention of one translation: which source pieces each output piece read.

    ``weights`` is ``(layers, heads, output_len, source_len)``; row ``t`` belongs to the decoder
    position that produced ``output_pieces[t]`` (the last one is ``</s>``, the end of sentence,
    unless the output was cut at the length limit). Each row sums to 1 over the source pieces.
    """

    sentence: str
    translation: str
    source_pieces: list[str]
    output_pieces: list[str]
    weights: Tensor


@torch.no_grad()
def cross_attention(
    model: Transformer,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    sentence: str,
    decoder: Callable | None = None,
    max_extra_len: int = 50,
) -> AttentionMap:
    """Translate ``sentence`` and record the cross-attention of every decoder layer and head.

    The translation comes from ``decoder`` (a ``make_decoder`` callable; greedy search by default).
    One teacher-forced pass over the source and that output, with the attention weights kept,
    then gives the maps: exactly what the decoder attended to while it produced each piece.
    """
    if not sentence.strip():
        raise ValueError("cannot show the attention of an empty sentence")
    model.eval()
    device = next(model.parameters()).device
    ids = src_tok.encode(sentence)[: model.config.max_len]
    src = torch.tensor([ids], device=device)  # (1, src_len): one sentence, no padding
    src_mask = padding_mask(src, src_tok.pad_id)  # (1, 1, 1, src_len)
    decoder = decoder or make_decoder("greedy", bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id, pad_id=tgt_tok.pad_id)
    ys = decoder(model, src, src_mask, len(ids) + max_extra_len)[:1]  # (1, len): <bos> y1 ... <eos> [pad ...]
    out = ys[0, 1:].tolist()
    if tgt_tok.eos_id in out:
        out = out[: out.index(tgt_tok.eos_id) + 1]  # up to and including <eos>
    ys = ys[:, : len(out) + 1]  # (1, 1 + output_len)
    with keep_attention_weights(model):
        model(src, ys[:, :-1], src_mask, causal_mask(ys.size(1) - 1, device=device))  # teacher-forced
        weights = torch.stack([layer.cross_attn.attn_weights[0] for layer in model.decoder.layers])
    return AttentionMap(
        sentence=sentence,
        translation=tgt_tok.decode(out),
        source_pieces=[src_tok.sp.id_to_piece(i) for i in ids],
        output_pieces=[tgt_tok.sp.id_to_piece(i) for i in out],
        weights=weights.cpu(),  # (layers, heads, output_len, source_len)
    )


def plot_cross_attention(
    amap: AttentionMap, ax: "Axes | None" = None, layer: int = -1, head: int | None = None, title: str | None = None
) -> "Axes":
    """Draw one layer's cross-attention of ``amap`` (the mean of its heads, or one ``head``) on ``ax``.

    Columns are the source pieces, rows the output pieces; call ``use_cjk_font()`` first for
    readable Chinese labels. Returns the axes.
    """
    import matplotlib.pyplot as plt

    layers, heads = amap.weights.shape[:2]
    if not -layers <= layer < layers:
        raise ValueError(f"layer must be in [{-layers}, {layers}), got {layer}")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head must be None (the mean) or in [0, {heads}), got {head}")
    weights = amap.weights[layer]  # (heads, output_len, source_len)
    weights = weights.mean(0) if head is None else weights[head]  # (output_len, source_len)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.55 * len(amap.source_pieces), 1.0 + 0.4 * len(amap.output_pieces)))
    ax.imshow(weights.numpy(), vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(amap.source_pieces)), amap.source_pieces)
    ax.set_yticks(range(len(amap.output_pieces)), amap.output_pieces)
    ax.grid(False)
    which = "mean of heads" if head is None else f"head {head}"
    ax.set(title=title or f"layer {layer % layers}, {which}", xlabel="source pieces", ylabel="output pieces")
    return ax


def add_seed_translations(
    checkpoint: str | os.PathLike, results: str | os.PathLike, beam_size: int = 4, length_penalty: float = 0.6
) -> list[dict]:
    """Translate ``SEED_SENTENCES`` with ``checkpoint`` and store the table in the results JSON ``results``.

    ``results`` is the file written by ``python -m transformer_lib release`` for that checkpoint
    (checked by its SHA-256); the table goes under ``"seed_sentences"`` and the file is rewritten
    atomically. Returns the rows (see ``translate_seed_sentences``).
    """
    results_path = Path(results)
    data = json.loads(results_path.read_text(encoding="utf-8"))
    if data.get("checkpoint", {}).get("sha256") != sha256_file(checkpoint):
        raise ValueError(f"{results_path} does not describe {checkpoint}: the SHA-256 of the checkpoint differs")
    model, src_tok, tgt_tok = load_translator(checkpoint)
    rows = translate_seed_sentences(model, src_tok, tgt_tok, beam_size=beam_size, length_penalty=length_penalty)
    data["seed_sentences"] = {"beam_size": beam_size, "length_penalty": length_penalty, "rows": rows}
    write_atomic(results_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")  # never half-written
    return rows
