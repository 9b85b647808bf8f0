"""Chapter 8 — training a translator.

The paper's recipe (section 5) in pieces: token-budget batches (``data.token_batches``), teacher
forcing, label smoothing (0.1), Adam with beta2 = 0.98 and the warmup-then-inverse-square-root
learning rate (``noam_lr``), plus gradient clipping and bf16 autocast where the hardware has it.
``train_step`` is one update; ``Trainer.fit`` is the loop around it — log, evaluate, save — and a
stopped run continues exactly, because everything it depends on is in its checkpoint: model,
optimizer, schedule, step, position in the data and the random states.

Chapter 11 trains on several processes by subclassing ``Trainer``
(``distributed.DistributedTrainer``); the methods it overrides are marked *extension point*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from .checks import check_choice, check_fraction, check_optional_positive_ints, check_positive, check_positive_ints
from .data import CORPORA, collate, load_pairs, token_batches
from .masks import padding_mask, target_mask
from .model import Transformer, TransformerConfig
from .tokenizer import Tokenizer, train_tokenizer
from .utils import PAD_ID, remove_stale_parts, resolve_device, write_atomic

__all__ = [
    "TrainConfig",
    "PRESETS",
    "SCHEDULES",
    "noam_lr",
    "label_smoothed_loss",
    "PreparedData",
    "prepare_data",
    "TrainingDiverged",
    "cpu_has_bf16",
    "autocast_dtype",
    "mixed_precision",
    "grad_scaler",
    "train_step",
    "clip_and_step",
    "evaluate_loss",
    "Trainer",
    "train",
]


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's schedule: lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    It rises linearly for ``warmup`` steps, peaks at ``factor * (d_model * warmup)^-0.5`` and then
    decays as ``step^-0.5``. Step 0 is treated as step 1.
    """
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


# The learning-rate schedules a TrainConfig can name: lr(step, config). Chapter 11's ablations add one.
SCHEDULES: dict[str, Callable[[int, TrainConfig], float]] = {
    "noam": lambda step, c: noam_lr(step, c.d_model, c.warmup, c.lr_factor),
}


@dataclass
class TrainConfig:
    """Everything a training run depends on. Presets: ``PRESETS["tiny" | "multi30k" | "multi30k_cpu" | ...]``."""

    name: str = "custom"
    # data
    dataset: str = "multi30k"  # a corpus of data.CORPORA
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_limit: int | None = None  # only the first n training pairs (for tiny runs)
    valid_limit: int | None = None
    vocab_size: int = 8000
    joint_vocab: bool = True  # one SentencePiece model for both languages (needed to share embeddings)
    character_coverage: float = 1.0  # share of the source's characters SentencePiece must cover (< 1 for Chinese)
    tgt_character_coverage: float = 1.0  # the same for a separate target vocabulary (joint_vocab=False)
    max_len: int = 100  # training pairs longer than this (in tokens) are skipped
    # model
    N: int = 3
    d_model: int = 256
    d_ff: int = 1024
    h: int = 4
    dropout: float = 0.1
    norm_first: bool = True
    share_embeddings: bool = True
    positional: str = "sinusoidal"  # or "learned" (TransformerConfig.positional)
    # optimisation
    max_tokens: int = 4096  # padded tokens per batch
    schedule: str = "noam"  # a learning-rate schedule of SCHEDULES
    lr_factor: float = 1.0  # peak lr = lr_factor * d_model^-0.5 * warmup^-0.5
    warmup: int = 1000
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    max_steps: int = 10_000
    max_minutes: float | None = None  # stop (and save) after this much wall time
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 5  # the last k are kept for checkpoint averaging
    seed: int = 0
    compile: bool = False  # torch.compile the model (chapter 10)
    bf16: bool = True  # reduced-precision autocast where it pays (see autocast_dtype); False: float32

    def __post_init__(self) -> None:
        _check_train_config(self)  # one clear error per bad field: see below the class
        self.betas = tuple(self.betas)

    def model_config(self, src_vocab: int, tgt_vocab: int) -> TransformerConfig:
        """The ``TransformerConfig`` this run trains (PyTorch's fused attention, 512 positions)."""
        return TransformerConfig(
            src_vocab,
            tgt_vocab,
            N=self.N,
            d_model=self.d_model,
            d_ff=self.d_ff,
            h=self.h,
            dropout=self.dropout,
            share_embeddings=self.share_embeddings,
            norm_first=self.norm_first,
            positional=self.positional,
            fused=True,
            max_len=512,
        )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config a checkpoint stores (``dataclasses.asdict``), also from older versions of the library."""
        return cls(**_current_fields(values, {f.name for f in dataclasses.fields(cls)}))


def _current_fields(values: dict, known: set[str]) -> dict:
    """A stored config's fields as this version names them; a field it does not know is an error."""
    values = dict(values)
    values.pop("grad_accum", None)  # now an argument of chapter 11's DistributedTrainer
    if not values.get("joint_vocab", True) and "tgt_character_coverage" not in values:  # before it existed
        values["tgt_character_coverage"] = values.get("character_coverage", 1.0)  # one coverage for both sides
    if values.pop("warmup_ramp", True) is False:  # the ablations' schedule without warmup (chapter 11)
        values["schedule"] = "noam_no_warmup"
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"the training config has fields this version does not know: {', '.join(unknown)}")
    return values


