// Live versions of two explorers for the static book, where no Python kernel can redraw the
// ipywidgets ones: the positional encoding (chapter 3) and the masks of a batch (chapter 4) are
// plain arithmetic, so this page recomputes them in JavaScript from its own controls.
// The formulas are those of transformer_lib: embeddings.sinusoidal_positional_encoding and
// masks.padding_mask / causal_mask / target_mask (boolean, true = may attend).

// PE[pos, 2k] = sin(pos / 10000^(2k/d)), PE[pos, 2k+1] = cos(pos / 10000^(2k/d)); row-major (length, d).
export function positionalEncoding(length, d) {
  const pe = new Float32Array(length * d);
  for (let pos = 0; pos < length; pos++) {
    for (let k = 0; 2 * k < d; k++) {
      const angle = pos / Math.pow(10000, (2 * k) / d);
      pe[pos * d + 2 * k] = Math.sin(angle);
      if (2 * k + 1 < d) pe[pos * d + 2 * k + 1] = Math.cos(angle);
    }
  }
  return pe;
}

// For sentences of the given lengths padded to the longest: mask[b][q][k] (true = may attend).
export function batchMask(lengths, causal) {
  const longest = Math.max(...lengths);
  return lengths.map((n) =>
    Array.from({ length: longest }, (_, q) => Array.from({ length: longest }, (_, k) => k < n && (!causal || k <= q))),
  );
}

function colour(value) {
  // -1 blue, 0 white, +1 red
  const v = Math.max(-1, Math.min(1, value));
  const fade = Math.round(255 * (1 - Math.abs(v)));
  return v >= 0 ? `rgb(255,${fade},${fade})` : `rgb(${fade},${fade},255)`;
}

function slider(label, min, max, step, value) {
  const wrap = document.createElement("label");
  wrap.style.marginRight = "1em";
  const input = Object.assign(document.createElement("input"), { type: "range", min, max, step, value });
  const shown = document.createElement("span");
  shown.textContent = String(value);
  input.addEventListener("input", () => (shown.textContent = input.value));
  wrap.append(`${label} `, input, " ", shown);
  return { wrap, input };
}

function drawEncoding(canvas, length, d, dim) {
  const pe = positionalEncoding(length, d);
  const width = 512;
  const height = 260;
  canvas.width = width;
  canvas.height = height + 150;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const cw = width / d;
  const ch = height / length;
  for (let pos = 0; pos < length; pos++) {
    for (let i = 0; i < d; i++) {
      ctx.fillStyle = colour(pe[pos * d + i]);
      ctx.fillRect(i * cw, pos * ch, Math.ceil(cw), Math.ceil(ch));
    }
  }
  ctx.strokeStyle = "#000";
  ctx.strokeRect(dim * cw, 0, Math.max(cw, 1), height);
  // PE[:, dim] along the positions
  const top = height + 20;
  ctx.strokeStyle = "#888";
  ctx.beginPath();
  ctx.moveTo(0, top + 60);
  ctx.lineTo(width, top + 60);
  ctx.stroke();
  ctx.strokeStyle = "#c0392b";
  ctx.beginPath();
  for (let pos = 0; pos < length; pos++) {
    const x = (pos / Math.max(length - 1, 1)) * width;
    const y = top + 60 - 55 * pe[pos * d + dim];
    pos === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
  }
  ctx.stroke();
  ctx.fillStyle = "#222";
  ctx.font = "12px sans-serif";
  ctx.fillText(`rows: positions 0-${length - 1}; columns: dimensions 0-${d - 1}; red +1, blue -1`, 4, height + 14);
  ctx.fillText(`dimension ${dim} along the positions (${dim % 2 ? "cos" : "sin"}, wavelength `
    + `${(2 * Math.PI * Math.pow(10000, (dim - (dim % 2)) / d)).toFixed(1)} positions)`, 4, top + 140);
  Object.assign(canvas.dataset, { length, d, dim, checksum: pe.reduce((a, b) => a + b, 0).toFixed(4) });
}

