// "Try the translator": the released de->en and zh->en models, exported to ONNX by transformer_lib.export, run in
// this page by onnxruntime-web (WebAssembly, one thread), tokenized by SentencePiece compiled to
// WebAssembly. Nothing leaves the browser. Greedy search is the loop of transformer_lib.export's
// greedy_translate_onnx: the encoder once, then one decoder step per output token, at most
// len(source) + 50 tokens, stopping at <eos>. Each step also returns the cross-attention of the new
// position (layers x heads x source length), drawn as the heat map.
import * as ort from "./vendor/onnxruntime-web/ort.wasm.min.mjs";
import { SentencePieceProcessor } from "./vendor/sentencepiece/sentencepiece.mjs";

const MODELS = { de: "multi30k_de_en", zh: "tatoeba_zh_en" }; // source language -> folder in _static
const MAX_EXTRA_LEN = 50; // as evaluate.translate
const MAX_SRC_LEN = 256;

ort.env.wasm.wasmPaths = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page, which a static host does not give

async function fetchBytes(folder, name) {
  const response = await fetch(new URL(`./${folder}/${name}`, import.meta.url));
  if (!response.ok) throw new Error(`could not load ${name}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function tokenizer(bytes) {
  const sp = new SentencePieceProcessor();
  await sp._loadModel(bytes); // the package's loader from bytes (its public ones read files or base64)
  return sp;
}

async function load(folder) {
  const get = (name) => fetchBytes(folder, name);
  const json = async (name) => JSON.parse(new TextDecoder().decode(await get(name)));
  const manifest = await json("manifest.json");
  const files = manifest.files;
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  const [encoder, step, src, tgt, srcPieces, tgtPieces] = await Promise.all([
    get(files.encoder).then((b) => ort.InferenceSession.create(b, options)),
    get(files.decoder_step).then((b) => ort.InferenceSession.create(b, options)),
    get(files.src_tokenizer).then(tokenizer),
    get(files.tgt_tokenizer).then(tokenizer),
    json(files.src_pieces),
    json(files.tgt_pieces),
  ]);
  return { manifest, encoder, step, src, tgt, srcPieces, tgtPieces };
}

const loaded = {}; // language -> Promise of its model, loaded the first time it is asked for
const model = (language) => (loaded[language] ??= load(MODELS[language]));

const ids64 = (ids) => new ort.Tensor("int64", BigInt64Array.from(ids, (i) => BigInt(i)), [1, ids.length]);

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

// One sentence -> { text, srcIds, outIds (with <eos> if produced), srcPieces, outPieces, weights, ms }.
async function translate(model, sentence) {
  const start = performance.now();
  const { bos, eos, unk } = model.manifest.ids;
  let srcIds = model.src.encodeIds(sentence).slice(0, MAX_SRC_LEN);
  if (srcIds.length === 0) srcIds = [unk];
  const src = ids64(srcIds);
  const { memory } = await model.encoder.run({ src });
  const ys = [bos];
  const weights = []; // per output token: Float32Array (layers * heads * src_len)
  for (let t = 0; t < srcIds.length + MAX_EXTRA_LEN; t++) {
    const out = await model.step.run({ src, memory, ys: ids64(ys) });
    ys.push(argmax(out.log_probs.data));
    weights.push(out.cross_attention.data.slice());
    if (ys[ys.length - 1] === eos) break;
  }
  const outIds = ys.slice(1);
  const words = outIds[outIds.length - 1] === eos ? outIds.slice(0, -1) : outIds;
  return {
    text: model.tgt.decodeIds(words),
    srcIds,
    outIds,
    srcPieces: srcIds.map((i) => model.srcPieces[i]),
    outPieces: outIds.map((i) => model.tgtPieces[i]),
    weights,
    ms: performance.now() - start,
  };
}

// The heat map: rows = output pieces, columns = source pieces; one layer, one head or their mean.
function drawMap(canvas, result, manifest, layer, head) {
  const { heads } = manifest;
  const n = result.srcIds.length;
  const cell = 22;
  const left = 110;
  const top = 90;
  canvas.width = left + n * cell + 10;
  canvas.height = top + result.outPieces.length * cell + 10;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#222";
  const shown = head === "mean" ? [...Array(heads).keys()] : [Number(head)]; // the heads averaged
  result.outPieces.forEach((piece, row) => {
    ctx.textAlign = "right";
    ctx.fillText(piece, left - 6, top + row * cell + 15);
    const w = result.weights[row];
    for (let k = 0; k < n; k++) {
      let value = 0;
      for (const h of shown) value += w[(layer * heads + h) * n + k];
      value /= shown.length;
      const shade = Math.round(255 * (1 - value));
      ctx.fillStyle = `rgb(${shade},${shade},255)`;
      ctx.fillRect(left + k * cell, top + row * cell, cell - 1, cell - 1);
      ctx.fillStyle = "#222";
    }
  });
  result.srcPieces.forEach((piece, k) => {
    ctx.save();
    ctx.translate(left + k * cell + 15, top - 6);
    ctx.rotate(-Math.PI / 3);
    ctx.textAlign = "left";
    ctx.fillText(piece, 0, 0);
    ctx.restore();
  });
  canvas.dataset.rows = String(result.outPieces.length);
  canvas.dataset.columns = String(n);
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = String(value);
  o.textContent = label;
  return o;
}

async function main() {
  const $ = (id) => document.getElementById(id);
  const input = $("translate-input");
  const button = $("translate-button");
  const status = $("translate-status");
  const language = $("translate-language");
  if (!input || !button) return; // not the translator page
  const loadStart = performance.now();
  window.courseTranslator = {
    ready: model("de").then(() => true),
    translate: async (text, lang = "de") => translate(await model(lang), text),
    encode: async (text, lang = "de") => (await model(lang)).src.encodeIds(text),
    count: 0, // translations shown so far
  };
  let current;
  let last = null;
  const redraw = () =>
    last && drawMap($("attention-map"), last, current.manifest, Number($("layer-select").value), $("head-select").value);
  const useLanguage = async (lang) => {
    button.disabled = true;
    status.textContent = `Loading the ${lang === "zh" ? "Chinese" : "German"} model…`;
    try {
      current = await model(lang);
    } catch (error) {
      status.textContent = `The model could not be loaded: ${error.message}`;
      throw error;
    }
    const { layers, heads } = current.manifest;
    $("layer-select").replaceChildren(...[...Array(layers).keys()].map((l) => option(l, `layer ${l + 1}`)));
    $("head-select").replaceChildren(
      option("mean", "mean of the heads"),
      ...[...Array(heads).keys()].map((h) => option(h, `head ${h + 1}`)),
    );
    $("layer-select").value = String(layers - 1);
    input.lang = lang;
    document.querySelectorAll("[data-example]").forEach((b) => (b.hidden = b.dataset.lang !== lang));
  };
  $("layer-select").addEventListener("change", redraw);
  $("head-select").addEventListener("change", redraw);
  const run = async () => {
    const text = input.value.trim();
    if (!text) {
      status.textContent = "Type a sentence first.";
      return;
    }
    button.disabled = true;
    status.textContent = "translating…";
    try {
      last = await translate(current, text);
      window.courseTranslator.count += 1;
      $("translate-output").textContent = last.text;
      $("source-pieces").textContent = last.srcPieces.join(" ");
      $("output-pieces").textContent = last.outPieces.join(" ");
      status.textContent = `${last.outIds.length} tokens in ${last.ms.toFixed(0)} ms, computed in this browser`;
      redraw();
    } finally {
      button.disabled = false;
    }
  };
  button.addEventListener("click", run);
  input.addEventListener("keydown", (event) => event.key === "Enter" && run());
  language?.addEventListener("change", async () => {
    input.value = document.querySelector(`[data-example][data-lang="${language.value}"]`)?.dataset.example ?? "";
    await useLanguage(language.value);
    await run();
  });
  document.querySelectorAll("[data-example]").forEach((b) =>
    b.addEventListener("click", () => {
      input.value = b.dataset.example;
      run();
    }),
  );
  await useLanguage("de");
  window.courseTranslator.loadMs = performance.now() - loadStart;
  await run(); // the sentence already in the box, so that the page opens with a translation and its map
  status.textContent = `Model loaded in ${(window.courseTranslator.loadMs / 1000).toFixed(1)} s. ${status.textContent}`;
  button.disabled = false;
}

main();
