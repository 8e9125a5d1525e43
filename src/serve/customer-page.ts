import { assetResponse } from "../console/assets.js";
import { USAGE_CHART_JS } from "../console/usage-chart.js";
import { UPLOT_CSS, UPLOT_JS } from "../console/vendor.js";

/**
 * The customer usage page of `serve` (docs/usage.md, "For your customers"): a static, read-only page
 * at `/customer` that a product links to or embeds in an iframe, with a customer token in the URL's
 * fragment (`/customer#token=…`: a fragment never reaches a server, a log or a Referer). Its script
 * reads the token, removes it from the address bar, and fetches the account's state (its balance,
 * what each feature allows and its alerts: docs/customer-state.md) and usage from the credit API
 * with it; it draws the usage with the console's chart. Who may frame it is
 * `CREDIT_CUSTOMER_FRAME_ANCESTORS` (CSP `frame-ancestors`); nothing but its own files runs.
 */
export const CUSTOMER_PREFIX = "/customer";

const PAGE = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <meta name="referrer" content="no-referrer" />
    <link rel="icon" href="data:," />
    <title>Usage</title>
    <link rel="stylesheet" href="customer/assets/uplot.css" />
    <link rel="stylesheet" href="customer/assets/customer.css" />
  </head>
  <body>
    <main>
      <h1>Usage</h1>
      <p id="status" role="status">Loading…</p>
      <section aria-labelledby="balance-heading">
        <h2 id="balance-heading">Balance</h2>
        <div class="cards">
          <div class="card"><div class="k">Available</div><div class="v" id="available">–</div></div>
          <div class="card"><div class="k">Reserved</div><div class="v" id="reserved">–</div></div>
          <div class="card"><div class="k">Spent, last 30 days</div><div class="v" id="spent">–</div></div>
        </div>
      </section>
      <section aria-labelledby="features-heading">
        <h2 id="features-heading">What you can use now</h2>
        <table id="features">
          <caption>Each feature: whether you can use it now, what is left of it and when it renews</caption>
          <thead><tr><th scope="col">Feature</th><th scope="col">Now</th><th scope="col" class="num">Used</th><th scope="col" class="num">Left</th><th scope="col">Renews</th></tr></thead>
          <tbody></tbody>
        </table>
      </section>
      <section aria-labelledby="alerts-heading">
        <h2 id="alerts-heading">Alerts</h2>
        <table id="alerts">
          <caption>Each alert on your account: what it watches and its line, the figure now, and whether it is in alarm</caption>
          <thead><tr><th scope="col">Alert</th><th scope="col">In alarm when</th><th scope="col" class="num">Now</th><th scope="col">State</th></tr></thead>
          <tbody></tbody>
        </table>
      </section>
      <section aria-labelledby="chart-heading">
        <h2 id="chart-heading">Credits per day, by model</h2>
        <div class="usage-chart" id="usage-chart" data-usage-chart="usage-data" role="img" aria-label="Credits spent per day by model, last 30 days"></div>
        <script type="application/json" id="usage-data">{}</script>
      </section>
      <section aria-labelledby="recent-heading">
        <h2 id="recent-heading">Recent charges</h2>
        <table id="recent">
          <caption>Credits spent per day and model, newest first</caption>
          <thead><tr><th scope="col">Day</th><th scope="col">Model</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Credits</th></tr></thead>
          <tbody></tbody>
        </table>
      </section>
    </main>
    <script src="customer/assets/uplot.js"></script>
    <script src="customer/assets/usage.js"></script>
    <script src="customer/assets/customer.js"></script>
  </body>
