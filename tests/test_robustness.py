"""Bad input gets one clear line: hostile checkpoints, impossible devices, degenerate ids and sizes, odd stdin.

Each test is one hole a hostile probe of the library found (issue 15) and what happens now.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer_lib.checkpoint import read_checkpoint, save_checkpoint
from transformer_lib.cli import main
from transformer_lib.embeddings import Embeddings
from transformer_lib.encoder import EncoderLayer, SublayerConnection
from transformer_lib.masks import padding_mask
from transformer_lib.model import TransformerConfig, greedy_decode, make_model
from transformer_lib.utils import BOS_ID, EOS_ID, remove_stale_parts, resolve_device, write_atomic

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "release" / "multi30k_de_en.pt"


class _RunsACommand:
    """An object whose unpickling would run a shell command (what a malicious checkpoint holds)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "transformer_lib/translator-v1", "model": _RunsACommand(marker)}, evil)
    with pytest.raises(ValueError, match=r"holds a pickled Python object \(posix\.system\), refused"):
        read_checkpoint(evil)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert main(["translate", "--checkpoint", str(evil)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused because loading it could run code" in err[0]
    assert not marker.exists(), "the command in the checkpoint ran"


def test_an_arbitrary_object_in_a_checkpoint_is_refused(tmp_path):
    odd = tmp_path / "odd.pt"
    torch.save({"format": "transformer_lib/translator-v1", "config": TransformerConfig(10, 10)}, odd)
    with pytest.raises(ValueError, match=r"TransformerConfig\), refused"):
        read_checkpoint(odd)


def test_the_released_checkpoints_load_with_weights_only(tmp_path):
    for name in ("multi30k_de_en.pt", "tatoeba_zh_en.pt"):
        assert torch.load(ROOT / "release" / name, map_location="cpu", weights_only=True)["format"]
    path = save_checkpoint({"format": "x", "step": 1, "w": torch.zeros(2)}, tmp_path / "c.pt")
    assert oct(path.stat().st_mode & 0o777) == "0o644", "checkpoints are readable by everyone, like the other files"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_cpu_only_torch_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert main(["translate", "--checkpoint", str(RELEASE), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device 'cuda' was asked for, but this PyTorch sees no CUDA GPU; use cpu"]
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_layer_norm_eps_must_be_positive_and_finite(eps):
    with pytest.raises(ValueError, match="layer_norm_eps must be a finite positive number"):
        TransformerConfig(10, 10, layer_norm_eps=eps)
    with pytest.raises(ValueError, match="layer_norm_eps must be a finite positive number"):
        EncoderLayer(8, 2, 16, layer_norm_eps=eps)
    with pytest.raises(ValueError, match="eps must be a finite positive number"):
        SublayerConnection(8, eps=eps)


def test_a_kill_during_a_save_leaves_a_part_file_that_the_next_start_removes(tmp_path):
    def killed(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process dies mid-write ...

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "checkpoint_last.pt", killed)
    assert list(tmp_path.iterdir()) == [], "an exception cleans up after itself"
    stale = tmp_path / ".checkpoint_last.pt.abc123.part"  # ... but SIGKILL cannot: what it leaves looks like this
    stale.write_bytes(b"half")
    (tmp_path / "keep.txt").write_text("not ours")
    assert remove_stale_parts(tmp_path) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_training_start_removes_stale_part_files(tmp_path, offline):
    import dataclasses

    from transformer_lib.train import PRESETS, train

    (tmp_path / "checkpoints").mkdir()
    for stale in (tmp_path / ".checkpoint_last.pt.x1.part", tmp_path / "checkpoints" / ".step_0000002.pt.y2.part"):
        stale.write_bytes(b"left by a killed process")
    config = dataclasses.replace(PRESETS["tiny"], train_limit=60, valid_limit=4, vocab_size=200, max_steps=2)
    train(config, tmp_path, device="cpu", progress=False)
    assert not list(tmp_path.rglob("*.part"))


def test_an_empty_source_or_target_is_an_error_not_a_nan():
    model = make_model(12, 12, N=1, d_model=8, d_ff=16, h=2)
    empty = torch.zeros(2, 0, dtype=torch.long)
    ids = torch.tensor([[3, 4], [5, 6]])
    with pytest.raises(ValueError, match=r"src must have at least one position \(len >= 1\)"):
        model(empty, ids)
    with pytest.raises(ValueError, match=r"tgt must have at least one position"):
        model(ids, empty)
    with pytest.raises(ValueError, match=r"src must have at least one position"):
        greedy_decode(model, empty, None, max_len=3, bos_id=BOS_ID)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int8])
def test_small_integer_ids_get_a_clear_error(dtype):
    ids = torch.tensor([[3, 4]], dtype=dtype)
    with pytest.raises(ValueError, match=rf"tokens must be integer ids of dtype int64 .* got {dtype}; convert with"):
        Embeddings(10, 8)(ids)
    assert padding_mask(ids, 0).dtype == torch.bool, "a mask only compares: any integer dtype is fine there"


def test_greedy_decode_refuses_a_max_len_beyond_the_positions_before_decoding():
    model = make_model(12, 12, N=1, d_model=8, d_ff=16, h=2, max_len=6).eval()
    src = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match=r"max_len=7 exceeds the model's 6 target positions"):
        greedy_decode(model, src, None, max_len=7, bos_id=BOS_ID, eos_id=EOS_ID)
    assert greedy_decode(model, src, None, max_len=6, bos_id=BOS_ID).shape == (1, 7)
    with pytest.raises(ValueError, match=r"eos_id must be a token id in \[0, vocab_size=12\)"):
        greedy_decode(model, src, None, max_len=3, bos_id=BOS_ID, eos_id=12)


def _translate(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "transformer_lib", "translate", "--checkpoint", str(RELEASE), "--beam", "1", *args]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_a_line_of_nul_bytes_or_control_characters_is_echoed_blank():
    process = _translate()
    out, err = process.communicate(b"\x00\x00\x00\nEin Hund.\n\x07\x1b \n", timeout=120)
    assert process.returncode == 0, err.decode()
    lines = out.decode().split("\n")
    assert lines[0] == "" and "dog" in lines[1].lower() and lines[2] == "" and len(lines) == 4


def test_translate_prints_each_batch_as_soon_as_it_is_done():
    process = _translate("--batch-size", "1")
    try:
        process.stdin.write("Ein Hund läuft durch den Schnee.\n".encode())
        process.stdin.flush()  # the second line is not written yet: the first translation must come out alone
        first = process.stdout.readline().decode()
        assert "dog" in first.lower(), first
        process.stdin.write(b"Zwei M\xc3\xa4nner.\n")
        process.stdin.close()
        rest = process.stdout.read().decode()
        assert process.wait(timeout=120) == 0 and rest.count("\n") == 1 and "men" in rest.lower()
    finally:
        process.kill()
