"""The instructors' batch grader: ``python -m transformer_lib.grading grade SUBMISSIONS... --out grades.csv``.

For each submitted notebook, in order:

1. read it (not a readable notebook -> zero) and find its chapter: the metadata the generator writes
   (``transformer_course.chapter``), else the file name ``NN_*.ipynb``, else its ``check("NN.…")`` calls;
2. scan its code cells without running them: a construct that has no place in an exercise (a shell command,
   ``os.system``, ``subprocess``, sockets, ``ctypes``, ``eval``/``exec``/``__import__``, ``sys.modules``, writing
   files, importing the grader's internals, monkeypatching ``torch`` or ``transformer_lib``) gives a zero, and
   the reason names the cell and the construct;
3. execute its code cells top to bottom in a worker process inside the bubblewrap sandbox (:mod:`.sandbox`;
   one sandbox per group of exercises that withhold the same library solutions); a cell that raises or runs
   longer than the per-cell time limit gives a zero with the reason;
4. here, in the grader's process, run every exercise of the chapter (public and hidden tests) on proxies of
   what the notebook defined: the learner's code only produces plain data over a pipe (:mod:`.wire`), the
   comparisons and the scores are computed here and capped at each exercise's maximum. A test whose message
   shows that the learner's code used a withheld library solution gives that exercise a zero.

The static scan is an early, friendly message, not the boundary: the sandbox is. Where bubblewrap cannot
run, :func:`main` refuses to grade unless ``--unsafe-no-sandbox`` is given.

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
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils import write_atomic
from . import core, sandbox
from .core import exercises_of_chapter, load_hidden
from .wire import PeerGone, PeerTimeout, ProtocolError

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


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code_cells(nb: dict) -> list[tuple[int, str]]:
    """(cell number from 1, markdown included; source) of every code cell."""
    cells = []
    for index, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append((index, "".join(source) if isinstance(source, list) else str(source)))
    return cells


class _Libraries:
    """The sandbox's library copies, one per set of withheld solutions, built once per grading run."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tl-grade-lib-"))
        os.chmod(self.root, 0o755)
        self.built: dict[frozenset[str], Path] = {}

    def get(self, withheld: frozenset[str]) -> Path:
        if withheld not in self.built:
            where = self.root / f"lib{len(self.built)}"
            where.mkdir()
            self.built[withheld] = sandbox.build_library(where, withheld)
        return self.built[withheld]

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def _start(lib: Path, cells: list[tuple[int, str]], cell_timeout: float, sandboxed: bool) -> tuple[Any, str]:
    """A producer that has run every code cell; (producer, '') or (None, why the notebook gets a zero)."""
    producer = sandbox.SandboxProducer(lib, sandboxed=sandboxed)
    for index, source in cells:
        try:
            failed = producer.execute(index, source, cell_timeout)
        except PeerTimeout:
            producer.close()
            return None, f"cell {index} ran longer than {cell_timeout:g} s"
        except (PeerGone, ProtocolError):
            code = producer.exit_code()
            producer.close()
            how = f" (killed by signal {-code})" if code is not None and code < 0 else ""
            return None, f"the kernel died while running cell {index}{how}"
        if failed is not None:
            producer.close()
            return None, _short(f"cell {index} raised {failed[0]}: {failed[1].removeprefix(f'raised {failed[0]}: ')}")
    return producer, ""


def _grade_exercise(producer: Any, ex: Any) -> dict:
    """Run one exercise's tests here, in the grader, on the producer's object; the score is computed here."""
    tests = ex.tests_to_run(hidden=True)
    received, stopped = core.run_with_producer(tests, producer, ex.target, ex.timeout_s)
    maximum = ex.max_score(hidden=True)
    if not received and stopped.endswith("is not defined"):
        return {"score": 0, "max_score": maximum, "note": stopped}
    result = core.CheckResult(ex.id, ex.title, core.outcomes_of(tests, received, stopped, ex.timeout_s))
    withheld = [o.message for o in result.outcomes if sandbox.WITHHELD_MARK in o.message]
    if withheld:
        match = re.search(r"(transformer_lib\.[\w.]+) " + sandbox.WITHHELD_MARK, withheld[0])
        name = match.group(1) if match else "the library's solution"
        return {"score": 0, "max_score": maximum, "note": f"uses the library's solution {name}: zero"}
    bad = [o.status for o in result.outcomes if o.status != "passed"]
    note = (
        "not implemented yet"
        if result.not_implemented
        else (", ".join(sorted({s if s != "failed" else "wrong" for s in bad})) if bad else "")
    )
    return {"score": max(0, min(result.score, maximum)), "max_score": maximum, "note": note}


