"""Time to BLEU: how good a translator a CPU trains in ten minutes, ours against torch.nn.Transformer.

Both models train from scratch on Multi30k de→en with the same recipe (``PRESETS["multi30k_speedrun"]``
unless ``--set`` changes it), in this one process, one after the other: the same SentencePiece
training, the same batches in the same order, the same Adam and learning-rate schedule, the same
loss, the same clock. The loop is chapter 8's ``Trainer``; only ``build_model`` differs
(``nn.Transformer`` sits behind our model's interface, with the same embeddings, positions and tied
output layer; see ``benchmarks/train.py``).

The clock is wall time from the start of the run: loading the corpus, training SentencePiece,
encoding and building the model count. At every mark (``--marks`` minutes of that clock) the
clock is paused, the model translates the full test_2016_flickr split (1,000 sentences, greedy,
the same uncached decoder for both models) and sacreBLEU scores it; then the clock resumes.

    python benchmarks/time_to_bleu.py                       # results/time_to_bleu_cpu.json and .png
    python benchmarks/time_to_bleu.py --models ours --set lr_factor=1.0 --out runs/try.json   # a recipe trial
    python benchmarks/time_to_bleu.py --quick               # the tiny preset, seconds (runs/, not results/)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import TorchTransformer  # noqa: E402  (benchmarks/train.py: nn.Transformer with our embeddings)

from transformer_lib.bench import format_table, results_header, write_json_atomic  # noqa: E402
from transformer_lib.cli import _parse_overrides  # noqa: E402
from transformer_lib.data import load_pairs, use_shared_mirror  # noqa: E402
from transformer_lib.evaluate import corpus_scores, translate  # noqa: E402
from transformer_lib.masks import causal_mask  # noqa: E402
from transformer_lib.model import TransformerConfig, greedy_decode  # noqa: E402
from transformer_lib.train import PRESETS, TrainConfig, Trainer, autocast_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (30.0, 35.0)
MAX_EXTRA = 15  # translations stop 15 pieces past the batch's longest source (an untrained model never stops)
MARKS = "1,2,3,4,5,6,7,8,9,10"  # minutes of the clock
MODELS = {"ours": "transformer_lib", "torch": "nn.Transformer"}


class TorchTranslator(TorchTransformer):
    """``nn.Transformer`` behind ``transformer_lib.Transformer``'s interface: forward with masks, encode, decode."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__(c)
        self.config = c

    def embed_positions(self, ids: Tensor) -> Tensor:
        """Scaled shared embeddings plus sinusoidal positions, with dropout: ``(batch, len, d_model)``."""
        return self.dropout(self.embed(ids) * math.sqrt(self.d_model) + self.pe[: ids.size(1)])

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Memory ``(batch, src_len, d_model)``; ``src_mask`` is ours (True = may attend), inverted for PyTorch."""
        return self.transformer.encoder(self.embed_positions(src), src_key_padding_mask=_hidden_keys(src_mask))

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        """Decoder states ``(batch, tgt_len, d_model)``: causal self-attention (padding at the end needs no mask)."""
        hidden = ~causal_mask(tgt.size(1), device=tgt.device)  # (T, T): True above the diagonal = hidden
        y = self.embed_positions(tgt)  # (batch, T, d_model)
        mem_mask = _hidden_keys(src_mask)
        return self.transformer.decoder(
            y, memory, tgt_mask=hidden, tgt_is_causal=True, memory_key_padding_mask=mem_mask
        )

    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """Log-probabilities ``(batch, tgt_len, vocab)``, like ``transformer_lib.Transformer``."""
        return F.log_softmax(self.generator(self.decode(self.encode(src, src_mask), src_mask, tgt)), dim=-1)


def _hidden_keys(src_mask: Tensor | None) -> Tensor | None:
    """Our ``(batch, 1, 1, src_len)`` may-attend mask as PyTorch's ``(batch, src_len)`` key padding mask."""
    return None if src_mask is None else ~src_mask.reshape(src_mask.size(0), -1)


class SpeedrunTrainer(Trainer):
    """Chapter 8's Trainer on a clock that includes the setup, paused at each mark to score the test set."""

    def __init__(self, config: TrainConfig, out_dir: Path, model: str, marks_min: list[float], test: list) -> None:
        super().__init__(config, out_dir, device="cpu", progress=False)
        self.model_name, self.marks, self.test = model, [60 * m for m in marks_min], test
        self.curve: list[dict] = []

    def build_model(self, model_config: TransformerConfig):
        """Ours (chapter 7's Transformer) or nn.Transformer behind the same interface."""
        return super().build_model(model_config) if self.model_name == "ours" else TorchTranslator(model_config)

    def start(self, resume: bool) -> None:
        """The Trainer's setup, on the clock."""
        began = time.perf_counter()
        super().start(resume)  # corpus, SentencePiece, encoding, model, optimizer
        self.setup_s = time.perf_counter() - began
        self.clock_start -= self.setup_s  # the clock started before the setup

    def out_of_time(self) -> bool:
        """Called after every step: score the test set at each mark; stop after the last one."""
        if self.marks and self.elapsed >= self.marks[0]:
            self.score_mark()
        return not self.marks

    def score_mark(self) -> None:
        """Translate the test set with the clock paused; one point of the curve."""
        paused = time.perf_counter()
        bleu = score_test_set(self.model, self.data, self.test)
        seconds = time.perf_counter() - paused
        self.clock_start += seconds  # the evaluation does not count
        self.window_start += seconds
        point = {"minutes": self.elapsed / 60, "step": self.step, "epoch": self.epoch, "bleu": bleu["bleu"]}
        self.curve.append({**point, "chrf": bleu["chrf"], "eval_s": seconds})
        self.bleu_signature = bleu["bleu_signature"]
        self.marks.pop(0)
        print(f"  {self.model_name}: {point['minutes']:.2f} min, step {self.step}, BLEU {bleu['bleu']:.2f}", flush=True)


