"""How readable is the library? Code lines per function and per displayed class, and what each chapter defines.

    python tools/code_stats.py            # the table of targets (exit 1 when one is missed)
    python tools/code_stats.py --names    # per chapter: the modules it introduces and the names they define
    python tools/code_stats.py --json F   # also write the figures to F

A *code line* is a line that holds code: blank lines, comment lines and docstrings do not count
(a statement spread over three lines counts three). The targets are those of the course's
readability issue: no function of ``transformer_lib`` over 60 code lines, and the classes the
chapters display within a budget.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "transformer_lib"
MAX_FUNCTION_LINES = 60
# Displayed classes and their budgets in code lines (module, class name, budget).
CLASS_BUDGETS = [
    ("multihead", "MultiHeadAttention", 40),
    ("encoder", "EncoderLayer", 30),
    ("decoder", "DecoderLayer", 35),
    ("lm", "LanguageModel", 30),
    ("modern", "GroupedQueryAttention", 40),
]
# Chapter number -> the modules it introduces (the same map as tests/test_course_structure.py).
sys.path.insert(0, str(ROOT / "tests"))


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers taken by docstrings (module, class and function)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def code_line_numbers(source: str) -> set[int]:
    """The line numbers of ``source`` that hold code (no blank, comment-only or docstring lines)."""
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            continue
        if tok.type == tokenize.ENDMARKER:
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines - _docstring_lines(ast.parse(source))


def _count(code: set[int], node: ast.AST) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return len([n for n in code if first <= n <= node.end_lineno])


def _visit(node: ast.AST, module: str, prefix: str, code: set[int], sizes: list[tuple[str, int]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sizes.append((f"{module}.{prefix}{child.name}", _count(code, child)))
            _visit(child, module, f"{prefix}{child.name}.", code, sizes)
        elif isinstance(child, ast.ClassDef):
            _visit(child, module, f"{prefix}{child.name}.", code, sizes)


def function_sizes(package: Path = PACKAGE) -> list[tuple[str, int]]:
    """``(module.qualified_name, code lines)`` of every function and method, largest first."""
    sizes = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        code, tree = code_line_numbers(source), ast.parse(source)
        module = ".".join(path.relative_to(package).with_suffix("").parts)

        _visit(tree, module, "", code, sizes)
    return sorted(sizes, key=lambda item: -item[1])


def class_size(module: str, name: str, package: Path = PACKAGE, shown: bool = False) -> int:
    """Code lines of class ``name`` in ``transformer_lib/<module>.py``, or all the lines ``show_source`` displays."""
    source = (package / f"{module}.py").read_text(encoding="utf-8")
    code = code_line_numbers(source)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.end_lineno - node.lineno + 1 if shown else _count(code, node)
    raise LookupError(f"no class {name} in transformer_lib/{module}.py")


def stats() -> dict:
    """Every figure the targets speak of."""
    functions = function_sizes()
    classes = {
        f"{m}.{c}": {"lines": class_size(m, c), "budget": b, "shown_lines": class_size(m, c, shown=True)}
        for m, c, b in CLASS_BUDGETS + [("train", "TrainConfig", None)]
    }
    return {
        "max_function_lines": MAX_FUNCTION_LINES,
        "largest_functions": functions[:10],
        "functions_over_budget": [f for f in functions if f[1] > MAX_FUNCTION_LINES],
        "classes": classes,
    }


def names_by_chapter() -> dict[int, dict[str, list[str]]]:
    """Chapter -> module -> the public names (``__all__``) that module defines."""
    import importlib

    from test_course_structure import MODULE_CHAPTER

    chapters: dict[int, dict[str, list[str]]] = {}
    for module, chapter in sorted(MODULE_CHAPTER.items(), key=lambda item: (item[1], item[0])):
        names = list(getattr(importlib.import_module(f"transformer_lib.{module}"), "__all__", []))
        chapters.setdefault(chapter, {})[module] = names
    return chapters


def _over(figure: dict) -> bool:
    return figure["budget"] is not None and figure["lines"] > figure["budget"]


def main(argv: list[str] | None = None) -> int:
    """Print the table (and optionally the names per chapter); exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", action="store_true", help="list the public names each chapter's modules define")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = stats()
    print(f"largest functions of transformer_lib (code lines; target <= {MAX_FUNCTION_LINES}):")
    for name, lines in figures["largest_functions"]:
        print(f"  {lines:4d}  {name}{'   <-- over' if lines > MAX_FUNCTION_LINES else ''}")
    print("displayed classes (code lines / budget; all lines shown):")
    for name, c in figures["classes"].items():
        budget = "-" if c["budget"] is None else c["budget"]
        print(f"  {c['lines']:4d} / {budget:<3}  ({c['shown_lines']:3d})  {name}{'   <-- over' if _over(c) else ''}")
    if args.names:
        for chapter, modules in names_by_chapter().items():
            print(f"chapter {chapter}:")
            for module, names in modules.items():
                print(f"  {module}: {', '.join(names)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    missed = figures["functions_over_budget"] or any(_over(c) for c in figures["classes"].values())
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
