"""Known-wrong implementations of the chapter 11 exercises: each must fail its check."""

from __future__ import annotations

import functools

import torch
from torch import nn

from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.train import label_smoothed_loss


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 11.process_share


def _share(
    targets, rank, world_size, pad_id=0, *, count="tokens", over="step", assign="every", pad_value=None, scaled=False
):
    pad = pad_id if pad_value is None else pad_value
    counts = {
        "tokens": [int((t != pad).sum()) for t in targets],
        "rows": [t.size(0) for t in targets],
        "cells": [t.numel() for t in targets],
        "ones": [1 for _ in targets],
    }[count]
    if assign == "every":
        mine = list(range(rank, len(targets), world_size))
    else:  # a contiguous block of the step per process
        size = len(targets) // world_size
        mine = list(range(rank * size, (rank + 1) * size))
    total = sum(counts) if over == "step" else sum(counts[k] for k in mine)
    weights = [(world_size if scaled else 1) * counts[k] / total for k in mine]
    if over == "tensor":
        weights = [torch.tensor(counts[k]) / sum(counts) for k in mine]
    return mine, weights


# --------------------------------------------------------------------------- 11.accumulated_step


def _grad_norm(model):
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))


def _accumulate(
    model,
    optimizer,
    batches,
    weights,
    pad_id,
    smoothing,
    clip_norm,
    *,
    weighted=True,
    zero_start=True,
    zero_between=False,
    step_each=False,
    clip="end",
    returned="weighted",
    norm_after=False,
    train_mode=True,
):
    if train_mode:
        model.train()
    if zero_start:
        optimizer.zero_grad()
    total, last = 0.0, None
    for (src, tgt_in, tgt_out), w in zip(batches, weights):
        if zero_between:
            optimizer.zero_grad()
        log_probs = model(src, tgt_in, padding_mask(src, pad_id), target_mask(tgt_in, pad_id))
        loss = label_smoothed_loss(log_probs, tgt_out, smoothing, pad_id)
        w = w if weighted else 1 / len(batches)
        (w * loss).backward()
        if clip == "each":
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if step_each:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
        total, last = total + w * loss.item(), loss
    norm = _grad_norm(model)
    if clip == "end" and not step_each:
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if not step_each:
        optimizer.step()
    if norm_after:
        norm = _grad_norm(model)
    if returned == "last":
        return last.item(), float(norm)
    if returned == "tensor":
        return last * 0 + total, norm
    return total, float(norm)


WRONG = {
    "11.process_share": [
        ("weighted by sentences (rows), not target tokens", _variant(_share, count="rows")),
        ("<pad> positions counted as target tokens", _variant(_share, count="cells")),
        ("every batch weighs the same", _variant(_share, count="ones")),
        ("shares of this process's own tokens, not the step's", _variant(_share, over="rank")),
        ("a contiguous block of batches, not every world_size-th", _variant(_share, assign="block")),
        ("weights multiplied by world_size", _variant(_share, scaled=True)),
        ("weights returned as tensors", _variant(_share, over="tensor")),
        ("pad id hard-coded as 0", _variant(_share, pad_value=0), "hidden"),
    ],
    "11.accumulated_step": [
        ("per-micro-batch means averaged with equal weights", _variant(_accumulate, weighted=False)),
        ("gradients zeroed between micro-batches", _variant(_accumulate, zero_between=True)),
        ("an optimizer step after every micro-batch", _variant(_accumulate, step_each=True)),
        ("each micro-batch's gradient clipped, not the sum once at the end", _variant(_accumulate, clip="each")),
        ("no clipping", _variant(_accumulate, clip="none")),
        ("old gradients not cleared before the first micro-batch", _variant(_accumulate, zero_start=False)),
        ("returns the last micro-batch's loss", _variant(_accumulate, returned="last")),
        ("returns the gradient norm after clipping", _variant(_accumulate, norm_after=True)),
        ("returns the loss as a tensor", _variant(_accumulate, returned="tensor")),
        ("model not put in training mode", _variant(_accumulate, train_mode=False), "hidden"),
    ],
}
