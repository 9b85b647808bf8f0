"""Readability targets of the library, measured by tools/code_stats.py (the same figures the script prints)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import code_stats  # noqa: E402

from transformer_lib.train import TrainConfig  # noqa: E402


def test_code_lines_skip_blanks_comments_and_docstrings() -> None:
    source = '''def f(x):
    """A docstring
    over two lines."""

    # a comment
    y = (x +
         1)  # a trailing comment
    return y
'''
    assert sorted(code_stats.code_line_numbers(source)) == [1, 6, 7, 8]


def test_no_library_function_is_longer_than_the_budget() -> None:
    over = code_stats.stats()["functions_over_budget"]
    assert not over, f"functions over {code_stats.MAX_FUNCTION_LINES} code lines: {over}"


@pytest.mark.parametrize("module, name, budget", code_stats.CLASS_BUDGETS)
def test_displayed_classes_fit_their_budget(module: str, name: str, budget: int) -> None:
    assert code_stats.class_size(module, name) <= budget


def test_train_config_is_shown_without_its_validation() -> None:
    shown = inspect.getsource(TrainConfig)
    assert "raise " not in shown and "check_positive" not in shown, "the checks belong in a helper below the class"
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        TrainConfig(max_steps=0)  # ... and they still run


def test_names_by_chapter_lists_every_module() -> None:
    from test_course_structure import MODULE_CHAPTER

    chapters = code_stats.names_by_chapter()
    listed = {module for modules in chapters.values() for module in modules}
    assert listed == set(MODULE_CHAPTER)
    assert "train_step" in chapters[8]["train"] and "DistributedTrainer" in chapters[11]["distributed"]
