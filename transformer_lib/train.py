"""Chapter 8 — training a translator.

The pieces of the paper's recipe, in one loop: token-budget batches, teacher forcing, label
smoothing (0.1), Adam with beta2 = 0.98 and the warmup-then-inverse-square-root learning rate,
gradient clipping, bf16 autocast on a GPU. Everything needed to continue a run exactly is saved
atomically: model, optimizer, scheduler, step, position in the data and the random states.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), ``train`` runs
data-parallel: one process per device, the model wrapped in ``DistributedDataParallel`` (NCCL on
GPUs, gloo on CPUs). Every optimizer step consumes ``world_size * grad_accum`` consecutive batches of
one global batch order; process ``r`` takes every ``world_size``-th of them, and the loss is
weighted so that the gradient is that of one process over all of them. ``grad_accum`` alone does
the same in a single process, so one process reproduces a multi-process run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import collate, load_multi30k, load_tatoeba, token_batches
from .masks import padding_mask, target_mask
from .model import Transformer, TransformerConfig
from .tokenizer import Tokenizer, train_tokenizer
from .utils import write_atomic

__all__ = [
    "TrainConfig",
    "PRESETS",
    "noam_lr",
    "label_smoothed_loss",
    "save_atomic",
    "prepare_data",
    "train",
    "TrainingDiverged",
    "load_translator",
    "release_checkpoint",
]

CHECKPOINT_FORMAT = "transformer_lib/translator-v1"


@dataclass
class TrainConfig:
    """Everything a training run depends on. Presets: ``PRESETS["tiny" | "multi30k" | "multi30k_cpu"]``."""

    name: str = "custom"
    # data
    dataset: str = "multi30k"  # or "tatoeba" (Chinese -> English)
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_limit: int | None = None  # only the first n training pairs (for tiny runs)
    valid_limit: int | None = None
    vocab_size: int = 8000
    joint_vocab: bool = True  # one SentencePiece model for both languages (needed to share embeddings)
    character_coverage: float = 1.0
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
    grad_accum: int = 1  # batches per optimizer step per process; the global batch is world_size * grad_accum of them
    lr_factor: float = 1.0  # peak lr = lr_factor * d_model^-0.5 * warmup^-0.5
    warmup: int = 1000
    warmup_ramp: bool = True  # False: no linear ramp, the peak lr from step 1, then the same step^-0.5 decay
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
    compile: bool = False
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if self.dataset not in ("multi30k", "tatoeba"):
            raise ValueError(f"dataset must be 'multi30k' or 'tatoeba', got {self.dataset!r}")
        if self.share_embeddings and not self.joint_vocab:
            raise ValueError("share_embeddings needs joint_vocab=True (one vocabulary for both languages)")
        if self.dataset == "tatoeba" and {self.src_lang, self.tgt_lang} != {"zh", "en"}:
            raise ValueError(
                f"the tatoeba dataset translates between 'zh' and 'en', got src_lang={self.src_lang!r}, "
                f"tgt_lang={self.tgt_lang!r}"
            )
        for name in (
            "vocab_size", "max_len", "max_tokens", "grad_accum", "warmup", "max_steps", "log_every", "eval_every", "save_every",
            "keep_checkpoints",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr_factor", "clip_norm", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("train_limit", "valid_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.max_tokens <= self.max_len:
            raise ValueError(
                f"max_tokens={self.max_tokens} must exceed max_len={self.max_len}: the longest training pair "
                "(plus <bos>/<eos>) must fit in a batch"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {self.positional!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive or None, got {self.max_minutes!r}")
        self.betas = tuple(self.betas)

    def model_config(self, src_vocab: int, tgt_vocab: int) -> TransformerConfig:
        """The ``TransformerConfig`` this run trains."""
        return TransformerConfig(
            src_vocab, tgt_vocab, N=self.N, d_model=self.d_model, d_ff=self.d_ff, h=self.h, dropout=self.dropout,
            share_embeddings=self.share_embeddings, norm_first=self.norm_first, positional=self.positional, fused=True,
            max_len=512,
        )  # fmt: skip


PRESETS: dict[str, TrainConfig] = {
    # Seconds on a laptop CPU: a 2-layer model on 2,000 pairs. For tests and chapter 8.
    "tiny": TrainConfig(
        name="tiny", train_limit=2000, valid_limit=200, vocab_size=1000, N=2, d_model=64, d_ff=256, h=4,
        max_tokens=1200, warmup=100, lr_factor=1.0, max_steps=300, log_every=20, eval_every=100, save_every=100,
    ),  # fmt: skip
    # The full run for one GPU.
    "multi30k": TrainConfig(
        name="multi30k", vocab_size=8000, N=6, d_model=512, d_ff=2048, h=8, dropout=0.1, max_tokens=16384,
        warmup=2000, lr_factor=1.0, max_steps=8000, eval_every=1000, save_every=500, compile=True,
    ),  # fmt: skip
    # What two CPU cores can train in about an hour and a half.
    "multi30k_cpu": TrainConfig(
        name="multi30k_cpu", vocab_size=8000, N=3, d_model=256, d_ff=1024, h=4, dropout=0.1, max_tokens=3000,
        warmup=400, lr_factor=0.5, max_steps=1800, max_minutes=None, eval_every=400, save_every=200,
    ),  # fmt: skip  (the released checkpoint: 1,800 steps, about 70 minutes on 2 cores)
    # Chinese -> English on Tatoeba (chapter 11): short sentences, so a small model on CPU. Chinese and
    # English get their own SentencePiece models (few shared pieces, so no shared embeddings);
    # character_coverage < 1 maps the rarest Chinese characters to <unk> instead of the vocabulary.
    "tatoeba_cpu": TrainConfig(
        name="tatoeba_cpu", dataset="tatoeba", src_lang="zh", tgt_lang="en", vocab_size=4000, joint_vocab=False,
        share_embeddings=False, character_coverage=0.9995, N=3, d_model=256, d_ff=1024, h=4, dropout=0.2,
        max_tokens=3000, warmup=400, lr_factor=0.5, max_steps=3000, max_minutes=80, eval_every=300, save_every=150,
    ),  # fmt: skip
}


# Fields a resumed run may change: how long it runs and how often it logs, evaluates and saves.
# Everything else (data, model, optimiser, seed) defines the state and must match the checkpoint.
# grad_accum may change only with the number of processes, so that world_size * grad_accum stays.
RESUMABLE_FIELDS = frozenset(
    {"name", "max_steps", "max_minutes", "log_every", "eval_every", "save_every", "keep_checkpoints", "valid_limit", "compile",
     "grad_accum"}
)  # fmt: skip


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0, ramp: bool = True) -> float:
    """The paper's schedule: lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    ``ramp=False`` drops the linear warmup but keeps the same peak and decay (for ablations):
    lr = factor * d_model^-0.5 * min(step^-0.5, warmup^-0.5), i.e. the peak rate from step 1.
    """
    step = max(step, 1)
    rise = step * warmup**-1.5 if ramp else warmup**-0.5
    return factor * d_model**-0.5 * min(step**-0.5, rise)


def label_smoothed_loss(log_probs: Tensor, target: Tensor, smoothing: float, pad_id: int = 0) -> Tensor:
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


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename, so even a power cut leaves no empty file
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _read_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ("model_config", "model", "tokenizers")) -> dict:
    """Load a checkpoint written by ``train``/``release_checkpoint``, or raise a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a transformer_lib translator checkpoint (expected format {CHECKPOINT_FORMAT})")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is an incomplete checkpoint: it lacks {', '.join(missing)}")
    return ckpt


