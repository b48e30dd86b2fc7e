// The runs table: every run under the root, newest first, refreshed every 2 s.
// Rows are kept by run name and only their changed cells are rewritten, so a table of
// 1,000 runs updates without rebuilding (and without losing a text selection).
import {
  el, formatAge, formatDuration, formatEpochs, formatNumber, getJson, poll, runUrl, setText,
  statusBadge,
} from "./util.js";

const rows = new Map(); // run name -> {tr, cells}
const filters = { name: "", group: "", status: "" };

function makeRow(run) {
  const link = el("a", { href: runUrl(run.folder), class: "run-link" });
  const reason = el("div", { class: "reason" });
  const badge = el("span", { class: "badge" });
  const progress = el("progress", { max: "1", value: "0" });
  const epochs = el("span", { class: "epochs" });
  const cells = {
    link, reason, badge, progress, epochs,
    group: el("td", { class: "group" }),
    step: el("td", { class: "num" }),
    loss: el("td", { class: "num" }),
    best: el("td", { class: "num" }),
    eta: el("td", { class: "num" }),
    updated: el("td", { class: "num" }),
  };
  const tr = el("tr", { "data-run": run.folder },
    el("td", { class: "name" }, link, reason), cells.group, el("td", {}, badge),
    el("td", { class: "progress-col" }, progress, epochs),
    cells.step, cells.loss, cells.best, cells.eta, cells.updated);
  return { tr, cells };
}

function updateRow({ tr, cells }, run) {
  setText(cells.link, run.folder);
  const note = run.reason || (run.error ? `${run.error.type || "error"}: ${run.error.message || ""}` : "");
  setText(cells.reason, note);
  statusBadge(cells.badge, run.status, run.reason);
  const value = run.progress === null ? 0 : run.progress;
  if (cells.progress.value !== value) cells.progress.value = value;
  tr.dataset.progress = run.progress === null ? "" : String(run.progress);
  setText(cells.epochs, formatEpochs(run));
  setText(cells.group, run.group || "–");
  setText(cells.step, formatNumber(run.global_step));
  setText(cells.loss, formatNumber(run.train_loss));
  setText(cells.best, formatNumber(run.best_val_loss));
  setText(cells.eta, run.eta_s === null ? "–" : formatDuration(run.eta_s));
  setText(cells.updated, formatAge(run.age_s));
}

function plural(count, noun) {
  return `${count.toLocaleString("en-US")} ${noun}${count === 1 ? "" : "s"}`;
}

function matches(run) {
  return (!filters.group || run.group === filters.group)
    && (!filters.status || run.status === filters.status)
    && (!filters.name || run.folder.toLowerCase().includes(filters.name.toLowerCase()));
}

function fillSelect(select, values, current) {
  const wanted = ["", ...values];
  const have = [...select.options].map((option) => option.value);
  if (have.join("\n") === wanted.join("\n")) return;
  const first = select.options[0].textContent;
  select.replaceChildren(...wanted.map((value) => el("option", { value, text: value || first })));
  select.value = wanted.includes(current) ? current : "";
}

function render(data) {
  const body = document.getElementById("runs-body");
  const groups = [...new Set(data.runs.map((run) => run.group).filter(Boolean))].sort();
  fillSelect(document.getElementById("filter-group"), groups, filters.group);
  fillSelect(document.getElementById("filter-status"), data.statuses, filters.status);
  const shown = data.runs.filter(matches);
  const present = new Set(data.runs.map((run) => run.folder));
  for (const [name, row] of rows) {
    if (!present.has(name)) { row.tr.remove(); rows.delete(name); }
  }
  shown.forEach((run, index) => {
    let row = rows.get(run.folder);
    if (!row) { row = makeRow(run); rows.set(run.folder, row); }
    updateRow(row, run);
    if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
  });
  while (body.children.length > shown.length) body.lastElementChild.remove();
  setText(document.getElementById("run-count"),
    shown.length === data.runs.length ? plural(data.runs.length, "run") : `${shown.length} of ${plural(data.runs.length, "run")}`);
  const empty = document.getElementById("runs-empty");
  empty.hidden = shown.length > 0;
  setText(empty, data.runs.length ? "no run matches the filters" :
    `no runs under ${data.root} yet; start one with flowctl train`);
  document.getElementById("hidden-runs").replaceChildren(...data.hidden.map((item) =>
    el("li", { text: `${item.folder}: not shown, ${item.reason}` })));
}

function readFilters() {
  const params = new URLSearchParams(window.location.search);
  for (const key of Object.keys(filters)) filters[key] = params.get(key) || "";
  document.getElementById("filter-name").value = filters.name;
}

function bindFilters(refresh) {
  const inputs = { name: "filter-name", group: "filter-group", status: "filter-status" };
  for (const [key, id] of Object.entries(inputs)) {
    document.getElementById(id).addEventListener("input", (event) => {
      filters[key] = event.target.value;
      const params = new URLSearchParams(Object.entries(filters).filter(([, value]) => value));
      const query = params.toString();
      history.replaceState(null, "", query ? `/?${query}` : "/");
      refresh();
    });
  }
}

export function showRuns() {
  document.getElementById("runs-page").hidden = false;
  readFilters();
  let latest = null;
  bindFilters(() => latest && render(latest));
  poll(async () => {
    const started = performance.now();
    latest = await getJson("/api/runs");
    const fetched = performance.now();
    setText(document.getElementById("root"), latest.root);
    render(latest);
    // The last poll's cost, for scripts/bench_ui.py (one entry each: nothing accumulates).
    performance.clearMeasures();
    performance.measure("runs-fetch", { start: started, end: fetched });
    performance.measure("runs-render", { start: fetched });
  });
}
