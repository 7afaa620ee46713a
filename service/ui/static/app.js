// The mcdropout playground: plain JS over the v1 JSON API, SVG plots, no external assets.
"use strict";

const view = document.getElementById("view");
const keyInput = document.getElementById("api-key");
const SVGNS = "http://www.w3.org/2000/svg";
// sklearn's first "0" of the digits data (grey levels 0..16): the image models' opening example.
const DIGIT_ZERO = [
  [0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
  [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0], [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0],
];
const INK = 16;
const BAND_POINTS = 81;

keyInput.value = localStorage.getItem("mcdropout-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("mcdropout-key", keyInput.value); route(); });
window.addEventListener("hashchange", route);
route();

// -- helpers ------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x, digits = 3) {
  if (typeof x !== "number") return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return x.toFixed(digits);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h.Authorization = "Bearer " + keyInput.value;
  return h;
}

async function api(path, body) {
  const options = { headers: headers() };
  if (body !== undefined) { options.method = "POST"; options.body = JSON.stringify(body); }
  const response = await fetch(path, options);
  let content;
  try { content = await response.json(); } catch (e) { content = { error: `HTTP ${response.status}` }; }
  return { ok: response.ok, status: response.status, body: content };
}

function headlineMetrics(metrics) {
  const mc = (metrics && metrics.mc) || {};
  const names = ["accuracy", "ece", "rmse", "nll", "coverage_95", "brier"];
  const shown = names.filter((n) => typeof mc[n] === "number").map((n) => `${n} ${fmt(mc[n])}`);
  if (metrics && metrics.test_rows) shown.push(`${metrics.test_rows} test rows`);
  return shown;
}

function modelKind(info) {
  const shape = info.input_shape || [];
  if (shape.length === 3) return "image";
  if (shape.length === 1 && shape[0] === 1 && info.task === "regression") return "oned";
  if (shape.length === 1 && info.feature_names) return "table";
  return "json";
}

// -- the model list -----------------------------------------------------------------------------

async function route() {
  const match = location.hash.match(/^#\/models\/([^/]+)$/);
  if (match) return modelPage(decodeURIComponent(match[1]));
  return listPage();
}

async function listPage() {
  document.title = "mcdropout playground";
  const answer = await api("/v1/models");
  view.replaceChildren(el("h1", { text: "Models" }));
  if (!answer.ok) { view.append(el("p", { id: "error", text: answer.body.error })); return; }
  const table = el("table", { class: "models", id: "model-list" });
  table.append(el("tr", {}, ...["name", "version", "task", "description", "held-out metrics (MC)", "status"]
    .map((h) => el("th", { text: h }))));
  for (const m of answer.body.models) {
    const row = el("tr", { "data-model": m.name });
    const name = m.status === "ready" ? el("a", { href: `#/models/${encodeURIComponent(m.name)}`, text: m.name })
      : el("span", { text: m.name });
    const metrics = el("td", {}, ...headlineMetrics(m.metrics).map((t) => el("span", { class: "metric", text: t })));
    const status = m.status === "ready" ? el("td", { class: "status-ready", text: "ready" })
      : el("td", {}, el("span", { class: "status-failed", text: "failed" }), el("br"), el("span", { text: m.error || "" }));
    row.append(el("td", {}, name), el("td", { text: m.version || "" }), el("td", { text: m.task || "" }),
      el("td", { text: m.description || "" }), metrics, status);
    table.append(row);
  }
  view.append(table);
}

// -- the model page -----------------------------------------------------------------------------

async function modelPage(name) {
  document.title = `${name} · mcdropout playground`;
  const [infoAnswer, exampleAnswer] = await Promise.all([api(`/v1/models/${encodeURIComponent(name)}`),
    api(`/ui/example/${encodeURIComponent(name)}`)]);
  view.replaceChildren(el("p", {}, el("a", { href: "#/", text: "← all models" })));
  if (!infoAnswer.ok || infoAnswer.body.status !== "ready") {
    view.append(el("p", { id: "error", text: infoAnswer.body.error || "this model failed to load" }));
    return;
  }
  const info = infoAnswer.body;
  const example = exampleAnswer.ok ? exampleAnswer.body : { inputs: null, source: "none" };
  const page = new ModelPage(info, example);
  view.append(page.render());
  await page.predict();
}

class ModelPage {
  constructor(info, example) {
    this.info = info;
    this.kind = modelKind(info);
    this.example = example;
    this.fields = {};  // request field -> its input element
  }

  render() {
    const info = this.info;
    const head = el("div", { class: "panel" },
      el("h1", { text: `${info.name} ` }, el("span", { class: "muted", text: `v${info.version} · ${info.task}` })),
      el("div", { text: info.description || "" }),
      el("div", { class: "muted" }, ...headlineMetrics(info.metrics).map((t) => el("span", { class: "metric", text: t }))));
    const left = el("div", {}, this.renderControls(), this.renderInput());
    this.result = el("div", { id: "result" });
    const right = el("div", {}, el("div", { class: "panel" }, el("h2", { text: "Prediction" }), this.result),
      this.renderCode());
    return el("div", {}, head, el("div", { class: "layout" }, left, right));
  }

  field(name, input) {
    input.setAttribute("data-field", name);
    this.fields[name] = input;
    const error = el("span", { class: "field-error", "data-error-for": name });
    return [input, error];
  }

  renderControls() {
    const info = this.info;
    const box = el("div", { class: "controls" });
    const add = (label, name, value, extra = {}) => {
      const input = el("input", { id: name, value: String(value), ...extra });
      box.append(el("label", {}, label, ...this.field(name, input)));
    };
    add(`T samples (≤ ${info.max_samples})`, "samples", info.default_samples);
    add("seed", "seed", 0);
    add("interval level", "interval", 0.95);
    const go = el("button", { id: "predict", text: "Predict" });
    go.addEventListener("click", () => this.predict());
    box.append(el("label", {}, " ", go));
    return el("div", { class: "panel" }, el("h2", { text: "Sampling" }), box);
  }

  renderInput() {
    const panel = el("div", { class: "panel", id: "input-panel" });
    const source = el("div", { class: "muted", text: `opening example: ${this.example.source}` });
    if (this.kind === "table") {
      panel.append(el("h2", { text: "Features" }), source);
      const grid = el("div", { class: "features" });
      const row = this.example.inputs || [];
      this.info.feature_names.forEach((feature, j) => {
        const input = el("input", { name: feature, value: row[j] === undefined ? "0" : String(+row[j].toPrecision(6)) });
        grid.append(el("label", { text: feature, title: feature }), ...this.field(`instances[0].${feature}`, input));
      });
      panel.append(grid);
    } else if (this.kind === "image") {
      panel.append(el("h2", { text: "Draw a digit" }), source, this.renderCanvas());
    } else if (this.kind === "oned") {
      const { min, max, value } = this.sliderRange();
      this.slider = el("input", { type: "range", id: "x", min, max, step: (max - min) / 200, value });
      this.sliderLabel = el("span", { text: `x = ${fmt(value)}` });
      this.slider.addEventListener("input", () => { this.sliderLabel.textContent = `x = ${fmt(+this.slider.value)}`; });
      this.slider.addEventListener("change", () => this.predict());
      panel.append(el("h2", { text: this.info.feature_names ? this.info.feature_names[0] : "x" }), source,
        el("div", { class: "slider" }, this.sliderLabel, ...this.field("inputs", this.slider)),
        el("div", { class: "muted", text: `the band is drawn over ${BAND_POINTS} points of this range; the last row is x` }));
    } else {
      const text = el("textarea", { id: "json-input" });
      text.value = JSON.stringify([this.example.inputs]);
      panel.append(el("h2", { text: `Inputs (JSON list of rows, each of shape [${this.info.input_shape}])` }), source,
        ...this.field("inputs", text));
    }
    return panel;
  }

  sliderRange() {
    const centre = this.example.inputs ? this.example.inputs[0] : 0;
    // The training range is not in the API; ±6 around the mean covers the shipped 1-D model's data and its gap.
    return { min: centre - 6, max: centre + 6, value: centre };
  }

  renderCanvas() {
    const [, height, width] = this.info.input_shape;
    const cell = Math.floor(224 / Math.max(height, width));
    const canvas = el("canvas", { id: "draw", width: width * cell, height: height * cell });
    this.pixels = Array.from({ length: height }, (_, i) => Array.from({ length: width }, (_, j) =>
      height === 8 && width === 8 ? DIGIT_ZERO[i][j] : 0));
    const paint = () => {
      const g = canvas.getContext("2d");
      for (let i = 0; i < height; i++) for (let j = 0; j < width; j++) {
        const v = Math.round(255 * this.pixels[i][j] / INK);
        g.fillStyle = `rgb(${v},${v},${v})`;
        g.fillRect(j * cell, i * cell, cell, cell);
      }
    };
    let drawing = false;
    const ink = (event) => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor((event.clientX - box.left) / cell), i = Math.floor((event.clientY - box.top) / cell);
      if (i < 0 || j < 0 || i >= height || j >= width) return;
      this.pixels[i][j] = INK;
      for (const [di, dj] of [[0, 1], [1, 0], [0, -1], [-1, 0]]) {
        const a = i + di, b = j + dj;
        if (a >= 0 && b >= 0 && a < height && b < width) this.pixels[a][b] = Math.max(this.pixels[a][b], INK / 2);
      }
      paint();
    };
    canvas.addEventListener("pointerdown", (e) => { drawing = true; ink(e); });
    canvas.addEventListener("pointermove", (e) => { if (drawing) ink(e); });
    window.addEventListener("pointerup", () => { if (drawing) { drawing = false; } });
    const clear = el("button", { class: "secondary", id: "clear", text: "Clear" });
    clear.addEventListener("click", () => { this.pixels.forEach((r) => r.fill(0)); paint(); });
    paint();
    const [input, error] = this.field("inputs", canvas);
    return el("div", {}, input, clear, error, el("div", { class: "muted", text: "draw, then press Predict" }));
  }

  // -- the request -----------------------------------------------------------------------------

  number(text, integer) {
    const t = text.trim();
    if (t === "auto") return t;
    if (t !== "" && !isNaN(Number(t)) && (!integer || Number.isInteger(Number(t)))) return Number(t);
    return t;  // sent as typed: the server's 422 names the field
  }

  request() {
    const body = {};
    if (this.kind === "table") {
      const row = {};
      for (const feature of this.info.feature_names) row[feature] = this.number(this.fields[`instances[0].${feature}`].value, false);
      body.instances = [row];
    } else if (this.kind === "image") {
      body.inputs = [[this.pixels.map((r) => r.slice())]];
    } else if (this.kind === "oned") {
      const { min, max } = this.sliderRange();
      const grid = Array.from({ length: BAND_POINTS }, (_, k) => [+(min + (max - min) * k / (BAND_POINTS - 1)).toFixed(4)]);
      body.inputs = [...grid, [+this.slider.value]];
    } else {
      try { body.inputs = JSON.parse(this.fields.inputs.value); } catch (e) { body.inputs = this.fields.inputs.value; }
    }
    body.samples = this.number(this.fields.samples.value, true);
    body.seed = this.number(this.fields.seed.value, true);
    body.interval = this.number(this.fields.interval.value, false);
    body.return_samples = true;
    return body;
  }

  async predict() {
    const body = this.request();
    this.showCode(body);
    this.clearErrors();
    this.result.setAttribute("data-state", "waiting");
    const answer = await api(`/v1/models/${encodeURIComponent(this.info.name)}/predict`, body);
    window.lastRequest = body;
    window.lastAnswer = answer;
    window.predictions = (window.predictions || 0) + 1;  // lets a watcher tell this answer from the last
    if (!answer.ok) return this.showError(answer.body);
    this.result.replaceChildren();
    this.result.append(el("div", { class: "muted" }, "samples: ", el("b", { id: "answer-samples", text: String(answer.body.samples) }),
      ` · seed ${answer.body.seed} · rows ${answer.body.samples_used.length}`));
    if (this.info.task === "classification") this.showClassification(answer.body);
    else if (this.kind === "oned") this.showBand(answer.body);
    else this.showRegression(answer.body, 0);
    const raw = el("details", {}, el("summary", { text: "the answer as JSON (draws left out)" }),
      el("pre", { text: JSON.stringify({ ...answer.body, draws: undefined }, null, 1) }));
    this.result.append(raw);
    this.result.setAttribute("data-state", "done");
  }

  clearErrors() {
    for (const node of document.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of document.querySelectorAll(".bad")) node.classList.remove("bad");
  }

  showError(body) {
    const field = body.field || "";
    // The longest field name that starts the server's (inputs[0][3] -> inputs) shows the message.
    const name = Object.keys(this.fields).filter((f) => field === f || field.startsWith(f + "[") || field.startsWith(f + "."))
      .sort((a, b) => b.length - a.length)[0];
    this.result.replaceChildren(el("p", { id: "error", text: body.error }));
    this.result.setAttribute("data-state", "error");
    if (name) {
      this.fields[name].classList.add("bad");
      document.querySelector(`[data-error-for="${CSS.escape(name)}"]`).textContent = body.error;
    }
  }

  // -- the answer --------------------------------------------------------------------------------

  showRegression(answer, row) {
    const outputs = answer.outputs;
    outputs.forEach((output, k) => {
      const mean = answer.mean[row][k], lo = answer.interval.lower[row][k], hi = answer.interval.upper[row][k];
      const stats = el("div", { class: "stats" },
        stat(`${output} mean`, fmt(mean)), stat(`${fmt(100 * answer.interval.level, 0)}% interval`, `${fmt(lo)} … ${fmt(hi)}`),
        stat("std", fmt(answer.std[row][k])), stat("epistemic std", fmt(Math.sqrt(answer.epistemic_variance[row][k]))),
        stat("aleatoric std", fmt(Math.sqrt(answer.aleatoric_variance[row][k]))));
      const draws = answer.draws ? answer.draws[row].map((d) => d[k]) : [];
      this.result.append(stats, histogram(draws, mean, lo, hi, answer.std[row][k]));
    });
  }

  showClassification(answer) {
    const k = answer.classes.length || answer.probs[0].length;
    const maxEntropy = Math.log(k);
    const reference = (this.info.metrics && this.info.metrics.mc && this.info.metrics.mc.mean_mutual_information);
    const stats = el("div", { class: "stats" },
      stat("predicted", answer.class_name[0]),
      stat(`entropy (max ln ${k} = ${fmt(maxEntropy)})`, fmt(answer.entropy[0])),
      stat(reference ? `mutual information (held-out mean ${fmt(reference)})` : "mutual information", fmt(answer.mutual_information[0])),
      stat("variation ratio", fmt(answer.variation_ratio[0])));
    this.result.append(stats, probabilityStrips(answer));
  }

  showBand(answer) {
    const n = answer.mean.length - 1;  // the last row is the slider's x
    const xs = this.request().inputs.slice(0, n).map((r) => r[0]);
    this.result.append(band(xs, answer, n, +this.slider.value), el("h2", { text: `at x = ${fmt(+this.slider.value)}` }));
    this.showRegression(answer, n);
  }

  // -- the same request as code ----------------------------------------------------------------

  renderCode() {
    this.curl = el("pre", { id: "curl" });
    this.python = el("pre", { id: "python" });
    const copy = (node) => {
      const button = el("button", { class: "secondary", text: "copy" });
      button.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(node.textContent));
      return button;
    };
    return el("div", { class: "panel" }, el("h2", { text: "The same request" }),
      el("div", {}, "curl ", copy(this.curl)), this.curl, el("div", {}, "Python ", copy(this.python)), this.python);
  }

  showCode(body) {
    const origin = location.origin;
    const auth = keyInput.value ? ` \\\n  -H 'Authorization: Bearer ${keyInput.value}'` : "";
    this.curl.textContent = `curl -s ${origin}/v1/models/${this.info.name}/predict \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d '${JSON.stringify(body)}'`;
    const inputs = body.instances ? `pandas.DataFrame(${JSON.stringify(body.instances)})` : JSON.stringify(body.inputs);
    const key = keyInput.value ? JSON.stringify(keyInput.value) : "None";
    const imports = body.instances ? "import pandas\n" : "";
    this.python.textContent = `${imports}from mcdropout.client import Client\n\nwith Client(${JSON.stringify(origin)}, api_key=${key}) as client:\n` +
      `    result = client.predict(${JSON.stringify(this.info.name)}, ${inputs},\n` +
      `                            samples=${JSON.stringify(body.samples)}, seed=${JSON.stringify(body.seed)}, interval=${JSON.stringify(body.interval)})\n` +
      (this.info.task === "classification" ? "    print(result.probs, result.entropy, result.mutual_information)\n"
        : "    print(result.mean, result.lower, result.upper)\n");
  }
}

