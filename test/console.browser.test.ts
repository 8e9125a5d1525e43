/**
 * The console (docs/console.md) driven in a real browser — Debian's chromium through playwright-core —
 * on SQLite and PostgreSQL with a realistic store: every page, every action (then the store is
 * checked), a viewer and a form without its CSRF token refused, hostile values that must not run,
 * and an axe-core scan of each page. UPDATE_SCREENSHOTS=1 writes docs/console/*.png.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConsoleHandler, toNodeHandler } from "../src/console/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { createCreditManager, InMemoryDbManager, type CreditManager } from "../src/index.js";
import { StripeProvider } from "../src/modules/billing/provider-stripe.js";
import type { PaymentProvider } from "../src/modules/billing/provider.js";
import { deliveryUserId } from "../src/modules/webhooks/queue.js";
import {
  generateWebhookSecret,
  memoryEndpointStore,
  webhookQueue,
  type WebhookEndpointRecord,
} from "../src/webhooks/index.js";
import { endpointOf } from "../src/modules/webhooks/store.js";
import { billingStore } from "../src/modules/billing/store.js";

const CHROMIUM = "/usr/bin/chromium";

/** The browser's globals the page functions below use (the project's types have no DOM library). */
interface FormLike {
  action: string;
}
interface Win {
  __pwned?: unknown;
  axe: { run: (o: unknown) => Promise<{ violations: { id: string; impact: string; nodes: unknown[] }[] }> };
  document: {
    querySelector(s: string): (FormLike & { value?: string }) | null;
  };
  FormData: new (f: FormLike) => Iterable<[string, string]>;
  location: { origin: string; pathname: string };
  fetch: typeof fetch;
  performance: { getEntriesByType(t: string): { startTime: number; loadEventEnd: number }[] };
}
const pgUrl = process.env.CREDIT_PG_URL;
const root = join(import.meta.dirname, "..");
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const HOSTILE_USER = `o'brien"><img src=x onerror="window.__pwned=1">`;
const HOSTILE_TEXT = `<script>window.__pwned=1</script>`;
const WEBHOOK_SECRET = "whsec_console_test_do_not_render";
const API_KEY = "sk_test_console_do_not_render";

/** A provider whose "webhook" is the event as JSON: pays test payments without a network. */
const testProvider: PaymentProvider = {
  name: "testpay",
  createCheckout: async (r) => ({ providerRef: `ref-${r.paymentId}`, url: `https://pay.example/${r.paymentId}` }),
  verifyWebhook() {},
  parseEvent: (raw) => JSON.parse(Buffer.from(raw).toString("utf8")),
};

async function seed(m: CreditManager, accounts: number, heavy: number): Promise<Record<string, string>> {
  m.pricing.setPriceBook({
    version: "test-book",
    models: [{ model: "gpt-4o-mini", input: { credits: 3, per: 20 }, output: { credits: 3, per: 5 } }],
  });
  for (let i = 0; i < accounts; i++) {
    const u = `user-${String(i).padStart(4, "0")}`;
    await m.credits.addCredits(u, 1000 + i, {
      description: "welcome credits",
      expiresAt: new Date(Date.now() + (i + 1) * 86_400_000),
    });
    await m.credits.deductCredits(u, 10 + (i % 7), {
      description: "api call",
      metadata: { model: i % 2 ? "gpt-4o-mini" : "tiny-1" },
    });
  }
  // One busy account: thousands of entries, holds, a hostile entry, a payment, a failed notification.
  const u = "busy-user";
  await m.credits.addCredits(u, 1_000_000, { description: "big grant", priority: 1 });
  const grant = await m.credits.addCredits(u, 500, {
    description: "to void",
    priority: 5,
    expiresAt: new Date(Date.now() + 3 * 86_400_000),
  });
  for (let i = 0; i < heavy; i++) {
    const model = i % 3 ? "gpt-4o-mini" : "tiny-1";
    // The LLM usage recorded with the charge (docs/llm-metering.md): what the usage page splits by.
    await m.credits.deductCredits(u, 1 + (i % 5), {
      description: `call ${i}`,
      metadata: { model, usages: [{ model, amount: 1 + (i % 5) }] },
    });
  }
  const hold = await m.credits.reserveCredits(u, 40, { reason: "streaming answer", ttlSeconds: 3600 } as never);
  await m.credits.addCredits(u, 7, {
    description: HOSTILE_TEXT,
    metadata: {
      link: "javascript:window.__pwned=1",
      html: `"'><img src=x onerror="window.__pwned=1">`,
      note: HOSTILE_TEXT,
    },
  });
  const payment = await m.payments.createPaymentLink(u, {
    amount: 300,
    currency: "USD",
    provider: "testpay",
    idempotencyKey: "buy-1",
  });
  const paid = {
    eventId: "ev1",
    type: "paid",
    kind: "paid",
    paymentId: payment.id,
    providerIds: [`ref-${payment.id}`],
    providerPaymentId: "pp-1",
    userId: u,
    amount: 300,
    currency: "USD",
    refundedTotal: null,
  };
  await m.payments.handleWebhook("testpay", JSON.stringify(paid), {});
  const now = new Date();
  const failedId = `0193${Date.now().toString(16)}-fail`;
  await m.db.insertNotifications([
    {
      id: failedId,
      userId: u,
      type: "low_credits",
      version: 1,
      status: "failed",
      payload: { note: HOSTILE_TEXT },
      dedupeKey: null,
      attempts: 8,
      nextAttemptAt: now,
      claimedUntil: null,
      claimToken: null,
      lastError: `queue down ${HOSTILE_TEXT}`,
      createdAt: now,
      settledAt: now,
    },
  ]);
  await m.credits.addCredits(HOSTILE_USER, 5, { description: "hostile id" });
  await m.promos.createPromo({ code: "WELCOME-10", credits: 10, description: HOSTILE_TEXT });
  await m.promos.claimPromo("user-0001", "WELCOME-10");
  const plan = await m.subscriptions.createPlan({
    id: "pro",
    name: "Pro <b>plan</b>",
    creditsPerPeriod: 1000,
    price: 0,
    currency: "USD",
    billingPeriod: "monthly",
  } as never);
  await m.subscriptions.subscribe("user-0002", plan.id);
  await m.expiration.runAll();
  await m.ledger.logSystem("job expireDueGrants", { job: "expireDueGrants", expired: 0, errors: 0 });
  return {
    user: u,
    grant: grant.grants[0]?.grantId as string,
    hold: hold.id,
    payment: payment.id,
    notification: failedId,
  };
}

