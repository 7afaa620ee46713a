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

const HEADLINE = ["accuracy", "ece", "rmse", "nll", "coverage_95", "brier"];

function headlineMetrics(metrics) {
  const mc = (metrics && metrics.mc) || {};
  const shown = HEADLINE.filter((n) => typeof mc[n] === "number").map((n) => `${n} ${fmt(mc[n])}`);
  if (metrics && metrics.test_rows) shown.push(`${metrics.test_rows} test rows`);
  return shown;
}

// The held-out metrics before calibration, which `mcdropout train` records beside the calibrated ones.
function uncalibratedMetrics(metrics) {
  const mc = (metrics && metrics.uncalibrated && metrics.uncalibrated.mc) || {};
  return HEADLINE.filter((n) => typeof mc[n] === "number").map((n) => `${n} ${fmt(mc[n])}`);
}

function calibrationText(calibration) {
  if (!calibration) return "uncalibrated";
  return `${calibration.methods.join(", ")} · ${calibration.rows} rows`;
}

function calibrated(info, method) {
  return Boolean(info.calibration && info.calibration.methods.includes(method));
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
  table.append(el("tr", {}, ...["name", "version", "task", "description", "held-out metrics (MC)", "calibration", "status"]
    .map((h) => el("th", { text: h }))));
  for (const m of answer.body.models) {
    const row = el("tr", { "data-model": m.name });
    const name = m.status === "ready" ? el("a", { href: `#/models/${encodeURIComponent(m.name)}`, text: m.name })
      : el("span", { text: m.name });
    const metrics = el("td", {}, ...headlineMetrics(m.metrics).map((t) => el("span", { class: "metric", text: t })));
    const status = m.status === "ready" ? el("td", { class: "status-ready", text: "ready" })
      : el("td", {}, el("span", { class: "status-failed", text: "failed" }), el("br"), el("span", { text: m.error || "" }));
    const calibration = m.status === "ready" ? el("td", { class: m.calibration ? "calibration" : "calibration muted",
      text: calibrationText(m.calibration), title: m.calibration ? m.calibration.source : "the raw MC numbers" }) : el("td");
    row.append(el("td", {}, name), el("td", { text: m.version || "" }), el("td", { text: m.task || "" }),
      el("td", { text: m.description || "" }), metrics, calibration, status);
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
  page.loadScales();  // computed once per loaded model by the server; drawn when they come
  if (typeof liveQuality === "function") liveQuality(name, view, api, el, fmt);  // quality.js
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
    const metrics = (texts) => texts.map((t) => el("span", { class: "metric", text: t }));
    const before = uncalibratedMetrics(info.metrics);
    const calibration = info.calibration
      ? `calibrated: ${info.calibration.methods.join(", ")}, on ${info.calibration.source}`
      : "uncalibrated: the raw MC numbers (mcdropout calibrate fits a calibration)";
    const head = el("div", { class: "panel" },
      el("h1", { text: `${info.name} ` }, el("span", { class: "muted", text: `v${info.version} · ${info.task}` })),
      el("div", { text: info.description || "" }),
      el("div", { id: "held-out-metrics" }, el("span", { class: "muted", text: "held-out metrics (MC): " }),
        ...metrics(headlineMetrics(info.metrics))),
      before.length ? el("div", { class: "muted" }, "before calibration: ", ...metrics(before)) : "",
      el("div", { id: "calibration", class: info.calibration ? "" : "muted", text: calibration }));
    const left = el("div", {}, this.renderControls(), this.renderInput());
    this.result = el("div", { id: "result" });
    this.scalePanel = el("div", { id: "scales", "data-state": "waiting" });  // shown under the answer's numbers
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
    if (info.task === "regression") add("interval level", "interval", 0.95);
    const choose = (label, name, options) => {
      const select = el("select", { id: name }, ...options.map((o) => el("option", { value: o, text: o })));
      box.append(el("label", {}, label, ...this.field(name, select)));
    };
    if (calibrated(info, "conformal")) choose("interval method", "interval_method", ["conformal", "gaussian"]);
    if (calibrated(info, "conformal_sets")) {
      add("set level (empty: none)", "set_level", 0.9);
      choose("set method", "set_method", ["lac", "aps"]);
    }
    if (calibrated(info, "selective")) {  // never below what the calibration rows can certify
      const smallest = (info.calibration && info.calibration.min_max_risk) || 0;
      add(`max risk (empty: none; at least ${fmt(smallest)})`, "max_risk", Math.max(0.05, smallest));
    }
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
      this.sliderLabel = el("span", { text: `x = ${fmt(+this.slider.value)}` });  // as the slider's step rounds it
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
    const ranges = this.trainRanges();
    if (!ranges.length) return { min: centre - 6, max: centre + 6, value: centre };  // ±6 standardised units at most
    // The recorded training ranges, and 2 beyond on each side, where the epistemic part grows.
    return { min: Math.min(...ranges.flat()) - 2, max: Math.max(...ranges.flat()) + 2, value: centre };
  }

  // The x ranges the model was trained on, where the manifest records them ([] otherwise).
  trainRanges() {
    const data = (this.info.training && this.info.training.data) || {};
    return Array.isArray(data.train_ranges) ? data.train_ranges : [];
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
    for (const name of ["interval", "set_level", "max_risk"]) {  // left out when empty (or not offered)
      if (this.fields[name] && this.fields[name].value.trim() !== "") body[name] = this.number(this.fields[name].value, false);
    }
    if (this.fields.interval_method) body.interval_method = this.fields.interval_method.value;
    if (body.set_level !== undefined) body.set_method = this.fields.set_method.value;
    body.return_samples = true;
    return body;
  }

  async predict() {
    const body = this.request();
    this.asked = body;
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
    this.result.querySelector(".stats").after(this.scalePanel);
    this.answer = answer.body;
    this.showScales();
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
        stat(`${output} mean`, fmt(mean)),
        stat(`${fmt(100 * answer.interval.level, 0)}% interval (${answer.interval.method})`, `${fmt(lo)} … ${fmt(hi)}`, "interval-method"),
        stat("std", fmt(answer.std[row][k])), stat("epistemic std", fmt(Math.sqrt(answer.epistemic_variance[row][k]))),
        stat("aleatoric std", fmt(Math.sqrt(answer.aleatoric_variance[row][k]))));
      const draws = answer.draws ? answer.draws[row].map((d) => d[k]) : [];
      this.result.append(stats, histogram(draws, mean, lo, hi, answer.std[row][k]));
    });
  }

  showClassification(answer) {
    const k = answer.classes.length || answer.probs[0].length;
    const stats = el("div", { class: "stats" },
      stat("predicted", answer.class_name[0]),
      stat(`entropy (max ln ${k} = ${fmt(Math.log(k))})`, fmt(answer.entropy[0])),
      stat("mutual information", fmt(answer.mutual_information[0])),
      stat("variation ratio", fmt(answer.variation_ratio[0])));
    if (answer.prediction_set) {
      const members = answer.prediction_set_names[0];
      stats.append(stat(`prediction set at ${fmt(100 * answer.set_level, 0)}% (${this.asked.set_method})`,
        members.length ? `{${members.join(", ")}}` : "{ } no class is plausible at this level", "prediction-set"));
    }
    if (answer.abstain) {
      const risk = `max risk ${fmt(this.asked.max_risk)}`;
      stats.append(stat(answer.abstain[0] ? `abstain: too uncertain for ${risk}; send to a human` : `answered within ${risk}`,
        answer.abstain[0] ? "abstain" : "accept", "abstain", answer.abstain[0] ? "abstained" : "accepted"));
    }
    this.result.append(stats, probabilityStrips(answer));
  }

  showBand(answer) {
    const n = answer.mean.length - 1;  // the last row is the slider's x
    const xs = this.request().inputs.slice(0, n).map((r) => r[0]);
    this.result.append(band(xs, answer, n, +this.slider.value, this.trainRanges()), el("h2", { text: `at x = ${fmt(+this.slider.value)}` }));
    this.showRegression(answer, n);
  }

  // -- the uncertainty against the model's held-out rows -----------------------------------------

  async loadScales() {
    const answer = await api(`/ui/scales/${encodeURIComponent(this.info.name)}`);
    this.scales = answer.ok ? answer.body : { available: false, reason: answer.body.error };
    this.showScales();
  }

  showScales() {
    if (!this.scales || !this.answer) return;
    const scales = this.scales, answer = this.answer;
    if (!scales.available) {
      this.scalePanel.replaceChildren(el("p", { class: "muted", text: `No scale: ${scales.reason}` }));
      this.scalePanel.setAttribute("data-state", "unavailable");
      return;
    }
    const row = this.kind === "oned" ? answer.mean.length - 1 : 0;  // the 1-D page's own x is its last row
    const shown = [];
    if (this.info.task === "classification") {
      for (const [name, label] of [["entropy", "entropy"], ["mutual_information", "mutual information"],
        ["variation_ratio", "variation ratio"]]) shown.push([name, label, answer[name][row], scales.statistics[name][0]]);
    } else {
      answer.outputs.forEach((output, k) => {
        const suffix = answer.outputs.length > 1 ? ` of ${output}` : "";
        shown.push([`std-${k}`, `predictive std${suffix}`, answer.std[row][k], scales.statistics.std[k]]);
        shown.push([`epistemic_std-${k}`, `epistemic std${suffix}`, Math.sqrt(answer.epistemic_variance[row][k]),
          scales.statistics.epistemic_std[k]]);
      });
    }
    this.scalePanel.replaceChildren(el("div", { class: "muted", text: `How high for this model? Against ${scales.source}` +
      ` (T ${scales.samples}, seed ${scales.seed}):` }),
      ...shown.map(([name, label, value, percentiles]) => scale(name, label, value, percentiles)));
    this.scalePanel.setAttribute("data-state", "done");
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
    // Every pasted value is quoted for the shell: a feature named `age'$(touch pwned)'` stays a name.
    const auth = keyInput.value ? ` \\\n  -H ${shellQuoted("Authorization: Bearer " + keyInput.value)}` : "";
    const url = `${origin}/v1/models/${encodeURIComponent(this.info.name)}/predict`;
    this.curl.textContent = `curl -s ${shellQuoted(url)} \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d ${shellQuoted(JSON.stringify(body))}`;
    const inputs = body.instances ? `pandas.DataFrame(${JSON.stringify(body.instances)})` : JSON.stringify(body.inputs);
    const key = keyInput.value ? JSON.stringify(keyInput.value) : "None";
    const imports = body.instances ? "import pandas\n" : "";
    this.python.textContent = `${imports}from mcdropout.client import Client\n\nwith Client(${JSON.stringify(origin)}, api_key=${key}) as client:\n` +
      `    result = client.predict(${JSON.stringify(this.info.name)}, ${inputs},\n` +
      `                            ${keywords(body)})\n` +
      `    print(${printed(this.info.task, body).join(", ")})\n`;
  }
}

