"""Chapter 8 — checkpoints: one file format for training runs and released translators.

A checkpoint is a plain dictionary written with ``torch.save`` — tensors, numbers, strings, bytes,
lists and dicts, nothing else — and read back with ``torch.load(weights_only=True)``, which refuses
anything that could run code. A downloaded checkpoint can therefore be opened safely, and a file
that holds pickled objects is rejected with one clear line.

Every checkpoint carries ``format``, the ``model_config`` and ``train_config`` as plain dicts, the
weights (``model``) and the SentencePiece models as bytes (``tokenizers``), so it translates on its
own. A training checkpoint adds what resuming needs (optimizer, schedule, step, position in the
data, random states); ``release_checkpoint`` strips that and stores fp16 weights, optionally
averaged over the last saved checkpoints.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from .checks import check_positive_ints
from .model import Transformer, TransformerConfig
from .tokenizer import Tokenizer
from .utils import resolve_device, write_atomic

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_checkpoint", "load_translator", "release_checkpoint"]

CHECKPOINT_FORMAT = "transformer_lib/translator-v1"
TRANSLATOR_KEYS = ("model_config", "model", "tokenizers")


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` through the course's one atomic writer: never a half-written file, readable by all."""
    return write_atomic(path, lambda f: torch.save(checkpoint, f))


def read_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = TRANSLATOR_KEYS) -> dict:
    """Load a checkpoint written by ``train`` or ``release_checkpoint`` (weights only), or raise a clear error.

    ``FileNotFoundError`` for a missing file; ``ValueError`` for a file that is corrupt or
    truncated, holds pickled objects (refused: they could run code), is not a translator
    checkpoint, or lacks one of the ``required`` entries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))  # the class or function the file asks to import
        if refused:
            raise ValueError(
                f"{path} holds a pickled Python object ({refused.group(1)}), refused because loading it could run "
                "code; a transformer_lib checkpoint holds tensors and plain data only (torch.load weights_only=True)"
            ) from None
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): {_first_line(e)}") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): {_first_line(e)}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a transformer_lib translator checkpoint (expected format {CHECKPOINT_FORMAT})")
    missing = [k for k in required if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is an incomplete checkpoint: it lacks {', '.join(missing)}")
    return checkpoint


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def load_translator(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Transformer, Tokenizer, Tokenizer]:
    """A ready translator from a checkpoint: ``(model, src_tok, tgt_tok)``, the model in eval mode.

    A missing file, a file that is not such a checkpoint, or a truncated one raises a clear error.
    """
    checkpoint = read_checkpoint(path)
    try:
        config = TransformerConfig(**checkpoint["model_config"])
    except TypeError as e:  # a field this version of the library does not know
        raise ValueError(f"{path} holds a model config this version cannot read: {e}") from None
    model = Transformer(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint["model"].items()})
    tokenizers = checkpoint["tokenizers"]
    return model.to(resolve_device(device)).eval(), Tokenizer(tokenizers["src"]), Tokenizer(tokenizers["tgt"])


def release_checkpoint(out_dir: str | os.PathLike, path: str | os.PathLike, average_last: int = 1) -> Path:
    """Write a small inference checkpoint of the run in ``out_dir``: fp16 weights, configs, tokenizers.

    ``average_last=k > 1`` averages the weights of the last ``k`` saved checkpoints
    (``out_dir/checkpoints/step_*.pt``), as the paper did with its last five; 1 takes the last weights.
    """
    check_positive_ints(average_last=average_last)
    out = Path(out_dir)
    full = read_checkpoint(out / "checkpoint_last.pt", ("train_config", *TRANSLATOR_KEYS, "step"))
    states = [full["model"]]
    if average_last > 1:
        saved = sorted((out / "checkpoints").glob("step_*.pt"))[-average_last:]
        if not saved:
            raise FileNotFoundError(f"no saved checkpoints in {out / 'checkpoints'} to average")
        states = [torch.load(p, map_location="cpu", weights_only=True)["model"] for p in saved]
    release = {
        "format": CHECKPOINT_FORMAT,
        "model_config": full["model_config"],
        "train_config": full["train_config"],
        "model": _mean_in_fp16(states),
        "step": full["step"],
        "averaged": len(states),
        "tokenizers": full["tokenizers"],
    }
    return save_checkpoint(release, path)


def _mean_in_fp16(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of several state dicts, floating-point tensors in fp16; tied weights stay one tensor."""
    weights, done = {}, {}
    for k, v in states[0].items():
        # Tied weights (shared embeddings) are one tensor under several names: keep them one tensor.
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride())
        if key not in done:
            done[key] = (sum(s[k].float() for s in states) / len(states)).half() if v.is_floating_point() else v
        weights[k] = done[key]
    return weights
