"""The book as readers see it: a strict build, then a real browser (Debian's Chromium) over the built pages.

ONE build per test run, shared by every test of this module (``make test`` runs pytest-xdist with
``--dist loadscope``, which keeps a module on one worker). The build is strict (-W -n --keep-going:
any warning, broken cross-reference or citation fails it) and does not re-execute the chapters:
nbval executes every notebook once per test run already. Only the small "Interactive explorers"
page is executed here, so that its widgets carry saved state for the browser to render.
``make book`` executes everything.

The browser checks, on a localhost server: every page loads with no console error, no JavaScript
error, no failed request and no request to another host; math is typeset by the vendored MathJax;
every page with saved widget state shows its rendered widgets (html-manager from the vendored copy;
here the explorers page, after `make book` chapters 3-5 too); every
notebook page's Colab button opens that notebook in the repository of _config.yml; the search page
finds results offline; the translator page translates test sentences in the browser (the released
model as ONNX, onnxruntime-web) exactly as the Python command line does. A screenshot of each
page's first screen (1280x800) is saved under ``_build/screenshots/``. Without the browser: every
internal link and anchor resolves, the HTML loads no script, style sheet, image or font from a CDN,
and the vendored files match their SHA-256.

To run the browser checks against the book that ``make book`` built (chapters executed, widgets
in them rendered): ``BOOK_HTML=_build/html .venv/bin/python -m pytest -p no:cacheprovider tests/test_book.py``
(the strict-build test is then skipped: that build is not this module's).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urljoin, urlparse

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [c["file"] for part in TOC["parts"] for c in part["chapters"]]
NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / f"{p}.ipynb").is_file()]
CHAPTER_PAGES = [p for p in PAGES if p.startswith("chapters/")]
EXECUTED_HERE = ["book/explorers"]  # small and fast; its widgets need a kernel to get saved state
EXPLORERS_PAGE, EXPLORERS_ON_IT = "book/explorers", 3  # attention, mask and positional-encoding explorers
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # in a page's HTML when it has saved widgets
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # one per displayed widget
VENDOR = ROOT / "book" / "_static" / "vendor"
SCREENSHOTS = ROOT / "_build" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
PAGE_TIMEOUT_MS = 20_000


def notebooks_not_executed_here() -> list[str]:
    """Every notebook of the repository except EXECUTED_HERE, as execution-exclude patterns."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("_build", "node_modules", "runs")]
        found += [(Path(folder) / f).relative_to(ROOT).as_posix() for f in files if f.endswith(".ipynb")]
    keep = {f"{page}.ipynb" for page in EXECUTED_HERE}
    return sorted(set(found) - keep) + ["exercises/*", "exercises/*/*"]


def build_book(out_dir: Path) -> subprocess.CompletedProcess:
    """The strict build of this module: -W -n --keep-going, only EXECUTED_HERE executed."""
    config = copy.deepcopy(CONFIG)
    config["execute"]["execute_notebooks"] = "force"
    config["execute"]["exclude_patterns"] = notebooks_not_executed_here()
    extensions = config.get("sphinx", {}).get("local_extensions") or {}
    for name, path in extensions.items():  # relative to _config.yml, which moves to out_dir here
        extensions[name] = str(ROOT / path)
    config_path = out_dir / "_config.yml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))  # order matters (scripts)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [
        str(jupyter_book),
        "build",
        str(ROOT),
        "--config",
        str(config_path),
        "--path-output",
        str(out_dir),
        "-W",
        "-n",
        "--keep-going",
        "--all",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@dataclass
class Build:
    html: Path
    log: str
    returncode: int | None  # None: an existing build (BOOK_HTML)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    existing = os.environ.get("BOOK_HTML")
    if existing:
        html = Path(existing).resolve()
        if not (html / "index.html").is_file():
            pytest.fail(f"BOOK_HTML={existing} holds no built book (no index.html)")
        return Build(html, "", None)
    out = tmp_path_factory.mktemp("book")
    result = build_book(out)
    return Build(out / "_build" / "html", result.stdout + result.stderr, result.returncode)


