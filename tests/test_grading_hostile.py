"""Hostile submissions (tests/hostile/attacks.py), graded by the real batch grader in the bubblewrap sandbox.

One command-line run grades every attack together with its baselines (the untouched stubs, the master, a
wrong attention); then:

* the master gets full marks, the untouched stubs get zero;
* every cheat gets no more, exercise by exercise, than the same notebook without the cheat;
* none of the attacks is stopped by the static scan (the sandbox is the boundary), except the import of the
  grader's internals, which the scan names;
* importing the library's solution gives a zero for that exercise, with the reason in the CSV;
* nothing is written outside the sandbox, no process of a submission outlives the grader, and the grader's
  own memory does not grow with what a submission prints.

If bubblewrap cannot run here (``make system-deps`` installs it), these tests fail: the batch grader
refuses to run without its sandbox.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest
from grading_support import EXERCISES, HIDDEN, ROOT

from transformer_lib.grading import batch, sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
from attacks import ATTACKS, WRONG_SDPA  # noqa: E402

STUB = EXERCISES / "02_attention.ipynb"
MASTER = EXERCISES / "master" / "02_attention.ipynb"
IDS = ["02.attention_module", "02.score_std", "02.sdpa"]
SCANNED = {"import_grader_internals"}  # the one attack the static scan is meant to name
GRADER_MEMORY_MB = 1200  # the grader's own peak RSS (torch and the hidden tests: ~500 MB here)


def _notebook(base: str, cells: list[str]) -> dict:
    nb = json.loads((MASTER if base == "master" else STUB).read_text(encoding="utf-8"))
    extra = ([WRONG_SDPA] if base == "wrong" else []) + cells
    for source in extra:
        nb["cells"].append(
            {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}
        )
    return nb


def _worker_processes() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "transformer_lib.grading.worker" in text:
            found.append(text)
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """Write every attack and baseline as a notebook, grade them all in one run, wait out the orphan."""
    problem = sandbox.sandbox_problem()
    assert problem is None, f"the batch grader needs its sandbox: {problem}"
    work = tmp_path_factory.mktemp("hostile")
    outside = work / "outside"  # a directory of the grader's machine that the attacks try to write into
    outside.mkdir()
    marks, paths = {}, []
    baselines = {"stub": ("stub", []), "master": ("master", []), "wrong": ("wrong", [])}
    for name, (base, cells) in {**baselines, **ATTACKS}.items():
        mark = outside / f"{name}.txt"
        marks[name] = mark
        filled = [
            c.replace("{MARK}", str(mark)).replace("{HIDDEN}", str(HIDDEN / "ch02.py")).replace("{MASTER}", str(MASTER))
            for c in cells
        ]
        path = work / f"02_{name}.ipynb"
        path.write_text(json.dumps(_notebook(base, filled)), encoding="utf-8")
        paths.append(path)
    out = work / "grades.csv"
    code = (
        "import resource, sys\n"
        "from transformer_lib.grading.__main__ import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    cmd = [sys.executable, "-c", code, "grade", *map(str, paths), "--out", str(out), "--hidden", str(HIDDEN)]
    import subprocess

    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    time.sleep(4)  # the orphan attack sleeps 3 s before it writes: give it the chance
    with out.open(newline="", encoding="utf-8") as f:
        rows = {row["learner"].removeprefix("02_"): row for row in csv.DictReader(f)}
    maxrss = int(result.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    return {"rows": rows, "marks": marks, "outside": outside, "maxrss_kb": maxrss, "elapsed": elapsed}


def _scores(row: dict) -> dict[str, int]:
    return {i: int(row[i]) for i in IDS}


def test_baselines_master_full_marks_stubs_zero(graded) -> None:
    rows = graded["rows"]
    assert rows["master"]["status"] == "graded" and rows["master"]["total"] == rows["master"]["max_total"]
    assert int(rows["master"]["total"]) > 0, rows["master"]
    assert rows["stub"]["status"] == "graded" and int(rows["stub"]["total"]) == 0, rows["stub"]
    wrong = _scores(rows["wrong"])
    assert 0 < wrong["02.sdpa"] < int(rows["master"]["02.sdpa"]), rows["wrong"]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_cheat_gets_no_more_than_the_notebook_without_it(graded, name: str) -> None:
    rows = graded["rows"]
    base = ATTACKS[name][0]
    row, baseline = rows[name], rows[base]
    for i in IDS:
        assert int(row[i]) <= int(baseline[i]), f"{name}: {i} scored {row[i]} > {baseline[i]} ({row['reason']})"
    assert int(row["total"]) <= int(row["max_total"])
    if name not in SCANNED:
        assert not row["reason"].startswith("looks malicious"), f"{name} was stopped by the scan: {row['reason']}"


def test_the_master_with_a_harmless_escape_attempt_keeps_full_marks(graded) -> None:
    """The escapes fail quietly inside the sandbox: the notebook is graded like the master."""
    rows = graded["rows"]
    for name in ("os_system_getattr", "posix_spawnp", "builtins_via_print_self", "path_open_write", "open_alias"):
        assert rows[name]["status"] == "graded" and rows[name]["total"] == rows["master"]["total"], rows[name]


def test_importing_the_solution_gives_zero_with_the_reason(graded) -> None:
    for name in ("import_solution", "import_solution_wrapped"):
        row = graded["rows"][name]
        assert int(row["02.sdpa"]) == 0, row
        assert "uses the library's solution transformer_lib.attention.scaled_dot_product_attention" in row["reason"]


def test_the_scan_names_the_import_of_the_grader_internals(graded) -> None:
    row = graded["rows"]["import_grader_internals"]
    assert row["reason"].startswith("looks malicious") and "grader's internals" in row["reason"], row


def test_memory_is_limited_and_a_huge_print_does_not_grow_the_grader(graded) -> None:
    rows = graded["rows"]
    assert int(rows["allocate_2gb"]["total"]) == 0, rows["allocate_2gb"]  # the allocation failed in the sandbox
    assert rows["print_100mb"]["total"] == rows["master"]["total"], rows["print_100mb"]
    assert graded["maxrss_kb"] < GRADER_MEMORY_MB * 1024, f"grader peak RSS {graded['maxrss_kb'] // 1024} MB"


def test_nothing_is_written_outside_the_sandbox_and_no_process_survives(graded) -> None:
    written = sorted(p.name for p in graded["outside"].iterdir())
    assert written == [], f"files written outside the sandbox: {written}"
    for stray in (ROOT / "escaped", Path(sys.prefix) / "escaped"):
        assert not stray.exists(), stray
    assert _worker_processes() == [], "a process of a submission outlived the grader"


def test_without_a_sandbox_the_grader_refuses_unless_told(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bubblewrap (bwrap) is not installed")
    nb = tmp_path / "02_x.ipynb"
    nb.write_text(STUB.read_text(encoding="utf-8"), encoding="utf-8")
    assert batch.main([str(nb)], str(tmp_path / "g.csv"), hidden=str(HIDDEN)) == 3
    assert "--unsafe-no-sandbox" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()
