"""The batch grader and the notebook generator (transformer_lib.grading.batch / .generate).

* the fixture submissions of chapter 4 (tests/fixtures/grading/: perfect, partial, raises, loops forever,
  malicious-looking, not a notebook) give the right CSV — scores, statuses and reasons. They are stored as
  NAME.json, not .ipynb, so that nbval (make test collects tests/ with --nbval-lax) never runs them; the
  test copies them to NAME.ipynb in a temporary directory and grades those;
* every master notebook, graded as a submission, gets full marks (each is executed once);
* ``generate --check`` passes on the committed learner notebooks and fails on a stale copy;
* the static scan flags what it should and passes every master and learner notebook.

The tests that start kernels live in this one module, so one pytest worker runs them.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from grading_support import HIDDEN, LEARNERS, MASTERS, ROOT, namespace

from transformer_lib.grading import batch, check, exercises_of_chapter, generate, load_hidden

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
CELL_TIMEOUT = 10  # seconds per cell for the fixtures: the endless loop costs exactly this much
CH4 = [ex.id for ex in exercises_of_chapter(4)]


def cell_number(name: str, text: str) -> int:
    """1-based position (markdown included) of the first cell of a fixture whose source contains ``text``."""
    cells = json.loads((FIXTURES / f"{name}.json").read_text())["cells"]
    return next(i for i, c in enumerate(cells, start=1) if text in "".join(c["source"]))


def read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = {row["learner"]: row for row in reader}
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def fixture_grades(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[str], dict[str, dict[str, str]]]:
    """Run the command-line grader once on every fixture submission."""
    out = tmp_path_factory.mktemp("grades") / "grades.csv"
    names = ["perfect", "partial", "raises", "loops", "malicious", "broken"]
    submissions = tmp_path_factory.mktemp("submissions")
    for n in names:
        shutil.copy(FIXTURES / f"{n}.json", submissions / f"{n}.ipynb")
    cmd = [
        sys.executable,
        "-m",
        "transformer_lib.grading",
        "grade",
        *(str(submissions / f"{n}.ipynb") for n in names),
        "--out",
        str(out),
        "--hidden",
        str(HIDDEN),
        "--cell-timeout",
        str(CELL_TIMEOUT),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    header, rows = read_csv(out)
    return result, header, rows


def full_marks(exercise_id: str) -> int:
    load_hidden(HIDDEN)
    return next(ex for ex in exercises_of_chapter(int(exercise_id[:2])) if ex.id == exercise_id).max_score(hidden=True)


def test_csv_has_one_row_per_submission_and_the_documented_columns(fixture_grades) -> None:
    result, header, rows = fixture_grades
    assert header == ["learner", "notebook", "chapter", *sorted(CH4), "total", "max_total", "status", "reason"]
    assert list(rows) == ["perfect", "partial", "raises", "loops", "malicious", "broken"]
    assert result.stderr.count("[") >= 6 and "[6/6] broken.ipynb" in result.stderr, "no progress line per submission"


def test_perfect_submission_gets_full_marks(fixture_grades) -> None:
    row = fixture_grades[2]["perfect"]
    assert (row["status"], row["chapter"], row["reason"]) == ("graded", "4", "")
    for exercise_id in CH4:
        assert int(row[exercise_id]) == full_marks(exercise_id), exercise_id
    assert int(row["total"]) == int(row["max_total"]) == sum(full_marks(i) for i in CH4)


def test_partial_submission_gets_the_scores_its_code_earns(fixture_grades) -> None:
    row = fixture_grades[2]["partial"]
    assert row["status"] == "graded"
    load_hidden(HIDDEN)
    ns = namespace(FIXTURES / "partial.json")  # the same code, checked here without a kernel
    expected = {
        i: check(i, ns[t], hidden=True, verbose=False).score
        for i, t in ((ex.id, ex.target) for ex in exercises_of_chapter(4))
    }
    assert {i: int(row[i]) for i in CH4} == expected
    assert expected["04.padding_mask"] == full_marks("04.padding_mask") and expected["04.masked_softmax"] == 0
    assert 0 < expected["04.causal_mask"] < full_marks("04.causal_mask")
    assert int(row["total"]) == sum(expected.values()) and int(row["max_total"]) == sum(full_marks(i) for i in CH4)
    assert "04.masked_softmax 0/" in row["reason"] and "not implemented yet" in row["reason"]
    assert "04.causal_mask" in row["reason"] and "04.padding_mask" not in row["reason"]


def test_submission_that_raises_gets_zero_naming_the_cell_and_error(fixture_grades) -> None:
    row = fixture_grades[2]["raises"]
    assert (row["status"], row["total"]) == ("zero", "0") and all(row[i] == "0" for i in CH4)
    assert row["reason"].startswith(f"cell {cell_number('raises', 'mask_size')} raised NameError")


def test_submission_that_loops_forever_gets_zero_after_the_cell_timeout(fixture_grades) -> None:
    row = fixture_grades[2]["loops"]
    assert (row["status"], row["total"]) == ("zero", "0")
    assert row["reason"] == f"cell {cell_number('loops', 'while steps')} ran longer than {CELL_TIMEOUT} s"


def test_malicious_looking_submission_is_not_run(fixture_grades, tmp_path) -> None:
    row = fixture_grades[2]["malicious"]
    assert (row["status"], row["total"]) == ("zero", "0")
    cell = cell_number("malicious", "os.system")
    assert row["reason"].startswith("looks malicious, not run:")
    assert (
        f"cell {cell} calls os.system()" in row["reason"] and f"cell {cell} monkeypatches torch.equal" in row["reason"]
    )
    assert not (ROOT / "ran.txt").exists() and not list(FIXTURES.parent.rglob("ran.txt"))


def test_unreadable_notebook_gets_zero(fixture_grades) -> None:
    row = fixture_grades[2]["broken"]
    assert (row["status"], row["total"], row["chapter"], row["reason"]) == ("zero", "0", "", "not a readable notebook")


def test_every_master_notebook_gets_full_marks(tmp_path) -> None:
    assert MASTERS, "no master notebooks"
    rows = batch.grade(MASTERS, tmp_path / "masters.csv", hidden=HIDDEN, cell_timeout=120)
    for path, row in zip(MASTERS, rows):
        assert row.status == "graded", f"{path.name}: {row.reason}"
        assert row.total == row.max_total > 0 and row.reason == "", f"{path.name}: {row.scores} {row.reason}"
    _, written = read_csv(tmp_path / "masters.csv")
    assert sorted(written) == sorted(p.stem for p in MASTERS)


def test_usage_errors_exit_with_2(tmp_path, capsys) -> None:
    assert batch.main([str(tmp_path / "missing.ipynb")], str(tmp_path / "g.csv"), hidden=str(HIDDEN)) == 2
    assert "no such submission" in capsys.readouterr().err
    perfect = str(FIXTURES / "perfect.json")
    assert batch.main([perfect], str(tmp_path / "g.csv"), hidden=str(tmp_path / "nope")) == 2
    assert "hidden-test directory" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.parametrize(
    "source, construct",
    [
        ("import subprocess", "imports subprocess"),
        ("import os as o\no.system('ls')", "calls os.system()"),
        ("from os import remove", "imports os.remove"),
        ("x = eval('1')", "calls eval()"),
        ("__import__('os')", "calls __import__()"),
        ("import ctypes", "imports ctypes"),
        ("import sys\nsys.modules['torch'] = None", "sys.modules"),
        ("open('out.txt', 'w').write('x')", "writes a file"),
        (
            "import torch.nn.functional as F\nF.softmax = lambda *a, **k: None",
            "monkeypatches torch.nn.functional.softmax",
        ),
        ("import transformer_lib\nsetattr(transformer_lib, 'x', 1)", "monkeypatches transformer_lib"),
        ("from transformer_lib.grading.core import REGISTRY", "grader's internals"),
        ("!ls", "shell command"),
        ("().__class__.__bases__[0].__subclasses__()", "__subclasses__"),
    ],
)
def test_static_scan_flags_the_construct_and_names_the_cell(source: str, construct: str) -> None:
    nb = {"cells": [{"cell_type": "markdown", "source": "# hi"}, {"cell_type": "code", "source": source}]}
    reasons = batch.scan_notebook(nb)
    assert reasons and all(r.startswith("cell 2 ") for r in reasons) and any(construct in r for r in reasons), reasons


@pytest.mark.parametrize(
    "path", MASTERS + LEARNERS + [FIXTURES / "perfect.json"], ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_static_scan_passes_the_course_notebooks(path: Path) -> None:
    assert batch.scan_notebook(json.loads(path.read_text())) == []


def test_generate_check_passes_on_the_committed_notebooks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transformer_lib.grading", "generate", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_generate_check_fails_on_a_stale_copy_and_generate_fixes_it(tmp_path, capsys) -> None:
    masters, out = tmp_path / "master", tmp_path / "learner"
    shutil.copytree(ROOT / "exercises" / "master", masters)
    assert generate.main(str(masters), str(out), check=True) == 1  # nothing generated yet: all missing
    assert generate.main(str(masters), str(out)) == 0 and generate.main(str(masters), str(out), check=True) == 0
    stale = out / MASTERS[0].name
    nb = json.loads(stale.read_text())
    nb["cells"][0]["source"] = ["# an edited title\n"]
    stale.write_text(json.dumps(nb))
    assert generate.main(str(masters), str(out), check=True) == 1
    assert str(stale) in capsys.readouterr().err
    assert generate.main(str(masters), str(out)) == 0 and generate.main(str(masters), str(out), check=True) == 0


def test_generate_replaces_solutions_and_rejects_bad_markers() -> None:
    def nb(*sources: str) -> dict:
        return {
            "cells": [
                {"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [], "execution_count": 3, "source": s}
                for i, s in enumerate(sources)
            ],
            "metadata": {},
            "nbformat": 4,
            "nbformat_minor": 5,
        }

    master = nb(
        "def f(x):\n    '''Doc.'''\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n", 'check("09.f", f)'
    )
    learner = generate.learner_notebook(master)
    assert "".join(learner["cells"][0]["source"]) == (
        "def f(x):\n    '''Doc.'''\n    raise NotImplementedError(\"exercise 09.f: write your code here\")\n"
    )
    assert learner["cells"][0]["execution_count"] is None and learner["cells"][0]["id"] == "c0"
    with pytest.raises(generate.GenerateError, match=r"cell 0 \(id c0\).*never closed"):
        generate.learner_notebook(nb("# BEGIN SOLUTION\nx = 1\n", 'check("09.f", f)'))
    with pytest.raises(generate.GenerateError, match=r"cell 0 \(id c0\), line 1: '# END SOLUTION' without"):
        generate.learner_notebook(nb("# END SOLUTION\n", 'check("09.f", f)'))
    with pytest.raises(generate.GenerateError, match="no check"):
        generate.learner_notebook(nb("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n"))
    with pytest.raises(generate.GenerateError, match="no '# BEGIN SOLUTION'"):
        generate.learner_notebook(nb("x = 1\n"))
