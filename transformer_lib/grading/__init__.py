"""Graded exercises for the course: ``check("02.sdpa", my_function)`` in an exercise notebook.

* :mod:`.core` — exercises, tests, ``check()`` (a learner's self-check) and the session ``summary()``;
* :mod:`.wire`, :mod:`.worker` — the produce/judge channel: learner code produces plain data, the tests judge;
* :mod:`.sandbox` — the bubblewrap jail the batch grader runs submissions in;
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
