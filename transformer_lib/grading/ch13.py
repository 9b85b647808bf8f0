"""Chapter 13 exercises — GPT and BERT.

* ``13.causal_lm_loss`` — a decoder-only model's loss: the logits of position t are scored on token t + 1,
  ``<pad>`` targets are skipped, and the mean is over the predicted tokens (``causal_lm_loss``);
* ``13.top_k`` — top-k filtering before sampling: the k largest logits of every row stay, the others become
  -inf, ties at the k-th largest value are kept, and a k at or above the vocabulary size keeps everything
  (``top_k_logits``);
* ``13.bert_masking`` — BERT's corruption: each ordinary token is picked with probability p; of the picked,
  80 % become ``[MASK]``, 10 % a random ordinary token and 10 % stay as they are; the labels hold the original
  token where one was picked and ``IGNORE`` elsewhere (``mask_tokens``).

Oracles: PyTorch's ``F.cross_entropy(ignore_index=pad_id)`` on the shifted logits and tokens (the hidden tests
also compare with the library's ``lm.causal_lm_loss`` on the logits of a small GPT); the library's
``lm.top_k_logits`` (the hidden tests also use an independent oracle built on ``torch.sort``). The masking is
random: its tests check what holds for every draw (labels, special tokens, the ids of the inputs, the use of
the generator given) and, on batches of thousands of tokens, the shares it draws, within five standard
deviations of their binomial spread (a correct solution misses one of them about once in a million draws).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lib.lm import IGNORE
from transformer_lib.lm import top_k_logits as library_top_k_logits

from .ch06 import generator, randn
from .ch08 import _targets
from .core import Exercise, Mismatch, expect, expect_close, expect_shape, expect_type, register

# --------------------------------------------------------------------------- 13.causal_lm_loss

lm_loss = register(Exercise("13.causal_lm_loss", "The next-token loss", target="causal_lm_loss", timeout_s=20))

LOSS_ATOL = 1e-5  # float32 means over a few dozen positions: only the summation order differs (~1e-7)
VOCAB = 11
PAD = 0


def lm_logits(batch: int, length: int, seed: int, vocab: int = VOCAB) -> Tensor:
    """Seeded logits ``(batch, length, vocab)``, spread enough that every slip moves the loss clearly."""
    return torch.randn(batch, length, vocab, generator=generator(seed)).mul(2.0)


def lm_tokens(lengths: Sequence[int], length: int, seed: int, pad_id: int = PAD, vocab: int = VOCAB) -> Tensor:
    """``(batch, length)`` ids: ``lengths[b]`` real tokens (never ``pad_id``), then ``<pad>``."""
    return _targets(list(lengths), length, seed, pad_id, vocab)


def causal_lm_reference(logits: Tensor, tokens: Tensor, pad_id: int) -> Tensor:
    """The oracle: PyTorch's cross-entropy of positions 0 .. len-2 against tokens 1 .. len-1, ``<pad>`` ignored."""
    vocab = logits.size(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1), ignore_index=pad_id)


def next_is_pad(tokens: Tensor, pad_id: int) -> Tensor:
    """``(batch, len)`` bool: True at the positions whose next token is ``<pad>`` (never the last position)."""
    out = torch.zeros(tokens.shape, dtype=torch.bool)
    out[:, :-1] = tokens[:, 1:] == pad_id
    return out


def _loss_slips(logits: Tensor, tokens: Tensor, pad_id: int) -> dict[str, Tensor]:
    """The loss that each known slip computes (for naming the one a wrong loss equals)."""
    vocab, batch = logits.size(-1), logits.size(0)

    def ce(pred: Tensor, target: Tensor, ignore: int = pad_id) -> Tensor:
        return F.cross_entropy(pred.reshape(-1, vocab), target.reshape(-1), ignore_index=ignore)

    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # (batch, len - 1)
    real = tokens[:, 1:] != pad_id  # (batch, len - 1): the predicted tokens
    per_sentence = (losses * real).sum(1)  # (batch,)
    slips = {
        "no shift: the logits of position t are scored on token t itself, not on the token after it": ce(
            logits, tokens
        ),
        "the shift goes the wrong way: position t is scored on the token before it, not on the one after it": ce(
            logits[:, 1:], tokens[:, :-1]
        ),
        "the last position is scored too, on the first token (wrapped around), but it has no next token": ce(
            logits, tokens.roll(-1, dims=1)
        ),
        "<pad> targets are counted in the loss": ce(logits[:, :-1], tokens[:, 1:], ignore=IGNORE),
        "the mean is taken over all positions, those whose next token is <pad> included": per_sentence.sum()
        / real.numel(),
        "the token losses are summed per sentence and divided by the number of sentences: a mean over the batch, "
        "not over the predicted tokens": per_sentence.sum() / batch,
        "each sentence's mean is averaged over the sentences, so a short sentence weighs as much as a long one: "
        "the mean is over the predicted tokens": (per_sentence / real.sum(1).clamp(min=1)).mean(),
        "the token losses are summed, not averaged": per_sentence.sum(),
    }
    if pad_id != 0:
        slips["<pad> is taken to be id 0, not pad_id"] = ce(logits[:, :-1], tokens[:, 1:], ignore=0)
    return slips


