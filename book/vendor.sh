#!/usr/bin/env bash
# Refresh the JavaScript and fonts the book serves itself, so that it needs no CDN and works offline:
#   RequireJS and @jupyter-widgets/html-manager (saved ipywidgets state in the rendered book),
#   MathJax 3 (tex-chtml and its woff fonts); for the "Try the translator" page, onnxruntime-web (its
#   WebAssembly build) and SentencePiece compiled to WebAssembly (@sctg/sentencepiece-js, bundled for
#   the browser with esbuild: the package itself imports Node's fs and buffer).
# Usage: book/vendor.sh   (needs npm and network; rewrites book/_static/vendor/ and its README.md).
# After a refresh: make book, then the browser test (make test) checks every page.
set -euo pipefail

HTML_MANAGER=1.0.15   # @jupyter-widgets/html-manager for ipywidgets 8.1 (controls 5.0, base 6.0)
REQUIREJS=2.3.8
MATHJAX=3.2.2         # the last MathJax 3; Sphinx's mathjax extension speaks version 3
ORT_WEB=1.31.1        # onnxruntime-web: runs the exported translator (transformer_lib.export)
SENTENCEPIECE_JS=1.3.3  # @sctg/sentencepiece-js: the tokenizer, the real SentencePiece in WebAssembly
ESBUILD=0.28.2        # bundles sentencepiece-js for the browser (build tool only; not served)
BUFFER=6.0.3          # the browser's stand-in for Node's Buffer, which sentencepiece-js uses

cd "$(dirname "$0")"
dest=_static/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "@jupyter-widgets/html-manager@$HTML_MANAGER" "requirejs@$REQUIREJS" \
    "mathjax@$MATHJAX" "onnxruntime-web@$ORT_WEB" >/dev/null)
for name in "jupyter-widgets-html-manager-$HTML_MANAGER" "requirejs-$REQUIREJS" "mathjax-$MATHJAX" \
    "onnxruntime-web-$ORT_WEB"; do
    mkdir -p "$tmp/$name" && tar xzf "$tmp/$name.tgz" -C "$tmp/$name"
done

# sentencepiece-js as one browser ES module: Node's fs is never reached in a browser (models are
# loaded from bytes), so it is replaced by an empty module; Node's Buffer by the npm "buffer" package.
mkdir -p "$tmp/spm"
(cd "$tmp/spm" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    "@sctg/sentencepiece-js@$SENTENCEPIECE_JS" "esbuild@$ESBUILD" "buffer@$BUFFER" >/dev/null \
    && echo 'export {};' > empty.js \
    && echo 'export { SentencePieceProcessor } from "@sctg/sentencepiece-js";' > entry.js \
    && npx esbuild entry.js --bundle --format=esm --platform=browser --minify --legal-comments=none \
        --alias:fs=./empty.js --external:module --log-level=warning --outfile=sentencepiece.mjs)

rm -rf "$dest"
mkdir -p "$dest/requirejs" "$dest/html-manager" "$dest/mathjax/output/chtml/fonts" "$dest/onnxruntime-web" \
    "$dest/sentencepiece"
for f in ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
    cp "$tmp/onnxruntime-web-$ORT_WEB/package/dist/$f" "$dest/onnxruntime-web/"
done
cp "$tmp/spm/sentencepiece.mjs" "$dest/sentencepiece/"
cp "$tmp/spm/node_modules/@sctg/sentencepiece-js/LICENSE" "$dest/sentencepiece/LICENSE"
cp "$tmp/spm/node_modules/buffer/LICENSE" "$dest/sentencepiece/LICENSE.buffer"
cp "$tmp/requirejs-$REQUIREJS/package/require.js" "$dest/requirejs/"
cp "$tmp/jupyter-widgets-html-manager-$HTML_MANAGER/package/dist/embed-amd.js" "$dest/html-manager/"
# Font Awesome 5, bundled into the widgets' CSS by content hash: browsers load the woff2 format only.
cp "$tmp/jupyter-widgets-html-manager-$HTML_MANAGER/package/dist/"*.woff2 "$dest/html-manager/"
cp "$tmp/jupyter-widgets-html-manager-$HTML_MANAGER/package/dist/embed.js.LICENSE.txt" \
    "$dest/html-manager/THIRD-PARTY-NOTICES.txt"
