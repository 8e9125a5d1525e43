/**
 * How large a revenue report can be (docs/revenue.md): `limit` and `truncated`, no window after the
 * one that holds now, and the cap on windows × groups, on every store (PostgreSQL through its
 * summary).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { ValidationError } from "../src/core/errors.js";
import { MAX_REVENUE_ROWS } from "../src/modules/revenue/model.js";
import { CreditService } from "../src/credit-service.js";
import { getRevenue } from "../src/modules/revenue/service.js";
import { testStores, type TestStore } from "./fixtures/stores.js";

const dir = mkdtempSync(join(tmpdir(), "cm-revenue-bounds-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const stores: TestStore[] = [
  ...testStores("revenue_bounds"),
  {
    name: "sqlite",
    open: async () => {
      const db = new SqliteDbManager({ filename: join(dir, `bounds-${Math.random().toString(36).slice(2)}.db`) });
      return { db, another: () => db, drop: async () => undefined };
    },
  },
];

const DAY = 86_400_000;
const HOUR = 3_600_000;
/** Midnight UTC of the day of `ms`. */
const dayStart = (ms: number) => Math.floor(ms / DAY) * DAY;
/** Noon today (UTC): the book's clock reads it; every date is relative to it. */
const NOW = dayStart(Date.now()) + 12 * HOUR;
const ACCOUNTS = ["a1", "a2", "a3", "a4", "a5"];

