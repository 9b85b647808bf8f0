"""The book's translator page in headless Chromium: page weight, load time, time per translation.

Serves a built book (``make book`` writes ``_build/html``) on localhost, opens
``book/translator.html`` in Debian's Chromium (Playwright) and measures: the bytes the page fetched
(HTML, JavaScript, WebAssembly, the ONNX model and tokenizers), the time from navigation until the
model is loaded and the first translation is shown, and the time of each translation of the first
``--sentences`` sentences of test_2016_flickr (greedy search in the page, one thread of
WebAssembly), reported per sentence and for the sentences of 13-17 output tokens ("15-token").

    python benchmarks/web_translator.py                  # results/web_translator_cpu.json
    python benchmarks/web_translator.py --html DIR       # another build
"""

from __future__ import annotations

import argparse
import functools
import shlex
import shutil
import statistics
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from transformer_lib.bench import format_table, results_header, write_json_atomic
from transformer_lib.data import load_multi30k, use_shared_mirror

ROOT = Path(__file__).resolve().parent.parent
TRANSLATE_JS = """async (text) => { const r = await window.courseTranslator.translate(text);
  return {text: r.text, tokens: r.outIds.length, ms: r.ms}; }"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", default=str(ROOT / "_build" / "html"), help="a built book")
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "results" / "web_translator_cpu.json"))
    args = parser.parse_args(argv)
    page_file = Path(args.html) / "book" / "translator.html"
    if not page_file.is_file():
        parser.exit(2, f"error: {page_file} does not exist: build the book first (make book)\n")
    from playwright.sync_api import sync_playwright

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=args.html))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/book/translator.html"
    use_shared_mirror()  # the offline corpora beside the repository, where they are
    sentences = [de for de, _ in load_multi30k("test_2016_flickr")[: args.sentences]]
    fetched: dict[str, int] = {}
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("response", lambda r: fetched.__setitem__(r.url, len(r.body()) if r.ok else 0))
        start = time.perf_counter()
        page.goto(url, wait_until="load")
        page.wait_for_function("() => !document.getElementById('translate-button').disabled", timeout=120_000)
        first_s = time.perf_counter() - start
        runs = [page.evaluate(TRANSLATE_JS, s) for s in sentences]
        browser.close()
    httpd.shutdown()
    by_kind = {"model (ONNX, tokenizers)": 0, "WebAssembly": 0, "JavaScript": 0, "other": 0}
    for address, size in fetched.items():
        name = address.split("?")[0]
        kind = (
            "model (ONNX, tokenizers)"
            if "/multi30k_de_en/" in name
            else "WebAssembly"
            if name.endswith(".wasm")
            else "JavaScript"
            if name.endswith((".js", ".mjs"))
            else "other"
        )
        by_kind[kind] += size
    fifteen = [r["ms"] for r in runs if 13 <= r["tokens"] <= 17]
    results = results_header("cpu", "python " + shlex.join(sys.argv), browser="headless Chromium (Playwright)")
    results |= {
        "page_bytes": by_kind | {"total": sum(by_kind.values())},
        "seconds_to_first_translation": first_s,
        "sentences": len(runs),
        "ms_per_sentence_median": statistics.median(r["ms"] for r in runs),
        "ms_15_token_median": statistics.median(fifteen) if fifteen else None,
        "ms_15_token_max": max(fifteen) if fifteen else None,
        "runs": runs,
    }
    rows = [{"what": k, "MiB": v / 2**20} for k, v in results["page_bytes"].items()]
    print(format_table(rows))
    print(
        f"first translation {first_s:.1f} s after navigation; median {results['ms_per_sentence_median']:.0f} ms a "
        f"sentence; 15-token sentences ({len(fifteen)}): median {results['ms_15_token_median']:.0f} ms"
    )
    write_json_atomic(results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