function stat(label, value) {
  return el("div", { class: "stat" }, el("b", { text: value }), el("span", { text: label }));
}

// -- plots (SVG) --------------------------------------------------------------------------------

function axisX(plot, scale, lo, hi, y, ticks = 5) {
  for (let t = 0; t <= ticks; t++) {
    const v = lo + (hi - lo) * t / ticks;
    plot.append(svg("line", { x1: scale(v), x2: scale(v), y1: y, y2: y + 4, stroke: "#7d8799" }),
      svg("text", { x: scale(v), y: y + 16, "text-anchor": "middle" }, fmt(v, 2)));
  }
  plot.append(svg("line", { x1: scale(lo), x2: scale(hi), y1: y, y2: y, stroke: "#7d8799" }));
}

function histogram(draws, mean, lo, hi, std) {
  const W = 720, H = 260, L = 40, R = 20, T = 20, B = 40;
  const plot = svg("svg", { id: "histogram", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const span = Math.max(...draws, hi) - Math.min(...draws, lo) || 1;
  const min = Math.min(...draws, lo) - 0.05 * span, max = Math.max(...draws, hi) + 0.05 * span;
  const x = (v) => L + (W - L - R) * (v - min) / (max - min);
  // Bins over the draws' own range, so that their (epistemic) spread shows even when the interval is far wider.
  const dmin = Math.min(...draws), dmax = Math.max(...draws), dspan = (dmax - dmin) || 1e-9;
  const bins = Math.max(8, Math.min(30, Math.round(Math.sqrt(draws.length) * 2)));
  const width = dspan / bins;
  const counts = new Array(bins).fill(0);
  for (const d of draws) counts[Math.min(bins - 1, Math.floor((d - dmin) / width))]++;
  const top = Math.max(...counts, 1);
  const y = (c) => H - B - (H - B - T) * c / top;
  plot.append(svg("rect", { x: x(lo), width: x(hi) - x(lo), y: T, height: H - B - T, fill: "#f2a541", opacity: 0.15 }));
  counts.forEach((c, i) => plot.append(svg("rect", {
    class: "bar", x: x(dmin + i * width), width: Math.max(1, x(dmin + (i + 1) * width) - x(dmin + i * width) - 1),
    y: y(c), height: H - B - y(c), fill: "#2f67cf", opacity: 0.8,
  })));
  // The predictive density (epistemic + aleatoric), on the histogram's count scale.
  const density = (v) => Math.exp(-0.5 * ((v - mean) / std) ** 2) / (std * Math.sqrt(2 * Math.PI));
  const scale = draws.length * width;
  const curve = Array.from({ length: 121 }, (_, i) => min + (max - min) * i / 120)
    .map((v) => `${x(v)},${Math.max(T, y(scale * density(v)))}`);
  plot.append(svg("path", { d: "M" + curve.join("L"), fill: "none", stroke: "#d9822b", "stroke-width": 1.5 }));
  plot.append(svg("line", { x1: x(mean), x2: x(mean), y1: T, y2: H - B, stroke: "#1d2b45", "stroke-width": 2 }));
  for (const v of [lo, hi]) plot.append(svg("line", { x1: x(v), x2: x(v), y1: T, y2: H - B, stroke: "#d9822b", "stroke-dasharray": "4 3" }));
  axisX(plot, x, min, max, H - B);
  plot.append(svg("text", { x: L, y: 12 }, `blue: the ${draws.length} MC draws (epistemic); orange: predictive density and interval (+ aleatoric)`));
  return plot;
}

function probabilityStrips(answer) {
  const classes = answer.classes.length ? answer.classes : answer.probs[0].map((_, i) => String(i));
  const rowH = 26, W = 720, L = 110, R = 60, T = 22;
  const H = T + rowH * classes.length + 30;
  const plot = svg("svg", { id: "probs", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const x = (p) => L + (W - L - R) * p;
  plot.append(svg("text", { x: L, y: 12 }, "mean probability per class (bar) and each MC sample's probability (dots)"));
  classes.forEach((name, c) => {
    const y = T + c * rowH;
    const p = answer.probs[0][c];
    const best = c === answer.label[0];
    plot.append(svg("text", { x: L - 8, y: y + rowH / 2 + 4, "text-anchor": "end", "font-weight": best ? "bold" : "normal" }, name));
    plot.append(svg("rect", { class: "prob", "data-class": name, x: L, y: y + 4, width: Math.max(1, x(p) - L), height: rowH - 8, fill: best ? "#2f67cf" : "#a9bfe6" }));
    for (const [t, sample] of (answer.draws ? answer.draws[0] : []).entries()) {
      const jitter = ((t * 7919) % 13) / 13 - 0.5;  // deterministic spread so that the dots do not overlap
      plot.append(svg("circle", { cx: x(sample[c]), cy: y + rowH / 2 + jitter * (rowH - 10), r: 2, fill: "#1d2b45", opacity: 0.35 }));
    }
    plot.append(svg("text", { x: x(1) + 6, y: y + rowH / 2 + 4 }, fmt(p)));
  });
  axisX(plot, x, 0, 1, T + rowH * classes.length + 4);
  return plot;
}

function band(xs, answer, n, xValue) {
  const W = 720, H = 300, L = 48, R = 20, T = 22, B = 36;
  const plot = svg("svg", { id: "band", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const mean = xs.map((_, i) => answer.mean[i][0]);
  const lower = xs.map((_, i) => answer.interval.lower[i][0]), upper = xs.map((_, i) => answer.interval.upper[i][0]);
  const z = (upper[0] - lower[0]) / (2 * answer.std[0][0]);  // the interval's normal quantile
  const epiLo = xs.map((_, i) => mean[i] - z * Math.sqrt(answer.epistemic_variance[i][0]));
  const epiHi = xs.map((_, i) => mean[i] + z * Math.sqrt(answer.epistemic_variance[i][0]));
  const ymin = Math.min(...lower), ymax = Math.max(...upper);
  const sx = (v) => L + (W - L - R) * (v - xs[0]) / (xs[xs.length - 1] - xs[0]);
  const sy = (v) => T + (H - T - B) * (ymax - v) / (ymax - ymin);
  const area = (lo, hi) => "M" + xs.map((v, i) => `${sx(v)},${sy(hi[i])}`).join("L") + "L" +
    xs.map((v, i) => `${sx(v)},${sy(lo[i])}`).reverse().join("L") + "Z";
  plot.append(svg("path", { d: area(lower, upper), fill: "#f2a541", opacity: 0.3 }));
  plot.append(svg("path", { d: area(epiLo, epiHi), fill: "#2f67cf", opacity: 0.45 }));
  plot.append(svg("path", { d: "M" + xs.map((v, i) => `${sx(v)},${sy(mean[i])}`).join("L"), fill: "none", stroke: "#1d2b45", "stroke-width": 2 }));
  const at = answer.mean[n][0];
  axisX(plot, sx, xs[0], xs[xs.length - 1], H - B);
  for (let t = 0; t <= 4; t++) {
    const v = ymin + (ymax - ymin) * t / 4;
    plot.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, fmt(v, 2)));
  }
  plot.append(svg("text", { x: L, y: 12 }, `mean (line), epistemic part (blue) and the whole ${fmt(100 * answer.interval.level, 0)}% predictive interval (orange: + aleatoric)`));
  plot.append(svg("circle", { id: "band-point", cx: sx(xValue), cy: sy(at), r: 5, fill: "#b3261e" }));
  return plot;
}
