/**
 * Where people look at usage, in Chromium (docs/usage.md, "In the console" and "For your
 * customers"): the console's usage and account pages and serve's customer page draw their charts,
 * pass axe-core, and show hostile dimension values (a model or spender that is markup) as text.
 * UPDATE_SCREENSHOTS=1 writes docs/console/usage.png and docs/usage-customer.png.
 */
import { existsSync, readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pino } from "pino";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConsoleHandler, toNodeHandler } from "../src/console/index.js";
import { createCreditManager, type CreditManager } from "../src/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { memoryKeyStore } from "./memory-key-store.js";
import { customerTokenOptions, serveApp } from "../src/serve/server.js";
import { serveSettings } from "../src/serve/settings.js";
import { HOSTILE_MODEL, HOSTILE_SPENDER, seedUsage } from "./usage-fixture.js";

const CHROMIUM = "/usr/bin/chromium";
const root = join(import.meta.dirname, "..");
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const SECRET = "customer-page-secret-of-32-characters!!";

/** The browser's globals the page functions use (the project's types have no DOM library). */
interface Win {
  __xss?: unknown;
  axe: { run: (o: unknown) => Promise<{ violations: { id: string; impact: string; nodes: unknown[] }[] }> };
  document: {
    getElementById(id: string): { chart?: { series: { label?: string }[]; data: unknown[][] } } | null;
    querySelector(s: string): { textContent: string | null } | null;
  };
  location: { href: string };
}

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

