// Inline SVG charts: a frame (axes, grid, ticks) and the three plots the dashboard draws on it.
// Colours come from app.css classes (series-0 … series-7, and a few named marks), never inline styles.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 1180;
const MARGIN = { top: 30, right: 56, bottom: 40, left: 84 };

export function svg(tag, attrs = {}, children = []) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function text(x, y, content, attrs = {}) {
  const node = svg("text", { x, y, ...attrs });
  node.textContent = content;
  return node;
}

function linear([d0, d1], [r0, r1]) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

// Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

// A domain that starts on a round tick below the data and ends on one above it.
export function niceDomain(values, { zero = false, min = null, max = null } = {}) {
  let lo = Math.min(...values, zero ? 0 : Infinity, min ?? Infinity);
  let hi = Math.max(...values, max ?? -Infinity);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) [lo, hi] = lo === 0 ? [0, 1] : [lo - Math.abs(lo) * 0.1, hi + Math.abs(hi) * 0.1];
  const ticks = niceTicks(lo, hi);
  const step = ticks.length > 1 ? ticks[1] - ticks[0] : hi - lo;
  return [Math.min(lo, Math.floor(lo / step) * step), Math.max(hi, Math.ceil(hi / step) * step)];
}

const MINUTE = 60_000;
const TIME_STEPS = [1, 5, 15, 30, 60, 180, 360, 720, 1440, 4320, 10080].map((m) => m * MINUTE);

function timeTicks(lo, hi) {
  const step = TIME_STEPS.find((s) => (hi - lo) / s <= 8) ?? TIME_STEPS.at(-1);
  const offset = new Date(lo).getTimezoneOffset() * MINUTE; // ticks on local round hours and days
  const ticks = [];
  for (let t = Math.ceil((lo - offset) / step) * step + offset; t <= hi; t += step) ticks.push(t);
  return { ticks, step };
}

function timeLabel(t, step) {
  const d = new Date(t);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  if (step < 1440 * MINUTE && !(d.getHours() === 0 && d.getMinutes() === 0)) return hm;
  return d.toLocaleDateString([], { month: "short", day: "numeric" });
}

// Axes, grid and labels; returns the group to draw marks in and the scales.
function frame({ height, x, y, y2 = null, xTime = false, xFormat = String, yFormat = String, y2Format = String,
                 xLabel = "", yLabel = "", y2Label = "", title }) {
  const inner = { left: MARGIN.left, right: WIDTH - MARGIN.right, top: MARGIN.top, bottom: height - MARGIN.bottom };
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart", role: "img", "aria-label": title });
  const sx = linear(x, [inner.left, inner.right]);
  const sy = linear(y, [inner.bottom, inner.top]);
  const grid = svg("g", { class: "grid" });
  const axes = svg("g", { class: "axis" });
  for (const v of niceTicks(...y)) {
    grid.append(svg("line", { x1: inner.left, x2: inner.right, y1: sy(v), y2: sy(v) }));
    axes.append(text(inner.left - 8, sy(v) + 4, yFormat(v), { "text-anchor": "end" }));
  }
  const xt = xTime ? timeTicks(...x) : { ticks: niceTicks(...x, 8) };
  for (const v of xt.ticks) {
    axes.append(svg("line", { x1: sx(v), x2: sx(v), y1: inner.bottom, y2: inner.bottom + 5 }));
    const label = xTime ? timeLabel(v, xt.step) : xFormat(v);
    axes.append(text(sx(v), inner.bottom + 20, label, { "text-anchor": "middle" }));
  }
  axes.append(svg("line", { x1: inner.left, x2: inner.right, y1: inner.bottom, y2: inner.bottom }));
  axes.append(svg("line", { x1: inner.left, x2: inner.left, y1: inner.top, y2: inner.bottom }));
  if (xLabel) {
    axes.append(text((inner.left + inner.right) / 2, height - 4, xLabel, { class: "label", "text-anchor": "middle" }));
  }
  if (yLabel) axes.append(text(inner.left, 14, yLabel, { class: "label", "text-anchor": "middle" }));
  let sy2 = null;
  if (y2) {
    sy2 = linear(y2, [inner.bottom, inner.top]);
    axes.append(svg("line", { x1: inner.right, x2: inner.right, y1: inner.top, y2: inner.bottom }));
    for (const v of niceTicks(...y2)) axes.append(text(inner.right + 8, sy2(v) + 4, y2Format(v)));
    axes.append(text(inner.right, 14, y2Label, { class: "label", "text-anchor": "middle" }));
  }
  const marks = svg("g", { class: "marks" });
  root.append(grid, axes, marks);
  return { root, marks, sx, sy, sy2, inner };
}

function path(points) {
  return points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
}

function tooltip(node, content) {
  const title = svg("title");
  title.textContent = content;
  node.append(title);
  return node;
}

