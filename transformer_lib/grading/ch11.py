"""Chapter 11 exercises — scaling out.

* ``11.process_share`` — which batches of a step process ``rank`` of ``world_size`` takes, and the weight of
  each one's loss, its share of the step's target tokens (``process_share``; the library computes both inside
  ``DistributedTrainer.update``);
* ``11.accumulated_step`` — one update from several micro-batches: gradient accumulation with the losses
  weighted by tokens, one clip and one optimizer step (``accumulated_step``, without its DDP parts).

Oracles: for the shares, the round-robin assignment of ``DistributedTrainer.update`` and the loss one process
computes over the whole step at once (PyTorch's ``F.cross_entropy`` on all the step's target tokens), which
the processes' weighted batch losses must add up to; for the accumulated step, chapter 8's training step on
the micro-batches padded and concatenated into one batch, run on an identical copy of model and optimizer.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from numbers import Real
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.train import label_smoothed_loss

from .ch08 import PAD, STEP_ATOL, VOCAB, _compare_parameters, _log_probs, _targets, step_batch, step_model
from .core import Exercise, Mismatch, expect, expect_type, register

# --------------------------------------------------------------------------- 11.process_share

share = register(Exercise("11.process_share", "One process's share of a step", target="process_share", timeout_s=20))

WEIGHT_ATOL = 1e-6  # shares are ratios of small integers: any real slip moves them by far more
STEP_LOSS_ATOL = 1e-5  # float32 means over ~60 positions, added in another order: rounding is ~1e-7

# Target tokens of each sentence, for each batch of the test step (8 batches, 64 tokens): the batches differ
# in their numbers of sentences, of tokens and of <pad> positions, so each wrong weighting gives other shares.
GROUP = ((5, 2, 4), (3,), (6, 6), (1, 2, 3, 4), (7,), (2, 2), (4, 1, 1), (8, 3))


def step_targets(
    seed: int, group: Sequence[Sequence[int]] = GROUP, pad_id: int = PAD, padded: bool = True
) -> list[Tensor]:
    """``tgt_out`` ``(rows, len)`` of each batch of a step: real tokens (never ``pad_id``), then ``<pad>``.

    With ``padded``, every other batch has one more, all-``<pad>``, column (as batches padded to a bucket's
    length have); without it every sentence of a batch has the batch's length (no ``<pad>`` at all).
    """
    out = []
    for k, rows in enumerate(group):
        length = max(rows) + (k % 2 if padded else 0)
        out.append(_targets([r if padded else length for r in rows], length, seed + k, pad_id))
    return out


def process_share_reference(targets: Sequence[Tensor], rank: int, world_size: int, pad_id: int) -> tuple[list, list]:
    """The oracle: ``DistributedTrainer.update``'s choice — every ``world_size``-th batch from batch ``rank`` on,
    each weighted by its share of the step's target tokens (the positions that are not ``<pad>``)."""
    tokens = [int((t != pad_id).sum()) for t in targets]
    mine = range(rank, len(targets), world_size)
    return list(mine), [tokens[k] / sum(tokens) for k in mine]


def _share(
    process_share: Any, targets: list[Tensor], rank: int, world_size: int, pad_id: int = PAD
) -> tuple[list[int], list[float]]:
    """The learner's ``(indices, weights)``, checked for types and lengths."""
    where = f"process {rank} of {world_size}"
    out = process_share(targets, rank, world_size, pad_id)
    expect(
        isinstance(out, (tuple, list)) and len(out) == 2,
        f"process_share should return two lists (batch indices, weights), got {type(out).__name__}"
        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""),
    )
    indices, weights = out
    expect_type(indices, (list, tuple), f"the batch indices ({where})")
    expect_type(weights, (list, tuple), f"the weights ({where})")
    expect(len(indices) == len(weights), f"{where}: {len(indices)} batch indices but {len(weights)} weights (one each)")
    for i in indices:
        expect(
            isinstance(i, int) and not isinstance(i, bool),
            f"{where}: a batch index should be a Python int, got {type(i).__name__}",
        )
    for w in weights:
        if isinstance(w, Tensor):
            raise Mismatch(f"{where}: a weight is a Tensor; return Python floats (`.item()`, or plain arithmetic)")
        expect(
            isinstance(w, Real) and not isinstance(w, bool),
            f"{where}: a weight should be a float, got {type(w).__name__}",
        )
        expect(math.isfinite(w), f"{where}: a weight is {w}, not a finite number")
    return list(indices), [float(w) for w in weights]


