/** Usage reports of a closed month (docs/usage.md, "Closed months"), on every store. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { CreditService, usageCsv } from "../src/index.js";
import type { UsageQuery, UsageRow } from "../src/models-public.js";
import type { DbManager } from "../src/store.js";
import { testStores, type TestStore } from "./fixtures/stores.js";

const dir = mkdtempSync(join(tmpdir(), "cm-usage-close-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const stores: TestStore[] = [
  ...testStores("useclose"),
  {
    name: "sqlite",
    open: async () => {
      const file = join(dir, `close-${Math.random().toString(36).slice(2)}.db`);
      return {
        db: new SqliteDbManager({ filename: file }),
        another: () => new SqliteDbManager({ filename: file }),
        drop: async () => undefined,
      };
    },
  },
];

const DAY = 86_400_000;
const HOUR = 3_600_000;
/** Now, to the minute: every date is relative to it. */
const T0 = Math.floor(Date.now() / 60_000) * 60_000;
/** The period closed: through the start of today (UTC). */
const THROUGH = Math.floor(T0 / DAY) * DAY;

/** A usage query with its range in ms. */
type Range = Pick<UsageQuery, "account" | "interval" | "groupBy" | "orderBy" | "limit"> & { from: number; to: number };
const usage = async (credits: CreditService, q: Range): Promise<UsageRow[]> =>
  (await credits.getUsage({ ...q, from: new Date(q.from), to: new Date(q.to) })).rows;
/** The rows without their window, and with their close as ms. */
const figures = (rows: readonly UsageRow[]) =>
  rows.map(({ start, end: _e, catchUpThrough, ...r }) => ({
    day: (start.getTime() - THROUGH) / DAY,
    ...r,
    ...(catchUpThrough === undefined ? {} : { catchUpThrough: catchUpThrough.getTime() }),
  }));