def _config_from_checkpoint(ckpt: dict, path: str | os.PathLike) -> TrainConfig:
    try:
        return TrainConfig(**ckpt["train_config"])
    except TypeError as e:  # a field this version does not know
        raise ValueError(f"{path} holds a training config this version cannot read: {e}") from None


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class PreparedData:
    """Tokenizers and encoded training/validation pairs."""

    src_tok: Tokenizer
    tgt_tok: Tokenizer
    train: list[tuple[list[int], list[int]]]
    valid: list[tuple[list[int], list[int]]]
    valid_text: list[tuple[str, str]] = field(default_factory=list)


def _load_pairs(config: TrainConfig, split: str) -> list[tuple[str, str]]:
    if config.dataset == "multi30k":
        return load_multi30k(split, config.src_lang, config.tgt_lang)
    triples = load_tatoeba(split)  # (chinese, english, attribution)
    return [(zh, en) for zh, en, _ in triples] if config.src_lang == "zh" else [(en, zh) for zh, en, _ in triples]


def prepare_data(
    config: TrainConfig, out_dir: str | os.PathLike | None = None, reuse_tokenizer: bool = True, write: bool = True
) -> PreparedData:
    """Load the corpus, train SentencePiece on the training split only (or reuse the saved model), encode.

    With ``reuse_tokenizer`` the SentencePiece model(s) already in ``out_dir`` are used when their
    vocabulary size matches ``config.vocab_size``; otherwise they are trained afresh and saved there.
    ``write=False`` saves nothing (the other processes of a distributed run read what rank 0 wrote).
    """
    train_text = _load_pairs(config, "train")[: config.train_limit]
    valid_text = _load_pairs(config, "val")[: config.valid_limit]
    out = Path(out_dir) if out_dir is not None else None
    names = ("spm.model", "spm.model") if config.joint_vocab else ("spm.src.model", "spm.tgt.model")
    saved = None
    if reuse_tokenizer and out is not None and all((out / n).is_file() for n in names):  # resuming
        saved = Tokenizer(out / names[0]), Tokenizer(out / names[1])
        if any(t.vocab_size != config.vocab_size for t in saved):
            saved = None  # left over from a run with another vocabulary: train a fresh one
    if saved is not None:
        src_tok, tgt_tok = saved
    elif config.joint_vocab:
        src_tok = tgt_tok = train_tokenizer(
            [s for pair in train_text for s in pair], config.vocab_size, character_coverage=config.character_coverage
        )
    else:
        src_tok = train_tokenizer([s for s, _ in train_text], config.vocab_size, character_coverage=config.character_coverage)
        tgt_tok = train_tokenizer([t for _, t in train_text], config.vocab_size, character_coverage=config.character_coverage)
    if out is not None and write:
        src_tok.save(out / names[0])
        tgt_tok.save(out / names[1])

    def encode(pairs: list[tuple[str, str]], drop_long: bool) -> list[tuple[list[int], list[int]]]:
        src = src_tok.encode_batch([s for s, _ in pairs])
        tgt = tgt_tok.encode_batch([t for _, t in pairs])
        out_pairs = list(zip(src, tgt))
        if drop_long:
            out_pairs = [(s, t) for s, t in out_pairs if 0 < len(s) <= config.max_len and 0 < len(t) <= config.max_len]
        return out_pairs

    return PreparedData(src_tok, tgt_tok, encode(train_text, True), encode(valid_text, False), valid_text)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


