"""Sphinx extension of the book: generated figures, and one fix to the pages' scripts.

1. The introduction is a Markdown page (no kernel, no launch buttons), yet its learning-path
   figure must be made by code and never go stale. So every build draws it again from
   ``transformer_lib.viz.architecture_figure()`` into ``book/_generated/architecture.png``
   (ignored by git) before Sphinx reads the pages; the file is replaced only when it changed.
2. The "Try the translator" page runs the released checkpoints (de->en, zh->en) in the reader's
   browser. Their ONNX files are made by ``transformer_lib.export`` into
   ``book/_generated/web/<name>/`` (served as ``_static/<name>/``), again only when the
   checkpoint, the exporter or torch changed: a stamp file records what the files came from.
3. Sphinx 7.4 lists an inline script twice when an extension adds it after the builder started
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


WEB_MODELS = {"multi30k_de_en": "release/multi30k_de_en.pt", "tatoeba_zh_en": "release/tatoeba_zh_en.pt"}


def export_web_models(out_dir: Path = GENERATED / "web") -> list[Path]:
    """Export each released checkpoint of ``WEB_MODELS`` to ONNX for the translator page (cached)."""
    import hashlib

    import torch

    from transformer_lib import export
    from transformer_lib.utils import repo_root, sha256_file, write_atomic

    done = []
    for name, checkpoint in WEB_MODELS.items():
        folder, source = out_dir / name, repo_root() / checkpoint
        exporter = hashlib.sha256(Path(export.__file__).read_bytes()).hexdigest()
        stamp = f"{sha256_file(source)} {exporter} torch {torch.__version__}\n"
        stamp_file = folder / "source.txt"
        if not (stamp_file.is_file() and stamp_file.read_text() == stamp and (folder / "manifest.json").is_file()):
            export.export_onnx(source, folder)
            write_atomic(stamp_file, stamp)
        done.append(folder)
    return done


def _on_builder_inited(app: Any) -> None:
    draw_figures()


def _on_config_inited(app: Any, config: Any) -> None:
    export_web_models()  # before Sphinx checks that every html_static_path entry exists


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
    app.connect("config-inited", _on_config_inited, priority=400)  # Sphinx's own check runs at 800
    app.connect("builder-inited", _on_builder_inited)
    app.connect("html-page-context", dedupe_scripts, priority=900)  # after every extension added its scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
