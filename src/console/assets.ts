import { UPLOT_CSS, UPLOT_JS } from "./vendor.js";
import { USAGE_CHART_JS } from "./usage-chart.js";

/**
 * The console's own script, served as a file (the Content-Security-Policy allows no inline
 * script): draws the balance chart with uPlot from the page's JSON data block. Written as
 * plain ES2017 for any current browser; nothing else on the pages needs script.
 */
const CONSOLE_JS = `"use strict";
(function () {
  var box = document.getElementById("balance-chart");
  var data = document.getElementById("balance-data");
  if (!box || !data || typeof uPlot !== "function") return;
  var series = JSON.parse(data.textContent || "[[],[]]");
  if (series[0].length < 2) return;
  var width = Math.max(320, Math.min(box.clientWidth || 900, 1100));
  // The time axis in UTC, as the journal's times; each tick says what changed since the one before
  // (a year, a month, a day, a time): sensible units whether the entries span seconds or years.
  // Fractions of a second only when the entries span less than a few seconds.
  var s = 1, m = 60, h = 3600, d = 86400, mo = 30 * d, y = 365 * d;
  var incrs = [0.001, 0.01, 0.1, s, 2 * s, 5 * s, 10 * s, 15 * s, 30 * s, m, 2 * m, 5 * m, 10 * m, 15 * m, 30 * m, h, 2 * h, 3 * h,
    6 * h, 12 * h, d, 2 * d, 7 * d, 14 * d, mo, 2 * mo, 3 * mo, 6 * mo, y, 2 * y, 5 * y, 10 * y, 25 * y, 50 * y, 100 * y];
  var stamps = [
    [y, "{YYYY}", null, null, null, null, null, null, 1],
    [28 * d, "{MMM}", "\\n{YYYY}", null, null, null, null, null, 1],
    [d, "{MMM} {D}", "\\n{YYYY}", null, null, null, null, null, 1],
    [m, "{HH}:{mm}", "\\n{YYYY}-{MM}-{DD}", null, "\\n{MMM} {D}", null, null, null, 1],
    [s, "{HH}:{mm}:{ss}", "\\n{YYYY}-{MM}-{DD}", null, "\\n{MMM} {D}", null, null, null, 1],
    [0.001, "{HH}:{mm}:{ss}.{fff}", "\\n{YYYY}-{MM}-{DD}", null, "\\n{MMM} {D}", null, null, null, 1]
  ];
  var grouped = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 });
  // Kept on the element: the browser tests read the axis it drew.
  box.chart = new uPlot({
    width: width,
    height: 220,
    title: "Balance over time (UTC)",
    // Room on the right for the last tick's label (centred on its tick).
    padding: [12, 36, 0, 0],
    tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
    scales: { x: { time: true } },
    series: [{}, { label: "Balance", stroke: "#1f5fbf", width: 2, fill: "rgba(31,95,191,0.08)" }],
    axes: [
      { incrs: incrs, values: stamps, space: 70 },
      { size: 60, values: function (u, ticks) { return ticks.map(function (v) { return grouped.format(v); }); } }
    ],
    legend: { live: false },
  }, series, box);
  box.setAttribute("data-ready", "1");
})();
`;

