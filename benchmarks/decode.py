"""Decoding speed and quality of the released Multi30k translator.

1. Greedy search with and without the key/value cache, at forced 50-token outputs: the end-of-
   sentence token is disabled by setting its bias in the generator to -inf (on a copy of the
   model), so every sentence decodes exactly 50 tokens; the script checks that it did. Sentences/s
   for a batch of 32 test sentences and for one sentence at a time.
2. Greedy against beam search (beam 4 and 5, GNMT length penalty 0.6) on test_2016_flickr:
   sentences/s and sacreBLEU (with its signature) over the whole split, as ``translate`` runs them.

Time is the process's CPU time on a CPU (``transformer_lib.bench.benchmark(clock="cpu")``, one
thread) and wall time on a GPU.

    OMP_NUM_THREADS=1 python benchmarks/decode.py              # results/bench_decode_cpu.json
    OMP_NUM_THREADS=1 python benchmarks/decode.py --quick      # fewer sentences, seconds (runs/, not results/)
    python benchmarks/decode.py --device cuda                  # results/bench_decode_cuda.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import shlex
import sys
import time
from pathlib import Path

import torch

from transformer_lib.bench import benchmark, format_table, results_header, write_json_atomic
from transformer_lib.checkpoint import load_translator
from transformer_lib.data import load_multi30k
from transformer_lib.decode import greedy_search, make_decoder
from transformer_lib.evaluate import corpus_scores, translate
from transformer_lib.masks import padding_mask

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_TOKENS = 50


def without_eos(model: torch.nn.Module, eos_id: int) -> torch.nn.Module:
    """A copy of ``model`` that can never produce ``eos_id``: its generator bias for it is -inf."""
    forced = copy.deepcopy(model)
    with torch.no_grad():
        forced.generator.proj.bias[eos_id] = float("-inf")
    return forced


def main(argv: list[str] | None = None) -> int:
    """Measure and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer sentences and repetitions")
    parser.add_argument("--checkpoint", default=str(ROOT / "release" / "multi30k_de_en.pt"))
    parser.add_argument("--out", default=None, help="results JSON (default: results/bench_decode_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    clock = "wall" if device.type == "cuda" else "cpu"
    now = time.perf_counter if clock == "wall" else time.process_time
    model, src_tok, tgt_tok = load_translator(args.checkpoint, device)
    pairs = load_multi30k("test_2016_flickr")
    repeat = 2 if args.quick else 3

    # 1. the cache at forced 50-token outputs
    forced = without_eos(model, tgt_tok.eos_id)
    cache_rows = []
    for batch in (1, 8) if args.quick else (1, 32):
        sentences = [de for de, _ in pairs[:batch]]
        rows = [torch.tensor(src_tok.encode(s)) for s in sentences]
        src = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=src_tok.pad_id).to(device)
        mask = padding_mask(src, src_tok.pad_id)
        special = (tgt_tok.bos_id, tgt_tok.eos_id, tgt_tok.pad_id)
        outputs = {}
        for use_cache in (True, False):
            ys = greedy_search(forced, src, mask, OUTPUT_TOKENS, *special, use_cache=use_cache)
            assert ys.shape == (batch, OUTPUT_TOKENS + 1), (
                f"outputs must have exactly {OUTPUT_TOKENS} tokens, got {ys.shape}"
            )
            outputs[use_cache] = ys
            timing = benchmark(
                functools.partial(greedy_search, forced, src, mask, OUTPUT_TOKENS, *special, use_cache=use_cache),
                repeat=repeat,
                warmup=1,
                device=device,
                clock=clock,
            )
            cache_rows.append(
                {
                    "batch": batch,
                    "cache": use_cache,
                    "output_tokens": OUTPUT_TOKENS,
                    "seconds": timing.median,
                    "sentences_per_s": batch / timing.median,
                    "spread": timing.spread,
                }
            )
        assert torch.equal(outputs[True], outputs[False]), "cached and uncached greedy search must agree"
    speedups = {}
    for batch in sorted({r["batch"] for r in cache_rows}):
        cached, uncached = (
            next(r for r in cache_rows if r["batch"] == batch and r["cache"] is c) for c in (True, False)
        )
        speedups[str(batch)] = cached["sentences_per_s"] / uncached["sentences_per_s"]

    # 2. greedy against beam search on the test split
    test = pairs[:100] if args.quick else pairs
    sources, refs = [de for de, _ in test], [en for _, en in test]
    search_rows = []
    methods = [
        ("greedy", make_decoder("greedy"), None),
        ("beam 4", make_decoder("beam", beam_size=4), 4),
        ("beam 5", make_decoder("beam", beam_size=5), 5),
    ]
    for name, decoder, beam in methods:
        start = now()
        hyps = translate(model, src_tok, tgt_tok, sources, decoder=decoder)
        seconds = now() - start
        scores = corpus_scores(hyps, refs)
        search_rows.append(
            {
                "method": name,
                "beam_size": beam,
                "length_penalty": 0.6 if beam else None,
                "sentences": len(test),
                "seconds": seconds,
                "sentences_per_s": len(test) / seconds,
                "bleu": scores["bleu"],
                "chrf": scores["chrf"],
                "bleu_signature": scores["bleu_signature"],
            }
        )
        print(f"{name}: BLEU {scores['bleu']:.2f}, {len(test) / seconds:.1f} sentences/s", flush=True)
    greedy = search_rows[0]
    for row in search_rows:
        row["speed_vs_greedy"] = row["sentences_per_s"] / greedy["sentences_per_s"]
        row["bleu_minus_greedy"] = row["bleu"] - greedy["bleu"]

    results = results_header(
        device,
        "python benchmarks/decode.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        quick=args.quick,
        clock=clock,
        checkpoint=Path(args.checkpoint).name,
        test_split="test_2016_flickr",
        forced_length_method=(
            "generator bias of <eos> set to -inf on a copy of the model; every output checked to have 50 tokens"
        ),
        cache_rows=cache_rows,
        cache_speedup=speedups,
        search_rows=search_rows,
    )
    print(format_table(cache_rows, ["batch", "cache", "output_tokens", "seconds", "sentences_per_s", "spread"]))
    for batch, s in speedups.items():
        print(f"batch {batch}: the cache is {s:.2f}x faster at {OUTPUT_TOKENS}-token outputs")
    print(
        format_table(
            search_rows, ["method", "sentences", "sentences_per_s", "speed_vs_greedy", "bleu", "bleu_minus_greedy"]
        )
    )
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / ("runs" if args.quick else "results")
        / f"bench_decode_{device.type}{'_quick' if args.quick else ''}.json"
    )
    write_json_atomic(results, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
