"""Hidden tests for chapter 8 (only the batch grader runs them): the schedule inside PyTorch's LambdaLR, a
<pad> id other than 0, other sizes, Adam, and a model handed over in eval mode."""

from __future__ import annotations

from typing import Any

import torch

from transformer_lib.grading import expect, expect_close, get_exercise
from transformer_lib.grading.ch08 import (
    LOSS_ATOL,
    LR_RTOL,
    _compare_parameters,
    _log_probs,
    _loss,
    _run_step,
    _targets,
    _twins,
    label_smoothing_reference,
    noam_lr_reference,
    step_batch,
    train_step_reference,
)


@get_exercise("08.noam_lr").test("drives torch.optim.lr_scheduler.LambdaLR", hidden=True)
def _(noam_lr: Any) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)  # base lr 1: the scheduled lr is the function's value
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: noam_lr(step, 128, 20, 1.5))
    for step in range(60):
        lr = optimizer.param_groups[0]["lr"]
        expected = noam_lr_reference(step, 128, 20, 1.5)
        expect(
            abs(lr - expected) <= LR_RTOL * expected,
            f"inside LambdaLR, the learning rate at step {step} is off by a factor ×{lr / expected:.4g}",
        )
        optimizer.step()
        scheduler.step()


@get_exercise("08.label_smoothing").test("another <pad> id, other sizes", hidden=True)
def _(label_smoothed_loss: Any) -> None:
    for lengths, length, vocab, pad_id, eps in (
        ([3, 1, 4], 4, 11, 4, 0.1),
        ([1], 1, 7, 0, 0.3),
        ([9, 6], 9, 50, 49, 0.2),
    ):
        log_probs = _log_probs(len(lengths), length, seed=301, vocab=vocab)
        target = _targets(lengths, length, seed=302, pad_id=pad_id, vocab=vocab)
        loss = _loss(label_smoothed_loss, log_probs, target, eps, pad_id)
        expect_close(
            loss,
            label_smoothing_reference(log_probs, target, eps, pad_id),
            f"the loss with pad_id={pad_id}, vocab={vocab}, ε={eps}",
            atol=LOSS_ATOL,
            rtol=0,
        )


@get_exercise("08.train_step").test("Adam, two steps, another <pad> id", hidden=True)
def _(train_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=303, optimizer="adam")
    for i, seed in enumerate((304, 305), start=1):
        src, tgt = step_batch(seed=seed, pad_id=4)
        loss = _run_step(train_step, model, opt, src, tgt, pad_id=4, smoothing=0.2, clip_norm=0.5)
        expected = train_step_reference(twin, twin_opt, src, tgt, 4, 0.2, 0.5)
        expect(
            abs(loss - expected) <= 1e-5,
            f"the loss of step {i} (pad_id=4) differs from the reference by {abs(loss - expected):.3g}",
        )
        _compare_parameters(model, twin, f"after step {i} with Adam")


@get_exercise("08.train_step").test("a model handed over in eval mode is trained in training mode", hidden=True)
def _(train_step: Any) -> None:
    (model, opt), _ = _twins(seed=306)
    model.eval()
    src, tgt = step_batch(seed=307)
    _run_step(train_step, model, opt, src, tgt)
    expect(model.training, "after train_step the model is still in eval mode: put it in training mode (dropout on)")
