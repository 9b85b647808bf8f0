"""Learner notebooks from master notebooks: the solutions become ``raise NotImplementedError(...)``.

A master notebook ``exercises/master/NN_<stem>.ipynb`` holds full solutions between lines
``# BEGIN SOLUTION`` and ``# END SOLUTION``; the learner notebook ``exercises/NN_<stem>.ipynb`` gets, in their
place, one line ``raise NotImplementedError("exercise NN.slug: write your code here")`` at the marker's
indentation. The exercise id is taken from the first ``check("NN.slug", ...)`` call in the code cells that
follow. Outputs are dropped, cell ids kept, and the notebook metadata gains
``transformer_course: {"chapter": NN}`` (the batch grader reads it).

``python -m transformer_lib.grading generate`` writes the learner notebooks; ``--check`` writes nothing and
exits 1, naming the stale files, when a committed learner notebook differs from what would be generated.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

from ..utils import write_atomic

__all__ = ["GenerateError", "BEGIN", "END", "learner_notebook", "render", "generate", "main"]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
MASTER_PATTERN = "[0-9][0-9]_*.ipynb"
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.[a-z0-9_]+)["']""")


class GenerateError(ValueError):
    """A master notebook the generator cannot turn into a learner notebook (the message names the cell)."""


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _stub_line(indent: str, exercise_id: str) -> str:
    return f'{indent}raise NotImplementedError("exercise {exercise_id}: write your code here")'


def _strip_solution(source: str, exercise_id: str, where: str) -> str:
    out: list[str] = []
    inside = False
    for n, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise GenerateError(f"{where}, line {n}: '{BEGIN}' inside another solution block (missing '{END}')")
            inside = True
            out.append(_stub_line(line[: len(line) - len(line.lstrip())], exercise_id))
        elif marker == END:
            if not inside:
                raise GenerateError(f"{where}, line {n}: '{END}' without a matching '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise GenerateError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return "\n".join(out)


def _chapter_of(path: Path) -> int:
    match = re.match(r"(\d\d)_", path.name)
    if not match:
        raise GenerateError(f"{path}: a master notebook is named NN_<stem>.ipynb (NN = chapter number)")
    return int(match.group(1))


def learner_notebook(master: dict, name: str = "master") -> dict:
    """The learner version of a master notebook (a new dict; ``master`` is not changed)."""
    nb = copy.deepcopy(master)
    cells = nb.get("cells", [])
    code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    found_marker = False
    for pos, i in enumerate(code):
        cell = cells[i]
        source = _source(cell)
        where = f"{name}: cell {i} (id {cell.get('id', '?')})"
        if any(line.strip() in (BEGIN, END) for line in source.split("\n")):
            found_marker = True
            exercise_id = None
            for j in code[pos + 1 :]:  # the id of the first check(...) that follows
                match = _CHECK_CALL.search(_source(cells[j]))
                if match:
                    exercise_id = match.group(1)
                    break
            if exercise_id is None:
                raise GenerateError(f'{where} has solution markers but no check("NN.slug", ...) cell follows it')
            cell["source"] = _strip_solution(source, exercise_id, where)
        else:
            cell["source"] = source
        cell["outputs"] = []
        cell["execution_count"] = None
    for cell in cells:
        if cell.get("cell_type") != "code":
            cell["source"] = _source(cell)
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
    if not found_marker:
        raise GenerateError(f"{name} has no '{BEGIN}' / '{END}' markers: nothing to turn into an exercise")
    for cell in cells:  # stored as a list of lines, as nbformat writes it
        cell["source"] = cell["source"].splitlines(keepends=True)
    return nb


def render(nb: dict) -> str:
    """The notebook as text, in the layout nbformat writes (so diffs stay small)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _expected(master_path: Path) -> str:
    try:
        master = json.loads(master_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenerateError(f"{master_path}: not a readable notebook ({exc})") from None
    nb = learner_notebook(master, name=str(master_path))
    nb.setdefault("metadata", {})["transformer_course"] = {"chapter": _chapter_of(master_path)}
    return render(nb)


def generate(
    masters: str | os.PathLike = "exercises/master", out: str | os.PathLike = "exercises", check: bool = False
) -> list[Path]:
    """Write (or, with ``check``, compare) the learner notebook of every master; returns the stale/written paths.

    With ``check`` nothing is written and the returned list holds the learner notebooks that are missing,
    out of date, or have no master any more.
    """
    masters, out = Path(masters), Path(out)
    if not masters.is_dir():
        raise GenerateError(f"master directory {masters} does not exist")
    master_paths = sorted(masters.glob(MASTER_PATTERN))
    if not master_paths:
        raise GenerateError(f"no master notebooks ({MASTER_PATTERN}) in {masters}")
    changed: list[Path] = []
    for master_path in master_paths:
        target = out / master_path.name
        text = _expected(master_path)
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current == text:
            continue
        changed.append(target)
        if not check:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(target, text)
    if check:
        names = {p.name for p in master_paths}
        changed += [p for p in sorted(out.glob(MASTER_PATTERN)) if p.name not in names]  # orphans
    return changed


def main(masters: str = "exercises/master", out: str = "exercises", check: bool = False) -> int:
    """Command-line entry (see ``python -m transformer_lib.grading generate --help``); returns the exit code."""
    try:
        changed = generate(masters, out, check=check)
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if check:
        if changed:
            print("learner notebooks out of date (run `python -m transformer_lib.grading generate`):", file=sys.stderr)
            for p in changed:
                print(f"  {p}", file=sys.stderr)
            return 1
        print(f"learner notebooks in {out} are up to date")
        return 0
    for p in changed:
        print(f"wrote {p}")
    if not changed:
        print(f"learner notebooks in {out} were already up to date")
    return 0