def _expect_in_step(indices: list[int], n: int, where: str) -> None:
    """Every index names one of the step's ``n`` batches, none twice."""
    for k in indices:
        if not 0 <= k < n:
            raise Mismatch(f"{where} takes batch {k}, but the step's batches are 0-{n - 1}")
        if indices.count(k) > 1:
            raise Mismatch(f"{where} takes batch {k} more than once")


def _check_assignment(process_share: Any, targets: list[Tensor], world_size: int, pad_id: int = PAD) -> None:
    """Every batch to exactly one process, in the step's order, process r taking batches r, r + world_size, ..."""
    n = len(targets)
    taken = {r: _share(process_share, targets, r, world_size, pad_id)[0] for r in range(world_size)}
    for rank, indices in taken.items():
        _expect_in_step(indices, n, f"process {rank} of {world_size}")
    owners = Counter(k for indices in taken.values() for k in indices)
    for k in range(n):
        if owners[k] != 1:
            whom = "no process" if owners[k] == 0 else f"{owners[k]} processes"
            raise Mismatch(f"with {world_size} processes, batch {k} of the step is taken by {whom} (one, exactly)")
    for rank, indices in taken.items():
        expect(indices == sorted(indices), f"process {rank} of {world_size}: its batches are not in the step's order")
        if indices != process_share_reference(targets, rank, world_size, pad_id)[0]:
            block = bool(indices) and indices == list(range(indices[0], indices[0] + len(indices)))
            raise Mismatch(
                f"with {world_size} processes, process {rank} takes other batches than every world_size-th one "
                f"from batch {rank} on" + (" (it takes a contiguous block of the step)" if block else "")
            )


def _weight_hint(weights: list[float], indices: list[int], targets: list[Tensor], world_size: int, pad_id: int) -> str:
    """Name the known slip that ``weights`` equal (one process's weights of its batches ``indices``)."""

    def shares(counts: list[int], over: Sequence[int] = range(len(targets))) -> list[float]:
        total = sum(counts[j] for j in over)
        return [counts[k] / total for k in indices]

    tokens = [int((t != pad_id).sum()) for t in targets]
    candidates = {
        "the weights are shares of this process's own target tokens, not of the whole step's": shares(tokens, indices),
        "the batches are weighted by their numbers of sentences (rows), not of target tokens": shares(
            [t.size(0) for t in targets]
        ),
        "<pad> positions are counted as target tokens": shares([t.numel() for t in targets]),
        "every batch weighs the same, whatever its number of target tokens": shares([1] * len(targets)),
        "every batch of this process weighs the same, whatever its number of target tokens": shares(
            [1] * len(targets), indices
        ),
        f"the weights are {world_size} (world_size) times the token shares": [world_size * s for s in shares(tokens)],
    }
    for message, values in candidates.items():
        if all(abs(w - v) <= WEIGHT_ATOL for w, v in zip(weights, values)):
            return message
    return ""


def _check_weights(process_share: Any, targets: list[Tensor], world_size: int, pad_id: int = PAD) -> None:
    """Each returned weight is its batch's share of the step's target tokens."""
    tokens = [int((t != pad_id).sum()) for t in targets]
    for rank in range(world_size):
        indices, weights = _share(process_share, targets, rank, world_size, pad_id)
        _expect_in_step(indices, len(targets), f"process {rank} of {world_size}")
        for k, w in zip(indices, weights):
            diff = abs(w - tokens[k] / sum(tokens))
            if diff > WEIGHT_ATOL:
                hint = _weight_hint(weights, indices, targets, world_size, pad_id)
                raise Mismatch(
                    f"process {rank} of {world_size}: the weight of batch {k} differs from its share of the step's "
                    f"target tokens by {diff:.3g}" + (f" — {hint}" if hint else "")
                )


