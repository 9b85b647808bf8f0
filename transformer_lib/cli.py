"""The course's command line (``python -m transformer_lib`` or the ``transformer-lib`` script).

Chapter 9 introduces it (``translate``, ``evaluate``, ``release``); it is the application that
offers every chapter's work, so its ``train`` command also runs data-parallel under ``torchrun``
(chapter 11) and knows the Tatoeba corpus (chapter 12), both imported when they are needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["main", "build_parser"]


def _register_later_chapters() -> None:
    """The Tatoeba corpus and its preset (chapter 12) register themselves when their module is imported."""
    from . import chinese  # noqa: F401


def _convert(key: str, value: str, annotation: str) -> object:
    """``value`` as the type of the ``TrainConfig`` field ``key`` (annotated ``annotation``)."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if "None" in kinds and value.lower() in ("none", "null"):
        return None
    kind = next(k for k in kinds if k != "None")
    try:
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind.startswith("tuple"):
            items = json.loads(value) if value.startswith("[") else value.split(",")
            return tuple(float(v) for v in items)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ValueError(f"--set {key}={value!r}: expected a value of type {annotation}") from None
    return value  # str


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
        out[key] = _convert(key, value.strip(), types[key])
    return out


def _train_config(args: argparse.Namespace):
    """The run's ``TrainConfig``: a preset (or the checkpoint's, with ``--resume``) with the ``--set`` overrides."""
    from .checkpoint import read_checkpoint
    from .train import PRESETS, TrainConfig

    overrides = _parse_overrides(args.set or [])
    if args.resume:  # the checkpoint holds the config; --set may change how long it runs, logs, saves
        if args.preset is not None:
            raise ValueError("--preset cannot be combined with --resume: the run's config is in its checkpoint")
        last = Path(args.out) / "checkpoint_last.pt"
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        config = TrainConfig.from_dict(read_checkpoint(last, ("train_config",))["train_config"])
    else:
        preset = args.preset or "tiny"
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        config = PRESETS[preset]
    return dataclasses.replace(config, **overrides)


def _train(args: argparse.Namespace) -> int:
    from .distributed import distributed_env, train_parallel
    from .evaluate import corpus_scores, translate
    from .train import train
    from .utils import resolve_device

    config = _train_config(args)
    device = resolve_device(args.device)

    def on_eval(model, data, step):
        n = args.bleu_sentences
        if n <= 0 or not data.valid_text:
            return {}
        sources, refs = [s for s, _ in data.valid_text[:n]], [t for _, t in data.valid_text[:n]]
        start = time.perf_counter()
        hyps = translate(model, data.src_tok, data.tgt_tok, sources, batch_size=100)
        scores = corpus_scores(hyps, refs, "zh" if config.tgt_lang == "zh" else "13a")
        return {
            "val_bleu_greedy": scores["bleu"],
            "val_bleu_sentences": len(hyps),
            "bleu_s": time.perf_counter() - start,
        }

    env = distributed_env()
    options = dict(resume=args.resume, device=device, progress=not args.no_progress, on_eval=on_eval)
    if env is None and args.grad_accum == 1:
        summary = train(config, args.out, **options)  # chapter 8's loop, one process
    else:
        summary = train_parallel(config, args.out, grad_accum=args.grad_accum, **options)  # chapter 11
    if env is not None and env[0] != 0:
        return 0  # under torchrun only rank 0 reports
    processes = summary.get("world_size", 1)
    print(
        f"stopped after {summary['step']} steps ({summary['stop_reason']}), {summary['elapsed_s'] / 60:.1f} min; "
        f"checkpoint: {Path(args.out) / 'checkpoint_last.pt'}" + (f"; {processes} processes" if processes > 1 else "")
    )
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _decoder(args: argparse.Namespace) -> tuple[Callable, str]:
    """The decoding method of ``--beam`` / ``--length-penalty``, and its description."""
    from .decode import make_decoder

    if args.beam == 1:
        return make_decoder("greedy"), "greedy search"
    description = f"beam search (beam {args.beam}, length penalty {args.length_penalty:g})"
    return make_decoder("beam", beam_size=args.beam, length_penalty=args.length_penalty), description