function positionalEncodingExplorer(root) {
  const length = slider("positions", 1, 200, 1, 64);
  const d = slider("d_model", 8, 512, 8, 64);
  const dim = slider("dimension", 0, 63, 1, 0);
  const canvas = Object.assign(document.createElement("canvas"), { id: "live-pe-canvas" });
  const redraw = () => {
    dim.input.max = String(Number(d.input.value) - 1);
    if (Number(dim.input.value) > Number(dim.input.max)) dim.input.value = dim.input.max;
    drawEncoding(canvas, Number(length.input.value), Number(d.input.value), Number(dim.input.value));
  };
  for (const s of [length, d, dim]) s.input.addEventListener("input", redraw);
  length.input.id = "live-pe-length";
  d.input.id = "live-pe-d-model";
  dim.input.id = "live-pe-dimension";
  root.append(length.wrap, d.wrap, dim.wrap, document.createElement("br"), canvas);
  redraw();
}

function drawMasks(canvas, lengths, causal) {
  const masks = batchMask(lengths, causal);
  const longest = Math.max(...lengths);
  const cell = Math.max(8, Math.min(24, Math.floor(150 / longest)));
  const gap = 24;
  canvas.width = masks.length * (longest * cell + gap) + gap;
  canvas.height = longest * cell + 50;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px sans-serif";
  masks.forEach((mask, b) => {
    const left = gap + b * (longest * cell + gap);
    ctx.fillStyle = "#222";
    ctx.fillText(`sentence ${b + 1} (${lengths[b]} tokens)`, left, 14);
    mask.forEach((row, q) =>
      row.forEach((allowed, k) => {
        ctx.fillStyle = allowed ? "#2e86c1" : "#eee";
        ctx.fillRect(left + k * cell, 24 + q * cell, cell - 1, cell - 1);
      }),
    );
  });
  ctx.fillStyle = "#222";
  ctx.fillText("rows: queries, columns: keys; blue: may attend", gap, canvas.height - 6);
  const allowed = masks.flat(2).filter(Boolean).length;
  Object.assign(canvas.dataset, { sentences: masks.length, longest, allowed });
}

function maskExplorer(root) {
  const lengthsLabel = document.createElement("label");
  const lengths = Object.assign(document.createElement("input"), { id: "live-mask-lengths", value: "5, 3, 4", size: 12 });
  lengthsLabel.append("sentence lengths ", lengths);
  const causalLabel = document.createElement("label");
  causalLabel.style.marginLeft = "1em";
  const causal = Object.assign(document.createElement("input"), { id: "live-mask-causal", type: "checkbox" });
  causalLabel.append(causal, " causal (the decoder's self-attention)");
  const message = Object.assign(document.createElement("p"), { id: "live-mask-message" });
  const canvas = Object.assign(document.createElement("canvas"), { id: "live-mask-canvas" });
  const redraw = () => {
    const parsed = lengths.value.split(/[\s,]+/).filter(Boolean).map(Number);
    if (!parsed.length || parsed.some((n) => !Number.isInteger(n) || n < 1 || n > 40) || parsed.length > 6) {
      message.textContent = "Give 1 to 6 lengths, whole numbers from 1 to 40, e.g. 5, 3, 4.";
      return;
    }
    message.textContent = "";
    drawMasks(canvas, parsed, causal.checked);
  };
  lengths.addEventListener("input", redraw);
  causal.addEventListener("change", redraw);
  root.append(lengthsLabel, causalLabel, message, canvas);
  redraw();
}

window.courseExplorers = { positionalEncoding, batchMask };
for (const root of document.querySelectorAll("[data-live-explorer]")) {
  ({ "positional-encoding": positionalEncodingExplorer, masks: maskExplorer })[root.dataset.liveExplorer]?.(root);
}