def _loss_hint(loss: Tensor, logits: Tensor, tokens: Tensor, pad_id: int) -> str:
    """Name the known slip that ``loss`` equals (or '')."""
    with torch.no_grad():
        reference = float(causal_lm_reference(logits, tokens, pad_id))
        for message, value in _loss_slips(logits.detach(), tokens, pad_id).items():
            value = float(value)
            if abs(value - reference) > 10 * LOSS_ATOL and abs(float(loss.detach()) - value) < LOSS_ATOL:
                return message
    return ""


def _loss(causal_lm_loss: Any, logits: Tensor, tokens: Tensor, pad_id: int) -> Tensor:
    """The learner's loss, checked to be one finite floating-point number in a tensor."""
    loss = causal_lm_loss(logits, tokens, pad_id)
    expect_type(loss, Tensor, "the loss")
    expect(loss.dim() == 0, f"the loss should be a 0-dimensional tensor (one number), got shape {tuple(loss.shape)}")
    expect(loss.is_floating_point(), f"the loss should be a floating-point tensor, got {loss.dtype}")
    expect(bool(torch.isfinite(loss.detach())), f"the loss is {float(loss.detach())}, not a finite number")
    return loss


def _expect_loss(loss: Tensor, logits: Tensor, tokens: Tensor, pad_id: int, what: str) -> None:
    expected = causal_lm_reference(logits.detach(), tokens, pad_id)
    hint = _loss_hint(loss, logits, tokens, pad_id)
    expect_close(loss.detach(), expected, what, atol=LOSS_ATOL, rtol=0, hint=hint)


def _same(a: Tensor, b: Tensor) -> bool:
    return abs(float(a.detach()) - float(b.detach())) < LOSS_ATOL


@lm_loss.test("returns a scalar tensor")
def _(causal_lm_loss: Any) -> None:
    _loss(causal_lm_loss, lm_logits(2, 5, seed=131), lm_tokens([5, 5], 5, seed=132), PAD)


@lm_loss.test("the last position predicts nothing, and the first token is never a target")
def _(causal_lm_loss: Any) -> None:
    logits, tokens = lm_logits(3, 6, seed=133), lm_tokens([6, 6, 6], 6, seed=134)
    loss = _loss(causal_lm_loss, logits, tokens, PAD)
    other = logits.clone()
    other[:, -1] = lm_logits(3, 1, seed=135)[:, 0]  # other logits at the last position only
    expect(
        _same(loss, _loss(causal_lm_loss, other, tokens, PAD)),
        "the loss changed when only the logits of the last position changed: there is no token after it to "
        "score them on",
    )
    first = tokens.clone()
    first[:, 0] = tokens[:, 0] % (VOCAB - 1) + 1  # another real token (ids 1 .. VOCAB - 1), never <pad>
    expect(
        _same(loss, _loss(causal_lm_loss, logits, first, PAD)),
        "the loss changed when only the first token of each sentence changed: no position comes before it, "
        "so no logits are scored on it",
    )


@lm_loss.test("the logits of position t are scored on token t + 1", points=2)
def _(causal_lm_loss: Any) -> None:
    for (batch, length, vocab), seed in (((3, 6, VOCAB), 136), ((2, 9, 23), 138)):
        logits = lm_logits(batch, length, seed, vocab)
        tokens = lm_tokens([length] * batch, length, seed + 1, PAD, vocab)
        loss = _loss(causal_lm_loss, logits, tokens, PAD)
        _expect_loss(loss, logits, tokens, PAD, f"the loss of a batch without padding ({batch} × {length})")