@pytest.fixture(scope="module")
def html(build: Build) -> Path:
    if build.returncode not in (0, None):
        pytest.fail(f"the book did not build (see test_book_builds_strictly):\n{build.log[-3000:]}")
    return build.html


def test_book_builds_strictly(build: Build) -> None:
    if build.returncode is None:
        pytest.skip("BOOK_HTML is set: checking an existing build, not building one")
    assert build.returncode == 0, f"strict book build failed:\n{build.log[-6000:]}"
    for page in PAGES:
        assert (build.html / f"{page}.html").is_file(), f"{page}.html is missing from the built book"


# ---------------------------------------------------------------------------------------------
# Without a browser: links, CDNs, vendored files
# ---------------------------------------------------------------------------------------------


class _Collector(HTMLParser):
    """Ids, links (a/area href) and resources (script src, link href, img src, source srcset) of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag in ("a", "area") and a.get("href"):
            self.links.append(a["href"])
        elif tag in ("script", "img", "iframe", "source", "video", "audio") and a.get("src"):
            self.resources.append((tag, a["src"]))
        elif tag == "link" and a.get("href"):
            self.resources.append((f"link rel={a.get('rel', '')}", a["href"]))


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    return collector


def _html_files(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts)


def _is_external(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https") or url.startswith("//")


def test_every_internal_link_and_anchor_resolves(html: Path) -> None:
    broken = []
    for page in _html_files(html):
        collector = _parse(page)
        base = "file://" + page.as_posix()
        for url in collector.links + [u for _, u in collector.resources]:
            if _is_external(url) or url.startswith(("mailto:", "javascript:", "data:", "tel:")):
                continue
            target = urlparse(urljoin(base, url))
            path = Path(unquote(target.path))
            if path.is_dir():
                path = path / "index.html"
            where = f"{page.relative_to(html)}: {url}"
            if not path.is_file():
                broken.append(f"{where} (no file {path.relative_to(html) if html in path.parents else path})")
            elif target.fragment and path.suffix == ".html" and unquote(target.fragment) not in _parse(path).ids:
                broken.append(f"{where} (no anchor #{target.fragment})")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:40])


def test_html_loads_nothing_from_a_cdn(html: Path) -> None:
    """Scripts, style sheets, images and fonts all come from the book itself (it works offline)."""
    offenders = []
    for page in _html_files(html):
        for tag, url in _parse(page).resources:
            if _is_external(url) and not (tag.startswith("link") and "canonical" in tag):
                offenders.append(f"{page.relative_to(html)}: <{tag}> {url}")
    for css in (html / "_static").rglob("*.css"):
        for url in re.findall(r"(?:url\(|@import\s+)['\"]?(https?://[^'\")\s]+)", css.read_text(errors="replace")):
            offenders.append(f"{css.relative_to(html)}: {url}")
    assert not offenders, "the built book loads files from other hosts:\n" + "\n".join(offenders[:40])


def _vendored_table() -> dict[str, tuple[int, str]]:
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| ([0-9a-f]{64}) \|$", (VENDOR / "README.md").read_text(), flags=re.M)
    return {path: (int(size), sha) for path, size, sha in rows}


def test_vendored_files_match_their_recorded_sha256() -> None:
    table = _vendored_table()
    assert table, f"{VENDOR / 'README.md'} lists no files (| `path` | bytes | sha256 |)"
    on_disk = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file() and p.name != "README.md"}
    assert on_disk == set(table), (
        f"vendored files not in README.md: {sorted(on_disk - set(table))}; "
        f"listed but missing: {sorted(set(table) - on_disk)}"
    )
    for path, (size, sha) in table.items():
        data = (VENDOR / path).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha, (
            f"{path} differs from README.md (run book/vendor.sh)"
        )


def test_config_points_at_the_vendored_javascript() -> None:
    sphinx = CONFIG["sphinx"]["config"]
    static = [ROOT / p for p in sphinx["html_static_path"]]
    scripts = [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]
    for script in scripts:
        assert not _is_external(script), f"{script} is loaded from another host"
        assert any((s / script).is_file() for s in static), f"{script} is not in html_static_path {static}"


# ---------------------------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------------------------


def chromium_executable() -> str:
    """Debian's Chromium (or $CHROMIUM); a clear failure, never a skip, when it is missing."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "the browser test needs Debian's Chromium, which is not installed: run `make system-deps` "
            "(or `sudo apt-get install chromium fonts-noto-cjk`), or point $CHROMIUM at a Chromium binary"
        )
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def server(html: Path) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@dataclass
class Visit:
    """What the browser saw on one page."""

    errors: list[str] = field(default_factory=list)  # console errors, page errors, failed requests
    external: list[str] = field(default_factory=list)  # requests to other hosts (blocked)
    widget_views: int = 0  # widgets saved in the page's HTML
    math: int = 0  # math elements on the page
    typeset: int = 0  # ... of which MathJax typeset
    math_errors: int = 0
    broken_images: list[str] = field(default_factory=list)
    colab: list[str] = field(default_factory=list)
    widgets: dict[str, Any] = field(default_factory=dict)
    search_results: int = 0
    seconds: float = 0.0


