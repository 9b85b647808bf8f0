"""The command line: train -> translate round trip, typed --set overrides, resume, one-line errors."""

from __future__ import annotations

import io
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer_lib.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("offline")

STEPS = 30
TRAIN_ARGS = [
    "--preset",
    "tiny",
    "--set",
    f"max_steps={STEPS}",
    "train_limit=300",
    "valid_limit=20",
    "vocab_size=400",
    "log_every=10",
    "eval_every=30",
    "save_every=30",
    "betas=0.9,0.99",
    "max_minutes=none",
    "name=cli-test",
    "--bleu-sentences",
    "5",
    "--no-progress",
    "--device",
    "cpu",
]
SOURCES = ["Ein Hund läuft durch den Schnee.", "Zwei Männer spielen Fußball."]


@pytest.fixture(scope="module")
def run_dir(offline, tmp_path_factory) -> Path:
    """``train --preset tiny --out DIR --set max_steps=30 ...`` run once for the whole module."""
    out = tmp_path_factory.mktemp("cli_run") / "run"
    torch.manual_seed(0)
    assert main(["train", "--out", str(out), *TRAIN_ARGS]) == 0
    return out


def run_main(argv, capsys, monkeypatch, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_a_run_with_the_overrides(run_dir):
    assert {"checkpoint_last.pt", "log.jsonl", "spm.model", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    ckpt = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    config = ckpt["train_config"]
    assert ckpt["step"] == STEPS
    assert (config["max_steps"], config["train_limit"], config["vocab_size"]) == (STEPS, 300, 400)
    assert config["betas"] == (0.9, 0.99) and config["max_minutes"] is None and config["name"] == "cli-test"
    assert config["d_model"] == 64, "the rest comes from the tiny preset"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "event" not in r] == [10, 20, 30]
    evals = [r for r in log if r.get("event") == "eval"]
    assert len(evals) == 1 and evals[0]["val_bleu_sentences"] == 5 and evals[0]["val_bleu_greedy"] >= 0


def cli_translate(checkpoint: Path, stdin: str, capsys, monkeypatch) -> list[str]:
    """Output lines of ``translate --checkpoint`` with its default decoding options."""
    code, out, err = run_main(["translate", "--checkpoint", checkpoint], capsys, monkeypatch, stdin)
    assert code == 0 and err == "", err
    assert out.endswith("\n") or out == ""
    return out.split("\n")[:-1]


def test_translate_keeps_one_output_line_per_input_line(run_dir, capsys, monkeypatch):
    checkpoint = run_dir / "checkpoint_last.pt"
    lines = cli_translate(checkpoint, f"{SOURCES[0]}\n\n   \n{SOURCES[1]}\n", capsys, monkeypatch)
    assert len(lines) == 4, "one line out per line in"
    assert lines[1] == "" and lines[2] == "", "empty (and blank) lines stay empty"
    # Blank lines change nothing else: each sentence gets the translation it gets without them.
    assert [lines[0], lines[3]] == cli_translate(checkpoint, "\n".join(SOURCES) + "\n", capsys, monkeypatch)
    alone = cli_translate(checkpoint, SOURCES[1], capsys, monkeypatch)  # no final newline: still one line
    assert len(alone) == 1


def test_translate_with_empty_input_prints_nothing(run_dir, capsys, monkeypatch):
    assert cli_translate(run_dir / "checkpoint_last.pt", "", capsys, monkeypatch) == []
    assert cli_translate(run_dir / "checkpoint_last.pt", "\n\n", capsys, monkeypatch) == ["", ""]


def test_python_dash_m_translate_in_a_subprocess(run_dir, capsys, monkeypatch):
    stdin = f"{SOURCES[0]}\n\n{SOURCES[1]}\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same single math thread as in this process
    result = subprocess.run(
        [sys.executable, "-m", "transformer_lib", "translate", "--checkpoint", str(run_dir / "checkpoint_last.pt")],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    assert lines[:3] == cli_translate(run_dir / "checkpoint_last.pt", stdin, capsys, monkeypatch)


def test_help(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "translate", "evaluate"))
    # python -m transformer_lib runs __main__.py, which hands sys.argv to main()
    monkeypatch.setattr(sys, "argv", ["transformer_lib", "train", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("transformer_lib", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--set" in out and "--preset" in out


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_translate_missing_checkpoint(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.pt"
    code, out, err = run_main(["translate", "--checkpoint", missing], capsys, monkeypatch, "Ein Hund.\n")
    assert_one_line_error(code, err, str(missing), "does not exist")
    assert out == ""


@pytest.mark.parametrize("payload", [b"garbage", "truncated"])
def test_translate_corrupt_checkpoint(run_dir, tmp_path, capsys, monkeypatch, payload):
    if payload == "truncated":
        payload = (run_dir / "checkpoint_last.pt").read_bytes()[:20_000]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(payload)
    code, out, err = run_main(["translate", "--checkpoint", bad], capsys, monkeypatch, "Ein Hund.\n")
    assert_one_line_error(code, err, str(bad), "not a readable checkpoint")


def test_evaluate_missing_checkpoint(tmp_path, capsys, monkeypatch):
    code, _, err = run_main(["evaluate", "--checkpoint", tmp_path / "missing.pt"], capsys, monkeypatch)
    assert_one_line_error(code, err, "missing.pt does not exist")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--preset", "huge"], ["unknown preset 'huge'", "multi30k_cpu"]),
        (["--set", "max_stepz=3"], ["unknown config key 'max_stepz'", "max_steps"]),
        (["--set", "max_steps"], ["--set expects KEY=VALUE, got 'max_steps'"]),
        (["--set", "max_steps=abc"], ["--set max_steps='abc': expected a value of type int"]),
        (["--set", "dropout=lots"], ["--set dropout='lots': expected a value of type float"]),
        (["--set", "bf16=maybe"], ["--set bf16='maybe': expected a value of type bool"]),
        (["--set", "max_steps=0"], ["max_steps must be a positive integer, got 0"]),
        # a string value is a string, even one that starts like a JSON literal ("t", "n", ...)
        (["--set", "dataset=tatoeba", "src_lang=de"], ["tatoeba dataset translates between 'zh' and 'en'"]),
        (["--set", "dataset=nowhere"], ["dataset must be one of 'multi30k', 'tatoeba'; got 'nowhere'"]),
        (["--resume"], ["cannot resume:", "checkpoint_last.pt does not exist"]),
    ],
)
def test_train_errors(tmp_path, capsys, monkeypatch, args, fragments):
    out_dir = tmp_path / "run"
    code, _, err = run_main(["train", "--out", out_dir, "--no-progress", *args], capsys, monkeypatch)
    assert_one_line_error(code, err, *fragments)
    assert not out_dir.exists(), "a rejected command leaves nothing behind"


def test_train_will_not_overwrite_a_run(run_dir, capsys, monkeypatch):
    before = (run_dir / "checkpoint_last.pt").read_bytes()
    code, _, err = run_main(["train", "--out", run_dir, *TRAIN_ARGS], capsys, monkeypatch)
    assert_one_line_error(code, err, "already holds a training run")
    assert (run_dir / "checkpoint_last.pt").read_bytes() == before


def test_resume_continues_with_a_longer_run_and_refuses_other_changes(run_dir, tmp_path, capsys, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    more = STEPS + 10
    base = ["train", "--out", copy, "--resume", "--no-progress", "--device", "cpu", "--bleu-sentences", "0"]
    code, _, err = run_main([*base, "--set", "d_model=128"], capsys, monkeypatch)
    assert_one_line_error(code, err, "cannot resume", "with a different d_model")
    code, _, err = run_main([*base, "--preset", "multi30k"], capsys, monkeypatch)
    assert_one_line_error(code, err, "--preset cannot be combined with --resume")
    code, out, err = run_main([*base, "--set", f"max_steps={more}"], capsys, monkeypatch)
    assert code == 0, err
    assert f"stopped after {more} steps" in out
    ckpt = torch.load(copy / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == more and ckpt["train_config"]["max_steps"] == more
    assert ckpt["train_config"]["betas"] == (0.9, 0.99), "the rest of the config comes from the checkpoint"
    log = [json.loads(line) for line in (copy / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "event" not in r] == [10, 20, 30, 40]
    assert {"step": STEPS, "event": "resumed"} in log
