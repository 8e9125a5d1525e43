import { describe, expect, it } from "vitest";
import { hashEntry } from "../src/core/domain/hash.js";
import { replayJournal } from "../src/core/domain/replay.js";
import type { Account, Grant, GrantPortion, JournalEntry, Reservation } from "../src/core/models/index.js";

/**
 * A partial capture is one `commit_reserved` entry (docs/concepts.md, "The journal"); journals
 * written before it — a `commit_reserved` of the captured part, then a `release_reserved` of the
 * rest — must still replay and audit clean. These journals are written by hand, the way each
 * release wrote them, so the replay is checked against both shapes independently of `AccountWork`.
 */

const T = new Date(Date.now() - 60_000);

type Step = Pick<JournalEntry, "type" | "amount" | "balanceAfter" | "reservedAfter" | "debtAfter"> & {
  grants: GrantPortion[];
  reservationId?: string;
};

/** Chains `steps` into a hashed journal of user "u". */
function journal(steps: Step[]): JournalEntry[] {
  const out: JournalEntry[] = [];
  let prevHash: string | null = null;
  steps.forEach((s, i) => {
    const e: Omit<JournalEntry, "hash"> = {
      id: `e-${i + 1}`,
      userId: "u",
      seq: i + 1,
      type: s.type,
      amount: s.amount,
      balanceAfter: s.balanceAfter,
      reservedAfter: s.reservedAfter,
      debtAfter: s.debtAfter,
      grants: s.grants,
      reservationId: s.reservationId ?? null,
      idempotencyKey: null,
      fingerprint: null,
      correlationId: null,
      description: null,
      metadata: null,
      spender: null,
      feature: null,
      costBasis: null,
      createdAt: T,
      prevHash,
    };
    const hash = hashEntry(e);
    out.push({ ...e, hash });
    prevHash = hash;
  });
  return out;
}

function stored(entries: JournalEntry[], grants: Record<string, number>, holds: Reservation[] = []) {
  const last = entries[entries.length - 1] as JournalEntry;
  const account: Account = {
    userId: "u",
    balance: last.balanceAfter,
    reserved: last.reservedAfter,
    debt: last.debtAfter,
    seq: last.seq,
    lastHash: last.hash,
    nextExpiryAt: null,
    alert: null,
    createdAt: T,
    updatedAt: T,
  } as Account;
  const gs = Object.entries(grants).map(
    ([id, remaining]) =>
      ({
        id,
        userId: "u",
        amount: 100,
        remaining,
        expiresAt: null,
        priority: 0,
        source: "other",
        sourceRef: null,
        description: null,
        metadata: null,
        createdAt: T,
        expiredAmount: 0,
        closedAt: null,
        closedReason: null,
      }) satisfies Grant,
  );
  return { account, grants: gs, reservations: holds };
}

// Add 100 (g1), hold 100 (r1), 10 of usage delivered into debt, capture 30 of the hold:
// the 70 left pay the 10 of debt and 60 go back to g1.
const head: Step[] = [
  {
    type: "add",
    amount: 100,
    balanceAfter: 100,
    reservedAfter: 0,
    debtAfter: 0,
    grants: [{ grantId: "g1", amount: 100 }],
  },
  {
    type: "reserve",
    amount: 100,
    balanceAfter: 100,
    reservedAfter: 100,
    debtAfter: 0,
    grants: [{ grantId: "g1", amount: 100 }],
    reservationId: "r1",
  },
  { type: "deduct", amount: 10, balanceAfter: 90, reservedAfter: 100, debtAfter: 10, grants: [] },
];

/** The one-entry capture of 30 on `head`: 10 of the rest paid the debt, `returned` went back to g1. */
const capture = (returned: number, reservedAfter = 0): Step => ({
  type: "commit_reserved",
  amount: 30,
  balanceAfter: 60,
  reservedAfter,
  debtAfter: 0,
  grants: [
    { grantId: "g1", amount: 30 },
    { grantId: "g1", amount: 10, kind: "debt_paid" },
    { grantId: "g1", amount: returned, kind: "returned" },
  ],
  reservationId: "r1",
});

describe("a partial capture in the journal", () => {
  it("an old journal (commit_reserved then release_reserved of the rest) audits clean", () => {
    const entries = journal([
      ...head,
      {
        type: "commit_reserved",
        amount: 30,
        balanceAfter: 60,
        reservedAfter: 70,
        debtAfter: 10,
        grants: [{ grantId: "g1", amount: 30 }],
        reservationId: "r1",
      },
      {
        type: "release_reserved",
        amount: 70,
        balanceAfter: 60,
        reservedAfter: 0,
        debtAfter: 0,
        grants: [{ grantId: "g1", amount: 60 }],
        reservationId: "r1",
      },
    ]);
    const report = replayJournal("u", entries, stored(entries, { g1: 60 }));
    expect(report.problems).toEqual([]);
    expect(report).toMatchObject({ ok: true, balance: 60, reserved: 0, debt: 0, grants: { g1: 60 } });
  });

  it("the one-entry shape audits clean", () => {
    const entries = journal([...head, capture(60)]);
    const report = replayJournal("u", entries, stored(entries, { g1: 60 }));
    expect(report.problems).toEqual([]);
    expect(report).toMatchObject({ ok: true, balance: 60, reserved: 0, debt: 0, activeReservations: {} });
  });

  it("a kind is part of the hash: dropping it is seen as an altered entry", () => {
    const entries = journal([...head, capture(60)]);
    const last = entries[3] as JournalEntry;
    const tampered = { ...last, grants: last.grants.map((g) => ({ grantId: g.grantId, amount: g.amount })) };
    const report = replayJournal("u", [...entries.slice(0, 3), tampered], stored(entries, { g1: 60 }));
    expect(report.ok).toBe(false);
    expect(report.problems.join("\n")).toMatch(/entry 4 was altered/);
  });

  it("a one-entry capture that leaves part of the hold held, or returns more than it had, is a problem", () => {
    const short = journal([...head, capture(50, 10)]);
    const a = replayJournal("u", short, stored(short, { g1: 50 }));
    expect(a.problems).toContain("entry 4 returns part of the hold but leaves some of it held");
    const over = journal([...head, capture(70)]);
    const b = replayJournal("u", over, stored(over, { g1: 70 }));
    expect(b.problems).toContain("entry 4 takes more of grant g1 than the hold had");
  });
});