MATH_JS = """async () => {
  const math = document.querySelectorAll('.math');
  if (math.length && window.MathJax && MathJax.startup) { await MathJax.startup.promise; }
  return [math.length, [...math].filter(m => m.querySelector('mjx-container') || m.tagName === 'MJX-CONTAINER').length,
          document.querySelectorAll('mjx-merror').length];
}"""
IMAGES_JS = (
    "() => [...document.images]"
    ".filter(i => i.complete && i.naturalWidth === 0 && i.getAttribute('src')).map(i => i.src)"
)
WIDGETS_JS = """() => {
  const visible = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const all = sel => [...document.querySelectorAll(sel)];
  return {
    images: all('img.widget-image').filter(i => visible(i) && i.naturalWidth > 0).length,
    controls: all('.widget-dropdown, .widget-toggle-buttons, .widget-slider').filter(visible).length,
    views: all('.jupyter-widgets').filter(visible).length,
    manager: all('script[src*="embed-amd.js"]').map(s => s.src),
    requirejs: all('script[src*="require.js"]').map(s => s.src),
    requireFirst: (() => { const s = all('script[src]').map(e => e.src);
      return s.findIndex(x => x.includes('require.js')) < s.findIndex(x => x.includes('embed-amd.js')); })(),
  };
}"""


TRANSLATOR_READY_JS = "() => { const b = document.getElementById('translate-button'); return !b || !b.disabled; }"
TRANSLATOR_TIMEOUT_MS = 120_000


def _visit(browser: Any, url: str, screenshot: Path | None, widget_views: int = 0, search: bool = False) -> Visit:
    visit = Visit(widget_views=widget_views)
    start = time.perf_counter()
    context = browser.new_context(viewport=VIEWPORT)
    local = urlparse(url).netloc

    def route(r: Any) -> None:
        if urlparse(r.request.url).netloc in (local, "") or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            visit.external.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.on("console", lambda m: visit.errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: visit.errors.append(f"page error: {e}"))
    page.on(
        "requestfailed",
        lambda r: (
            visit.errors.append(f"request failed: {r.url} ({r.failure})") if urlparse(r.url).netloc == local else None
        ),
    )
    page.on("response", lambda r: visit.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    try:
        page.goto(url, wait_until="load")
        page.wait_for_function(TRANSLATOR_READY_JS, timeout=TRANSLATOR_TIMEOUT_MS)  # its model's requests too
        if widget_views:
            page.wait_for_selector("img.widget-image", state="visible")
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.widget-image')].every(i => i.naturalWidth > 0)"
            )
            visit.widgets = page.evaluate(WIDGETS_JS)
        if search:
            page.wait_for_selector("ul.search li")
            visit.search_results = page.locator("ul.search li").count()
        visit.math, visit.typeset, visit.math_errors = page.evaluate(MATH_JS)
        page.evaluate("document.fonts.ready.then(() => true)")
        visit.broken_images = page.evaluate(IMAGES_JS)
        visit.colab = page.eval_on_selector_all("a[href*='colab.research.google.com']", "els => els.map(e => e.href)")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(150)  # let the last layout settle
            page.screenshot(path=str(screenshot))
    except Exception as error:  # a timeout or a crash: report it with what was seen so far
        visit.errors.append(f"{type(error).__name__}: {error}".splitlines()[0])
    finally:
        context.close()
    visit.seconds = time.perf_counter() - start
    return visit