def _check_step_loss(
    process_share: Any, targets: list[Tensor], world_size: int, seed: int, pad_id: int = PAD, eps: float = 0.1
) -> None:
    """The processes' weighted batch losses, added up (what all_reduce does), equal the one-process loss."""
    log_probs = [_log_probs(t.size(0), t.size(1), seed=seed + k) for k, t in enumerate(targets)]  # (rows, len, V)

    def loss_of(lp: Tensor, t: Tensor) -> Tensor:  # mean over the non-<pad> positions
        return F.cross_entropy(lp.reshape(-1, VOCAB), t.reshape(-1), ignore_index=pad_id, label_smoothing=eps)

    batch_losses = [float(loss_of(lp, t)) for lp, t in zip(log_probs, targets)]
    total = 0.0
    for rank in range(world_size):
        indices, weights = _share(process_share, targets, rank, world_size, pad_id)
        _expect_in_step(indices, len(targets), f"process {rank} of {world_size}")
        total += sum(w * batch_losses[k] for k, w in zip(indices, weights))  # this process's part of the loss
    whole = float(
        loss_of(
            torch.cat([lp.reshape(-1, VOCAB) for lp in log_probs]),  # (all positions of the step, V)
            torch.cat([t.reshape(-1) for t in targets]),
        )
    )
    expect(
        abs(total - whole) <= STEP_LOSS_ATOL,
        f"with {world_size} processes, the sum over the processes of their weighted batch losses differs from the "
        f"loss of the whole step computed in one process by {abs(total - whole):.3g}",
    )


@share.test("returns the batch indices and their weights")
def _(process_share: Any) -> None:
    _share(process_share, step_targets(seed=111), 0, 2)


@share.test("process r takes every world_size-th batch, from batch r on", points=2)
def _(process_share: Any) -> None:
    targets = step_targets(seed=112)
    for world_size in (2, 4):
        _check_assignment(process_share, targets, world_size)
    _check_assignment(process_share, targets[:6], 3)


@share.test("each weight is its batch's share of the step's target tokens", points=2)
def _(process_share: Any) -> None:
    targets = step_targets(seed=113)
    for world_size in (2, 4):
        _check_weights(process_share, targets, world_size)


@share.test("the processes' weighted losses add up to the loss of the whole step", points=2)
def _(process_share: Any) -> None:
    targets = step_targets(seed=114)
    for world_size in (2, 4):
        _check_step_loss(process_share, targets, world_size, seed=115)


# --------------------------------------------------------------------------- 11.accumulated_step

accumulate = register(Exercise("11.accumulated_step", "Gradient accumulation", target="accumulated_step", timeout_s=30))

CLIP = 0.05  # small enough that the test steps' gradients (norm ~0.3-1) are always clipped
Batch = tuple[Tensor, Tensor, Tensor]
# Source and target lengths of the sentences of each micro-batch: 3, 1 and 2 sentences with 15, 9 and 6 target
# tokens (with <eos>), so that equal weights, or the last micro-batch alone, give another loss and gradient.
MICRO = (((5, 3, 4), (4, 6, 2)), ((7,), (8,)), ((2, 6), (1, 3)))


def micro_batches(seed: int, shapes: Sequence = MICRO, pad_id: int = PAD) -> list[Batch]:
    """``(src, tgt_in, tgt_out)`` of each micro-batch (chapter 8's test batches, teacher forcing applied)."""
    out = []
    for k, (src_lengths, tgt_lengths) in enumerate(shapes):
        src, tgt = step_batch(seed + k, src_lengths, tgt_lengths, pad_id)
        out.append((src, tgt[:, :-1], tgt[:, 1:]))  # (batch, src_len), (batch, tgt_len - 1) twice
    return out


def token_weights(batches: Sequence[Batch], pad_id: int = PAD) -> list[float]:
    """Each micro-batch's share of the step's target tokens (exercise 1, one process)."""
    tokens = [int((tgt_out != pad_id).sum()) for _, _, tgt_out in batches]
    return [n / sum(tokens) for n in tokens]


def concatenate(batches: Sequence[Batch], pad_id: int = PAD) -> Batch:
    """The micro-batches as one batch: each tensor padded with ``pad_id`` to the longest, then stacked by rows."""

    def cat(tensors: list[Tensor]) -> Tensor:
        width = max(t.size(1) for t in tensors)
        return torch.cat([F.pad(t, (0, width - t.size(1)), value=pad_id) for t in tensors])  # (all rows, width)

    return tuple(cat([b[i] for b in batches]) for i in range(3))  # type: ignore[return-value]


