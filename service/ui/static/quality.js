// Live quality on a model's page: the figures of GET /v1/models/{name}/quality (docs/live-quality.md),
// drawn by app.js's model page through liveQuality(name, container, api, el, fmt).
"use strict";

function liveQuality(name, container, api, el, fmt) {
  const panel = el("div", { id: "live-quality", class: "panel", "data-state": "waiting" },
    el("h2", { text: "Live quality" }), el("p", { class: "muted", text: "loading…" }));
  container.append(panel);
  api(`/v1/models/${encodeURIComponent(name)}/quality`).then((answer) => {
    panel.replaceChildren(el("h2", { text: "Live quality" }));
    if (!answer.ok) {
      panel.append(el("p", { class: "muted", text: answer.body.error || `HTTP ${answer.status}` }));
      panel.setAttribute("data-state", "unavailable");
      return;
    }
    const windows = answer.body.windows;
    if (!windows.count.rows) {
      panel.append(el("p", { class: "muted", text: "no outcomes reported yet: POST them to"
        + ` /v1/models/${name}/outcomes with each answer's id and row` }));
      panel.setAttribute("data-state", "empty");
      return;
    }
    const rows = [];
    const put = (label, count, time) => rows.push(el("tr", {}, el("td", { text: label }),
      el("td", { text: count === undefined || count === null ? "—" : fmt(count) }),
      el("td", { text: time === undefined || time === null ? "—" : fmt(time) })));
    const c = windows.count, t = windows.time;
    put("outcomes", c.rows, t.rows);
    for (const [key, label] of [["accuracy", "accuracy"], ["ece", "ECE"], ["nll", "NLL"]]) {
      if (key in c) put(label, c[key], t[key]);
    }
    const at = (list, field, value) => (list || []).find((entry) => entry[field] === value) || {};
    for (const entry of c.intervals || []) {
      const other = at(t.intervals, "level", entry.level);
      put(`interval ${fmt(entry.level, 2)}: coverage`, entry.coverage, other.coverage);
      put(`interval ${fmt(entry.level, 2)}: mean width`, entry.mean_width, other.mean_width);
      put(`interval ${fmt(entry.level, 2)}: interval score`, entry.interval_score, other.interval_score);
    }
    for (const entry of c.sets || []) {
      const other = at(t.sets, "level", entry.level);
      put(`set ${fmt(entry.level, 2)}: coverage`, entry.coverage, other.coverage);
      put(`set ${fmt(entry.level, 2)}: mean size`, entry.mean_size, other.mean_size);
    }
    for (const entry of c.selective || []) {
      const other = at(t.selective, "max_risk", entry.max_risk);
      put(`max risk ${fmt(entry.max_risk)}: accepted error`, entry.accepted_error, other.accepted_error);
      put(`max risk ${fmt(entry.max_risk)}: abstention rate`, entry.abstention_rate, other.abstention_rate);
    }
    panel.append(el("table", { class: "quality" },
      el("tr", {}, el("th", { text: "" }), el("th", { text: `newest ${c.size_rows}` }),
        el("th", { text: `last ${fmt(t.size_seconds / 60, 0)} min` })), ...rows));
    panel.setAttribute("data-state", "shown");
  });
}