describe.each(stores)("usage reports of a closed month on $name (docs/usage.md)", (store) => {
  const open = async (clock: { now: number }) => {
    const opened = await store.open();
    await opened.db.init();
    return { ...opened, credits: new CreditService({ db: opened.db, clock: () => new Date(clock.now) }) };
  };
  const done = async (db: DbManager, drop: () => Promise<void>) => {
    await db.close();
    await drop();
  };

  it("keeps closed windows as they were and reports usage recorded later in the first open window, as catch-up", async () => {
    const clock = { now: THROUGH - DAY + 6 * HOUR };
    const { db, drop, credits } = await open(clock);
    try {
      // Yesterday: two charges of "u", one of "v".
      await credits.addCredits("u", 1_000);
      await credits.addCredits("v", 100);
      const charge = await credits.deductCredits("u", 20, { feature: "chat" });
      await credits.deductCredits("u", 5, { feature: "img" });
      await credits.deductCredits("v", 3, { feature: "chat" });

      clock.now = T0;
      // Today, on time.
      await credits.deductCredits("u", 2, { feature: "chat" });
      const closedDays: Range = { from: THROUGH - 2 * DAY, to: THROUGH, interval: "day", groupBy: ["account"] };
      const closedOfU: Range = {
        account: "u",
        from: THROUGH - DAY,
        to: THROUGH,
        interval: "hour",
        groupBy: ["feature"],
      };
      const before = await usage(credits, closedDays);
      const beforeOfU = await usage(credits, closedOfU);
      expect(figures(before).map((r) => [r.day, r.account, r.credits, r.requests])).toEqual([
        [-1, "u", 25, 2],
        [-1, "v", 3, 1],
      ]);

      await credits.closePeriod(new Date(THROUGH));

      // Recorded now, each with a time in the closed period: usage of yesterday noon, the reversal
      // of yesterday's charge of 20, usage of an account the close did not know ("w", no mark).
      await credits.deductCreditsAfterService("u", 7, { feature: "chat", occurredAt: new Date(THROUGH - 12 * HOUR) });
      await credits.reverseCharge("u", charge.id, { reason: "refund" });
      await credits.addCredits("w", 10);
      await credits.deductCreditsAfterService("w", 4, { feature: "chat", occurredAt: new Date(THROUGH - HOUR) });

      // The closed windows read the same.
      expect(await usage(credits, closedDays)).toEqual(before);
      expect(await usage(credits, closedOfU)).toEqual(beforeOfU);

      // The first open window has them, each group on a catch-up row after its ordinary one.
      const today: Range = { from: THROUGH, to: THROUGH + DAY, interval: null, groupBy: ["account", "feature"] };
      const rows = await usage(credits, today);
      expect(figures(rows).map((r) => [r.account, r.feature, r.credits, r.requests, r.catchUpThrough ?? null])).toEqual(
        [
          ["u", "chat", 2, 1, null],
          // 7 of late usage, the 20 given back and its request taken out.
          ["u", "chat", -13, 0, THROUGH],
          ["w", "chat", 4, 1, THROUGH],
        ],
      );
      // One account's report says the same.
      expect(figures(await usage(credits, { ...today, account: "u", groupBy: ["feature"] }))).toEqual(
        figures(rows)
          .filter((r) => r.account === "u")
          .map(({ account: _a, ...r }) => r),
      );

      // A report across the close: the closed day as before, the catch-up in the open day only.
      const across: Range = { from: THROUGH - DAY, to: THROUGH + DAY, interval: "day", groupBy: ["account"] };
      const both = figures(await usage(credits, across));
      expect(both.filter((r) => r.day === -1)).toEqual(figures(before));
      expect(both.filter((r) => r.day === 0).map((r) => [r.account, r.credits, r.catchUpThrough ?? null])).toEqual([
        ["u", 2, null],
        ["u", -13, THROUGH],
        ["w", 4, THROUGH],
      ]);
      // Whole UTC days across accounts (the daily rollup where the store keeps one) and one
      // account's journal agree figure for figure, closes present.
      for (const account of ["u", "w"]) {
        const one = figures(await usage(credits, { ...across, account, groupBy: [] }));
        expect(one).toEqual(both.filter((r) => r.account === account).map(({ account: _a, ...r }) => r));
      }
      // Most credits first: the catch-up row sorts by its own figures.
      const top = await usage(credits, { ...today, groupBy: ["account"], orderBy: "credits", limit: 2 });
      expect(figures(top).map((r) => [r.account, r.credits, r.catchUpThrough ?? null])).toEqual([
        ["w", 4, THROUGH],
        ["u", 2, null],
      ]);

      // The CSV names the close in a last column, empty on ordinary rows.
      const csv = usageCsv(await credits.getUsage({ ...today, from: new Date(THROUGH), to: new Date(THROUGH + DAY) }), [
        "account",
        "feature",
      ]).split("\r\n");
      expect(csv[0]).toBe(
        "start,end,account,feature,kind,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall,catchUpThrough",
      );
      const start = new Date(THROUGH).toISOString();
      const end = new Date(THROUGH + DAY).toISOString();
      expect(csv.slice(1, 4)).toEqual([
        `${start},${end},u,chat,spend,2,1,0,0,0,0,`,
        `${start},${end},u,chat,spend,-13,0,0,0,0,0,${start}`,
        `${start},${end},w,chat,spend,4,1,0,0,0,0,${start}`,
      ]);
    } finally {
      await done(db, drop);
    }
  });

  it("books usage recorded after two closes at the later one, as catch-up of the first that held its time", async () => {
    const clock = { now: THROUGH - 2 * DAY + HOUR };
    const { db, drop, credits } = await open(clock);
    try {
      await credits.addCredits("u", 1_000);
      await credits.deductCredits("u", 1);
      clock.now = T0;
      await credits.closePeriod(new Date(THROUGH - DAY));
      // Between the closes: usage of two days ago, booked at the first close's through.
      await credits.deductCreditsAfterService("u", 10, { occurredAt: new Date(THROUGH - 2 * DAY + 2 * HOUR) });
      await credits.closePeriod(new Date(THROUGH));
      // After both: usage of two days ago and of yesterday, booked at the second's.
      await credits.deductCreditsAfterService("u", 100, { occurredAt: new Date(THROUGH - 2 * DAY + 3 * HOUR) });
      await credits.deductCreditsAfterService("u", 1_000 - 111, {
        occurredAt: new Date(THROUGH - 5 * HOUR),
      });
      const rows = figures(
        await usage(credits, { account: "u", from: THROUGH - 2 * DAY, to: THROUGH + DAY, interval: "day" }),
      );
      expect(rows.map((r) => [r.day, r.credits, r.requests, r.catchUpThrough ?? null])).toEqual([
        [-2, 1, 1, null],
        [-1, 10, 1, THROUGH - DAY],
        [0, 100, 1, THROUGH - DAY],
        [0, 889, 1, THROUGH],
      ]);
      // Without the days the closes moved usage out of, the range starts at the first close's
      // through: the same rows from there.
      const later = figures(
        await usage(credits, { account: "u", from: THROUGH - DAY, to: THROUGH + DAY, interval: "day" }),
      );
      expect(later).toEqual(rows.slice(1));
      // After the closes: nothing to move.
      expect(
        figures(await usage(credits, { account: "u", from: THROUGH + HOUR, to: THROUGH + DAY, interval: null })),
      ).toEqual([]);
    } finally {
      await done(db, drop);
    }
  });
});
