/** Usage reports of a closed month (docs/usage.md, "Closed months"), on every store. */
import { describe, expect, it } from "vitest";
import { CreditService, usageCsv } from "../src/index.js";
import type { UsageQuery, UsageRow } from "../src/models-public.js";
import type { DbManager } from "../src/store.js";
import { usageEntryTypes } from "../src/core/domain/usage.js";
import { periodClosesOf } from "../src/modules/revenue/store.js";
import { sqliteTestStore, testStores, type TestStore } from "./fixtures/stores.js";

const stores: TestStore[] = [...testStores("useclose"), sqliteTestStore("useclose")];

const DAY = 86_400_000;
const HOUR = 3_600_000;
/** Now, to the minute: every date is relative to it. */
const T0 = Math.floor(Date.now() / 60_000) * 60_000;
/** The period closed: through the start of today (UTC). */
const THROUGH = Math.floor(T0 / DAY) * DAY;

/** A usage query with its range in ms. */
type Range = Pick<UsageQuery, "account" | "interval" | "groupBy" | "orderBy" | "limit"> & { from: number; to: number };
/** `t[p]`, bound to `t` when a method (a proxy hands it on as its target's own). */
const member = (t: object, p: string | symbol): unknown => {
  const v = Reflect.get(t, p) as unknown;
  return typeof v === "function" ? (v as () => unknown).bind(t) : v;
};
/**
 * `db` without the batched read of moved entries (`PeriodCloseStore.movedEntries`): its fleet-wide
 * reports read the journal account by account, as on a store whose part has none.
 */
const perAccount = (db: DbManager): DbManager =>
  new Proxy(db, {
    get: (target, p) =>
      p === "usePart"
        ? (part: Parameters<NonNullable<DbManager["usePart"]>>[0]) => {
            const reads = target.usePart!(part);
            return reads && new Proxy(reads, { get: (r, q) => (q === "movedEntries" ? undefined : member(r, q)) });
          }
        : member(target, p),
  });
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

  it("reads the usage closes moved across accounts in pages by user id and seq (PeriodCloseStore.movedEntries)", async () => {
    const clock = { now: THROUGH - DAY + 6 * HOUR };
    const { db, drop, credits } = await open(clock);
    try {
      const reads = periodClosesOf(db)!;
      // The in-memory store reads each account's journal in process: it has no batched read.
      expect(reads.movedEntries === undefined).toBe(store.name === "memory");
      if (reads.movedEntries === undefined) return;
      for (const id of ["pa", "pb", "pc"]) await credits.addCredits(id, 1_000);
      await credits.deductCredits("pa", 1); // before the close: at or before its mark
      clock.now = T0;
      await credits.closePeriod(new Date(THROUGH));
      const late = (id: string, amount: number, hoursBefore: number) =>
        credits.deductCreditsAfterService(id, amount, { occurredAt: new Date(THROUGH - hoursBefore * HOUR) });
      await late("pa", 11, 12);
      await credits.deductCredits("pa", 12); // now: after the close's through
      await late("pa", 13, 1);
      await late("pc", 31, 2);
      await credits.addCredits("pd", 100); // an account the close did not know; not usage
      await late("pd", 41, 3);
      // "pb": nothing since the close.
      const read = async (limit: number) => {
        const pages: [string, number][][] = [];
        let after: { userId: string; seq: number } | null = null;
        for (;;) {
          const page = await reads.movedEntries!({
            through: new Date(THROUGH),
            types: usageEntryTypes(),
            before: new Date(THROUGH),
            after,
            limit,
          });
          pages.push(page.map((e) => [e.userId, e.amount]));
          if (page.length < limit || pages.length > 10) return pages; // (a read that pages no further)
          after = { userId: page[page.length - 1]!.userId, seq: page[page.length - 1]!.seq };
        }
      };
      expect(await read(100)).toEqual([
        [
          ["pa", 11],
          ["pa", 13],
          ["pc", 31],
          ["pd", 41],
        ],
      ]);
      // A page ends inside an account's entries and between accounts.
      expect(await read(1)).toEqual([[["pa", 11]], [["pa", 13]], [["pc", 31]], [["pd", 41]], []]);
      expect(await read(3)).toEqual([
        [
          ["pa", 11],
          ["pa", 13],
          ["pc", 31],
        ],
        [["pd", 41]],
      ]);
    } finally {
      await done(db, drop);
    }
  });

  it("reports usage moved on more accounts than one read's page, read at once or account by account", async () => {
    const clock = { now: T0 };
    const opened = await store.open();
    const { db, drop } = opened;
    await db.init();
    try {
      const credits = new CreditService({ db, clock: () => new Date(clock.now), overdraftLimit: "unlimited" });
      const ids = Array.from({ length: 1_001 }, (_, i) => `acct-${String(i).padStart(4, "0")}`);
      await credits.deductCreditsAfterService(ids[0]!, 1);
      await credits.closePeriod(new Date(THROUGH));
      // Every account's usage of yesterday, recorded after the close (one account had a mark).
      for (let i = 0; i < ids.length; i += 50)
        await Promise.all(
          ids
            .slice(i, i + 50)
            .map((id, k) =>
              credits.deductCreditsAfterService(id, 1 + ((i + k) % 7), { occurredAt: new Date(THROUGH - HOUR) }),
            ),
        );
      const today: Range = { from: THROUGH, to: THROUGH + DAY, interval: null, groupBy: ["account"] };
      const rows = figures(await usage(credits, today));
      expect(rows.filter((r) => r.catchUpThrough === THROUGH).map((r) => [r.account, r.credits])).toEqual(
        ids.map((id, i) => [id, 1 + (i % 7)]),
      );
      expect(rows.filter((r) => r.catchUpThrough === undefined).map((r) => [r.account, r.credits])).toEqual([
        [ids[0], 1],
      ]);
      const byAccount = new CreditService({ db: perAccount(db), clock: () => new Date(clock.now) });
      expect(figures(await usage(byAccount, today))).toEqual(rows);
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