def score_test_set(model, data, test: list[tuple[str, str]]) -> dict:
    """sacreBLEU of greedy translations of ``test``; the same decoder (no cache) for both models."""
    bos, eos, pad = data.tgt_tok.bos_id, data.tgt_tok.eos_id, data.tgt_tok.pad_id

    def decoder(m, src, src_mask, max_len):
        return greedy_decode(m, src, src_mask, max_len, bos, eos, pad)

    sources = [s for s, _ in test]
    hyps = translate(
        model, data.src_tok, data.tgt_tok, sources, batch_size=100, max_extra_len=MAX_EXTRA, decoder=decoder
    )
    return corpus_scores(hyps, [t for _, t in test])


def minutes_to(curve: list[dict], threshold: float) -> float | None:
    """The clock at the first mark whose BLEU reaches ``threshold`` (None if none does)."""
    return next((p["minutes"] for p in curve if p["bleu"] >= threshold), None)


def run_model(name: str, config: TrainConfig, marks: list[float], test: list) -> dict:
    """Train one model from scratch to the last mark; its curve and what the run cost."""
    with tempfile.TemporaryDirectory(prefix=f"time_to_bleu_{name}_") as tmp:
        torch.manual_seed(config.seed)
        trainer = SpeedrunTrainer(config, Path(tmp), name, marks, test)
        summary = trainer.fit()
    curve = trainer.curve
    steps = summary["step"]
    return {
        "model": MODELS[name],
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "setup_s": trainer.setup_s,
        "steps": steps,
        "epochs": summary["epoch"],
        "curve": curve,
        "final_bleu": curve[-1]["bleu"],
        "best_bleu": max(p["bleu"] for p in curve),
        **{f"minutes_to_{int(t)}": minutes_to(curve, t) for t in THRESHOLDS},
        "bleu_signature": trainer.bleu_signature,
        "tokenizer_sha256": hashlib.sha256(trainer.data.src_tok.model_bytes).hexdigest(),
    }


def plot(results: dict, path: Path) -> None:
    """BLEU against minutes for every model, the thresholds dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in results["rows"]:
        xs = [0.0] + [p["minutes"] for p in row["curve"]]
        ax.plot(xs, [0.0] + [p["bleu"] for p in row["curve"]], marker="o", label=row["model"])
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall-clock minutes (setup included, evaluation excluded)")
    ax.set_ylabel("sacreBLEU, test_2016_flickr (greedy)")
    ax.set_title(f"Training from scratch on {results['device']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--marks", default=MARKS, help="comma-separated minutes of the clock at which to score")
    parser.add_argument("--models", default="ours,torch", help="comma-separated subset of ours,torch")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="change fields of the recipe")
    parser.add_argument("--quick", action="store_true", help="the tiny preset for a few seconds (runs/)")
    parser.add_argument("--out", default=None, help="results JSON (default results/time_to_bleu_cpu.json)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if not models or any(m not in MODELS for m in models):
        parser.error(f"--models must name some of {', '.join(MODELS)}, got {args.models!r}")
    try:
        marks = [float(m) for m in args.marks.split(",")]
    except ValueError:
        parser.error(f"--marks must be comma-separated minutes, got {args.marks!r}")
    if not marks or marks[0] <= 0 or any(b <= a for a, b in zip(marks, marks[1:])):
        parser.error(f"--marks must be positive and increasing, got {args.marks!r}")
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # nn.Transformer with norm_first
    use_shared_mirror()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)  # every core this process may use
    preset = PRESETS["tiny" if args.quick else "multi30k_speedrun"]
    fixed = dict(max_minutes=None, max_steps=10**9, eval_every=10**9, save_every=10**9)
    config = dataclasses.replace(preset, **{**_parse_overrides(args.set), **fixed})
    test = load_pairs("multi30k", "test_2016_flickr", "de", "en")[: 100 if args.quick else None]
    for split in ("train", "val"):  # fetched into the cache once, before either clock (reading them counts)
        load_pairs("multi30k", split, "de", "en")
    rows = []
    for name in models:
        print(f"{MODELS[name]}: training for {marks[-1]} min", flush=True)
        rows.append(run_model(name, config, marks, test))
    command = "python benchmarks/time_to_bleu.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    results = results_header(
        "cpu",
        command.strip(),
        quick=args.quick,
        recipe=dataclasses.asdict(preset) | _parse_overrides(args.set),
        precision=str(autocast_dtype(torch.device("cpu"), config.bf16) or torch.float32).replace("torch.", ""),
        minutes=marks[-1],
        marks_minutes=marks,
        test_split="test_2016_flickr",
        test_sentences=len(test),
        decoder=f"greedy, no cache (transformer_lib.model.greedy_decode), batches of 100, at most {MAX_EXTRA} "
        "pieces past the batch's longest source",
        clock="wall time from the start of the run (corpus, SentencePiece, encoding and model included); "
        "paused while the test set is translated",
        rows=rows,
    )
    out = Path(args.out) if args.out else ROOT / ("runs" if args.quick else "results") / "time_to_bleu_cpu.json"
    table = [
        {k: r[k] for k in ("model", "steps", "setup_s", "final_bleu", "minutes_to_30", "minutes_to_35")} for r in rows
    ]
    print(format_table(table, list(table[0])))
    write_json_atomic(results, out)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
