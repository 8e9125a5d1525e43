import { describe, expect, it } from "vitest";
import { InMemoryDbManager, createCreditManager } from "../src/index.js";

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
    await expect(m.credits.commitReservedCredits(released.id)).rejects.toMatchObject({
      code: "RESERVATION_NOT_ACTIVE",
    });
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
