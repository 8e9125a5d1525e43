import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { newKey } from "../src/serve/keys.js";
import { memoryKeyStore } from "./memory-key-store.js";
import { serveApp } from "../src/serve/server.js";
import { serveSettings } from "../src/serve/settings.js";

const DAY = 86_400_000;
/** Accounts of the book and the days of hourly windows: 500 × 1,920 cells, under the cap of 1,000,000. */
const ACCOUNTS = 500;
const DAYS = 80;

/**
 * A large revenue report does not hold up the process (docs/revenue.md, "How large a report can
 * be"): the roll-forward runs in the process and lets the event loop run between its steps, so
 * `/health/live` answers while the report is still being worked out.
 */
describe("serve while a large revenue report runs", () => {
  let server: Server | undefined;
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
  });

  it("answers /health/live before the report is done, and soon", async () => {
    const now = Date.now();
    const clock = { t: now - DAYS * DAY };
    const m = await createCreditManager({ clock: () => new Date(clock.t) });
    // Every account paid DAYS days ago and used a little: deferred in each of its hourly windows since.
    for (let a = 0; a < ACCOUNTS; a++) {
      clock.t = now - DAYS * DAY + a * 60_000;
      await m.credits.addCredits(`acct-${a}`, 100_000, { costBasis: { perCredit: "1/3", currency: "USD" } });
      await m.credits.deductCredits(`acct-${a}`, 7);
    }
    clock.t = now;
    const settings = serveSettings({}, {});
    const keys = memoryKeyStore();
    const admin = newKey("admin", null, "ops");
    await keys.insert(admin.record);
    const app = serveApp(m, settings, await createAuthenticator(settings, keys, 0), pino({ level: "silent" }), null);
    server = createServer(app.listener);
    await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const get = (path: string) => fetch(base + path, { headers: { authorization: `Bearer ${admin.key}` } });
    const range = `from=${new Date(now - DAYS * DAY).toISOString()}&to=${new Date(now).toISOString()}`;

    // The moment the service starts working the report out (the report is the credit service's).
    let begun!: () => void;
    const reportBegun = new Promise<void>((resolve) => (begun = resolve));
    const getRevenue = m.credits.getRevenue.bind(m.credits);
    m.credits.getRevenue = (q) => {
      begun();
      return getRevenue(q);
    };
    const started = performance.now();
    let reportAt = Number.POSITIVE_INFINITY;
    // The response's headers come once the report is worked out; its body is read after.
    const report = get(`/admin/credits/revenue?${range}&interval=hour&groupBy=account`).then((r) => {
      reportAt = performance.now();
      return r;
    });
    await reportBegun;
    // Without pauses in the report, this request is not even sent until the report is done: a
    // fetch needs the event loop.
    const asked = performance.now();
    const live = await get("/health/live");
    const liveAt = performance.now();
    expect(live.status).toBe(200);
    const r = await report;
    expect(r.status).toBe(200);
    const body = (await r.json()) as { rows: unknown[]; truncated: boolean };
    expect([body.rows.length, body.truncated]).toEqual([10_000, true]);
    const timings = JSON.stringify({ report: reportAt - started, live: liveAt - asked });
    // Answered while the report ran (about 0.3 s on its own here, several times that on a busy machine)…
    expect(liveAt, timings).toBeLessThan(reportAt);
    // …and soon: a few turns of the event loop, each after about 10 ms of the report.
    expect(liveAt - asked, timings).toBeLessThan(1000);
    await m.close();
  }, 60_000);
});