const backends: {
  name: string;
  skip: boolean;
  create: () => Promise<{ db: DbManager; cleanup: () => Promise<void> }>;
}[] = [
  {
    name: "sqlite",
    skip: false,
    create: async () => {
      const dir = mkdtempSync(join(tmpdir(), "cm-console-"));
      return {
        db: new SqliteDbManager({ filename: join(dir, "c.db") }),
        cleanup: async () => rmSync(dir, { recursive: true, force: true }),
      };
    },
  },
  {
    name: "postgres",
    skip: !pgUrl,
    create: async () => {
      const schema = `console_${process.pid}_${Date.now()}`;
      return {
        db: new PostgresDbManager({ connectionString: pgUrl as string, schema }),
        cleanup: async () => {
          const c = new pg.Client({ connectionString: pgUrl });
          await c.connect();
          await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
          await c.end();
        },
      };
    },
  },
];

/** What the page-shape checks read in the browser (the project's types have no DOM library). */
interface Shape {
  document: {
    documentElement: { scrollWidth: number };
    getElementById(id: string): { chart?: { axes: { _values?: string[] }[] } } | null;
    querySelectorAll(s: string): { getBoundingClientRect(): { top: number } }[];
  };
}

const BIDI = "refund \u202E0001 stiderc";
const LONG = "W".repeat(300);
/** A user id as long as ids may be (256). */
const LONG_USER = `long-${"W".repeat(251)}`;

