"""Ablations of the training recipe on Multi30k de->en: which of the paper's choices matter?

Every run trains the same small model (chapter 8's ``train``) for the same number of steps with
the same data order and peak learning rate, changing one thing:

    base               pre-LN, warmup, sinusoidal positions, label smoothing 0.1, N = 3
    post_ln            post-LN (the paper's original Add & Norm), with warmup
    post_ln_no_warmup  post-LN, the peak learning rate from step 1 (same peak, same decay)
    pre_ln_no_warmup   pre-LN, the peak learning rate from step 1
    learned_positions  a learned position table instead of the sinusoids
    no_label_smoothing label smoothing 0
    layers_6           N = 6 encoder and decoder layers

Each finished run is scored with greedy decoding on test_2016_flickr (sacreBLEU, with its
signature) and its stability is measured from the per-step training losses and gradient norms
(see ``stability``). ``results/ablations.json`` (and a markdown table beside it) is rewritten
atomically after every run, so an interrupted sweep keeps what it finished; running the same
command again skips the finished runs and resumes an interrupted one from its checkpoint.

    OMP_NUM_THREADS=1 python benchmarks/ablations.py                 # the committed CPU sweep
    OMP_NUM_THREADS=1 python benchmarks/ablations.py --quick         # a smoke test: a few steps per run, into runs/
    python benchmarks/ablations.py --device cuda --preset gpu --out results/ablations_cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import torch

from transformer_lib.ablations import ABLATIONS, SMOOTH, SPIKE_NATS, stability
from transformer_lib.bench import format_table, results_header, write_json_atomic
from transformer_lib.checkpoint import load_translator, read_checkpoint
from transformer_lib.data import load_multi30k
from transformer_lib.decode import make_decoder
from transformer_lib.evaluate import corpus_scores, translate
from transformer_lib.train import TrainConfig, TrainingDiverged, noam_lr, train
from transformer_lib.utils import write_atomic

ROOT = Path(__file__).resolve().parent.parent

# Small models for a CPU core; "gpu" is a bigger model for a lent GPU.
BASES = {
    "cpu": TrainConfig(
        name="ablation",
        vocab_size=4000,
        N=3,
        d_model=128,
        d_ff=512,
        h=4,
        dropout=0.1,
        max_tokens=1500,
        warmup=200,
        lr_factor=0.6,
        max_steps=1200,
        log_every=10,
        eval_every=240,
        save_every=240,
        keep_checkpoints=1,
        norm_first=True,
    ),
    "gpu": TrainConfig(
        name="ablation",
        vocab_size=8000,
        N=3,
        d_model=512,
        d_ff=2048,
        h=8,
        dropout=0.1,
        max_tokens=8192,
        warmup=1000,
        lr_factor=1.0,
        max_steps=6000,
        log_every=20,
        eval_every=1000,
        save_every=1000,
        keep_checkpoints=1,
        norm_first=True,
    ),
}


def read_log(out: Path) -> list[dict]:
    import json

    path = out / "log.jsonl"
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.is_file()
        else []
    )


def run_one(name: str, config: TrainConfig, runs_dir: Path, device: str, test_pairs: list, bleu_batch: int) -> dict:
    """Train (or resume) one ablation, then score it; a diverged run is scored at its last checkpoint."""
    out = runs_dir / name
    resume = (out / "checkpoint_last.pt").is_file()
    start = time.perf_counter()
    diverged = None
    try:
        summary = train(config, out, resume=resume, device=device, progress=False)
        losses = summary["losses"]
    except TrainingDiverged as e:
        diverged = str(e).split(";")[0]
        losses = []
    log = read_log(out)
    # The per-step losses of this session; for a resumed or diverged run, the logged window means.
    steps = [r for r in log if "loss" in r and "event" not in r]
    if resume or diverged is not None or len(losses) < config.max_steps:
        losses = [r["loss"] for r in steps for _ in range(config.log_every)]
    evals = [r for r in log if r.get("event") == "eval"]
    record = {
        "name": name,
        "description": ABLATIONS[name][0],
        "changes": ABLATIONS[name][1],
        "steps": steps[-1]["step"] if steps else 0,
        "diverged": diverged is not None,
        "diverged_reason": diverged,
        "train_loss_last_100": round(sum(losses[-100:]) / max(len(losses[-100:]), 1), 4) if losses else None,
        "val_loss_final": round(evals[-1]["val_loss"], 4) if evals else None,
        "val_loss_min": round(min(r["val_loss"] for r in evals), 4) if evals else None,
        "val_loss_curve": [[r["step"], round(r["val_loss"], 4)] for r in evals],
        "train_loss_curve": [[r["step"], round(r["loss"], 4)] for r in steps],
        **stability(losses, log, config.clip_norm),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    checkpoint = out / "checkpoint_last.pt"
    if checkpoint.is_file():
        model, src_tok, tgt_tok = load_translator(checkpoint, device)
        t0 = time.perf_counter()
        hyps = translate(
            model, src_tok, tgt_tok, [de for de, _ in test_pairs], batch_size=bleu_batch, decoder=make_decoder("greedy")
        )
        scores = corpus_scores(hyps, [en for _, en in test_pairs])
        record.update(
            bleu=round(scores["bleu"], 2),
            chrf=round(scores["chrf"], 2),
            bleu_signature=scores["bleu_signature"],
            bleu_seconds=round(time.perf_counter() - t0, 1),
            scored_step=int(read_checkpoint(checkpoint, ("step",))["step"]),
        )
    else:
        record.update(bleu=None, chrf=None, bleu_signature=None, scored_step=None)
    return record


def markdown_table(results: dict) -> str:
    """The results as a markdown table (what the chapter and the README show)."""
    rows = []
    for r in results["runs"]:
        bleu = "—" if r["bleu"] is None else f"{r['bleu']:.2f}"
        rows.append(
            f"| {r['name']} | {r['description']} | {bleu} | {r['val_loss_min']} | {r['val_loss_final']} | "
            f"{'yes' if r['diverged'] else 'no'} | {r['max_loss_rise']:.3f} | {r['spike_steps']} | "
            f"{r['grad_norm_max']} |"
        )
    head = (
        f"Ablations, {results['base']['d_model']}-d model, {results['steps']} steps of "
        f"~{results['base']['max_tokens']} "
        f"tokens, peak lr {results['peak_lr']:.2e}; greedy sacreBLEU on test_2016_flickr ({results['device']}).\n\n"
        "| run | change | BLEU | min val loss | final val loss | diverged | max loss rise (nats) | spike steps "
        "| max grad norm |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the ablations given on the command line and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(BASES), default="cpu", help="model size (default: cpu)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run on 300 test sentences: a smoke test")
    parser.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    parser.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/ablations[_quick])")
    parser.add_argument("--out", default=None, help="results JSON (default: results/ablations_<device>.json)")
    args = parser.parse_args(argv)
    base = BASES[args.preset]
    steps = args.steps or (20 if args.quick else base.max_steps)
    every = max(steps // 5, 1)
    base = dataclasses.replace(
        base, max_steps=steps, eval_every=every, save_every=every, log_every=min(base.log_every, steps)
    )
    names = args.only.split(",") if args.only else list(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {list(ABLATIONS)}")
    device_type = torch.device(args.device).type
    suffix = "_quick" if args.quick else ""
    default_name = "ablations" + ("" if device_type == "cpu" else f"_{device_type}") + suffix
    out = Path(args.out) if args.out else ROOT / ("runs" if args.quick else "results") / f"{default_name}.json"
    runs_dir = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / f"ablations_{device_type}{suffix}"
    test_pairs = load_multi30k("test_2016_flickr")[: 300 if args.quick else None]
    peak = noam_lr(base.warmup, base.d_model, base.warmup, base.lr_factor)
    results = results_header(
        args.device,
        "python benchmarks/ablations.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        base=dataclasses.asdict(base),
        steps=steps,
        peak_lr=peak,
        test_split="test_2016_flickr",
        test_sentences=len(test_pairs),
        decoding="greedy (key/value cache), max length source + 50",
        stability_definition=(
            f"max_loss_rise: largest rise (nats) of the {SMOOTH}-step moving average of the training loss above its "
            f"minimum so far; spike_steps: steps where that rise exceeded {SPIKE_NATS} nats; grad_norm_max: largest "
            "gradient norm before clipping; clipped_windows: share of logged windows whose mean gradient norm exceeded "
            "clip_norm; diverged: the loss or gradient norm became NaN/inf (training stops)"
        ),
        runs=[],
    )
    if out.is_file():  # keep the finished runs of an interrupted sweep with the same settings
        import json

        old = json.loads(out.read_text(encoding="utf-8"))
        if old.get("base") == results["base"]:
            results["runs"] = [r for r in old["runs"] if r["name"] in names]
    done = {r["name"] for r in results["runs"]}
    for name in names:
        if name in done:
            print(f"{name}: already in {out}, skipped", flush=True)
            continue
        config = dataclasses.replace(base, name=f"ablation_{name}", **ABLATIONS[name][1])
        print(f"{name}: {ABLATIONS[name][0]} ...", flush=True)
        record = run_one(name, config, runs_dir, args.device, test_pairs, bleu_batch=100)
        results["runs"].append(record)
        results["runs"].sort(key=lambda r: list(ABLATIONS).index(r["name"]))
        write_json_atomic(results, out)
        write_atomic(out.with_suffix(".md"), markdown_table(results))
        print(
            f"  BLEU {record['bleu']}, min val loss {record['val_loss_min']}, diverged {record['diverged']}, "
            f"max loss rise {record['max_loss_rise']}, {record['train_seconds']:.0f} s",
            flush=True,
        )
    columns = [
        "name",
        "bleu",
        "val_loss_min",
        "val_loss_final",
        "diverged",
        "max_loss_rise",
        "spike_steps",
        "grad_norm_max",
    ]
    print(format_table(results["runs"], columns))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
