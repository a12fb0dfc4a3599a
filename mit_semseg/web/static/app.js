// mit_semseg web demo: upload -> POST api/segment -> overlay, legend, hover readout.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],        // from api/models
  file: null,        // the current photo (File/Blob)
  photo: null,       // HTMLImageElement of it (EXIF orientation applied by the browser)
  result: null,      // the last api/segment answer
  labels: null,      // Int32Array of 0-based class ids, width*height
  confidence: null,  // Uint8Array, round(255 * probability of the pixel's class), or null
  highlight: null,   // class id shown alone, or null
  maxUploadBytes: 0, // the server's --max-upload-mb
  busy: false,
  again: false,      // options changed while a request ran
};

// The confidence layer's colour ramp (dark purple: unsure, yellow: sure); style.css
// draws the same stops in the legend scale.
const CONF_STOPS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const CONF_LUT = (() => {
  const stops = CONF_STOPS.map(hexToRgb);
  const lut = [];
  for (let v = 0; v < 256; v++) {
    const t = (v / 255) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(t));
    const f = t - i;
    lut.push(stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f)));
  }
  return lut;
})();

function confidenceOn() { return $("confidence").checked && state.confidence !== null; }

function show(el, on) { el.hidden = !on; }
function setError(message) { $("error").textContent = message || ""; show($("error"), !!message); }
function setStatus(message) { $("status").textContent = message || ""; }

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function currentModel() {
  const name = $("model").value;
  return state.models.find((m) => m.name === name) || state.models[0];
}

function describeScales() {
  const m = currentModel();
  if (!m) return;
  $("single-label").textContent = `single (${m.single_size})`;
  $("multi-label").textContent = `multi (${m.img_sizes.join(", ")})`;
}

async function loadModels() {
  try {
    const res = await fetch("api/models");
    const body = await res.json();
    if (!res.ok) throw new Error(body.detail || res.statusText);
    state.models = body.models;
    state.maxUploadBytes = body.max_upload_mb * 1024 * 1024;
    const select = $("model");
    for (const m of body.models) {
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = `${m.name} (${m.num_class} classes)`;
      select.appendChild(opt);
    }
    select.value = body.default;
    show($("model-box"), body.models.length > 1);
    describeScales();
  } catch (err) {
    setError(`Cannot list the models: ${err.message}`);
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = src;
  });
}

async function choose(file) {
  if (!file) return;
  state.file = file;
  state.highlight = null;
  setError("");
  if (state.photo) URL.revokeObjectURL(state.photo.src);
  try {
    state.photo = await loadImage(URL.createObjectURL(file));
  } catch (err) {
    state.photo = null;  // the server still answers (e.g. with why it is not an image)
  }
  segment();
}

async function segment() {
  if (!state.file) return;
  if (state.busy) { state.again = true; return; }
  if (state.maxUploadBytes && state.file.size > state.maxUploadBytes) {
    // the server would refuse it too (413), possibly before the browser could read why
    setError(`${state.file.name || "the photo"}: ${(state.file.size / 1048576).toFixed(1)} MB is above `
      + `the server's upload limit of ${state.maxUploadBytes / 1048576} MB`);
    return;
  }
  state.busy = true;
  const params = new URLSearchParams({
    model: currentModel() ? currentModel().name : "",
    scales: document.querySelector("input[name=scales]:checked").value,
    flip: $("flip").checked ? "true" : "false",
    confidence: $("confidence").checked ? "true" : "false",
  });
  const job = newJobId();
  params.set("job", job);
  const form = new FormData();
  form.append("file", state.file, state.file.name || "pasted.png");
  setStatus("Segmenting…");
  document.body.classList.add("working");
  const t0 = performance.now();
  const poll = watchProgress(job);
  try {
    const res = await fetch(`api/segment?${params}`, { method: "POST", body: form });
    let body;
    try { body = await res.json(); } catch (e) { body = { detail: `${res.status} ${res.statusText}` }; }
    if (!res.ok) throw new Error(body.detail || `${res.status} ${res.statusText}`);
    await showResult(body, performance.now() - t0);
    setStatus("");
  } catch (err) {
    setStatus("");
    setError(err.message);
  } finally {
    poll.stop();
    state.busy = false;
    document.body.classList.remove("working");
    if (state.again) { state.again = false; segment(); }
  }
}

function newJobId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

// While a long request runs, show how far it is (api/progress: tiles in slide
// mode, network runs and the fusion otherwise); nothing for quick ones.
function watchProgress(job) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      const res = await fetch(`api/progress/${job}`);
      if (res.ok && !stopped) {
        const p = await res.json();
        const what = p.state === "running" && p.total > 0
          ? `${p.done}/${p.total} ${p.unit}s` : p.state;
        setStatus(`Segmenting… ${what} (${p.elapsed_s.toFixed(0)} s)`);
      }
    } catch (err) { /* the answer itself reports errors */ }
    if (!stopped) timer = setTimeout(tick, 1000);
  };
  timer = setTimeout(tick, 1000);
  return { stop() { stopped = true; clearTimeout(timer); } };
}

