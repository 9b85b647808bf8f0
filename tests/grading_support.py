"""Helpers shared by the grading tests (not a test module): master solutions, learner stubs, wrong answers.

Data-driven on purpose: a new chapter's exercises are covered by adding
* its master notebook exercises/master/NN_<stem>.ipynb (every exercise of chapter NN must appear in it),
* its hidden tests exercises/hidden/chNN.py,
* its known-wrong implementations tests/grading_wrong/chNN.py defining
  ``WRONG = {"NN.slug": [(description, obj), ...]}`` (a third element ``"hidden"`` marks a wrong answer that
  only the hidden tests must catch).
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
MASTERS = sorted((EXERCISES / "master").glob("[0-9][0-9]_*.ipynb"))
LEARNERS = sorted(EXERCISES.glob("[0-9][0-9]_*.ipynb"))
HIDDEN = EXERCISES / "hidden"
WRONG_DIR = Path(__file__).resolve().parent / "grading_wrong"
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.[a-z0-9_]+)["']\s*,\s*([A-Za-z_]\w*)\s*\)""")


def chapter_of(path: Path) -> int:
    return int(path.name[:2])


def code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def checked_targets(path: Path) -> dict[str, str]:
    """{exercise id: name passed to check(...)} for every check call in the notebook."""
    return {m.group(1): m.group(2) for src in code_cells(path) for m in CHECK_CALL.finditer(src)}


@functools.lru_cache(maxsize=None)
def namespace(path: Path) -> dict[str, Any]:
    """Execute a notebook's definitions (no IPython magics, no check/summary cells) and return its globals."""
    ns: dict[str, Any] = {"__name__": f"notebook_{path.stem}"}
    for i, src in enumerate(code_cells(path)):
        lines = [line for line in src.splitlines() if line.strip()]
        if any(line.lstrip().startswith(("%", "!")) for line in lines):
            continue  # the Colab install cell
        if CHECK_CALL.search(src) or re.search(r"^\s*summary\(", src, flags=re.M):
            continue
        exec(compile(src, f"<{path.name} code cell {i}>", "exec"), ns)
    return ns


def wrong_implementations() -> list[tuple[str, str, Any, bool]]:
    """(exercise id, description, object, hidden_only) for every known-wrong implementation."""
    rows = []
    for path in sorted(WRONG_DIR.glob("ch[0-9][0-9].py")):
        module = importlib.import_module(f"grading_wrong.{path.stem}")
        for exercise_id, entries in module.WRONG.items():
            for entry in entries:
                description, obj, *flag = entry
                rows.append((exercise_id, description, obj, flag == ["hidden"]))
    return rows