// reason: needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)
describe.skipIf(!existsSync(CHROMIUM))("console pages with hostile and extreme values", () => {
  let browser: Browser;
  let server: Server;
  let base: string;
  let m: CreditManager;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu"],
    });
    let t = Date.now() - 4 * 365 * 86_400_000;
    m = await createCreditManager({ clock: () => new Date(t) });
    // Entries spanning 4 years, with long unbroken text and bidi controls everywhere text is stored.
    for (let i = 0; i < 12; i++) {
      t += 120 * 86_400_000;
      await m.credits.addCredits(LONG_USER, 1_234_567, {
        description: i === 0 ? BIDI : LONG,
        metadata: { [LONG]: LONG, note: BIDI },
      });
    }
    await m.credits.reserveCredits(LONG_USER, 5, { reason: LONG, metadata: { why: BIDI } } as never);
    await m.promos.createPromo({ code: "LONG-1", credits: 10, description: LONG });
    // Entries spanning a few seconds.
    t = Date.now();
    // Usage on one day only, beside long descriptions (the journal's Metadata column squeezed).
    await m.credits.addCredits("daily", 1_000_000);
    for (let i = 0; i < 4; i++)
      await m.credits.deductCredits("daily", 12_345 + i, {
        description: `${LONG.slice(0, 60)} ${LONG.slice(0, 60)}`,
        metadata: { model: "gpt-4o-mini", usages: [{ model: "gpt-4o-mini", amount: 12_345 + i }] },
      });
    for (let i = 0; i < 12; i++) {
      t += 400;
      await m.credits.addCredits("seconds", 10 + i);
    }
    const handler = createConsoleHandler(m, { authorize: () => ({ role: "admin", actor: "ops" }) });
    server = createServer(toNodeHandler(handler));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}/console`;
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    if (server) await new Promise((r) => server.close(r));
    await m?.close();
  });

  const open = async (path: string) => {
    const p = await browser.newPage({ viewport: { width: 1100, height: 800 } });
    expect((await p.goto(`${base}${path}`))?.status(), path).toBe(200);
    return p;
  };
  const width = (p: Page) => p.evaluate(() => (globalThis as unknown as Shape).document.documentElement.scrollWidth);

  it("keeps every page as wide as the window, whatever the length of stored text", async () => {
    const user = encodeURIComponent(LONG_USER);
    for (const path of ["/", `/accounts/${user}`, "/promos", `/payments?user=${user}`, `/outbox?user=${user}`]) {
      const p = await open(path);
      expect(await width(p), path).toBeLessThanOrEqual(1100);
      await p.close();
    }
    // Ids shortened on screen, whole in the text (a copy) and on hover.
    const p = await open("/");
    const link = p.locator(`main table a[href$="/accounts/${user}"] .user`);
    expect(await link.textContent()).toBe(LONG_USER);
    expect(await link.getAttribute("title")).toBe(LONG_USER);
    expect((await link.boundingBox())?.width).toBeLessThan(300);
    await p.close();
  }, 60_000);

  it("shows bidi and control characters instead of obeying them", async () => {
    const p = await open(`/accounts/${encodeURIComponent(LONG_USER)}`);
    const text = (await p.locator("main").textContent()) ?? "";
    expect(text).toContain("refund \u27e8U+202E\u27e90001 stiderc");
    expect(text).not.toContain("\u202E");
    await p.close();
  }, 60_000);

  it("lays out the type filter in rows of labelled checkboxes (two at 1100 px); amounts with separators", async () => {
    const p = await open(`/accounts/${encodeURIComponent(LONG_USER)}`);
    const tops = await p.evaluate(() =>
      [...(globalThis as unknown as Shape).document.querySelectorAll("fieldset.types label")].map((l) =>
        Math.round(l.getBoundingClientRect().top),
      ),
    );
    expect(tops.length).toBeGreaterThan(5);
    // The labels flow side by side and wrap: eleven entry types take two rows at this width.
    expect(new Set(tops).size).toBeLessThanOrEqual(2);
    for (const label of await p.locator("fieldset.types label").all())
      expect(await label.locator("input[type=checkbox]").count()).toBe(1);
    expect(await p.locator("#balance").textContent()).toBe("14,814,804");
    await p.close();
  }, 60_000);

  /** @see issue 60 */
  it("spans the usage chart over its 30 days, keeps every tick label inside each chart, breaks no short key", async () => {
    const p = await open("/accounts/daily");
    await p.waitForSelector("#account-usage-chart[data-ready='1'] canvas");
    await p.waitForSelector("#balance-chart[data-ready='1'] canvas");
    const seen = await p.evaluate(() => {
      interface Plot {
        width: number;
        ctx: { font: string; measureText(t: string): { width: number } };
        scales: { x: { min: number; max: number } };
        axes: { _splits?: number[]; _values?: string[]; font: [string] }[];
        bbox: { left: number };
        valToPos(v: number, scale: string): number;
      }
      const d = globalThis as unknown as {
        devicePixelRatio: number;
        document: {
          getElementById(id: string): ({ chart?: Plot; textContent: string | null } & object) | null;
          createRange(): { selectNodeContents(n: unknown): void; getClientRects(): unknown[] };
          querySelectorAll(s: string): { textContent: string | null }[];
        };
      };
      const labels = (u: Plot) => {
        u.ctx.font = u.axes[0]?.font[0] ?? u.ctx.font;
        const splits = u.axes[0]?._splits ?? [];
        return (u.axes[0]?._values ?? []).map((v, i) => {
          const at = u.bbox.left / d.devicePixelRatio + u.valToPos(splits[i] as number, "x");
          const w = Math.max(...v.split("\n").map((line) => u.ctx.measureText(line).width));
          return { v, left: at - w / 2, right: at + w / 2, width: u.width };
        });
      };
      const usage = d.document.getElementById("account-usage-chart")?.chart as Plot;
      const balance = d.document.getElementById("balance-chart")?.chart as Plot;
      const data = JSON.parse(d.document.getElementById("account-usage-chart-data")?.textContent ?? "{}") as {
        from: number;
        to: number;
      };
      const keys = [...d.document.querySelectorAll("#journal-table dl.meta dt")].map((dt) => {
        const r = d.document.createRange();
        r.selectNodeContents(dt);
        return { key: dt.textContent, lines: r.getClientRects().length };
      });
      return { x: usage.scales.x, data, ticks: [...labels(usage), ...labels(balance)], keys };
    });
    await p.close();
    // The axis is the 30 days asked for, not years around the one day that had usage.
    expect(seen.data.to - seen.data.from).toBe(30 * 86_400);
    expect(seen.x.min).toBe(seen.data.from);
    expect(seen.x.max).toBe(seen.data.to);
    expect(seen.ticks.length).toBeGreaterThan(2);
    for (const t of seen.ticks) {
      expect(t.left, t.v).toBeGreaterThanOrEqual(0);
      expect(t.right, t.v).toBeLessThanOrEqual(t.width);
    }
    expect(seen.keys.map((k) => k.key)).toContain("model");
    for (const k of seen.keys) expect(k.lines, k.key ?? "").toBe(1);
  }, 60_000);

  it("labels the chart's time axis in units that fit the span: seconds, or years", async () => {
    const ticks = async (user: string) => {
      const p = await open(`/accounts/${user}`);
      await p.waitForSelector("#balance-chart[data-ready='1'] canvas");
      const values = await p.evaluate(
        () => (globalThis as unknown as Shape).document.getElementById("balance-chart")?.chart?.axes[0]?._values ?? [],
      );
      await p.close();
      return values.map((v) => v.split("\n")[0] as string);
    };
    const seconds = await ticks("seconds");
    expect(seconds.length).toBeGreaterThan(1);
    for (const v of seconds) expect(v).toMatch(/^\d\d:\d\d:\d\d$/);
    const years = await ticks(encodeURIComponent(LONG_USER));
    expect(years.length).toBeGreaterThan(1);
    for (const v of years) expect(v).toMatch(/^(\d{4}|[A-Z][a-z]{2})$/);
  }, 60_000);
});

// reason: needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)
describe.skipIf(!existsSync(CHROMIUM))("console in a browser", () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
  });
  afterAll(async () => browser?.close());

  for (const backend of backends) {
    // reason: PostgreSQL only with CREDIT_PG_URL (set by .ci/run)
    describe.skipIf(backend.skip)(backend.name, () => {
      let m: CreditManager;
      let server: Server;
      let base: string;
      let ids: Record<string, string>;
      let cleanup: () => Promise<void>;
      let admin: BrowserContext;
      let viewer: BrowserContext;
      const problems: string[] = [];
      // The markup does not depend on the store: accessibility (axe) and the layout at 800 px are
      // checked on the first store; the others check what their store answers and the forms' effects.
      const markupChecks = backend === backends[0];

      beforeAll(async () => {
        const s = await backend.create();
        cleanup = s.cleanup;
        m = await createCreditManager({
          db: s.db,
          payments: {
            providers: [
              testProvider,
              new StripeProvider({
                secretKey: API_KEY,
                webhookSecret: WEBHOOK_SECRET,
                successUrl: "https://app.example/ok",
                cancelUrl: "https://app.example/no",
              }),
            ],
            creditsPerUnit: { USD: 1 },
          },
        });
        ids = await seed(m, backend.name === "sqlite" ? 300 : 120, backend.name === "sqlite" ? 3000 : 1200);
        const handler = createConsoleHandler(m, {
          authorize: (req) => {
            const role = req.headers.get("x-test-role");
            return role === "admin" || role === "viewer" ? { role, actor: `${role}-alice` } : "deny";
          },
        });
        server = createServer(toNodeHandler(handler));
        await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
        base = `http://127.0.0.1:${(server.address() as { port: number }).port}/console`;
        const open = async (role: string) => {
          const ctx = await browser.newContext({
            extraHTTPHeaders: { "x-test-role": role },
            viewport: { width: 1100, height: 800 },
          });
          ctx.on("page", (p) => watch(p));
          return ctx;
        };
        admin = await open("admin");
        viewer = await open("viewer");
      }, 240_000);

      afterAll(async () => {
        await admin?.close();
        await viewer?.close();
        if (server) await new Promise((r) => server.close(r));
        await m?.close();
        await cleanup?.();
      });

      /** Console errors (a CSP violation is one), dialogs and page errors are all failures. */
      function watch(p: Page) {
        p.on("console", (msg) => {
          if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
        });
        p.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
        p.on("dialog", async (d) => {
          problems.push(`dialog: ${d.message()}`);
          await d.dismiss();
        });
      }

      async function visit(p: Page, path: string) {
        const r = await p.goto(`${base}${path}`);
        expect(r?.status(), path).toBe(200);
        expect(await p.evaluate(() => (globalThis as unknown as Win).__pwned)).toBeUndefined();
        const html = await p.content();
        expect(html).not.toContain(WEBHOOK_SECRET);
        expect(html).not.toContain(API_KEY);
        expect(html).not.toContain("<script>window.__pwned");
        if (!markupChecks) return html;
        // axe-core, evaluated through the debugging protocol (the page's CSP allows no injected script).
        if (!(await p.evaluate(() => "axe" in globalThis))) await p.evaluate(axeSource);
        const serious = await p.evaluate(async () => {
          const r = await (globalThis as unknown as Win).axe.run({ resultTypes: ["violations"] });
          return r.violations
            .filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => `${v.id} (${v.nodes.length})`);
        });
        expect(serious, `axe on ${path}`).toEqual([]);
        return html;
      }

      it("shows every page, with the journal paged by seq and filterable, the chart drawn", async () => {
        const p = await viewer.newPage();
        let html = await visit(p, "/");
        expect(html).toContain("user-0000");
        expect(await p.locator("nav.pager a[rel=next]").count()).toBe(1);
        await p.fill("input[name=q]", "busy");
        await p.click("form[role=search] button");
        expect(await p.locator("main table").first().locator("tbody tr").count()).toBe(1);
        html = await visit(p, `/accounts/${ids.user}`);
        await p.waitForSelector("#balance-chart[data-ready='1'] canvas");
        // Page load in the browser (navigation start to the load event, chart drawn): docs/console.md.
        const loadMs = await p.evaluate(() => {
          const [nav] = (globalThis as unknown as Win).performance.getEntriesByType("navigation");
          return nav === undefined ? 0 : nav.loadEventEnd - nav.startTime;
        });
        // A figure to read, not a bound: a timed assertion fails on a loaded machine, not on a slow page.
        expect(loadMs).toBeGreaterThan(0);
        console.log(`console (${backend.name}): account page loaded in ${loadMs.toFixed(0)} ms`);
        expect(await p.locator("#journal-table tbody tr").count()).toBe(50);
        expect(html).toContain("intact");
        expect(await p.locator("form[action$='/actions/grant']").count()).toBe(0); // a viewer has no actions
        const firstSeq = Number(await p.locator("#journal-table tbody tr td").first().textContent());
        await p.click("nav.pager a[rel=next]");
        const secondSeq = Number(await p.locator("#journal-table tbody tr td").first().textContent());
        expect(secondSeq).toBe(firstSeq - 50);
        await visit(p, `/accounts/${ids.user}?type=reserve`);
        expect(await p.locator("#journal-table tbody tr").count()).toBe(1);
        await visit(p, `/accounts/${ids.user}/holds/${ids.hold}`);
        await visit(p, `/accounts/${encodeURIComponent(HOSTILE_USER)}`);
        expect(await p.locator("h1 .mono").textContent()).toBe(HOSTILE_USER);
        // The journal's date filter: ISO days in text fields (never the browser's mm/dd/yyyy picker).
        expect(await p.locator("#journal ~ form input[name=from]").getAttribute("type")).toBeNull();
        expect(await p.locator("#journal ~ form input[name=from]").getAttribute("placeholder")).toBe("YYYY-MM-DD");
        expect(await p.locator("input[type=date], input[type=month]").count()).toBe(0);
        // The account's payment in its currency: 300 cents are $3.00.
        await visit(p, `/payments?user=${ids.user}`);
        expect(await p.locator("main table tbody tr[id^=pay-] td.num").first().textContent()).toBe("$3.00");
        // The accounts page names its ledger list for what it shows.
        await visit(p, "/");
        expect(await p.locator("h2#events").textContent()).toBe("Recent system events and errors");
        await visit(p, "/outbox");
        expect(await p.locator("main table tbody tr").first().textContent()).toContain("queue down");
        for (const path of [
          "/outbox?status=pending",
          "/subscriptions",
          "/subscriptions?user=user-0002",
          `/payments?user=${ids.user}`,
          "/promos?user=user-0001",
          `/outbox?user=${ids.user}`,
          "/jobs",
          "/usage",
          `/usage?account=${ids.user}`,
        ])
          await visit(p, path);
        await p.waitForSelector("#usage-chart[data-ready='1'] canvas");
        expect(await p.locator("#usage-table tbody").textContent()).toContain("gpt-4o-mini");
        // Every scheduled subscription is listed (on SQLite too: times compare as ISO text there).
        await visit(p, "/subscriptions");
        expect(await p.locator("main table").nth(1).textContent()).toContain("user-0002");
        if (markupChecks) {
          // At 800 px no page scrolls sideways (a user's laptop split in two).
          await p.setViewportSize({ width: 800, height: 800 });
          for (const path of [
            "/",
            `/accounts/${ids.user}`,
            `/payments?user=${ids.user}`,
            "/subscriptions",
            "/promos?user=user-0001",
            "/outbox",
            "/jobs",
            `/usage?account=${ids.user}`,
            "/revenue",
          ]) {
            await visit(p, path);
            const wide = await p.evaluate(() => (globalThis as unknown as Shape).document.documentElement.scrollWidth);
            expect(wide, `${path} at 800 px`).toBeLessThanOrEqual(800);
          }
          await p.setViewportSize({ width: 1100, height: 800 });
        }
        expect(problems).toEqual([]);
        if (process.env.UPDATE_SCREENSHOTS === "1" && backend.name === "sqlite") {
          await visit(p, `/accounts/${ids.user}`);
          await p.waitForSelector("#balance-chart canvas");
          await p.screenshot({ path: join(root, "docs/console/account.png") });
          await visit(p, "/");
          await p.screenshot({ path: join(root, "docs/console/accounts.png") });
        }
        await p.close();
      }, 120_000);

      /** Opens `path`, submits the form of `action` (filling `fill`), confirms, and answers the page after. */
      async function act(path: string, selector: string, fill: Record<string, string> = {}, shot?: string) {
        const p = await admin.newPage();
        await visit(p, path);
        const form = p.locator(selector).first();
        for (const [k, v] of Object.entries(fill)) await form.locator(`[name=${k}]`).fill(v);
        await form.locator("button").click();
        await p.waitForSelector("#confirm");
        expect(await p.locator("h1").textContent()).toBe("Confirm");
        if (shot && process.env.UPDATE_SCREENSHOTS === "1" && backend.name === "sqlite")
          await p.screenshot({ path: join(root, `docs/console/${shot}.png`) });
        // A double click: the confirmed form sent twice at once, as the browser would.
        const statuses = await p.evaluate(async () => {
          const w = globalThis as unknown as Win;
          const f = w.document.querySelector("main form") as FormLike;
          const body = new URLSearchParams([...new w.FormData(f)]);
          const send = () => w.fetch(f.action, { method: "POST", body, redirect: "manual" }).then((r) => r.status);
          return Promise.all([send(), send()]);
        });
        expect(statuses, `${selector} sent twice`).toEqual([0, 0]); // 0: the redirect, as fetch's "manual" shows it
        await p.click("#confirm"); // a third time, through the button: still once
        await p.waitForSelector(".notice");
        const text = await p.locator(".notice").textContent();
        expect(problems).toEqual([]);
        await p.close();
        return text;
      }

      it("performs every action once per form, recorded with who did it", async () => {
        const before = await m.credits.getUserCreditsInfo("user-0005");
        await act(
          "/accounts/user-0005",
          "form[action$='/actions/grant']",
          { amount: "250", description: `bonus ${HOSTILE_TEXT}` },
          "confirm",
        );
        const after = await m.credits.getUserCreditsInfo("user-0005");
        expect(after.balance - before.balance).toBe(250);
        const [granted] = await m.db.listJournal("user-0005", { order: "desc", limit: 1 });
        expect(granted?.metadata).toMatchObject({ actor: "admin-alice" });
        expect(granted?.description).toContain("by admin-alice");

        await act(`/accounts/${ids.user}`, `#grant-${ids.grant} form`);
        expect((await m.db.getGrant(ids.grant as string))?.closedReason).toBe("voided");

        await act(`/accounts/${ids.user}`, `form[action$='/actions/release']`);
        expect((await m.db.getReservation(ids.hold as string))?.status).toBe("released");

        await act(`/payments?user=${ids.user}`, `form[action$='/actions/refund']`);
        const pay = await billingStore(m.db).getPayment(ids.payment as string);
        expect(pay?.status).toBe("refunded");
        const refunds = (await m.db.listJournal(ids.user as string, { order: "desc", limit: 10 })).filter((e) =>
          e.description?.startsWith("Refund"),
        );
        expect(refunds.length).toBe(1);
        expect(refunds[0]?.metadata).toMatchObject({ refundedBy: "admin-alice" });

        await act(`/outbox?user=${ids.user}`, `form[action$='/actions/retry']`);
        const pending = await m.db.listNotifications(ids.user as string, { status: "pending", limit: 100 });
        expect(pending.filter((n) => n.dedupeKey === `retry:${ids.notification}`)).toHaveLength(1);

        await act(`/accounts/${ids.user}`, `form[action$='/actions/audit']`);
        const audits = (await m.db.listLedgerEntries({ userId: ids.user, eventType: "system", limit: 20 })).filter(
          (e) => e.message === "console: audit",
        );
        expect(audits).toHaveLength(1);
        expect(audits[0]?.details).toMatchObject({ ok: true, actor: "admin-alice" });
        const p = await admin.newPage();
        await visit(p, `/accounts/${ids.user}`);
        expect(await p.locator("#audit-verdict .ok").textContent()).toBe("ok");
        await p.close();
      }, 180_000);

      it("refuses a viewer's action, a form without its CSRF token, and anyone authorize denies", async () => {
        const count = async () => (await m.db.listJournal("user-0007", { order: "desc", limit: 5 })).length;
        const n = await count();
        const post = async (ctx: BrowserContext, withToken: boolean) => {
          const p = await ctx.newPage();
          await p.goto(`${base}/accounts/user-0007`);
          const status = await p.evaluate(
            async ({ withToken }) => {
              const w = globalThis as unknown as Win;
              const token = w.document.querySelector("input[name=_csrf]")?.value ?? "forged";
              const body = new URLSearchParams({
                user: "user-0007",
                amount: "5",
                confirmed: "1",
                _key: "aaaaaaaa-1111",
                ...(withToken ? { _csrf: token } : {}),
              });
              const target = w.location.origin + w.location.pathname.replace(/\/accounts\/.*$/, "/actions/grant");
              return (await w.fetch(target, { method: "POST", body })).status;
            },
            { withToken },
          );
          await p.close();
          return status;
        };
        expect(await post(viewer, true)).toBe(403);
        expect(await post(admin, false)).toBe(403);
        const denied = await fetch(`${base}/`);
        expect(denied.status).toBe(403);
        expect(await count()).toBe(n);
        expect(problems.filter((p) => !p.includes("403"))).toEqual([]);
      }, 60_000);
    });
  }
});

