"""Chapter 8 exercises — training a translator.

* ``08.noam_lr`` — the paper's learning-rate schedule, warmup then inverse square root (``noam_lr``);
* ``08.label_smoothing`` — the label-smoothed cross-entropy that ignores ``<pad>`` (``label_smoothed_loss``);
* ``08.train_step`` — one training step: teacher forcing, masks, loss, backward, clipping, update (``train_step``).

Oracles: the library's ``noam_lr``; PyTorch's ``F.cross_entropy(ignore_index=..., label_smoothing=...)``;
for the training step, the same step written with the library (``padding_mask``, ``target_mask``,
``label_smoothed_loss``) on a deep copy of the model and optimizer.
"""

from __future__ import annotations

import copy
import math
from numbers import Real
from typing import Any, Sequence

import torch
import torch._dynamo  # noqa: F401 — see the note below
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.model import Transformer, make_model
from transformer_lib.train import label_smoothed_loss, noam_lr

from .ch06 import generator
from .ch07 import _calls
from .core import Exercise, Mismatch, expect, expect_close, expect_type, register

# Note: the first optimizer a process creates imports torch._dynamo (1-3 s). Importing it here, in the process
# that calls check(), lets every forked check inherit it instead of paying that time again.

# --------------------------------------------------------------------------- 08.noam_lr

noam = register(Exercise("08.noam_lr", "The warmup learning-rate schedule", target="noam_lr", timeout_s=20))

# float64 arithmetic on both sides; any real slip (an exponent, a factor) changes values by far more than 1e-9.
LR_RTOL = 1e-6


