"""The training pipeline: schedule, loss, overfitting, exact resume, divergence, checkpoints, release."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import transformer_lib.chinese  # noqa: F401  (registers the Tatoeba corpus and its preset)
from transformer_lib import data
from transformer_lib.checkpoint import load_translator, release_checkpoint, save_checkpoint
from transformer_lib.evaluate import translate
from transformer_lib.train import (
    PRESETS,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    label_smoothed_loss,
    noam_lr,
    train,
)

pytestmark = pytest.mark.usefixtures("offline")
train_module = importlib.import_module("transformer_lib.train")

LOSS_TOL = 1e-6  # float32 loss against a float32 hand-written formula: a few rounding steps apart
OVERFIT_LOSS_RATIO = 0.1  # mean loss of the last 10 steps / first 10 steps after memorising 64 pairs
OVERFIT_EXACT_FRACTION = 0.75  # share of the 64 training targets greedy decoding must reproduce exactly

# A small model memorising 64 pairs: no dropout, no smoothing, a moderate peak learning rate.
OVERFIT = dataclasses.replace(
    PRESETS["tiny"],
    name="overfit",
    train_limit=64,
    valid_limit=16,
    vocab_size=300,
    max_tokens=800,
    dropout=0.0,
    label_smoothing=0.0,
    warmup=30,
    lr_factor=0.5,
    max_steps=160,
    log_every=10,
    eval_every=80,
    save_every=40,
    keep_checkpoints=2,
)
# For the resume tests: dropout on (the random state must be restored), several epochs, seed != 0.
RESUME = dataclasses.replace(
    PRESETS["tiny"],
    name="resume",
    train_limit=64,
    valid_limit=8,
    vocab_size=300,
    max_tokens=400,
    warmup=10,
    max_steps=12,
    log_every=2,
    eval_every=100,
    save_every=100,
    seed=3,
)


@pytest.fixture(scope="module")
def run(offline, tmp_path_factory):
    """One shared training run of OVERFIT (about 160 small steps): its directory and summary."""
    out = tmp_path_factory.mktemp("overfit")
    torch.manual_seed(0)
    return out, train(OVERFIT, out, device="cpu", progress=False)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The learning-rate schedule and the loss


def test_noam_lr_is_the_papers_formula():
    for d_model, warmup, factor in [(512, 4000, 1.0), (64, 100, 2.0)]:
        for step in [1, 2, 10, warmup - 1, warmup, warmup + 1, 3 * warmup, 100_000]:
            expected = factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
            assert noam_lr(step, d_model, warmup, factor) == pytest.approx(expected, rel=1e-12)
    assert noam_lr(0, 512, 4000) == noam_lr(1, 512, 4000), "step 0 is treated as step 1, never a division by 0"


def test_noam_lr_rises_linearly_then_decays_and_peaks_at_warmup():
    warmup = 200
    lrs = [noam_lr(s, 256, warmup) for s in range(1, 4 * warmup)]
    assert max(range(len(lrs)), key=lrs.__getitem__) + 1 == warmup
    assert noam_lr(warmup // 2, 256, warmup) == pytest.approx(noam_lr(warmup, 256, warmup) / 2, rel=1e-12)
    assert noam_lr(4 * warmup, 256, warmup) == pytest.approx(noam_lr(warmup, 256, warmup) / 2, rel=1e-12)


def hand_smoothed_loss(log_probs, target, eps, pad):
    """Cross-entropy against (1 - eps) * one_hot + eps / V, averaged over the non-pad positions."""
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (batch, len)
    uniform = -log_probs.mean(-1)  # (batch, len): cross-entropy against the uniform distribution
    per_token = (1 - eps) * nll + eps * uniform
    keep = target != pad
    return per_token[keep].sum() / keep.sum()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_the_formula(eps):
    log_probs = F.log_softmax(torch.randn(3, 7, 11), dim=-1)
    target = torch.randint(1, 11, (3, 7))
    target[0, 5:] = 0
    target[2, 2:] = 0
    loss = label_smoothed_loss(log_probs, target, eps)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(hand_smoothed_loss(log_probs, target, eps, 0).item(), abs=LOSS_TOL)
    if eps == 0.0:
        expected = F.nll_loss(log_probs.reshape(-1, 11), target.reshape(-1), ignore_index=0)
        assert loss.item() == pytest.approx(expected.item(), abs=LOSS_TOL)


def test_label_smoothed_loss_ignores_pads():
    log_probs = F.log_softmax(torch.randn(2, 6, 9), dim=-1)
    target = torch.randint(1, 9, (2, 6))
    target[:, 4:] = 5  # pad id 5 here
    other = log_probs.clone()
    other[:, 4:] = F.log_softmax(10 * torch.randn(2, 2, 9), dim=-1)  # anything at the pad positions
    a, b = label_smoothed_loss(log_probs, target, 0.1, pad_id=5), label_smoothed_loss(other, target, 0.1, pad_id=5)
    assert a.item() == pytest.approx(b.item(), abs=LOSS_TOL)
    # ... and pads do not count in the mean: the loss equals that of the unpadded part alone.
    alone = label_smoothed_loss(log_probs[:, :4], target[:, :4], 0.1, pad_id=5)
    assert a.item() == pytest.approx(alone.item(), abs=LOSS_TOL)


def test_label_smoothing_penalises_overconfidence():
    # With eps > 0 the best prediction is not a one-hot: a certain model pays more than a hedging one.
    target = torch.tensor([[2]])
    certain = torch.log(torch.tensor([[[1e-6, 1e-6, 1 - 2e-6]]]))
    hedging = torch.log(torch.tensor([[[0.05, 0.05, 0.9]]]))
    assert label_smoothed_loss(certain, target, 0.1, pad_id=-1) > label_smoothed_loss(hedging, target, 0.1, pad_id=-1)
    assert label_smoothed_loss(certain, target, 0.0, pad_id=-1) < label_smoothed_loss(hedging, target, 0.0, pad_id=-1)


# ---------------------------------------------------------------------------------------------
# A whole (tiny) run


def test_tiny_model_overfits_64_pairs(run):
    out, summary = run
    losses = summary["losses"]
    assert summary["step"] == len(losses) == OVERFIT.max_steps and summary["stop_reason"] == "max_steps"
    assert sum(losses[-10:]) / 10 < OVERFIT_LOSS_RATIO * sum(losses[:10]) / 10
    model, src_tok, tgt_tok = load_translator(out / "checkpoint_last.pt")
    pairs = data.load_multi30k("train")[: OVERFIT.train_limit]
    hyps = translate(model, src_tok, tgt_tok, [de for de, _ in pairs], max_extra_len=10)
    exact = sum(h == en for h, (_, en) in zip(hyps, pairs))
    assert exact >= OVERFIT_EXACT_FRACTION * len(pairs), list(zip(hyps, pairs))[:5]


def test_log_records(run):
    out, summary = run
    log = read_log(out)
    steps = [r for r in log if "event" not in r]
    assert [r["step"] for r in steps] == list(range(OVERFIT.log_every, OVERFIT.max_steps + 1, OVERFIT.log_every))
    for r in steps:
        assert {"step", "loss", "lr", "tokens_per_s", "epoch", "elapsed_s"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0
        # the lr the logged step used: the schedule's value at that step
        assert r["lr"] == pytest.approx(
            noam_lr(r["step"], OVERFIT.d_model, OVERFIT.warmup, OVERFIT.lr_factor), rel=1e-9
        )
        window = summary["losses"][r["step"] - OVERFIT.log_every : r["step"]]
        assert r["loss"] == pytest.approx(sum(window) / len(window), rel=1e-9)
    evals = [r for r in log if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == list(range(OVERFIT.eval_every, OVERFIT.max_steps + 1, OVERFIT.eval_every))
    assert all(r["val_loss"] > 0 for r in evals)


def test_the_log_says_what_the_run_computed_on(run):
    out, _ = run
    (setup,) = [r for r in read_log(out) if r.get("event") == "setup"]
    expected = {torch.bfloat16: "bf16", None: "fp32"}[train_module.autocast_dtype(torch.device("cpu"), OVERFIT.bf16)]
    assert setup == {
        "step": 0,
        "event": "setup",
        "device": "cpu",
        "precision": expected,
        "cpu_threads": setup["cpu_threads"],
    }
    assert setup["cpu_threads"] == torch.get_num_threads()


def test_checkpoint_rotation_keeps_the_last_ones(run):
    out, _ = run
    saved = list(range(OVERFIT.save_every, OVERFIT.max_steps + 1, OVERFIT.save_every))
    assert len(saved) > OVERFIT.keep_checkpoints, "the test must make the rotation delete something"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"step_{s:07d}.pt" for s in saved[-OVERFIT.keep_checkpoints :]]
    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    newest = torch.load(out / "checkpoints" / kept[-1], map_location="cpu", weights_only=True)
    assert last["step"] == newest["step"] == OVERFIT.max_steps
    assert all(torch.equal(last["model"][k], newest["model"][k]) for k in last["model"])
    assert {"optimizer", "scheduler", "rng", "epoch", "batch_index", "tokenizers"} <= last.keys()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_last.pt", "checkpoints", "log.jsonl", "spm.model"]


def test_release_checkpoint_averages_in_fp16_and_translates(run, tmp_path):
    out, _ = run
    path = release_checkpoint(out, tmp_path / "release.pt", average_last=2)
    released = torch.load(path, map_location="cpu", weights_only=True)
    states = [
        torch.load(p, map_location="cpu", weights_only=True)["model"]
        for p in sorted((out / "checkpoints").glob("step_*.pt"))
    ]
    assert released["averaged"] == 2 == len(states)
    assert not torch.equal(states[0]["generator.proj.bias"], states[1]["generator.proj.bias"]), (
        "an average of two different states"
    )
    for k, v in released["model"].items():
        assert v.dtype == torch.float16, k
        assert torch.equal(v, ((states[0][k].float() + states[1][k].float()) / 2).half()), k
    # The shared embedding is one tensor in the file, not three copies.
    tied = [released["model"][k] for k in ("src_embed.lut.weight", "tgt_embed.lut.weight", "generator.proj.weight")]
    assert len({t.untyped_storage().data_ptr() for t in tied}) == 1
    assert path.stat().st_size < (out / "checkpoint_last.pt").stat().st_size / 3  # no optimizer, half precision

    model, src_tok, tgt_tok = load_translator(path)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.generator.proj.bias, released["model"]["generator.proj.bias"].float())
    sentences = ["Ein Hund läuft.", "Zwei Männer stehen vor einem Gebäude.", "Eine Frau."]
    hyps = translate(model, src_tok, tgt_tok, sentences, max_extra_len=10)
    assert len(hyps) == 3 and all(isinstance(h, str) and h for h in hyps)


def test_release_of_the_last_checkpoint_alone(run, tmp_path):
    out, _ = run
    released = torch.load(release_checkpoint(out, tmp_path / "r.pt"), map_location="cpu", weights_only=True)
    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert released["averaged"] == 1 and released["step"] == last["step"]
    assert all(torch.equal(released["model"][k], last["model"][k].half()) for k in last["model"])
    with pytest.raises(ValueError, match="average_last must be a positive integer"):
        release_checkpoint(out, tmp_path / "r0.pt", average_last=0)


def test_load_translator_errors(run, tmp_path):
    out, _ = run
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint {missing} does not exist"):
        load_translator(missing)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "checkpoint_last.pt").read_bytes()[:50_000])
    with pytest.raises(ValueError, match=r"truncated\.pt is not a readable checkpoint \(corrupt or truncated\?\)"):
        load_translator(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_translator(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a transformer_lib translator checkpoint"):
        load_translator(other)
    step_file = sorted((out / "checkpoints").iterdir())[-1]  # weights only: no configs, no tokenizers
    with pytest.raises(ValueError, match="not a transformer_lib translator checkpoint"):
        load_translator(step_file)


def test_a_fresh_run_will_not_overwrite_a_run(run):
    out, _ = run
    before = (out / "checkpoint_last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(OVERFIT, out, device="cpu", progress=False)
    assert (out / "checkpoint_last.pt").read_bytes() == before


def test_no_training_pairs_left_is_an_error_not_an_endless_loop(tmp_path):
    config = dataclasses.replace(RESUME, max_len=1)  # every caption is longer than one token
    with pytest.raises(ValueError, match="no training pairs left"):
        train(config, tmp_path, device="cpu", progress=False)


def test_validation_loss_of_pairs_longer_than_the_batch_budget(run):
    out, _ = run
    model, tok, _ = load_translator(out / "checkpoint_last.pt")
    short = [(tok.encode("Ein Hund."), tok.encode("A dog."))]
    long = [(tok.encode("Ein Hund läuft. " * 30), tok.encode("A dog runs. " * 30))]
    assert len(long[0][0]) + 1 > 100
    loss = train_module.evaluate_loss(model, short + long, max_tokens=100, device=torch.device("cpu"))
    assert math.isfinite(loss) and loss > 0
    # the mean per token over both: the same as evaluating each alone, weighted by its target tokens
    parts = [train_module.evaluate_loss(model, p, 10_000, torch.device("cpu")) for p in (short, long)]
    counts = [len(p[0][1]) + 1 for p in (short, long)]
    assert loss == pytest.approx((parts[0] * counts[0] + parts[1] * counts[1]) / sum(counts), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Exact resume


def consume_rng(model, prepared, step):
    """An on_eval that draws random numbers (sampling, say): it must not change the training."""
    return {"noise": torch.rand(1).item()}


def test_resume_gives_the_same_losses_and_weights(tmp_path):
    half = RESUME.max_steps // 2
    full = train(RESUME, tmp_path / "full", device="cpu", progress=False, on_eval=consume_rng)
    first = train(
        dataclasses.replace(RESUME, max_steps=half),
        tmp_path / "split",
        device="cpu",
        progress=False,
        on_eval=consume_rng,
    )
    stopped = torch.load(tmp_path / "split" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert stopped["step"] == half and stopped["batch_index"] > 0, "the test must stop in the middle of an epoch"
    assert full["epoch"] >= 1, "the test must cross an epoch boundary"
    # A killed run logged steps its checkpoint does not hold (and a line cut short): resume drops them.
    with open(tmp_path / "split" / "log.jsonl", "a") as f:
        f.write(
            json.dumps({"step": half + 2, "epoch": 0, "loss": 123.0, "lr": 0.0, "tokens_per_s": 1.0}) + '\n{"step": 1'
        )
    second = train(RESUME, tmp_path / "split", resume=True, device="cpu", progress=False, on_eval=consume_rng)

    assert second["step"] == RESUME.max_steps
    assert first["losses"] + second["losses"] == full["losses"], "bit-identical losses on CPU"
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (a["epoch"], a["batch_index"]) == (b["epoch"], b["batch_index"])
    assert b["train_config"]["max_steps"] == RESUME.max_steps
    step_records = [
        [(r["step"], r["loss"]) for r in read_log(tmp_path / d) if "event" not in r] for d in ("full", "split")
    ]
    assert step_records[0] == step_records[1], "one record per step, the killed run's extra one dropped"
    assert {"step": half, "event": "resumed"} in read_log(tmp_path / "split")


def test_resume_refuses_a_different_model_and_a_missing_checkpoint(tmp_path):
    train(dataclasses.replace(RESUME, max_steps=2), tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"cannot resume .*checkpoint_last\.pt with a different d_model, lr_factor"):
        train(
            dataclasses.replace(RESUME, d_model=32, lr_factor=2.0),
            tmp_path / "run",
            resume=True,
            device="cpu",
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match=r"cannot resume: .*empty.*checkpoint_last\.pt does not exist"):
        train(RESUME, tmp_path / "empty", resume=True, device="cpu", progress=False)
    (tmp_path / "run" / "checkpoint_last.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train(RESUME, tmp_path / "run", resume=True, device="cpu", progress=False)


# ---------------------------------------------------------------------------------------------
# Divergence and atomic saving


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    bad_step = 5
    calls = []

    def nan_after(log_probs, target, smoothing, pad_id=0):
        calls.append(1)
        loss = label_smoothed_loss(log_probs, target, smoothing, pad_id)
        return loss * float("nan") if len(calls) >= bad_step else loss

    monkeypatch.setattr(train_module, "label_smoothed_loss", nan_after)
    config = dataclasses.replace(RESUME, max_steps=20, save_every=2, log_every=1)
    with pytest.raises(
        TrainingDiverged, match=rf"loss became nan at step {bad_step}.*last good checkpoint is .*checkpoint_last\.pt"
    ):
        train(config, tmp_path, device="cpu", progress=False)
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == (bad_step - 1) // config.save_every * config.save_every
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    model, _, _ = load_translator(tmp_path / "checkpoint_last.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    log = read_log(tmp_path)
    assert log[-1]["event"] == "diverged" and log[-1]["step"] == bad_step and "nan" in log[-1]["reason"]
    assert [r["step"] for r in log if "event" not in r] == list(range(1, bad_step))
    assert not list(tmp_path.glob(".*.part")) and not list((tmp_path / "checkpoints").glob(".*.part"))


def test_infinite_gradient_stops_training_before_the_update(tmp_path, monkeypatch):
    bad_step = 3
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def inf_at(parameters, max_norm, *args, **kwargs):
        calls.append(1)
        norm = clip(parameters, max_norm, *args, **kwargs)
        return norm * float("inf") if len(calls) == bad_step else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_at)
    config = dataclasses.replace(RESUME, max_steps=20, save_every=1)
    with pytest.raises(TrainingDiverged, match=rf"gradient norm became inf .*at step {bad_step}"):
        train(config, tmp_path, device="cpu", progress=False)
    assert torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)["step"] == bad_step - 1


def test_huge_learning_rate_diverges_with_a_message(tmp_path):
    config = dataclasses.replace(RESUME, max_steps=30, lr_factor=1e30, warmup=1, clip_norm=1e30, save_every=1000)
    with pytest.raises(TrainingDiverged, match="lower lr_factor or a longer warmup"):
        train(config, tmp_path, device="cpu", progress=False)
    assert read_log(tmp_path)[-1]["event"] == "diverged"


def test_save_checkpoint_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # half-written ...
        raise OSError("no space left on device")  # ... and then the disk is full

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint({"step": 2}, tmp_path / "new.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "no temporary file, no half-written new file"
    monkeypatch.setattr(torch, "save", real_save)
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.arange(4.0))


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(keep_checkpoints=0), "keep_checkpoints must be a positive integer"),
        (dict(max_steps=0), "max_steps must be a positive integer"),
        (dict(max_tokens=1.5), "max_tokens must be a positive integer"),
        (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
        (dict(lr_factor=0.0), "lr_factor must be a finite positive number"),
        (dict(lr_factor=float("nan")), "lr_factor must be a finite positive number"),
        (dict(schedule="cosine"), "schedule must be one of 'noam'"),
        (dict(max_minutes=0), "max_minutes must be a finite positive number"),
        (dict(dataset="wmt"), "dataset must be one of 'multi30k', 'tatoeba'"),
        (dict(dataset="tatoeba"), "tatoeba dataset translates between 'zh' and 'en'"),
        (dict(share_embeddings=True, joint_vocab=False), "share_embeddings needs joint_vocab=True"),
        (dict(train_limit=0), "train_limit must be a positive integer or None"),
        (dict(max_tokens=100, max_len=100), "max_tokens=100 must exceed max_len=100"),
        (dict(betas=(0.9,)), "betas must be two numbers in"),
        (dict(betas=(0.9, 1.5)), "betas must be two numbers in"),
    ],
)
def test_bad_config(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PRESETS["tiny"], **changes)


def test_presets_are_valid_and_build_models():
    for name, config in PRESETS.items():
        assert config.name == name and isinstance(config, TrainConfig)
        model_config = config.model_config(config.vocab_size, config.vocab_size)
        assert (model_config.N, model_config.d_model, model_config.h) == (config.N, config.d_model, config.h)
    assert dataclasses.replace(PRESETS["tiny"], dataset="tatoeba", src_lang="zh", tgt_lang="en").dataset == "tatoeba"


def test_the_progress_bar_prints_every_evaluation(tmp_path, capsys):
    """With progress on, each evaluation's scores appear above the bar (the speedrun's live BLEU)."""
    config = dataclasses.replace(RESUME, max_steps=4, eval_every=2)
    train(config, tmp_path, device="cpu", progress=True, on_eval=lambda model, data, step: {"val_bleu_greedy": 1.5})
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert re.search(r"step 2: val_loss \d", text) and "step 4: val_loss" in text and "val_bleu_greedy 1.5" in text


def test_build_model_is_the_extension_point_for_another_model(tmp_path):
    """A Trainer subclass trains whatever module build_model returns (benchmarks/time_to_bleu.py uses it)."""
    built = []

    class Recording(Trainer):
        def build_model(self, model_config):
            built.append(model_config)
            return super().build_model(model_config)

    Recording(dataclasses.replace(RESUME, max_steps=2), tmp_path, device="cpu", progress=False).fit()
    assert len(built) == 1 and built[0].d_model == RESUME.d_model


def test_the_speedrun_preset_is_the_measured_recipe():
    """Chapter 8 and results/time_to_bleu_cpu.json describe this preset: a ten-minute clock, a small fast model."""
    speedrun = PRESETS["multi30k_speedrun"]
    assert speedrun.max_minutes == 10 and speedrun.dataset == "multi30k"
    assert speedrun.N < PRESETS["multi30k_cpu"].N and speedrun.vocab_size < PRESETS["multi30k_cpu"].vocab_size
