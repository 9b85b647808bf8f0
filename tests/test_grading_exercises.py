"""The exercises of every chapter that has a master notebook (exercises/master/NN_*.ipynb):

* each master solution gets full marks, public and hidden tests together;
* each learner stub reports "not implemented yet" (score 0) without raising;
* each known-wrong implementation (tests/grading_wrong/chNN.py) fails its check;
* every exercise has hidden tests, a known-wrong implementation, and a check cell in its notebook.

Rows come from the files (see tests/grading_support.py): adding a chapter needs no change here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from grading_support import (
    HIDDEN,
    LEARNERS,
    MASTERS,
    chapter_of,
    checked_targets,
    namespace,
    wrong_implementations,
)

from transformer_lib.grading import check, exercises_of_chapter, load_hidden

CHAPTERS = sorted({chapter_of(p) for p in MASTERS})
EXERCISES = [(ex, path) for path in MASTERS for ex in exercises_of_chapter(chapter_of(path))]
WRONG = wrong_implementations()


@pytest.fixture(scope="module", autouse=True)
def hidden_tests():
    """The hidden tests join the registry once for this module (check(..., hidden=True) runs them)."""
    assert HIDDEN.is_dir(), f"{HIDDEN} is missing"
    load_hidden(HIDDEN)


def test_there_are_exercises_for_chapters_2_to_5() -> None:
    assert set(range(2, 6)) <= set(CHAPTERS), f"master notebooks found for chapters {CHAPTERS}"
    for chapter in CHAPTERS:
        assert 2 <= len(exercises_of_chapter(chapter)) <= 4, f"chapter {chapter} should have 2-4 exercises"


@pytest.mark.parametrize("path", MASTERS, ids=lambda p: p.stem)
def test_master_checks_each_exercise_of_its_chapter_once(path: Path) -> None:
    ids = [ex.id for ex in exercises_of_chapter(chapter_of(path))]
    targets = checked_targets(path)
    assert sorted(targets) == sorted(ids), f"{path.name} checks {sorted(targets)}, the chapter has {sorted(ids)}"
    for ex in exercises_of_chapter(chapter_of(path)):
        assert targets[ex.id] == ex.target, f"{path.name} checks {ex.id} on {targets[ex.id]}, not {ex.target}"


@pytest.mark.parametrize("exercise, path", EXERCISES, ids=[ex.id for ex, _ in EXERCISES])
def test_master_solution_gets_full_marks_public_and_hidden(exercise, path: Path) -> None:
    assert any(t.hidden for t in exercise.tests), f"{exercise.id} has no hidden test"
    obj = namespace(path)[exercise.target]
    result = check(exercise.id, obj, hidden=True, verbose=False)
    failures = [f"{o.name}: {o.status} {o.message}" for o in result.outcomes if o.status != "passed"]
    assert result.passed and result.score == result.max_score == exercise.max_score(hidden=True), failures


@pytest.mark.parametrize("exercise, path", EXERCISES, ids=[ex.id for ex, _ in EXERCISES])
def test_learner_stub_reports_not_implemented(exercise, path: Path) -> None:
    learner = path.parent.parent / path.name
    assert learner in LEARNERS, f"{learner} was never generated"
    result = check(exercise.id, namespace(learner)[exercise.target], verbose=False)
    assert result.outcomes[0].status == "not implemented" and result.score == 0, result.outcomes[0]


@pytest.mark.parametrize("exercise_id, description, obj, hidden_only", WRONG, ids=[f"{w[0]}-{w[1]}" for w in WRONG])
def test_known_wrong_implementation_is_caught(exercise_id: str, description: str, obj, hidden_only: bool) -> None:
    result = check(exercise_id, obj, hidden=hidden_only, verbose=False)
    assert not result.passed, f"{exercise_id}: the wrong implementation '{description}' passes every check"
    assert not result.not_implemented, "a wrong implementation must not raise NotImplementedError"


@pytest.mark.parametrize("exercise, path", EXERCISES, ids=[ex.id for ex, _ in EXERCISES])
def test_every_exercise_has_a_known_wrong_implementation(exercise, path: Path) -> None:
    assert any(w[0] == exercise.id for w in WRONG), (
        f"add a wrong implementation of {exercise.id} to tests/grading_wrong/"
    )
