// What was granted (docs/customer-state.md): each scope's allowance has a number, and a grant
// drawn out records the one it was drawn out in, so credits given back to a grant drawn out in an
// ended allowance take nothing from the current one's drawn-out total. The contract suite's
// customer-state cases check the figures on every store; these check the marks and the numbers.
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
  ...over,
});

const account = (balance: number, marks?: Record<string, AlertMark>, over: Partial<Account> = {}): Account => ({
  userId: "u",
  balance,
  reserved: 0,
  debt: 0,
  seq: 1,
  lastHash: null,
  nextExpiryAt: null,
  alert: marks === undefined ? null : { level: null, threshold: 0, lastAllocation: 0, override: null, marks },
  createdAt: now,
  updatedAt: now,
  ...over,
});

/** Runs `trackAllowance` on a copy of `loaded` after the change `touched`; answers the account and the grants it wrote again. */
function track(
  loaded: Account,
  balance: number,
  touched: { before: Grant | undefined; after: Grant }[],
  open: Grant[] = [],
  over: Partial<Account> = {},
) {
  const work: Account = { ...loaded, balance, ...over };
  const recorded = new Map<string, number | null>();
  trackAllowance(
    work,
    loaded,
    touched,
    () => open,
    (g, n) => recorded.set(g.id, n),
  );
  return { account: work, recorded };
}

const pool = scopeKey(null);

describe("what was granted: the allowance's number", () => {
  it("a grant drawn out records the current allowance's number; an allowance ending with grants drawn out gives the next one another", () => {
    const a = grant("a");
    const out = { ...a, remaining: 0 };
    // Drawn out with another grant open (balance 50): counted, number 0.
    let r = track(account(150), 50, [{ before: a, after: out }]);
    expect(r.recorded).toEqual(new Map([["a", 0]]));
    expect(r.account.alert?.marks).toEqual({ [pool]: { state: "ok", crossings: 0, spent: 100 } });
    // Then the pool spent out: the allowance ends, the next is number 1, nothing counted in it.
    const b = grant("b", { amount: 50, remaining: 50 });
    r = track(r.account, 0, [{ before: b, after: { ...b, remaining: 0 } }]);
    expect(r.recorded).toEqual(new Map([["b", 0]]));
    expect(r.account.alert?.marks).toEqual({ [pool]: { state: "ok", crossings: 0, spent: 0, allowance: 1 } });
    expect(drawnOutOf(r.account)).toEqual([]);
    // The next grant drawn out records 1.
    const c = grant("c");
    r = track(account(100, r.account.alert?.marks), 0, [{ before: c, after: { ...c, remaining: 0 } }]);
    expect(r.recorded).toEqual(new Map([["c", 1]]));
  });

  it("credits given back to a grant drawn out in an ended allowance take nothing; to one drawn out in the current one, its amount", () => {
    const marks = { [pool]: { state: "ok" as const, crossings: 0, spent: 200, allowance: 3 } };
    const old = grant("old", { remaining: 0, drawnOutIn: 2 });
    const current = grant("cur", { amount: 200, remaining: 0, drawnOutIn: 3 });
    let r = track(account(50, marks), 150, [{ before: old, after: { ...old, remaining: 100 } }]);
    expect(r.recorded).toEqual(new Map([["old", null]]));
    expect(r.account.alert?.marks?.[pool]).toEqual({ state: "ok", crossings: 0, spent: 200, allowance: 3 });
    r = track(account(50, marks), 250, [{ before: current, after: { ...current, remaining: 200 } }]);
    expect(r.recorded).toEqual(new Map([["cur", null]]));
    expect(r.account.alert?.marks?.[pool]).toEqual({ state: "ok", crossings: 0, spent: 0, allowance: 3 });
  });

  it("a store version 1 wrote: a mark without a number is allowance 0; a grant drawn out without one was counted by none", () => {
    // Version 1 kept no allowance: a grant it drew out has no number and takes nothing when reopened.
    const v1 = grant("v1", { remaining: 0 });
    let r = track(account(50), 150, [{ before: v1, after: { ...v1, remaining: 100 } }]);
    expect(r.recorded).toEqual(new Map());
    expect(r.account.alert).toBeNull();
    // Beside one drawn out since the upgrade, in allowance 0 (a mark without a number).
    const marks = { [pool]: { state: "ok" as const, crossings: 0, spent: 100 } };
    r = track(account(50, marks), 150, [{ before: v1, after: { ...v1, remaining: 100 } }]);
    expect(r.account.alert?.marks?.[pool]).toEqual({ state: "ok", crossings: 0, spent: 100 });
    const since = grant("since", { remaining: 0, drawnOutIn: 0 });
    r = track(account(50, marks), 150, [{ before: since, after: { ...since, remaining: 100, drawnOutIn: 0 } }]);
    expect(r.recorded).toEqual(new Map([["since", null]]));
    // Nothing counted, allowance 0: no mark is left.
    expect(r.account.alert?.marks?.[pool]).toBeUndefined();
  });

  it("each scope and unit has its own number; an allowance that ends with nothing drawn out keeps its number", () => {
    const scope = { features: ["images"] };
    const images = scopeKey(scope);
    const gpu = scopeKey(null, "gpu");
    const marks = {
      [pool]: { state: "ok" as const, crossings: 0, spent: 0, allowance: 4 },
      [images]: { state: "ok" as const, crossings: 0, spent: 30, allowance: 1 },
      [gpu]: { state: "ok" as const, crossings: 0, spent: 5 },
    };
    // On a scoped account: the images scope spent out (no open grant of it left), the pool too (with
    // nothing drawn out in it: its number stays); the gpu pool has an open grant.
    const s = grant("s", { amount: 20, remaining: 20, scope });
    const units = grant("g", { remaining: 7, unit: "gpu" });
    const r = track(account(40, marks, { scoped: true }), 40, [{ before: s, after: { ...s, remaining: 0 } }], [units]);
    expect(r.recorded).toEqual(new Map([["s", 1]]));
    expect(r.account.alert?.marks).toEqual({
      [pool]: { state: "ok", crossings: 0, spent: 0, allowance: 4 },
      [images]: { state: "ok", crossings: 0, spent: 0, allowance: 2 },
      [gpu]: { state: "ok", crossings: 0, spent: 5 },
    });
  });

  it("the fast path: a change that draws nothing out and gives nothing back writes neither the account's marks nor a grant", () => {
    const marks = { [pool]: { state: "ok" as const, crossings: 0, spent: 100, allowance: 2 } };
    const a = grant("a");
    const loaded = account(200, marks);
    let opened = false;
    const work: Account = { ...loaded, balance: 190 };
    trackAllowance(
      work,
      loaded,
      [{ before: a, after: { ...a, remaining: 90 } }],
      () => {
        opened = true;
        return [];
      },
      () => {
        throw new Error("no grant is written again");
      },
    );
    expect(work.alert).toBe(loaded.alert);
    expect(opened).toBe(false);
  });
});
