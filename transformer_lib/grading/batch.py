"""The instructors' batch grader: ``python -m transformer_lib.grading grade SUBMISSIONS... --out grades.csv``.

For each submitted notebook, in order:

1. read it (not a readable notebook -> zero) and find its chapter: the metadata the generator writes
   (``transformer_course.chapter``), else the file name ``NN_*.ipynb``, else its ``check("NN.…")`` calls;
2. scan its code cells without running them: a construct that has no place in an exercise (a shell command,
   ``os.system``, ``subprocess``, sockets, ``ctypes``, ``eval``/``exec``/``__import__``, ``sys.modules``, writing
   files, importing the grader's internals, monkeypatching ``torch`` or ``transformer_lib``) gives a zero, and
   the reason names the cell and the construct;
3. execute it top to bottom with nbclient in a fresh kernel, in a temporary copy directory; a cell that
   raises or runs longer than the per-cell time limit gives a zero with the reason;
4. in the same kernel, run every exercise of the chapter on the object the notebook defines (public and
   hidden tests, ``check(..., hidden=True)``), and read the scores back from a marker line.

One CSV row per submission: ``learner, notebook, chapter, <one column per exercise id>, total, max_total,
status, reason``; status is ``graded`` or ``zero``. The CSV is written atomically; a progress line per
submission goes to stderr. Cells are numbered from 1 in notebook order, markdown cells included.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..utils import write_atomic
from .core import exercises_of_chapter, load_hidden

__all__ = ["GradeRow", "scan_notebook", "chapter_of", "grade_submission", "grade", "write_csv", "main"]

MARKER = "@@transformer_lib.grading.result@@"
FIXED_COLUMNS = ("learner", "notebook", "chapter")
TAIL_COLUMNS = ("total", "max_total", "status", "reason")

# ----------------------------------------------------------------------------------------------------------
# Static scan

_FORBIDDEN_MODULES = {
    "subprocess": "runs other programs",
    "socket": "opens network connections",
    "shutil": "copies or deletes files",
    "ctypes": "calls C code directly",
    "importlib": "imports modules dynamically",
    "multiprocessing": "starts processes",
    "threading": "starts threads",
    "signal": "handles signals",
    "pty": "runs a terminal",
    "urllib": "opens network connections",
    "requests": "opens network connections",
    "http": "opens network connections",
    "ftplib": "opens network connections",
    "builtins": "changes Python's builtins",
    "pickle": "loads arbitrary objects",
    "marshal": "loads code objects",
}
_OS_CALLS = {
    "system",
    "popen",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execvp",
    "execvpe",
    "spawnv",
    "spawnl",
    "fork",
    "forkpty",
    "kill",
    "killpg",
    "remove",
    "unlink",
    "rmdir",
    "removedirs",
    "rename",
    "renames",
    "replace",
    "_exit",
    "chdir",
    "chmod",
    "chown",
    "truncate",
    "putenv",
    "unsetenv",
    "write",
    "open",
    "symlink",
    "link",
    "makedirs",
    "mkdir",
}
_BUILTIN_CALLS = {"eval", "exec", "compile", "__import__", "get_ipython", "globals", "breakpoint"}
_DUNDERS = {"__globals__", "__subclasses__", "__code__", "__builtins__", "__loader__", "__bases__", "__mro__"}
_WRITE_METHODS = {"write_text", "write_bytes", "unlink", "rmdir", "rename", "replace", "touch", "mkdir", "save"}
_ALLOWED_MAGICS = re.compile(r"^\s*%(pip|matplotlib|time|timeit)\b")
_PROTECTED_ROOTS = ("torch", "transformer_lib", "numpy", "math")


def _dotted(node: ast.AST) -> str:
    """'a.b.c' for an attribute chain on a name, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _root(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


class _Scanner(ast.NodeVisitor):
    """Collects 'what looks malicious' in one cell; ``modules`` maps local names to the modules they stand for."""

    def __init__(self, modules: dict[str, str]) -> None:
        self.modules = modules
        self.found: list[str] = []
        self.allowed: set[int] = set()  # ids of `sys.modules` nodes that are only tested with `in`

    def flag(self, text: str) -> None:
        if text not in self.found:
            self.found.append(text)

    def _check_module(self, name: str, how: str) -> None:
        top = name.split(".")[0]
        if top in _FORBIDDEN_MODULES:
            self.flag(f"{how} {name} ({_FORBIDDEN_MODULES[top]})")
        if name.startswith("transformer_lib.grading") and how == "imports":
            self.flag(f"imports the grader's internals ({name})")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(alias.name, "imports")
            local = alias.asname or alias.name.split(".")[0]
            self.modules[local] = alias.name if alias.asname else alias.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.startswith("transformer_lib.grading"):
            extra = [a.name for a in node.names if a.name not in ("check", "summary")]
            if extra or module != "transformer_lib.grading":
                self.flag(
                    f"imports the grader's internals (from {module} import {', '.join(a.name for a in node.names)})"
                )
        else:
            self._check_module(module, "imports from")
        for alias in node.names:
            if alias.name == "grading" and module == "transformer_lib":
                self.flag("imports the grader's internals (from transformer_lib import grading)")
            self.modules[alias.asname or alias.name] = f"{module}.{alias.name}"
            if module == "os" and alias.name in _OS_CALLS:
                self.flag(f"imports os.{alias.name}")
            if module == "sys" and alias.name == "modules":
                self.flag("touches sys.modules")
        self.generic_visit(node)

    def _resolved(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        base = self.modules.get(head, head)
        return f"{base}.{rest}" if rest else base

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._resolved(_dotted(node)) if _dotted(node) else ""
        if node.attr in _DUNDERS:
            self.flag(f"uses {node.attr}")
        if dotted == "sys.modules" and id(node) not in self.allowed:
            self.flag("touches sys.modules")
        if dotted.startswith("transformer_lib.grading.") or dotted.startswith("transformer_lib.grading.core"):
            self.flag(f"touches the grader's internals ({dotted})")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op, right in zip(node.ops, node.comparators):  # `"google.colab" in sys.modules` only reads a name
            if (
                isinstance(op, (ast.In, ast.NotIn))
                and _dotted(right)
                and self._resolved(_dotted(right)) == "sys.modules"
            ):
                self.allowed.add(id(right))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("__builtins__",):
            self.flag("uses __builtins__")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        dotted = self._resolved(_dotted(func)) if _dotted(func) else ""
        if isinstance(func, ast.Name) and func.id in _BUILTIN_CALLS and func.id not in self.modules:
            self.flag(f"calls {func.id}()")
        if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args:
            root = _root(node.args[0])
            module = self.modules.get(root, "").split(".")[0]
            if module in _PROTECTED_ROOTS or module in ("sys", "builtins"):
                self.flag(f"monkeypatches {self.modules[root]} (with {func.id}())")
        if dotted.startswith("os.") and dotted.split(".")[1] in _OS_CALLS:
            self.flag(f"calls {dotted}()")
        if isinstance(func, ast.Name) and func.id == "open" or dotted in ("io.open", "builtins.open"):
            mode = (
                node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            )
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
                self.flag(f"writes a file (open(..., {mode.value!r}))")
            elif mode is not None and not isinstance(mode, ast.Constant):
                self.flag("opens a file with a computed mode")
        if (
            isinstance(func, ast.Attribute)
            and func.attr in _WRITE_METHODS
            and dotted not in ("",)
            and (dotted.startswith(("pathlib.", "torch.save")) or func.attr in ("write_text", "write_bytes"))
        ):
            self.flag(f"writes or deletes files ({_dotted(func) or func.attr}())")
        self.generic_visit(node)

    def _check_target(self, target: ast.AST, verb: str) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._check_target(t, verb)
            return
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            root = _root(target)
            module = self.modules.get(root, "")
            if (
                module.split(".")[0] in _PROTECTED_ROOTS
                or root in ("sys", "builtins")
                or module.split(".")[0] in ("sys", "builtins")
            ):
                self.flag(f"monkeypatches {self._resolved(_dotted(target)) or root} ({verb})")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._check_target(t, "assigns to it")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target, "assigns to it")
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target, "assigns to it")
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._check_target(t, "deletes it")
        self.generic_visit(node)