def _forward_loss(model: nn.Module, batch: Batch, pad_id: int, smoothing: float) -> Tensor:
    src, tgt_in, tgt_out = batch
    log_probs = model(src, tgt_in, padding_mask(src, pad_id), target_mask(tgt_in, pad_id))  # (batch, T, vocab)
    return label_smoothed_loss(log_probs, tgt_out, smoothing, pad_id)


def accumulated_step_reference(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    pad_id: int,
    smoothing: float,
    clip_norm: float,
    share: float = 1.0,
) -> tuple[float, float]:
    """The oracle: chapter 8's step on the micro-batches concatenated into one batch; (loss, norm before clip).

    ``share`` is the micro-batches' share of a larger step's target tokens (1: they are the whole step); the
    loss of this process's part of that step is ``share`` times the mean over its own target tokens.
    """
    model.train()
    loss = share * _forward_loss(model, concatenate(batches, pad_id), pad_id, smoothing)  # over all target tokens
    optimizer.zero_grad()
    loss.backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item(), float(norm)


def _slipped_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    weights: Sequence[float],
    pad_id: int,
    smoothing: float,
    clip_norm: float,
    slip: str,
) -> None:
    """The accumulated step with one known slip (for the hints): see :data:`SLIPS`."""
    model.train()
    optimizer.zero_grad()
    for batch, w in zip(batches, weights):
        if slip == "zero_between":
            optimizer.zero_grad()
        loss = _forward_loss(model, batch, pad_id, smoothing) * (1 / len(batches) if slip == "equal" else w)
        loss.backward()
        if slip == "clip_each":
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if slip == "step_each":
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
    if slip not in ("clip_each", "no_clip", "step_each"):
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if slip != "step_each":
        optimizer.step()


SLIPS = {
    "equal": "the micro-batches' losses are averaged with equal weights, not with the given token shares",
    "zero_between": "only the last micro-batch's gradient reached the update: are the gradients cleared between "
    "micro-batches?",
    "step_each": "the parameters moved as if the optimizer stepped after every micro-batch",
    "clip_each": "the gradient was clipped after each micro-batch's backward, not once, after the last one",
    "no_clip": "the gradient was not clipped",
}


def _twins(seed: int, n: int = 2, optimizer: str = "sgd") -> list[tuple[nn.Module, torch.optim.Optimizer]]:
    """``n`` identical (model, optimizer) pairs: the learner's, the reference's, and spares for the hints."""
    model = step_model(seed)
    models = [model] + [copy.deepcopy(model) for _ in range(n - 1)]

    def make(m: nn.Module) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.5)  # plain SGD: the update is the (clipped) gradient itself
        # eps 1e-3, as in chapter 8's checks: some gradients are zero up to rounding, Adam would blow them up.
        return torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.9, 0.98), eps=1e-3)

    return [(m, make(m)) for m in models]


def _run_step(
    accumulated_step: Any,
    model: nn.Module,
    optimizer: Any,
    batches: list[Batch],
    weights: list[float],
    pad_id: int = PAD,
    smoothing: float = 0.1,
    clip_norm: float = CLIP,
) -> tuple[float, float]:
    out = accumulated_step(model, optimizer, batches, weights, pad_id, smoothing, clip_norm)
    expect(
        isinstance(out, (tuple, list)) and len(out) == 2,
        f"accumulated_step should return two floats (loss, gradient norm), got {type(out).__name__}"
        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""),
    )
    for value, what in zip(out, ("loss", "gradient norm")):
        if isinstance(value, Tensor):
            graph = " that still holds the graph" if value.requires_grad else ""
            raise Mismatch(f"the {what} is a Tensor{graph}; return it as a Python float")
        expect(
            isinstance(value, Real) and not isinstance(value, bool),
            f"the {what} should be a float, got {type(value).__name__}",
        )
        expect(math.isfinite(value), f"the {what} is {value}, not a finite number")
    return float(out[0]), float(out[1])


