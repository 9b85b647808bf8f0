"""The course's command line (``python -m transformer_lib`` or the ``transformer-lib`` script)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _parse_overrides(pairs: list[str]) -> dict:
    from .train import TrainConfig

    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        if key not in types:
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(sorted(types))}")
        out[key] = json.loads(value) if value[:1] in "[{0123456789-tfn" and value not in ("t", "f") else value
        if value in ("true", "false", "null"):
            out[key] = json.loads(value)
    return out


def _train(args: argparse.Namespace) -> int:
    from .evaluate import corpus_scores, translate
    from .train import PRESETS, train

    if args.resume:
        config = None
    else:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
        config = dataclasses.replace(PRESETS[args.preset], **_parse_overrides(args.set or []))

    def on_eval(model, data, step):
        n = args.bleu_sentences
        if n <= 0 or not data.valid_text:
            return {}
        sources, refs = [s for s, _ in data.valid_text[:n]], [t for _, t in data.valid_text[:n]]
        start = time.perf_counter()
        hyps = translate(model, data.src_tok, data.tgt_tok, sources, batch_size=100)
        scores = corpus_scores(hyps, refs)
        return {"val_bleu_greedy": scores["bleu"], "val_bleu_sentences": len(hyps), "bleu_s": time.perf_counter() - start}

    if config is None:  # resume: the checkpoint holds the config
        import torch

        last = Path(args.out) / "checkpoint_last.pt"
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        from .train import TrainConfig

        config = TrainConfig(**torch.load(last, map_location="cpu", weights_only=False)["train_config"])
    summary = train(config, args.out, resume=args.resume, device=args.device, progress=not args.no_progress, on_eval=on_eval)
    print(f"stopped after {summary['step']} steps ({summary['stop_reason']}), {summary['elapsed_s'] / 60:.1f} min; "
          f"checkpoint: {Path(args.out) / 'checkpoint_last.pt'}")  # fmt: skip
    return 0


def _translate(args: argparse.Namespace) -> int:
    from .evaluate import translate
    from .train import load_translator

    model, src_tok, tgt_tok = load_translator(args.checkpoint, args.device)
    lines = [line.rstrip("\n") for line in sys.stdin]
    keep = [i for i, line in enumerate(lines) if line.strip()]
    outputs = translate(model, src_tok, tgt_tok, [lines[i] for i in keep], max_src_len=args.max_src_len)
    result = dict(zip(keep, outputs))
    for i in range(len(lines)):
        print(result.get(i, ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import load_multi30k
    from .evaluate import corpus_scores, translate
    from .train import load_translator

    model, src_tok, tgt_tok = load_translator(args.checkpoint, args.device)
    pairs = load_multi30k(args.split)
    hyps = translate(model, src_tok, tgt_tok, [s for s, _ in pairs])
    scores = corpus_scores(hyps, [t for _, t in pairs])
    print(f"{args.split}: BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}")
    print(f"BLEU signature: {scores['bleu_signature']}")
    print(f"chrF signature: {scores['chrf_signature']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m transformer_lib``."""
    parser = argparse.ArgumentParser(prog="python -m transformer_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a translator")
    p.add_argument("--preset", default="tiny", help="tiny, multi30k (GPU) or multi30k_cpu")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, SentencePiece models)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config values, e.g. max_steps=2000")
    p.add_argument("--device", default=None)
    p.add_argument("--bleu-sentences", type=int, default=300, help="validation sentences scored with greedy BLEU at each eval")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_train)
    p = sub.add_parser("translate", help="translate lines from standard input")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-src-len", type=int, default=256, help="longer inputs are cut to this many tokens")
    p.set_defaults(run=_translate)
    p = sub.add_parser("evaluate", help="BLEU and chrF on a Multi30k split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors are reported in one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
