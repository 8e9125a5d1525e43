/**
 * A `period_spend` threshold's recount on SQLite (docs/customer-state.md, "Alerts"): an account
 * with 50,000 entries this month, 32 thresholds set at once. The window's spend is summed by the
 * store's usage scan on its reader thread, beside the unit of work: the event loop keeps turning
 * (a 5 ms timer measures its longest stall) and a deduction on the account commits meanwhile.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { CoreCreditService } from "../src/core/services/credit-service.js";
import { NotificationService } from "../src/core/services/notification-service.js";
import type { AlertThreshold } from "../src/core/models/index.js";

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-recount-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ENTRIES = 50_000;

describe("SQLite: a period_spend recount beside the unit of work", () => {
  it("holds neither the event loop nor the account: 50,000 entries this month, 32 thresholds", async () => {
    const file = join(dir, "recount.db");
    const db = new SqliteDbManager({ filename: file });
    await db.init();
    const credits = new CoreCreditService({ db });
    const notifications = new NotificationService({ db, alerts: [] });
    const u = "big";
    await credits.addCredits(u, 1_000_000_000);
    // The entries written straight into the file (seq 2 on), spread over this month until now.
    const now = Date.now();
    const d = new Date(now);
    const month = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
    const step = Math.max(1, now - month - 1000) / ENTRIES;
    const raw = new Database(file);
    raw.exec(
      `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ${ENTRIES - 1}) ` +
        `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'e' || i, '${u}', i + 2, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `json_object('usages', json_array(json_object('amount', 1 + i % 20, 'model', 'm' || (i % 5), 'inputTokens', 100))), ` +
        `'key-' || (i % 8), CASE WHEN i % 3 = 0 THEN 'chat' ELSE 'search' END, ` +
        `strftime('%Y-%m-%dT%H:%M:%fZ', (${month} + i * ${step}) / 1000.0, 'unixepoch'), '00' FROM s`,
    );
    raw.prepare("UPDATE accounts SET seq = ? WHERE user_id = ?").run(ENTRIES + 1, u);
    const byKey = raw
      .prepare(
        "SELECT spender, total(amount) AS spent FROM journal_entries WHERE user_id = ? AND type = 'deduct' GROUP BY spender",
      )
      .all(u) as { spender: string; spent: number }[];
    raw.close();
    // 32 thresholds over this month: all spend, each key's, each key's per feature, and lines above.
    const list: AlertThreshold[] = [{ id: "all", kind: "period_spend", atOrAbove: 1e12, window: "month" }];
    for (let k = 0; k < 8; k++) {
      list.push({ id: `k${k}`, kind: "period_spend", atOrAbove: 1e12, window: "month", spender: `key-${k}` });
      for (const f of ["chat", "search"])
        list.push({
          id: `k${k}-${f}`,
          kind: "period_spend",
          atOrAbove: 1e12,
          window: "month",
          spender: `key-${k}`,
          feature: f,
        });
    }
    while (list.length < 32)
      list.push({ id: `line-${list.length}`, kind: "period_spend", atOrAbove: list.length, window: "month" });

    let stallMs = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const t = performance.now();
      stallMs = Math.max(stallMs, t - last);
      last = t;
    }, 5);
    let setDone = false;
    const started = performance.now();
    let recountMs = 0;
    try {
      const setting = notifications.setAlerts(u, list).then(() => {
        setDone = true;
        recountMs = performance.now() - started;
      });
      // A change on the account while its windows are counted: committed before the recount ends.
      await new Promise((resolve) => setTimeout(resolve, 10));
      await credits.deductCredits(u, 5, { spender: "key-0", feature: "chat" });
      expect(setDone).toBe(false);
      await setting;
    } finally {
      clearInterval(timer);
    }
    stallMs = Math.max(stallMs, performance.now() - last);
    const values = Object.fromEntries(
      (await notifications.getAlerts(u)).filter((s) => s.source !== "builtIn").map((s) => [s.threshold.id, s.value]),
    );
    const total = byKey.reduce((n, r) => n + r.spent, 0);
    expect(values.all).toBe(total + 5);
    expect(values.k0).toBe(byKey.find((r) => r.spender === "key-0")!.spent + 5);
    expect(values.k3).toBe(byKey.find((r) => r.spender === "key-3")!.spent);
    // Counted inside the unit of work on the event loop, this stalls it for the whole count (over
    // 600 ms); here only the units of work and the buckets' answer run on it, and what a loaded
    // machine's scheduler takes from it (the bound: under 150 ms, or a third of the count's time).
    expect(stallMs).toBeLessThan(Math.max(150, recountMs / 3));
    await db.close();
  }, 60_000);
});
