"""Training throughput: transformer_lib's Transformer against torch.nn.Transformer, in one process.

Both models have the same configuration (d_model, h, d_ff, N, dropout, pre-LN), the same
embeddings, sinusoidal positions and tied generator around the layers, see the same batches of
real Multi30k sentences (encoded with the released SentencePiece model, padded to one fixed shape
so that torch.compile compiles once), and train with the same Adam, label-smoothed loss and
gradient clipping. Each mode (fp32 / bf16 autocast, eager / torch.compile) times full training
steps: warm-up steps excluded, the two models alternating, several repetitions, median. Compile
time is reported separately and never counted in the throughput. On a CPU the clock is the
process's CPU time (``time.process_time``, one thread), so other jobs on a shared machine do not
distort the figures; wall-clock figures are stored beside them. On a GPU it is wall time.

Tokens/s counts real (non-pad) source + target tokens, like the training log; MFU divides the
model FLOPs of the padded batch (``transformer_lib.bench.transformer_flops``) per second by the
device's peak: the data-sheet number for known GPUs, a measured large matmul on a CPU.

    OMP_NUM_THREADS=1 python benchmarks/train.py                 # results/bench_train_cpu.json
    OMP_NUM_THREADS=1 python benchmarks/train.py --quick         # tiny sizes, seconds (runs/, not results/)
    python benchmarks/train.py --device cuda                     # results/bench_train_cuda.json
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib.bench import (
    format_table,
    gpu_peak_flops,
    matmul_peak_flops,
    mfu,
    results_header,
    transformer_flops,
    write_json_atomic,
)
from transformer_lib.data import load_multi30k
from transformer_lib.embeddings import sinusoidal_positional_encoding
from transformer_lib.masks import causal_mask, padding_mask, target_mask
from transformer_lib.model import Transformer, TransformerConfig
from transformer_lib.tokenizer import Tokenizer
from transformer_lib.train import label_smoothed_loss

ROOT = Path(__file__).resolve().parent.parent

SIZES = {  # model and batch per device; --quick shrinks everything
    "cpu": dict(N=3, d_model=256, h=4, d_ff=1024, batch=32, length=32, batches=4, repeat=10),
    "cuda": dict(N=6, d_model=512, h=8, d_ff=2048, batch=128, length=48, batches=8, repeat=10),
    "quick": dict(N=2, d_model=64, h=4, d_ff=256, batch=8, length=16, batches=2, repeat=3),
}


class TorchTransformer(nn.Module):
    """``nn.Transformer`` with the same embeddings, positions and tied generator as ``transformer_lib``'s model."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.d_model = c.d_model
        self.embed = nn.Embedding(c.src_vocab, c.d_model)  # shared by source, target and generator
        self.register_buffer("pe", sinusoidal_positional_encoding(c.max_len, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(
            c.d_model,
            c.h,
            c.N,
            c.N,
            c.d_ff,
            c.dropout,
            batch_first=True,
            norm_first=c.norm_first,
            layer_norm_eps=c.layer_norm_eps,
        )
        self.generator = nn.Linear(c.d_model, c.tgt_vocab)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.generator.weight = self.embed.weight

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Log-probabilities ``(batch, tgt_len, vocab)``; the masks as nn.Transformer wants them (True = hidden)."""
        scale = math.sqrt(self.d_model)
        x = self.dropout(self.embed(src) * scale + self.pe[: src.size(1)])  # (B, S, d)
        y = self.dropout(self.embed(tgt) * scale + self.pe[: tgt.size(1)])  # (B, T, d)
        causal = ~causal_mask(tgt.size(1), device=tgt.device)  # (T, T): True above the diagonal = hidden
        out = self.transformer(
            x,
            y,
            tgt_mask=causal,
            src_key_padding_mask=src == 0,
            tgt_key_padding_mask=tgt == 0,
            memory_key_padding_mask=src == 0,
            tgt_is_causal=True,
        )
        return F.log_softmax(self.generator(out), dim=-1)


class OursTransformer(nn.Module):
    """``transformer_lib.Transformer`` behind the same ``(src, tgt) -> log-probs`` call, masks built inside."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.model = Transformer(c)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Log-probabilities ``(batch, tgt_len, vocab)``."""
        return self.model(src, tgt, padding_mask(src, 0), target_mask(tgt, 0))


def make_batches(n_batches: int, batch: int, length: int, vocab_model: Path) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``n_batches`` fixed-shape batches ``(src, tgt_in, tgt_out)`` of real Multi30k pairs, padded to ``length``."""
    tok = Tokenizer(vocab_model)
    pairs = load_multi30k("train")
    out, rows = [], []
    for de, en in pairs:
        s, t = tok.encode(de), tok.encode(en)
        if 0 < len(s) <= length and 0 < len(t) < length:
            rows.append((s, t))
        if len(rows) == batch:
            src = torch.zeros(batch, length, dtype=torch.long)
            tgt_in = torch.zeros(batch, length, dtype=torch.long)
            tgt_out = torch.zeros(batch, length, dtype=torch.long)
            for b, (s, t) in enumerate(rows):
                src[b, : len(s)] = torch.tensor(s)
                tgt_in[b, : len(t) + 1] = torch.tensor([tok.bos_id, *t])
                tgt_out[b, : len(t) + 1] = torch.tensor([*t, tok.eos_id])
            out.append((src, tgt_in, tgt_out))
            rows = []
            if len(out) == n_batches:
                return out
    raise ValueError(f"Multi30k has too few pairs of at most {length} tokens for {n_batches} batches of {batch}")


def main(argv: list[str] | None = None) -> int:
    """Measure and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny model and batch: seconds, for CI and the chapter")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile modes")
    parser.add_argument("--modes", default=None, help="comma-separated subset of fp32,bf16,fp32+compile,bf16+compile")
    parser.add_argument("--out", default=None, help="results JSON (default: results/bench_train_<device>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # nn.Transformer with norm_first
    device = torch.device(args.device)
    clock = "wall" if device.type == "cuda" else "cpu"
    now = time.perf_counter if clock == "wall" else time.process_time
    sizes = SIZES["quick" if args.quick else device.type]
    torch.manual_seed(0)
    tok_path = ROOT / "release" / "multi30k_de_en.spm.model"
    vocab = Tokenizer(tok_path).vocab_size
    config = TransformerConfig(
        vocab,
        vocab,
        N=sizes["N"],
        d_model=sizes["d_model"],
        d_ff=sizes["d_ff"],
        h=sizes["h"],
        dropout=0.1,
        share_embeddings=True,
        norm_first=True,
        fused=True,
        max_len=512,
    )
    batches = [
        tuple(x.to(device) for x in b)
        for b in make_batches(sizes["batches"], sizes["batch"], sizes["length"], tok_path)
    ]
    real_tokens = sum(int((s != 0).sum() + (t != 0).sum()) for s, _, t in batches)  # per pass over the batches
    flops = sum(transformer_flops(config, s.size(1), t.size(1), s.size(0)) for s, t, _ in batches)

    modes = ["fp32", "bf16"] + ([] if args.no_compile or args.quick else ["fp32+compile", "bf16+compile"])
    if args.modes:
        modes = args.modes.split(",")
    peaks, peak_method = {}, {}
    for dtype in ("fp32", "bf16"):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        peaks[dtype] = gpu_peak_flops(name, dtype) if device.type == "cuda" else None
        peak_method[dtype] = "data sheet (transformer_lib.bench.KNOWN_PEAK_TFLOPS)"
        if peaks[dtype] is None:
            torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
            peaks[dtype] = matmul_peak_flops(device, torch_dtype, size=512 if args.quick else 1024, clock=clock)
            peak_method[dtype] = (
                f"measured: best square matmul, {clock} clock (transformer_lib.bench.matmul_peak_flops)"
            )

    rows = []
    for mode in modes:
        dtype = "bf16" if mode.startswith("bf16") else "fp32"
        compiled = mode.endswith("+compile")
        models = {}
        for name, cls in (("transformer_lib", OursTransformer), ("nn.Transformer", TorchTransformer)):
            torch.manual_seed(0)
            module = cls(config).to(device)
            optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
            forward = torch.compile(module) if compiled else module
            models[name] = (module, optimizer, forward)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

        def one_pass(name: str, models: dict = models, autocast: torch.autocast = autocast) -> tuple[float, float]:
            """One training step per batch; returns the pass's seconds on ``clock`` and on the wall."""
            module, optimizer, forward = models[name]
            module.train()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, wall = now(), time.perf_counter()
            for src, tgt_in, tgt_out in batches:
                with autocast:
                    loss = label_smoothed_loss(forward(src, tgt_in), tgt_out, 0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return now() - start, time.perf_counter() - wall

        first = {name: one_pass(name)[1] for name in models}  # warm-up; with torch.compile, includes compiling
        times: dict[str, list[float]] = {name: [] for name in models}
        walls: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(sizes["repeat"]):
            for name in models:  # alternate, so that a slow moment of a shared machine hits both
                t, w = one_pass(name)
                times[name].append(t)
                walls[name].append(w)
        for name in models:
            median = statistics.median(times[name])
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    "dtype": dtype,
                    "compiled": compiled,
                    "tokens_per_s": real_tokens / median,
                    "step_ms": 1000 * median / len(batches),
                    "mfu": mfu(flops, median, peaks[dtype]),
                    "spread": (max(times[name]) - min(times[name])) / median,
                    "tokens_per_s_wall": real_tokens / statistics.median(walls[name]),
                    "first_pass_wall_s": first[name],
                    "compile_wall_s": (first[name] - statistics.median(walls[name])) if compiled else None,
                    "times_s": times[name],
                    "wall_times_s": walls[name],
                }
            )
        print(f"{mode}: done", flush=True)
    ratios = {}
    for mode in modes:
        ours = next(r for r in rows if r["mode"] == mode and r["model"] == "transformer_lib")
        theirs = next(r for r in rows if r["mode"] == mode and r["model"] == "nn.Transformer")
        ratios[mode] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    results = results_header(
        device,
        "python benchmarks/train.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        quick=args.quick,
        model_config={
            k: getattr(config, k) for k in ("N", "d_model", "h", "d_ff", "dropout", "norm_first", "tgt_vocab")
        },
        batch={
            "sentences": sizes["batch"],
            "padded_length": sizes["length"],
            "batches_per_pass": len(batches),
            "real_tokens_per_pass": real_tokens,
            "padded_tokens_per_pass": 2 * sum(s.numel() for s, _, _ in batches),
        },
        repeat=sizes["repeat"],
        clock=clock,
        flops_per_pass=flops,
        flops_method="transformer_lib.bench.transformer_flops (training = 3x forward, padded shapes)",
        peak_flops=peaks,
        peak_method=peak_method,
        rows=rows,
        ratio_ours_vs_torch=ratios,
    )
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / ("runs" if args.quick else "results")
        / f"bench_train_{device.type}{'_quick' if args.quick else ''}.json"
    )
    columns = ["model", "mode", "tokens_per_s", "step_ms", "mfu", "spread", "tokens_per_s_wall", "compile_wall_s"]
    print(format_table(rows, columns))
    for mode, ratio in ratios.items():
        print(f"{mode}: transformer_lib / nn.Transformer tokens/s = {ratio:.3f}")
    write_json_atomic(results, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
