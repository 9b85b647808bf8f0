"""Known-wrong implementations of the chapter 8 exercises: each must fail its check."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib.masks import padding_mask, target_mask
from transformer_lib.train import label_smoothed_loss


def _variant(fn, **kwargs):
    return functools.wraps(fn)(functools.partial(fn, **kwargs))


# --------------------------------------------------------------------------- 08.noam_lr


def _noam(
    step,
    d_model,
    warmup,
    factor=1.0,
    *,
    rise=-1.5,
    peak=min,
    use_factor=True,
    d_exp=-0.5,
    clamp=True,
    warm_mult=1.0,
    ramp=True,
    as_tensor=False,
):
    if clamp:
        step = max(step, 1)
    lr = (factor if use_factor else 1.0) * d_model**d_exp
    lr *= peak(step**-0.5, warm_mult * step * warmup**rise) if ramp else step**-0.5
    return torch.tensor(lr) if as_tensor else lr


# --------------------------------------------------------------------------- 08.label_smoothing


def _smoothed(
    log_probs,
    target,
    eps,
    pad_id=0,
    *,
    others_only=False,
    ignore=True,
    divide_all=False,
    reduce="mean",
    pad_value=None,
    detach=False,
    keep_dim=False,
    annotated=False,
):
    vocab = log_probs.size(-1)
    pad = pad_id if pad_value is None else pad_value
    if annotated:  # the Annotated Transformer's distribution: eps / (V - 2) to the others, 0 to <pad>
        q = torch.full_like(log_probs, eps / (vocab - 2))
        q.scatter_(-1, target[..., None], 1 - eps)
        q[..., pad] = 0.0
    elif others_only:
        q = torch.full_like(log_probs, eps / (vocab - 1))
        q.scatter_(-1, target[..., None], 1 - eps)
    else:
        q = torch.full_like(log_probs, eps / vocab)
        q.scatter_add_(-1, target[..., None], torch.full_like(log_probs[..., :1], 1 - eps))
    loss = -(q * log_probs).sum(-1)  # (batch, len)
    real = target != pad
    if not ignore:
        out = loss.mean()
    elif divide_all:
        out = (loss * real).sum() / loss.numel()
    else:
        out = loss[real].sum() if reduce == "sum" else loss[real].mean()
    if detach:
        out = torch.tensor(out.item())
    return out.reshape(1) if keep_dim else out


def _no_smoothing(log_probs, target, eps, pad_id=0):
    return F.nll_loss(log_probs.reshape(-1, log_probs.size(-1)), target.reshape(-1), ignore_index=pad_id)


# --------------------------------------------------------------------------- 08.train_step


def _step(
    model,
    optimizer,
    src,
    tgt,
    pad_id,
    smoothing,
    clip_norm,
    *,
    zero_grad=True,
    clip=True,
    clip_after=False,
    shift=True,
    source_mask=True,
    train_mode=True,
    smooth=True,
    update=True,
    as_tensor=False,
):
    if train_mode:
        model.train()
    tgt_in, tgt_out = (tgt[:, :-1], tgt[:, 1:]) if shift else (tgt[:, :-1], tgt[:, :-1])
    log_probs = model(src, tgt_in, padding_mask(src, pad_id) if source_mask else None, target_mask(tgt_in, pad_id))
    loss = label_smoothed_loss(log_probs, tgt_out, smoothing if smooth else 0.0, pad_id)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if clip and not clip_after:
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if update:
        optimizer.step()
    if clip_after:
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    return loss if as_tensor else loss.item()


WRONG = {
    "08.noam_lr": [
        ("warmup exponent -1 instead of -1.5", _variant(_noam, rise=-1.0)),
        ("warmup part off by a factor of 2", _variant(_noam, warm_mult=2.0)),
        ("max instead of min", _variant(_noam, peak=max)),
        ("factor ignored", _variant(_noam, use_factor=False)),
        ("d_model^0.5 instead of d_model^-0.5", _variant(_noam, d_exp=0.5)),
        ("no warmup at all", _variant(_noam, ramp=False)),
        ("step 0 divides by zero", _variant(_noam, clamp=False)),
        ("returns a tensor", _variant(_noam, as_tensor=True)),
    ],
    "08.label_smoothing": [
        ("<pad> positions not ignored", _variant(_smoothed, ignore=False)),
        ("mean over all positions, <pad> included", _variant(_smoothed, divide_all=True)),
        ("eps / (V - 1) to the non-reference tokens only", _variant(_smoothed, others_only=True)),
        (
            "the Annotated Transformer's distribution (eps / (V - 2), none to <pad>)",
            _variant(_smoothed, annotated=True),
        ),
        ("no smoothing at all", _no_smoothing),
        ("summed instead of averaged", _variant(_smoothed, reduce="sum")),
        ("detached from the graph", _variant(_smoothed, detach=True)),
        ("shape (1,) instead of a scalar", _variant(_smoothed, keep_dim=True)),
        ("pad id hard-coded as 0", _variant(_smoothed, pad_value=0), "hidden"),
    ],
    "08.train_step": [
        ("gradients never reset (no zero_grad)", _variant(_step, zero_grad=False)),
        ("no gradient clipping", _variant(_step, clip=False)),
        ("clipping after the optimizer step", _variant(_step, clip_after=True)),
        ("expected output not shifted (predicts the input token)", _variant(_step, shift=False)),
        ("source padding mask not used", _variant(_step, source_mask=False)),
        ("no label smoothing", _variant(_step, smooth=False)),
        ("no optimizer step", _variant(_step, update=False)),
        ("returns the loss tensor", _variant(_step, as_tensor=True)),
        ("model not put in training mode", _variant(_step, train_mode=False), "hidden"),
    ],
}