describe.each(stores)("revenue on $name: how large a report can be (docs/revenue.md)", (store) => {
  /** Five accounts that bought credits two days ago: each has a row in every daily window since. */
  async function book(run: (db: DbManager, credits: CreditService, clock: { now: number }) => Promise<void>) {
    const opened = await store.open();
    const db = opened.db;
    await db.init();
    try {
      const clock = { now: NOW - 2 * DAY };
      const credits = new CreditService({ db, clock: () => new Date(clock.now) });
      for (const a of ACCOUNTS) {
        await credits.addCredits(a, 3000, { costBasis: { perCredit: "1/3", currency: "USD" } });
        await credits.deductCredits(a, 300);
      }
      clock.now = NOW;
      await run(db, credits, clock);
    } finally {
      await db.close();
      await opened.drop();
    }
  }
  const days = { from: new Date(dayStart(NOW) - 2 * DAY), to: new Date(dayStart(NOW) + DAY), interval: "day" } as const;

  it("answers at most `limit` rows, the first by window then groups, and says it left rows off", async () => {
    await book(async (_db, credits) => {
      const all = await credits.getRevenue({ ...days, groupBy: ["account"], limit: MAX_REVENUE_ROWS });
      expect(all.truncated).toBe(false);
      // 3 windows × 5 accounts, by window then account.
      expect(all.rows.map((r) => [r.start.getTime(), r.account])).toEqual(
        [0, 1, 2].flatMap((w) => ACCOUNTS.map((a) => [dayStart(NOW) + (w - 2) * DAY, a])),
      );
      const cut = await credits.getRevenue({ ...days, groupBy: ["account"], limit: 7 });
      expect(cut).toEqual({ rows: all.rows.slice(0, 7), truncated: true, timeZone: "UTC" });
      expect(await credits.getRevenue({ ...days, groupBy: ["account"], limit: 15 })).toEqual(all);
      // The default is 10,000 rows; 0 and more than 100,000 are refused.
      expect(await credits.getRevenue({ ...days, groupBy: ["account"] })).toEqual(all);
      for (const limit of [0, MAX_REVENUE_ROWS + 1, 1.5])
        await expect(credits.getRevenue({ ...days, limit })).rejects.toThrow(/query\.limit/);
    });
  });

  it("has no window after the one that holds now: a later `to` reads to that window's end", async () => {
    await book(async (db, credits, clock) => {
      const future = await credits.getRevenue({ ...days, to: new Date(NOW + 400 * DAY), groupBy: ["account"] });
      expect(future).toEqual(await credits.getRevenue({ ...days, groupBy: ["account"] }));
      expect(Math.max(...future.rows.map((r) => r.end.getTime()))).toBe(dayStart(NOW) + DAY);
      // Monthly from 1970 to 2136: months up to this one only, this one to its end.
      const months = await credits.getRevenue({
        from: "1970-01-01T00:00:00Z",
        to: "2136-01-01T00:00:00Z",
        interval: "month",
        groupBy: ["account"],
      });
      const thisMonth = new Date(NOW);
      const monthEnd = Date.UTC(thisMonth.getUTCFullYear(), thisMonth.getUTCMonth() + 1, 1);
      expect(months.truncated).toBe(false);
      expect(new Set(months.rows.map((r) => r.end.getTime()))).toEqual(
        new Set(
          [monthEnd].concat(
            // Bought two days ago: last month's end too when that was in it.
            dayStart(NOW) - 2 * DAY < Date.UTC(thisMonth.getUTCFullYear(), thisMonth.getUTCMonth(), 1)
              ? [Date.UTC(thisMonth.getUTCFullYear(), thisMonth.getUTCMonth(), 1)]
              : [],
          ),
        ),
      );
      // A range that starts after now: nothing (with or without an interval).
      for (const interval of ["day", null] as const)
        expect(
          await credits.getRevenue({ from: new Date(NOW + HOUR), to: new Date(NOW + 10 * DAY), interval }),
        ).toEqual({ rows: [], truncated: false, timeZone: "UTC" });
      // Without an interval the one window holds now: it ends at `to`.
      const one = await credits.getRevenue({ from: days.from, to: new Date(NOW + 10 * DAY), interval: null });
      expect(one.rows.map((r) => r.end.getTime())).toEqual([NOW + 10 * DAY]);
      // The clock moves on: the windows follow it.
      clock.now = NOW + 2 * DAY;
      const later = await credits.getRevenue({ ...days, to: new Date(NOW + 400 * DAY), groupBy: ["account"] });
      expect(Math.max(...later.rows.map((r) => r.end.getTime()))).toBe(dayStart(NOW) + 3 * DAY);
      // The store's summary (PostgreSQL) and the replay agree on a range read to now's window.
      const q = { ...days, to: new Date(NOW + 400 * DAY), groupBy: ["account" as const] };
      expect(await getRevenue(db, q, { now: clock.now })).toEqual(
        await getRevenue(db, q, { now: clock.now, path: "replay" }),
      );
    });
  });

  it("refuses a report of more windows × groups than the cap, before it builds rows", async () => {
    await book(async (db) => {
      const q = { ...days, groupBy: ["account" as const] };
      for (const path of ["auto", "replay"] as const) {
        // 3 windows × 5 accounts: 15 cells.
        expect((await getRevenue(db, q, { now: NOW, path, maxCells: 15 })).rows).toHaveLength(15);
        const refused = await getRevenue(db, q, { now: NOW, path, maxCells: 14 }).catch((e: unknown) => e);
        expect(refused, path).toBeInstanceOf(ValidationError);
        expect((refused as ValidationError).message).toMatch(/more than 14 cells \(3 windows × 5 groups/);
        // Without groups one row a window: well under.
        expect((await getRevenue(db, days, { now: NOW, path, maxCells: 14 })).rows).toHaveLength(3);
      }
    });
  });

  it("counts windows before it builds them: a range of too many is refused at once", async () => {
    await book(async (_db, credits) => {
      const started = performance.now();
      await expect(
        credits.getRevenue({ from: "1800-01-01T00:00:00Z", to: new Date(NOW), interval: "hour" }),
      ).rejects.toThrow(/more than 2000 windows of a hour/);
      // Arithmetic, not 2,000 windows walked through the time zone database: well under 50 ms.
      expect(performance.now() - started).toBeLessThan(50);
    });
  });
});
