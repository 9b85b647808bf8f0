"""Data-parallel training under torchrun: 2 gloo processes on the CPU against one process.

Two processes that each take every second batch of the same global batch order, with gradients
averaged by DistributedDataParallel, must train exactly like one process that accumulates the
gradients of both batches (``grad_accum=2``): same per-step losses, same weights. Only rank 0
writes, and a run resumed under torchrun continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MIRROR

from transformer_lib.distributed import train_parallel
from transformer_lib.train import PRESETS, train

pytestmark = pytest.mark.usefixtures("offline")

ROOT = Path(__file__).resolve().parent.parent
# Two processes sum the two batches' gradients in another order than one process does (an
# all-reduce of two partial gradients, then / 2, against accumulation into one buffer), so the
# results may differ by float32 rounding: a few ulp per step, amplified a little by Adam over 6
# steps. 1e-5 relative is ~100x float32's epsilon and far below any real difference (a wrong
# batch or a wrong loss weight changes the loss in the second or third digit).
# Both sides run in float32 (bf16=False): on a CPU with bf16 instructions autocast would round every
# matrix product to 8 bits of mantissa, and a last-bit difference in a weight can flip such a rounding,
# so the two orders of summation would drift apart by ~1e-4 over 6 steps and prove nothing.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5

# --set overrides of the tiny preset: a few steps on 400 pairs, one log record per step.
OVERRIDES = ["max_steps=6", "log_every=1", "eval_every=1000", "save_every=3", "train_limit=400", "valid_limit=50"]


def torchrun(out: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m transformer_lib train ...`` on the CPU, one thread per rank."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TRANSFORMER_LIB_DATA_MIRROR=str(MIRROR))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "transformer_lib",
        "train",
        "--out",
        str(out),
        "--no-progress",
        "--bleu-sentences",
        "0",
        *args,
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def step_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_log(out) if "event" not in r]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A 2-process run without dropout (dropout masks are per process, so they could not match)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun(out, "--preset", "tiny", "--set", "dropout=0", "bf16=false", *OVERRIDES)
    return out, result


def test_two_processes_train_like_one_with_the_same_global_batch(two_processes, tmp_path):
    out, _ = two_processes
    config = dataclasses.replace(
        PRESETS["tiny"],
        dropout=0.0,
        bf16=False,
        max_steps=6,
        log_every=1,
        eval_every=1000,
        save_every=3,
        train_limit=400,
        valid_limit=50,
    )
    single = train_parallel(config, tmp_path / "one", device="cpu", progress=False, grad_accum=2)
    ddp = step_losses(out)
    assert [r["precision"] for r in read_log(out) if r.get("event") == "setup"] == ["fp32"]
    assert len(ddp) == len(single["losses"]) == 6
    assert ddp == pytest.approx(single["losses"], rel=LOSS_RTOL)
    a, b = weights(out), weights(tmp_path / "one")
    assert a.keys() == b.keys()
    # The key biases are left out: adding b to every key adds q·b to every score of a row, which the
    # softmax ignores, so their gradient is exactly zero in exact arithmetic and only rounding noise in
    # floating point. Adam divides that noise by its own size and takes full steps with it, so these
    # biases follow the summation order (CI's CPU: 5.6e-5 apart after 6 steps), not the training.
    compared = [k for k in a if not k.endswith("W_K.bias")]
    assert len(compared) > 0.8 * len(a)
    for k in compared:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=WEIGHT_ATOL, msg=lambda m, k=k: f"{k}: {m}")
    # A wrong weighting (e.g. each process's own mean, averaged) would change the losses: the test can fail.
    first_batch_only = dataclasses.replace(config, max_steps=2)
    other = train(first_batch_only, tmp_path / "half", device="cpu", progress=False)
    assert other["losses"][1] != pytest.approx(ddp[1], rel=LOSS_RTOL)


def test_only_rank_0_writes(two_processes):
    out, result = two_processes
    log = read_log(out)
    assert [r["step"] for r in log if "event" not in r] == [1, 2, 3, 4, 5, 6], "one record per step, written once"
    assert [r["step"] for r in log if r.get("event") == "eval"] == [6]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_last.pt", "checkpoints", "log.jsonl", "spm.model"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003.pt", "step_0000006.pt"]
    assert result.stdout.count("stopped after 6 steps") == 1, result.stdout
    ckpt = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2


def test_resume_under_torchrun_is_exact_with_dropout(tmp_path):
    """Dropout on: each process's random stream must be saved and restored, not just rank 0's."""
    args = ["--preset", "tiny", "--set", "dropout=0.1", *OVERRIDES]
    torchrun(tmp_path / "full", *args)
    torchrun(tmp_path / "split", *args, "max_steps=3")  # the later max_steps wins
    assert len(step_losses(tmp_path / "split")) == 3
    torchrun(tmp_path / "split", "--resume", "--set", "max_steps=6")
    assert step_losses(tmp_path / "split") == step_losses(tmp_path / "full"), "bit-identical losses on CPU"
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {"step": 3, "event": "resumed"} in read_log(tmp_path / "split")
    # The checkpoint took 2 processes x 1 batch per step: one process must take 2 batches to continue it.
    config = dataclasses.replace(
        PRESETS["tiny"],
        dropout=0.1,
        max_steps=9,
        log_every=1,
        eval_every=1000,
        save_every=3,
        train_limit=400,
        valid_limit=50,
    )
    with pytest.raises(ValueError, match=r"2 process\(es\) x grad_accum=1 .* this run 1 x 1; keep the product"):
        train_parallel(config, tmp_path / "split", resume=True, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"its steps took 2 batches each, this run's take 1"):
        train(config, tmp_path / "split", resume=True, device="cpu", progress=False)  # chapter 8's loop, one batch