// One shell word holding ``text`` exactly: single quotes, each ' inside written as '\'' (POSIX sh, bash, zsh).
function shellQuoted(text) {
  return "'" + String(text).replaceAll("'", "'\\''") + "'";
}

function printed(task, body) {
  if (task !== "classification") return ["result.mean", "result.lower", "result.upper"];
  const names = ["result.probs", "result.entropy", "result.mutual_information"];
  if (body.set_level !== undefined) names.push("result.prediction_set");
  if (body.max_risk !== undefined) names.push("result.abstain");
  return names;
}

// The request's parameters as the client's keyword arguments (Python literals).
function keywords(body) {
  const names = ["samples", "seed", "interval", "interval_method", "set_level", "set_method", "max_risk"];
  return names.filter((n) => body[n] !== undefined).map((n) => `${n}=${JSON.stringify(body[n])}`).join(", ");
}

function stat(label, value, id, state) {
  const node = el("div", { class: state ? `stat ${state}` : "stat" }, el("b", { text: value }), el("span", { text: label }));
  if (id) node.id = id;
  return node;
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
  const W = 720, H = 230, L = 40, R = 20, T = 20, B = 40;
  const plot = svg("svg", { id: "histogram", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const span = Math.max(...draws, hi) - Math.min(...draws, lo) || 1;
  const min = Math.min(...draws, lo) - 0.05 * span, max = Math.max(...draws, hi) + 0.05 * span;
  const x = (v) => L + (W - L - R) * (v - min) / (max - min);
  const y = (share) => H - B - (H - B - T) * share;  // share of the plot's height
  plot.append(svg("rect", { x: x(lo), width: x(hi) - x(lo), y: T, height: H - B - T, fill: "#f2a541", opacity: 0.15 }));
  drawBars(plot, draws, x, y);
  // The Gaussian predictive density (epistemic + aleatoric), on a height of its own: its peak at 85%.
  const density = (v) => Math.exp(-0.5 * ((v - mean) / std) ** 2);
  const curve = Array.from({ length: 121 }, (_, i) => min + (max - min) * i / 120).map((v) => `${x(v)},${y(0.85 * density(v))}`);
  plot.append(svg("path", { d: "M" + curve.join("L"), fill: "none", stroke: "#d9822b", "stroke-width": 1.5 }));
  plot.append(svg("line", { x1: x(mean), x2: x(mean), y1: T, y2: H - B, stroke: "#1d2b45", "stroke-width": 2 }));
  for (const v of [lo, hi]) plot.append(svg("line", { x1: x(v), x2: x(v), y1: T, y2: H - B, stroke: "#d9822b", "stroke-dasharray": "4 3" }));
  axisX(plot, x, min, max, H - B);
  plot.append(svg("text", { x: L, y: 12 }, `blue: the ${draws.length} MC draws of the mean (epistemic); orange: predictive density and interval (+ aleatoric)`));
  const dmin = Math.min(...draws), dmax = Math.max(...draws);
  if (dmax - dmin > 0.2 * (max - min)) return plot;
  // The draws span a sliver of the interval: show them close up as well.
  const zoomH = 130, pad = 0.1 * ((dmax - dmin) || Math.abs(mean) || 1);
  const zmin = Math.min(dmin, mean) - pad, zmax = Math.max(dmax, mean) + pad;
  const zoom = svg("svg", { id: "draws-zoom", width: W, height: zoomH, viewBox: `0 0 ${W} ${zoomH}` });
  const zx = (v) => L + (W - L - R) * (v - zmin) / (zmax - zmin);
  const zy = (share) => zoomH - B - (zoomH - B - T) * share;
  drawBars(zoom, draws, zx, zy);
  zoom.append(svg("line", { x1: zx(mean), x2: zx(mean), y1: T, y2: zoomH - B, stroke: "#1d2b45", "stroke-width": 2 }));
  axisX(zoom, zx, zmin, zmax, zoomH - B);
  zoom.append(svg("text", { x: L, y: 12 }, "the MC draws close up (the epistemic part alone)"));
  return el("div", {}, plot, zoom);
}

// A histogram of the draws over their own range, its highest bar at 90% of the plot's height.
function drawBars(plot, draws, x, y) {
  const dmin = Math.min(...draws), dmax = Math.max(...draws), dspan = (dmax - dmin) || 1e-9;
  const bins = Math.max(8, Math.min(30, Math.round(Math.sqrt(draws.length) * 2)));
  const width = dspan / bins;
  const counts = new Array(bins).fill(0);
  for (const d of draws) counts[Math.min(bins - 1, Math.floor((d - dmin) / width))]++;
  const top = Math.max(...counts, 1);
  counts.forEach((c, i) => plot.append(svg("rect", {
    class: "bar", x: x(dmin + i * width), width: Math.max(1, x(dmin + (i + 1) * width) - x(dmin + i * width) - 1),
    y: y(0.9 * c / top), height: y(0) - y(0.9 * c / top), fill: "#2f67cf", opacity: 0.8,
  })));
}

function probabilityStrips(answer) {
  const classes = answer.classes.length ? answer.classes : answer.probs[0].map((_, i) => String(i));
  const rowH = 22, W = 720, L = 110, R = 60, T = 22;
  const H = T + rowH * classes.length + 30;
  const plot = svg("svg", { id: "probs", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const x = (p) => L + (W - L - R) * p;
  const inSet = new Set(answer.prediction_set ? answer.prediction_set[0] : []);
  const legend = answer.prediction_set ? "; green edge: in the prediction set" : "";
  plot.append(svg("text", { x: L, y: 12 }, `mean probability per class (bar) and each MC sample's probability (dots)${legend}`));
  classes.forEach((name, c) => {
    const y = T + c * rowH;
    const p = answer.probs[0][c];
    const best = c === answer.label[0];
    const member = inSet.has(c);
    plot.append(svg("text", { x: L - 8, y: y + rowH / 2 + 4, "text-anchor": "end", "font-weight": best ? "bold" : "normal" }, name));
    if (member) plot.append(svg("rect", { class: "set-mark", x: L - 4, y: y + 2, width: 3, height: rowH - 4, fill: "#1d7a3a" }));
    plot.append(svg("rect", { class: member ? "prob in-set" : "prob", "data-class": name, x: L, y: y + 4,
      width: Math.max(1, x(p) - L), height: rowH - 8, fill: best ? "#2f67cf" : "#a9bfe6" }));
    for (const [t, sample] of (answer.draws ? answer.draws[0] : []).entries()) {
      const jitter = ((t * 7919) % 13) / 13 - 0.5;  // deterministic spread so that the dots do not overlap
      plot.append(svg("circle", { cx: x(sample[c]), cy: y + rowH / 2 + jitter * (rowH - 10), r: 2, fill: "#1d2b45", opacity: 0.35 }));
    }
    plot.append(svg("text", { x: x(1) + 6, y: y + rowH / 2 + 4 }, p < 1e-4 ? "< 0.0001" : fmt(p)));
  });
  axisX(plot, x, 0, 1, T + rowH * classes.length + 4);
  return plot;
}

// Where `value` sits among the model's held-out rows. The bar is the rows' percentile axis, stretched at
// the top (sections min-p50, p50-p90, p90-p99, p99-max, then beyond the maximum), so that what is high for
// this model always has room whatever the statistic's spread; the marker sits at the value's percentile.
const SECTIONS = [[0, 50, 0.27, "#d8efdc"], [50, 90, 0.27, "#fbf0c9"], [90, 99, 0.2, "#f9d5a7"], [99, 100, 0.12, "#f2a08f"]];
const BEYOND = 0.14;

// The value's percentile among the rows (0..100, interpolated between whole percentiles; ties: their middle).
function percentileRank(value, percentiles) {
  if (value < percentiles[0]) return 0;
  if (value > percentiles[100]) return 100;
  const first = percentiles.findIndex((p) => p >= value);
  let last = first;
  while (last < 100 && percentiles[last + 1] <= value) last++;
  if (percentiles[first] === value) return (first + last) / 2;
  const a = percentiles[first - 1], b = percentiles[first];
  return first - 1 + (value - a) / (b - a);
}

function scalePosition(value, percentiles) {
  const top = percentiles[100];
  if (value > top) return 1 - BEYOND + BEYOND * Math.min(1, (value - top) / (Math.abs(top) || 1));  // up to twice the max
  const rank = percentileRank(value, percentiles);
  let start = 0;
  for (const [from, to, width] of SECTIONS) {
    // the section the value falls in (a tie spanning sections counts in the lowest), the rank within it
    if (value <= percentiles[to]) return start + width * (Math.min(Math.max(rank, from), to) - from) / (to - from);
    start += width;
  }
  return start;
}

function short(v) {
  return String(Number(v.toPrecision(2)));
}

function scale(name, label, value, percentiles) {
  const W = 720, H = 48, L = 10, R = 10, Y = 20, BAR = 12;
  const width = W - L - R;
  const rank = Math.round(percentileRank(value, percentiles));
  const level = value > percentiles[99] ? "very high: above p99" : value > percentiles[90] ? "high: above p90"
    : value > percentiles[50] ? "above the median" : "typical: at most the median";
  const plot = svg("svg", { id: `scale-${name}`, class: "scale", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
    "data-value": value, "data-rank": rank, "data-level": level });
  const title = svg("text", { x: L, y: 12 }, `${label}: `);
  title.append(svg("tspan", { "font-weight": "bold" }, `${fmt(value)} (${level}; ~p${rank} of the held-out rows)`));
  plot.append(title);
  let start = 0;
  for (const [from, to, part, colour] of [...SECTIONS, [100, null, BEYOND, "#e5e7eb"]]) {
    plot.append(svg("rect", { x: L + width * start, y: Y, width: width * part, height: BAR, fill: colour }));
    const tick = `${from === 0 ? "min" : from === 100 ? "max" : `p${from}`} ${short(percentiles[from])}`;
    plot.append(svg("line", { x1: L + width * start, x2: L + width * start, y1: Y, y2: Y + BAR + 4, stroke: "#7d8799" }),
      svg("text", { x: L + width * start + (from === 0 ? 0 : 2), y: Y + BAR + 13 }, tick));
    start += part;
  }
  const x = L + width * scalePosition(value, percentiles);
  plot.append(svg("path", { class: "marker", d: `M${x - 6},${Y - 8}L${x + 6},${Y - 8}L${x},${Y}Z`, fill: "#b3261e" }),
    svg("line", { x1: x, x2: x, y1: Y, y2: Y + BAR, stroke: "#b3261e", "stroke-width": 2 }));
  return plot;
}

function band(xs, answer, n, xValue, trainRanges) {
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
  for (const [from, to] of trainRanges) {
    plot.append(svg("rect", { class: "train-range", x: sx(from), width: sx(to) - sx(from), y: T, height: H - T - B, fill: "#e3e6eb", opacity: 0.6 }),
      svg("text", { x: (sx(from) + sx(to)) / 2, y: H - B - 6, "text-anchor": "middle", fill: "#6b7485" }, "training data"));
  }
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