@torch.no_grad()
def evaluate_loss(model: Transformer, pairs: list[tuple[list[int], list[int]]], max_tokens: int, device: torch.device) -> float:
    """Mean per-token negative log-likelihood (no smoothing) of ``pairs``."""
    model.eval()
    total, count = 0.0, 0
    lengths = [(len(s), len(t)) for s, t in pairs]
    # Validation pairs are not filtered by length: one longer than max_tokens gets a batch of its own.
    budget = max([max_tokens] + [max(n) + 1 for n in lengths])
    for batch in token_batches(lengths, budget, shuffle=False):
        src, tgt_in, tgt_out = (x.to(device) for x in collate([pairs[i] for i in batch]))
        log_probs = model(src, tgt_in, padding_mask(src, 0), target_mask(tgt_in, 0))
        total += F.nll_loss(log_probs.reshape(-1, log_probs.size(-1)).float(), tgt_out.reshape(-1), ignore_index=0, reduction="sum").item()
        count += int((tgt_out != 0).sum())
    return total / max(count, 1)


def _distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the variables ``torchrun`` sets, or ``None`` without them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(
            f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r}, LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} "
            "must be integers (they are set by torchrun)"
        ) from None


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_eval: Callable[[Transformer, PreparedData, int], dict] | None = None,
) -> dict:
    """Train ``config`` into ``out_dir`` (checkpoints, ``log.jsonl``, SentencePiece models).

    With ``resume=True`` it continues from ``out_dir/checkpoint_last.pt`` exactly where that run
    stopped: the same batches in the same order, the same dropout masks, hence the same losses.
    ``config`` may then differ from the checkpoint's only in ``RESUMABLE_FIELDS`` (e.g. a larger
    ``max_steps``); log records after the checkpoint's step (from a run that was killed) are dropped.
    Without ``resume``, ``out_dir`` must not already hold a run (``checkpoint_last.pt``).
    ``on_eval(model, data, step)`` may add metrics (e.g. BLEU) to each evaluation record.
    Returns a summary dict. Raises ``TrainingDiverged`` if the loss or the gradients become NaN/inf;
    nothing is saved then, so ``checkpoint_last.pt`` stays the last good state.

    Under ``torchrun`` (see the module docstring) every process calls ``train``: the process group
    is created (NCCL for CUDA, gloo otherwise) unless one exists, each process uses GPU
    ``LOCAL_RANK`` when CUDA is used, only rank 0 writes files and evaluates, and the group is
    destroyed at the end if ``train`` created it.
    """
    env = _distributed_env()
    if env is None:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return _train_process(config, Path(out_dir), resume, device, progress, on_eval, rank=0, world_size=1)
    import torch.distributed as dist

    rank, world_size, local_rank = env
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train_process(config, Path(out_dir), resume, device, progress, on_eval, rank, world_size)
    finally:
        if created:
            dist.destroy_process_group()


