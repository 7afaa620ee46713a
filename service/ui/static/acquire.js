// The playground's "pick rows to label" panel on a classifier's page: a pasted pool, k and a method go to
// POST /v1/models/{name}/acquire; the picks come back in order with each step's score.
// Uses app.js's helpers (el, api, fmt); app.js calls acquirePanel(page) when it draws a classifier's page.
"use strict";

const ACQUIRE_METHODS = ["batchbald", "bald", "power", "softmax", "softrank", "entropy", "margin", "random"];

// The pasted pool as rows: a JSON list of rows, or one row a line of numbers separated by commas, spaces or
// semicolons (a first line that is not numbers, a header, is left out). A value that is not a number is sent
// as typed, so that the server's 422 names the row and the value.
function pastedRows(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) {
    try { return JSON.parse(trimmed); } catch (e) { return trimmed; }
  }
  const rows = [];
  trimmed.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "").forEach((line, i) => {
    const cells = line.split(/[\s,;]+/).filter((cell) => cell !== "");
    const numbers = cells.map((cell) => (cell !== "" && !isNaN(Number(cell)) ? Number(cell) : cell));
    if (i === 0 && numbers.some((value) => typeof value === "string")) return;  // a header line
    rows.push(numbers);
  });
  return rows;
}

function acquirePanel(page) {
  const info = page.info;
  const pool = el("textarea", { id: "pool", "data-field": "inputs", placeholder: "one row a line: "
    + `${(info.input_shape || []).reduce((a, b) => a * b, 1)} numbers, separated by commas or spaces`
    + " (a header line is left out), or a JSON list of rows" });
  const k = el("input", { id: "acquire-k", "data-field": "k", value: "3" });
  const method = el("select", { id: "acquire-method", "data-field": "method" },
    ...ACQUIRE_METHODS.map((m) => el("option", { value: m, text: m })));
  const go = el("button", { id: "acquire", text: "Pick" });
  const result = el("div", { id: "acquire-result" });
  go.addEventListener("click", () => pick(page, { pool, k, method }, result));
  return el("div", { class: "panel", id: "acquire-panel" },
    el("h2", { text: "Pick rows to label next" }),
    el("div", { class: "muted", text: `Paste a pool of up to ${info.max_rows} rows; the k rows the model would learn`
      + " most from come back in order (T and seed as above)." }),
    pool, el("div", { class: "controls" }, el("label", {}, "k", k), el("label", {}, "method", method),
      el("label", {}, " ", go)), result);
}

async function pick(page, fields, result) {
  const body = { inputs: pastedRows(fields.pool.value), k: page.number(fields.k.value, true),
    method: fields.method.value, samples: page.number(page.fields.samples.value, true),
    seed: page.number(page.fields.seed.value, true) };
  for (const node of Object.values(fields)) node.classList.remove("bad");
  result.setAttribute("data-state", "waiting");
  const answer = await api(`/v1/models/${encodeURIComponent(page.info.name)}/acquire`, body);
  window.lastPicks = answer;
  window.picks = (window.picks || 0) + 1;  // lets a watcher tell this answer from the last
  if (!answer.ok) {
    const field = (answer.body.field || "").split(/[[.]/)[0];
    const named = { inputs: fields.pool, k: fields.k, method: fields.method }[field];
    if (named) named.classList.add("bad");
    result.replaceChildren(el("p", { class: "acquire-error", text: answer.body.error }));
    result.setAttribute("data-state", "error");
    return;
  }
  const picks = answer.body;
  const table = el("table", { class: "models", id: "picks" }, el("tr", {},
    ...["step", "pool row (from 0)", "score", "its BALD"].map((h) => el("th", { text: h }))));
  picks.indices.forEach((row, step) => table.append(el("tr", { "data-row": String(row) },
    el("td", { text: String(step) }), el("td", { text: String(row) }), el("td", { text: fmt(picks.scores[step]) }),
    el("td", { text: fmt(picks.bald[row]) }))));
  const scoreText = picks.method === "batchbald" ? "score: the batch's BatchBALD (nats) once the row is added"
    : ["bald", "entropy", "margin"].includes(picks.method) ? `score: the row's ${picks.method}` : "score: the row's BALD";
  result.replaceChildren(el("div", { class: "muted", text: `${picks.method} · T ${picks.samples} · seed ${picks.seed}`
    + ` · ${scoreText}` }), table);
  result.setAttribute("data-state", "done");
}
