"""Sphinx extension of the book: generated figures, and one fix to the pages' scripts.

1. The introduction is a Markdown page (no kernel, no launch buttons), yet its learning-path
   figure must be made by code and never go stale. So every build draws it again from
   ``transformer_lib.viz.architecture_figure()`` into ``book/_generated/architecture.png``
   (ignored by git) before Sphinx reads the pages; the file is replaced only when it changed.
2. Sphinx 7.4 lists an inline script twice when an extension adds it after the builder started
   (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector): once as
   ``filename=None`` and again, re-read from the registry, as ``filename=''``. The second ``const``
   is a SyntaxError in every page's console. Each page's script list is de-duplicated here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

GENERATED = Path(__file__).resolve().parent.parent / "_generated"


def draw_figures(out_dir: Path = GENERATED) -> list[Path]:
    """Draw every generated figure of the book into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display at build time
    import matplotlib.pyplot as plt

    from transformer_lib.viz import architecture_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "architecture.png"
    fig = architecture_figure()
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, metadata={"Software": None})  # no version stamp: same picture, same bytes
        plt.close(fig)
        if path.exists() and path.read_bytes() == Path(tmp).read_bytes():
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return [path]


def _on_builder_inited(app: Any) -> None:
    draw_figures()


def _script_key(script: Any) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    return (getattr(script, "filename", script) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop repeated entries of the page's script list (same file or inline body, same attributes)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: it is the builder's list for this page


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    app.connect("html-page-context", dedupe_scripts, priority=900)  # after every extension added its scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
