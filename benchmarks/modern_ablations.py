"""What changed since 2017, measured: chapter 14's refinements, one at a time, on chapter 13's GPT.

Every run trains the same small decoder-only language model (``ModernLM``: 2 layers, d_model 128,
4 heads) on the English captions of Multi30k for the same number of steps, with the same
tokenizer, batches, optimiser and schedule (chapter 13's ``fit``), changing one switch
(``transformer_lib.modern.REFINEMENTS``):

    base     the 2017 choices: LayerNorm, ReLU feed-forward, sinusoidal positions, 4 kv heads, tied
    rmsnorm  RMSNorm instead of LayerNorm
    swiglu   the SwiGLU feed-forward network (2/3 the width: the same number of weights)
    rope     rotary position embeddings instead of the added sinusoids
    gqa_2    grouped-query attention, 2 key/value heads
    mqa_1    multi-query attention, 1 key/value head
    untied   an output layer of its own instead of the embedding matrix
    modern   RMSNorm + SwiGLU + RoPE + 2 key/value heads

Reported per run: validation perplexity, parameters, the CPU time per training step (the process's
CPU time, so that other jobs on a shared machine count less), and the key/value cache of cached
decoding, measured (bytes per token of a batch of sentences). ``base`` and ``modern`` also run with
a second seed, which says how large the seed-to-seed noise is. ``results/modern_ablations.json`` is
rewritten atomically after every run; running the command again skips finished runs.

    OMP_NUM_THREADS=1 python benchmarks/modern_ablations.py           # the committed CPU sweep
    OMP_NUM_THREADS=1 python benchmarks/modern_ablations.py --quick   # a smoke test, into runs/
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from transformer_lib.bench import format_table, results_header, write_json_atomic
from transformer_lib.data import load_multi30k, use_shared_mirror
from transformer_lib.lm import LMCache, causal_lm_loss, fit, lm_batches, perplexity
from transformer_lib.modern import REFINEMENTS, ModernConfig, ModernLM, cache_bytes
from transformer_lib.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(N=2, d_model=128, d_ff=512, h=4, dropout=0.1, max_len=128)
SECOND_SEED = ("base", "modern")


def measure_cache(model: ModernLM, batch: int = 8, tokens: int = 64) -> int:
    """Bytes of the key/value cache after ``tokens`` cached decoding steps of ``batch`` sentences, per token."""
    cache = LMCache(len(model.blocks.layers))
    model.eval()
    with torch.no_grad():
        for t in range(tokens):
            model.next_token_logits(cache, torch.full((batch,), 4 + t % 50))
    return cache_bytes(cache) // (batch * tokens)


def run(name: str, seed: int, vocab: int, train: list, val: list, steps: int, lr: float) -> dict:
    description, changes = REFINEMENTS[name]
    torch.manual_seed(seed)
    model = ModernLM(ModernConfig(vocab, **MODEL, **changes))
    started = time.process_time()
    losses = fit(model, lambda m, b: causal_lm_loss(m(b), b), train, steps, lr=lr)
    cpu_s = time.process_time() - started
    return {
        "run": name,
        "seed": seed,
        "description": description,
        "changes": changes,
        "params": sum(p.numel() for p in model.parameters()),
        "val_ppl": round(perplexity(model, val), 3),
        "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "cpu_ms_per_step": round(1000 * cpu_s / steps, 1),
        "kv_cache_bytes_per_token": measure_cache(model),
        "losses_every_10": [round(sum(losses[i : i + 10]) / len(losses[i : i + 10]), 4) for i in range(0, steps, 10)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="at most 20 steps per run, 2,000 captions, into runs/")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.vocab < 100 or args.max_tokens < 100:
        parser.error("need --steps >= 1, --vocab >= 100 and --max-tokens >= 100")
    steps = min(args.steps, 20) if args.quick else args.steps
    out = args.out or ROOT / ("runs/modern_ablations_quick.json" if args.quick else "results/modern_ablations.json")
    use_shared_mirror()

    train_text = [en for _, en in load_multi30k("train")][: 2000 if args.quick else None]
    val_text = [en for _, en in load_multi30k("val")][: 200 if args.quick else None]
    tok = train_tokenizer(train_text, args.vocab)
    train = lm_batches(tok.encode_batch(train_text), args.max_tokens, seed=0)
    val = lm_batches(tok.encode_batch(val_text), 4000, seed=1)
    settings = {"steps": steps, "lr": args.lr, "vocab": tok.vocab_size, "max_tokens": args.max_tokens, "model": MODEL}
    command = "python benchmarks/modern_ablations.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = results_header("cpu", command.strip(), quick=args.quick, settings=settings, rows=[])
    if out.exists():  # resume: keep the finished runs of the same settings
        old = json.loads(out.read_text())
        if old.get("settings") == json.loads(json.dumps(settings)):
            results["rows"] = old["rows"]
    plan = [(name, 0) for name in REFINEMENTS] + [(name, 1) for name in SECOND_SEED]
    for name, seed in plan:
        if any(r["run"] == name and r["seed"] == seed for r in results["rows"]):
            continue
        row = run(name, seed, tok.vocab_size, train, val, steps, args.lr)
        results["rows"].append(row)
        write_json_atomic(results, out)
        print(f"{name} (seed {seed}): val ppl {row['val_ppl']:.2f}, {row['cpu_ms_per_step']:.0f} ms/step", flush=True)
    write_json_atomic(results, out)  # also when every run was there already: the header is this script's
    columns = ["run", "seed", "params", "val_ppl", "cpu_ms_per_step", "kv_cache_bytes_per_token"]
    print(format_table(results["rows"], columns))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
