import type { UsageRow } from "../models/usage.js";

/**
 * The stacked usage chart of the console's usage and account pages and of serve's customer page
 * (docs/usage.md, "In the console" and "For your customers"), drawn with uPlot. Each element with a
 * `data-usage-chart` attribute names the `<script type="application/json">` block that holds its
 * data: `{ x: [day start, Unix seconds], series: [{ label, values }], from, to }`, one series per
 * group (a model, a feature, a spender); `from` and `to` (Unix seconds) are the range asked for:
 * the time axis spans exactly that, however few days had usage (without them, the days given).
 * Each day's bar starts at its day's tick; the credits axis starts at 0. Bars are stacked: each
 * series is drawn as its running total, the largest first, so every layer shows above the one
 * under it. The plot keeps room on its right for the last tick's label. Labels go to the legend
 * through uPlot, which sets them as text, never as markup. Plain ES2017, no other script needed;
 * `window.drawUsageCharts()` draws again (the customer page, after it fetched its data).
 */
export const USAGE_CHART_JS = `"use strict";
(function () {
  var COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d", "#4d5661"];
  function draw(box) {
    if (typeof uPlot !== "function") return;
    var source = document.getElementById(box.getAttribute("data-usage-chart") || "");
    if (!source) return;
    var data = JSON.parse(source.textContent || "{}");
    var x = data.x || [];
    var layers = data.series || [];
    if (box.chart) { box.chart.destroy(); box.chart = null; }
    box.textContent = "";
    if (x.length === 0 || layers.length === 0) { box.setAttribute("data-ready", "empty"); return; }
    var running = x.map(function () { return 0; });
    var stacked = layers.map(function (layer) {
      running = running.map(function (v, i) { return v + (layer.values[i] || 0); });
      return running.slice();
    });
    var series = [{}];
    var columns = [x];
    for (var i = layers.length - 1; i >= 0; i--) {
      var color = COLORS[i % COLORS.length];
      series.push({
        label: String(layers[i].label),
        stroke: color,
        fill: color,
        width: 0,
        points: { show: false },
        paths: uPlot.paths.bars({ size: [0.7, 60], align: 1 }),
        value: (function (own) { return function (u, v, s, idx) { return idx == null ? "--" : own[idx]; }; })(layers[i].values),
      });
      columns.push(stacked[i]);
    }
    var width = Math.max(300, Math.min(box.clientWidth || 900, 1100));
    var day = 86400;
    // The range asked for, not the days that had usage: one busy day must not stretch the axis.
    var lo = typeof data.from === "number" ? data.from : x[0];
    var hi = typeof data.to === "number" ? data.to : x[x.length - 1] + day;
    box.chart = new uPlot({
      width: width,
      height: 240,
      // Room on the right for the last tick's label (centred on its tick).
      padding: [12, 36, 0, 0],
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), data.timeZone || "Etc/UTC"); },
      scales: {
        x: { time: true, range: function () { return [lo, hi]; } },
        y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } },
      },
      series: series,
      axes: [{ space: 60 }, { size: 60 }],
      legend: { live: true },
      cursor: { points: { show: false } },
    }, columns, box);
    box.setAttribute("data-ready", "1");
  }
  function drawAll() {
    var boxes = document.querySelectorAll("[data-usage-chart]");
    for (var i = 0; i < boxes.length; i++) draw(boxes[i]);
  }
  window.drawUsageCharts = drawAll;
  drawAll();
})();
`;

/** A chart's data: `x` and each series' values in Unix seconds and credits; `from`/`to`: the axis. */
export interface ChartData {
  x: number[];
  series: { label: string; values: number[] }[];
  timeZone: string;
  from?: number;
  to?: number;
}

/**
 * A chart's data block from usage rows: one series per group value, summed per window start.
 * With `days` (UTC days, the query's `from` and `to` at UTC midnights): every day of the range is a
 * window, 0 where nothing was spent, and the axis spans the range.
 */
export function chartData(
  rows: readonly UsageRow[],
  dimension: string | null,
  timeZone: string,
  days?: { from: Date; to: Date },
): ChartData {
  const starts = [...new Set(rows.map((r) => r.start.getTime()))];
  if (days !== undefined) for (let t = days.from.getTime(); t < days.to.getTime(); t += 86_400_000) starts.push(t);
  starts.splice(0, starts.length, ...new Set(starts));
  starts.sort((a, b) => a - b);
  const at = new Map(starts.map((t, i) => [t, i]));
  const byLabel = new Map<string, number[]>();
  const total = new Map<string, number>();
  for (const r of rows) {
    if (r.kind !== "spend") continue;
    const v = dimension === null ? "credits" : (r as unknown as Record<string, unknown>)[dimension];
    const label = v === null || v === undefined ? "(none)" : String(v);
    let values = byLabel.get(label);
    if (values === undefined) byLabel.set(label, (values = starts.map(() => 0)));
    const i = at.get(r.start.getTime()) as number;
    values[i] = (values[i] ?? 0) + r.credits;
    total.set(label, (total.get(label) ?? 0) + r.credits);
  }
  // The biggest at the bottom of the stack; past 8 groups, the rest as one "other" layer.
  const order = [...byLabel.keys()].sort((a, b) => (total.get(b) ?? 0) - (total.get(a) ?? 0));
  const series = order.slice(0, 8).map((label) => ({ label, values: byLabel.get(label) as number[] }));
  if (order.length > 8) {
    const other = starts.map(() => 0);
    for (const label of order.slice(8))
      (byLabel.get(label) as number[]).forEach((v, i) => (other[i] = (other[i] ?? 0) + v));
    series.push({ label: `other (${order.length - 8})`, values: other });
  }
  return {
    x: starts.map((t) => t / 1000),
    series,
    timeZone: timeZone === "UTC" ? "Etc/UTC" : timeZone,
    ...(days === undefined ? {} : { from: days.from.getTime() / 1000, to: days.to.getTime() / 1000 }),
  };
}