// One line per series over time: [{name, points: [{t (ms), v}]}].
export function timeLines({ series, height = 300, yFormat, yLabel, title, window: [t0, t1] }) {
  const values = series.flatMap((s) => s.points.map((p) => p.v));
  const f = frame({ height, x: [t0, t1], y: niceDomain(values, { zero: true }), xTime: true, yFormat, yLabel, title });
  series.forEach((s, i) => {
    const cls = `series-${i % 8}`;
    const pts = s.points.map((p) => [f.sx(p.t), f.sy(p.v)]);
    f.marks.append(svg("path", { d: path(pts), class: `line ${cls}` }));
    s.points.forEach((p, j) => {
      f.marks.append(tooltip(svg("circle", { cx: pts[j][0], cy: pts[j][1], r: 3, class: `dot ${cls}` }),
        `${s.name} · ${new Date(p.t).toLocaleString()} · ${yFormat(p.v)}`));
    });
  });
  return f.root;
}

// Feedback per bucket: stacked bars (thumbs up, thumbs down, other scores) and the mean score as a line on the right.
export function feedbackBars({ buckets, bucketMs, height = 320, title }) {
  const t0 = buckets.length ? buckets[0].t : Date.now() - bucketMs;
  const t1 = buckets.length ? buckets.at(-1).t + bucketMs : Date.now();
  const f = frame({
    height, x: [t0, t1], y: niceDomain(buckets.map((b) => b.count), { zero: true }), y2: [0, 1], xTime: true,
    yFormat: (v) => String(v), y2Format: (v) => v.toFixed(1), yLabel: "feedback", y2Label: "mean score", title,
  });
  const barWidth = Math.max(2, f.sx(t0 + bucketMs) - f.sx(t0) - 3);
  for (const b of buckets) {
    const other = Math.max(0, b.count - b.up - b.down);
    let base = 0;
    const parts = [[b.up, "up", "thumbs up"], [b.down, "down", "thumbs down"], [other, "other", "scored"]];
    for (const [n, cls, what] of parts) {
      if (!n) continue;
      const y0 = f.sy(base);
      const y1 = f.sy(base + n);
      const rect = svg("rect", { x: f.sx(b.t) + 1.5, y: y1, width: barWidth, height: y0 - y1, class: `bar ${cls}` });
      f.marks.append(tooltip(rect, `${new Date(b.t).toLocaleString()}: ${n} ${what}`));
      base += n;
    }
  }
  const scored = buckets.filter((b) => b.mean !== null);
  const pts = scored.map((b) => [f.sx(b.t + bucketMs / 2), f.sy2(b.mean)]);
  f.marks.append(svg("path", { d: path(pts), class: "line mean" }));
  scored.forEach((b, i) => {
    f.marks.append(tooltip(svg("circle", { cx: pts[i][0], cy: pts[i][1], r: 3.5, class: "dot mean" }),
      `mean score ${b.mean.toFixed(2)} over ${b.count}`));
  });
  return f.root;
}

// The cost-quality curve of an evaluation, with the live operating point marked.
export function costQuality({ points, live, height = 420, title, costFormat }) {
  const costs = points.map((p) => p.cost_per_1k);
  const qualities = points.map((p) => p.quality);
  if (live.cost_per_1k !== null) costs.push(live.cost_per_1k);
  if (live.quality !== null) qualities.push(live.quality);
  const f = frame({
    height, x: niceDomain(costs, { zero: true }), y: niceDomain(qualities, { min: 0, max: 1 }),
    xFormat: costFormat, yFormat: (v) => v.toFixed(2), xLabel: "cost per 1,000 requests (USD)", yLabel: "quality",
    title,
  });
  const sorted = [...points].sort((a, b) => a.cost_per_1k - b.cost_per_1k);
  const pts = sorted.map((p) => [f.sx(p.cost_per_1k), f.sy(p.quality)]);
  f.marks.append(svg("path", { d: path(pts), class: "line curve" }));
  sorted.forEach((p, i) => {
    f.marks.append(tooltip(svg("circle", { cx: pts[i][0], cy: pts[i][1], r: 5, class: "dot curve" }),
      `${p.label}: ${costFormat(p.cost_per_1k)} per 1k, quality ${p.quality.toFixed(3)}`));
    // Above and to the left, where a rising curve leaves room; rightwards only at the plot's left edge.
    const leftwards = pts[i][0] > f.inner.left + 120;
    f.marks.append(text(pts[i][0] + (leftwards ? -8 : 8), pts[i][1] - 10, p.label,
      { class: "point-label", "text-anchor": leftwards ? "end" : "start" }));
  });
  if (live.cost_per_1k !== null) {
    const x = f.sx(live.cost_per_1k);
    const caption = `live · ${live.requests.toLocaleString()} requests`;
    if (live.quality === null) { // cost known, quality not yet (no feedback): the line it lies on
      f.marks.append(svg("line", { x1: x, x2: x, y1: f.inner.top, y2: f.inner.bottom, class: "live-line" }));
      f.marks.append(text(x + 6, f.inner.top + 14, `${caption} (no feedback yet)`, { class: "live-label" }));
    } else {
      const y = f.sy(live.quality);
      const d = `M${x},${y - 9}L${x + 9},${y}L${x},${y + 9}L${x - 9},${y}Z`;
      const diamond = svg("path", { d, class: "live-point" });
      f.marks.append(tooltip(diamond,
        `${caption}: ${costFormat(live.cost_per_1k)} per 1k, quality ${live.quality.toFixed(3)}`));
      // below the point: the curve runs beside it
      f.marks.append(text(x, y + 26, caption, { class: "live-label", "text-anchor": "middle" }));
    }
  }
  return f.root;
}
