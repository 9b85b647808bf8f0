"""Chapter 12 exercises — the Chinese track.

* ``12.character_coverage`` — the characters SentencePiece keeps for a ``character_coverage`` c, given the
  character counts of a training text (``kept_characters``);
* ``12.cross_attention_map`` — one decoder layer's cross-attention for every sentence of a padded batch:
  an (output pieces × source pieces) map per sentence, heads averaged, padding removed
  (``cross_attention_maps``; the library's ``chinese.cross_attention`` keeps every layer and head for one
  sentence that it translates itself).

Oracles: for the coverage, the rule transcribed from SentencePiece's trainer (``kept_reference``) on hand-made
counts, and SentencePiece itself: the single-character pieces of a vocabulary that chapter 8's
``train_tokenizer(..., character_coverage=c)`` trains on a small text are exactly the characters it kept.
For the maps, the weights a small seeded Transformer keeps (``multihead.keep_attention_weights``) in one
teacher-forced pass of its own; the hidden tests also recompute them from the queries and keys that reach
the cross-attention.
"""

from __future__ import annotations

import copy
import functools
import random
from collections import Counter
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.model import Transformer, make_model
from transformer_lib.multihead import MultiHeadAttention, keep_attention_weights
from transformer_lib.tokenizer import train_tokenizer

from .ch08 import PAD, STEP_SRC_VOCAB, STEP_TGT_VOCAB, step_batch
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register

# --------------------------------------------------------------------------- 12.character_coverage

coverage = register(
    Exercise("12.character_coverage", "Which characters a coverage keeps", target="kept_characters", timeout_s=30)
)

SPACE = "▁"  # SentencePiece's whitespace symbol: spaces become it, and every sentence starts with one


def kept_reference(counts: dict[str, int], coverage: float) -> list[str]:
    """The oracle: SentencePiece's rule. Most frequent first (ties: smaller code point first); before taking a
    character, stop if those taken so far cover a share >= ``coverage`` of all occurrences."""
    total = sum(counts.values())
    kept, covered = [], 0
    for char in sorted(counts, key=lambda c: (-counts[c], c)):
        if covered / total >= coverage:
            break
        kept.append(char)
        covered += counts[char]
    return kept


def spm_counts(sentences: Sequence[str]) -> Counter:
    """The character counts SentencePiece sees: runs of spaces become one ``▁``, and each sentence starts with one.

    (Its NFKC normalisation changes none of the characters the corpora below use.)
    """
    counts: Counter = Counter()
    for sentence in sentences:
        counts.update(SPACE + SPACE.join(sentence.split()))
    return counts


@functools.lru_cache(maxsize=None)
def spm_kept(corpus: str, coverage: float) -> frozenset[str]:
    """The characters SentencePiece keeps: the one-character pieces of a BPE vocabulary trained on ``corpus``."""
    sentences = CORPORA[corpus]()
    vocab_size = len(spm_counts(sentences)) + 4 + 16  # every character, the 4 special pieces, a few merges
    tok = train_tokenizer(sentences, vocab_size, character_coverage=coverage)
    sp = tok.sp
    pieces = [sp.id_to_piece(i) for i in range(tok.vocab_size) if not (sp.is_control(i) or sp.is_unknown(i))]
    return frozenset(p for p in pieces if len(p) == 1)


ENGLISH_WORDS = (
    "you he she we they the a an book dog cat car house is was very good big small old new here there today now "
    "go went home school eat ate rice tea coffee my your his her friend money owe owes me him love loves know "
    "can help please come back soon why what where when like likes want wants to with and not at this that"
).split()
NAMES = ("Tom", "Mary", "I")


@functools.lru_cache(maxsize=None)
def english_corpus(seed: int = 0, sentences: int = 500) -> tuple[str, ...]:
    """Short English sentences, capitalised and punctuated; about one in 33 has a number (the rare digits)."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(NAMES)] + [rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(2, 6))]
        number = rng.random()
        if number < 0.015:
            words += ["at", f"{rng.randint(1, 12)}:{rng.randint(10, 59)}"]
        elif number < 0.03:
            words += [str(rng.randint(2, 99)), "dollars"]
        out.append(" ".join(words) + rng.choice(".?!"))
    return tuple(out)


# CJK unified ideographs (unchanged by NFKC), Zipf-distributed as characters in real text are.
HANZI = tuple(chr(0x4E00 + 61 * i) for i in range(300))


@functools.lru_cache(maxsize=None)
def chinese_corpus(seed: int = 0, sentences: int = 400) -> tuple[str, ...]:
    """Sentences of 4-12 ideographs without spaces, most ending with 。; many characters seen only once."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(HANZI))]
    out = []
    for _ in range(sentences):
        text = "".join(rng.choices(HANZI, weights, k=rng.randint(4, 12)))
        out.append(text + ("。" if rng.random() < 0.8 else ""))
    return tuple(out)