cp "$tmp/mathjax-$MATHJAX/package/LICENSE" "$dest/mathjax/"
cp "$tmp/mathjax-$MATHJAX/package/es5/tex-chtml.js" "$dest/mathjax/"
cp -r "$tmp/mathjax-$MATHJAX/package/es5/output/chtml/fonts/woff-v2" "$dest/mathjax/output/chtml/fonts/"

# The MIT licence text, after the package's own first line ($1) and copyright line ($2).
mit_licence() {
    printf '%s\n\n%s\n\n' "$1" "$2"
    cat <<'EOF'
Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
EOF
}

# onnxruntime-web ships no licence file; its package.json states MIT (Copyright (c) Microsoft Corporation).
mit_licence "onnxruntime-web — MIT License (as stated in its package.json; https://github.com/microsoft/onnxruntime)" \
    "Copyright (c) Microsoft Corporation" > "$dest/onnxruntime-web/LICENSE"

# Neither npm package ships its licence file; both state the licence in their package metadata.
mit_licence "RequireJS — MIT License (as stated in the header of require.js and in its package.json)" \
    "Copyright jQuery Foundation and other contributors, https://jquery.org/" > "$dest/requirejs/LICENSE"
cat > "$dest/html-manager/LICENSE" <<'EOF'
@jupyter-widgets/html-manager (part of ipywidgets) — BSD 3-Clause License (its package.json: BSD-3-Clause)

Copyright (c) 2015 Project Jupyter Contributors
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
EOF

{
    echo "# Vendored JavaScript and fonts"
    echo
    echo "The rendered book loads these files from here, never from a CDN, so it works offline."
    echo "They are copied unchanged from the npm registry's packages by \`book/vendor.sh\` (run it to"
    echo "refresh them; the versions are pinned at its top). \`tests/test_book.py\` checks every file"
    echo "against the SHA-256 below and that the built HTML loads no script, style sheet or font from"
    echo "another host. Pointed at from \`_config.yml\` (\`nb_ipywidgets_js\`, \`mathjax_path\`)."
    echo
    echo "| package | version | licence | used for |"
    echo "|---|---|---|---|"
    echo "| \`@jupyter-widgets/html-manager\` | $HTML_MANAGER | BSD-3-Clause (Font Awesome fonts: SIL OFL 1.1) | renders saved ipywidgets state (\`dist/embed-amd.js\`, its \`*.woff2\` fonts) |"
    echo "| \`requirejs\` | $REQUIREJS | MIT | the module loader html-manager needs (\`require.js\`) |"
    echo "| \`mathjax\` | $MATHJAX | Apache-2.0 | typesets the math (\`es5/tex-chtml.js\` and its woff fonts) |"
    echo "| \`onnxruntime-web\` | $ORT_WEB | MIT | runs the translator in the page (\`dist/ort.wasm.min.mjs\`, its WebAssembly) |"
    echo "| \`@sctg/sentencepiece-js\` | $SENTENCEPIECE_JS | Apache-2.0 (\`buffer\` $BUFFER: MIT) | the tokenizer, bundled by esbuild $ESBUILD into \`sentencepiece.mjs\` |"
    echo
    echo "| file | bytes | sha256 |"
    echo "|---|---|---|"
    (cd "$dest" && find . -type f ! -name README.md | sed 's|^\./||' | LC_ALL=C sort | while read -r f; do
        echo "| \`$f\` | $(wc -c < "$f" | tr -d ' ') | $(sha256sum "$f" | cut -d' ' -f1) |"
    done)
} > "$tmp/README.md"
mv "$tmp/README.md" "$dest/README.md"
echo "vendored into book/$dest:"
du -sh "$dest"