def _lr(noam_lr: Any, step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    value = noam_lr(step, d_model, warmup, factor)
    expect(
        isinstance(value, Real) and not isinstance(value, bool),
        f"noam_lr should return a Python float, got {type(value).__name__}",
    )
    value = float(value)
    expect(math.isfinite(value), f"noam_lr({step}, d_model={d_model}, warmup={warmup}) is {value}, not a finite number")
    return value


def _describe_ratio(ratios: list[float]) -> str:
    """'×2' for a list of (nearly) equal ratios, else 'by varying factors'."""
    if max(ratios) - min(ratios) <= 1e-6 * abs(max(ratios)):
        return f"by the same factor ×{ratios[0]:.4g}"
    return f"by factors from ×{min(ratios):.3g} to ×{max(ratios):.3g}"


@noam.test("returns a Python float")
def _(noam_lr: Any) -> None:
    _lr(noam_lr, 10, 512, 4000)


@noam.test("rises linearly during the warmup")
def _(noam_lr: Any) -> None:
    d_model, warmup = 64, 400
    steps = [1, 50, 100, 200, 399, 400]
    per_step = [_lr(noam_lr, s, d_model, warmup) / s for s in steps]
    expect(
        max(per_step) - min(per_step) <= 1e-6 * max(per_step),
        f"during the warmup (steps 1-{warmup}) lr is not proportional to the step: lr(step)/step goes from "
        f"{min(per_step):.3g} to {max(per_step):.3g}",
    )


@noam.test("peaks at step = warmup, then decays as 1/sqrt(step)")
def _(noam_lr: Any) -> None:
    d_model, warmup = 64, 400
    at = {s: _lr(noam_lr, s, d_model, warmup) for s in (warmup - 1, warmup, warmup + 1, 1000, 4000, 1600, 6400)}
    expect(
        at[warmup] >= at[warmup - 1] and at[warmup] >= at[warmup + 1],
        f"the schedule does not peak at step = warmup = {warmup}",
    )
    for s in (1000, 1600):
        ratio = at[4 * s] / at[s]
        expect(
            abs(ratio - 0.5) < 1e-6,
            f"after the warmup, lr(4·step)/lr(step) should be 1/2 (a 1/sqrt(step) decay); "
            f"at step {s} it is {ratio:.4g}",
        )


@noam.test("values match the paper's formula", points=2)
def _(noam_lr: Any) -> None:
    for d_model, warmup, factor in ((512, 4000, 1.0), (256, 1000, 2.0), (32, 50, 0.5)):
        warm_steps, decay_steps = [1, warmup // 3, warmup], [2 * warmup, 10 * warmup]

        def ratio(s: int, d_model: int = d_model, warmup: int = warmup, factor: float = factor) -> float:
            return _lr(noam_lr, s, d_model, warmup, factor) / noam_lr_reference(s, d_model, warmup, factor)

        warm, decay = [ratio(s) for s in warm_steps], [ratio(s) for s in decay_steps]
        ratios = warm + decay
        if all(abs(r - 1.0) <= LR_RTOL for r in ratios):
            continue
        where = f"(d_model={d_model}, warmup={warmup}, factor={factor})"
        if all(abs(r - 1.0) <= LR_RTOL for r in decay):
            raise Mismatch(f"the warmup part is off {_describe_ratio(warm)} {where}; the decay part is right")
        if all(abs(r - 1.0) <= LR_RTOL for r in warm):
            raise Mismatch(
                f"the decay part (after the warmup) is off {_describe_ratio(decay)} {where}; the warmup part is right"
            )
        raise Mismatch(f"the values are off {_describe_ratio(ratios)} {where}")


@noam.test("step 0 counts as step 1 (no division by zero)")
def _(noam_lr: Any) -> None:
    at_0, at_1 = _lr(noam_lr, 0, 64, 100), _lr(noam_lr, 1, 64, 100)
    expect(abs(at_0 - at_1) <= 1e-12, "noam_lr(0, ...) should equal noam_lr(1, ...)")


def noam_lr_reference(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The oracle: the library's ``noam_lr``."""
    return noam_lr(step, d_model, warmup, factor)


# --------------------------------------------------------------------------- 08.label_smoothing

smoothing = register(
    Exercise("08.label_smoothing", "Label-smoothed cross-entropy", target="label_smoothed_loss", timeout_s=20)
)

# float32 log-probabilities, means over a few dozen positions: only the summation order differs (~1e-7).
LOSS_ATOL = 1e-5
VOCAB = 11


def _log_probs(batch: int, length: int, seed: int, vocab: int = VOCAB) -> Tensor:
    return torch.randn(batch, length, vocab, generator=generator(seed)).mul(2.0).log_softmax(-1)


def _targets(lengths: list[int], length: int, seed: int, pad_id: int = 0, vocab: int = VOCAB) -> Tensor:
    ids = torch.randint(0, vocab, (len(lengths), length), generator=generator(seed))
    ids = torch.where(ids == pad_id, (ids + 1) % vocab, ids)  # real tokens are never <pad>
    real = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~real, pad_id)


def label_smoothing_reference(log_probs: Tensor, target: Tensor, eps: float, pad_id: int) -> Tensor:
    """The oracle: PyTorch's own label-smoothed cross-entropy.

    log_softmax is idempotent, so log-probabilities are valid logits.
    """
    vocab = log_probs.size(-1)
    return F.cross_entropy(log_probs.reshape(-1, vocab), target.reshape(-1), ignore_index=pad_id, label_smoothing=eps)


def _loss(label_smoothed_loss: Any, log_probs: Tensor, target: Tensor, eps: float, pad_id: int) -> Tensor:
    loss = label_smoothed_loss(log_probs, target, eps, pad_id)
    expect_type(loss, Tensor, "the loss")
    expect(loss.dim() == 0, f"the loss should be a 0-dimensional tensor (one number), got shape {tuple(loss.shape)}")
    return loss


def _smoothing_hint(loss: Tensor, log_probs: Tensor, target: Tensor, eps: float) -> str:
    """Name the known slip that ``loss`` equals, by what differs (no padding in ``target``)."""
    vocab = log_probs.size(-1)
    lp, t = log_probs.reshape(-1, vocab), target.reshape(-1)
    nll = F.nll_loss(lp, t)
    others = (lp.sum(-1) - lp.gather(1, t[:, None])[:, 0]) / (vocab - 1)  # mean log-prob of the non-reference tokens
    candidates = {
        "the loss does not depend on the smoothing": nll,
        "the reference token's share and the others' share differ from the task's definition (ε/V on every id, "
        "the reference included)": -((1 - eps) * lp.gather(1, t[:, None])[:, 0] + eps * others).mean(),
        "the loss is summed over the positions instead of averaged": label_smoothing_reference(
            log_probs, target, eps, -100
        )
        * t.numel(),
    }
    for message, value in candidates.items():
        if abs(float(loss) - float(value)) < LOSS_ATOL:
            return message
    return ""


@smoothing.test("returns a scalar tensor")
def _(label_smoothed_loss: Any) -> None:
    _loss(label_smoothed_loss, _log_probs(2, 3, seed=51), _targets([3, 3], 3, seed=52), 0.1, 0)


@smoothing.test("smoothing = 0 gives the plain cross-entropy")
def _(label_smoothed_loss: Any) -> None:
    log_probs, target = _log_probs(3, 4, seed=53), _targets([4, 4, 4], 4, seed=54)
    loss = _loss(label_smoothed_loss, log_probs, target, 0.0, 0)
    expected = F.nll_loss(log_probs.reshape(-1, VOCAB), target.reshape(-1))
    expect_close(
        loss,
        expected,
        "the loss with smoothing = 0",
        atol=LOSS_ATOL,
        rtol=0,
        hint=_smoothing_hint(loss, log_probs, target, 0.0),
    )


@smoothing.test("matches F.cross_entropy(label_smoothing=ε) without padding", points=2)
def _(label_smoothed_loss: Any) -> None:
    log_probs, target = _log_probs(3, 5, seed=55), _targets([5, 5, 5], 5, seed=56)
    for eps in (0.1, 0.4):
        loss = _loss(label_smoothed_loss, log_probs, target, eps, 0)
        expect_close(
            loss,
            label_smoothing_reference(log_probs, target, eps, 0),
            f"the loss with ε = {eps}",
            atol=LOSS_ATOL,
            rtol=0,
            hint=_smoothing_hint(loss, log_probs, target, eps),
        )


@smoothing.test("<pad> positions are ignored", points=2)
def _(label_smoothed_loss: Any) -> None:
    lengths, length, eps = [5, 2, 4], 5, 0.1
    log_probs, target = _log_probs(3, length, seed=57), _targets(lengths, length, seed=58)
    loss = _loss(label_smoothed_loss, log_probs, target, eps, 0)
    other = log_probs.clone()
    pads = target == 0
    other[pads] = _log_probs(1, int(pads.sum()), seed=59)[0]  # other predictions at the <pad> positions only
    loss_other = _loss(label_smoothed_loss, other, target, eps, 0)
    expect(
        abs(float(loss) - float(loss_other)) < LOSS_ATOL,
        "the loss changed when only the predictions at <pad> positions changed",
    )
    expected = label_smoothing_reference(log_probs, target, eps, 0)
    hint = ""
    if abs(float(loss) * pads.numel() / (~pads).sum() - float(expected)) < LOSS_ATOL:
        hint = "the mean is taken over all positions, <pad> included"
    expect_close(loss, expected, "the loss of a padded batch", atol=LOSS_ATOL, rtol=0, hint=hint)


@smoothing.test("gradient with respect to the log-probabilities")
def _(label_smoothed_loss: Any) -> None:
    lengths, length, eps = [4, 1, 3], 4, 0.2
    target = _targets(lengths, length, seed=60)
    # The gradient is taken with respect to the logits *before* log_softmax: the oracle treats its input as
    # logits, and only through log_softmax do the two gradients agree.
    logits = torch.randn(3, length, VOCAB, generator=generator(61)).mul(2.0).requires_grad_()
    loss = _loss(label_smoothed_loss, logits.log_softmax(-1), target, eps, 0)
    expect(loss.requires_grad, "the loss does not require a gradient: is it detached, or built from plain numbers?")
    loss.backward()
    ours = logits.grad
    logits.grad = None
    label_smoothing_reference(logits.log_softmax(-1), target, eps, 0).backward()
    expect(ours is not None, "no gradient reached the log-probabilities")
    expect(not bool(ours[target == 0].any()), "the gradient at <pad> positions is not zero")
    expect_close(ours, logits.grad, "the gradient (with respect to the logits)", atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- 08.train_step

train_step = register(Exercise("08.train_step", "One training step", target="train_step", timeout_s=30))

PAD, BOS, EOS = 0, 1, 2
STEP_SRC_VOCAB, STEP_TGT_VOCAB = 11, 13
CLIP = 0.05  # small enough that the test batches' gradients (norm ~0.5-1) are always clipped
STEP_ATOL = 1e-5  # float32, a 1-layer model: the same computation in a different order differs by ~1e-7


def step_model(seed: int, dropout: float = 0.0) -> Transformer:
    """A seeded 1-layer Transformer (source vocabulary 11, target vocabulary 13) for the training-step tests."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make_model(STEP_SRC_VOCAB, STEP_TGT_VOCAB, N=1, d_model=16, d_ff=32, h=2, dropout=dropout, max_len=32)


def step_batch(
    seed: int, src_lengths: Sequence[int] = (5, 3, 4), tgt_lengths: Sequence[int] = (4, 6, 2), pad_id: int = PAD
) -> tuple[Tensor, Tensor]:
    """``src`` ``(batch, src_len)`` and ``tgt`` = ``<bos> y_1 ... y_n <eos> <pad> ...`` ``(batch, tgt_len)``."""
    g = generator(seed)

    def symbols(n: int, vocab: int) -> Tensor:  # n random symbol ids (>= 3, < vocab), never pad_id
        ids = torch.randint(3, vocab - 1, (n,), generator=g)
        return ids + (ids >= pad_id).long() if pad_id >= 3 else ids

    src = torch.full((len(src_lengths), max(src_lengths)), pad_id)
    tgt = torch.full((len(tgt_lengths), max(tgt_lengths) + 2), pad_id)
    for b, (n, m) in enumerate(zip(src_lengths, tgt_lengths)):
        src[b, :n] = symbols(n, STEP_SRC_VOCAB)
        tgt[b, 0], tgt[b, m + 1] = BOS, EOS
        tgt[b, 1 : m + 1] = symbols(m, STEP_TGT_VOCAB)
    return src, tgt


def train_step_reference(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    src: Tensor,
    tgt: Tensor,
    pad_id: int,
    smoothing: float,
    clip_norm: float,
) -> float:
    """The oracle: one training step written with the library."""
    model.train()
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]  # teacher forcing: predict token t + 1 from tokens <= t
    log_probs = model(src, tgt_in, padding_mask(src, pad_id), target_mask(tgt_in, pad_id))
    loss = label_smoothed_loss(log_probs, tgt_out, smoothing, pad_id)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item()


def _twins(
    seed: int, optimizer: str = "sgd", dropout: float = 0.0
) -> tuple[tuple[nn.Module, Any], tuple[nn.Module, Any]]:
    """Two identical (model, optimizer) pairs: one for the learner, one for the reference."""
    model = step_model(seed, dropout)
    twin = copy.deepcopy(model)

    def make(m: nn.Module) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.5)  # plain SGD: clipping changes the update directly
        # eps 1e-3, not the paper's 1e-9: some gradients are zero up to rounding (e.g. the key biases, which
        # softmax cancels), and Adam would blow that rounding noise up to full-size updates of random sign.
        return torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.9, 0.98), eps=1e-3)

    return (model, make(model)), (twin, make(twin))


def _run_step(
    train_step: Any,
    model: nn.Module,
    optimizer: Any,
    src: Tensor,
    tgt: Tensor,
    pad_id: int = PAD,
    smoothing: float = 0.1,
    clip_norm: float = CLIP,
) -> float:
    value = train_step(model, optimizer, src, tgt, pad_id, smoothing, clip_norm)
    if isinstance(value, Tensor):
        raise Mismatch(
            f"train_step returned a Tensor{' that still holds the graph' if value.requires_grad else ''}; "
            "return the loss as a Python float"
        )
    expect(
        isinstance(value, Real) and not isinstance(value, bool),
        f"train_step should return a float, got {type(value).__name__}",
    )
    return float(value)


def _compare_parameters(ours: nn.Module, ref: nn.Module, what: str) -> None:
    worst, where = 0.0, ""
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        diff = float((p.detach() - q.detach()).abs().max())
        if diff > worst:
            worst, where = diff, name
    expect(
        worst <= STEP_ATOL,
        f"{what}: the parameters differ from the reference step's — max |difference| {worst:.3g} (in `{where}`)",
    )


def _input_hints(calls_enc: list[dict], calls_embed: list[dict], tgt: Tensor) -> None:
    """Mismatches that say which input of the forward pass is wrong (the source mask, the decoder's input)."""
    expect(bool(calls_enc) and bool(calls_embed), "the model's encoder and decoder were not both run")
    expect(calls_enc[0].get("src_mask") is not None, "the model was run without the source padding mask")
    fed = calls_embed[0].get("tokens")
    expect(
        isinstance(fed, Tensor) and fed.shape == tgt[:, :-1].shape and torch.equal(fed, tgt[:, :-1]),
        "the decoder's input is not the target without its last token (teacher forcing: the input is "
        "shifted against the expected output)",
    )


@train_step.test("returns the loss as a Python float")
def _(train_step: Any) -> None:
    (model, opt), _ = _twins(seed=71)
    src, tgt = step_batch(seed=72)
    _run_step(train_step, model, opt, src, tgt)


@train_step.test("loss value: teacher forcing, masks, label smoothing", points=2)
def _(train_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=73)
    src, tgt = step_batch(seed=74)
    calls_enc, h1 = _calls(model.encoder)
    calls_embed, h2 = _calls(model.tgt_embed)
    try:
        loss = _run_step(train_step, model, opt, src, tgt)
    finally:
        h1.remove()
        h2.remove()
    expected = train_step_reference(twin, twin_opt, src, tgt, PAD, 0.1, CLIP)
    if abs(loss - expected) > STEP_ATOL:
        _input_hints(calls_enc, calls_embed, tgt)
        raise Mismatch(f"the returned loss differs from the reference step's by {abs(loss - expected):.3g}")


@train_step.test("parameters after one step: backward, clipping, optimizer step", points=2)
def _(train_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=75)
    src, tgt = step_batch(seed=76)
    before = [p.detach().clone() for p in model.parameters()]
    _run_step(train_step, model, opt, src, tgt)
    train_step_reference(twin, twin_opt, src, tgt, PAD, 0.1, CLIP)
    expect(
        any(bool((p.detach() != b).any()) for p, b in zip(model.parameters(), before)),
        "the parameters did not change: no optimizer step?",
    )
    _compare_parameters(model, twin, "after one step")


@train_step.test("two steps in a row (nothing left over from the first)")
def _(train_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=77)
    batches = [step_batch(seed=78), step_batch(seed=79, src_lengths=[2, 6], tgt_lengths=[5, 3])]
    for i, (src, tgt) in enumerate(batches, start=1):  # no clipping here (clip_norm 1e3): old gradients show in full
        loss = _run_step(train_step, model, opt, src, tgt, clip_norm=1e3)
        expected = train_step_reference(twin, twin_opt, src, tgt, PAD, 0.1, 1e3)
        expect(
            abs(loss - expected) <= STEP_ATOL,
            f"the loss of step {i} differs from the reference by {abs(loss - expected):.3g}",
        )
        _compare_parameters(model, twin, f"after step {i}")
