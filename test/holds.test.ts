import { describe, expect, it } from "vitest";
import { SettledHolds } from "../src/db/memory/holds.js";
import { InMemoryDbManager, createCreditManager } from "../src/index.js";
import type { Reservation } from "../src/models/index.js";

function hold(i: number, over: Partial<Reservation> = {}): Reservation {
  return {
    id: `0000000${i % 10}-aaaa-4bbb-8ccc-${String(i).padStart(12, "d")}`,
    userId: "u",
    amount: 10 + i,
    status: "committed",
    allocations: [{ grantId: "g1", amount: 10 + i }],
    expiresAt: new Date(1_700_000_900_000 + i),
    reason: "POST /api/chat",
    metadata: null,
    createdAt: new Date(1_700_000_000_000 + i),
    settledAt: new Date(1_700_000_000_500 + i),
    committedAmount: 7,
    ...over,
  };
}

describe("SettledHolds", () => {
  it("gives back every hold as it was stored, compact or not", () => {
    const s = new SettledHolds();
    const odd: Array<Partial<Reservation>> = [
      {},
      { id: "not-a-uuid", reason: null },
      { id: "ABCDEF01-aaaa-4bbb-8ccc-dddddddddddd" }, // upper case would not read back the same
      { status: "released", committedAmount: null, reason: "GET /other" },
      { status: "expired", allocations: [], amount: 0 },
      { metadata: { releaseReason: "aborted", nested: { a: [1, "x", null] } } },
      { allocations: [{ grantId: "g2", amount: 3 }, { grantId: "g1", amount: 4 }], committedAmount: 0 },
      { status: "active", settledAt: null, committedAmount: null }, // stored as is, whatever its status
      { amount: Number.MAX_SAFE_INTEGER, committedAmount: Number.MAX_SAFE_INTEGER, reason: "" },
    ];
    const stored: Reservation[] = [];
    for (let i = 0; i < 40; i++) {
      const h = hold(i, odd[i % odd.length]);
      if (stored.some((x) => x.id === h.id)) continue;
      stored.push(h);
      s.set(h);
    }
    expect(s.size).toBe(stored.length);
    for (const h of stored) {
      expect(s.has(h.id)).toBe(true);
      expect(s.get(h.id, "u")).toEqual(h);
    }
    expect(s.values("u")).toEqual(stored);
    expect(s.get("missing", "u")).toBeUndefined();
    // A copy each time: changing one changes nothing stored.
    const copy = s.get(stored[0]!.id, "u")!;
    copy.allocations.push({ grantId: "x", amount: 1 });
    expect(s.get(stored[0]!.id, "u")).toEqual(stored[0]);
  });

  it("a hold stored again replaces its row (allocations, metadata and odd id included)", () => {
    const s = new SettledHolds();
    const first = hold(1, { id: "odd-id", metadata: { a: 1 } });
    s.set(first);
    s.set(hold(2));
    const again = { ...first, status: "released" as const, allocations: [{ grantId: "g9", amount: 2 }], metadata: null };
    s.set(again);
    expect(s.size).toBe(2);
    expect(s.get("odd-id", "u")).toEqual(again);
    expect(s.get(hold(2).id, "u")).toEqual(hold(2));
  });
});

describe("the in-memory store's settled holds", () => {
  it("are read back whole through every path that reads holds, and audits stay clean", async () => {
    const db = new InMemoryDbManager();
    let now = Date.parse("2026-03-01T00:00:00Z");
    const m = await createCreditManager({ db, clock: () => new Date((now += 1000)) }); // each hold its own instant
    await m.credits.addCredits("u", 1000);
    const committed = await m.credits.reserveCredits("u", 50, { reason: "POST /chat", metadata: { model: "m" } });
    await m.credits.commitReservedCredits(committed.id, { amount: 20 });
    const released = await m.credits.reserveCredits("u", 30, { reason: "POST /chat" });
    await m.credits.releaseReservedCredits(released.id);
    const active = await m.credits.reserveCredits("u", 5);
    expect(await m.credits.getReservation(committed.id)).toMatchObject({
      status: "committed",
      committedAmount: 20,
      amount: 50,
      reason: "POST /chat",
      metadata: { model: "m" },
      allocations: committed.allocations,
    });
    expect(await m.credits.getReservation(released.id)).toMatchObject({ status: "released", committedAmount: null });
    const all = await db.listReservations("u");
    expect(all.map((r) => r.id)).toEqual([committed.id, released.id, active.id]); // by creation (createdAt, then id)
    expect((await db.listReservations("u", { status: "released" })).map((r) => r.id)).toEqual([released.id]);
    // A settled hold refuses a second settlement, as before.
    await expect(m.credits.commitReservedCredits(released.id)).rejects.toMatchObject({ code: "RESERVATION_NOT_ACTIVE" });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });

  it("list holds made in the same instant by id, active and settled alike (as PostgreSQL does)", async () => {
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, clock: () => new Date("2026-03-01T00:00:00Z") });
    await m.credits.addCredits("u", 1000);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await m.credits.reserveCredits("u", 1);
      ids.push(r.id);
      if (i % 2 === 0) await m.credits.releaseReservedCredits(r.id);
    }
    expect((await db.listReservations("u")).map((r) => r.id)).toEqual([...ids].sort());
    await m.close();
  });
});