// reason: needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)
describe.skipIf(!existsSync(CHROMIUM))("console webhooks page (docs/console.md, Webhooks)", () => {
  let browser: Browser;
  let server: Server;
  let receiverServer: Server;
  let base: string;
  let m: CreditManager;
  let db: InMemoryDbManager;
  let admin: BrowserContext;
  let viewer: BrowserContext;
  /** What the failing endpoint answers (503 with a hostile body, until the test flips it). */
  let badStatus = 503;
  const got: { path: string; id: string }[] = [];
  const problems: string[] = [];
  const BAD_SECRET = generateWebhookSecret();
  const GOOD_SECRET = generateWebhookSecret();
  const store = memoryEndpointStore();
  let badId = "";
  let goodId = "";

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu"],
    });
    receiverServer = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        got.push({ path: req.url ?? "", id: String(req.headers["webhook-id"]) });
        if (req.url?.startsWith("/bad") === true && badStatus !== 204)
          res.writeHead(badStatus, { "content-type": "text/html" }).end(HOSTILE_TEXT);
        else res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiverServer.listen(0, "127.0.0.1", r));
    const port = (receiverServer.address() as { port: number }).port;
    const record = (id: string, url: string, secret: string, extra: Partial<WebhookEndpointRecord>) => ({
      id,
      url,
      secrets: [secret],
      types: null,
      enabled: true,
      development: true,
      description: null,
      createdAt: new Date().toISOString(),
      disabledReason: null,
      ...extra,
    });
    badId = "we_bad";
    goodId = "we_good";
    // A hostile URL and description: stored as text, shown as text.
    await store.put(
      record(badId, `http://127.0.0.1:${port}/bad?x="><img src=x onerror="window.__pwned=1">`, BAD_SECRET, {
        description: HOSTILE_TEXT,
      }),
    );
    await store.put(
      record(goodId, `http://127.0.0.1:${port}/good`, GOOD_SECRET, { types: ["credits_added", "credits_deducted"] }),
    );
    db = new InMemoryDbManager();
    const queue = webhookQueue({
      db,
      endpoints: async () => (await store.list()).map(endpointOf),
      allowNetworks: ["127.0.0.0/8"],
      retrySchedule: [], // one attempt, then failed: kept for a manual retry
      refreshMs: 0,
      // The default time-out: both endpoints answer at once, and a delivery that waited on a busy
      // machine must not fail for it (with no retries, it would fail for good).
    });
    m = await createCreditManager({ db, queue, domainEvents: true });
    await m.credits.addCredits(HOSTILE_USER, 100, { description: "top up" });
    await m.credits.deductCredits(HOSTILE_USER, 10);
    for (let i = 0; i < 20 && got.length < 4; i++) {
      await m.notifications.dispatchPending({ limit: 100 });
      await new Promise((r) => setTimeout(r, 20));
    }
    const handler = createConsoleHandler(m, {
      webhooks: store,
      authorize: (req) => {
        const role = req.headers.get("x-test-role");
        return role === "admin" || role === "viewer" ? { role, actor: `${role}-bob` } : "deny";
      },
    });
    server = createServer(toNodeHandler(handler));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}/console`;
    const open = async (role: string) => {
      const ctx = await browser.newContext({ extraHTTPHeaders: { "x-test-role": role } });
      ctx.on("page", (p) => {
        p.on("console", (msg) => {
          if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
        });
        p.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
        p.on("dialog", async (d) => {
          problems.push(`dialog: ${d.message()}`);
          await d.dismiss();
        });
      });
      return ctx;
    };
    admin = await open("admin");
    viewer = await open("viewer");
  }, 60_000);
  afterAll(async () => {
    await admin?.close();
    await viewer?.close();
    await browser?.close();
    if (server) await new Promise((r) => server.close(r));
    if (receiverServer) {
      receiverServer.closeAllConnections();
      await new Promise((r) => receiverServer.close(r));
    }
    await m?.close();
  });

  async function visit(p: Page, path: string) {
    const r = await p.goto(`${base}${path}`);
    expect(r?.status(), path).toBe(200);
    expect(await p.evaluate(() => (globalThis as unknown as Win).__pwned)).toBeUndefined();
    const html = await p.content();
    expect(html).not.toContain(BAD_SECRET);
    expect(html).not.toContain(GOOD_SECRET);
    expect(html).not.toContain("whsec_");
    expect(html).not.toContain("<script>window.__pwned");
    expect(html).not.toContain('<img src="x"');
    if (!(await p.evaluate(() => "axe" in globalThis))) await p.evaluate(axeSource);
    const serious = await p.evaluate(async () => {
      const r = await (globalThis as unknown as Win).axe.run({ resultTypes: ["violations"] });
      return r.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id} (${v.nodes.length})`);
    });
    expect(serious, `axe on ${path}`).toEqual([]);
    return html;
  }

  it("lists the endpoints (URL, state, event filter; never a secret), hostile values as text", async () => {
    const p = await viewer.newPage();
    await visit(p, "/");
    expect(await p.locator("header nav a[href$='/webhooks']").count()).toBe(1);
    await visit(p, "/webhooks");
    const rows = p.locator("main table tbody tr");
    expect(await rows.count()).toBe(2);
    const bad = (await rows.nth(0).textContent()) ?? "";
    expect(bad).toContain(`/bad?x="><img src=x onerror="window.__pwned=1">`);
    expect(bad).toContain("enabled");
    expect(bad).toContain("all events");
    expect(bad).toContain(HOSTILE_TEXT);
    expect(await rows.nth(1).textContent()).toContain("credits_added, credits_deducted");
    expect(problems).toEqual([]);
    await p.close();
  }, 60_000);

  it("shows an endpoint's last deliveries with status, attempts and the receiver's status code", async () => {
    const p = await viewer.newPage();
    await visit(p, `/webhooks/${badId}`);
    const failed = p.locator("main table").first().locator("tbody tr");
    expect(await failed.count()).toBe(2); // credits_added and credits_deducted, each failed after 1 attempt
    const text = (await failed.first().textContent()) ?? "";
    expect(text).toContain("failed");
    expect(text).toContain("503");
    expect(text).toContain(HOSTILE_TEXT); // the receiver's body in the last error, as text
    expect(await failed.first().locator("td.num").textContent()).toBe("1");
    expect(await p.locator("form[action$='/actions/webhook-retry']").count()).toBe(0); // a viewer has no actions
    await visit(p, `/webhooks/${goodId}?user=${encodeURIComponent(HOSTILE_USER)}`);
    const sent = p.locator("main table").first().locator("tbody tr");
    expect(await sent.count()).toBe(2);
    expect(await sent.first().textContent()).toContain("sent");
    expect(await sent.first().textContent()).toContain("2xx");
    expect((await p.locator("h1 .mono").textContent()) ?? "").toBe(goodId);
    expect(await p.locator("input[name=user]").inputValue()).toBe(HOSTILE_USER);
    expect(problems).toEqual([]);
    const missing = await p.goto(`${base}/webhooks/we_none`);
    expect(missing?.status()).toBe(404);
    problems.splice(0); // the 404 just asked for
    await p.close();
  }, 60_000);

  it("retries a failed delivery once per form, through retryFailedWebhooks: same webhook-id, delivered", async () => {
    const p = await admin.newPage();
    await visit(p, `/webhooks/${badId}`);
    const firstFailed = got.filter((g) => g.path.startsWith("/bad"));
    expect(firstFailed).toHaveLength(2);
    await p.locator("form[action$='/actions/webhook-retry']").first().locator("button").click();
    await p.waitForSelector("#confirm");
    expect(await p.locator("h1").textContent()).toBe("Confirm");
    // A double click: the confirmed form sent twice at once, then the button: still one delivery.
    const statuses = await p.evaluate(async () => {
      const w = globalThis as unknown as Win;
      const f = w.document.querySelector("main form") as FormLike;
      const body = new URLSearchParams([...new w.FormData(f)]);
      const send = () => w.fetch(f.action, { method: "POST", body, redirect: "manual" }).then((r) => r.status);
      return Promise.all([send(), send()]);
    });
    expect(statuses).toEqual([0, 0]);
    await p.click("#confirm");
    await p.waitForSelector(".notice");
    const owner = deliveryUserId(badId, HOSTILE_USER);
    const pending = await db.listNotifications(owner, { status: "pending", limit: 100 });
    expect(pending).toHaveLength(1);
    const retried = (await db.listLedgerEntries({ userId: HOSTILE_USER, eventType: "system", limit: 10 })).filter(
      (e) => e.message === "console: webhook delivery retried",
    );
    expect(retried).toHaveLength(1);
    expect(retried[0]?.details).toMatchObject({ endpointId: badId, actor: "admin-bob" });
    // The pending retry is listed, then delivered with the webhook-id of the failed attempt.
    await visit(p, `/webhooks/${badId}`);
    expect(await p.locator("main table").nth(1).locator("tbody tr").count()).toBe(1);
    badStatus = 204;
    const eventId = (pending[0]?.payload as { event: { id: string } }).event.id;
    const report = await m.notifications.dispatchPending({ limit: 100 });
    const again = got.filter((g) => g.path.startsWith("/bad")).slice(2);
    // On a failure, says why the retry was not delivered: the round's report and the rows' errors.
    const why = async () =>
      JSON.stringify({
        report,
        rows: (await db.listNotifications(owner, { limit: 100 })).map((r) => [r.status, r.lastError]),
      });
    expect(
      again.map((g) => g.id),
      await why(),
    ).toEqual([eventId]);
    expect(firstFailed.map((g) => g.id)).toContain(eventId);
    expect(await db.listNotifications(owner, { status: "pending", limit: 100 })).toHaveLength(0);
    expect(problems).toEqual([]);
    await p.close();
  }, 60_000);

  it("has no Webhooks page without the endpoint store", async () => {
    const handler = createConsoleHandler(m, { authorize: () => ({ role: "admin", actor: "x" }) });
    const r = await handler(new Request("http://h/console/webhooks"));
    expect(r.status).toBe(404);
    expect(await (await handler(new Request("http://h/console/"))).text()).not.toContain("/webhooks");
  });
});

