"""benchmarks/time_to_bleu.py: nn.Transformer behind our interface, the paused clock, a quick run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_to_bleu  # noqa: E402
from train import TorchTransformer  # noqa: E402

from transformer_lib.masks import padding_mask  # noqa: E402
from transformer_lib.model import TransformerConfig, greedy_decode  # noqa: E402


def small_config() -> TransformerConfig:
    return TransformerConfig(40, 40, N=2, d_model=32, d_ff=64, h=4, dropout=0.0, share_embeddings=True, fused=True)


def test_torch_translator_computes_what_benchmarks_train_measures():
    """Same weights, same batch: the adapter's forward (our masks) equals TorchTransformer's forward."""
    torch.manual_seed(0)
    adapter = time_to_bleu.TorchTranslator(small_config()).eval()
    reference = TorchTransformer(small_config()).eval()
    reference.load_state_dict(adapter.state_dict())
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])  # the second sentence padded
    tgt = torch.tensor([[1, 11, 12], [1, 13, 14]])  # no padding in the target: both give the same positions
    with torch.no_grad():
        ours = adapter(src, tgt, padding_mask(src, 0))
        theirs = reference(src, tgt)
    assert ours.shape == (2, 3, 40)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_torch_translator_decodes_with_the_library_greedy_search():
    torch.manual_seed(0)
    model = time_to_bleu.TorchTranslator(small_config())
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    ys = greedy_decode(model, src, padding_mask(src, 0), max_len=6, bos_id=1, eos_id=2, pad_id=0)
    assert ys.shape[0] == 2 and 2 <= ys.shape[1] <= 7 and (ys[:, 0] == 1).all()
    # A padded source must decode as it does alone: the key padding mask reaches nn.Transformer.
    alone = greedy_decode(model, src[1:, :2], None, max_len=6, bos_id=1, eos_id=2, pad_id=0)
    assert ys[1, : alone.size(1)].tolist() == alone[0].tolist()


def test_minutes_to():
    curve = [{"minutes": 1.0, "bleu": 10.0}, {"minutes": 2.0, "bleu": 31.0}, {"minutes": 3.0, "bleu": 29.0}]
    assert time_to_bleu.minutes_to(curve, 30) == 2.0
    assert time_to_bleu.minutes_to(curve, 35) is None


@pytest.mark.parametrize("args", [["--models", "nope"], ["--marks", "0,1"], ["--marks", "2,1"], ["--marks", "x"]])
def test_bad_arguments_are_refused(args, capsys):
    with pytest.raises(SystemExit) as e:
        time_to_bleu.main(["--quick", *args])
    assert e.value.code == 2 and "must" in capsys.readouterr().err


def test_quick_run_end_to_end(tmp_path):
    """Both models, two marks each: the curve's clock stops at the marks, evaluation excluded, files written."""
    out = tmp_path / "ttb.json"
    assert time_to_bleu.main(["--quick", "--marks", "0.05,0.1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["marks_minutes"] == [0.05, 0.1]
    assert [r["model"] for r in results["rows"]] == ["transformer_lib", "nn.Transformer"]
    for row in results["rows"]:
        assert len(row["curve"]) == 2 and row["steps"] == row["curve"][-1]["step"] > 0
        for mark, point in zip(results["marks_minutes"], row["curve"]):
            assert point["minutes"] >= mark and point["eval_s"] > 0 and 0 <= point["bleu"] <= 100
        assert row["curve"][-1]["minutes"] < 0.1 + row["curve"][0]["eval_s"] / 60, "evaluation time not counted"
    assert out.with_suffix(".png").is_file()
