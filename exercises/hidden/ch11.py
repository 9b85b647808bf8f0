"""Hidden tests for chapter 11 (only the batch grader runs them): another <pad> id, one process and one batch
per process, twelve batches without padding; weights that are a process's part of a larger step, Adam with
another <pad> id, and a model handed over in eval mode."""

from __future__ import annotations

from typing import Any

from transformer_lib.grading import expect, get_exercise
from transformer_lib.grading.ch11 import (
    CLIP,
    GROUP,
    STEP_ATOL,
    _check_assignment,
    _check_step_loss,
    _check_weights,
    _compare_parameters,
    _run_step,
    _twins,
    accumulated_step_reference,
    micro_batches,
    step_targets,
    token_weights,
)


@get_exercise("11.process_share").test("another <pad> id; one process; one batch per process", hidden=True)
def _(process_share: Any) -> None:
    targets = step_targets(seed=401, group=GROUP[:4], pad_id=5)
    for world_size in (1, 4):
        _check_assignment(process_share, targets, world_size, pad_id=5)
        _check_weights(process_share, targets, world_size, pad_id=5)
        _check_step_loss(process_share, targets, world_size, seed=402, pad_id=5)


@get_exercise("11.process_share").test("twelve batches on four processes, no <pad> at all", hidden=True)
def _(process_share: Any) -> None:
    targets = step_targets(seed=403, group=GROUP + GROUP[:4], padded=False)
    _check_assignment(process_share, targets, 4)
    _check_weights(process_share, targets, 4)
    _check_step_loss(process_share, targets, 4, seed=404, eps=0.0)


@get_exercise("11.accumulated_step").test("weights of one process's part of a larger step", hidden=True)
def _(accumulated_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=405)
    batches = micro_batches(seed=406)
    share = 0.4  # the other processes hold the other 60 % of the step's target tokens
    weights = [share * w for w in token_weights(batches)]  # these add up to 0.4, not 1
    loss, norm = _run_step(accumulated_step, model, opt, batches, weights)
    expected, expected_norm = accumulated_step_reference(twin, twin_opt, batches, 0, 0.1, CLIP, share=share)
    expect(
        abs(loss - expected) <= STEP_ATOL,
        f"with weights that add up to {share}, the returned loss differs from this process's part of the step's "
        f"loss by {abs(loss - expected):.3g} (use the weights you are given)",
    )
    expect(
        abs(norm - expected_norm) <= STEP_ATOL * max(1.0, expected_norm),
        f"with weights that add up to {share}, the gradient norm differs by {abs(norm - expected_norm):.3g}",
    )
    _compare_parameters(model, twin, f"after an update with weights that add up to {share}")


@get_exercise("11.accumulated_step").test("Adam, two updates, another <pad> id", hidden=True)
def _(accumulated_step: Any) -> None:
    (model, opt), (twin, twin_opt) = _twins(seed=407, optimizer="adam")
    for i, seed in enumerate((408, 412), start=1):
        batches = micro_batches(seed=seed, pad_id=4)
        loss, _ = _run_step(accumulated_step, model, opt, batches, token_weights(batches, 4), 4, 0.2, 0.5)
        expected, _ = accumulated_step_reference(twin, twin_opt, batches, 4, 0.2, 0.5)
        expect(
            abs(loss - expected) <= STEP_ATOL,
            f"the loss of update {i} (pad_id=4) differs from the reference by {abs(loss - expected):.3g}",
        )
        _compare_parameters(model, twin, f"after update {i} with Adam")


@get_exercise("11.accumulated_step").test("a model handed over in eval mode is trained in training mode", hidden=True)
def _(accumulated_step: Any) -> None:
    (model, opt), _ = _twins(seed=409)
    model.eval()
    batches = micro_batches(seed=410)
    _run_step(accumulated_step, model, opt, batches, token_weights(batches))
    expect(model.training, "after accumulated_step the model is still in eval mode: put it in training mode")
