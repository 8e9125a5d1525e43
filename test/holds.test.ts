import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { HoldIndex } from "../src/db/memory/hold-index.js";
import { SettledHolds } from "../src/db/memory/holds.js";
import { writeUuid } from "../src/db/memory/rows.js";
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
    spender: null,
    feature: null,
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
      {
        allocations: [
          { grantId: "g2", amount: 3 },
          { grantId: "g1", amount: 4 },
        ],
        committedAmount: 0,
      },
      { status: "active", settledAt: null, committedAmount: null }, // stored as is, whatever its status
      { amount: Number.MAX_SAFE_INTEGER, committedAmount: Number.MAX_SAFE_INTEGER, reason: "" },
    ];
    const stored: Reservation[] = [];
    for (let i = 0; i < 40; i++) {
      const h = hold(i, odd[i % odd.length]);
      if (stored.some((x) => x.id === h.id)) continue;
      s.set(h); // a new row at the end: rows in the order stored
      stored.push(h);
      expect(s.size).toBe(stored.length);
    }
    expect(s.size).toBe(stored.length);
    stored.forEach((h, row) => expect(s.at(row, "u")).toEqual(h));
    expect(s.values("u")).toEqual(stored);
    // A copy each time: changing one changes nothing stored.
    const copy = s.at(0, "u");
    copy.allocations.push({ grantId: "x", amount: 1 });
    expect(s.at(0, "u")).toEqual(stored[0]);
  });

  it("stores the same row from the id's bytes given as from the id", () => {
    const byId = new SettledHolds();
    const byKey = new SettledHolds();
    const holds = [hold(1), hold(2, { id: "odd-id" }), hold(3, { metadata: { a: 1 } })];
    for (const h of holds) {
      byId.set(h);
      const words = new Uint32Array(4);
      const key = writeUuid(new Uint8Array(words.buffer), 0, h.id) ? words : null;
      byKey.set(h, byKey.size, key);
    }
    // Stored again by bytes over a row that had an odd id and metadata: neither is left behind.
    const again = hold(4, { id: holds[0]!.id, metadata: null });
    const words = new Uint32Array(4);
    writeUuid(new Uint8Array(words.buffer), 0, again.id);
    for (const row of [1, 2]) {
      byKey.set(again, row, words);
      byId.set(again, row);
    }
    expect(byKey.values("u")).toEqual(byId.values("u"));
    expect(byKey.at(1, "u")).toEqual(again);
    expect(byKey.at(2, "u")).toEqual(again);
  });

  it("a hold stored again replaces its row (allocations, metadata and odd id included)", () => {
    const s = new SettledHolds();
    const first = hold(1, { id: "odd-id", metadata: { a: 1 } });
    const row = s.size;
    s.set(first);
    s.set(hold(2));
    const again = {
      ...first,
      status: "released" as const,
      allocations: [{ grantId: "g9", amount: 2 }],
      metadata: null,
    };
    s.set(again, row);
    expect(s.size).toBe(2);
    expect(s.at(row, "u")).toEqual(again);
    expect(s.at(1, "u")).toEqual(hold(2));
  });
});

/** A canonical UUID from four 32-bit words (any bits: the index must not care whether they look random). */
const uuidOf = (w: readonly number[]) => {
  const h = w.map((x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

/** The id's bytes as `writeUuid` writes them, as four uint32; null for an id that is not a canonical UUID. */
const keyOf = (id: string): number[] | null => {
  const words = new Uint32Array(4);
  return writeUuid(new Uint8Array(words.buffer), 0, id) ? [...words] : null;
};

describe("HoldIndex", () => {
  it("answers owner and settled row as a Map would, for random, sequential and odd ids, across growth", () => {
    const word = fc.integer({ min: 0, max: 0xffffffff });
    const id = fc.oneof(
      fc.tuple(word, word, word, word).map(uuidOf),
      fc.integer({ min: 0, max: 5000 }).map((n) => uuidOf([0, 0, 0, n])), // sequential: differ in a few bits
      fc.constantFrom("not-a-uuid", "ABCDEF01-aaaa-4bbb-8ccc-dddddddddddd", "", "00000000-0000-0000-0000-00000000000g"),
    );
    const op = fc.oneof(
      fc.record({ kind: fc.constant("add" as const), id, owner: fc.nat(50) }),
      fc.record({ kind: fc.constant("settle" as const), id, owner: fc.nat(50), next: fc.nat(10_000) }),
      // A look-up by id just before a settlement (a commit by id): the index remembers the last id.
      fc.record({ kind: fc.constant("owner" as const), id }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 3000 }), fc.array(id, { maxLength: 50 }), (ops, probes) => {
        const index = new HoldIndex();
        const model = new Map<string, { owner: number; row: number }>();
        for (const o of ops) {
          if (o.kind === "add") {
            index.add(o.id, o.owner);
            model.set(o.id, { owner: o.owner, row: -1 });
          } else if (o.kind === "owner") {
            expect(index.owner(o.id)).toBe(model.get(o.id)?.owner ?? -1);
          } else {
            // A hold settled before keeps its row; otherwise it takes the next one.
            const had = model.get(o.id);
            const row = had !== undefined && had.owner === o.owner && had.row >= 0 ? had.row : o.next;
            expect(index.settle(o.id, o.owner, o.next)).toBe(row);
            model.set(o.id, { owner: o.owner, row });
            // The settled id's bytes, for its row (none for an id kept as a string).
            expect(index.key === null ? null : [...index.key]).toEqual(keyOf(o.id));
          }
        }
        expect(index.size).toBe(model.size);
        for (const x of [...model.keys(), ...probes]) {
          const m = model.get(x);
          expect(index.owner(x)).toBe(m?.owner ?? -1);
          expect(index.settledRow(x, m?.owner ?? 0)).toBe(m?.row ?? -1);
          // Another account asking gets nothing (a transaction reads only its own account's holds).
          if (m !== undefined) expect(index.settledRow(x, m.owner + 1)).toBe(-1);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("keeps every one of 100,000 holds through its doublings", () => {
    const index = new HoldIndex();
    const ids = Array.from({ length: 100_000 }, (_, i) => uuidOf([i * 2654435761, i, 0x4000, i >>> 3]));
    ids.forEach((x, i) => index.add(x, i % 997));
    ids.forEach((x, i) => {
      if (i % 3 === 0) index.settle(x, i % 997, i);
    });
    expect(index.size).toBe(ids.length);
    const wrong = ids.filter(
      (x, i) => index.owner(x) !== i % 997 || index.settledRow(x, i % 997) !== (i % 3 === 0 ? i : -1),
    );
    expect(wrong).toEqual([]);
    expect(index.owner(uuidOf([1, 2, 3, 4]))).toBe(-1);
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
