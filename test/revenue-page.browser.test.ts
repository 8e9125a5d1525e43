/**
 * The console's revenue page in Chromium (docs/console.md, "Revenue"): per currency, the deferred
 * balance at each month's end and each month's recognized revenue and breakage drawn, the table,
 * the CSV, axe-core clean, a hostile account id shown as text. UPDATE_SCREENSHOTS=1 writes
 * docs/console/revenue.png.
 */
import { existsSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConsoleHandler, toNodeHandler } from "../src/console/index.js";
import { createCreditManager, type CreditManager } from "../src/index.js";

const CHROMIUM = "/usr/bin/chromium";
const root = join(import.meta.dirname, "..");
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const DAY = 86_400_000;
const HOSTILE = `<img src=x onerror="window.__xss=1">`;

/** The browser's globals the page functions use (the project's types have no DOM library). */
interface Win {
  __xss?: unknown;
  axe: { run: (o: unknown) => Promise<{ violations: { id: string; impact: string; nodes: unknown[] }[] }> };
  document: { getElementById(id: string): { chart?: { series: { label?: string }[]; data: number[][] } } | null };
}

/**
 * A year of a small book, month by month on the manager's clock: "acme" tops up $99 for 30,000
 * credits each month and uses most of them, "globex" buys €250 of credits a quarter that expire
 * after 60 days, a trial account gets free credits, and an account with a hostile id buys once.
 */
async function seed(m: CreditManager, clock: { t: number }, months: number): Promise<void> {
  const now = new Date();
  const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - (months - 1), 1);
  for (let i = 0; i < months; i++) {
    const month = Date.UTC(new Date(start).getUTCFullYear(), new Date(start).getUTCMonth() + i, 1);
    clock.t = month + 2 * DAY;
    await m.credits.addCredits("acme", 30_000, {
      source: "payment",
      costBasis: { perCredit: "33/100", currency: "USD" },
    });
    await m.credits.addCredits("trial-7", 500, { source: "trial" });
    if (i % 3 === 0)
      await m.credits.addCredits("globex", 50_000, {
        costBasis: { perCredit: "1/2", currency: "EUR" },
        expiresAt: new Date(clock.t + 60 * DAY),
      });
    if (i === 4) await m.credits.addCredits(HOSTILE, 1_000, { costBasis: { perCredit: "2", currency: "USD" } });
    for (const d of [6, 13, 20, 27]) {
      clock.t = month + d * DAY;
      await m.credits.deductCredits("acme", 5_000 + 400 * ((i + d) % 6), { feature: "chat" });
      await m.credits
        .deductCredits("globex", 3_000 + 250 * ((i * d) % 5), { feature: "search" })
        .catch(() => undefined);
      await m.expiration.runAll();
    }
  }
  clock.t = Date.now();
}

