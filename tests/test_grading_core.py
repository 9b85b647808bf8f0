"""The checker itself (transformer_lib.grading.core): statuses, isolation, messages, registry, summary.

The exercises here are throwaway ones with ids "99.*", registered per test and removed afterwards.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from transformer_lib.grading import core
from transformer_lib.grading.core import (
    Exercise,
    Mismatch,
    check,
    expect,
    expect_close,
    expect_equal,
    expect_shape,
    expect_type,
    get_exercise,
    register,
    summary,
)

SECRET = 0.123456789  # the "answer" of the demo exercise: no message may print it

ISOLATIONS = ["fork", "thread"] if sys.platform.startswith("linux") else ["thread"]


@pytest.fixture
def demo(monkeypatch):
    """A registered exercise 99.demo: f() must return SECRET; three public tests and one hidden."""
    core._reset_session()
    ex = register(Exercise("99.demo", "Demo exercise", "f", timeout_s=2.0))

    @ex.test("returns a tensor")
    def _(f):
        expect_type(f(), torch.Tensor, "f()")

    @ex.test("right value", points=2)
    def _(f):
        expect_close(f(), torch.tensor([SECRET]), "f()")

    @ex.test("called twice gives the same", hidden=True)
    def _(f):
        expect_close(f(), f(), "f() twice")

    yield ex
    core.REGISTRY.pop("99.demo", None)
    core._reset_session()


@pytest.fixture(params=ISOLATIONS)
def isolation(request, monkeypatch):
    monkeypatch.setenv(core.ISOLATION_ENV, request.param)
    return request.param


def statuses(result):
    return [o.status for o in result.outcomes]


def test_correct_answer_passes_public_and_hidden(demo, isolation, capsys):
    result = check("99.demo", lambda: torch.tensor([SECRET]))
    assert (result.passed, result.score, result.max_score) == (True, 3, 3)
    out = capsys.readouterr().out
    assert "99.demo — Demo exercise" in out and "✅ right value" in out and "score 3/3" in out
    assert "called twice" not in out, "a hidden test was shown to the learner"
    hidden = check("99.demo", lambda: torch.tensor([SECRET]), hidden=True, verbose=False)
    assert (hidden.score, hidden.max_score, hidden.passed) == (4, 4, True)
    assert [o.hidden for o in hidden.outcomes] == [False, False, True]
    assert capsys.readouterr().out == "", "verbose=False printed something"


def test_wrong_answer_says_what_differs_without_the_answer(demo, isolation, capsys):
    result = check("99.demo", lambda: torch.tensor([0.5]))
    assert statuses(result) == ["passed", "failed"] and result.score == 1 and not result.passed
    message = result.outcomes[1].message
    assert "max |difference|" in message and "index (0,)" in message
    out = capsys.readouterr().out
    assert "❌ right value" in out and "score 1/3" in out
    for leak in (f"{SECRET:.3g}", f"{SECRET:.4f}", str(SECRET)[:6]):
        assert leak not in out, f"the report leaks the answer ({leak})"


def test_stub_reports_not_implemented_and_does_not_raise(demo, isolation, capsys):
    def f():
        raise NotImplementedError("exercise 99.demo: write your code here")

    result = check("99.demo", f)
    assert statuses(result) == ["not implemented", "not run"]
    assert (result.score, result.max_score, result.passed) == (0, 3, False)
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "score 0/3" in out
    assert "NotImplementedError" not in out.replace("raise NotImplementedError(...)", "")


def test_endless_loop_times_out_and_later_tests_are_not_run(demo, isolation):
    stop = threading.Event()  # a hung *thread* keeps running (the documented limitation): end it afterwards

    def f():
        while not stop.is_set():
            time.sleep(0.01)

    start = time.monotonic()
    try:
        result = check("99.demo", f, timeout_s=0.5)
    finally:
        stop.set()
    assert time.monotonic() - start < 5, "check did not stop at its time limit"
    assert statuses(result) == ["timeout", "not run"]
    assert "timed out after 0.5 s" in result.outcomes[0].message and result.score == 0


def test_exception_is_reported_with_its_type_and_the_learners_line(demo, isolation):
    def f():
        return torch.zeros(2, 3) @ torch.zeros(2, 3)

    result = check("99.demo", f, verbose=False)
    assert statuses(result) == ["error", "error"]
    message = result.outcomes[0].message
    assert message.startswith("raised RuntimeError:") and "torch.zeros(2, 3) @ torch.zeros(2, 3)" in message


def test_sys_exit_is_reported_not_obeyed(demo, isolation):
    result = check("99.demo", lambda: sys.exit(3), verbose=False)
    assert statuses(result) == ["error", "error"] and "sys.exit(3)" in result.outcomes[0].message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs fork")
def test_killed_process_is_reported(demo, monkeypatch):
    monkeypatch.setenv(core.ISOLATION_ENV, "fork")
    result = check("99.demo", lambda: os._exit(7), verbose=False)
    assert statuses(result) == ["error", "not run"] and "exit code 7" in result.outcomes[0].message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs fork")
def test_learner_prints_are_captured_in_the_child(demo, monkeypatch, capfd):
    monkeypatch.setenv(core.ISOLATION_ENV, "fork")

    def f():
        print("LEARNER-PRINT")
        os.write(1, b"LEARNER-FD-WRITE\n")
        return torch.tensor([SECRET])

    assert check("99.demo", f, verbose=False).passed
    captured = capfd.readouterr()
    assert "LEARNER" not in captured.out + captured.err


def test_summary_lists_checked_and_unchecked_exercises(demo, capsys):
    other = register(Exercise("99.other", "Another one", "g"))
    other.test("anything", points=4)(lambda g: expect(g() == 1, "g() is off"))
    try:
        check("99.demo", lambda: torch.tensor([0.5]), verbose=False)
        table = summary(99)
        assert table["exercises"]["99.demo"] == {"title": "Demo exercise", "score": 1, "max_score": 3, "checked": True}
        assert table["exercises"]["99.other"]["checked"] is False and table["exercises"]["99.other"]["max_score"] == 4
        assert (table["score"], table["max_score"]) == (1, 7)
        out = capsys.readouterr().out
        assert "not checked yet" in out and "1/3" in out and "1/7" in out
    finally:
        core.REGISTRY.pop("99.other", None)


def test_result_to_dict_and_repr(demo):
    result = check("99.demo", lambda: torch.tensor([SECRET]), verbose=False)
    data = result.to_dict()
    assert data["exercise_id"] == "99.demo" and data["score"] == 3 and data["max_score"] == 3
    assert [o["status"] for o in data["outcomes"]] == ["passed", "passed"]
    assert "99.demo" in repr(result) and "3/3" in repr(result)


def test_duplicate_registration_and_duplicate_test_names_are_errors(demo):
    with pytest.raises(ValueError, match="already registered"):
        register(Exercise("99.demo", "Again", "f"))
    with pytest.raises(ValueError, match="already has a public test named 'right value'"):
        demo.test("right value")(lambda f: None)
    with pytest.raises(ValueError, match="NN.slug"):
        register(Exercise("demo", "Bad id", "f"))


def test_unknown_id_names_the_known_ones(demo):
    with pytest.raises(KeyError, match=r"unknown exercise id '99\.nope'.*99\.demo"):
        get_exercise("99.nope")
    with pytest.raises(KeyError, match="02.sdpa"):  # the chapter modules are imported to list their ids
        check("42.nothing", lambda: None)


def test_load_hidden_adds_tests_once(demo, tmp_path):
    (tmp_path / "ch99.py").write_text(
        "from transformer_lib.grading import get_exercise, expect\n"
        "@get_exercise('99.demo').test('extra hidden', hidden=True)\n"
        "def _(f):\n    expect(f().numel() == 1, 'wrong size')\n"
    )
    before = len(demo.tests)
    assert core.load_hidden(tmp_path) == 1
    assert core.load_hidden(tmp_path) == 1  # a second call imports nothing twice
    assert len(demo.tests) == before + 1 and demo.tests[-1].hidden
    with pytest.raises(FileNotFoundError, match="does not exist"):
        core.load_hidden(tmp_path / "missing")


def test_expect_helpers_raise_mismatch_with_what_differs():
    with pytest.raises(Mismatch, match=r"output has shape \(2, 3\), expected \(3, 2\)"):
        expect_shape(torch.zeros(2, 3), (3, 2), "output")
    with pytest.raises(Mismatch, match="should be a Tensor, got list"):
        expect_type([1], torch.Tensor, "output")
    with pytest.raises(Mismatch, match=r"contains NaN \(first at index \(1,\)\)"):
        expect_close(torch.tensor([0.0, float("nan")]), torch.zeros(2), "output")
    with pytest.raises(Mismatch, match=r"1 of 4 entries differ \(first at index \(1, 0\)\)"):
        expect_equal(torch.tensor([[True, True], [False, True]]), torch.ones(2, 2, dtype=torch.bool), "mask")
    with pytest.raises(Mismatch, match="expected a boolean tensor"):
        expect_equal(torch.ones(2), torch.ones(2, dtype=torch.bool), "mask")
    expect_close(torch.tensor([float("-inf"), 1.0]), torch.tensor([float("-inf"), 1.0 + 1e-7]), "scores")
    expect_equal(3, 3, "count")


# ---------------------------------------------------------------------------------------------------------
# The package's own import rules (it is not a chapter module, so test_course_structure.py does not cover it).

GRADING = Path(core.__file__).resolve().parent


def imported_top_modules(path: Path) -> set[str]:
    """Absolute top-level modules and relative module names imported by a source file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {
                alias.name if alias.name.startswith("transformer_lib.") else alias.name.split(".")[0]
                for alias in node.names
            }
        elif isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
    return found


