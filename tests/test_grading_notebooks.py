"""The exercise notebooks follow the course's notebook rules (as tests/test_course_structure.py does for chapters).

* learner notebooks exercises/NN_*.ipynb and masters exercises/master/NN_*.ipynb come in pairs;
* committed without outputs; the first code cell installs the library on Colab from the configured repository;
* one title ``# Exercises for chapter N: ...``; a link to the chapter and to book/exercises.md;
* they import only library modules of chapters <= N, plus the grading package;
* the learner notebook carries its chapter in the metadata, no solution, and a stub per exercise;
* the last cell is ``summary(N)``; the hidden tests appear nowhere in the book or the notebooks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from grading_support import EXERCISES, LEARNERS, MASTERS, chapter_of, code_cells
from test_course_structure import MODULE_CHAPTER, imported_course_modules

ROOT = EXERCISES.parent
ALL = MASTERS + LEARNERS
ids = lambda p: f"{p.parent.name}/{p.stem}"  # noqa: E731


def test_every_master_has_a_learner_notebook_and_back() -> None:
    assert [p.name for p in MASTERS] == [p.name for p in LEARNERS]


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_committed_without_outputs(path: Path) -> None:
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} carries outputs"


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_first_code_cell_installs_from_the_configured_repository_on_colab(path: Path) -> None:
    repo_url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    first = code_cells(path)[0]
    assert '"google.colab" in sys.modules' in first and f"git+{repo_url}" in first


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_title_links_and_last_cell(path: Path) -> None:
    nb = json.loads(path.read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    n = chapter_of(path)
    titles = re.findall(r"^# (.+)$", markdown, flags=re.M)
    assert len(titles) == 1 and titles[0].startswith(f"Exercises for chapter {n}: "), titles
    chapter = next((ROOT / "chapters").glob(f"{n:02d}_*.ipynb"))
    assert f"../chapters/{chapter.name}" in markdown and "../book/exercises.md" in markdown
    assert code_cells(path)[-1].strip() == f"summary({n})"


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_imports_only_earlier_chapters_and_grading(path: Path) -> None:
    n = chapter_of(path)
    used = set().union(*(imported_course_modules(src) for src in code_cells(path))) - {"grading"}
    assert not used - MODULE_CHAPTER.keys(), (
        f"{path.name} imports modules with no chapter: {used - MODULE_CHAPTER.keys()}"
    )
    later = sorted(m for m in used if MODULE_CHAPTER[m] > n)
    assert not later, f"{path.name} (chapter {n}) imports later modules {later}"


@pytest.mark.parametrize("path", LEARNERS, ids=ids)
def test_learner_notebook_has_stubs_no_solutions_and_its_chapter(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["transformer_course"] == {"chapter": chapter_of(path)}
    sources = "\n".join(code_cells(path))
    assert "BEGIN SOLUTION" not in sources and "END SOLUTION" not in sources
    stubs = set(
        re.findall(r'raise NotImplementedError\("exercise (\d\d\.[a-z0-9_]+): write your code here"\)', sources)
    )
    checked = set(re.findall(r"""check\(["'](\d\d\.[a-z0-9_]+)["']""", sources))
    assert stubs == checked and stubs, f"{path.name}: stubs for {sorted(stubs)}, checks for {sorted(checked)}"


def test_book_shows_learner_notebooks_and_never_masters_or_hidden_tests() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = config["exclude_patterns"]
    assert "exercises/master/**" in excluded and "exercises/hidden/**" in excluded and "exercises" not in excluded
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    part = next(p for p in toc["parts"] if p["caption"] == "Exercises")
    assert [c["file"] for c in part["chapters"]][0] == "book/exercises"
    for path in LEARNERS:
        assert f"exercises/{path.stem}" in files, f"{path.name} is not in _toc.yml"
    assert not [f for f in files if f.startswith(("exercises/master", "exercises/hidden"))]