CORPORA: dict[str, Callable[[], tuple[str, ...]]] = {
    "English": english_corpus,
    "Chinese-like": chinese_corpus,
    "English (seed 1)": functools.partial(english_corpus, 1, 700),
    "Chinese-like (seed 1)": functools.partial(chinese_corpus, 1, 600),
}


def _share_after(counts: dict[str, int], kept: list[str]) -> float:
    return sum(counts[c] for c in kept) / sum(counts.values())


def _prefix(order: list[str], stop: Callable[[int], bool]) -> list[str]:
    """``order[:k]`` for the smallest ``k`` with ``stop(k)`` (the whole of ``order`` if there is none)."""
    return order[: next((k for k in range(len(order) + 1) if stop(k)), len(order))]


def _coverage_hint(out: list[str], counts: dict[str, int], coverage: float) -> str:
    """Name the known slip that ``out`` equals (or '')."""
    order = sorted(counts, key=lambda c: (-counts[c], c))
    total = sum(counts.values())

    def share(k: int) -> float:  # of the occurrences, covered by the k most frequent characters
        return sum(counts[c] for c in order[:k]) / total

    variants = {
        "the share is counted in distinct characters (k / number of characters), not in occurrences": _prefix(
            order, lambda k: k / len(order) >= coverage
        ),
        "the list goes on one character after the share of occurrences has reached c (> instead of >=)": _prefix(
            order, lambda k: share(k) > coverage
        ),
        "the list stops before the character that makes the share reach c (that one is kept too)": _prefix(
            order, lambda k: share(k + 1) >= coverage
        ),
    }
    for message, value in variants.items():
        if out == value and value != kept_reference(counts, coverage):
            return f" — {message}"
    return ""


def _kept(kept_characters: Any, counts: dict[str, int], coverage: float) -> list[str]:
    """The learner's list, checked for type: characters of ``counts``, each once."""
    out = kept_characters(dict(counts), coverage)
    expect_type(out, (list, tuple), "kept_characters' result (the kept characters, in the order they are taken)")
    out = list(out)
    expect(
        all(isinstance(c, str) and len(c) == 1 for c in out),
        "kept_characters should return characters (strings of length 1)",
    )
    expect(len(set(out)) == len(out), "a character appears more than once in the list")
    unknown = [c for c in out if c not in counts]
    expect(not unknown, f"{len(unknown)} returned character(s) are not in the counts")
    return out


def _expect_kept(out: list[str], expected: Sequence[str], counts: dict[str, int], coverage: float, what: str) -> None:
    """``out`` must equal ``expected`` (in order); the message says how it differs, never what it should be."""
    expected = list(expected)
    if out == expected:
        return
    hint = _coverage_hint(out, counts, coverage)
    if set(out) == set(expected):
        k = next(i for i, (a, b) in enumerate(zip(out, expected)) if a != b)
        raise Mismatch(
            f"{what}: the right characters, in another order: position {k} holds a character seen "
            f"{counts[out[k]]} time(s), the rule takes one seen {counts[expected[k]]} time(s) there"
            + (
                " (equal counts go in code-point order, the smaller first)"
                if counts[out[k]] == counts[expected[k]]
                else ""
            )
        )
    extra, missing = set(out) - set(expected), set(expected) - set(out)
    if sorted(counts[c] for c in out) == sorted(counts[c] for c in expected):
        raise Mismatch(
            f"{what}: the right number of characters with the right counts, but among characters of equal count "
            f"{len(extra)} of yours are not the ones the rule takes (code-point order, the smaller first)"
        )
    raise Mismatch(
        f"{what}: your {len(out)} characters cover {_share_after(counts, out):.4%} of the occurrences; "
        f"{len(extra)} of them should be left out, and {len(missing)} character(s) you left out should be kept{hint}"
    )