def test_core_imports_only_stdlib_torch_and_utils() -> None:
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__", "..utils", ".wire", ".worker"}
    extra = imported_top_modules(GRADING / "core.py") - allowed
    assert not extra, f"grading/core.py imports {sorted(extra)}"


@pytest.mark.parametrize("name", ["wire.py", "worker.py"])
def test_the_producer_side_imports_only_stdlib_and_torch(name: str) -> None:
    """wire and worker also run inside the sandbox, where the rest of the grader is not."""
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__", ".wire"}
    extra = imported_top_modules(GRADING / name) - allowed
    assert not extra, f"grading/{name} imports {sorted(extra)}"


@pytest.mark.parametrize("path", sorted(GRADING.glob("ch[0-9][0-9].py")), ids=lambda p: p.stem)
def test_chapter_exercises_import_only_library_modules_of_earlier_chapters(path: Path) -> None:
    from test_course_structure import MODULE_CHAPTER

    n = int(path.stem[2:])
    for name in imported_top_modules(path):
        if name.startswith(".."):
            module = name[2:].split(".")[0]
            assert MODULE_CHAPTER.get(module, 99) <= n, f"{path.name} imports transformer_lib.{module}"
        elif name.startswith("."):  # the checker, or the exercise helpers of an earlier (or the same) chapter
            assert name == ".core" or (re.fullmatch(r"\.ch\d\d", name) and int(name[3:]) <= n), (
                f"{path.name} imports {name}"
            )
        elif name.startswith("transformer_lib."):
            module = name.split(".")[1]
            assert MODULE_CHAPTER.get(module, 99) <= n, f"{path.name} imports {name}"
        else:
            assert name in sys.stdlib_module_names or name.split(".")[0] in ("torch", "__future__", "numpy"), (
                f"{path.name} imports {name}"
            )


def test_public_grading_api_has_docstrings() -> None:
    import transformer_lib.grading as grading

    for name in grading.__all__:
        obj = getattr(grading, name)
        if callable(obj) and not isinstance(obj, dict):
            assert inspect.getdoc(obj), f"transformer_lib.grading.{name} has no docstring"