def _is_blank(line: str) -> bool:
    """Nothing to translate: only spaces and control characters (a line of NUL bytes, say)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in line)


def _stdin_chunks(size: int) -> Iterator[list[str]]:
    """Lines of standard input, ``size`` at a time; bytes that are not UTF-8 become U+FFFD (-> <unk>), no error."""
    buffer = getattr(sys.stdin, "buffer", None)
    lines = (raw.decode("utf-8", errors="replace") for raw in buffer) if buffer is not None else iter(sys.stdin)
    chunk: list[str] = []
    for line in lines:
        chunk.append(line.rstrip("\n").rstrip("\r"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _translate(args: argparse.Namespace) -> int:
    """Translate standard input line by line; each chunk of ``--batch-size`` lines is printed as soon as it is done."""
    from .checkpoint import load_translator
    from .evaluate import translate

    model, src_tok, tgt_tok = load_translator(args.checkpoint, args.device)
    decoder, _ = _decoder(args)
    max_src_len = min(args.max_src_len, model.config.max_len)  # the model has no positions beyond max_len
    number = 0
    for chunk in _stdin_chunks(args.batch_size):
        keep = [i for i, line in enumerate(chunk) if not _is_blank(line)]  # blank lines are echoed as blank lines
        sources = [chunk[i].replace("\x00", "") for i in keep]
        for i, source in zip(keep, sources):
            n = len(src_tok.encode(source))
            if n > max_src_len:
                print(
                    f"warning: line {number + i + 1} has {n} tokens; only its first {max_src_len} are translated "
                    f"(--max-src-len {args.max_src_len}, model positions {model.config.max_len})",
                    file=sys.stderr,
                )
        outputs = dict(zip(keep, translate(model, src_tok, tgt_tok, sources, max_src_len=max_src_len, decoder=decoder)))
        print("\n".join(outputs.get(i, "") for i in range(len(chunk))), flush=True)
        number += len(chunk)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_translator, read_checkpoint
    from .data import load_pairs
    from .evaluate import corpus_scores, translate
    from .train import TrainConfig

    # The checkpoint's own corpus and direction: a Multi30k test set, or Tatoeba's held-out split.
    config = TrainConfig.from_dict(read_checkpoint(args.checkpoint, ("train_config",))["train_config"])
    split = args.split or ("test_2016_flickr" if config.dataset == "multi30k" else "test")
    model, src_tok, tgt_tok = load_translator(args.checkpoint, args.device)
    decoder, description = _decoder(args)
    pairs = load_pairs(config.dataset, split, config.src_lang, config.tgt_lang)
    hyps = translate(model, src_tok, tgt_tok, [s for s, _ in pairs], decoder=decoder)
    scores = corpus_scores(hyps, [t for _, t in pairs], "zh" if config.tgt_lang == "zh" else "13a")
    print(f"decoding: {description}")
    print(f"{split}: BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}")
    print(f"BLEU signature: {scores['bleu_signature']}")
    print(f"chrF signature: {scores['chrf_signature']}")
    return 0


def _choose_weights(args: argparse.Namespace, run: Path, config, step: int) -> dict:
    """Release the last weights and the mean of the last ``--average`` saved ones; keep the better on validation.

    Writes the chosen release to ``--out`` and returns what the results JSON records about the choice.
    """
    from .checkpoint import load_translator, release_checkpoint
    from .data import load_pairs
    from .evaluate import corpus_scores, translate
    from .utils import write_atomic

    valid = load_pairs(config.dataset, "val", config.src_lang, config.tgt_lang)[: args.choose_on]
    tokenize = "zh" if config.tgt_lang == "zh" else "13a"
    bleu = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in sorted({1, args.average}):  # 1 = the last weights; k > 1 = the mean of the last k saved
            path = release_checkpoint(run, Path(tmp) / f"avg{k}.pt", average_last=k)
            model, src_tok, tgt_tok = load_translator(path, args.device)
            hyps = translate(model, src_tok, tgt_tok, [s for s, _ in valid])
            bleu[k] = corpus_scores(hyps, [t for _, t in valid], tokenize)["bleu"]
            print(
                f"weights averaged over {k} checkpoint(s): validation BLEU "
                f"(greedy, {len(valid)} sentences) {bleu[k]:.2f}"
            )
        best = max(bleu, key=bleu.get)
        write_atomic(args.out, (Path(tmp) / f"avg{best}.pt").read_bytes())
    saved = sorted((run / "checkpoints").glob("step_*.pt"))[-best:]  # what the k > 1 candidate averaged
    return {
        "averaged_checkpoints": best,
        "averaged_steps": [step] if best == 1 else [int(p.stem.split("_")[1]) for p in saved],
        "validation_bleu_by_averaging": {str(k): round(v, 2) for k, v in bleu.items()},
        "validation_sentences": len(valid),
    }


def _score_test_splits(args: argparse.Namespace, config, model, src_tok, tgt_tok) -> tuple[dict, dict]:
    """Greedy and beam BLEU/chrF of the release on every test split of its corpus; and sacreBLEU's signatures."""
    from .data import CORPORA, DataError, load_pairs
    from .decode import make_decoder
    from .evaluate import corpus_scores, translate

    tokenize = "zh" if config.tgt_lang == "zh" else "13a"  # sacreBLEU's tokenizer for the output language
    decoders = {"greedy": make_decoder("greedy"), "beam": make_decoder("beam", args.beam, args.length_penalty)}
    scores, signatures = {}, {}
    for split in CORPORA[config.dataset].test_splits:
        try:
            pairs = load_pairs(config.dataset, split, config.src_lang, config.tgt_lang)
        except DataError as e:  # e.g. a local mirror without test_2018_flickr
            print(f"skipping {split}: {e}", file=sys.stderr)
            continue
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
        scores[split] = {}
        for name, decoder in decoders.items():
            start = time.perf_counter()
            hyps = translate(model, src_tok, tgt_tok, sources, decoder=decoder)
            result = corpus_scores(hyps, refs, tokenize)
            signatures = {k: result[k] for k in ("bleu_signature", "chrf_signature")}
            scores[split][name] = {
                "bleu": round(result["bleu"], 2),
                "chrf": round(result["chrf"], 2),
                "seconds": round(time.perf_counter() - start, 1),
                "sentences": len(pairs),
                "outputs_with_unk": sum("⁇" in h for h in hyps),  # <unk> decodes as ⁇: a character it could not write
            }
            if name == "beam":
                scores[split][name].update(beam_size=args.beam, length_penalty=args.length_penalty)
            print(f"{split:18s} {name:6s} BLEU {result['bleu']:6.2f}  chrF {result['chrf']:6.2f}")
    return scores, signatures