@coverage.test("returns a list of the counts' characters, each once")
def _(kept_characters: Any) -> None:
    _kept(kept_characters, {"a": 5, "b": 3, "c": 2}, 0.7)


@coverage.test("counts occurrences, not distinct characters", points=2)
def _(kept_characters: Any) -> None:
    counts = {"e": 90, "t": 5, "q": 3, "x": 1, "z": 1}  # 100 occurrences, 90 % of them one character
    for c in (0.5, 0.9, 0.95):
        _expect_kept(_kept(kept_characters, counts, c), kept_reference(counts, c), counts, c, f"coverage {c}")


@coverage.test("the threshold: stop as soon as the share reaches c (reaching it exactly counts)", points=2)
def _(kept_characters: Any) -> None:
    counts = {"的": 8, "我": 4, "你": 2, "爱": 1, "他": 1}  # 16 occurrences: every share is exact in floating point
    for c in (0.5, 0.7, 0.75, 0.8, 0.875):
        _expect_kept(_kept(kept_characters, counts, c), kept_reference(counts, c), counts, c, f"coverage {c}")


@coverage.test("equal counts are taken in code-point order, the smaller first")
def _(kept_characters: Any) -> None:
    counts = {"x": 3, "b": 3, "我": 3, "a": 3, "z": 1}  # listed out of order on purpose
    for c in (0.2, 0.5, 0.7):
        _expect_kept(_kept(kept_characters, counts, c), kept_reference(counts, c), counts, c, f"coverage {c}")


@coverage.test("coverage 1.0 keeps every character, even one seen once")
def _(kept_characters: Any) -> None:
    counts = spm_counts(chinese_corpus())
    out = _kept(kept_characters, counts, 1.0)
    _expect_kept(out, kept_reference(counts, 1.0), counts, 1.0, "coverage 1.0 on a Chinese-like text")


def _expect_spm(kept_characters: Any, corpus: str, c: float) -> list[str]:
    counts = spm_counts(CORPORA[corpus]())
    out = _kept(kept_characters, counts, c)
    theirs = spm_kept(corpus, c)
    if set(out) != theirs:
        extra, missing = set(out) - theirs, theirs - set(out)
        digits = sum(ch.isdigit() for ch in extra)
        raise Mismatch(
            f"{corpus} text, coverage {c}: SentencePiece leaves out {len(extra)} of your characters"
            + (f" ({digits} of them digits)" if digits else "")
            + f" and keeps {len(missing)} that you leave out{_coverage_hint(out, counts, c)}"
        )
    _expect_kept(out, kept_reference(counts, c), counts, c, f"{corpus} text, coverage {c}")
    return out


@coverage.test("English text at 0.9995: the rare digits are left out, as SentencePiece leaves them out", points=2)
def _(kept_characters: Any) -> None:
    _expect_spm(kept_characters, "English", 0.9995)


@coverage.test("Chinese-like text at 0.99 and 0.9995: the characters SentencePiece keeps", points=2)
def _(kept_characters: Any) -> None:
    for c in (0.99, 0.9995):
        _expect_spm(kept_characters, "Chinese-like", c)


# --------------------------------------------------------------------------- 12.cross_attention_map

attention_map = register(
    Exercise("12.cross_attention_map", "A cross-attention map", target="cross_attention_maps", timeout_s=30)
)

MAP_ATOL = 1e-5  # float32 softmax weights from the same computation: only the summation order may differ
SRC_LENGTHS, TGT_LENGTHS = (5, 3, 4), (3, 6, 1)  # real tokens per sentence: no map is square (axes can't hide)