def _train_process(
    config: TrainConfig,
    out: Path,
    resume: bool,
    device: torch.device,
    progress: bool,
    on_eval: Callable[[Transformer, PreparedData, int], dict] | None,
    rank: int,
    world_size: int,
) -> dict:
    """The training loop of one process (``rank`` of ``world_size``); ``train`` documents it."""
    import torch.distributed as dist

    def barrier() -> None:
        if world_size > 1:
            dist.barrier()

    micro = world_size * config.grad_accum  # batches per optimizer step, over all processes
    last_path = out / "checkpoint_last.pt"
    checkpoint = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"cannot resume: {last_path} does not exist")
        checkpoint = _read_checkpoint(last_path, ("train_config", "model_config", "model", "optimizer", "scheduler", "rng", "tokenizers"))
        saved_config = _config_from_checkpoint(checkpoint, last_path)
        changed = sorted(
            f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUMABLE_FIELDS and getattr(config, f.name) != getattr(saved_config, f.name)
        )  # fmt: skip
        if changed:
            raise ValueError(
                f"cannot resume {last_path} with a different {', '.join(changed)} "
                f"(only {', '.join(sorted(RESUMABLE_FIELDS))} may change)"
            )
        saved_world = checkpoint.get("world_size", 1)
        if saved_world * saved_config.grad_accum != micro:
            raise ValueError(
                f"cannot resume {last_path}: it took {saved_world} process(es) x grad_accum={saved_config.grad_accum} "
                f"batches per step, this run {world_size} x {config.grad_accum}; keep the product the same"
            )
        if rank == 0:  # the exact tokenizers the run was trained with, whatever spm*.model files lie in out_dir now
            names = ("spm.model",) if config.joint_vocab else ("spm.src.model", "spm.tgt.model")
            for name, key in zip(names, ("src", "tgt")):
                Tokenizer(checkpoint["tokenizers"][key]).save(out / name)
    elif last_path.exists():
        raise FileExistsError(
            f"{out} already holds a training run ({last_path.name}); resume it or choose another output directory"
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        data = prepare_data(config, out, reuse_tokenizer=resume)
    barrier()  # the other processes read the SentencePiece models rank 0 has just written
    if rank != 0:
        data = prepare_data(config, out, reuse_tokenizer=True, write=False)
    if not data.train:  # token_batches would return no batch and the epoch loop would never end
        raise ValueError(
            f"no training pairs left (train_limit={config.train_limit}, pairs longer than max_len={config.max_len} "
            "tokens or with an empty side are skipped)"
        )
    model = Transformer(config.model_config(data.src_tok.vocab_size, data.tgt_tok.vocab_size)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=config.betas, eps=config.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: noam_lr(s + 1, config.d_model, config.warmup, config.lr_factor, config.warmup_ramp)
    )
    step, epoch, batch_index, elapsed = 0, 0, 0, 0.0
    if rank > 0:  # same weights on every process, but each its own dropout masks
        torch.manual_seed(config.seed + 7919 * rank)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["scheduler"])
        step, epoch, batch_index, elapsed = (checkpoint[k] for k in ("step", "epoch", "batch_index", "elapsed_s"))
        states = checkpoint.get("rng_per_rank")
        if states is not None and len(states) == world_size:
            _set_rng_state(states[rank])
        elif rank == 0:
            _set_rng_state(checkpoint["rng"])
        else:  # resumed with another number of processes: a fresh, repeatable stream for this rank
            torch.manual_seed(config.seed + 7919 * rank + step)
        if rank == 0:
            _truncate_log(out / "log.jsonl", step)
    ddp = None
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )  # averages the gradients of all processes during backward
    forward = torch.compile(ddp or model) if config.compile else (ddp or model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda")
    lengths = [(len(s), len(t)) for s, t in data.train]
    # A fresh run starts a fresh log (one left by a run killed before its first checkpoint is dropped).
    log = None
    if rank == 0:  # only rank 0 writes: log, checkpoints, tokenizers
        log = open(out / "log.jsonl", "a" if checkpoint is not None else "w", encoding="utf-8")
        if checkpoint is not None:
            log.write(json.dumps({"step": step, "event": "resumed"}) + "\n")

    def save(path: Path) -> None:
        rng_per_rank = None
        if world_size > 1:  # every process's random state, so that resuming continues each stream
            rng_per_rank = [None] * world_size
            dist.all_gather_object(rng_per_rank, _rng_state())
        if rank == 0:
            save_atomic({
                "format": CHECKPOINT_FORMAT, "train_config": dataclasses.asdict(config),
                "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "step": step, "epoch": epoch,
                "batch_index": batch_index, "elapsed_s": elapsed, "rng": _rng_state(), "world_size": world_size,
                "rng_per_rank": rng_per_rank,
                "tokenizers": {"src": data.src_tok.model_bytes, "tgt": data.tgt_tok.model_bytes},
            }, path)  # fmt: skip

    def write(record: dict) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()

    def diverged(what: str) -> None:
        write({"step": step + 1, "event": "diverged", "reason": what})
        raise TrainingDiverged(
            f"{what} at step {step + 1}; training stopped. The last good checkpoint is "
            f"{last_path if last_path.exists() else 'not written yet'}. Try a lower lr_factor or a longer warmup."
        )

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=step, desc=config.name, dynamic_ncols=True)
    losses: list[float] = []
    grad_norms: list[float] = []  # before clipping, per step of the current log window
    window_tokens, window_start = 0, time.perf_counter()
    session_start = time.perf_counter() - elapsed
    stop_reason = "max_steps"
    try:
        while step < config.max_steps:
            batches = token_batches(lengths, config.max_tokens, shuffle=True, seed=config.seed * 100_003 + epoch)
            if len(batches) < micro:
                raise ValueError(
                    f"an epoch has only {len(batches)} batches, fewer than the {micro} (processes x grad_accum) of one step"
                )
            while batch_index + micro <= len(batches) and step < config.max_steps:
                model.train()
                group = batches[batch_index : batch_index + micro]  # this step's global batch, the same on every process
                tokens = [sum(lengths[i][1] + 1 for i in b) for b in group]  # target tokens (with <eos>) per batch
                optimizer.zero_grad(set_to_none=True)
                loss = torch.zeros((), device=device)  # this process's share of the step's mean loss
                mine = range(rank, micro, world_size)  # every world_size-th batch of the group
                for j, k in enumerate(mine):
                    src, tgt_in, tgt_out = (x.to(device, non_blocking=True) for x in collate([data.train[i] for i in group[k]]))
                    weight = tokens[k] / sum(tokens)  # the batch's share of the step's tokens (1.0 for one batch)
                    # DDP synchronises (averages) the gradients in the backward of the last micro-batch only.
                    sync = ddp.no_sync() if ddp is not None and j < len(mine) - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast:
                            log_probs = forward(src, tgt_in, padding_mask(src, 0), target_mask(tgt_in, 0))  # (B, T, V)
                            batch_loss = label_smoothed_loss(log_probs, tgt_out, config.label_smoothing)
                        # x world_size undoes DDP's average: the gradient of the token-weighted mean over the group
                        (batch_loss * (weight * world_size)).backward()
                    loss = loss + batch_loss.detach() * weight
                if world_size > 1:
                    dist.all_reduce(loss)  # the mean loss over the whole group, identical on every process
                if not torch.isfinite(loss):
                    diverged(f"loss became {loss.item()}")
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                if not torch.isfinite(grad_norm):  # stepping would put NaN/inf into the weights
                    diverged(f"the gradient norm became {float(grad_norm)} (loss {loss.item():.4g})")
                lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
                optimizer.step()
                schedule.step()
                step, batch_index = step + 1, batch_index + micro
                losses.append(loss.item())
                grad_norms.append(float(grad_norm))
                window_tokens += sum(lengths[i][0] + lengths[i][1] + 1 for b in group for i in b)  # all processes
                elapsed = time.perf_counter() - session_start
                if bar is not None:
                    bar.update(1)
                if step % config.log_every == 0:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    record = {"step": step, "epoch": epoch, "loss": sum(losses[-config.log_every:]) / len(losses[-config.log_every:]),
                              "lr": lr, "tokens_per_s": tps, "elapsed_s": elapsed,
                              "grad_norm": sum(grad_norms) / len(grad_norms), "grad_norm_max": max(grad_norms)}  # fmt: skip
                    grad_norms.clear()
                    write(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{tps:,.0f}")
                    window_tokens, window_start = 0, now
                if rank == 0 and (step % config.eval_every == 0 or step == config.max_steps):
                    rng = _rng_state()  # evaluation must not change the training's random stream
                    record = {"step": step, "event": "eval", "val_loss": evaluate_loss(model, data.valid, config.max_tokens, device)}
                    if on_eval is not None:
                        record.update(on_eval(model, data, step))
                    _set_rng_state(rng)
                    write(record)
                if step % config.save_every == 0:
                    save(last_path)
                    if rank == 0:
                        ckpt_dir = out / "checkpoints"
                        save_atomic({"model": model.state_dict(), "step": step}, ckpt_dir / f"step_{step:07d}.pt")
                        for old in sorted(ckpt_dir.glob("step_*.pt"))[: -config.keep_checkpoints]:
                            old.unlink()
                out_of_time = config.max_minutes is not None and elapsed > 60 * config.max_minutes
                if world_size > 1 and config.max_minutes is not None:  # rank 0's clock decides for everyone
                    flag = torch.tensor(float(out_of_time), device=device)
                    dist.broadcast(flag, src=0)
                    out_of_time = bool(flag.item())
                if out_of_time:
                    stop_reason = "max_minutes"
                    break
            if stop_reason == "max_minutes":
                break
            if batch_index + micro > len(batches):  # the rest of the epoch cannot fill a step: next epoch
                epoch, batch_index = epoch + 1, 0
        save(last_path)
    finally:
        if log is not None:
            log.close()
        if bar is not None:
            bar.close()
    return {
        "step": step, "epoch": epoch, "elapsed_s": elapsed, "stop_reason": stop_reason, "losses": losses,
        "world_size": world_size,
    }  # fmt: skip


def release_checkpoint(out_dir: str | os.PathLike, path: str | os.PathLike, average_last: int = 1) -> Path:
    """Write a small inference checkpoint: fp16 weights (averaged over the last k saved), configs, tokenizers."""
    if isinstance(average_last, bool) or not isinstance(average_last, int) or average_last < 1:
        raise ValueError(f"average_last must be a positive integer, got {average_last!r}")
    out = Path(out_dir)
    full = _read_checkpoint(out / "checkpoint_last.pt", ("train_config", "model_config", "model", "step", "tokenizers"))
    states = [full["model"]]
    if average_last > 1:
        saved = sorted((out / "checkpoints").glob("step_*.pt"))[-average_last:]
        if not saved:
            raise FileNotFoundError(f"no saved checkpoints in {out / 'checkpoints'} to average")
        states = [torch.load(p, map_location="cpu", weights_only=True)["model"] for p in saved]
    weights, done = {}, {}
    for k, v in states[0].items():
        # Tied weights (shared embeddings) are one tensor under several names: keep them one tensor.
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride())
        if key not in done:
            mean = sum(s[k].float() for s in states) / len(states) if v.is_floating_point() else v
            done[key] = mean.half() if v.is_floating_point() else mean
        weights[k] = done[key]
    return save_atomic({
        "format": CHECKPOINT_FORMAT, "model_config": full["model_config"], "train_config": full["train_config"],
        "model": weights, "step": full["step"], "averaged": len(states), "tokenizers": full["tokenizers"],
    }, path)  # fmt: skip


def load_translator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer, Tokenizer]:
    """Load a checkpoint written by ``train`` or ``release_checkpoint``: ``(model, src_tok, tgt_tok)``.

    A missing file, a file that is not such a checkpoint, or a truncated one raises a clear error.
    """
    ckpt = _read_checkpoint(path)
    model = Transformer(TransformerConfig(**ckpt["model_config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    model.to(device).eval()
    src_tok, tgt_tok = Tokenizer(ckpt["tokenizers"]["src"]), Tokenizer(ckpt["tokenizers"]["tgt"])
    return model, src_tok, tgt_tok
