"""Chapter 10 — the translator without PyTorch: ONNX graphs for onnxruntime, in Python or in a web page.

A released checkpoint becomes two graphs. The *encoder* maps source ids to the memory, once per
sentence. The *decoder step* maps the source ids, the memory and the target prefix ``<bos> y1 … yt``
to the log-probabilities of ``y(t+1)`` and to the cross-attention weights of that last position,
every layer and head — what the book's translator page draws. The step re-reads the whole prefix
(no key/value cache): for the ≤ 60 tokens of a caption, measured in chapter 10, that costs little
and keeps the graph one plain function.

``weights`` chooses how the files store the weights: ``"fp16"`` (the default) keeps every float32
weight that float16 represents exactly — all of a released checkpoint's, which are float16 — as
float16 with a ``Cast`` back to float32, so the files are half the size and compute exactly what
PyTorch computes; ``"int8"`` quantizes the matrix products (``onnxruntime.quantization.quantize_dynamic``),
smaller again but no longer the same numbers; ``"fp32"`` stores them as they are.

``greedy_translate_onnx`` is greedy search over the two graphs, the loop the web page runs in
JavaScript. Needs the ``web`` extra: ``onnx``, ``onnxscript`` and ``onnxruntime``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor, nn

from .checkpoint import load_translator
from .checks import check_choice
from .masks import causal_mask, padding_mask
from .model import Transformer
from .multihead import keep_attention_weights
from .tokenizer import Tokenizer
from .utils import PAD_ID, sha256_file, write_atomic

if TYPE_CHECKING:
    import numpy as np
    from onnxruntime import InferenceSession

__all__ = ["EncoderGraph", "DecoderStepGraph", "export_onnx", "onnx_sessions", "greedy_translate_onnx"]

OPSET = 18
WEIGHT_FORMATS = ("fp16", "int8", "fp32")


class EncoderGraph(nn.Module):
    """Source ids ``(batch, src_len)`` -> memory ``(batch, src_len, d_model)``."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> Tensor:
        return self.model.encode(src, padding_mask(src, PAD_ID))