@lm_loss.test("<pad> targets are skipped", points=2)
def _(causal_lm_loss: Any) -> None:
    lengths, length = [6, 3, 5], 6
    logits, tokens = lm_logits(3, length, seed=140), lm_tokens(lengths, length, seed=141)
    loss = _loss(causal_lm_loss, logits, tokens, PAD)
    before_pad = next_is_pad(tokens, PAD)
    other = logits.clone()
    other[before_pad] = lm_logits(1, int(before_pad.sum()), seed=142)[0]  # other logits there only
    expect(
        _same(loss, _loss(causal_lm_loss, other, tokens, PAD)),
        "the loss changed when only the logits of positions whose next token is <pad> changed",
    )
    _expect_loss(loss, logits, tokens, PAD, "the loss of a padded batch")


@lm_loss.test("the mean is over the predicted tokens, not over the sentences")
def _(causal_lm_loss: Any) -> None:
    lengths, length = [9, 2, 4], 9  # 8, 1 and 3 predicted tokens
    logits, tokens = lm_logits(3, length, seed=143), lm_tokens(lengths, length, seed=144)
    loss = _loss(causal_lm_loss, logits, tokens, PAD)
    _expect_loss(loss, logits, tokens, PAD, "the loss of sentences of very different lengths")


@lm_loss.test("<pad> is the pad_id given, not always id 0")
def _(causal_lm_loss: Any) -> None:
    pad_id, lengths, length = 5, [7, 4, 2], 7
    logits, tokens = lm_logits(3, length, seed=145), lm_tokens(lengths, length, seed=146, pad_id=pad_id)
    tokens[0, 2] = tokens[1, 1] = tokens[2, 1] = 0  # id 0 is an ordinary token here, and a target
    loss = _loss(causal_lm_loss, logits, tokens, pad_id)
    _expect_loss(loss, logits, tokens, pad_id, f"the loss with pad_id = {pad_id}")


@lm_loss.test("gradient with respect to the logits")
def _(causal_lm_loss: Any) -> None:
    lengths, length = [5, 2, 4], 5
    tokens = lm_tokens(lengths, length, seed=147)
    logits = lm_logits(3, length, seed=148).requires_grad_()
    loss = _loss(causal_lm_loss, logits, tokens, PAD)
    expect(loss.requires_grad, "the loss does not require a gradient: is it detached, or built from plain numbers?")
    loss.backward()
    ours = logits.grad
    logits.grad = None
    expect(ours is not None, "no gradient reached the logits")
    expect(not bool(ours[:, -1].any()), "the gradient at the last position is not zero: it predicts nothing")
    expect(
        not bool(ours[next_is_pad(tokens, PAD)].any()),
        "the gradient at positions whose next token is <pad> is not zero",
    )
    causal_lm_reference(logits, tokens, PAD).backward()
    expect_close(ours, logits.grad, "the gradient (with respect to the logits)", atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- 13.top_k

top_k = register(Exercise("13.top_k", "Top-k filtering", target="top_k_logits", timeout_s=20))

NEG_INF = float("-inf")


def top_k_reference(logits: Tensor, k: int) -> Tensor:
    """The oracle: the library's ``top_k_logits``."""
    return library_top_k_logits(logits.detach(), k)


def _along_first(logits: Tensor, k: int) -> Tensor | None:
    """The slip that takes the k largest along the first dimension instead of the last (None if it cannot)."""
    if logits.dim() < 2 or k > logits.size(0):
        return None
    kth = logits.topk(k, dim=0).values[-1:]  # (1, ...): the k-th largest of each column
    return logits.masked_fill(logits < kth, NEG_INF)


def _filtered(top_k_logits: Any, logits: Tensor, k: int) -> Tensor:
    """The learner's filtered logits, checked for type, shape and dtype."""
    out = top_k_logits(logits, k)
    expect_type(out, Tensor, "top_k_logits' result")
    kept_only = (*logits.shape[:-1], k)
    if tuple(out.shape) != tuple(logits.shape) and tuple(out.shape) == kept_only:
        raise Mismatch(
            f"top_k_logits' result has shape {tuple(out.shape)}, the kept values only: keep every position of "
            f"the vocabulary (the logits have shape {tuple(logits.shape)})"
        )
    expect_shape(out, tuple(logits.shape), "top_k_logits' result")
    expect(out.dtype == logits.dtype, f"top_k_logits' result has dtype {out.dtype}, the logits {logits.dtype}")
    return out.detach()


def _row_name(flat: int, logits: Tensor) -> str:
    lead = tuple(logits.shape[:-1])
    if not lead:
        return "the row"
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), lead))
    return f"row {index[0] if len(index) == 1 else index}"