def _execute(
    nb: dict, chapter: int, hidden: Path, cell_timeout: float, libraries: _Libraries, sandboxed: bool = True
) -> tuple[dict | None, str]:
    """Run the notebook's code in producers (one per group of exercises) and judge every exercise here."""
    load_hidden(hidden)
    cells = _code_cells(nb)
    results: dict[str, dict] = {}
    for withheld, group in sandbox.groups(exercises_of_chapter(chapter)):
        lib = libraries.get(withheld)
        producer, reason = _start(lib, cells, cell_timeout, sandboxed)
        if producer is None:
            return None, reason
        try:
            for ex in group:
                if producer.endpoint.dead:  # the previous exercise crashed or hung its producer: start afresh
                    producer.close()
                    producer, reason = _start(lib, cells, cell_timeout, sandboxed)
                    if producer is None:
                        return None, reason
                results[ex.id] = _grade_exercise(producer, ex)
                if not producer.endpoint.dead:
                    try:
                        producer.endpoint.deadline = time.monotonic() + 10
                        producer.release()
                    except (PeerTimeout, PeerGone, ProtocolError):
                        producer.endpoint.dead = True
                    finally:
                        producer.endpoint.deadline = None
        finally:
            producer.close()
    return results, ""


def grade_submission(
    path: str | os.PathLike,
    hidden: str | os.PathLike = "exercises/hidden",
    cell_timeout: float = 60.0,
    sandboxed: bool = True,
    libraries: _Libraries | None = None,
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
    own = libraries is None
    libraries = libraries or _Libraries()
    try:
        results, reason = _execute(nb, row.chapter, hidden, cell_timeout, libraries, sandboxed)
    finally:
        if own:
            libraries.close()
    if results is None:
        row.reason = reason
        return row
    notes = []
    for ex in exercises:
        result = results.get(ex.id, {"score": 0, "max_score": ex.max_score(hidden=True), "note": "not graded"})
        row.scores[ex.id] = max(0, min(int(result["score"]), ex.max_score(hidden=True)))
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
    sandboxed: bool = True,
) -> list[GradeRow]:
    """Grade every submission in order, print a progress line per submission to stderr, write the CSV.

    ``sandboxed=False`` runs the submissions' code without bubblewrap (see ``--unsafe-no-sandbox``)."""
    rows = []
    libraries = _Libraries()
    try:
        for n, path in enumerate(submissions, start=1):
            start = time.monotonic()
            row = grade_submission(path, hidden, cell_timeout, sandboxed, libraries)
            rows.append(row)
            outcome = f"{row.total}/{row.max_total}" if row.status == "graded" else f"zero ({row.reason})"
            elapsed = time.monotonic() - start
            print(f"[{n}/{len(submissions)}] {Path(path).name}: {outcome} ({elapsed:.0f} s)", file=sys.stderr)
    finally:
        libraries.close()
    write_csv(rows, out)
    return rows


def main(
    submissions: list[str],
    out: str,
    hidden: str = "exercises/hidden",
    cell_timeout: float = 60.0,
    unsafe_no_sandbox: bool = False,
) -> int:
    """Command-line entry; returns 0 even when submissions got zeros, 2 for usage errors, 3 without a sandbox."""
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
    if unsafe_no_sandbox:
        print(
            "warning: --unsafe-no-sandbox: the submissions' code runs with your rights, outside any sandbox",
            file=sys.stderr,
        )
    else:
        problem = sandbox.sandbox_problem()
        if problem is not None:
            print(
                f"error: cannot sandbox the submissions: {problem}.\n"
                "Refusing to run learners' code without a sandbox; pass --unsafe-no-sandbox to do it anyway "
                "(only for submissions you trust).",
                file=sys.stderr,
            )
            return 3
    rows = grade(submissions, out, hidden, cell_timeout, sandboxed=not unsafe_no_sandbox)
    graded = sum(r.status == "graded" for r in rows)
    print(f"wrote {out}: {graded} graded, {len(rows) - graded} zero", file=sys.stderr)
    return 0