def _python_lines(source: str) -> tuple[str, list[str]]:
    """Cell source with IPython magics/shell lines replaced by ``pass``; returns it and the forbidden magics."""
    bad: list[str] = []
    lines = []
    for line in source.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            if stripped.startswith("!") or stripped.startswith("%%") or not _ALLOWED_MAGICS.match(stripped):
                bad.append(f"runs a shell command or magic ({stripped.split()[0]})")
            lines.append(line[: len(line) - len(stripped)] + "pass")
        else:
            lines.append(line)
    return "\n".join(lines), bad


def scan_notebook(nb: dict) -> list[str]:
    """Reasons why the notebook looks malicious, each naming its cell (numbered from 1); empty when clean.

    Names bound by imports are tracked across cells, so ``import os as o`` in one cell and ``o.system(...)``
    in another is caught. A cell that does not parse is left to the execution step (it will raise there).
    """
    modules: dict[str, str] = {}
    reasons: list[str] = []
    for index, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        python, bad = _python_lines(source)
        scanner = _Scanner(modules)
        try:
            scanner.visit(ast.parse(python))
        except SyntaxError:
            pass
        for text in bad + scanner.found:
            reasons.append(f"cell {index} {text}")
    return reasons


# ----------------------------------------------------------------------------------------------------------
# Grading one submission


