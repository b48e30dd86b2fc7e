// One run's page: status bar, loss and learning-rate curves, eval metrics, checkpoint,
// config, pictures and the resume command. Polls every 2 s; metrics arrive incrementally.
import { drawChart } from "./chart.js";
import {
  apiRunUrl, el, formatAge, formatBytes, formatDuration, formatEpochs, formatNumber, getJson, poll,
  setText, statusBadge,
} from "./util.js";

const state = { rows: [], lastStep: -1, checkpointsSeen: null, pictures: "", stageNames: [] };

function byId(id) { return document.getElementById(id); }

// Rows with step > since replace what we hold past `since`; asking from lastStep - 1 re-reads
// the newest step, whose second row (validation after training) may not have been written yet.
async function pullMetrics(name) {
  const since = state.lastStep < 0 ? -1 : state.lastStep - 1;
  const data = await getJson(`${apiRunUrl(name)}/metrics?since=${since}`);
  if (data.last_step < state.lastStep - 1) { // the file started over (--overwrite)
    state.rows = []; state.lastStep = -1;
    return pullMetrics(name);
  }
  state.rows = state.rows.filter((row) => row.step <= since).concat(data.rows);
  if (state.rows.length) state.lastStep = state.rows[state.rows.length - 1].step;
  return data.rows.length > 0;
}

function drawCharts() {
  const rows = state.rows;
  const series = (key) => rows.filter((row) => typeof row[key] === "number").map((row) => [row.step, row[key]]);
  const markers = [];
  rows.forEach((row, index) => {
    if (index > 0 && row.stage_id !== rows[index - 1].stage_id) {
      markers.push({ x: row.step, label: state.stageNames[row.stage_id] || `stage ${row.stage_id}` });
    }
  });
  drawChart(byId("loss-chart"), {
    logY: byId("log-scale").checked, markers, empty: "waiting for the first logged loss",
    series: [
      { name: "train", label: "train", className: "train", points: series("train/loss") },
      { name: "val", label: "val", className: "val", points: series("val/loss") },
    ],
  });
  drawChart(byId("lr-chart"), {
    markers, empty: "waiting for the first logged learning rate",
    series: [{ name: "lr", label: "lr", className: "lr", points: series("train/lr") }],
  });
}

function keyValues(table, entries) {
  table.replaceChildren(...entries.map(([key, value]) => el("tr", {},
    el("th", { text: key }), el("td", { text: typeof value === "object" && value !== null ? JSON.stringify(value) : formatNumber(value) }))));
}

function showRunFacts(detail) {
  const run = detail.run;
  statusBadge(byId("run-status"), run.status, run.reason);
  setText(byId("run-group"), run.group ? `group ${run.group}` : "");
  setText(byId("run-step"), `step ${formatNumber(run.global_step)}`);
  setText(byId("run-best"), `best val ${formatNumber(run.best_val_loss)}`);
  setText(byId("run-eta"), run.eta_s === null ? "" : `ETA ${formatDuration(run.eta_s)}`);
  setText(byId("run-updated"), `updated ${formatAge(run.age_s)}`);
  const problem = run.reason || (run.error ? `${run.error.type || "error"}: ${run.error.message || ""}` : "");
  byId("run-problem").hidden = !problem;
  setText(byId("run-problem"), problem);
  setText(byId("resume-command"), detail.resume_command);
  const evalEntries = Object.entries(detail.eval || {}).filter(([, value]) => typeof value !== "object" || value === null);
  byId("eval-card").hidden = evalEntries.length === 0;
  keyValues(byId("eval-table"), evalEntries);
  const config = (detail.run_json && detail.run_json.config) || {};
  state.stageNames = (Array.isArray(config.stages) ? config.stages : []).map((stage) => stage && stage.name);
  keyValues(byId("config-table"), Object.entries(config));
  const pictureKey = JSON.stringify(detail.pictures);
  if (pictureKey !== state.pictures) {
    state.pictures = pictureKey;
    byId("pictures").replaceChildren(...detail.pictures.map((picture) => el("figure", { class: "card" },
      el("img", { src: `${picture.url}?v=${picture.mtime}`, alt: picture.name, loading: "lazy" }),
      el("figcaption", { text: picture.name }))));
  }
}

function showCheckpoint(summary) {
  const table = byId("checkpoint-table");
  if (!summary) { keyValues(table, [["file", "no best.pt or last.pt yet"]]); return; }
  if (summary.error) { keyValues(table, [["file", summary.file], ["error", summary.error]]); return; }
  keyValues(table, [
    ["file", summary.file], ["size", formatBytes(summary.size_bytes)],
    ["epochs completed", summary.epochs_completed], ["global step", summary.global_step],
    ["stage", summary.stage && summary.stage.stage_name ? summary.stage.stage_name : summary.stage], ["best loss", summary.best_loss],
    ["parameters", summary.parameter_count], ["tensors", summary.tensor_count],
    ["saved at", summary.saved_at], ["torch", summary.torch_version],
    ["sha256", summary.sha256 ? `${summary.sha256.slice(0, 16)}…` : null],
  ]);
}

// The directive's status bar: {running, current_epoch, total_epochs, loss} every 2 s.
async function pullStatus(name) {
  const status = await getJson(`${apiRunUrl(name)}/status`);
  const fraction = status.total_epochs ? Math.min(1, (status.current_epoch || 0) / status.total_epochs) : 0;
  const bar = byId("run-progress");
  if (bar.value !== fraction) bar.value = fraction;
  byId("statusbar").dataset.running = String(status.running);
  setText(byId("run-epoch"), `epoch ${formatEpochs({ epoch: status.current_epoch, total_epochs: status.total_epochs })}`);
  setText(byId("run-loss"), `loss ${formatNumber(status.loss)}`);
}

export function showRun(name) {
  document.title = `${name} · flowctl`;
  byId("run-page").hidden = false;
  setText(byId("run-name"), name);
  byId("copy-resume").addEventListener("click", async () => {
    const command = byId("resume-command").textContent;
    try { await navigator.clipboard.writeText(command); setText(byId("copy-resume"), "copied"); }
    catch { window.getSelection().selectAllChildren(byId("resume-command")); }
  });
  byId("log-scale").addEventListener("change", drawCharts);
  window.addEventListener("resize", drawCharts);
  let checkpointPending = false;
  poll(async () => {
    const [detail, , fresh] = await Promise.all([
      getJson(`${apiRunUrl(name)}?checkpoint=0`), pullStatus(name), pullMetrics(name)]);
    byId("run-body").hidden = false; // before drawing: a hidden SVG has no width
    showRunFacts(detail);
    setText(byId("root"), detail.root);
    if (fresh || !byId("loss-chart").hasChildNodes()) drawCharts();
    const checkpoints = JSON.stringify((detail.run_json || {}).checkpoints || null);
    if (checkpoints !== state.checkpointsSeen && !checkpointPending) {
      checkpointPending = true; // the summary may take a second (torch import): do not hold the poll
      getJson(apiRunUrl(name)).then((full) => {
        state.checkpointsSeen = checkpoints;
        showCheckpoint(full.checkpoint);
      }).catch(() => {}).finally(() => { checkpointPending = false; });
    }
  }, (error) => {
    byId("run-problem").hidden = false;
    setText(byId("run-problem"), error.message);
  });
}