// reason: needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)
describe.skipIf(!existsSync(CHROMIUM))("the console's revenue page in a browser", () => {
  let browser: Browser;
  let m: CreditManager;
  let server: Server;
  let base: string;
  const problems: string[] = [];
  const clock = { t: Date.now() };

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu"],
    });
    m = await createCreditManager({ clock: () => new Date(clock.t) });
    await seed(m, clock, 12);
    const handler = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "finance@example.com" }) });
    server = createServer(toNodeHandler(handler));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    if (server) await new Promise((r) => server.close(r));
    await m?.close();
  });

  async function open(url: string): Promise<Page> {
    const p = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    p.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
    });
    p.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
    expect((await p.goto(url))?.status(), url).toBe(200);
    return p;
  }

  it("draws each currency's deferred balance and monthly revenue, lists every month, and passes axe-core", async () => {
    const p = await open(`${base}/console/revenue`);
    for (const id of ["deferred-USD", "recognized-USD", "deferred-EUR", "recognized-EUR"])
      await p.waitForSelector(`#${id}[data-ready='1'] canvas`);
    const series = await p.evaluate(() => {
      const chart = (globalThis as unknown as Win).document.getElementById("recognized-USD")?.chart;
      return chart?.series.slice(1).map((s) => s.label);
    });
    expect(new Set(series)).toEqual(new Set(["recognized (USD)", "breakage (USD)"]));
    // The page's figures are the library's.
    const now = new Date();
    const report = await m.credits.getRevenue({
      from: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 11, 1)),
      to: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)),
      interval: "month",
    });
    const eur = report.rows.filter((r) => r.currency === "EUR");
    expect(eur.reduce((s, r) => s + r.breakage, 0)).toBeGreaterThan(0);
    const deferred = await p.evaluate(() => {
      const chart = (globalThis as unknown as Win).document.getElementById("deferred-EUR")?.chart;
      return chart?.data[1];
    });
    expect(deferred).toEqual(eur.map((r) => r.deferredEnd));
    expect(await p.locator("#revenue-table tbody tr").count()).toBe(report.rows.length);
    // The navigation links the page.
    expect(await p.locator("nav a", { hasText: "Revenue" }).getAttribute("href")).toBe("/console/revenue");
    // axe-core through the debugging protocol: the CSP allows no injected script.
    await p.evaluate(axeSource);
    const serious = await p.evaluate(async () => {
      const r = await (globalThis as unknown as Win).axe.run({ resultTypes: ["violations"] });
      return r.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => v.id);
    });
    expect(serious).toEqual([]);
    // No page wider than the window, at 1,100 px and at 800.
    expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(1100);
    // Money in its currency: the cards, the table and the charts' legends and axes ($1,234.56, €…).
    const cards = await p.locator("#revenue-USD .card .v").allTextContents();
    expect(cards).toHaveLength(5);
    for (const c of cards) expect(c).toMatch(/^\$[\d,]+\.\d{2}$/);
    const paid = report.rows.filter((r) => r.currency === "USD").reduce((s, r) => s + r.paid, 0);
    expect(cards[1]).toBe(new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" }).format(paid / 100));
    expect(await p.locator("#revenue-table tbody tr td.num").first().textContent()).toMatch(/^[$€][\d,]+\.\d{2}$/);
    // The legends read figures, never uPlot's "--": without a month pointed at, the range's totals
    // (the text without the ":" the style sheet adds).
    const legend = (await p.locator("#recognized-EUR .u-legend").textContent()) ?? "";
    expect(legend).not.toContain("--");
    const recognized = eur.reduce((s, r) => s + r.recognized, 0);
    expect(legend).toContain(
      `recognized (EUR)${new Intl.NumberFormat("en-US", { style: "currency", currency: "EUR" }).format(recognized / 100)}`,
    );
    expect(await p.locator("#deferred-EUR .u-legend").textContent()).toContain(
      new Intl.NumberFormat("en-US", { style: "currency", currency: "EUR" }).format(
        (eur.at(-1)?.deferredEnd ?? 0) / 100,
      ),
    );
    const ticks = await p.evaluate(() => {
      const chart = (globalThis as unknown as Win).document.getElementById("deferred-EUR")?.chart as unknown as {
        axes: { _values?: string[] }[];
      };
      return chart.axes[1]?._values ?? [];
    });
    expect(ticks.length).toBeGreaterThan(1);
    for (const t of ticks) expect(t).toMatch(/^€[\d,.K]+$/);
    // Pointed at a month, the legend reads that month.
    const box = await p.locator("#recognized-EUR .u-over").boundingBox();
    if (box === null) throw new Error("no plot");
    await p.mouse.move(box.x + box.width - 20, box.y + box.height / 2);
    expect(await p.locator("#recognized-EUR .u-legend").textContent()).toContain(
      `Month${new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 7)}`,
    );
    // The months are ISO text fields, never the browser's month picker.
    expect(await p.locator("input[name=from]").getAttribute("placeholder")).toBe("YYYY-MM");
    expect(await p.locator("input[type=month]").count()).toBe(0);
    await p.setViewportSize({ width: 800, height: 900 });
    await p.reload();
    await p.waitForSelector("#deferred-USD[data-ready='1'] canvas");
    expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(800);
    await p.setViewportSize({ width: 1100, height: 900 });
    if (process.env.UPDATE_SCREENSHOTS === "1")
      await p.screenshot({ path: join(root, "docs/console/revenue.png"), fullPage: true });
    expect(problems).toEqual([]);
    await p.close();
  }, 120_000);

  it("one account, a hostile id as text; the CSV makes it inert", async () => {
    const p = await open(`${base}/console/revenue?account=${encodeURIComponent(HOSTILE)}`);
    await p.waitForSelector("#deferred-USD[data-ready='1'] canvas");
    expect(await p.evaluate(() => (globalThis as unknown as Win).__xss)).toBeUndefined();
    expect(await p.locator("main img").count()).toBe(0);
    expect(await p.locator("main").textContent()).toContain(HOSTILE);
    const csv = await (await fetch(`${base}/console/revenue.csv`)).text();
    expect(csv.split("\r\n")[0]).toBe(
      "start,end,currency,account,catchUpThrough,deferredStartMinor,paidMinor,recognizedMinor,breakageMinor,refundsMinor,deferredEndMinor,unbilledCredits",
    );
    expect(csv).toContain(`,USD,"<img src=x onerror=""window.__xss=1"">",,`);
    expect(problems).toEqual([]);
    await p.close();
  }, 60_000);
});

declare const document: { documentElement: { scrollWidth: number } };
