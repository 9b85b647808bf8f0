"""Graded exercises for the course: ``check("02.sdpa", my_function)`` in an exercise notebook.

* :mod:`.core` — exercises, tests, the sandboxed ``check()`` and the session ``summary()``;
* ``chNN`` — the exercises of chapter NN (imported on first use by ``get_exercise``);
* :mod:`.generate` — learner notebooks from the master notebooks (``python -m transformer_lib.grading generate``);
* :mod:`.batch` — the instructors' batch grader (``python -m transformer_lib.grading grade ...``).

This package is the course's exercise machinery, not a chapter of the book.
"""

from .core import (  # noqa: F401
    REGISTRY,
    CheckResult,
    Exercise,
    Mismatch,
    Test,
    TestOutcome,
    check,
    exercises_of_chapter,
    expect,
    expect_close,
    expect_equal,
    expect_shape,
    expect_type,
    get_exercise,
    load_hidden,
    register,
    summary,
)

__all__ = [
    "REGISTRY",
    "CheckResult",
    "Exercise",
    "Mismatch",
    "Test",
    "TestOutcome",
    "check",
    "exercises_of_chapter",
    "expect",
    "expect_close",
    "expect_equal",
    "expect_shape",
    "expect_type",
    "get_exercise",
    "load_hidden",
    "register",
    "summary",
]
