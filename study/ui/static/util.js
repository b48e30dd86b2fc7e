// Shared helpers: fetching JSON, polling, formatting numbers and ages, building elements.

export const POLL_MS = 2000;

export async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${url}`);
  return body;
}

// Call `tick` now and then POLL_MS after each call settles; show the connection state.
// `onError(error)`, if given, also tells the page (e.g. a run that does not exist).
export function poll(tick, onError) {
  const live = document.getElementById("live");
  const run = async () => {
    try {
      await tick();
      live.textContent = `live · ${new Date().toLocaleTimeString()}`;
      live.classList.remove("down");
    } catch (error) {
      live.textContent = `not updating: ${error.message}`;
      live.classList.add("down");
      if (onError) onError(error);
    }
    setTimeout(run, POLL_MS);
  };
  run();
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return Number(value.toPrecision(digits)).toExponential();
  return Number(value.toPrecision(digits)).toString();
}

// Decimal units, as `flowctl list-runs` shows sizes: 532 B, 44.5 kB, 1.2 GB.
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

// A duration as its two largest units: 45s, 3m 20s, 2h 05m, 3d 4h.
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

export function formatAge(seconds) {
  return seconds === null || seconds === undefined ? "–" : `${formatDuration(seconds)} ago`;
}

export function formatEpochs(run) {
  if (run.epoch === null || run.epoch === undefined) return "–";
  return run.total_epochs ? `${run.epoch}/${run.total_epochs}` : String(run.epoch);
}

// Set text only when it changed (keeps selections and avoids layout work at 1,000 rows).
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else element.setAttribute(key, value);
  }
  for (const child of children) element.append(child);
  return element;
}

export function statusBadge(element, status, reason) {
  setText(element, status.replace("_", " "));
  element.className = `badge status-${status}`;
  element.title = reason || "";
}

export function runUrl(name) {
  return `/runs/${encodeURIComponent(name)}`;
}

export function apiRunUrl(name) {
  return `/api/runs/${encodeURIComponent(name)}`;
}