def _expect_top_k(out: Tensor, logits: Tensor, k: int, what: str) -> None:
    """``out`` must equal the library's top-k filtering of ``logits``; the message says how it differs."""
    logits = logits.detach()
    expected = top_k_reference(logits, k)
    if torch.equal(out, expected):
        return
    odd = (out != NEG_INF) & (out != logits)  # neither the logit itself nor -inf
    if bool(odd.any()):
        values = out[odd]
        if bool((values == 0).all()):
            hint = "the removed logits are 0, not -inf: softmax still gives them a probability"
        elif bool(torch.isfinite(values).all()) and bool((values == values[0]).all()):
            hint = f"the removed logits are a finite number ({float(values[0]):g}), not -inf"
        else:
            hint = "a kept logit keeps its value, a removed one becomes -inf"
        raise Mismatch(f"{what}: {int(odd.sum())} of {odd.numel()} entries are neither their logit nor -inf — {hint}")
    vocab = logits.size(-1)
    finite = (logits != NEG_INF).reshape(-1, vocab)  # where keeping and removing can be told apart
    mine = (out != NEG_INF).reshape(-1, vocab) & finite
    theirs = (expected != NEG_INF).reshape(-1, vocab) & finite
    first = _along_first(logits, k)
    dim_hint = (
        " — the k largest were taken along the first dimension, not along the last one (the vocabulary)"
        if first is not None and torch.equal(out, first)
        else ""
    )
    counts, wanted = mine.sum(1), theirs.sum(1)
    if bool((counts != wanted).any()):
        r = int((counts != wanted).nonzero()[0])
        n, m = int(counts[r]), int(wanted[r])
        row = logits.reshape(-1, vocab)[r]
        kth = row.topk(min(k, vocab)).values[-1]
        hint = dim_hint
        if not hint and n == m - 1:
            hint = " — one fewer than the rule keeps: is the k-th largest logit itself removed?"
        elif not hint and n == m + 1:
            hint = " — one more than the rule keeps"
        elif not hint and n == min(k, vocab) < m and int((row == kth).sum()) > 1:
            hint = " — this row has several logits equal to its k-th largest: all of them are kept"
        raise Mismatch(f"{what}: {_row_name(r, logits)} keeps {n} of its {vocab} logits (k = {k}){hint}")
    r = int((mine != theirs).any(1).nonzero()[0])
    raise Mismatch(
        f"{what}: {_row_name(r, logits)} keeps {int(counts[r])} logits, but not its {int(counts[r])} largest{dim_hint}"
    )


@top_k.test("same shape and dtype as the logits")
def _(top_k_logits: Any) -> None:
    _filtered(top_k_logits, randn(3, 10, seed=151), 4)


@top_k.test("keeps the k largest logits of every row as they are, and sets the others to -inf", points=2)
def _(top_k_logits: Any) -> None:
    logits = randn(4, 12, seed=152, scale=2.0)  # negative and positive logits, all different
    for k in (1, 3, 5):
        _expect_top_k(_filtered(top_k_logits, logits, k), logits, k, f"k = {k}")


@top_k.test("the k largest along the last dimension (the vocabulary), whatever the leading ones")
def _(top_k_logits: Any) -> None:
    for shape, k, seed in (((6, 10), 3, 153), ((2, 5, 9), 4, 154), ((9,), 2, 155)):
        logits = randn(*shape, seed=seed)
        _expect_top_k(_filtered(top_k_logits, logits, k), logits, k, f"logits of shape {shape}, k = {k}")


@top_k.test("logits equal to the k-th largest are all kept (ties)")
def _(top_k_logits: Any) -> None:
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0, 0.5],
            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
            [4.0, 1.0, 1.0, -1.0, 3.0, 1.0],
        ]
    )
    for k in (1, 2, 3):
        _expect_top_k(_filtered(top_k_logits, logits, k), logits, k, f"logits with ties, k = {k}")


