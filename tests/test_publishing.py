"""The GitHub Actions workflow that publishes the book (it cannot run here: check what can be checked)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_pages_workflow_builds_with_make_book_and_publishes_the_html() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on:` as True
    assert triggers["push"]["branches"] == ["main"]
    build = workflow["jobs"]["build"]["steps"]
    assert any(step.get("run") == "make book" for step in build), "the workflow must build exactly as `make book`"
    upload = next(s for s in build if str(s.get("uses", "")).startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert any(str(s.get("uses", "")).startswith("actions/deploy-pages") for s in deploy["steps"])
    assert workflow["permissions"]["pages"] == "write"