def map_model(seed: int, N: int = 2, h: int = 4, dropout: float = 0.0, sharpen: float = 3.0) -> Transformer:
    """A seeded small Transformer (vocabularies of ch08's batches) whose attention is sharper than at init."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make_model(STEP_SRC_VOCAB, STEP_TGT_VOCAB, N=N, d_model=16, d_ff=32, h=h, dropout=dropout, max_len=32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MultiHeadAttention):  # larger scores: the heads and positions differ clearly
                m.W_Q.weight.mul_(sharpen)
                m.W_K.weight.mul_(sharpen)
    return model


def attention_pass(
    model: Transformer, src: Tensor, tgt: Tensor, pad_id: int, src_masked: bool = True, tgt_masked: bool = True
) -> list[tuple[Tensor, Tensor]]:
    """(self, cross) weights of every decoder layer in one teacher-forced pass of a copy of ``model`` in eval mode,
    each ``(batch, heads, tgt_len - 1, k_len)``."""
    model = copy.deepcopy(model).eval()
    tgt_in = tgt[:, :-1]  # (batch, tgt_len - 1): <bos> y_1 ... y_n [<eos>] <pad> ...
    src_mask = padding_mask(src, pad_id) if src_masked else None
    tgt_mask = target_mask(tgt_in, pad_id) if tgt_masked else None
    with torch.no_grad(), keep_attention_weights(model):
        model(src, tgt_in, src_mask, tgt_mask)
        return [(layer.self_attn.attn_weights, layer.cross_attn.attn_weights) for layer in model.decoder.layers]


def crop(weights: Tensor, src: Tensor, tgt: Tensor, pad_id: int) -> list[Tensor]:
    """``(batch, tgt_len - 1, k_len)`` -> per sentence ``(n_b + 1, m_b)``: output-piece rows, real source columns."""
    rows = (tgt[:, 1:] != pad_id).sum(1).tolist()  # y_1 ... y_n <eos>
    cols = (src != pad_id).sum(1).tolist()
    return [weights[b, : rows[b], : cols[b]] for b in range(src.size(0))]


def maps_reference(model: Transformer, src: Tensor, tgt: Tensor, pad_id: int, layer: int) -> list[Tensor]:
    """The oracle: the model's own cross-attention weights of ``layer``, mean of the heads, padding cut away."""
    cross = attention_pass(model, src, tgt, pad_id)[layer][1]  # (batch, heads, tgt_len - 1, src_len)
    return crop(cross.mean(1), src, tgt, pad_id)


def _map_hint(out: list[Tensor], model: Transformer, src: Tensor, tgt: Tensor, pad_id: int, layer: int) -> str:
    """Name the known slip that the maps equal (or '')."""
    passes = {
        "full": attention_pass(model, src, tgt, pad_id),
        "no tgt mask": attention_pass(model, src, tgt, pad_id, tgt_masked=False),
        "no src mask": attention_pass(model, src, tgt, pad_id, src_masked=False),
    }
    full = passes["full"]
    others = [i for i in range(len(full)) if i != layer % len(full)]
    variants: dict[str, list[Tensor] | None] = {
        "the heads are summed, not averaged": crop(full[layer][1].sum(1), src, tgt, pad_id),
        "only the first head is used, not the mean of the heads": crop(full[layer][1][:, 0], src, tgt, pad_id),
        "these are the decoder's self-attention weights, not its cross-attention": crop(
            full[layer][0].mean(1), src, tgt, pad_id
        ),
        "the pass ran without the target mask (the decoder saw the future)": crop(
            passes["no tgt mask"][layer][1].mean(1), src, tgt, pad_id
        ),
        "the pass ran without the source padding mask (attention went to <pad>)": crop(
            passes["no src mask"][layer][1].mean(1), src, tgt, pad_id
        ),
        "these are the weights of another layer": crop(full[others[0]][1].mean(1), src, tgt, pad_id)
        if others
        else None,
    }
    for message, value in variants.items():
        if value is not None and _same_maps(out, value):
            return message
    return ""


def _same_maps(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and bool(((x.double() - y.double()).abs() <= MAP_ATOL).all()) for x, y in zip(a, b)
    )


