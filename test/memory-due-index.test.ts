// The in-memory store's job indexes (holds and grants ordered by expiry) must not keep an entry for
// every hold or grant an account ever had when no job scans them: a service that never runs the
// expiry jobs (tests, a dev server) would grow them forever.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DueTimes } from "../src/core/db/memory/due-times.js";
import { CreditService, InMemoryDbManager } from "../src/index.js";
import { deep } from "./fixtures/depth.js";

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

describe("DueTimes", () => {
  it("scans as a model would: ids set, moved and deleted between scans and pages", () => {
    const op = fc.oneof(
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant("set" as const),
          id: fc.integer({ min: 0, max: 300 }),
          time: fc.integer({ min: 0, max: 50 }),
        }),
      },
      {
        weight: 3,
        arbitrary: fc.record({ kind: fc.constant("delete" as const), id: fc.integer({ min: 0, max: 300 }) }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant("scan" as const),
          asOf: fc.integer({ min: 0, max: 50 }),
          limit: fc.integer({ min: 1, max: 40 }),
        }),
      },
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 2000 }), (ops) => {
        const model = new Map<string, number>();
        const due = new DueTimes();
        const expected = (asOf: number, limit: number, after?: { time: number; id: string }) =>
          [...model]
            .filter(
              ([id, t]) => t <= asOf && (after === undefined || t > after.time || (t === after.time && id > after.id)),
            )
            .sort(([a, ta], [b, tb]) => ta - tb || (a < b ? -1 : 1))
            .slice(0, limit)
            .map(([id]) => id);
        for (const o of ops) {
          const id = o.kind === "scan" ? "" : `h${String(o.id).padStart(3, "0")}`;
          if (o.kind === "set") {
            model.set(id, o.time);
            due.set(id, o.time);
          } else if (o.kind === "delete") {
            model.delete(id);
            due.delete(id);
          } else {
            // Page by page, as the jobs read it.
            let after: { time: number; id: string } | undefined;
            for (;;) {
              const page = due.scan(o.asOf, o.limit, after);
              expect(page).toEqual(expected(o.asOf, o.limit, after));
              if (page.length < o.limit) break;
              const last = page[page.length - 1]!;
              after = { time: model.get(last)!, id: last };
            }
          }
        }
        expect(due.size).toBe(model.size);
      }),
      { numRuns: deep(80) },
    );
  });
});
