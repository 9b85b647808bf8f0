"""Chapter 9 — evaluation: translate a corpus and score it with sacreBLEU.

Scores are corpus-level BLEU and chrF on *detokenized*, cased text, computed by sacreBLEU, whose
signature (tokenizer, smoothing, version, ...) is printed and stored with every number so that
results are comparable across papers and runs.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from .decode import make_decoder
from .masks import padding_mask
from .model import Transformer
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["corpus_scores", "translate", "device_description", "plot_training_log"]


def corpus_scores(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> dict:
    """sacreBLEU corpus BLEU and chrF of detokenized ``hypotheses`` against one reference each.

    ``tokenize`` is sacreBLEU's BLEU tokenizer: ``"13a"`` (its default) for English and other
    space-separated output, ``"zh"`` for Chinese output. chrF works on characters and needs none.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    import sacrebleu

    bleu, chrf = sacrebleu.metrics.BLEU(tokenize=tokenize), sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": b.score,
        "chrf": c.score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


@torch.no_grad()
def translate(
    model: Transformer,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    sentences: list[str],
    batch_size: int = 64,
    max_extra_len: int = 50,
    decoder: Callable | None = None,
    max_src_len: int = 256,
) -> list[str]:
    """Translate ``sentences`` in batches (sorted by length for speed), returning text in input order.

    ``decoder(model, src, src_mask, max_len)`` returns token ids ``(batch, len)`` starting with
    ``<bos>``; the default is greedy search with the key/value cache. Sources longer than ``max_src_len`` tokens
    are cut.
    """
    model.eval()
    device = next(model.parameters()).device
    if decoder is None:
        decoder = make_decoder("greedy", bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id, pad_id=tgt_tok.pad_id)
    encoded = [src_tok.encode(s)[:max_src_len] or [src_tok.unk_id] for s in sentences]
    order = sorted(range(len(sentences)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(sentences)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(len(encoded[i]) for i in idx)
        src = torch.full((len(idx), longest), src_tok.pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            src[row, : len(encoded[i])] = torch.tensor(encoded[i])
        src = src.to(device)
        ys = decoder(model, src, padding_mask(src, src_tok.pad_id), longest + max_extra_len)  # (batch, len)
        for row, i in enumerate(idx):
            ids = ys[row, 1:].tolist()
            if tgt_tok.eos_id in ids:
                ids = ids[: ids.index(tgt_tok.eos_id)]
            out[i] = tgt_tok.decode(ids)
    return out


def device_description(device: str | torch.device = "cpu") -> str:
    """A readable name of the machine that computed a result, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} thread(s)"


def plot_training_log(log_path: str | os.PathLike, png_path: str | os.PathLike | None = None) -> "Figure":
    """Plot training loss, validation loss and validation BLEU from a ``log.jsonl``; save if ``png_path``.

    Returns the matplotlib figure.
    """
    import matplotlib

    if png_path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if "loss" in r and "event" not in r]
    evals = [r for r in records if r.get("event") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss (label-smoothed)")
    ax1.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss (NLL)")
    ax1.set(title="Loss", xlabel="step", ylabel="nats per token")
    ax1.legend()
    bleu = [r for r in evals if "val_bleu_greedy" in r]
    ax2.plot([r["step"] for r in bleu], [r["val_bleu_greedy"] for r in bleu], "o-", color="C2")
    ax2.set(title="Validation BLEU (greedy, subset)", xlabel="step", ylabel="sacreBLEU")
    fig.tight_layout()
    if png_path is not None:
        Path(png_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=110)
    return fig