async function decodeLabels(result, numClass) {
  // The label PNG holds class id + 1 per pixel: 8-bit grayscale up to 255 classes
  // (red = value), else fetched packed in RGB (value = red + 256 * green).
  const packed = numClass > 255;
  const rgba = await pixelsOf(packed ? `${result.labels_url}?encoding=rgb`
                                     : `data:image/png;base64,${result.labels_png}`, result);
  const labels = new Int32Array(result.width * result.height);
  for (let i = 0, j = 0; i < labels.length; i++, j += 4) {
    labels[i] = (packed ? rgba[j] + 256 * rgba[j + 1] : rgba[j]) - 1;
  }
  return labels;
}

async function pixelsOf(url, result) {
  // the RGBA bytes of the PNG at url, drawn at the result's size
  const img = await loadImage(url);
  const canvas = document.createElement("canvas");
  canvas.width = result.width;
  canvas.height = result.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, result.width, result.height).data;
}

async function decodeConfidence(result) {
  // 8-bit grayscale PNG, value round(255 * probability)
  if (!result.confidence_png) return null;
  const rgba = await pixelsOf(`data:image/png;base64,${result.confidence_png}`, result);
  const conf = new Uint8Array(result.width * result.height);
  for (let i = 0, j = 0; i < conf.length; i++, j += 4) conf[i] = rgba[j];
  return conf;
}

async function showResult(result, roundTripMs) {
  const model = state.models.find((m) => m.name === result.model);
  state.labels = await decodeLabels(result, model ? model.num_class : 0);
  state.confidence = await decodeConfidence(result);
  state.result = result;
  state.highlight = null;
  if (!state.photo || state.photo.naturalWidth !== result.width
      || state.photo.naturalHeight !== result.height) {
    // the browser could not show the photo, or oriented it differently: show the server's copy
    state.photo = await loadImage(result.result_url).then((pair) => cropLeft(pair, result));
  }
  for (const id of ["photo", "overlay", "labels"]) {
    $(id).width = result.width;
    $(id).height = result.height;
  }
  $("photo").getContext("2d").drawImage(state.photo, 0, 0, result.width, result.height);
  paintLabels();
  buildLegend();
  $("dl-result").href = result.result_url;
  $("dl-labels").href = result.labels_url;
  const how = result.mode === "slide" ? `slide mode, ${result.steps} tiles`
    : `scales ${result.scales.join(", ")}`;
  const sure = result.mean_confidence === undefined ? ""
    : ` · mean confidence ${(result.mean_confidence * 100).toFixed(1)}%`;
  $("timing").textContent = `${result.width}×${result.height} px · ${result.model} · ${how}`
    + `${result.flip ? " + flip" : ""} · ${(result.time_ms / 1000).toFixed(2)} s on the server`
    + ` (inference ${(result.inference_ms / 1000).toFixed(2)} s), ${(roundTripMs / 1000).toFixed(2)} s in all`
    + sure;
  show($("result"), true);
  fit();
}

function cropLeft(pair, result) {
  const c = document.createElement("canvas");
  c.width = result.width;
  c.height = result.height;
  c.getContext("2d").drawImage(pair, 0, 0);
  return c;
}

function paintLabels() {
  const { result, labels, highlight } = state;
  if (!result || !labels) return;
  const conf = confidenceOn() ? state.confidence : null;
  show($("conf-scale"), conf !== null);
  const palette = new Map(result.classes.map((c) => [c.id, hexToRgb(c.color)]));
  const n = result.width * result.height;
  const over = new ImageData(result.width, result.height);
  const flat = new ImageData(result.width, result.height);
  const o = over.data, f = flat.data;
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const k = labels[i];
    const rgb = conf ? CONF_LUT[conf[i]] : palette.get(k) || [0, 0, 0];
    const on = highlight === null || k === highlight;
    if (on) {
      o[j] = rgb[0]; o[j + 1] = rgb[1]; o[j + 2] = rgb[2]; o[j + 3] = 255;
      f[j] = rgb[0]; f[j + 1] = rgb[1]; f[j + 2] = rgb[2];
    } else {  // dimmed: darken the photo in the overlay, grey out the flat map
      o[j] = 0; o[j + 1] = 0; o[j + 2] = 0; o[j + 3] = 170;
      f[j] = 0.2 * rgb[0] + 190; f[j + 1] = 0.2 * rgb[1] + 190; f[j + 2] = 0.2 * rgb[2] + 190;
    }
    f[j + 3] = 255;
  }
  $("overlay").getContext("2d").putImageData(over, 0, 0);
  $("labels").getContext("2d").putImageData(flat, 0, 0);
  setOpacity();
}

function setOpacity() {
  $("overlay").style.opacity = String($("opacity").value / 100);
}