def _maps(
    cross_attention_maps: Any, model: Transformer, src: Tensor, tgt: Tensor, pad_id: int, layer: int
) -> list[Tensor]:
    """The learner's maps, checked for type and shape: one ``(n_b + 1, m_b)`` float tensor per sentence."""
    out = cross_attention_maps(model, src, tgt, pad_id, layer)
    expect_type(out, (list, tuple), "cross_attention_maps' result (one map per sentence)")
    out = list(out)
    expect(len(out) == src.size(0), f"cross_attention_maps returned {len(out)} maps for a batch of {src.size(0)}")
    rows = (tgt[:, 1:] != pad_id).sum(1).tolist()
    cols = (src != pad_id).sum(1).tolist()
    for b, m in enumerate(out):
        expect_type(m, Tensor, f"the map of sentence {b}")
        if tuple(m.shape) == (cols[b], rows[b]) and rows[b] != cols[b]:
            raise Mismatch(
                f"the map of sentence {b} has shape {tuple(m.shape)}: source and output axes are swapped "
                "(rows are the output pieces, columns the source pieces)"
            )
        padded = (tgt.size(1) - 1, src.size(1))
        if tuple(m.shape) != (rows[b], cols[b]) and tuple(m.shape) in (padded, padded[::-1]):
            raise Mismatch(
                f"the map of sentence {b} has shape {tuple(m.shape)}, the padded batch's: cut away the rows of "
                "the <pad> target positions and the columns of the <pad> source positions"
            )
        expect_shape(
            m, (rows[b], cols[b]), f"the map of sentence {b} ({rows[b]} output pieces, {cols[b]} source pieces)"
        )
        expect(m.dtype.is_floating_point, f"the map of sentence {b} should be floating-point, got {m.dtype}")
    return out


def _expect_maps(
    out: list[Tensor],
    model: Transformer,
    src: Tensor,
    tgt: Tensor,
    pad_id: int,
    layer: int,
    what: str,
    fallback: str = "",
) -> None:
    """The maps must equal the reference; a mismatch names the known slip it equals, else ``fallback``."""
    expected = maps_reference(model, src, tgt, pad_id, layer)
    for b, (m, e) in enumerate(zip(out, expected)):
        if not _same_maps([m], [e]):
            hint = _map_hint(out, model, src, tgt, pad_id, layer) or fallback
            expect_close(m, e, f"{what}, the map of sentence {b}", atol=MAP_ATOL, rtol=0, hint=hint)


def _rows_off(out: list[Tensor]) -> bool:
    """True when some row of some map does not sum to 1."""
    return any(bool(((m.detach().double().sum(1) - 1).abs() > MAP_ATOL).any()) for m in out)


def _batch(seed: int, pad_id: int = PAD) -> tuple[Tensor, Tensor]:
    return step_batch(seed, SRC_LENGTHS, TGT_LENGTHS, pad_id)


@attention_map.test("one (output pieces × source pieces) map per sentence, padding removed")
def _(cross_attention_maps: Any) -> None:
    src, tgt = _batch(seed=121)
    _maps(cross_attention_maps, map_model(seed=122), src, tgt, PAD, -1)


@attention_map.test("every row is a distribution over the sentence's real source pieces")
def _(cross_attention_maps: Any) -> None:
    src, tgt = _batch(seed=123)
    model = map_model(seed=124)
    heads = model.decoder.layers[0].cross_attn.num_heads
    for b, m in enumerate(_maps(cross_attention_maps, model, src, tgt, PAD, 0)):
        m = m.detach().double()
        expect(bool((m >= -MAP_ATOL).all()), f"the map of sentence {b} has negative weights")
        sums = m.sum(1)  # (rows,)
        worst = int((sums - 1).abs().argmax())
        if abs(float(sums[worst]) - 1) > MAP_ATOL:
            why = (
                f" — {heads} is the number of heads: average them, do not add them up"
                if abs(float(sums[worst]) - heads) < 1e-3
                else " — some attention went to <pad> source positions, or the weights are not a softmax's"
            )
            raise Mismatch(f"row {worst} of the map of sentence {b} sums to {float(sums[worst]):.4g}, not 1{why}")


@attention_map.test("equals the model's own cross-attention weights of that layer, mean of the heads", points=2)
def _(cross_attention_maps: Any) -> None:
    src, tgt = _batch(seed=125)
    model = map_model(seed=126)
    for layer in (0, 1, -1):
        out = _maps(cross_attention_maps, model, src, tgt, PAD, layer)
        _expect_maps(out, model, src, tgt, PAD, layer, f"layer {layer}")


@attention_map.test("a model in training mode: the map is the one the model translates with (no dropout)")
def _(cross_attention_maps: Any) -> None:
    src, tgt = _batch(seed=127)
    model = map_model(seed=128, dropout=0.3).train()
    out = _maps(cross_attention_maps, model, src, tgt, PAD, -1)
    dropout = "was the model put in evaluation mode before the pass? (dropout changed the weights)"
    _expect_maps(out, model, src, tgt, PAD, -1, "a model given in training mode", dropout if _rows_off(out) else "")