@top_k.test("k at or above the vocabulary size keeps every logit")
def _(top_k_logits: Any) -> None:
    logits = randn(2, 7, seed=156)
    for k in (7, 8, 50):
        _expect_top_k(_filtered(top_k_logits, logits, k), logits, k, f"a vocabulary of 7, k = {k}")


def _in_place_error(exc: BaseException) -> bool:
    text = f"{getattr(exc, 'message', '')} {exc}"
    return "in-place" in text or "inplace" in text


@top_k.test("leaves its input unchanged, and works on logits that require grad")
def _(top_k_logits: Any) -> None:
    logits = randn(3, 8, seed=157)
    before = logits.clone()
    out = _filtered(top_k_logits, logits, 3)
    expect(
        torch.equal(logits, before),
        "top_k_logits changed the logits it was given (in place): return a new tensor, leave the input as it was",
    )
    _expect_top_k(out, logits, 3, "k = 3")
    leaf = randn(3, 8, seed=158).requires_grad_()
    try:
        out = _filtered(top_k_logits, leaf, 3)
    except Exception as exc:  # the producer's RuntimeError arrives as a PeerError
        if _in_place_error(exc):
            raise Mismatch(
                "top_k_logits changes the logits it was given in place (autograd refuses to, on logits that "
                "require grad): return a new tensor, leave the input as it was"
            ) from None
        raise
    _expect_top_k(out, leaf, 3, "logits that require grad, k = 3")


# --------------------------------------------------------------------------- 13.bert_masking

masking = register(Exercise("13.bert_masking", "BERT's masking", target="mask_tokens", timeout_s=30))

FIRST_ID, MASK_ID = 4, 104  # ordinary tokens 4 .. 103 (a hundred of them); [MASK] = 104
SIGMAS = 5.0  # a share may be off by five standard deviations of its binomial spread (chance: ~6e-7)
SPLIT = {"mask": 0.8, "random": 0.1, "kept": 0.1}