class DecoderStepGraph(nn.Module):
    """``(src, memory, ys)`` -> next-token log-probabilities and the last position's cross-attention."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, memory: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        states = self.model.decode(memory, padding_mask(src, PAD_ID), ys, causal_mask(ys.size(1), device=ys.device))
        log_probs = self.model.generator(states[:, -1])  # (batch, tgt_vocab)
        layers = self.model.decoder.layers
        weights = torch.stack([layer.cross_attn.attn_weights[:, :, -1] for layer in layers], dim=1)
        return log_probs, weights  # weights: (batch, layers, heads, src_len)


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, weights: str = "fp16") -> dict:
    """Write ``encoder.onnx``, ``decoder_step.onnx``, the tokenizers (and their pieces) and ``manifest.json``.

    Returns the manifest: special ids, sizes, model dimensions and each file's SHA-256. Every file
    is written to a temporary folder first and moved into place whole.
    """
    check_choice("weights", weights, WEIGHT_FORMATS)
    model, src_tok, tgt_tok = load_translator(checkpoint)
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp, keep_attention_weights(model), torch.no_grad():
        tmp = Path(tmp)
        src = torch.tensor([src_tok.encode("Ein Mann fährt auf einem Fahrrad.")])  # (1, src_len): a tracing example
        ys = torch.tensor([[tgt_tok.bos_id, 5, 6]])  # (1, 3)
        memory = model.encode(src, padding_mask(src, PAD_ID))
        longest = model.config.max_len  # the positional table's length
        batch = torch.export.Dim("batch")
        src_len, tgt_len = torch.export.Dim("src_len", max=longest), torch.export.Dim("tgt_len", max=longest)
        graphs = {
            "encoder.onnx": (EncoderGraph(model), (src,), ["src"], ["memory"], {"src": {0: batch, 1: src_len}}),
            "decoder_step.onnx": (
                DecoderStepGraph(model),
                (src, memory, ys),
                ["src", "memory", "ys"],
                ["log_probs", "cross_attention"],
                {"src": {0: batch, 1: src_len}, "memory": {0: batch, 1: src_len}, "ys": {0: batch, 1: tgt_len}},
            ),
        }
        for name, (graph, args, inputs, outputs, shapes) in graphs.items():
            _export_one(graph, args, inputs, outputs, shapes, tmp / name, weights)
        files = {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}
        for side, tok in (("src", src_tok), ("tgt", tgt_tok)):
            (tmp / f"{side}.spm.model").write_bytes(tok.model_bytes)
            pieces = [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]  # for display (not in sentencepiece-js)
            (tmp / f"{side}.pieces.json").write_text(json.dumps(pieces, ensure_ascii=False))
            files[f"{side}_tokenizer"], files[f"{side}_pieces"] = f"{side}.spm.model", f"{side}.pieces.json"
        manifest = _manifest(model, src_tok, tgt_tok, files, tmp, weights)
        for name in files.values():
            os.replace(tmp / name, out / name)
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a logger below errors for a while (the exporter logs that torchvision is not installed)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _export_one(
    graph: nn.Module, args: tuple, inputs: list[str], outputs: list[str], shapes: dict, path: Path, weights: str
) -> None:
    """One graph to one self-contained ONNX file (weights inside, stored as ``weights`` says)."""
    plain = path.with_suffix(".fp32.onnx")
    with warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")  # the exporter's notes on torchvision and dynamic shapes
        program = torch.onnx.export(
            graph,
            args,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    program.save(str(plain), external_data=False)
    if weights == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8)
        plain.unlink()
    elif weights == "fp16":
        _store_weights_in_fp16(plain, path)
        plain.unlink()
    else:
        plain.rename(path)


def _store_weights_in_fp16(source: Path, target: Path) -> None:
    """Each float32 weight that float16 holds exactly becomes float16 plus a Cast back: same numbers, half the bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph, kept, casts = model.graph, [], []
    for weight in graph.initializer:
        array = numpy_helper.to_array(weight)
        half = array.astype(np.float16)
        if weight.data_type != TensorProto.FLOAT or array.size < 64 or not np.array_equal(half, array):
            kept.append(weight)  # not float32, too small to matter, or not exact in float16 (e.g. the sinusoids)
            continue
        kept.append(numpy_helper.from_array(half, weight.name + ".fp16"))
        casts.append(helper.make_node("Cast", [weight.name + ".fp16"], [weight.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # the casts first: the graph's nodes stay in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def _manifest(model: Transformer, src_tok: Tokenizer, tgt_tok: Tokenizer, files: dict, folder: Path, weights: str):
    c = model.config
    return {
        "format": "transformer_lib/onnx-v1",
        "opset": OPSET,
        "weights": weights,
        "layers": c.N,
        "heads": c.h,
        "d_model": c.d_model,
        "max_len": c.max_len,
        "ids": {"pad": PAD_ID, "bos": tgt_tok.bos_id, "eos": tgt_tok.eos_id, "unk": src_tok.unk_id},
        "files": files,
        "bytes": {name: (folder / name).stat().st_size for name in files.values()},
        "sha256": {name: sha256_file(folder / name) for name in files.values()},
    }


def onnx_sessions(
    folder: str | os.PathLike, threads: int = 1
) -> tuple[dict, InferenceSession, InferenceSession, Tokenizer, Tokenizer]:
    """``(manifest, encoder, decoder_step, src_tok, tgt_tok)`` of an ``export_onnx`` folder, on onnxruntime."""
    import onnxruntime as ort

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} holds no manifest.json: export a checkpoint with export_onnx first")
    manifest = json.loads(manifest_path.read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    files = manifest["files"]
    sessions = [ort.InferenceSession(str(folder / files[k]), options) for k in ("encoder", "decoder_step")]
    tokenizers = [Tokenizer((folder / files[k]).read_bytes()) for k in ("src_tokenizer", "tgt_tokenizer")]
    return manifest, *sessions, *tokenizers


def greedy_translate_onnx(
    encoder: InferenceSession,
    decoder_step: InferenceSession,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    sentence: str,
    max_extra_len: int = 50,
) -> tuple[str, list[int], np.ndarray]:
    """Greedy search over the two graphs: the translation, its ids and the cross-attention of each output.

    The same loop as ``evaluate.translate`` with its default decoder, for one sentence: at most
    ``len(source) + max_extra_len`` tokens, stopping at ``<eos>``. The weights are
    ``(output_len, layers, heads, src_len)``.
    """
    import numpy as np

    ids = src_tok.encode(sentence)[:256] or [src_tok.unk_id]
    src = np.array([ids], dtype=np.int64)  # (1, src_len)
    (memory,) = encoder.run(None, {"src": src})  # (1, src_len, d_model)
    ys, weights = [tgt_tok.bos_id], []
    for _ in range(len(ids) + max_extra_len):
        log_probs, attention = decoder_step.run(None, {"src": src, "memory": memory, "ys": np.array([ys])})
        ys.append(int(log_probs[0].argmax()))
        weights.append(attention[0])  # (layers, heads, src_len)
        if ys[-1] == tgt_tok.eos_id:
            break
    out = ys[1:-1] if ys[-1] == tgt_tok.eos_id else ys[1:]
    return tgt_tok.decode(out), ys[1:], np.stack(weights)


def main(argv: list[str] | None = None) -> None:
    """``python -m transformer_lib.export CHECKPOINT OUT_DIR [--weights fp16|int8|fp32]``."""
    parser = argparse.ArgumentParser(prog="python -m transformer_lib.export", description=main.__doc__)
    parser.add_argument("checkpoint", help="a released checkpoint (.pt)")
    parser.add_argument("out_dir", help="folder for the ONNX files, tokenizers and manifest.json")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="fp16")
    args = parser.parse_args(argv)
    try:
        manifest = export_onnx(args.checkpoint, args.out_dir, args.weights)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    total = sum(manifest["bytes"].values()) / 2**20
    print(f"wrote {', '.join(manifest['files'].values())} and manifest.json to {args.out_dir} ({total:.1f} MiB)")


if __name__ == "__main__":
    main()