function buildLegend() {
  const ol = $("legend");
  ol.textContent = "";
  for (const c of state.result.classes) {
    const li = document.createElement("li");
    li.dataset.id = String(c.id);
    li.title = `${c.pixels} pixels`
      + (c.confidence === undefined ? "" : `, mean confidence ${(c.confidence * 100).toFixed(1)}%`);
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = c.color;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${c.percent.toFixed(2)}%`;
    li.append(sw, name, pct);
    li.addEventListener("click", () => {
      state.highlight = state.highlight === c.id ? null : c.id;
      markLegend();
      paintLabels();
    });
    ol.appendChild(li);
  }
  markLegend();
}

function markLegend() {
  for (const li of $("legend").children) {
    const id = Number(li.dataset.id);
    li.classList.toggle("active", state.highlight === id);
    li.classList.toggle("dimmed", state.highlight !== null && state.highlight !== id);
  }
}

function hover(ev) {
  const { result, labels } = state;
  const readout = $("readout");
  if (!result) return;
  const rect = ev.target.getBoundingClientRect();
  const x = Math.floor(((ev.clientX - rect.left) / rect.width) * result.width);
  const y = Math.floor(((ev.clientY - rect.top) / rect.height) * result.height);
  if (x < 0 || y < 0 || x >= result.width || y >= result.height) { leave(); return; }
  if (!labels) return;
  const k = labels[y * result.width + x];
  const cls = result.classes.find((c) => c.id === k);
  const text = cls ? cls.name : `class ${k}`;
  readout.dataset.classId = String(k);
  readout.dataset.x = String(x);
  readout.dataset.y = String(y);
  readout.textContent = `${text} (${x}, ${y})`;
  if (confidenceOn()) {
    const v = state.confidence[y * result.width + x];
    readout.dataset.confidence = String(v);
    readout.textContent += ` · confidence ${Math.round((v / 255) * 100)}%`;
  } else {
    delete readout.dataset.confidence;
  }
  const stage = $("stage").getBoundingClientRect();
  readout.style.left = `${ev.clientX - stage.left + 12}px`;
  readout.style.top = `${ev.clientY - stage.top + 12}px`;
  readout.classList.add("on");
}

function leave() { $("readout").classList.remove("on"); }

function setView() {
  const view = document.querySelector("input[name=view]:checked").value;
  $("stage").className = view;
  show($("opacity-box"), view === "overlay");
  fit();
}

function fit() {
  // Display size of the canvases: the whole photo fits the stage's width (half of
  // it per pane side by side, unless the panes stack) and the window's height.
  const stage = $("stage");
  if (!state.result || $("result").hidden) return;
  // twice when the first size made a scroll bar appear (a narrower stage)
  for (let i = 0; i < 2; i++) {
    const before = stage.clientWidth;
    fitOnce(stage);
    if (stage.clientWidth >= before) break;
  }
}

function fitOnce(stage) {
  const { result } = state;
  const stacked = getComputedStyle(stage).flexDirection === "column";
  const side = stage.classList.contains("side") && !stacked;
  const gap = side ? parseFloat(getComputedStyle(stage).columnGap) || 0 : 0;
  const width = (stage.clientWidth - gap) / (side ? 2 : 1);
  // tall enough to fill the window below the view controls once scrolled to them
  const height = Math.max(160, window.innerHeight - $("view-controls").offsetHeight - 24);
  const scale = Math.min(width / result.width, height / result.height);
  for (const id of ["photo", "overlay", "labels"]) {
    $(id).style.width = `${Math.floor(result.width * scale)}px`;
    $(id).style.height = `${Math.floor(result.height * scale)}px`;
  }
}

function wire() {
  $("file").addEventListener("change", (ev) => choose(ev.target.files[0]));
  // a photo dropped anywhere on the page is segmented (instead of the browser opening it)
  window.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", (ev) => {
    if (!ev.relatedTarget) document.body.classList.remove("dragging");
  });
  window.addEventListener("drop", (ev) => {
    ev.preventDefault();
    document.body.classList.remove("dragging");
    if (ev.dataTransfer.files[0]) choose(ev.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (ev) => {
    const item = [...ev.clipboardData.items].find((it) => it.kind === "file");
    if (item) choose(item.getAsFile());
  });
  $("model").addEventListener("change", () => { describeScales(); segment(); });
  for (const el of document.querySelectorAll("input[name=scales]")) el.addEventListener("change", segment);
  $("flip").addEventListener("change", segment);
  for (const el of document.querySelectorAll("input[name=view]")) el.addEventListener("change", setView);
  $("opacity").addEventListener("input", setOpacity);
  $("confidence").addEventListener("change", () => {
    // the map comes with a segmentation: ask again when the current result has none
    if ($("confidence").checked && state.result && !state.result.confidence_png) segment();
    else paintLabels();
  });
  window.addEventListener("resize", fit);
  for (const id of ["overlay", "labels", "photo"]) {
    $(id).addEventListener("pointermove", hover);
    $(id).addEventListener("pointerdown", hover);
    $(id).addEventListener("pointerleave", leave);
  }
  setView();
}

wire();
loadModels();