@dataclass
class GradeRow:
    """One CSV row: the learner (file stem), their scores per exercise id, and why they got a zero, if so."""

    learner: str
    notebook: str
    chapter: int | None = None
    scores: dict[str, int] = field(default_factory=dict)
    max_total: int = 0
    status: str = "zero"
    reason: str = ""

    @property
    def total(self) -> int:
        """Sum of the exercise scores."""
        return sum(self.scores.values())


def chapter_of(nb: dict, path: Path) -> int | None:
    """The notebook's chapter: its metadata, else its file name ``NN_*``, else its ``check("NN.…")`` calls."""
    meta = nb.get("metadata", {}).get("transformer_course", {})
    if isinstance(meta, dict) and isinstance(meta.get("chapter"), int):
        return meta["chapter"]
    match = re.match(r"(\d\d)_", path.name)
    if match:
        return int(match.group(1))
    chapters = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            chapters |= {int(m) for m in re.findall(r"""\bcheck\(\s*["'](\d\d)\.""", source)}
    return chapters.pop() if len(chapters) == 1 else None


def _read_notebook(path: Path) -> dict | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        return None
    if not all(isinstance(c, dict) and c.get("cell_type") in ("code", "markdown", "raw") for c in nb["cells"]):
        return None
    return nb


def _grading_source(chapter: int, hidden: Path, nonce: str) -> str:
    return f"""
import json as _tl_json
from transformer_lib.grading import core as _tl_core
_tl_core.load_hidden({str(hidden)!r})
_tl_results = {{}}
for _tl_ex in _tl_core.exercises_of_chapter({chapter}):
    if _tl_ex.target not in globals():
        _tl_results[_tl_ex.id] = {{"score": 0, "max_score": _tl_ex.max_score(hidden=True),
                                   "note": _tl_ex.target + " is not defined"}}
        continue
    _tl_r = _tl_core.check(_tl_ex.id, globals()[_tl_ex.target], hidden=True, verbose=False)
    _tl_bad = [o.status for o in _tl_r.outcomes if o.status != "passed"]
    _tl_note = "not implemented yet" if _tl_r.not_implemented else (
        ", ".join(sorted({{s if s != "failed" else "wrong" for s in _tl_bad}})) if _tl_bad else "")
    _tl_results[_tl_ex.id] = {{"score": _tl_r.score, "max_score": _tl_r.max_score, "note": _tl_note}}
print({MARKER + nonce!r} + _tl_json.dumps(_tl_results))
"""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _execute(nb: dict, chapter: int, hidden: Path, cell_timeout: float) -> tuple[dict | None, str]:
    """Run the notebook and the grading cell in a fresh kernel in a temporary directory; (results, reason)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = nbformat.reads(json.dumps(nb), as_version=4)  # joins the source lines, as nbclient expects
    for cell in notebook.cells:  # a submission may carry outputs: start clean
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nonce = secrets.token_hex(8)
    grading_cell = nbformat.v4.new_code_cell(_grading_source(chapter, hidden.resolve(), nonce))
    budget = sum(ex.timeout_s for ex in exercises_of_chapter(chapter)) + 60.0  # every check's own limit, and some
    with tempfile.TemporaryDirectory(prefix="tl-grade-") as workdir:
        client = NotebookClient(
            notebook,
            timeout=cell_timeout,
            kernel_name="python3",
            allow_errors=False,
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        index = 0
        try:
            with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):  # kernel's own logs
                for index, cell in enumerate(notebook.cells, start=1):
                    if cell.cell_type == "code":
                        client.execute_cell(cell, index - 1)
                index = 0
                client.timeout = int(budget)
                notebook.cells.append(grading_cell)
                client.execute_cell(grading_cell, len(notebook.cells) - 1)
        except CellTimeoutError:
            where = f"cell {index}" if index else "the grading step"
            limit = cell_timeout if index else budget
            return None, f"{where} ran longer than {limit:g} s"
        except DeadKernelError:
            return None, f"the kernel died while running {'cell ' + str(index) if index else 'the grading step'}"
        except CellExecutionError as exc:
            if not index:
                return None, _short(f"the grading step failed: {exc.ename}: {exc.evalue}")
            return None, _short(f"cell {index} raised {exc.ename}: {exc.evalue}")
        except Exception as exc:  # noqa: BLE001 — a submission must never stop the batch
            return None, _short(f"could not run the notebook: {type(exc).__name__}: {exc}")
    text = "".join(o.get("text", "") for o in grading_cell.outputs if o.get("output_type") == "stream")
    for line in text.splitlines():
        if line.startswith(MARKER + nonce):
            try:
                return json.loads(line[len(MARKER + nonce) :]), ""
            except ValueError:
                break
    return None, "the grading step printed no result"


def grade_submission(
    path: str | os.PathLike, hidden: str | os.PathLike = "exercises/hidden", cell_timeout: float = 60.0
) -> GradeRow:
    """Grade one submitted notebook (never raises for a bad submission: it gets a zero and a reason)."""
    path, hidden = Path(path), Path(hidden)
    row = GradeRow(learner=path.stem, notebook=str(path))
    nb = _read_notebook(path)
    if nb is None:
        row.reason = "not a readable notebook"
        return row
    row.chapter = chapter_of(nb, path)
    exercises = exercises_of_chapter(row.chapter) if row.chapter is not None else []
    if not exercises:
        row.reason = (
            "cannot tell which chapter's exercises this notebook holds"
            if row.chapter is None
            else (f"chapter {row.chapter} has no exercises")
        )
        return row
    load_hidden(hidden)  # so that max_score counts the hidden tests too
    row.scores = {ex.id: 0 for ex in exercises}
    row.max_total = sum(ex.max_score(hidden=True) for ex in exercises)
    suspicious = scan_notebook(nb)
    if suspicious:
        more = f" (and {len(suspicious) - 3} more)" if len(suspicious) > 3 else ""
        row.reason = "looks malicious, not run: " + "; ".join(suspicious[:3]) + more
        return row
    results, reason = _execute(nb, row.chapter, hidden, cell_timeout)
    if results is None:
        row.reason = reason
        return row
    notes = []
    for ex in exercises:
        result = results.get(ex.id, {"score": 0, "max_score": ex.max_score(hidden=True), "note": "not graded"})
        row.scores[ex.id] = int(result["score"])
        if result.get("note") or result["score"] != result["max_score"]:
            notes.append(
                f"{ex.id} {result['score']}/{result['max_score']}"
                + (f" ({result['note']})" if result.get("note") else "")
            )
    row.status, row.reason = "graded", "; ".join(notes)
    return row


def write_csv(rows: list[GradeRow], out: str | os.PathLike) -> None:
    """One row per submission; exercise columns are the union of the rows' exercise ids; written atomically."""
    out = Path(out)
    ids = sorted({i for row in rows for i in row.scores})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, *ids, *TAIL_COLUMNS])
    for row in rows:
        scores = [row.scores.get(i, "") for i in ids]
        chapter = "" if row.chapter is None else row.chapter
        writer.writerow([row.learner, row.notebook, chapter, *scores, row.total, row.max_total, row.status, row.reason])
    write_atomic(out, buffer.getvalue())