def screenshot_name(page: str) -> str:
    """chapters/03_inputs -> chapters-03_inputs.png (exercises/03_inputs must not overwrite it)."""
    return page.replace("/", "-") + ".png"


@pytest.fixture(scope="module")
def visits(server: str, html: Path) -> dict[str, Visit]:
    """Every page of the table of contents and the search page, each visited once in Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright: make install (it is in the `test` extra)")
    executable = chromium_executable()
    for old in SCREENSHOTS.glob("*.png"):  # only this run's screenshots
        old.unlink()
    seen: dict[str, Visit] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            for page in PAGES:
                text = (html / f"{page}.html").read_text(encoding="utf-8")
                views = text.count(WIDGET_VIEW) if WIDGET_STATE in text else 0
                seen[page] = _visit(
                    browser, urljoin(server, f"{page}.html"), SCREENSHOTS / screenshot_name(page), views
                )
            seen["search"] = _visit(browser, urljoin(server, "search.html?q=attention"), None, search=True)
        finally:
            browser.close()
    return seen


@pytest.mark.parametrize("page", PAGES + ["search"])
def test_page_loads_without_errors_and_only_from_localhost(visits: dict[str, Visit], page: str) -> None:
    visit = visits[page]
    assert not visit.errors, f"{page}: " + "\n".join(visit.errors[:20])
    assert not visit.external, f"{page} requested files from other hosts: {visit.external[:10]}"
    assert not visit.broken_images, f"{page}: images that did not load: {visit.broken_images}"


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(visits: dict[str, Visit], page: str) -> None:
    visit = visits[page]
    assert visit.typeset == visit.math, f"{page}: MathJax typeset {visit.typeset} of {visit.math} formulas"
    assert visit.math_errors == 0, f"{page}: {visit.math_errors} formulas have TeX errors"


def test_pages_with_math_were_found(visits: dict[str, Visit]) -> None:
    """The math check above must not pass vacuously: the chapters do have formulas."""
    assert sum(visits[p].math for p in CHAPTER_PAGES) > 10


def test_widget_pages_show_rendered_widgets(visits: dict[str, Visit], server: str) -> None:
    """Every page with saved widget state (always the explorers page; after `make book` chapters 3-5 too)."""
    pages = [p for p in PAGES if visits[p].widget_views]
    assert EXPLORERS_PAGE in pages and visits[EXPLORERS_PAGE].widget_views >= EXPLORERS_ON_IT, (
        f"{EXPLORERS_PAGE} was built without its {EXPLORERS_ON_IT} widgets' saved state"
    )
    for page in pages:
        widgets, expected = visits[page].widgets, visits[page].widget_views
        assert widgets, f"{page}: no widget rendered ({visits[page].errors[:5]})"
        assert widgets["images"] >= expected, f"{page}: {widgets['images']} of {expected} explorer pictures rendered"
        assert widgets["controls"] >= expected, (
            f"{page}: {widgets['controls']} widget controls for {expected} explorers"
        )
        for script in widgets["manager"] + widgets["requirejs"]:
            assert script.startswith(urljoin(server, "_static/vendor/")), (
                f"{page} loads {script}, not the vendored copy"
            )
        assert widgets["manager"] and widgets["requirejs"], f"{page}: the html-manager or RequireJS is not on the page"
        assert widgets["requireFirst"], f"{page}: RequireJS must load before the html-manager"


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_colab_button_opens_this_notebook(visits: dict[str, Visit], page: str) -> None:
    repo = urlparse(CONFIG["repository"]["url"]).path.strip("/")  # org/name
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    expected = f"{colab}/github/{repo}/blob/{CONFIG['repository'].get('branch', 'main')}/{page}.ipynb"
    assert visits[page].colab, f"{page} has no Colab button"
    assert set(visits[page].colab) == {expected}, f"{page}: Colab links {visits[page].colab}, expected {expected}"


def test_search_works_offline(visits: dict[str, Visit]) -> None:
    assert visits["search"].search_results > 0, "searching the book for 'attention' found nothing"


def test_screenshots_of_every_page(visits: dict[str, Visit]) -> None:
    for page in PAGES:
        shot = SCREENSHOTS / screenshot_name(page)
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page} at {shot}"
    print("seconds per page in the browser:", {p: round(v.seconds, 1) for p, v in visits.items()})


# ---------------------------------------------------------------------------------------------
# The translator page: the released model, exported to ONNX, translating in the browser
# ---------------------------------------------------------------------------------------------

TRANSLATOR_PAGE = "book/translator"
TRANSLATOR_SENTENCES = 10  # the first sentences of test_2016_flickr
CHINESE_SENTENCES = ["我爱你", "他欠我一百万", "今天天气很好。", "我们明天去北京吧。"]
TRANSLATE_JS = """async (text) => {
  const input = document.getElementById('translate-input');
  const before = window.courseTranslator.count;
  input.value = text;
  document.getElementById('translate-button').click();
  const status = document.getElementById('translate-status');
  while (window.courseTranslator.count === before) {
    await new Promise(r => setTimeout(r, 20));
  }
  const map = document.getElementById('attention-map');
  return {output: document.getElementById('translate-output').textContent, status: status.textContent,
          ids: await window.courseTranslator.encode(text, document.getElementById('translate-language').value),
          rows: Number(map.dataset.rows), columns: Number(map.dataset.columns),
          layers: document.getElementById('layer-select').options.length,
          heads: document.getElementById('head-select').options.length};
}"""


@pytest.fixture(scope="module")
def translator_page(server: str) -> dict[str, Any]:
    """The translator page driven like a reader: type each sentence, click Translate, read the answer."""
    from playwright.sync_api import sync_playwright

    from transformer_lib.data import load_pairs, use_shared_mirror

    use_shared_mirror()
    sentences = [de for de, _ in load_pairs("multi30k", "test_2016_flickr", "de", "en")[:TRANSLATOR_SENTENCES]]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(urljoin(server, f"{TRANSLATOR_PAGE}.html"), wait_until="load")
            page.wait_for_function(TRANSLATOR_READY_JS, timeout=TRANSLATOR_TIMEOUT_MS)
            results = [page.evaluate(TRANSLATE_JS, s) for s in sentences]
            load_ms = page.evaluate("window.courseTranslator.loadMs")
            shown = page.evaluate("window.courseTranslator.count")
            page.select_option("#translate-language", "zh")  # loads the Chinese model, translates its first example
            page.wait_for_function(f"() => window.courseTranslator.count > {shown}", timeout=120_000)
            page.wait_for_function(TRANSLATOR_READY_JS)
            chinese = [page.evaluate(TRANSLATE_JS, s) for s in CHINESE_SENTENCES]
        finally:
            browser.close()
    return {"sentences": sentences, "results": results, "errors": errors, "load_ms": load_ms, "chinese": chinese}


def test_translator_page_translates_like_the_command_line(translator_page: dict[str, Any]) -> None:
    from transformer_lib.checkpoint import load_translator
    from transformer_lib.evaluate import translate

    model, src_tok, tgt_tok = load_translator(ROOT / "release" / "multi30k_de_en.pt")
    sentences, results = translator_page["sentences"], translator_page["results"]
    assert not translator_page["errors"], translator_page["errors"][:5]
    expected = translate(model, src_tok, tgt_tok, sentences, batch_size=1)  # the CLI's greedy search, one by one
    for sentence, result, english in zip(sentences, results, expected):
        assert result["ids"] == src_tok.encode(sentence), f"the page's tokenizer differs from Python's on {sentence!r}"
        assert result["output"] == english, f"{sentence!r}: the page says {result['output']!r}, Python {english!r}"
        assert result["columns"] == len(result["ids"]) and result["rows"] >= 1, "the attention map has the wrong shape"
        assert "computed in this browser" in result["status"]
    assert results[0]["layers"] == model.config.N and results[0]["heads"] == model.config.h + 1  # + "mean"
    print(f"translator page: model loaded in {translator_page['load_ms']:.0f} ms;", [r["status"] for r in results])


def test_translator_page_translates_chinese_like_the_command_line(translator_page: dict[str, Any]) -> None:
    from transformer_lib.checkpoint import load_translator
    from transformer_lib.evaluate import translate

    model, src_tok, tgt_tok = load_translator(ROOT / "release" / "tatoeba_zh_en.pt")
    expected = translate(model, src_tok, tgt_tok, CHINESE_SENTENCES, batch_size=1)
    for sentence, result, english in zip(CHINESE_SENTENCES, translator_page["chinese"], expected):
        assert result["ids"] == src_tok.encode(sentence), f"the page's tokenizer differs from Python's on {sentence!r}"
        assert result["output"] == english, f"{sentence!r}: the page says {result['output']!r}, Python {english!r}"
        assert result["columns"] == len(result["ids"])


LIVE_EXPLORERS_JS = """async () => {
  const canvas = document.getElementById('live-pe-canvas'), masks = document.getElementById('live-mask-canvas');
  const before = {...canvas.dataset}, masksBefore = {...masks.dataset};
  const length = document.getElementById('live-pe-length');
  length.value = '100'; length.dispatchEvent(new Event('input'));
  const causal = document.getElementById('live-mask-causal');
  causal.checked = true; causal.dispatchEvent(new Event('change'));
  return {before, after: {...canvas.dataset}, masksBefore, masksAfter: {...masks.dataset},
          pe: Array.from(window.courseExplorers.positionalEncoding(50, 15)),
          mask: window.courseExplorers.batchMask([5, 3, 4], true)};
}"""


def test_live_explorers_redraw_with_the_librarys_numbers(server: str) -> None:
    """The explorers page's JavaScript explorers: they redraw, and compute what transformer_lib computes."""
    from playwright.sync_api import sync_playwright

    from transformer_lib.embeddings import sinusoidal_positional_encoding
    from transformer_lib.masks import causal_mask, padding_mask

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(urljoin(server, f"{EXPLORERS_PAGE}.html"), wait_until="load")
            page.wait_for_selector("#live-pe-canvas[data-checksum]")
            seen = page.evaluate(LIVE_EXPLORERS_JS)
        finally:
            browser.close()
    assert not errors, errors
    assert seen["before"]["length"] == "64" and seen["after"]["length"] == "100", "the encoding did not redraw"
    assert seen["before"]["checksum"] != seen["after"]["checksum"]
    assert int(seen["masksAfter"]["allowed"]) < int(seen["masksBefore"]["allowed"]), "the causal mask hid nothing"
    expected = sinusoidal_positional_encoding(50, 15).flatten().tolist()
    assert max(abs(a - b) for a, b in zip(seen["pe"], expected)) < 1e-5 and len(seen["pe"]) == len(expected)
    tokens = torch.tensor([[7, 7, 7, 7, 7], [7, 7, 7, 0, 0], [7, 7, 7, 7, 0]])  # lengths 5, 3, 4; 0 = <pad>
    library = padding_mask(tokens, 0) & causal_mask(5)  # (batch, 1, q, k), as chapter 4 combines them
    assert seen["mask"] == library[:, 0].tolist()
