"""The book builds strictly (-W -n: any warning fails), without re-executing the notebooks.

nbval already executes every notebook once per test run; here we only check that every page,
cross-reference, citation and the table of contents are sound. `make book` executes everything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def build_without_execution(out_dir: Path) -> subprocess.CompletedProcess:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_path = out_dir / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(ROOT), "--config", str(config_path), "--path-output", str(out_dir),
           "-W", "-n", "--keep-going", "--all"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_book_builds_strictly(tmp_path: Path) -> None:
    result = build_without_execution(tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"strict book build failed:\n{log[-6000:]}"
    html = tmp_path / "_build" / "html"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for page in pages:
        assert (html / f"{page}.html").is_file(), f"{page}.html is missing from the built book"
