// Time-series charts with the vendored uPlot (global `uPlot`, MIT, see vendor/uPlot.LICENSE.txt).

import { usd } from "./format.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const UNITS = { minute: 60, hour: 3600, day: 86400 };
const plots = new Map(); // element id -> uPlot

export function bucketSeconds(text) {
  const [n, unit] = text.split(" ");
  return Number(n) * UNITS[unit.replace(/s$/, "")];
}

// Long rows [{t, series, cost_usd}] -> uPlot's aligned columns over the whole range, zeros where
// nothing was spent, series ordered by total cost (the biggest first gets the first colour).
export function align(rows, rangeSeconds, step, now = Date.now() / 1000) {
  const totals = new Map();
  for (const r of rows) totals.set(r.series, (totals.get(r.series) || 0) + r.cost_usd);
  const names = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
  // Bucket starts come from SQL (time_bucket in the daemon's zone); extend them by `step` both ways.
  const anchor = rows.length ? rows[0].t : Math.floor(now / step) * step;
  const first = anchor - Math.floor((anchor - (now - rangeSeconds)) / step) * step;
  const xs = [];
  for (let t = first; t <= now; t += step) xs.push(t);
  const index = (t) => Math.round((t - first) / step);
  const columns = names.map(() => new Array(xs.length).fill(0));
  for (const r of rows) {
    const i = index(r.t);
    if (i >= 0 && i < xs.length) columns[names.indexOf(r.series)][i] += r.cost_usd;
  }
  return { names, data: [xs, ...columns], totals };
}

export function draw(el, rows, rangeSeconds, step) {
  const old = plots.get(el.id);
  if (old) old.destroy();
  plots.delete(el.id);
  el.textContent = "";
  const { names, data } = align(rows, rangeSeconds, step);
  el.dataset.series = String(names.length);
  el.dataset.total = String(rows.reduce((s, r) => s + r.cost_usd, 0));
  if (!names.length) {
    el.innerHTML = '<p class="empty">No spend in this range.</p>';
    return null;
  }
  const width = Math.max(260, el.clientWidth || 600);
  const opts = {
    width,
    height: width < 500 ? 200 : 240,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [
      { stroke: "currentColor", grid: { stroke: "rgba(128,128,128,0.15)" } },
      {
        stroke: "currentColor",
        size: 64,
        grid: { stroke: "rgba(128,128,128,0.15)" },
        values: (u, ticks) => {
          const step = ticks.length > 1 ? ticks[1] - ticks[0] : 1;
          const digits = (String(+step.toPrecision(6)).split(".")[1] || "").length;
          return ticks.map((v) => "$" + v.toFixed(digits));
        },
      },
    ],
    series: [
      {},
      ...names.map((name, i) => ({
        label: name,
        stroke: PALETTE[i % PALETTE.length],
        fill: PALETTE[i % PALETTE.length] + "22",
        width: 2,
        paths: uPlot.paths.stepped({ align: 1 }),
        points: { show: false },
        value: (u, v) => usd(v),
      })),
    ],
  };
  const plot = new uPlot(opts, data, el);
  plots.set(el.id, plot);
  return plot;
}

// Keep charts as wide as their cards (laptop <-> phone, rotation).
const observer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const plot = plots.get(entry.target.id);
    const width = Math.floor(entry.contentRect.width);
    if (plot && width > 0 && Math.abs(width - plot.width) > 4) {
      plot.setSize({ width, height: width < 500 ? 200 : 240 });
    }
  }
});

export function watch(el) {
  observer.observe(el);
}
