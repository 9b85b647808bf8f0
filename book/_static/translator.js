// "Try the translator": the released de->en model, exported to ONNX by transformer_lib.export, run in
// this page by onnxruntime-web (WebAssembly, one thread), tokenized by SentencePiece compiled to
// WebAssembly. Nothing leaves the browser. Greedy search is the loop of transformer_lib.export's
// greedy_translate_onnx: the encoder once, then one decoder step per output token, at most
// len(source) + 50 tokens, stopping at <eos>. Each step also returns the cross-attention of the new
// position (layers x heads x source length), drawn as the heat map.
import * as ort from "./vendor/onnxruntime-web/ort.wasm.min.mjs";
import { SentencePieceProcessor } from "./vendor/sentencepiece/sentencepiece.mjs";

const MODEL_DIR = new URL("./multi30k_de_en/", import.meta.url);
const MAX_EXTRA_LEN = 50; // as evaluate.translate
const MAX_SRC_LEN = 256;

ort.env.wasm.wasmPaths = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page, which a static host does not give

async function fetchBytes(name) {
  const response = await fetch(new URL(name, MODEL_DIR));
  if (!response.ok) throw new Error(`could not load ${name}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function tokenizer(name) {
  const sp = new SentencePieceProcessor();
  await sp._loadModel(await fetchBytes(name)); // the package's loader from bytes (its public ones read files or base64)
  return sp;
}

async function load() {
  const manifest = JSON.parse(new TextDecoder().decode(await fetchBytes("manifest.json")));
  const files = manifest.files;
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  const json = async (name) => JSON.parse(new TextDecoder().decode(await fetchBytes(name)));
  const [encoder, step, src, tgt, srcPieces, tgtPieces] = await Promise.all([
    fetchBytes(files.encoder).then((b) => ort.InferenceSession.create(b, options)),
    fetchBytes(files.decoder_step).then((b) => ort.InferenceSession.create(b, options)),
    tokenizer(files.src_tokenizer),
    tokenizer(files.tgt_tokenizer),
    json(files.src_pieces),
    json(files.tgt_pieces),
  ]);
  return { manifest, encoder, step, src, tgt, srcPieces, tgtPieces };
}

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
  const { layers, heads } = manifest;
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
  result.outPieces.forEach((piece, row) => {
    ctx.textAlign = "right";
    ctx.fillText(piece, left - 6, top + row * cell + 15);
    const w = result.weights[row];
    for (let k = 0; k < n; k++) {
      const heads_ = head === "mean" ? [...Array(heads).keys()] : [Number(head)];
      let value = 0;
      for (const h of heads_) value += w[(layer * heads + h) * n + k];
      value /= heads_.length;
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
  if (!input || !button) return; // not the translator page
  const loadStart = performance.now();
  const ready = load();
  window.courseTranslator = {
    ready: ready.then(() => true),
    translate: async (text) => translate(await ready, text),
    encode: async (text) => (await ready).src.encodeIds(text),
    count: 0, // translations shown so far
  };
  let model;
  try {
    model = await ready;
  } catch (error) {
    status.textContent = `The model could not be loaded: ${error.message}`;
    throw error;
  }
  const { layers, heads } = model.manifest;
  for (let l = 0; l < layers; l++) $("layer-select").append(option(l, `layer ${l + 1}`));
  $("head-select").append(option("mean", "mean of the heads"));
  for (let h = 0; h < heads; h++) $("head-select").append(option(h, `head ${h + 1}`));
  $("layer-select").value = String(layers - 1);
  let last = null;
  const redraw = () => last && drawMap($("attention-map"), last, model.manifest, Number($("layer-select").value), $("head-select").value);
  $("layer-select").addEventListener("change", redraw);
  $("head-select").addEventListener("change", redraw);
  const run = async () => {
    const text = input.value.trim();
    if (!text) {
      status.textContent = "Type a German sentence first.";
      return;
    }
    button.disabled = true;
    status.textContent = "translating…";
    try {
      last = await translate(model, text);
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
  document.querySelectorAll("[data-example]").forEach((b) =>
    b.addEventListener("click", () => {
      input.value = b.dataset.example;
      run();
    }),
  );
  window.courseTranslator.loadMs = performance.now() - loadStart;
  await run(); // the sentence already in the box, so that the page opens with a translation and its map
  status.textContent = `Model loaded in ${(window.courseTranslator.loadMs / 1000).toFixed(1)} s. ${status.textContent}`;
  button.disabled = false;
}

main();
