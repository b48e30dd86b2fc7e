// A small SVG line chart: series of [x, y] points, dashed vertical markers, linear or log y.
// Drawn from scratch at each update (a few polylines); long series are reduced to the min
// and max of each pixel column, so 100,000 logged rows draw as fast as 1,000.
import { formatNumber } from "./util.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const PAD = { left: 62, right: 14, top: 26, bottom: 30 };
const DOTS_UP_TO = 80; // series this short also get a dot per point (validation: one per epoch)

function node(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  // The nearest of 1, 2, 5, 10 (geometric midpoints, so float noise cannot tip the choice).
  return power * (fraction >= 7.07 ? 10 : fraction >= 3.16 ? 5 : fraction >= 1.41 ? 2 : 1);
}

function linearTicks(min, max, count) {
  const step = niceStep(max - min, count);
  const ticks = [];
  for (let tick = Math.ceil(min / step) * step; tick <= max + step * 1e-9; tick += step) {
    ticks.push(Math.abs(tick) < step * 1e-9 ? 0 : tick);
  }
  return ticks;
}

// Ticks in data units for a log axis over [10^low, 10^high].
function logTicks(low, high) {
  if (high - low < 1) return linearTicks(10 ** low, 10 ** high, 4);
  const ticks = [];
  const multiples = high - low < 3 ? [1, 2, 5] : [1];
  for (let power = Math.floor(low); power <= Math.ceil(high); power++) {
    for (const multiple of multiples) {
      const value = multiple * 10 ** power;
      const position = Math.log10(value);
      if (position >= low - 1e-9 && position <= high + 1e-9) ticks.push(value);
    }
  }
  return ticks;
}

// Keep the first, the min and the max of each pixel column, in order of x.
function decimate(points, toPixel, width) {
  if (points.length <= 2 * width) return points;
  const kept = [];
  let column = null;
  let low = null;
  let high = null;
  const flush = () => {
    if (low === null) return;
    if (low[0] <= high[0]) kept.push(low, high); else kept.push(high, low);
  };
  for (const point of points) {
    const pixel = Math.floor(toPixel(point[0]));
    if (pixel !== column) {
      flush();
      column = pixel;
      low = point;
      high = point;
    } else {
      if (point[1] < low[1]) low = point;
      if (point[1] > high[1]) high = point;
    }
  }
  flush();
  return kept;
}

// series: [{name, label, className, points: [[x, y], ...]}]; markers: [{x, label}].
export function drawChart(svg, { series, markers = [], logY = false, empty = "no values yet" }) {
  const width = svg.clientWidth || 640;
  const height = svg.clientHeight || 260;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const usable = series.map((line) => ({
    ...line,
    points: line.points.filter(([, y]) => Number.isFinite(y) && (!logY || y > 0)),
  }));
  const all = usable.flatMap((line) => line.points);
  if (all.length === 0) {
    svg.append(node("text", { x: width / 2, y: height / 2, class: "chart-empty" }, empty));
    return;
  }
  const toAxis = logY ? Math.log10 : (value) => value;
  let [xMin, xMax] = [Infinity, -Infinity];
  let [yMin, yMax] = [Infinity, -Infinity];
  for (const [x, y] of all) {
    xMin = Math.min(xMin, x); xMax = Math.max(xMax, x);
    yMin = Math.min(yMin, toAxis(y)); yMax = Math.max(yMax, toAxis(y));
  }
  if (xMax === xMin) xMax = xMin + 1;
  const margin = yMax === yMin ? Math.abs(yMin) * 0.1 || 1 : (yMax - yMin) * 0.06;
  yMin -= margin; yMax += margin;
  const plotWidth = width - PAD.left - PAD.right;
  const plotHeight = height - PAD.top - PAD.bottom;
  const px = (x) => PAD.left + ((x - xMin) / (xMax - xMin)) * plotWidth;
  const py = (y) => PAD.top + (1 - (toAxis(y) - yMin) / (yMax - yMin)) * plotHeight;

  const grid = node("g", { class: "grid" });
  const yTicks = logY ? logTicks(yMin, yMax) : linearTicks(yMin, yMax, 5);
  for (const tick of yTicks) {
    const y = py(tick);
    if (y < PAD.top - 0.5 || y > PAD.top + plotHeight + 0.5) continue;
    grid.append(node("line", { x1: PAD.left, x2: PAD.left + plotWidth, y1: y, y2: y }));
    grid.append(node("text", { x: PAD.left - 8, y: y + 4, class: "tick y" }, formatNumber(tick, 3)));
  }
  for (const tick of linearTicks(xMin, xMax, Math.max(2, Math.floor(plotWidth / 90)))) {
    if (!Number.isInteger(tick)) continue;
    const x = px(tick);
    grid.append(node("line", { x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotHeight, class: "x" }));
    grid.append(node("text", { x, y: height - 10, class: "tick x" }, formatNumber(tick)));
  }
  grid.append(node("text", { x: PAD.left - 8, y: height - 10, class: "axis-label" }, "step"));
  svg.append(grid);

  for (const marker of markers) {
    if (marker.x < xMin || marker.x > xMax) continue;
    const x = px(marker.x);
    svg.append(node("line", { x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotHeight, class: "marker" }));
    svg.append(node("text", { x: x + 4, y: PAD.top + 12, class: "marker-label" }, marker.label));
  }

  let legendX = PAD.left;
  for (const line of usable) {
    const drawn = decimate(line.points, px, plotWidth);
    const polyline = node("polyline", {
      class: `series ${line.className}`, "data-series": line.name, "data-count": line.points.length,
      points: drawn.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" "),
    });
    svg.append(polyline);
    if (line.points.length <= DOTS_UP_TO) {
      for (const [x, y] of line.points) {
        svg.append(node("circle", { cx: px(x), cy: py(y), r: 2.5, class: `dot ${line.className}` }));
      }
    }
    const last = line.points[line.points.length - 1];
    const label = last ? `${line.label} ${formatNumber(last[1])}` : line.label;
    svg.append(node("rect", { x: legendX, y: 8, width: 14, height: 3, class: `swatch ${line.className}` }));
    const text = node("text", { x: legendX + 19, y: 14, class: "legend" }, label);
    svg.append(text);
    legendX += 26 + label.length * 7;
  }
}