def corpus(
    batch: int, length: int, seed: int, first_id: int = FIRST_ID, mask_id: int = MASK_ID, special: float = 0.03
) -> Tensor:
    """``(batch, length)`` ids like ``lm_batch``'s: a special id first, ordinary ids in ``[first_id, mask_id)``
    with a share ``special`` of special ids (below ``first_id``) among them, then ``<pad>`` (0) to the end."""
    g = generator(seed)
    tokens = torch.randint(first_id, mask_id, (batch, length), generator=g)
    specials = torch.rand(batch, length, generator=g) < special
    tokens[specials] = torch.randint(0, first_id, (int(specials.sum()),), generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    tokens[:, 0] = min(1, first_id - 1)  # <bos>
    return tokens.masked_fill(torch.arange(length)[None, :] >= lengths[:, None], 0)


def _corrupt(
    mask_tokens: Any, tokens: Tensor, mask_id: int, p: float, first_id: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The learner's ``(inputs, labels)``, checked for type, shape and dtype."""
    out = mask_tokens(tokens.clone(), mask_id, p, first_id, generator(seed))
    expect(
        isinstance(out, (tuple, list)) and len(out) == 2,
        f"mask_tokens should return two tensors (inputs, labels), got {type(out).__name__}"
        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""),
    )
    inputs, labels = out
    for name, t in (("inputs", inputs), ("labels", labels)):
        expect_shape(t, tuple(tokens.shape), f"the {name}")
        expect(t.dtype == torch.long, f"the {name} should be an int64 tensor of token ids, got {t.dtype}")
    return inputs, labels


def _expect_consistent(inputs: Tensor, labels: Tensor, tokens: Tensor, mask_id: int, first_id: int, what: str) -> None:
    """What holds for every draw: labels, special tokens, the inputs of picked and unpicked positions."""
    picked = labels != IGNORE
    if bool(picked.all()):
        raise Mismatch(
            f"{what}: every position has a label (none is IGNORE): only the picked positions have one, so that "
            "the loss counts them alone"
        )
    special = tokens < first_id
    n = int((picked & special).sum())
    if n:
        raise Mismatch(
            f"{what}: {n} of the {int(special.sum())} special tokens (ids below first_id: <pad>, <bos>, <eos>, "
            "<unk>) are picked (their label is not IGNORE)"
        )
    wrong = picked & (labels != tokens)
    if bool(wrong.any()):
        hint = (
            " — they are the corrupted inputs, not the original tokens"
            if bool((labels[wrong] == inputs[wrong]).all())
            else ""
        )
        raise Mismatch(f"{what}: {int(wrong.sum())} labels are neither IGNORE nor the original token there{hint}")
    changed = ~picked & (inputs != tokens)
    if bool(changed.any()):
        hint = (
            " — the picked tokens that become random or stay as they are need their label too"
            if bool((inputs[changed] != mask_id).all()) and bool((tokens[changed] >= first_id).all())
            else ""
        )
        raise Mismatch(
            f"{what}: {int(changed.sum())} positions that are not picked (label IGNORE) were changed in the "
            f"inputs{hint}"
        )
    x = inputs[picked]
    bad = (x != mask_id) & ((x < first_id) | (x >= mask_id))
    if bool(bad.any()):
        raise Mismatch(
            f"{what}: {int(bad.sum())} picked positions hold an id that is neither mask_id nor an ordinary token "
            "(a random replacement is an ordinary token: first_id <= id < mask_id)"
        )


def _tolerance(q: float, n: int) -> float:
    return SIGMAS * math.sqrt(q * (1 - q) / max(n, 1)) + 1e-9


def _expect_picked_share(labels: Tensor, tokens: Tensor, p: float, first_id: int, what: str) -> None:
    """About a share ``p`` of the ordinary tokens is picked."""
    n = int((tokens >= first_id).sum())
    share = int((labels != IGNORE).sum()) / n
    tol = _tolerance(p, n)
    if abs(share - p) <= tol:
        return
    hint = ""
    if p != 0.15 and abs(share - 0.15) <= tol:
        hint = " — is p used? The share is BERT's 15 %, whatever p is"
    elif abs(share - 0.8 * p) <= tol:
        hint = " — only the tokens that became mask_id are picked: the random and the kept ones are picked too"
    raise Mismatch(
        f"{what}: {share:.2%} of the {n} ordinary tokens are picked with p = {p}, off by more than chance allows{hint}"
    )


def _split_expected(mask_id: int, first_id: int, split: dict[str, float] = SPLIT) -> dict[str, float]:
    """Shares of the picked tokens that become mask_id, another token, or keep their id, for a split of
    (mask, random, kept): a random replacement draws the original token again once in ``mask_id - first_id``."""
    same = 1 / (mask_id - first_id)
    return {
        "mask": split["mask"],
        "random": split["random"] * (1 - same),
        "kept": split["kept"] + split["random"] * same,
    }


SPLIT_SLIPS = {
    "every picked token became mask_id": {"mask": 1.0, "random": 0.0, "kept": 0.0},
    "no picked token kept its own id: all those not masked became random tokens": {
        "mask": 0.8,
        "random": 0.2,
        "kept": 0.0,
    },
    "no picked token became a random one": {"mask": 0.8, "random": 0.0, "kept": 0.2},
    "the random tokens are 10 % of the 20 % not masked, not half of them": {"mask": 0.8, "random": 0.02, "kept": 0.18},
    "the shares of mask_id and of the kept tokens are swapped": {"mask": 0.1, "random": 0.1, "kept": 0.8},
}


def _expect_split(inputs: Tensor, labels: Tensor, tokens: Tensor, mask_id: int, first_id: int, what: str) -> None:
    """Of the picked tokens, about 80 % are mask_id, 10 % another ordinary token, 10 % unchanged."""
    picked = labels != IGNORE
    n = int(picked.sum())
    x, t = inputs[picked], tokens[picked]
    shares = {
        "mask": float((x == mask_id).double().mean()),
        "random": float(((x != mask_id) & (x != t)).double().mean()),
        "kept": float((x == t).double().mean()),
    }

    def fits(expected: dict[str, float]) -> bool:
        return all(abs(shares[s] - q) <= _tolerance(q, n) for s, q in expected.items())

    if fits(_split_expected(mask_id, first_id)):
        return
    hint = next((f" — {m}" for m, split in SPLIT_SLIPS.items() if fits(_split_expected(mask_id, first_id, split))), "")
    raise Mismatch(
        f"{what}: of the {n} picked tokens, {shares['mask']:.1%} became mask_id, {shares['random']:.1%} another "
        f"ordinary token and {shares['kept']:.1%} stayed as they were: not the 80 / 10 / 10 split, by more than "
        f"chance allows{hint}"
    )


@masking.test("returns (inputs, labels): two int64 tensors of the tokens' shape")
def _(mask_tokens: Any) -> None:
    _corrupt(mask_tokens, corpus(4, 12, seed=161), MASK_ID, 0.15, FIRST_ID, seed=162)


@masking.test("labels: the original token where picked, IGNORE elsewhere; inputs change only where picked", points=2)
def _(mask_tokens: Any) -> None:
    tokens = corpus(32, 40, seed=163)
    for p, seed in ((0.15, 164), (0.5, 165)):
        inputs, labels = _corrupt(mask_tokens, tokens, MASK_ID, p, FIRST_ID, seed)
        _expect_consistent(inputs, labels, tokens, MASK_ID, FIRST_ID, f"p = {p}")


@masking.test("ids below first_id (<pad>, <bos>, <eos>, <unk>) are never picked")
def _(mask_tokens: Any) -> None:
    for first_id, mask_id, seed in ((FIRST_ID, MASK_ID, 166), (7, 40, 168)):
        tokens = corpus(32, 40, seed=seed, first_id=first_id, mask_id=mask_id, special=0.3)
        inputs, labels = _corrupt(mask_tokens, tokens, mask_id, 0.9, first_id, seed + 1)
        _expect_consistent(inputs, labels, tokens, mask_id, first_id, f"first_id = {first_id}, p = 0.9")


@masking.test("each ordinary token is picked with probability p", points=2)
def _(mask_tokens: Any) -> None:
    tokens = corpus(128, 128, seed=170)
    for p, seed in ((0.15, 171), (0.5, 172)):
        inputs, labels = _corrupt(mask_tokens, tokens, MASK_ID, p, FIRST_ID, seed)
        _expect_consistent(inputs, labels, tokens, MASK_ID, FIRST_ID, f"p = {p}")
        _expect_picked_share(labels, tokens, p, FIRST_ID, f"p = {p}")


@masking.test("of the picked tokens, 80 % become mask_id, 10 % a random ordinary token, 10 % stay", points=2)
def _(mask_tokens: Any) -> None:
    tokens = corpus(128, 128, seed=173)
    inputs, labels = _corrupt(mask_tokens, tokens, MASK_ID, 0.5, FIRST_ID, seed=174)
    _expect_consistent(inputs, labels, tokens, MASK_ID, FIRST_ID, "p = 0.5")
    _expect_split(inputs, labels, tokens, MASK_ID, FIRST_ID, "p = 0.5")


@masking.test("every random number comes from the generator given")
def _(mask_tokens: Any) -> None:
    tokens = corpus(8, 32, seed=175)
    a = _corrupt(mask_tokens, tokens, MASK_ID, 0.5, FIRST_ID, seed=176)
    b = _corrupt(mask_tokens, tokens, MASK_ID, 0.5, FIRST_ID, seed=176)
    expect(
        all(torch.equal(x, y) for x, y in zip(a, b)),
        "two calls with generators of the same seed gave different results: does every draw (which tokens, "
        "what becomes of them, the random ids) use the generator?",
    )
    c = _corrupt(mask_tokens, tokens, MASK_ID, 0.5, FIRST_ID, seed=177)
    expect(
        not all(torch.equal(x, y) for x, y in zip(a, c)),
        "generators of two different seeds gave the same result: are the draws made with the generator?",
    )


def spread_over_positions(labels: Tensor, tokens: Tensor, p: float, first_id: int, parts: int = 4) -> str:
    """'' when each of ``parts`` stretches of the positions has about a share p of its ordinary tokens picked,
    else what differs (for the hidden tests)."""
    length = tokens.size(1)
    for i in range(parts):
        cols = slice(i * length // parts, (i + 1) * length // parts)
        ordinary = tokens[:, cols] >= first_id
        n = int(ordinary.sum())
        share = int(((labels[:, cols] != IGNORE) & ordinary).sum()) / n
        if abs(share - p) > _tolerance(p, n):
            return (
                f"positions {cols.start}-{cols.stop - 1}: {share:.2%} of their {n} ordinary tokens are picked "
                f"with p = {p}: every position is picked with the same probability, wherever it is"
            )
    return ""