def grade(
    submissions: list[str | os.PathLike],
    out: str | os.PathLike,
    hidden: str | os.PathLike = "exercises/hidden",
    cell_timeout: float = 60.0,
) -> list[GradeRow]:
    """Grade every submission in order, print a progress line per submission to stderr, write the CSV."""
    rows = []
    for n, path in enumerate(submissions, start=1):
        start = time.monotonic()
        row = grade_submission(path, hidden, cell_timeout)
        rows.append(row)
        outcome = f"{row.total}/{row.max_total}" if row.status == "graded" else f"zero ({row.reason})"
        print(
            f"[{n}/{len(submissions)}] {Path(path).name}: {outcome} ({time.monotonic() - start:.0f} s)", file=sys.stderr
        )
    write_csv(rows, out)
    return rows


def main(submissions: list[str], out: str, hidden: str = "exercises/hidden", cell_timeout: float = 60.0) -> int:
    """Command-line entry; returns 0 even when submissions got zeros, 2 for usage errors."""
    missing = [s for s in submissions if not Path(s).is_file()]
    if missing:
        print(f"error: no such submission file(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    if not Path(hidden).is_dir():
        print(f"error: hidden-test directory {hidden} does not exist (pass --hidden DIR)", file=sys.stderr)
        return 2
    if not cell_timeout > 0:
        print(f"error: --cell-timeout must be positive, got {cell_timeout}", file=sys.stderr)
        return 2
    rows = grade(submissions, out, hidden, cell_timeout)
    graded = sum(r.status == "graded" for r in rows)
    print(f"wrote {out}: {graded} graded, {len(rows) - graded} zero", file=sys.stderr)
    return 0