def _check_train_config(c: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first bad field of ``c``."""
    check_choice("dataset", c.dataset, CORPORA)
    languages = CORPORA[c.dataset].languages
    if {c.src_lang, c.tgt_lang} != set(languages):
        raise ValueError(
            f"the {c.dataset} dataset translates between {' and '.join(map(repr, languages))}, "
            f"got src_lang={c.src_lang!r}, tgt_lang={c.tgt_lang!r}"
        )
    if c.share_embeddings and not c.joint_vocab:
        raise ValueError("share_embeddings needs joint_vocab=True (one vocabulary for both languages)")
    check_positive_ints(vocab_size=c.vocab_size, max_len=c.max_len, max_tokens=c.max_tokens, warmup=c.warmup)
    check_positive_ints(max_steps=c.max_steps, log_every=c.log_every, eval_every=c.eval_every)
    check_positive_ints(save_every=c.save_every, keep_checkpoints=c.keep_checkpoints)
    check_optional_positive_ints(train_limit=c.train_limit, valid_limit=c.valid_limit)
    check_positive(lr_factor=c.lr_factor, clip_norm=c.clip_norm, eps=c.eps)
    check_fraction(label_smoothing=c.label_smoothing, dropout=c.dropout)
    check_choice("positional", c.positional, ("sinusoidal", "learned"))
    check_choice("schedule", c.schedule, SCHEDULES)
    for name in ("character_coverage", "tgt_character_coverage"):
        if not 0.0 < getattr(c, name) <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {getattr(c, name)!r}")
    if c.joint_vocab and c.tgt_character_coverage != 1.0:
        raise ValueError("tgt_character_coverage needs joint_vocab=False (a joint vocabulary uses character_coverage)")
    if c.max_tokens <= c.max_len:
        raise ValueError(
            f"max_tokens={c.max_tokens} must exceed max_len={c.max_len}: the longest training pair "
            "(plus <bos>/<eos>) must fit in a batch"
        )
    if len(c.betas) != 2 or not all(0.0 <= b < 1.0 for b in c.betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {c.betas!r}")
    if c.max_minutes is not None:
        check_positive(max_minutes=c.max_minutes)


PRESETS: dict[str, TrainConfig] = {
    # Seconds on a laptop CPU: a 2-layer model on 2,000 pairs. For tests and chapter 8.
    "tiny": TrainConfig(
        name="tiny",
        train_limit=2000,
        valid_limit=200,
        vocab_size=1000,
        N=2,
        d_model=64,
        d_ff=256,
        h=4,
        max_tokens=1200,
        warmup=100,
        lr_factor=1.0,
        max_steps=300,
        log_every=20,
        eval_every=100,
        save_every=100,
    ),
    # The full run for one GPU.
    "multi30k": TrainConfig(
        name="multi30k",
        vocab_size=8000,
        N=6,
        d_model=512,
        d_ff=2048,
        h=8,
        dropout=0.1,
        max_tokens=16384,
        warmup=2000,
        lr_factor=1.0,
        max_steps=8000,
        eval_every=1000,
        save_every=500,
        compile=True,
    ),
    # The released CPU translator: 5,000 steps (about 30 epochs), under two hours on 2 cores with bf16.
    "multi30k_cpu": TrainConfig(
        name="multi30k_cpu",
        vocab_size=8000,
        N=3,
        d_model=256,
        d_ff=1024,
        h=4,
        dropout=0.1,
        max_tokens=3000,
        warmup=400,
        lr_factor=0.5,
        max_steps=5000,
        max_minutes=110,
        log_every=25,
        eval_every=500,
        save_every=250,
    ),
    # Your own translator in ten minutes on a laptop CPU: chapter 8's speedrun (benchmarks/time_to_bleu.py).
    # Chosen by measurement (results/time_to_bleu_trials.md): in ten minutes a smaller model and vocabulary,
    # nearly twice as many tokens per second, beat the multi30k_cpu model.
    "multi30k_speedrun": TrainConfig(
        name="multi30k_speedrun",
        vocab_size=4000,
        N=2,
        d_model=256,
        d_ff=1024,
        h=4,
        dropout=0.1,
        max_tokens=2000,
        warmup=300,
        lr_factor=0.7,
        max_steps=100_000,
        max_minutes=10.0,
        eval_every=250,
        save_every=250,
    ),
}

# Fields a resumed run may change: how long it runs and how often it logs, evaluates and saves.
# Everything else (data, model, optimiser, seed) defines the state and must match the checkpoint.
RESUMABLE_FIELDS = frozenset(
    {"name", "max_steps", "max_minutes", "log_every", "eval_every", "save_every", "keep_checkpoints", "valid_limit"}
    | {"compile"}
)


def label_smoothed_loss(log_probs: Tensor, target: Tensor, smoothing: float, pad_id: int = PAD_ID) -> Tensor:
    """Mean cross-entropy against targets smoothed by ``smoothing``, ignoring ``pad_id`` positions.

    ``log_probs`` ``(batch, len, vocab)``, ``target`` ``(batch, len)``. The target distribution is
    ``(1 - smoothing) * one_hot + smoothing / vocab`` (PyTorch's definition): the true token gets
    ``1 - smoothing + smoothing / vocab``, every other id (``<pad>`` included) ``smoothing / vocab``.
    """
    vocab = log_probs.size(-1)
    # log_softmax is idempotent, so passing log-probabilities as logits is exact.
    return F.cross_entropy(
        log_probs.reshape(-1, vocab).float(), target.reshape(-1), ignore_index=pad_id, label_smoothing=smoothing
    )


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint was kept."""


# --------------------------------------------------------------------------- data


@dataclass
class PreparedData:
    """Tokenizers and encoded training/validation pairs."""

    src_tok: Tokenizer
    tgt_tok: Tokenizer
    train: list[tuple[list[int], list[int]]]
    valid: list[tuple[list[int], list[int]]]
    valid_text: list[tuple[str, str]] = field(default_factory=list)

    def tokenizer_files(self, joint: bool) -> dict[str, Tokenizer]:
        """The SentencePiece model file(s) of a run directory: ``spm.model``, or one per language."""
        return {"spm.model": self.src_tok} if joint else {"spm.src.model": self.src_tok, "spm.tgt.model": self.tgt_tok}


def prepare_data(
    config: TrainConfig, out_dir: str | Path | None = None, reuse_tokenizer: bool = True, write: bool = True
) -> PreparedData:
    """Load the corpus, train SentencePiece on the training split only (or reuse the saved model), encode.

    With ``reuse_tokenizer`` the SentencePiece model(s) already in ``out_dir`` are used when their
    vocabulary size matches ``config.vocab_size``; otherwise they are trained afresh, and saved there
    with ``write`` (the other processes of a distributed run read what the first one wrote).
    Raises ``ValueError`` before writing anything if no training pair is left after filtering.
    """
    train_text = load_pairs(config.dataset, "train", config.src_lang, config.tgt_lang)[: config.train_limit]
    valid_text = load_pairs(config.dataset, "val", config.src_lang, config.tgt_lang)[: config.valid_limit]
    out = Path(out_dir) if out_dir is not None else None
    src_tok, tgt_tok = _tokenizers(config, train_text, out if reuse_tokenizer else None)

    def encode(pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        return list(zip(src_tok.encode_batch([s for s, _ in pairs]), tgt_tok.encode_batch([t for _, t in pairs])))

    train = [(s, t) for s, t in encode(train_text) if 0 < len(s) <= config.max_len and 0 < len(t) <= config.max_len]
    if not train:  # token_batches would return no batch and the epoch loop would never end
        raise ValueError(
            f"no training pairs left (train_limit={config.train_limit}, pairs longer than max_len={config.max_len} "
            "tokens or with an empty side are skipped)"
        )
    data = PreparedData(src_tok, tgt_tok, train, encode(valid_text), valid_text)
    if out is not None and write:
        for name, tok in data.tokenizer_files(config.joint_vocab).items():
            tok.save(out / name)
    return data


def _tokenizers(
    config: TrainConfig, pairs: list[tuple[str, str]], saved_in: Path | None
) -> tuple[Tokenizer, Tokenizer]:
    """The run's source and target tokenizers: those saved in ``saved_in`` if they fit, else trained on ``pairs``."""
    names = ("spm.model", "spm.model") if config.joint_vocab else ("spm.src.model", "spm.tgt.model")
    if saved_in is not None and all((saved_in / n).is_file() for n in names):  # resuming
        saved = Tokenizer(saved_in / names[0]), Tokenizer(saved_in / names[1])
        if all(t.vocab_size == config.vocab_size for t in saved):
            return saved  # (otherwise left over from a run with another vocabulary: train afresh)
    coverage = config.character_coverage
    if config.joint_vocab:
        tok = train_tokenizer([s for pair in pairs for s in pair], config.vocab_size, character_coverage=coverage)
        return tok, tok
    src = train_tokenizer([s for s, _ in pairs], config.vocab_size, character_coverage=coverage)
    tgt_coverage = config.tgt_character_coverage
    return src, train_tokenizer([t for _, t in pairs], config.vocab_size, character_coverage=tgt_coverage)


# --------------------------------------------------------------------------- one step


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX); without it bf16 is emulated, and slow."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own (private) CPUID checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(device: torch.device, bf16: bool) -> torch.dtype | None:
    """The reduced precision a training step uses on ``device``, or ``None`` for plain float32.

    bfloat16 on a GPU or CPU that has it; on a GPU without it (Colab's free T4) float16, which needs
    a loss scaler (``grad_scaler``); on a CPU without bf16 instructions float32, which is faster there.
    """
    if not bf16:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def mixed_precision(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """The autocast context of a training step: ``autocast_dtype``'s precision for the matrix products."""
    dtype = autocast_dtype(device, bf16)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def grad_scaler(device: torch.device, bf16: bool) -> torch.amp.GradScaler | None:
    """float16's loss scaler (small gradients would underflow to zero without it); ``None`` otherwise."""
    return torch.amp.GradScaler(device.type) if autocast_dtype(device, bf16) == torch.float16 else None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[Tensor, Tensor, Tensor],
    config: TrainConfig,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One update on one batch: teacher-forced forward, label-smoothed loss, backward, clip, Adam step.

    ``batch`` is ``(src, tgt_in, tgt_out)`` from ``data.collate``. Returns the loss and the gradient
    norm before clipping. Raises ``TrainingDiverged`` before the update if either is NaN or
    infinite, so a bad step never reaches the weights.
    """
    src, tgt_in, tgt_out = batch
    model.train()  # dropout on
    optimizer.zero_grad(set_to_none=True)
    with autocast or contextlib.nullcontext():
        log_probs = model(src, tgt_in, padding_mask(src, PAD_ID), target_mask(tgt_in, PAD_ID))  # (batch, T, vocab)
        loss = label_smoothed_loss(log_probs, tgt_out, config.label_smoothing)  # computed in float32
    (loss if scaler is None else scaler.scale(loss)).backward()
    return loss.item(), clip_and_step(model, optimizer, loss, config, scaler)


def clip_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    config: TrainConfig,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """The end of every update, after ``backward``: check, clip the gradient norm, step. Returns the norm.

    With a float16 ``scaler`` an overflowed gradient is not an error: the scaler skips that step
    and lowers its scale (``GradScaler.step``).
    """
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss became {loss.item()}")
    if scaler is not None:
        scaler.unscale_(optimizer)  # the true gradients, for the norm and the clip
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)  # the norm before clipping
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif not torch.isfinite(grad_norm):  # stepping would put NaN/inf into the weights
        raise TrainingDiverged(f"the gradient norm became {float(grad_norm)} (loss {loss.item():.4g})")
    else:
        optimizer.step()
    return float(grad_norm)


@torch.no_grad()
def evaluate_loss(
    model: Transformer, pairs: list[tuple[list[int], list[int]]], max_tokens: int, device: torch.device
) -> float:
    """Mean per-token negative log-likelihood (no smoothing) of ``pairs``."""
    model.eval()
    total, count = 0.0, 0
    lengths = [(len(s), len(t)) for s, t in pairs]
    # Validation pairs are not filtered by length: one longer than max_tokens gets a batch of its own.
    budget = max([max_tokens] + [max(n) + 1 for n in lengths])
    for batch in token_batches(lengths, budget, shuffle=False):
        src, tgt_in, tgt_out = (x.to(device) for x in collate([pairs[i] for i in batch]))
        log_probs = model(src, tgt_in, padding_mask(src, PAD_ID), target_mask(tgt_in, PAD_ID))  # (B, T, V)
        flat = log_probs.reshape(-1, log_probs.size(-1)).float()
        total += F.nll_loss(flat, tgt_out.reshape(-1), ignore_index=PAD_ID, reduction="sum").item()
        count += int((tgt_out != PAD_ID).sum())
    return total / max(count, 1)


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Chapter 8's training loop in one process: ``Trainer(config, out_dir).fit()``.

    ``fit`` is the loop. It writes ``out_dir/checkpoint_last.pt`` (every ``save_every`` steps and at
    the end), the last ``keep_checkpoints`` weights in ``out_dir/checkpoints/``, ``log.jsonl`` and the
    SentencePiece model(s). ``on_eval(model, data, step)`` may add metrics (e.g. BLEU) to each
    evaluation record. The methods marked *extension point* are what chapter 11's
    ``DistributedTrainer`` overrides to train on several processes.
    """

    is_main = True  # extension point: this process writes the files, logs and evaluates
    batches_per_step = 1  # extension point: batches one optimizer step consumes

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        device: str | torch.device | None = None,
        progress: bool = True,
        on_eval: Callable[[Transformer, PreparedData, int], dict] | None = None,
    ) -> None:
        self.config, self.out, self.progress, self.on_eval = config, Path(out_dir), progress, on_eval
        self.device = resolve_device(device)
        self.last_path = self.out / "checkpoint_last.pt"
        self.step, self.epoch, self.batch_index, self.elapsed = 0, 0, 0, 0.0
        self.losses: list[float] = []  # one per step of this session
        self.stop_reason = "max_steps"

    def fit(self, resume: bool = False) -> dict:
        """Train to ``max_steps`` (or ``max_minutes``); ``resume`` continues the run in ``out_dir`` exactly."""
        c = self.config
        self.start(resume)  # data, model, optimizer, schedule: fresh, or where the checkpoint stopped
        with self.session():  # the log file and the progress bar, closed however the loop ends
            while self.step < c.max_steps:
                batches = self.next_batches()  # this step's batches, in the run's fixed order
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this update uses
                try:
                    loss, grad_norm = self.update(batches)  # forward, loss, backward, clip, step
                except TrainingDiverged as e:
                    raise self.diverged(e) from None
                self.schedule.step()
                self.step += 1
                self.record(loss, grad_norm, lr, batches)  # a log line every log_every steps
                if self.step % c.eval_every == 0 or self.step == c.max_steps:
                    self.evaluate()
                if self.step % c.save_every == 0:
                    self.save(keep=True)
                if self.out_of_time():
                    self.stop_reason = "max_minutes"
                    break
            self.save()
        return self.summary()

    # ------------------------------------------------------------------ setting up, or resuming

    def start(self, resume: bool) -> None:
        """Build everything ``fit`` needs; with ``resume``, restore it from ``checkpoint_last.pt``."""
        c = self.config
        checkpoint = self.read_resumable() if resume else None
        if not resume and self.last_path.exists():
            raise FileExistsError(
                f"{self.out} already holds a training run ({self.last_path.name}); "
                "resume it or choose another output directory"
            )
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        self.data = self.prepare(resume)
        self.model = self.build_model(c.model_config(self.data.src_tok.vocab_size, self.data.tgt_tok.vocab_size))
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=c.betas, eps=c.eps)
        lr = SCHEDULES[c.schedule]  # LambdaLR multiplies the base rate 1.0 by lr(step)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr(s + 1, c))
        self.seed_dropout()
        self.resumed = checkpoint is not None
        if self.resumed:
            self.restore(checkpoint)
        self.forward = self.wrap(self.model)
        self.autocast = mixed_precision(self.device, c.bf16)
        self.scaler = grad_scaler(self.device, c.bf16)  # float16 only (a GPU without bf16)
        if self.scaler is not None and checkpoint is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.lengths = [(len(s), len(t)) for s, t in self.data.train]
        self.grad_norms: list[float] = []  # before clipping, per step of the current log window
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.clock_start = time.perf_counter() - self.elapsed

    def build_model(self, model_config: TransformerConfig) -> nn.Module:
        """Extension point: the model this run trains (here chapter 7's ``Transformer``)."""
        return Transformer(model_config)

    def read_resumable(self) -> dict:
        """``checkpoint_last.pt``, checked against this run's config; its tokenizers go back into ``out_dir``."""
        if not self.last_path.is_file():
            raise FileNotFoundError(f"cannot resume: {self.last_path} does not exist")
        checkpoint = read_checkpoint(self.last_path, ("train_config", "model", "optimizer", "scheduler", "tokenizers"))
        saved = TrainConfig.from_dict(checkpoint["train_config"])
        changed = sorted(
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUMABLE_FIELDS and getattr(self.config, f.name) != getattr(saved, f.name)
        )
        if changed:
            raise ValueError(
                f"cannot resume {self.last_path} with a different {', '.join(changed)} "
                f"(only {', '.join(sorted(RESUMABLE_FIELDS))} may change)"
            )
        self.check_layout(checkpoint)
        if self.is_main:  # the exact tokenizers the run was trained with, whatever spm*.model files lie there now
            tokenizers = checkpoint["tokenizers"]
            names = ("spm.model",) if self.config.joint_vocab else ("spm.src.model", "spm.tgt.model")
            for name, key in zip(names, ("src", "tgt")):
                Tokenizer(tokenizers[key]).save(self.out / name)
        return checkpoint

    def check_layout(self, checkpoint: dict) -> None:
        """Extension point: the checkpoint's steps took as many batches as this run's will."""
        saved = checkpoint.get("batches_per_step", 1)
        if saved != self.batches_per_step:
            raise ValueError(
                f"cannot resume {self.last_path}: its steps took {saved} batches each, this run's take "
                f"{self.batches_per_step}"
            )

    def prepare(self, resume: bool) -> PreparedData:
        """Extension point: tokenize the corpus (reusing the run's tokenizers when resuming) and save them."""
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, self.out / "checkpoints"):
            remove_stale_parts(folder)  # temporary files of a process killed while saving
        return prepare_data(self.config, self.out, reuse_tokenizer=resume)

    def seed_dropout(self) -> None:
        """Extension point: the random stream of this process (one process: the run's seed, already set)."""

    def restore(self, checkpoint: dict) -> None:
        """Weights, optimizer, schedule, position in the data and random state, as the checkpoint left them."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        self.step, self.epoch, self.batch_index = checkpoint["step"], checkpoint["epoch"], checkpoint["batch_index"]
        self.elapsed = checkpoint["elapsed_s"]
        self.restore_rng(checkpoint)
        if self.is_main:
            _truncate_log(self.out / "log.jsonl", self.step)

    def restore_rng(self, checkpoint: dict) -> None:
        """Extension point: continue the random stream (dropout masks) where the checkpoint stopped."""
        set_rng_state(checkpoint["rng"])

    def wrap(self, model: nn.Module) -> nn.Module:
        """Extension point: the module ``update`` calls — the model, compiled with ``torch.compile`` if asked."""
        return torch.compile(model) if self.config.compile else model

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The log file (appended to when resuming) and the progress bar, for the length of the loop."""
        self.log = _Log(self.out / "log.jsonl", append=self.resumed, enabled=self.is_main)
        if self.resumed:
            self.log.write({"step": self.step, "event": "resumed"})
        dtype = autocast_dtype(self.device, self.config.bf16)
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16+loss scaling", None: "fp32"}[dtype]
        where = {"device": str(self.device), "precision": precision, "cpu_threads": torch.get_num_threads()}
        self.log.write({"step": self.step, "event": "setup", **where})  # what this session computes on
        self.bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.config.max_steps, initial=self.step, desc=self.config.name, dynamic_ncols=True)
        try:
            yield
        finally:
            self.log.close()
            if self.bar is not None:
                self.bar.close()

    # ------------------------------------------------------------------ the pieces of one step

    def next_batches(self) -> list[list[int]]:
        """The example indices of the next step's ``batches_per_step`` batches; moves the position in the data."""
        batches = self.epoch_batches()
        n = self.batches_per_step
        if len(batches) < n:
            raise ValueError(f"an epoch has only {len(batches)} batches, fewer than the {n} of one step")
        group = batches[self.batch_index : self.batch_index + n]
        self.batch_index += n
        if self.batch_index + n > len(batches):  # the rest of the epoch cannot fill a step: next epoch
            self.epoch, self.batch_index = self.epoch + 1, 0
        return group

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's batches: the same order every time the run reaches this epoch (resumed or not)."""
        if getattr(self, "_batches_epoch", None) != self.epoch:
            seed = self.config.seed * 100_003 + self.epoch
            self._batches = token_batches(self.lengths, self.config.max_tokens, shuffle=True, seed=seed)
            self._batches_epoch = self.epoch
        return self._batches

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """``(src, tgt_in, tgt_out)`` of the examples ``indices``, padded, on the device."""
        return tuple(x.to(self.device, non_blocking=True) for x in collate([self.data.train[i] for i in indices]))

    def update(self, batches: list[list[int]]) -> tuple[float, float]:
        """Extension point: one optimizer step on this step's batches (here: ``train_step`` on one batch)."""
        return train_step(self.forward, self.optimizer, self.batch(batches[0]), self.config, self.autocast, self.scaler)

    def record(self, loss: float, grad_norm: float, lr: float, batches: list[list[int]]) -> None:
        """Keep the loss; every ``log_every`` steps write the window's mean loss, speed and gradient norms."""
        c = self.config
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.window_tokens += sum(self.lengths[i][0] + self.lengths[i][1] + 1 for b in batches for i in b)
        self.elapsed = time.perf_counter() - self.clock_start
        if self.bar is not None:
            self.bar.update(1)
        if self.step % c.log_every == 0:
            now = time.perf_counter()
            window = self.losses[-c.log_every :]
            record = {
                "step": self.step,
                "epoch": self.epoch,
                "loss": sum(window) / len(window),
                "lr": lr,
                "tokens_per_s": self.window_tokens / max(now - self.window_start, 1e-9),
                "elapsed_s": self.elapsed,
                "grad_norm": sum(self.grad_norms) / len(self.grad_norms),
                "grad_norm_max": max(self.grad_norms),
            }
            self.log.write(record)
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}"
                )
            self.grad_norms.clear()
            self.window_tokens, self.window_start = 0, now

    def evaluate(self) -> None:
        """Validation loss (and ``on_eval``'s metrics) into the log, without touching the training's randomness."""
        if not self.is_main:
            return
        rng = rng_state()
        record = {"step": self.step, "event": "eval"}
        record["val_loss"] = evaluate_loss(self.model, self.data.valid, self.config.max_tokens, self.device)
        if self.on_eval is not None:
            record.update(self.on_eval(self.model, self.data, self.step))
        set_rng_state(rng)
        self.log.write(record)
        if self.bar is not None:  # the scores, live, above the progress bar
            scores = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
            self.bar.write(f"step {self.step}: {scores}")

    def state(self) -> dict:
        """Extension point: everything ``restore`` needs, as a plain dict (``checkpoint.save_checkpoint``)."""
        data = self.data
        return {
            "format": CHECKPOINT_FORMAT,
            "train_config": dataclasses.asdict(self.config),
            "model_config": dataclasses.asdict(self.model.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "elapsed_s": self.elapsed,
            "batches_per_step": self.batches_per_step,
            "rng": rng_state(),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            "tokenizers": {"src": data.src_tok.model_bytes, "tgt": data.tgt_tok.model_bytes},
        }

    def save(self, keep: bool = False) -> None:
        """Write ``checkpoint_last.pt``; with ``keep`` also this step's weights, keeping the last few."""
        state = self.state()
        if not self.is_main:
            return
        save_checkpoint(state, self.last_path)
        if keep:
            folder = self.out / "checkpoints"
            save_checkpoint({"model": state["model"], "step": self.step}, folder / f"step_{self.step:07d}.pt")
            for old in sorted(folder.glob("step_*.pt"))[: -self.config.keep_checkpoints]:
                old.unlink()

    def out_of_time(self) -> bool:
        """Extension point: has the run used up ``max_minutes`` of wall time?"""
        return self.config.max_minutes is not None and self.elapsed > 60 * self.config.max_minutes

    def diverged(self, error: TrainingDiverged) -> TrainingDiverged:
        """Log the divergence and say where the last good checkpoint is."""
        self.log.write({"step": self.step + 1, "event": "diverged", "reason": str(error)})
        where = self.last_path if self.last_path.exists() else "not written yet"
        return TrainingDiverged(
            f"{error} at step {self.step + 1}; training stopped. The last good checkpoint is {where}. "
            "Try a lower lr_factor or a longer warmup."
        )

    def summary(self) -> dict:
        """What ``fit`` returns: where the run stopped and why, and this session's per-step losses."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "elapsed_s": self.elapsed,
            "stop_reason": self.stop_reason,
            "losses": self.losses,
        }


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_eval: Callable[[Transformer, PreparedData, int], dict] | None = None,
) -> dict:
    """Train ``config`` into ``out_dir`` in this process: ``Trainer(...).fit(resume)``; returns its summary.

    With ``resume=True`` it continues from ``out_dir/checkpoint_last.pt`` exactly where that run
    stopped: the same batches in the same order, the same dropout masks, hence the same losses.
    ``config`` may then differ from the checkpoint's only in ``RESUMABLE_FIELDS`` (e.g. a larger
    ``max_steps``); log records after the checkpoint's step (from a run that was killed) are dropped.
    Without ``resume``, ``out_dir`` must not already hold a run. Raises ``TrainingDiverged`` if the
    loss or the gradients become NaN/inf; ``checkpoint_last.pt`` then stays the last good state.
    """
    return Trainer(config, out_dir, device, progress, on_eval).fit(resume)


# --------------------------------------------------------------------------- plumbing


def rng_state() -> dict:
    """The random states a run depends on (PyTorch's, Python's, CUDA's), to save in a checkpoint."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Log:
    """``log.jsonl``: one JSON record per line, flushed at once, written by the main process only."""

    def __init__(self, path: Path, append: bool, enabled: bool) -> None:
        self.file = open(path, "a" if append else "w", encoding="utf-8") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _truncate_log(path: Path, step: int) -> None:
    """Drop the records after ``step`` (a killed run logged steps its checkpoint does not hold)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record_step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short when the run was killed
        if record_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(kept))