// reason: needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)
describe.skipIf(!existsSync(CHROMIUM))("a team account: its limits and each member's spend", () => {
  let browser: Browser;
  let server: Server;
  let base: string;
  let m: CreditManager;
  const HOSTILE_SPENDER = `<img src=x onerror="window.__pwned=1">`;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu"],
    });
    m = await createCreditManager();
    await m.credits.addCredits("acme", 100_000);
    await m.credits.addCredits("acme", 300, { scope: { features: ["images"], spenders: ["carol", HOSTILE_SPENDER] } });
    await m.credits.setLimits("acme", [
      { amount: 20_000, period: "month" },
      { spender: "alice", amount: 2_000, period: "month" },
      { spender: "bob", amount: 500, period: "month" },
      { spender: "carol", feature: "images", amount: 50, period: "day" },
    ]);
    await m.credits.deductCredits("acme", 1_500, { spender: "alice", feature: "chat" });
    await m.credits.deductCredits("acme", 200, { spender: "alice" });
    const hold = await m.credits.reserveCredits("acme", 500, { spender: "bob" });
    await m.credits.commitReservedCredits(hold.id, { amount: 500 });
    await m.credits.deductCredits("acme", 30);
    await m.credits.deductCredits("acme", 7, { spender: HOSTILE_SPENDER });
    const handler = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "ops" }) });
    server = createServer(toNodeHandler(handler));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}/console`;
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    if (server) await new Promise((r) => server.close(r));
    await m?.close();
  });

  it("lists each limit with its spend in the window and reset time, and spend per spender", async () => {
    const p = await browser.newPage({ viewport: { width: 1100, height: 800 } });
    const errors: string[] = [];
    p.on("pageerror", (e) => errors.push(e.message));
    p.on("console", (msg) => {
      if (msg.type() === "error") errors.push(msg.text());
    });
    expect((await p.goto(`${base}/accounts/acme`))?.status()).toBe(200);
    /** Each row's cells, " | " between them (a meter's fallback text dropped). */
    const rows = async (id: string) => {
      const out: string[] = [];
      for (const row of await p.locator(`#${id} tbody tr`).all()) {
        const cells = await row.locator("td").evaluateAll((tds) =>
          tds.map((td) => {
            const c = (
              td as unknown as {
                cloneNode(deep: boolean): { querySelectorAll(s: string): { remove(): void }[]; textContent: string };
              }
            ).cloneNode(true);
            for (const meter of c.querySelectorAll("meter")) meter.remove();
            return c.textContent;
          }),
        );
        out.push(
          cells
            .map((c) => c.replace(/\s+/g, " ").trim())
            .join(" | ")
            .trim(),
        );
      }
      return out;
    };

    const limits = await rows("limit-table");
    expect(limits).toHaveLength(4);
    // "1,700 / 2,000" on one line, at 1,100 px and at 800 px.
    for (const width of [1100, 800]) {
      await p.setViewportSize({ width, height: 800 });
      const lines = await p.evaluate(() =>
        [
          ...(
            globalThis as unknown as {
              document: { querySelectorAll(s: string): { getClientRects(): { length: number } }[] };
            }
          ).document.querySelectorAll("#limit-table .pair"),
        ].map((e) => e.getClientRects().length),
      );
      expect(lines.length, `pairs at ${width} px`).toBe(4);
      expect(new Set(lines), `pairs at ${width} px`).toEqual(new Set([1]));
    }
    await p.setViewportSize({ width: 1100, height: 800 });
    expect(limits[0]).toMatch(/^every spender \| every feature \| month \| 2,237 \/ 20,000 \| 17,763 \| /);
    expect(limits[1]).toMatch(/^alice \| every feature \| month \| 1,700 \/ 2,000 \| 300 \| /);
    expect(limits[2]).toMatch(/^bob \| every feature \| month \| 500 \/ 500 \| 0 \| /); // spent to its cap
    expect(limits[3]).toMatch(/^carol \| images \| day \| 0 \/ 50 \| 50 \| /);
    // The reset: the first of next month, 00:00 UTC, and how far away it is.
    const now = new Date();
    const next = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
    expect(limits[1]).toContain(next.toISOString().slice(0, 10));
    expect(limits[1]).toMatch(/\(in \d+ (d|h|min|s)( \d+ (h|min|s))?\)$/);
    expect(await p.locator("#limit-table meter").count()).toBe(4);

    const spenders = await rows("spender-table");
    expect(spenders[0]).toBe("alice | 1,700 | 2 | 1,700 / 2,000 per month");
    expect(spenders[1]).toBe("bob | 500 | 1 | 500 / 500 per month");
    expect(spenders).toContain("no spender | 30 | 1 |");
    expect(spenders).toContain(`${HOSTILE_SPENDER} | 7 | 1 |`); // shown as text, never run
    expect(spenders.at(-1)).toBe("carol | 0 | 0 | 0 / 50 per day on images"); // capped, nothing spent yet
    expect(await p.evaluate(() => (globalThis as unknown as Win).__pwned)).toBeUndefined();
    // What each grant may pay for: any spend, or its scope.
    const grants = (await p.locator("tr[id^=grant-]").allTextContents()).map((x) => x.replace(/\s+/g, " "));
    expect(grants.some((g) => g.includes("any spend"))).toBe(true);
    expect(grants.some((g) => g.includes(`features imagesspenders carol, ${HOSTILE_SPENDER}`))).toBe(true);
    // The journal names who spent on what.
    expect(await p.locator("#journal-table").textContent()).toContain("spender alice");

    await p.evaluate(axeSource);
    const serious = await p.evaluate(async () => {
      const r = await (globalThis as unknown as Win).axe.run({ resultTypes: ["violations"] });
      return r.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => v.id);
    });
    expect(serious).toEqual([]);
    expect(errors).toEqual([]);
    await p.close();
  }, 60_000);
});
