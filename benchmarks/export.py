"""The released Multi30k translator as ONNX: size, speed and quality of each way to store the weights.

For each of fp32, fp16 (float16 storage, float32 compute: the book's translator page) and int8
(dynamic quantization of the matrix products), ``transformer_lib.export`` writes the encoder and
decoder-step graphs; onnxruntime (one thread) then translates the whole test_2016_flickr split
with greedy search, one sentence at a time, as the web page does. Reported: the files' size,
sacreBLEU (with its signature) and the share of sentences whose translation is identical to
PyTorch's greedy search (``evaluate.translate``, batch size 1), and the time per sentence (the
process's CPU time).

    OMP_NUM_THREADS=1 python benchmarks/export.py            # results/export_cpu.json
    OMP_NUM_THREADS=1 python benchmarks/export.py --quick    # 100 sentences (runs/, not results/)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformer_lib.bench import format_table, results_header, write_json_atomic
from transformer_lib.checkpoint import load_translator
from transformer_lib.data import load_multi30k, use_shared_mirror
from transformer_lib.evaluate import corpus_scores, translate
from transformer_lib.export import WEIGHT_FORMATS, export_onnx, greedy_translate_onnx, onnx_sessions

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "release" / "multi30k_de_en.pt"))
    parser.add_argument("--quick", action="store_true", help="100 test sentences")
    parser.add_argument("--out", default=None, help="results file (default: results/export_cpu.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    use_shared_mirror()  # the offline corpora beside the repository, where they are
    pairs = load_multi30k("test_2016_flickr")
    pairs = pairs[:100] if args.quick else pairs
    sources, references = [de for de, _ in pairs], [en for _, en in pairs]
    model, src_tok, tgt_tok = load_translator(args.checkpoint)
    start = time.process_time()
    expected = translate(model, src_tok, tgt_tok, sources, batch_size=1)
    rows = [
        {
            "weights": "PyTorch",
            "MiB": None,
            "bleu": corpus_scores(expected, references)["bleu"],
            "identical": 1.0,
            "ms_per_sentence": 1e3 * (time.process_time() - start) / len(sources),
        }
    ]
    signature = corpus_scores(expected, references)["bleu_signature"]
    for weights in WEIGHT_FORMATS:
        with tempfile.TemporaryDirectory() as folder:
            manifest = export_onnx(args.checkpoint, folder, weights)
            _, encoder, step, src_onnx, tgt_onnx = onnx_sessions(folder)
            start = time.process_time()
            ours = [greedy_translate_onnx(encoder, step, src_onnx, tgt_onnx, s)[0] for s in sources]
            seconds = time.process_time() - start
        graphs = manifest["bytes"]["encoder.onnx"] + manifest["bytes"]["decoder_step.onnx"]
        rows.append(
            {
                "weights": weights,
                "MiB": graphs / 2**20,
                "bleu": corpus_scores(ours, references)["bleu"],
                "identical": sum(a == b for a, b in zip(ours, expected)) / len(ours),
                "ms_per_sentence": 1e3 * seconds / len(sources),
            }
        )
        print(format_table(rows[-1:]), flush=True)
    results = results_header(
        "cpu", "python " + shlex.join(sys.argv), quick=args.quick, sentences=len(sources), bleu_signature=signature
    )
    results["rows"] = rows
    print(format_table(rows))
    out = Path(args.out) if args.out else ROOT / ("runs" if args.quick else "results") / "export_cpu.json"
    write_json_atomic(results, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
