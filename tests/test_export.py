"""The translator as ONNX (transformer_lib.export): onnxruntime computes what PyTorch computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from transformer_lib import export  # noqa: E402
from transformer_lib.checkpoint import load_translator  # noqa: E402
from transformer_lib.data import load_pairs, use_shared_mirror  # noqa: E402
from transformer_lib.evaluate import translate  # noqa: E402
from transformer_lib.masks import causal_mask, padding_mask  # noqa: E402
from transformer_lib.multihead import keep_attention_weights  # noqa: E402
from transformer_lib.utils import repo_file  # noqa: E402

CHECKPOINT = repo_file("release/multi30k_de_en.pt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "multi30k_de_en"
    manifest = export.export_onnx(CHECKPOINT, folder)  # fp16 weights, the default
    return folder, manifest


@pytest.fixture(scope="module")
def sessions(exported):
    return export.onnx_sessions(exported[0])


@pytest.fixture(scope="module")
def translator():
    model, src_tok, tgt_tok = load_translator(CHECKPOINT)
    return model.eval(), src_tok, tgt_tok


def test_the_folder_holds_what_the_manifest_lists(exported):
    folder, manifest = exported
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["weights"] == "fp16" and manifest["layers"] == 3 and manifest["heads"] == 4
    assert sorted(p.name for p in folder.iterdir()) == sorted([*manifest["files"].values(), "manifest.json"])
    for name, size in manifest["bytes"].items():
        assert (folder / name).stat().st_size == size


def test_fp16_storage_keeps_every_weight_exactly(exported, translator):
    """The released weights are float16: stored as float16 and cast back, they are the same numbers."""
    model = translator[0]
    graph = onnx.load(str(exported[0] / "encoder.onnx")).graph
    stored = {w.name: numpy_helper.to_array(w) for w in graph.initializer}
    halves = {name[: -len(".fp16")]: a for name, a in stored.items() if name.endswith(".fp16")}
    assert halves, "no weight was stored in float16"
    assert all(a.dtype == np.float16 for a in halves.values())
    weights = {w.tobytes() for p in model.parameters() for w in (p.detach().numpy(), p.detach().numpy().T.copy())}
    assert all(a.astype(np.float32).tobytes() in weights for a in halves.values() if a.size >= 64 * 64)
    params = sum(p.numel() for p in model.encoder.parameters()) + model.src_embed.lut.weight.numel()
    assert exported[1]["bytes"]["encoder.onnx"] < 2.2 * params, "float16 storage should take ~2 bytes a weight"


def test_greedy_translations_are_the_python_clis(sessions, translator):
    use_shared_mirror()
    sentences = [de for de, _ in load_pairs("multi30k", "test_2016_flickr", "de", "en")[:25]]
    model, src_tok, tgt_tok = translator
    ours = [export.greedy_translate_onnx(sessions[1], sessions[2], sessions[3], sessions[4], s)[0] for s in sentences]
    assert ours == translate(model, src_tok, tgt_tok, sentences, batch_size=1)


def test_one_step_matches_pytorch_log_probs_and_cross_attention(sessions, translator):
    model, src_tok, tgt_tok = translator
    _, encoder, step, *_ = sessions
    src = torch.tensor([src_tok.encode("Zwei Hunde spielen im Schnee.")])  # (1, src_len)
    ys = torch.tensor([[tgt_tok.bos_id, 161, 410]])  # (1, 3)
    (memory,) = encoder.run(None, {"src": src.numpy()})
    log_probs, attention = step.run(None, {"src": src.numpy(), "memory": memory, "ys": ys.numpy()})
    with torch.no_grad(), keep_attention_weights(model):
        mask = padding_mask(src, 0)
        expected_memory = model.encode(src, mask)
        states = model.decode(expected_memory, mask, ys, causal_mask(3))
        expected = model.generator(states[:, -1])  # (1, vocab)
        weights = torch.stack([layer.cross_attn.attn_weights[:, :, -1] for layer in model.decoder.layers], 1)
    assert np.abs(memory - expected_memory.numpy()).max() < 1e-4
    assert np.abs(log_probs - expected.numpy()).max() < 1e-4
    assert attention.shape == (1, 3, 4, src.size(1))  # (batch, layers, heads, src_len)
    assert np.abs(attention - weights.numpy()).max() < 1e-5
    assert np.allclose(attention.sum(-1), 1.0, atol=1e-5)


def test_the_graphs_take_any_batch_and_length(sessions, translator):
    """Padded batches: each row's log-probabilities are those of the row alone."""
    src_tok = translator[1]
    _, encoder, step, *_ = sessions
    rows = [src_tok.encode("Ein Mann."), src_tok.encode("Eine Frau sitzt auf einer Bank im Park.")]
    src = np.zeros((2, len(rows[1])), dtype=np.int64)
    for i, r in enumerate(rows):
        src[i, : len(r)] = r
    ys = np.array([[1, 24, 75, 66], [1, 24, 138, 66]], dtype=np.int64)
    (memory,) = encoder.run(None, {"src": src})
    both, _ = step.run(None, {"src": src, "memory": memory, "ys": ys})
    alone = np.array(rows[0], dtype=np.int64)[None]
    (memory0,) = encoder.run(None, {"src": alone})
    first, _ = step.run(None, {"src": alone, "memory": memory0, "ys": ys[:1]})
    assert np.abs(both[0] - first[0]).max() < 1e-4


def test_bad_requests_are_clear_errors_and_leave_nothing_behind(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="weights must be one of 'fp16', 'int8', 'fp32'; got 'bf16'"):
        export.export_onnx(CHECKPOINT, tmp_path / "a", weights="bf16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.export_onnx(tmp_path / "missing.pt", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="holds no manifest.json"):
        export.onnx_sessions(tmp_path)

    calls = []

    def fail_on_the_second_graph(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("killed while exporting")
        args[-2].write_bytes(b"partial")

    monkeypatch.setattr(export, "_export_one", fail_on_the_second_graph)
    with pytest.raises(RuntimeError, match="killed"):
        export.export_onnx(CHECKPOINT, tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == [], "a failed export must leave no file behind"


def test_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main([str(tmp_path / "missing.pt"), str(tmp_path / "out")])
    assert exit_.value.code == 2 and "does not exist" in capsys.readouterr().err