def _loss_hint(loss: float, model: nn.Module, batches: list[Batch]) -> str:
    """Name the known slip that the returned ``loss`` equals (``model``: a copy of the model before the step)."""
    with torch.no_grad():
        losses = [float(_forward_loss(model, b, PAD, 0.1)) for b in batches]
    candidates = {
        "it is the plain mean of the micro-batches' losses, not weighted by their token shares": sum(losses)
        / len(losses),
        "it is the last micro-batch's loss only": losses[-1],
        "it is the sum of the micro-batches' losses, not weighted by their token shares": sum(losses),
    }
    return next((m for m, v in candidates.items() if abs(loss - v) <= STEP_ATOL), "")


@accumulate.test("returns the step's loss and gradient norm as Python floats")
def _(accumulated_step: Any) -> None:
    (model, opt), _ = _twins(seed=121)
    batches = micro_batches(seed=122)
    _run_step(accumulated_step, model, opt, batches, token_weights(batches))


@accumulate.test("loss: the token-weighted mean over the micro-batches")
def _(accumulated_step: Any) -> None:
    (model, opt), (twin, twin_opt), (spare, _) = _twins(seed=123, n=3)
    batches = micro_batches(seed=124)
    loss, _ = _run_step(accumulated_step, model, opt, batches, token_weights(batches))
    expected, _ = accumulated_step_reference(twin, twin_opt, batches, PAD, 0.1, CLIP)
    if abs(loss - expected) > STEP_ATOL:
        hint = _loss_hint(loss, spare.train(), batches)
        raise Mismatch(
            f"the returned loss differs from the loss of the whole step (all micro-batches as one batch) by "
            f"{abs(loss - expected):.3g}" + (f" — {hint}" if hint else "")
        )


@accumulate.test("gradient norm: of the whole step's gradient, before clipping")
def _(accumulated_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=125)
    batches = micro_batches(seed=126)
    _, norm = _run_step(accumulated_step, model, opt, batches, token_weights(batches))
    _, expected = accumulated_step_reference(twin, twin_opt, batches, PAD, 0.1, CLIP)
    if abs(norm - expected) > STEP_ATOL * max(1.0, expected):
        hint = " — is it the norm after clipping?" if abs(norm - min(expected, CLIP)) <= 1e-6 else ""
        raise Mismatch(
            f"the returned gradient norm differs from the norm of the whole step's gradient by "
            f"{abs(norm - expected):.3g}{hint}"
        )


@accumulate.test("parameters after the update: as one step on all the micro-batches together", points=2)
def _(accumulated_step: Any) -> None:
    pairs = _twins(seed=127, n=2 + len(SLIPS))
    (model, opt), (twin, twin_opt) = pairs[:2]
    batches = micro_batches(seed=128)
    weights = token_weights(batches)
    before = [p.detach().clone() for p in model.parameters()]
    _run_step(accumulated_step, model, opt, batches, weights)
    accumulated_step_reference(twin, twin_opt, batches, PAD, 0.1, CLIP)
    expect(
        any(bool((p.detach() != b).any()) for p, b in zip(model.parameters(), before)),
        "the parameters did not change: no optimizer step?",
    )
    try:
        _compare_parameters(model, twin, "after one update")
    except Mismatch as mismatch:
        for (spare, spare_opt), (slip, message) in zip(pairs[2:], SLIPS.items()):
            _slipped_step(spare, spare_opt, batches, weights, PAD, 0.1, CLIP, slip)
            worst = max(
                float((p.detach() - q.detach()).abs().max()) for p, q in zip(model.parameters(), spare.parameters())
            )
            if worst <= STEP_ATOL:
                raise Mismatch(f"{mismatch} — {message}") from None
        raise


@accumulate.test("two updates in a row (nothing left over from the first)")
def _(accumulated_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=129)
    steps = [micro_batches(seed=130), micro_batches(seed=133, shapes=MICRO[::-1][:2])]
    for i, batches in enumerate(steps, start=1):  # no clipping here (clip_norm 1e3): old gradients show in full
        loss, _ = _run_step(accumulated_step, model, opt, batches, token_weights(batches), clip_norm=1e3)
        expected, _ = accumulated_step_reference(twin, twin_opt, batches, PAD, 0.1, 1e3)
        expect(
            abs(loss - expected) <= STEP_ATOL,
            f"the loss of update {i} differs from the reference by {abs(loss - expected):.3g}",
        )
        _compare_parameters(model, twin, f"after update {i}")