// reason: needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)
describe.skipIf(!existsSync(CHROMIUM))("usage pages in a browser", () => {
  let browser: Browser;
  let m: CreditManager;
  let consoleServer: Server;
  let serveServer: Server;
  let consoleBase: string;
  let serveBase: string;
  let seeded: number;
  const problems: string[] = [];
  const clock = { t: Date.now() };

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu"],
    });
    const settings = serveSettings(
      {},
      { CREDIT_CUSTOMER_TOKEN_SECRET: SECRET, CREDIT_CUSTOMER_FRAME_ANCESTORS: "'self' https://app.example.com" },
    );
    clock.t = Date.now();
    // Notifications on: alert thresholds are evaluated, so the customer page shows one in alarm.
    m = await createCreditManager({
      clock: () => new Date(clock.t),
      notifications: {},
      ...customerTokenOptions(settings),
    });
    seeded = (await seedUsage(m, clock, "alice", 12)).credits;
    await seedUsage(m, clock, "bob", 4);
    const handler = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "ops" }) });
    ({ server: consoleServer, base: consoleBase } = await listen(toNodeHandler(handler)));
    const auth = await createAuthenticator(settings, memoryKeyStore(), 0);
    const app = serveApp(m, settings, auth, pino({ level: "silent" }), null);
    ({ server: serveServer, base: serveBase } = await listen(app.listener));
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    for (const s of [consoleServer, serveServer]) if (s) await new Promise((r) => s.close(r));
    await m?.close();
  });

  async function open(url: string): Promise<Page> {
    const p = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    p.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
    });
    p.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
    p.on("dialog", async (d) => {
      problems.push(`dialog: ${d.message()}`);
      await d.dismiss();
    });
    expect((await p.goto(url))?.status(), url).toBe(200);
    return p;
  }

  /** No script of the hostile values ran; axe-core finds nothing serious. */
  async function clean(p: Page, what: string) {
    expect(await p.evaluate(() => (globalThis as unknown as Win).__xss)).toBeUndefined();
    // Through the debugging protocol: the pages' CSP allows no injected script.
    if (!(await p.evaluate(() => "axe" in globalThis))) await p.evaluate(axeSource);
    const serious = await p.evaluate(async () => {
      const r = await (globalThis as unknown as Win).axe.run({ resultTypes: ["violations"] });
      return r.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id} (${v.nodes.length})`);
    });
    expect(serious, `axe on ${what}`).toEqual([]);
    expect(problems).toEqual([]);
  }

  const legend = (p: Page, id: string) =>
    p.evaluate(
      (id) =>
        ((globalThis as unknown as Win).document.getElementById(id)?.chart?.series ?? [])
          .slice(1)
          .map((s) => s.label ?? ""),
      id,
    );

  it("the console's usage page: a stacked chart by model, spender or feature, the table, the top accounts", async () => {
    const p = await open(`${consoleBase}/console/usage?account=alice`);
    await p.waitForSelector("#usage-chart[data-ready='1'] canvas");
    expect(new Set(await legend(p, "usage-chart"))).toEqual(new Set(["gpt-4o", "claude-sonnet", HOSTILE_MODEL]));
    expect(await p.locator("#usage-total").textContent()).toBe(seeded.toLocaleString("en-US"));
    // The legend reads figures, never uPlot's "--" placeholders: the range and each model's total
    // (the text without the ":" the style sheet adds), their sum the page's total.
    const legendText = (await p.locator("#usage-chart .u-legend").textContent()) ?? "";
    expect(legendText).not.toContain("--");
    expect(legendText).toMatch(/^Day\d{4}-\d{2}-\d{2} to \d{4}-\d{2}-\d{2}/);
    const totals = await p.locator("#usage-chart .u-legend .u-value").allTextContents();
    expect(totals.slice(1).reduce((s, v) => s + Number(v.replace(/,/g, "")), 0)).toBe(seeded);
    // The days are ISO text fields, never the browser's mm/dd/yyyy date picker.
    expect(await p.locator("input[name=from]").getAttribute("value")).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(await p.locator("input[type=date]").count()).toBe(0);
    // The hostile model name is text in the legend and in the table, never markup.
    expect(await p.locator(".u-legend").textContent()).toContain(HOSTILE_MODEL);
    expect(await p.locator("#usage-table tbody").textContent()).toContain(HOSTILE_MODEL);
    expect(await p.locator("main img").count()).toBe(0);
    await clean(p, "the usage page by model");

    await p.goto(`${consoleBase}/console/usage?account=alice&by=spender`);
    await p.waitForSelector("#usage-chart[data-ready='1'] canvas");
    expect(await legend(p, "usage-chart")).toContain(HOSTILE_SPENDER);
    expect(await p.locator("#usage-table tbody").textContent()).toContain(HOSTILE_SPENDER);
    await clean(p, "the usage page by spender");

    // The fleet: every account, and the top accounts linked to their own usage.
    await p.goto(`${consoleBase}/console/usage?by=feature`);
    await p.waitForSelector("#usage-chart[data-ready='1'] canvas");
    expect(new Set(await legend(p, "usage-chart"))).toEqual(new Set(["chat", "search"]));
    const top = await p.locator("#top-accounts tbody tr").allTextContents();
    expect(top[0]).toContain("alice");
    expect(top[1]).toContain("bob");
    await clean(p, "the fleet's usage page");

    // The CSV download: formulas inert.
    const csv = await (await fetch(`${consoleBase}/console/usage.csv?account=alice&by=spender`)).text();
    expect(csv.split("\r\n")[0]).toBe(
      "start,end,spender,kind,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall",
    );
    expect(csv).toContain(`"""><script>`);
    if (process.env.UPDATE_SCREENSHOTS === "1") {
      // The picture users see in the docs: plausible models, no test payload (issue 60, item 19).
      await seedUsage(m, clock, "dana", 28, ["gpt-4o", "claude-sonnet", "gpt-4o-mini"]);
      await p.goto(`${consoleBase}/console/usage?account=dana`);
      await p.waitForSelector("#usage-chart[data-ready='1'] canvas");
      await p.screenshot({ path: join(root, "docs/console/usage.png") });
    }
    await p.close();
  }, 60_000);

  it("the account page shows usage by day, and what the customer may do now", async () => {
    await m.credits.addCredits("alice", 40, { scope: { features: ["images"] } });
    const p = await open(`${consoleBase}/console/accounts/alice`);
    const images = p.locator("#feature-table tr", { hasText: "images" });
    expect(await images.textContent()).toContain("allowed");
    await p.waitForSelector("#account-usage-chart[data-ready='1'] canvas");
    expect(new Set(await legend(p, "account-usage-chart"))).toEqual(
      new Set(["gpt-4o", "claude-sonnet", HOSTILE_MODEL]),
    );
    expect(await p.locator("#account-usage-chart .u-legend").textContent()).not.toContain("--");
    await p.waitForSelector("#balance-chart[data-ready='1'] canvas");
    await clean(p, "the account page");
    await p.close();
  }, 60_000);

  it("the customer page: balance, chart and recent charges with a token; framed only where allowed", async () => {
    // Alerts (docs/customer-state.md): one past its line, one on a hostile spender's spend.
    await m.notifications.setAlerts("alice", [
      { id: "low", kind: "available", atOrBelow: 1_000_000 },
      { id: "daily", kind: "period_spend", window: "day", spender: HOSTILE_SPENDER, atOrAbove: 1_000_000 },
      { id: "soon", kind: "expiring", withinDays: 7, atOrAbove: 1 },
    ]);
    // Another unit (docs/units.md): its available on a card of its own, in no other figure.
    await m.credits.addCredits("alice", 40, { unit: "images" });
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    const p = await open(`${serveBase}/customer#token=${encodeURIComponent(token)}`);
    await p.waitForSelector("body[data-ready='1']");
    expect(await p.locator("#balance-heading + .cards").textContent()).toContain("Available (images)40 images");
    await p.waitForSelector("#usage-chart[data-ready='1'] canvas");
    // The token left the address bar (a copied link does not carry it).
    expect(await p.evaluate(() => (globalThis as unknown as Win).location.href)).toBe(`${serveBase}/customer`);
    expect(await p.locator("#spent").textContent()).toBe(seeded.toLocaleString());
    expect(new Set(await legend(p, "usage-chart"))).toEqual(new Set(["gpt-4o", "claude-sonnet", HOSTILE_MODEL]));
    expect(await p.locator("#recent tbody").textContent()).toContain(HOSTILE_MODEL);
    expect(await p.locator("#usage-chart .u-legend").textContent()).not.toContain("--");
    // Days as YYYY-MM-DD, as in the legend.
    expect(await p.locator("#recent tbody tr td").first().textContent()).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(await p.locator("main img").count()).toBe(0);
    // Each feature from the account's state (docs/customer-state.md): images has a scoped grant.
    expect(await p.locator("#features tbody tr", { hasText: "images" }).textContent()).toContain("Available");
    // Each alert: what it watches and its line, the figure now, in alarm or ok; the built-in one first.
    const alerts = await p
      .locator("#alerts tbody tr")
      .evaluateAll((rows) =>
        rows
          .map((r) => (r as unknown as { cells: { textContent: string }[] }).cells)
          .map((c) => [...c].map((x) => x.textContent)),
      );
    const million = (1_000_000).toLocaleString();
    expect(alerts.map((r) => [r[0], r[1], r[3]])).toEqual([
      ["Credits exhausted", "Available: 0 credits or less", "OK"],
      ["low", `Available: ${million} credits or less`, "In alarm"],
      ["daily", `Spent today by ${HOSTILE_SPENDER} (UTC): ${million} credits or more`, "OK"],
      ["soon", "Expiring within 7 days: 1 credit or more", "OK"],
    ]);
    // Its figure is the state's available (scoped grants' credits left out: docs/customer-state.md, "The kinds").
    const state = await m.credits.getCustomerState("alice");
    expect(alerts[1]?.[2]).toBe(state.available.toLocaleString());
    expect(state.available).toBeLessThan(state.balance - state.reserved); // alice holds scoped credits
    expect(await p.locator("#alerts .bad").allTextContents()).toEqual(["In alarm"]);
    await clean(p, "the customer page");
    if (process.env.UPDATE_SCREENSHOTS === "1") {
      // The picture users see in the docs: plausible models, no test payload (issue 60).
      await seedUsage(m, clock, "carol", 14, ["gpt-4o", "claude-sonnet", "gpt-4o-mini"]);
      // Features for the page's table: an allowance for one, a daily limit on another.
      await m.credits.addCredits("carol", 300, { scope: { features: ["image-generation"] } });
      await m.credits.setLimit("carol", { feature: "chat", amount: 200, period: "day" });
      // Alerts for the page's table: one in alarm (150 credits that expire within the week).
      await m.credits.addCredits("carol", 150, { expiresAt: new Date(clock.t + 5 * 86_400_000) });
      await m.notifications.setAlerts("carol", [
        { id: "low-balance", kind: "available", atOrBelow: 50_000 },
        { id: "chat-today", kind: "period_spend", window: "day", feature: "chat", atOrAbove: 500 },
        { id: "expiring-soon", kind: "expiring", withinDays: 7, atOrAbove: 100 },
      ]);
      const shot = await open(
        `${serveBase}/customer#token=${encodeURIComponent((await m.credits.customerToken("carol", { ttlSeconds: 600 })).token)}`,
      );
      await shot.waitForSelector("#usage-chart[data-ready='1'] canvas");
      await shot.screenshot({ path: join(root, "docs/usage-customer.png") });
      await shot.close();
    }
    // A reload in the same tab keeps working (the token is in the tab's session storage).
    await p.reload();
    await p.waitForSelector("body[data-ready='1']");
    await p.close();

    const headers = (await fetch(`${serveBase}/customer`)).headers;
    const csp = headers.get("content-security-policy") ?? "";
    expect(csp).toContain("frame-ancestors 'self' https://app.example.com");
    expect(csp).toContain("script-src 'self'");
    expect(headers.get("x-frame-options")).toBeNull();
    expect(headers.get("referrer-policy")).toBe("no-referrer");
  }, 60_000);

  it("the customer page says so without a token, with an expired or another kind of token", async () => {
    const none = await open(`${serveBase}/customer`);
    expect(await none.locator("#status").textContent()).toMatch(/no access token/);
    await clean(none, "the customer page without a token");
    await none.close();
    const p = await open(`${serveBase}/customer#token=not-a-token`);
    await p.waitForSelector("body[data-ready='error']");
    expect(await p.locator("#status").textContent()).toMatch(/expired/);
    expect(await p.locator("#recent tbody tr").count()).toBe(0);
    await p.close();
  }, 60_000);
});
