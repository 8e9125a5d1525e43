// What was granted (docs/customer-state.md): a scope's mark names the allowance its drawn-out
// amount counts in, and a grant drawn out records it, so credits given back to a grant drawn out in
// an ended allowance take nothing from the current one's drawn-out total. The contract suite's
// customer-state cases check the figures on every store; these check the marks and the grants.
import { describe, expect, it } from "vitest";
import { drawnOutOf, scopeKey, trackAllowance } from "../src/core/domain/allowance.js";
import type { Account, AlertMark, Grant } from "../src/core/models/index.js";

const now = new Date();

const grant = (id: string, over: Partial<Grant> = {}): Grant => ({
  id,
  userId: "u",
  amount: 100,
  remaining: 100,
  expiresAt: null,
  priority: 0,
  source: "manual",
  sourceRef: null,
  description: null,
  metadata: null,
  createdAt: now,
  expiredAmount: 0,
  closedAt: null,
  closedReason: null,
  drawnOutIn: null,
  ...over,
});

const account = (seq: number, balance: number, marks?: Record<string, AlertMark>, scoped = false): Account => ({
  userId: "u",
  balance,
  reserved: 0,
  debt: 0,
  seq,
  lastHash: null,
  nextExpiryAt: null,
  alert: marks === undefined ? null : { level: null, threshold: 0, lastAllocation: 0, override: null, marks },
  scoped,
  createdAt: now,
  updatedAt: now,
});

const mark = (spent: number, allowance?: number): AlertMark => ({
  state: "ok",
  crossings: 0,
  spent,
  ...(allowance === undefined ? {} : { allowance }),
});

/**
 * Runs `trackAllowance` for a unit of work on `loaded` that leaves the account at `seq` with
 * `balance` after the change `touched`; answers the account and the `drawnOutIn` of each grant it
 * wrote again.
 */
function track(
  loaded: Account,
  seq: number,
  balance: number,
  touched: { before: Grant | undefined; after: Grant }[],
  open: Grant[] = [],
) {
  const work: Account = { ...loaded, seq, balance };
  const recorded = new Map<string, number | null>();
  const record = (g: Grant) => recorded.set(g.id, g.drawnOutIn ?? null);
  trackAllowance(work, loaded, touched, () => open, record);
  // A second `changes()` of one work moves nothing more.
  const again: Account = { ...work };
  trackAllowance(again, loaded, touched, () => open, record);
  expect(again.alert).toBe(work.alert);
  return { account: work, recorded };
}

const pool = scopeKey(null);
const spent = (g: Grant): Grant => ({ ...g, remaining: 0 });

describe("what was granted: which allowance counted a grant", () => {
  it("the first grant drawn out names the allowance by its unit's seq; later ones record it; an ended allowance names none", () => {
    const a = grant("a");
    let r = track(account(4, 150), 5, 50, [{ before: a, after: spent(a) }]);
    expect(r.recorded).toEqual(new Map([["a", 5]]));
    expect(r.account.alert?.marks).toEqual({ [pool]: mark(100, 5) });
    const b = grant("b", { amount: 30, remaining: 30 });
    r = track(r.account, 6, 20, [{ before: b, after: spent(b) }]);
    expect(r.recorded).toEqual(new Map([["b", 5]]));
    expect(r.account.alert?.marks).toEqual({ [pool]: mark(130, 5) });
    // The pool spent out: the allowance ends, and no mark is left.
    const c = grant("c", { amount: 20, remaining: 20 });
    r = track(r.account, 7, 0, [{ before: c, after: spent(c) }]);
    expect(r.recorded).toEqual(new Map([["c", 5]]));
    expect(r.account.alert?.marks).toEqual({});
    expect(drawnOutOf(r.account)).toEqual([]);
    // The next grant drawn out begins another count, named by a later seq.
    const d = grant("d");
    r = track(account(9, 150), 10, 50, [{ before: d, after: spent(d) }]);
    expect(r.recorded).toEqual(new Map([["d", 10]]));
  });

  it("credits given back to a grant drawn out in an ended allowance take nothing; to one the current allowance counted, its amount", () => {
    const marks = { [pool]: mark(200, 12) };
    const old = grant("old", { remaining: 0, drawnOutIn: 5 });
    const current = grant("cur", { amount: 200, remaining: 0, drawnOutIn: 12 });
    let r = track(account(20, 50, marks), 21, 150, [{ before: old, after: { ...old, remaining: 100 } }]);
    expect(r.recorded).toEqual(new Map([["old", null]]));
    expect(r.account.alert?.marks).toEqual({ [pool]: mark(200, 12) });
    r = track(account(20, 50, marks), 21, 250, [{ before: current, after: { ...current, remaining: 200 } }]);
    expect(r.recorded).toEqual(new Map([["cur", null]]));
    expect(r.account.alert?.marks).toEqual({});
    // Given back and drawn out again in one unit: counted again, in the current allowance.
    r = track(account(20, 50, marks), 21, 50, [
      { before: old, after: { ...old, remaining: 100 } },
      { before: grant("x", { amount: 40, remaining: 40 }), after: spent(grant("x", { amount: 40 })) },
    ]);
    expect(r.recorded).toEqual(
      new Map([
        ["old", null],
        ["x", 12],
      ]),
    );
    expect(r.account.alert?.marks).toEqual({ [pool]: mark(240, 12) });
  });

  it("a store version 1 wrote: a grant drawn out there records nothing and was counted by no allowance", () => {
    const v1 = grant("v1", { remaining: 0 });
    let r = track(account(30, 50), 31, 150, [{ before: v1, after: { ...v1, remaining: 100 } }]);
    expect(r.recorded).toEqual(new Map());
    expect(r.account.alert).toBeNull();
    // Beside a grant drawn out since the upgrade: what that one was given stays.
    const marks = { [pool]: mark(100, 32) };
    r = track(account(33, 50, marks), 34, 150, [{ before: v1, after: { ...v1, remaining: 100 } }]);
    expect(r.account.alert?.marks).toEqual({ [pool]: mark(100, 32) });
  });

  it("each scope and unit counts apart: a scope spent out ends alone", () => {
    const scope = { features: ["images"] };
    const images = scopeKey(scope);
    const gpu = scopeKey(null, "gpu");
    const marks = { [images]: mark(30, 3), [gpu]: mark(5, 4) };
    // A scoped account: the images scope spent out (no open grant of it left); the gpu pool has one.
    const s = grant("s", { amount: 20, remaining: 20, scope });
    const open = grant("g", { remaining: 7, unit: "gpu" });
    const r = track(account(8, 40, marks, true), 9, 40, [{ before: s, after: spent(s) }], [open]);
    expect(r.recorded).toEqual(new Map([["s", 3]]));
    expect(r.account.alert?.marks).toEqual({ [gpu]: mark(5, 4) });
  });

  it("the fast path: a change that draws nothing out and gives nothing back writes neither the account's marks nor a grant", () => {
    const loaded = account(40, 200, { [pool]: mark(100, 2) });
    const a = grant("a");
    const work: Account = { ...loaded, seq: 41, balance: 190 };
    let read = false;
    trackAllowance(
      work,
      loaded,
      [{ before: a, after: { ...a, remaining: 90 } }],
      () => {
        read = true;
        return [];
      },
      () => {
        throw new Error("no grant is written again");
      },
    );
    expect(work.alert).toBe(loaded.alert);
    expect(read).toBe(false);
  });
});