def _release(args: argparse.Namespace) -> int:
    """Average/choose the weights, write the fp16 release, score every test split, write the results."""
    from .checkpoint import load_translator, read_checkpoint
    from .evaluate import device_description, plot_training_log
    from .train import TrainConfig
    from .utils import sha256_file, write_atomic

    run, out = Path(args.run_dir), Path(args.out)
    full = read_checkpoint(run / "checkpoint_last.pt", ("train_config", "step", "epoch", "elapsed_s"))
    config = TrainConfig.from_dict(full["train_config"])  # the run's dataset and languages
    choice = _choose_weights(args, run, config, full["step"])
    model, src_tok, tgt_tok = load_translator(out, args.device)
    # The SentencePiece model(s) beside the checkpoint: X.spm.model when joint, else X.src.spm.model, X.tgt.spm.model.
    if tgt_tok.model_bytes == src_tok.model_bytes:
        spm_paths = {src_tok.save(out.with_suffix(".spm.model"))}
    else:
        spm_paths = {src_tok.save(out.with_suffix(".src.spm.model")), tgt_tok.save(out.with_suffix(".tgt.spm.model"))}
    scores, signatures = _score_test_splits(args, config, model, src_tok, tgt_tok)
    log_text = (run / "log.jsonl").read_text(encoding="utf-8")
    speeds = [json.loads(line)["tokens_per_s"] for line in log_text.splitlines() if '"tokens_per_s"' in line]
    results_path = Path(args.results)
    stem = results_path.with_suffix("")
    write_atomic(f"{stem}_log.jsonl", log_text)
    plot_training_log(run / "log.jsonl", f"{stem}_curves.png")
    results = {
        "task": f"{config.dataset} {config.src_lang}-{config.tgt_lang}",
        "device": args.trained_on or device_description(args.device),
        "command": args.command_line,
        "config": full["train_config"],
        "steps": full["step"],
        "epochs": full["epoch"],
        "wall_time_s": round(full["elapsed_s"], 1),
        "tokens_per_s": round(sum(speeds) / max(len(speeds), 1), 1),
        "checkpoint": {"path": str(out), "sha256": sha256_file(out), "bytes": out.stat().st_size, "dtype": "float16"}
        | choice,
        "scores": scores,
        **signatures,
        "evaluated_on": device_description(args.device),
    }
    write_atomic(results_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")  # never half-written
    print(f"BLEU signature: {signatures.get('bleu_signature')}\nchrF signature: {signatures.get('chrf_signature')}")
    print(
        f"wrote {out}, {', '.join(map(str, sorted(spm_paths)))}, {results_path}, {stem}_log.jsonl and {stem}_curves.png"
    )
    return 0


def _add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--beam", type=_positive_int, default=4, metavar="N", help="beam size; 1 = greedy search (default 4)"
    )
    p.add_argument(
        "--length-penalty",
        type=_non_negative_float,
        default=0.6,
        metavar="ALPHA",
        help="GNMT length penalty alpha of beam search, ((5 + len) / 6) ** alpha (default 0.6)",
    )


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a translator (data-parallel when started by torchrun)")
    p.add_argument(
        "--preset",
        default=None,
        help="tiny (the default), multi30k (GPU), multi30k_cpu, multi30k_speedrun or tatoeba_cpu",
    )
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, SentencePiece models)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config values, e.g. max_steps=2000 (with --resume only run length, logging and saving)",
    )
    p.add_argument(
        "--grad-accum",
        type=_positive_int,
        default=1,
        metavar="N",
        help="batches per process and optimizer step (chapter 11); processes x N must stay the same to resume",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--bleu-sentences", type=int, default=300, help="validation sentences scored with greedy BLEU")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_train)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m transformer_lib``."""
    parser = argparse.ArgumentParser(prog="python -m transformer_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    p = sub.add_parser("translate", help="translate lines from standard input")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-src-len",
        type=_positive_int,
        default=256,
        help="longer inputs are cut to this many tokens (with a warning)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, help="lines translated (and printed) together")
    _add_decoding_arguments(p)
    p.set_defaults(run=_translate)
    p = sub.add_parser("evaluate", help="BLEU and chrF on a test split of the checkpoint's corpus")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--split", default=None, help="a split of the checkpoint's corpus (default: test_2016_flickr / Tatoeba's test)"
    )
    p.add_argument("--device", default="cpu")
    _add_decoding_arguments(p)
    p.set_defaults(run=_evaluate)
    p = sub.add_parser("release", help="make the small release checkpoint of a run and score it on its test splits")
    p.add_argument("--run", dest="run_dir", required=True, help="the training run directory")
    p.add_argument("--out", required=True, help="the release checkpoint to write (fp16)")
    p.add_argument("--results", required=True, help="the results JSON to write (log and curves are written beside it)")
    p.add_argument("--average", type=_positive_int, default=5, help="also try the mean of the last N saved weights")
    p.add_argument(
        "--choose-on", type=_positive_int, default=500, help="the first N validation sentences decide averaging"
    )
    p.add_argument("--trained-on", default=None, help="device description of the training machine")
    p.add_argument("--command-line", default="", help="the training command, recorded in the results")
    p.add_argument("--device", default="cpu")
    _add_decoding_arguments(p)
    p.set_defaults(run=_release)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors are reported in one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        _register_later_chapters()
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
