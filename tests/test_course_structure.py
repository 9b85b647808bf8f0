"""The rules that keep book and library in step.

* every chapter in the table of contents is a numbered notebook in chapters/, committed without outputs;
* its first code cell installs the library on Colab from the repository named in _config.yml;
* it opens with one title and ends with what transformer_lib gained;
* a chapter (and a library module) imports only what earlier chapters built, plus its own module;
* every public function and class of the library has a docstring, and functions have type hints.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

import transformer_lib

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))

# Chapter number -> the library modules it introduces. `utils` is the toolkit of chapter 1.
MODULE_CHAPTER = {
    "utils": 1,
    "checks": 1,
    "rnn": 1,
    "viz": 1,
    "attention": 2,
    "embeddings": 3,
    "masks": 4,
    "multihead": 5,
    "encoder": 6,
    "decoder": 7,
    "model": 7,
    "data": 8,
    "tokenizer": 8,
    "checkpoint": 8,
    "train": 8,
    "evaluate": 9,
    "decode": 9,
    "cli": 9,
    "bench": 10,
    "flash": 10,
    "export": 10,
    "distributed": 11,
    "ablations": 11,
    "chinese": 12,
    "lm": 13,
    "modern": 14,
}
# The command line (chapter 9) is the application that offers every chapter's work: its train command
# runs data-parallel (chapter 11) and knows the Tatoeba corpus (chapter 12). It may import any module.
APPLICATION_MODULES = {"cli"}
# Plumbing that the package does not re-export at the top level (import it from its module).
NOT_REEXPORTED = {"cli", "checks"}


def chapter_number(path: Path) -> int:
    return int(path.name[:2])


def load_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def imported_course_modules(source: str) -> set[str]:
    """Names of transformer_lib modules imported by Python source (IPython magics removed)."""
    lines = source.splitlines()  # IPython magics are not Python: replace them by `pass`, keeping indentation
    source = "\n".join(
        line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
        for line in lines
    )
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level and node.level > 0:  # relative import inside the package
                found.add(node.module.split(".")[0])
            elif node.module.startswith("transformer_lib"):
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.add(parts[1])
                else:  # from transformer_lib import X: X may be a module or a re-exported name
                    for alias in node.names:
                        obj = getattr(transformer_lib, alias.name, None)
                        module = alias.name if inspect.ismodule(obj) else getattr(obj, "__module__", "")
                        found.add(module.split(".")[-1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "transformer_lib" and len(parts) > 1:
                    found.add(parts[1])
    return found - {"transformer_lib", "__init__", ""}


def test_there_are_chapters() -> None:
    assert len(CHAPTERS) >= 7, f"expected at least 7 chapter notebooks, found {[p.name for p in CHAPTERS]}"


def test_toc_lists_every_chapter_and_only_existing_files() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for f in files + [toc["root"]]:
        assert any((ROOT / f"{f}{ext}").is_file() for ext in (".md", ".ipynb")), f"{f} in _toc.yml does not exist"
    for nb in CHAPTERS:
        assert f"chapters/{nb.stem}" in files, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path: Path) -> None:
    nb = load_notebook(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} carries outputs"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_installs_from_the_configured_repository_on_colab(path: Path) -> None:
    repo_url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    first = code_cells(load_notebook(path))[0]
    assert '"google.colab" in sys.modules' in first, f"{path.name}: first code cell must only act on Colab"
    assert f"git+{repo_url}" in first, f"{path.name}: first code cell must install from {repo_url}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_with_title_and_ends_with_what_the_library_gained(path: Path) -> None:
    markdown = ["".join(c["source"]) for c in load_notebook(path)["cells"] if c["cell_type"] == "markdown"]
    text = "\n".join(markdown)
    titles = re.findall(r"^# (.+)$", text, flags=re.M)
    assert len(titles) == 1, f"{path.name}: expected exactly one top-level title, found {titles}"
    assert titles[0].startswith(f"{chapter_number(path)}. "), f"{path.name}: title should start with its number"
    assert re.search(r"^## Summary", text, flags=re.M), f"{path.name}: no '## Summary' section"
    assert re.search(r"^## What `?transformer_lib`? gained", text, flags=re.M), f"{path.name}: no gained section"


PLOTTING = re.compile(
    r"\bplt\.(subplots|figure|plot|imshow|bar|hist|scatter)\(|\bax\w*\.(plot|imshow|bar|hist|scatter)\(|"
    r"\b\w+_explorer\(|\bplot_\w+\("
)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_with_its_architecture_map_and_draws_its_own_figures(path: Path) -> None:
    n = chapter_number(path)
    cells = code_cells(load_notebook(path))
    assert len(cells) > 1 and re.search(rf"\barchitecture_figure\(\s*chapter\s*=\s*{n}\s*\)", cells[1]), (
        f"{path.name}: the cell after the Colab install cell must draw architecture_figure(chapter={n})"
    )
    assert any("use_course_style()" in c for c in cells), f"{path.name} never calls use_course_style()"
    others = [c for c in cells if "architecture_figure" not in c]
    assert any(PLOTTING.search(c) for c in others), f"{path.name} draws no figure of its own besides the map"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_imports_only_what_earlier_chapters_built(path: Path) -> None:
    n = chapter_number(path)
    used = set()
    for source in code_cells(load_notebook(path)):
        used |= imported_course_modules(source)
    unknown = used - MODULE_CHAPTER.keys()
    assert not unknown, f"{path.name} imports modules with no chapter: {unknown}"
    later = {m for m in used if MODULE_CHAPTER[m] > n}
    assert not later, f"chapter {n} imports modules from later chapters: {sorted(later)}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_shows_library_source_rather_than_retyping_it(path: Path) -> None:
    n = chapter_number(path)
    own = {m for m, c in MODULE_CHAPTER.items() if c == n and m != "utils"}
    sources = "\n".join(code_cells(load_notebook(path)))
    assert "show_source(" in sources, f"{path.name} never shows library source with show_source()"
    for module in own:
        names = getattr(importlib.import_module(f"transformer_lib.{module}"), "__all__", [])
        for name in names:  # no `def name(` / `class name(` of a library object inside a notebook
            assert not re.search(rf"^(def|class) {name}\b", sources, flags=re.M), f"{path.name} retypes {name}"


@pytest.mark.parametrize("module", sorted(MODULE_CHAPTER), ids=str)
def test_library_module_imports_only_earlier_chapters(module: str) -> None:
    path = ROOT / "transformer_lib" / f"{module}.py"
    if not path.exists():
        pytest.fail(f"transformer_lib/{module}.py is missing")
    if module in APPLICATION_MODULES:
        return
    used = imported_course_modules(path.read_text(encoding="utf-8")) - {module}
    later = {m for m in used if MODULE_CHAPTER.get(m, 99) > MODULE_CHAPTER[module]}
    assert not later, f"{module} (chapter {MODULE_CHAPTER[module]}) imports later modules {sorted(later)}"


@pytest.mark.parametrize("module", sorted(MODULE_CHAPTER), ids=str)
def test_public_api_has_docstrings_and_type_hints(module: str) -> None:
    mod = importlib.import_module(f"transformer_lib.{module}")
    assert mod.__doc__, f"transformer_lib.{module} has no module docstring"
    names = getattr(mod, "__all__", None)
    assert names, f"transformer_lib.{module} defines no __all__"
    for name in names:
        obj = getattr(mod, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{module}.{name} has no docstring"
        functions = [obj] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            functions = [
                f
                for k, f in vars(obj).items()
                if inspect.isfunction(f) and (k in ("__init__", "forward") or not k.startswith("_"))
            ]
        for f in functions:
            sig = inspect.signature(f)
            missing = [
                p
                for p in sig.parameters.values()
                if p.name != "self"
                and p.annotation is inspect.Parameter.empty
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            ]
            assert not missing, f"{module}.{f.__qualname__} lacks type hints for {[p.name for p in missing]}"
            if f.__name__ != "__init__":
                assert sig.return_annotation is not inspect.Signature.empty, (
                    f"{module}.{f.__qualname__} lacks a return type"
                )


def test_package_exposes_each_modules_public_names() -> None:
    exported = set(transformer_lib.__all__)
    expected = set()
    for module in set(MODULE_CHAPTER) - NOT_REEXPORTED:
        mod = importlib.import_module(f"transformer_lib.{module}")
        for name in getattr(mod, "__all__", []):
            if name in MODULE_CHAPTER:  # a function named like a submodule (train.train) would shadow it
                assert name not in exported, f"transformer_lib.{name} must stay the submodule"
                continue
            expected.add(name)
            assert getattr(transformer_lib, name, None) is getattr(mod, name), f"transformer_lib.{name} is not exported"
    assert exported == expected, (
        f"__all__ differs: extra {sorted(exported - expected)}, missing {sorted(expected - exported)}"
    )
    assert len(transformer_lib.__all__) == len(exported), "a name is listed twice in __all__"


def test_no_submodule_is_shadowed_and_heavy_modules_load_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, transformer_lib as t; "
        "lazy = ('viz', 'bench', 'chinese', 'distributed', 'ablations', 'lm', 'modern'); "
        "print(sorted(m for m in lazy if f'transformer_lib.{m}' in sys.modules)); "
        "print(type(t.train).__name__, 'matplotlib.pyplot' in sys.modules); "
        "t.architecture_figure; print('transformer_lib.viz' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", f"imported eagerly: {out[0]}"
    assert out[1] == "module False", "transformer_lib.train must be the module, and pyplot must not load at import"
    assert out[2] == "True", "the lazy name must import its module on first use"
