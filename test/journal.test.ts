import { describe, expect, it } from "vitest";
import { CompactJournal } from "../src/db/memory/journal.js";
import type { JournalEntry } from "../src/models/index.js";

const HASH = "0f".repeat(32);

function entry(i: number, over: Partial<JournalEntry> = {}): JournalEntry {
  return {
    id: `0000000${i}-aaaa-4bbb-8ccc-${String(i).padStart(12, "d")}`,
    userId: "u",
    seq: i + 1,
    type: "deduct",
    amount: i + 1,
    balanceAfter: 100 - i,
    reservedAfter: 0,
    debtAfter: 0,
    grants: [{ grantId: "g1", amount: i + 1 }],
    reservationId: null,
    idempotencyKey: null,
    fingerprint: null,
    correlationId: null,
    description: null,
    metadata: null,
    spender: null,
    feature: null,
    costBasis: null,
    createdAt: new Date(1_700_000_000_000 + i),
    prevHash: null,
    hash: HASH,
    ...over,
  };
}

describe("CompactJournal", () => {
  it("gives back every entry as it was appended, compact or not", () => {
    const j = new CompactJournal();
    const odd: Array<Partial<JournalEntry>> = [
      {},
      { id: "not-a-uuid" },
      { id: "0000000X-aaaa-4bbb-8ccc-dddddddddddd" }, // right shape, not hex
      { id: "ABCDEF01-aaaa-4bbb-8ccc-dddddddddddd" }, // upper case would not read back the same
      { id: "00000000-aaaa-4bbb-8ccc-ddddddddddd" }, // one short
      { hash: "F".repeat(64) },
      { hash: `${"a".repeat(63)}z` },
      { hash: "a".repeat(62) },
      { hash: "sha256:whatever" },
      { idempotencyKey: "k", metadata: { a: 1 }, grants: [] },
      { type: "reserve", reservationId: "0f0e0d0c-aaaa-4bbb-8ccc-0123456789ab" },
      { type: "commit_reserved", reservationId: "res-1", description: "odd id" },
      { type: "release_reserved", reservationId: "0F0E0D0C-AAAA-4BBB-8CCC-0123456789AB" },
      { description: "unused part of committed reservation" },
      { description: "unused part of committed reservation", metadata: { usages: [{ amount: 3 }] } },
      { description: "", metadata: {} },
      { description: "émoji 🙂 and a lone \ud800", correlationId: "c-1" },
      { type: "add", costBasis: { perCredit: "1999/3000", currency: "USD" } },
    ];
    const appended: JournalEntry[] = [];
    for (let i = 0; i < 40; i++) {
      const e = entry(i, odd[i % odd.length]);
      appended.push(e);
      j.append(e);
    }
    for (let i = 0; i < appended.length; i++) {
      const e = appended[i] as JournalEntry;
      expect(j.get(i, "u")).toEqual({ ...e, prevHash: i === 0 ? null : (appended[i - 1] as JournalEntry).hash });
      expect(j.hash(i)).toBe(e.hash);
    }
  });

  it("keeps metadata of every size and script through the growth of its text pool, beside entries without", () => {
    const j = new CompactJournal();
    const types: JournalEntry["type"][] = [
      "add",
      "deduct",
      "expire",
      "void",
      "reserve",
      "commit_reserved",
      "release_reserved",
    ];
    const appended: JournalEntry[] = [];
    for (let i = 0; i < 3000; i++) {
      const metadata =
        i % 3 === 0
          ? null
          : {
              usages: [{ amount: i, model: i % 2 ? "gpt-4o-mini" : "模型-🙂\u2028" }],
              note: "x".repeat(i % 700),
              deep: { n: -i, ok: i % 5 === 0 },
            };
      const e = entry(i % 9, {
        seq: i + 1,
        type: types[i % types.length],
        reservationId: i % 4 === 0 ? "0f0e0d0c-aaaa-4bbb-8ccc-0123456789ab" : null,
        metadata,
      });
      appended.push(e);
      j.append(e);
    }
    const wrong = appended.filter((e, i) => {
      const got = j.get(i, "u");
      return (
        j.type(i) !== e.type ||
        JSON.stringify(got.metadata) !== JSON.stringify(e.metadata) ||
        got.reservationId !== e.reservationId
      );
    });
    expect(wrong).toEqual([]);
    expect(j.get(2999, "u").metadata).toEqual(appended[2999]!.metadata);
    // A new object each time: changing one changes nothing stored.
    const first = j.get(1, "u").metadata as { note: string };
    first.note = "changed";
    expect(j.get(1, "u").metadata).toEqual(appended[1]!.metadata);
  });

  it("numbers descriptions in the rows while it can, then keeps them with the rare fields", () => {
    const j = new CompactJournal(3); // rows number three descriptions at most
    const descriptions = ["a", "b", "a", "c", "d", "a", "e", null, "d", "c"];
    const appended = descriptions.map((description, i) =>
      entry(i, { description, metadata: i % 2 === 0 ? { i } : null }),
    );
    for (const e of appended) j.append(e);
    appended.forEach((e, i) => {
      expect(j.get(i, "u")).toEqual({ ...e, prevHash: i === 0 ? null : HASH });
    });
  });
});
