// The in-memory store's job indexes (holds and grants ordered by expiry) must not keep an entry for
// every hold or grant an account ever had when no job scans them: a service that never runs the
// expiry jobs (tests, a dev server) would grow them forever.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DueIndex } from "../src/db/memory/due-index.js";
import { CreditService, InMemoryDbManager } from "../src/index.js";

const sizeOf = (db: InMemoryDbManager, index: "dueHolds" | "dueGrants") =>
  (db as unknown as Record<string, { size: number }>)[index]!.size;

describe("in-memory due indexes", () => {
  it("drop settled holds and closed grants without a job scanning, and still find what is due", async () => {
    const clock = { now: Date.parse("2030-01-01T00:00:00Z") };
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, clock: () => new Date(clock.now) });
    await credits.addCredits("u", 1_000_000);
    for (let i = 0; i < 3000; i++) {
      const hold = await credits.reserveCredits("u", 1, { ttlSeconds: 60 });
      if (i % 2 === 0) await credits.releaseReservedCredits(hold.id);
      else await credits.commitReservedCredits(hold.id);
    }
    expect(sizeOf(db, "dueHolds")).toBeLessThan(1500);
    for (let i = 0; i < 3000; i++) {
      const entry = await credits.addCredits("g", 1, { expiresAt: new Date(clock.now + 3_600_000) });
      await credits.voidGrant(entry.grants[0]!.grantId);
    }
    expect(sizeOf(db, "dueGrants")).toBeLessThan(1500);
    // What is still due is found, and only that.
    const open = await Promise.all(Array.from({ length: 5 }, () => credits.reserveCredits("u", 2, { ttlSeconds: 30 })));
    clock.now += 31_000;
    const due = await db.findExpiredReservations(new Date(clock.now), 100);
    expect(due.map((r) => r.id).sort()).toEqual(open.map((r) => r.id).sort());
    const grant = await credits.addCredits("g", 7, { expiresAt: new Date(clock.now + 1000) });
    const dueGrants = await db.findDueGrants(new Date(clock.now + 1000), 100);
    expect(dueGrants.map((g) => g.id)).toEqual([grant.grants[0]!.grantId]);
  });
});

describe("DueIndex, entries taken out by id", () => {
  it("scans as a model would, whether a removed entry is among the latest additions or long merged", () => {
    // Each id added once (as holds are); some are removed soon, some after many additions or a scan
    // merged them (then found dead through `live`), some never.
    const op = fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant("add" as const), time: fc.integer({ min: 0, max: 50 }) }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant("remove" as const), pick: fc.nat() }) },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant("scan" as const),
          asOf: fc.integer({ min: 0, max: 50 }),
          limit: fc.integer({ min: 1, max: 400 }),
        }),
      },
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 3000 }), (ops) => {
        const live = new Map<string, number>();
        const index = new DueIndex((id, t) => live.get(id) === t);
        let n = 0;
        const expected = (asOf: number, limit: number) =>
          [...live]
            .filter(([, t]) => t <= asOf)
            .sort(([a, ta], [b, tb]) => ta - tb || (a < b ? -1 : 1))
            .slice(0, limit)
            .map(([id]) => id);
        for (const o of ops) {
          if (o.kind === "add") {
            const id = `h${String(n++).padStart(5, "0")}`;
            live.set(id, o.time);
            index.add(o.time, id);
          } else if (o.kind === "remove") {
            const ids = [...live.keys()];
            if (ids.length === 0) continue;
            // Mostly one of the latest (a hold settled within its request), else any.
            const id =
              ids[o.pick % 3 === 0 ? o.pick % ids.length : ids.length - 1 - (o.pick % Math.min(ids.length, 8))]!;
            const time = live.get(id)!;
            live.delete(id);
            index.removed(time, id);
          } else expect(index.scan(o.asOf, o.limit, undefined)).toEqual(expected(o.asOf, o.limit));
        }
        expect(index.scan(50, 1e9, undefined)).toEqual(expected(50, 1e9));
        // Nothing dead is kept for good: what is left is at most the live entries plus what awaits compaction.
        expect(index.size).toBeLessThanOrEqual(live.size + 1025 + Math.ceil(index.size / 2));
      }),
      { numRuns: 80 },
    );
  });

  it("keeps nothing of holds settled soon after they were placed", () => {
    const index = new DueIndex(() => true);
    for (let i = 0; i < 10_000; i++) {
      const id = `hold-${i}`;
      index.add(i, id);
      if (i % 50 !== 0) index.removed(i, id);
    }
    expect(index.size).toBe(200);
    expect(index.scan(1e9, 1e9, undefined)).toEqual(Array.from({ length: 200 }, (_, k) => `hold-${k * 50}`));
  });
});
