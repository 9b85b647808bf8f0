"""Tests for transformer_lib.utils: the toy sequence tasks, seeding, timing and the notebook helpers."""

from __future__ import annotations

import random

import matplotlib
import pytest
import torch

from transformer_lib import utils
from transformer_lib.utils import (
    BOS_ID,
    EOS_ID,
    FIRST_SYMBOL_ID,
    PAD_ID,
    make_sequence_task,
    set_seed,
    show_source,
    time_it,
    use_course_style,
)


def expected_target(symbols: list[int], kind: str, width: int) -> list[int]:
    """<bos> answer <eos> padded to ``width``, written with plain Python lists."""
    answer = list(symbols) if kind == "copy" else list(reversed(symbols))
    row = [BOS_ID] + answer + [EOS_ID]
    return row + [PAD_ID] * (width - len(row))


# ---- make_sequence_task ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["copy", "reverse"])
def test_targets_match_an_independent_implementation(kind: str) -> None:
    src, tgt = make_sequence_task(kind, 200, 1, 9, num_symbols=5)
    assert src.shape == (200, 9) and tgt.shape == (200, 11)
    for s, t in zip(src.tolist(), tgt.tolist()):
        length = next((i for i, tok in enumerate(s) if tok == PAD_ID), len(s))
        symbols = s[:length]
        assert all(tok == PAD_ID for tok in s[length:])  # padding only at the end
        assert t == expected_target(symbols, kind, 11)


def test_symbols_lengths_and_eos_placement() -> None:
    num_symbols, min_len, max_len = 4, 3, 7
    src, tgt = make_sequence_task("reverse", 500, min_len, max_len, num_symbols=num_symbols)
    real = src != PAD_ID
    lengths = real.sum(1)
    assert lengths.min() >= min_len and lengths.max() <= max_len
    assert set(lengths.tolist()) == set(range(min_len, max_len + 1))  # every length occurs in 500 draws
    assert torch.all((src[real] >= FIRST_SYMBOL_ID) & (src[real] < FIRST_SYMBOL_ID + num_symbols))
    assert torch.all(tgt[:, 0] == BOS_ID)
    assert torch.all((tgt == EOS_ID).sum(1) == 1)  # exactly one <eos> per row ...
    assert torch.equal((tgt == EOS_ID).int().argmax(1), lengths + 1)  # ... right after the answer
    assert torch.all((tgt != PAD_ID).sum(1) == lengths + 2)  # <bos> + answer + <eos>, the rest padding


def test_fixed_length_has_no_padding_in_src() -> None:
    src, tgt = make_sequence_task("copy", 10, 4, 4)
    assert torch.all(src != PAD_ID)
    assert torch.equal(tgt[:, 1:5], src) and torch.all(tgt[:, 5] == EOS_ID)


def test_generator_makes_the_task_reproducible() -> None:
    a = make_sequence_task("reverse", 20, 2, 6, generator=torch.Generator().manual_seed(7))
    b = make_sequence_task("reverse", 20, 2, 6, generator=torch.Generator().manual_seed(7))
    c = make_sequence_task("reverse", 20, 2, 6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "args, match",
    [
        (("sort", 4, 1, 3), "kind must be 'copy' or 'reverse'"),
        (("copy", 4, 0, 3), "min_len"),
        (("copy", 4, 5, 3), "min_len <= max_len"),
        (("copy", 0, 1, 3), "num_examples"),
        (("copy", 4, 1, 3, 0), "num_symbols"),
    ],
)
def test_make_sequence_task_bad_arguments_raise(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_sequence_task(*args)


# ---- set_seed and time_it --------------------------------------------------------------------------


def test_set_seed_reproduces_torch_and_python_random() -> None:
    set_seed(123)
    first = (torch.rand(3), random.random())
    set_seed(123)
    second = (torch.rand(3), random.random())
    set_seed(124)
    third = (torch.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert not torch.equal(first[0], third[0]) and first[1] != third[1]


def test_time_it_returns_the_median_and_calls_warmup_plus_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake clock the three timed runs take 5, 1 and 3 seconds: the median is 3."""
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # (start, end) of each timed run
    monkeypatch.setattr(utils.time, "perf_counter", lambda: next(clock))
    calls = []
    assert time_it(lambda: calls.append(1), repeat=3, warmup=2) == 3.0
    assert len(calls) == 5


def test_time_it_measures_real_time() -> None:
    seconds = time_it(lambda: sum(range(10_000)), repeat=3)
    assert isinstance(seconds, float) and 0 < seconds < 1


@pytest.mark.parametrize("repeat", [0, -2])
def test_time_it_bad_repeat_raises(repeat: int) -> None:
    with pytest.raises(ValueError, match="repeat must be positive"):
        time_it(lambda: None, repeat=repeat)


# ---- notebook helpers ------------------------------------------------------------------------------


def test_show_source_displays_the_library_code() -> None:
    code = show_source(set_seed)
    assert "def set_seed(seed: int)" in code.data


def test_use_course_style_sets_rcparams() -> None:
    with matplotlib.rc_context():
        matplotlib.rcParams["axes.grid"] = False
        use_course_style()
        assert matplotlib.rcParams["axes.grid"] is True
        assert matplotlib.rcParams["axes.spines.top"] is False


def test_write_atomic_writes_text_and_bytes_readable_by_all(tmp_path):
    text_path = utils.write_atomic(tmp_path / "sub" / "a.txt", "ünïcode\r\nline\n")
    assert text_path.read_bytes() == "ünïcode\r\nline\n".encode("utf-8")  # newlines kept as given
    assert utils.write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert text_path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.rglob(".*.part")]


def test_write_atomic_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "target"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        utils.write_atomic(target, "new")
    assert target.is_dir() and not list(tmp_path.glob(".*.part"))