const CONSOLE_CSS = `:root{--fg:#1b1f24;--muted:#4d5661;--line:#d5dbe1;--bg:#fff;--soft:#f4f6f8;--accent:#1f5fbf;--bad:#a4161a;--ok:#1b6e35}
*{box-sizing:border-box}body{overflow-wrap:anywhere;margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.4rem 1.5rem;align-items:center;padding:.6rem 1.2rem;background:#16202c;color:#fff}
header a{color:#fff;text-decoration:none}header a:hover,header a:focus{text-decoration:underline}
header .brand{font-weight:700}header nav{display:flex;gap:1rem;flex-wrap:wrap}header .who{margin-left:auto;font-size:.9em;color:#dfe6ee}
main{padding:1rem 1.2rem;max-width:1200px}h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
a{color:var(--accent)}table{border-collapse:collapse;width:100%;margin:.3rem 0 .8rem}th,td{border-bottom:1px solid var(--line);padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}th,td.num,td.short{overflow-wrap:normal}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:.8rem;flex-wrap:wrap}.card{border:1px solid var(--line);border-radius:6px;padding:.5rem .9rem;min-width:9rem}
.card .v{font-size:1.4rem;font-weight:600;font-variant-numeric:tabular-nums}.card .k{color:var(--muted);font-size:.85em}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.muted{color:var(--muted)}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
form.inline{display:inline}form.box label.grow{flex:1 1 18rem}form.box>a{padding-bottom:.35rem}form.actions{display:flex;flex-wrap:wrap;gap:.6rem;align-items:center;margin:1rem 0}form.actions button+a{margin-left:.2rem}.row-action{margin-top:.3rem}.row-action button{white-space:nowrap;padding:.15rem .5rem;font-size:.9em}form.box{border:1px solid var(--line);border-radius:6px;padding:.7rem;margin:.5rem 0;display:flex;gap:.6rem;flex-wrap:wrap;align-items:end}
label{display:flex;flex-direction:column;font-size:.85em;color:var(--muted);gap:.15rem}input,select{font:inherit;padding:.25rem .4rem;border:1px solid #8a949e;border-radius:4px}
button{font:inherit;padding:.3rem .8rem;border-radius:4px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
button.secondary{background:#fff;color:var(--accent)}button.danger{background:var(--bad);border-color:var(--bad)}
.notice{border-left:4px solid var(--ok);background:#eef7f0;padding:.5rem .8rem;margin:.5rem 0}.error{border-left:4px solid var(--bad);background:#fbeeee;padding:.5rem .8rem;margin:.5rem 0}
.pager{display:flex;gap:1rem;margin:.4rem 0}meter{width:8rem}td meter{display:block;width:100%;max-width:8rem;margin:.2rem 0 0 auto}#balance-chart{min-height:230px;margin:.5rem 0}
time{overflow-wrap:normal}time>span,.pair,.basis{white-space:nowrap}.phrase{overflow-wrap:normal}td.wide{min-width:10rem}form button+a{margin-left:.8rem}
ul.pairs{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:0 1rem}ul.pairs li{margin:0}
form.login{display:flex;flex-direction:column;align-items:flex-start;gap:.6rem;max-width:32rem}form.login label{align-self:stretch}
dl.meta{display:grid;grid-template-columns:fit-content(40%) minmax(0,1fr);gap:.1rem .8rem;margin:0}dl.meta dt{color:var(--muted);min-width:9ch}dl.meta dd{margin:0}
.id,.user{display:inline-block;max-width:11ch;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;vertical-align:bottom}.user{max-width:24ch}
fieldset.types{display:flex;flex-wrap:wrap;gap:.2rem 1.1rem;flex-basis:100%;margin:0;padding:.3rem .7rem .5rem;border:1px solid var(--line);border-radius:4px}
fieldset.types legend{font-size:.85em;color:var(--muted);padding:0 .3rem}fieldset.types label{flex-direction:row;align-items:center;gap:.35rem;font-size:.9em;color:var(--fg)}
.usage-chart{min-height:250px;margin:.5rem 0}.usage-chart .u-legend{font-size:.85em}
@media (max-width:1100px){td dl.meta{grid-template-columns:minmax(0,1fr)}td dl.meta dd{margin-bottom:.2rem}}
@media (max-width:900px){main{padding:.8rem .6rem}header{padding:.5rem .6rem}table{font-size:13px}th,td{padding:.3rem .3rem}}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:.5rem;background:#fff;color:var(--accent);padding:.3rem}
`;

/** The files the handler serves under `<basePath>/assets/`: name → [content type, body]. */
export const ASSETS: ReadonlyMap<string, readonly [string, string]> = new Map([
  ["console.js", ["text/javascript; charset=utf-8", CONSOLE_JS]],
  ["console.css", ["text/css; charset=utf-8", CONSOLE_CSS]],
  ["uplot.js", ["text/javascript; charset=utf-8", UPLOT_JS]],
  ["usage.js", ["text/javascript; charset=utf-8", USAGE_CHART_JS]],
  ["uplot.css", ["text/css; charset=utf-8", UPLOT_CSS]],
]);

/** A file's answer (the console's and the customer page's): cached an hour, never sniffed; a HEAD gets no body. */
export function assetResponse(asset: readonly [string, string], head = false): Response {
  return new Response(head ? null : asset[1], {
    headers: { "content-type": asset[0], "cache-control": "public, max-age=3600", "x-content-type-options": "nosniff" },
  });
}
