import type { UsageDimension, UsageRow } from "../core/models/usage.js";
import { html, jsonData, type Html } from "./html.js";

/**
 * The stacked usage chart of the console's usage and account pages and of serve's customer page
 * (docs/usage.md, "In the console" and "For your customers"), drawn with uPlot. Each element with a
 * `data-usage-chart` attribute names the `<script type="application/json">` block that holds its
 * data (`ChartData`): `{ x: [window start, Unix seconds], series: [{ label, values }], from, to }`,
 * one series per group (a model, a feature, a spender); `from` and `to` (Unix seconds) are the range
 * asked for: the time axis spans exactly that, however few days had usage (without them, the days
 * given). Each bar starts at its window's tick; the value axis starts at 0. Bars are stacked: each
 * series is drawn as its running total, the largest first, so every layer shows above the one
 * under it. The plot keeps room on its right for the last tick's label. Ticks read `Nov 3` (days)
 * or `Nov` (months), the year under the first and under each new year.
 *
 * The legend always reads figures: pointed at a bar, that window (`2026-11-03`) and each series'
 * value in it; otherwise the range and each series' total over it (`rest: "sum"`), or its value
 * in the last window (`rest: "last"`, for a balance). `money` (`{ currency, digits }`: values in
 * the currency's smallest unit) writes the axis and the legend in the currency (`$1,234.50`); other
 * values are written with thousands separators. Labels go to the legend through uPlot, which sets
 * them as text, never as markup. Plain ES2017, no other script needed; `window.drawUsageCharts()`
 * draws again (the customer page, after it fetched its data).
 */