</html>
`;

const CUSTOMER_JS = `"use strict";
(function () {
  var KEY = "cm_customer_token";
  var status = document.getElementById("status");
  var token = null;
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    try { sessionStorage.setItem(KEY, token); } catch (e) { /* storage off in this frame: memory only */ }
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    try { token = sessionStorage.getItem(KEY); } catch (e) { token = null; }
  }
  if (!token) { status.textContent = "This link has no access token: open your usage page again from your account."; return; }
  var n = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  var zone = "UTC";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { zone = "UTC"; }
  var now = new Date();
  var from = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 29);
  var to = new Date(now.getFullYear(), now.getMonth(), now.getDate() + 1);
  function get(path) {
    return fetch(path, { headers: { authorization: "Bearer " + token }, credentials: "omit", cache: "no-store" }).then(function (r) {
      if (r.status === 401) throw new Error("expired");
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }
  var q = "from=" + encodeURIComponent(from.toISOString()) + "&to=" + encodeURIComponent(to.toISOString()) +
    "&interval=day&groupBy=model&kinds=spend&timeZone=" + encodeURIComponent(zone);
  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }
  // The account's state in one read (docs/customer-state.md): the balance and each feature.
  var dateText = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short", timeZone: zone });
  var NOW = { ok: "Available", feature_off: "Not in your plan", insufficient_credits: "Not enough credits", limit: "Limit reached" };
  function features(state) {
    var body = document.querySelector("#features tbody");
    state.features.forEach(function (f) {
      var tr = document.createElement("tr");
      cell(tr, f.unit ? f.feature + " (" + f.unit + ")" : f.feature);
      cell(tr, NOW[f.reason] || f.reason, f.allowed ? "ok" : "bad");
      cell(tr, n.format(f.used), "num");
      cell(tr, n.format(f.left), "num");
      cell(tr, f.resetsAt ? dateText.format(new Date(f.resetsAt)) : "–");
      body.appendChild(tr);
    });
    if (state.features.length === 0) {
      var tr = document.createElement("tr");
      cell(tr, "Every feature uses your balance.");
      tr.firstChild.colSpan = 5;
      body.appendChild(tr);
    }
  }
  // Each alert threshold with its state (docs/customer-state.md, "Alerts that fire once per crossing").
  var pct = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });
  var fraction = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  var BUILT_IN = { low_credits: "Low credits", credits_exhausted: "Credits exhausted" };
  var WINDOW = { day: "today", week: "this week", month: "this month" };
  function credits(v) { return v === 1 ? "1 credit" : n.format(v) + " credits"; }
  function figure(t, v) {
    if (v === null || v === undefined) return "–";
    return t.kind === "left_percent" ? pct.format(v / 100) : n.format(v);
  }
  // What the alert watches, then its line on the alarm side: "Available: 100 credits or less".
  function condition(t, line) {
    if (t.kind === "available") return "Available: " + credits(line) + " or less";
    if (t.kind === "left_percent") return "Left" + (t.feature ? " of " + t.feature : "") + ": " + pct.format(line / 100) + " or less";
    if (t.kind === "expiring")
      return "Expiring within " + fraction.format(t.withinDays) + (t.withinDays === 1 ? " day" : " days") + ": " + credits(line) + " or more";
    if (t.kind === "period_spend") {
      var calendar = WINDOW[t.window];
      var what = "Spent " + (calendar || "in the current " + String(t.window).replace(/_/g, " "));
      if (t.spender) what += " by " + t.spender;
      if (t.feature) what += " on " + t.feature;
      if (calendar) what += " (" + (t.timeZone || "UTC") + ")";
      return what + ": " + credits(line) + " or more";
    }
    return String(t.kind) + ": " + n.format(line);
  }
  function alerts(state) {
    var body = document.querySelector("#alerts tbody");
    (state.alerts || []).forEach(function (a) {
      var tr = document.createElement("tr");
      cell(tr, a.source === "builtIn" && BUILT_IN[a.threshold.id] ? BUILT_IN[a.threshold.id] : a.threshold.id);
      cell(tr, condition(a.threshold, a.line));
      cell(tr, figure(a.threshold, a.value), "num short");
      cell(tr, a.state === "in_alarm" ? "In alarm" : "OK", a.state === "in_alarm" ? "bad short" : "ok short");
      body.appendChild(tr);
    });
    if (!state.alerts || state.alerts.length === 0) {
      var tr = document.createElement("tr");
      cell(tr, "No alerts are set on your account.");
      tr.firstChild.colSpan = 4;
      body.appendChild(tr);
    }
  }
  Promise.all([get("credits/state"), get("credits/usage?" + q)]).then(function (answers) {
    var balance = answers[0], usage = answers[1];
    document.getElementById("available").textContent = n.format(balance.available);
    document.getElementById("reserved").textContent = n.format(balance.reserved);
    // Each other unit's available on a card of its own: nothing adds two units (docs/units.md).
    Object.keys(balance.units || {}).forEach(function (u) {
      var card = document.createElement("div"), k = document.createElement("div"), v = document.createElement("div");
      card.className = "card";
      k.className = "k";
      k.textContent = "Available (" + u + ")";
      v.className = "v";
      v.textContent = n.format(balance.units[u].available) + " " + u;
      card.appendChild(k);
      card.appendChild(v);
      document.querySelector("#balance-heading + .cards").appendChild(card);
    });
    features(balance);
    alerts(balance);
    var starts = [], at = {}, byModel = {}, totals = {}, spent = 0;
    usage.rows.forEach(function (r) {
      var t = Date.parse(r.start) / 1000;
      if (!(t in at)) { at[t] = true; starts.push(t); }
    });
    starts.sort(function (a, b) { return a - b; });
    var index = {};
    starts.forEach(function (t, i) { index[t] = i; });
    usage.rows.forEach(function (r) {
      if (r.unit) return; // the chart and the total count the default unit (docs/units.md)
      var label = r.model == null ? "(no model)" : String(r.model);
      if (!byModel[label]) { byModel[label] = starts.map(function () { return 0; }); totals[label] = 0; }
      byModel[label][index[Date.parse(r.start) / 1000]] += r.credits;
      totals[label] += r.credits;
      spent += r.credits;
    });
    document.getElementById("spent").textContent = n.format(spent);
    var labels = Object.keys(byModel).sort(function (a, b) { return totals[b] - totals[a]; });
    var series = labels.map(function (l) { return { label: l, values: byModel[l] }; });
    document.getElementById("usage-data").textContent = JSON.stringify({ x: starts, series: series, timeZone: zone, from: from.getTime() / 1000, to: to.getTime() / 1000 });
    if (typeof window.drawUsageCharts === "function") window.drawUsageCharts();
    var body = document.querySelector("#recent tbody");
    var rows = usage.rows.slice().sort(function (a, b) { return Date.parse(b.start) - Date.parse(a.start) || b.credits - a.credits; }).slice(0, 100);
    // Days as YYYY-MM-DD in the reader's zone, as the chart's legend writes them.
    var day = new Intl.DateTimeFormat("en-US", { year: "numeric", month: "2-digit", day: "2-digit", timeZone: zone });
    function isoDay(t) {
      var p = {};
      day.formatToParts(new Date(t)).forEach(function (x) { p[x.type] = x.value; });
      return p.year + "-" + p.month + "-" + p.day;
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      cell(tr, isoDay(r.start));
      cell(tr, r.model == null ? "(no model)" : String(r.model));
      cell(tr, n.format(r.requests), "num");
      cell(tr, n.format(r.credits) + (r.unit ? " " + r.unit : ""), "num");
      body.appendChild(tr);
    });
    if (rows.length === 0) {
      var tr = document.createElement("tr");
      cell(tr, "No usage in the last 30 days.");
      tr.firstChild.colSpan = 4;
      body.appendChild(tr);
    }
    status.textContent = "Days are counted in your time zone (" + zone + ").";
    document.body.setAttribute("data-ready", "1");
  }).catch(function (e) {
    status.textContent = e && e.message === "expired"
      ? "This link has expired: open your usage page again from your account."
      : "Your usage could not be loaded. Try again later.";
    document.body.setAttribute("data-ready", "error");
  });
})();
`;

const CUSTOMER_CSS = `:root{--fg:#1b1f24;--muted:#4d5661;--line:#d5dbe1;--soft:#f4f6f8}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff;overflow-wrap:anywhere}
main{padding:1rem 1.2rem;max-width:1100px}h1{font-size:1.4rem;margin:.2rem 0 .6rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
#status{color:var(--muted)}.cards{display:flex;gap:.8rem;flex-wrap:wrap}.card{border:1px solid var(--line);border-radius:6px;padding:.5rem .9rem;min-width:9rem}
.card .v{font-size:1.4rem;font-weight:600;font-variant-numeric:tabular-nums}.card .k{color:var(--muted);font-size:.85em}
.usage-chart{min-height:250px}.usage-chart .u-legend{font-size:.85em}
table{border-collapse:collapse;width:100%}caption{text-align:left;color:var(--muted);padding:.2rem 0}th,td{border-bottom:1px solid var(--line);padding:.3rem .5rem;text-align:left}
th{background:var(--soft);font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a6b2f}.bad{color:#a3261b;font-weight:600}.short{white-space:nowrap}
`;

const ASSETS: ReadonlyMap<string, readonly [string, string]> = new Map([
  ["customer.js", ["text/javascript; charset=utf-8", CUSTOMER_JS]],
  ["customer.css", ["text/css; charset=utf-8", CUSTOMER_CSS]],
  ["usage.js", ["text/javascript; charset=utf-8", USAGE_CHART_JS]],
  ["uplot.js", ["text/javascript; charset=utf-8", UPLOT_JS]],
  ["uplot.css", ["text/css; charset=utf-8", UPLOT_CSS]],
]);

/** The page's response headers: its own files only, framed only by `frameAncestors`. */
export function customerPageHeaders(frameAncestors: readonly string[]): Record<string, string> {
  const headers: Record<string, string> = {
    "content-type": "text/html; charset=utf-8",
    "content-security-policy": [
      "default-src 'none'",
      "script-src 'self'",
      "style-src 'self'",
      "connect-src 'self'",
      "img-src 'self' data:",
      "base-uri 'none'",
      "form-action 'none'",
      `frame-ancestors ${frameAncestors.join(" ")}`,
    ].join("; "),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
  };
  // Browsers without CSP level 2 read X-Frame-Options; it can only say "nobody" for us.
  if (frameAncestors.includes("'none'")) headers["x-frame-options"] = "DENY";
  return headers;
}

/** The answer to a GET or HEAD under `/customer` (serve, with customer tokens on): the page or one of its files. */
export function customerPage(path: string, frameAncestors: readonly string[]): Response {
  if (path === CUSTOMER_PREFIX)
    return new Response(PAGE, { status: 200, headers: customerPageHeaders(frameAncestors) });
  const name = path.startsWith(`${CUSTOMER_PREFIX}/assets/`) ? path.slice(`${CUSTOMER_PREFIX}/assets/`.length) : "";
  const asset = ASSETS.get(name);
  if (asset === undefined)
    return new Response("Not found.", {
      status: 404,
      headers: { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff" },
    });
  return assetResponse(asset);
}
