"""Chapter 11 — data parallelism: one training run on several processes, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m transformer_lib train ...`` starts N processes and tells each its
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Every process holds a full copy of the model (wrapped
in ``DistributedDataParallel``: NCCL on GPUs, gloo on CPUs), reads the same global batch order and
takes every ``world_size``-th batch of each step's group; DDP averages the gradients during the
backward pass, so every copy takes the same update. Each optimizer step consumes
``world_size * grad_accum`` consecutive batches, and the loss is weighted by each batch's share of
the step's target tokens, so the update is that of one process over all of them: one process with
``grad_accum = world_size`` reproduces a multi-process run exactly.

``DistributedTrainer`` is chapter 8's ``Trainer`` with its extension points filled in; the loop
itself (``Trainer.fit``) is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checks import check_positive_ints
from .masks import padding_mask, target_mask
from .model import Transformer
from .train import (
    PreparedData,
    TrainConfig,
    Trainer,
    clip_and_step,
    label_smoothed_loss,
    prepare_data,
    rng_state,
    set_rng_state,
)
from .utils import PAD_ID, resolve_device

__all__ = ["distributed_env", "accumulated_step", "DistributedTrainer", "train_parallel"]


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the variables ``torchrun`` sets, or ``None`` without them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(
            f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r}, "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} must be integers (they are set by torchrun)"
        ) from None


def accumulated_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[Tensor, Tensor, Tensor]],
    weights: list[float],
    config: TrainConfig,
    autocast: contextlib.AbstractContextManager,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One update from several batches: chapter 8's ``train_step`` with gradient accumulation across processes.

    ``batches`` are this process's ``(src, tgt_in, tgt_out)`` of the step, ``weights`` their shares of
    the step's target tokens (over all processes the shares sum to 1). The gradient is that of the
    token-weighted mean loss of the whole step; with ``DistributedDataParallel`` the processes'
    gradients are averaged in the backward of the last batch only (``no_sync`` before it).
    Returns the step's mean loss (the same on every process) and the gradient norm before clipping.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=batches[0][0].device)  # this process's share of the step's mean loss
    for j, ((src, tgt_in, tgt_out), weight) in enumerate(zip(batches, weights)):
        no_sync = getattr(model, "no_sync", None)  # DDP: no gradient all-reduce until the last batch
        with no_sync() if no_sync is not None and j < len(batches) - 1 else contextlib.nullcontext():
            with autocast:
                log_probs = model(src, tgt_in, padding_mask(src, PAD_ID), target_mask(tgt_in, PAD_ID))  # (B, T, V)
                batch_loss = label_smoothed_loss(log_probs, tgt_out, config.label_smoothing)
            scaled = batch_loss * (weight * world_size)  # x world_size undoes DDP's average over processes
            (scaled if scaler is None else scaler.scale(scaled)).backward()
        loss = loss + batch_loss.detach() * weight
    if world_size > 1:
        dist.all_reduce(loss)  # the mean loss over the whole step, identical on every process
    return loss.item(), clip_and_step(model, optimizer, loss, config, scaler)


class DistributedTrainer(Trainer):
    """Chapter 8's ``Trainer`` as process ``rank`` of ``world_size``, ``grad_accum`` batches per process and step.

    Only rank 0 writes files, logs and evaluates; every process saves its random state in the
    checkpoint, so a resumed run continues each dropout stream exactly. With ``world_size=1`` this
    is a single process that accumulates gradients over ``grad_accum`` batches.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        device: str | torch.device | None = None,
        progress: bool = True,
        on_eval: Callable[[Transformer, PreparedData, int], dict] | None = None,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(config, out_dir, device, progress, on_eval)
        check_positive_ints(grad_accum=grad_accum, world_size=world_size)
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.is_main = rank == 0
        self.batches_per_step = world_size * grad_accum  # over all processes

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def prepare(self, resume: bool) -> PreparedData:
        """Rank 0 tokenizes and writes the SentencePiece models; the others then read them."""
        data = super().prepare(resume) if self.is_main else None
        self.barrier()
        return data if data is not None else prepare_data(self.config, self.out, reuse_tokenizer=True, write=False)

    def check_layout(self, checkpoint: dict) -> None:
        """The checkpoint's processes x grad_accum must equal this run's: the same batches per step."""
        saved_world, saved_accum = checkpoint.get("world_size", 1), checkpoint.get("grad_accum", 1)
        if saved_world * saved_accum != self.batches_per_step:
            raise ValueError(
                f"cannot resume {self.last_path}: it took {saved_world} process(es) x grad_accum={saved_accum} "
                f"batches per step, this run {self.world_size} x {self.grad_accum}; keep the product the same"
            )

    def seed_dropout(self) -> None:
        """The same initial weights on every process (seeded before), but each its own dropout masks."""
        if self.rank > 0:
            torch.manual_seed(self.config.seed + 7919 * self.rank)

    def restore_rng(self, checkpoint: dict) -> None:
        """Each process's own saved random stream; a fresh, repeatable one if the number of processes changed."""
        states = checkpoint.get("rng_per_rank")
        if states is not None and len(states) == self.world_size:
            set_rng_state(states[self.rank])
        elif self.is_main:
            set_rng_state(checkpoint["rng"])
        else:
            torch.manual_seed(self.config.seed + 7919 * self.rank + self.step)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel`` around the model (it averages the gradients), then ``torch.compile``."""
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return super().wrap(model)

    def update(self, batches: list[list[int]]) -> tuple[float, float]:
        """Every ``world_size``-th batch of the step's group, accumulated with each batch's share of the tokens."""
        tokens = [sum(self.lengths[i][1] + 1 for i in b) for b in batches]  # target tokens (with <eos>) per batch
        mine = range(self.rank, len(batches), self.world_size)
        return accumulated_step(
            self.forward,
            self.optimizer,
            [self.batch(batches[k]) for k in mine],
            [tokens[k] / sum(tokens) for k in mine],
            self.config,
            self.autocast,
            self.world_size,
            self.scaler,
        )

    def state(self) -> dict:
        """Chapter 8's checkpoint, plus the layout and every process's random state (a collective call)."""
        rng_per_rank = None
        if self.world_size > 1:
            rng_per_rank = [None] * self.world_size
            dist.all_gather_object(rng_per_rank, rng_state())
        layout = {"world_size": self.world_size, "grad_accum": self.grad_accum, "rng_per_rank": rng_per_rank}
        return super().state() | layout

    def out_of_time(self) -> bool:
        """Rank 0's clock decides for every process, so that all stop after the same step."""
        out_of_time = super().out_of_time()
        if self.world_size > 1 and self.config.max_minutes is not None:
            flag = torch.tensor(float(out_of_time), device=self.device)
            dist.broadcast(flag, src=0)
            out_of_time = bool(flag.item())
        return out_of_time

    def summary(self) -> dict:
        return super().summary() | {"world_size": self.world_size}


def train_parallel(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_eval: Callable[[Transformer, PreparedData, int], dict] | None = None,
    grad_accum: int = 1,
) -> dict:
    """``train.train`` on every process ``torchrun`` started (or on this one, accumulating ``grad_accum`` batches).

    Under torchrun the process group is created (NCCL for CUDA, gloo otherwise) unless one exists,
    each process uses GPU ``LOCAL_RANK`` when CUDA is used, and the group is destroyed at the end
    if this function created it. Returns the run's summary (with ``world_size``).
    """
    env = distributed_env()
    device = resolve_device(device)
    if env is None:
        return DistributedTrainer(config, out_dir, device, progress, on_eval, grad_accum).fit(resume)
    rank, world_size, local_rank = env
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        trainer = DistributedTrainer(config, out_dir, device, progress, on_eval, grad_accum, rank, world_size)
        return trainer.fit(resume)
    finally:
        if created:
            dist.destroy_process_group()