export const USAGE_CHART_JS = `"use strict";
(function () {
  var COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d", "#4d5661"];
  var d = 86400;
  // Tick labels: month names (never 11/3 or 3/11), the year under the first tick and each new year.
  var STAMPS = [
    [365 * d, "{YYYY}", null, null, null, null, null, null, 1],
    [28 * d, "{MMM}", "\\n{YYYY}", null, null, null, null, null, 1],
    [d, "{MMM} {D}", "\\n{YYYY}", null, null, null, null, null, 1]
  ];
  // Ticks a day apart at the least (a month for monthly bars): a bar is never cut by an hour tick.
  var mo = 30 * d, y = 365 * d;
  var DAYS = [d, 2 * d, 3 * d, 4 * d, 5 * d, 6 * d, 7 * d, 14 * d, mo, 2 * mo, 3 * mo, 4 * mo, 6 * mo, y, 2 * y, 5 * y, 10 * y, 25 * y, 50 * y, 100 * y];
  var MONTHS = DAYS.slice(DAYS.indexOf(mo));
  // Whole smallest units on a money axis (never a tenth of a cent).
  var WHOLE = [];
  for (var e = 1; e < 1e16; e *= 10) WHOLE.push(e, 2 * e, 5 * e);
  function pad(n) { return (n < 10 ? "0" : "") + n; }
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
    var zone = data.timeZone || "Etc/UTC";
    var monthly = data.unit === "month";
    var locale = data.locale || undefined;
    var count = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
    var money = data.money || null;
    var scale = money ? Math.pow(10, money.digits) : 1;
    var cash = money ? new Intl.NumberFormat(locale, { style: "currency", currency: money.currency }) : null;
    function figure(v) { return cash ? cash.format(v / scale) : count.format(v); }
    // A window's start as the legend writes it: 2026-11-03, or 2026-11 for a month, in the chart's zone.
    function windowText(t) {
      var dt = uPlot.tzDate(new Date(t * 1e3), zone);
      var text = dt.getFullYear() + "-" + pad(dt.getMonth() + 1);
      return monthly ? text : text + "-" + pad(dt.getDate());
    }
    var day = monthly ? 0 : d;
    // The range asked for, not the days that had usage: one busy day must not stretch the axis.
    var lo = typeof data.from === "number" ? data.from : x[0];
    var hi = typeof data.to === "number" ? data.to : x[x.length - 1] + (monthly ? 31 * d : d);
    var last = data.rest === "last";
    // Without a window pointed at: the range (its last window, for a balance).
    var restText = last ? windowText(x[x.length - 1]) : windowText(lo) + " to " + windowText(monthly ? x[x.length - 1] : hi - day);
    var running = x.map(function () { return 0; });
    var stacked = layers.map(function (layer) {
      running = running.map(function (v, i) { return v + (layer.values[i] || 0); });
      return running.slice();
    });
    var series = [{
      label: monthly ? "Month" : "Day",
      value: function (u, v) { return v == null ? restText : windowText(v); },
    }];
    var columns = [x];
    for (var i = layers.length - 1; i >= 0; i--) {
      var color = COLORS[i % COLORS.length];
      var own = layers[i].values;
      var rest = last ? own[own.length - 1] || 0 : own.reduce(function (a, b) { return a + (b || 0); }, 0);
      series.push({
        label: String(layers[i].label),
        stroke: color,
        fill: color,
        width: 0,
        points: { show: false },
        paths: uPlot.paths.bars({ size: [0.7, 60], align: 1 }),
        value: (function (own, rest) { return function (u, v, s, idx) { return figure(idx == null ? rest : own[idx] || 0); }; })(own, rest),
      });
      columns.push(stacked[i]);
    }
    var width = Math.max(300, Math.min(box.clientWidth || 900, 1100));
    // Whole units on the axis once its steps are (€50, not €50.00).
    var whole = money ? new Intl.NumberFormat(locale, { style: "currency", currency: money.currency, minimumFractionDigits: 0, maximumFractionDigits: 0 }) : null;
    var yAxis = {
      size: money ? 76 : 60,
      values: function (u, ticks, axis, space, incr) {
        return ticks.map(function (v) { return whole && incr >= scale ? whole.format(v / scale) : figure(v); });
      },
    };
    if (money) yAxis.incrs = WHOLE;
    box.chart = new uPlot({
      width: width,
      height: 240,
      // Room on the right for the last tick's label (centred on its tick).
      padding: [12, 36, 0, 0],
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), zone); },
      scales: {
        x: { time: true, range: function () { return [lo, hi]; } },
        y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : money ? scale : 1]; } },
      },
      series: series,
      axes: [{ space: 60, values: STAMPS, incrs: monthly ? MONTHS : DAYS }, yAxis],
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

/** A chart's box and its data block, drawn by `USAGE_CHART_JS` (the console's usage.js). */
export function chartBox(id: string, label: string, data: ChartData): Html {
  return html`<div class="usage-chart" id="${id}" data-usage-chart="${id}-data" role="img" aria-label="${label}"></div>
    <script type="application/json" id="${id}-data">
      ${jsonData(data)}
    </script>`;
}

/** A chart's data: `x` and each series' values in Unix seconds and credits; `from`/`to`: the axis. */
export interface ChartData {
  x: number[];
  series: { label: string; values: number[] }[];
  timeZone: string;
  from?: number;
  to?: number;
  /** The windows: days (default) or calendar months. */
  unit?: "day" | "month";
  /** Values are money in the smallest unit of `currency`, which has `digits` decimals (2: cents). */
  money?: { currency: string; digits: number };
  /** What the legend reads with no window pointed at: each series' total (default) or its last value. */
  rest?: "sum" | "last";
  /** The locale figures are written in (the console: en-US); absent, the browser's. */
  locale?: string;
}

/**
 * A chart's data block from usage rows: one series per group value, summed per window start.
 * With `days` (UTC days, the query's `from` and `to` at UTC midnights): every day of the range is a
 * window, 0 where nothing was spent, and the axis spans the range.
 */
export function chartData(
  rows: readonly UsageRow[],
  dimension: UsageDimension | null,
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
    const v = dimension === null ? "credits" : r[dimension];
    const label = v === null || v === undefined ? `(no ${dimension ?? "group"})` : String(v);
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
    locale: "en-US",
    ...(days === undefined ? {} : { from: days.from.getTime() / 1000, to: days.to.getTime() / 1000 }),
  };
}
