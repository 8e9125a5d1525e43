import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { OpenGrants } from "../src/db/memory/open-grants.js";
import { compareGrants } from "../src/domain/order.js";
import type { Grant } from "../src/models/index.js";

const T0 = Date.UTC(2030, 0, 1);

function grant(n: number, priority: number, expiresIn: number | null, createdAt: number, remaining = 1): Grant {
  return {
    id: `g-${String(n).padStart(4, "0")}`,
    userId: "u",
    amount: 10,
    remaining,
    expiresAt: expiresIn === null ? null : new Date(T0 + expiresIn * 1000),
    priority,
    source: "manual",
    sourceRef: null,
    description: null,
    metadata: null,
    createdAt: new Date(T0 + createdAt * 1000),
    expiredAmount: 0,
    closedAt: null,
    closedReason: null,
  };
}

describe("in-memory open grants", () => {
  it("stay in burn-down order through inserts, updates, removals and re-opens (against a sorted model)", () => {
    const op = fc.record({
      kind: fc.constantFrom("set", "update", "delete"),
      n: fc.integer({ min: 0, max: 30 }),
      priority: fc.integer({ min: 0, max: 3 }),
      expiresIn: fc.option(fc.integer({ min: 1, max: 5 }), { nil: null }),
      createdAt: fc.integer({ min: 0, max: 5 }),
      remaining: fc.integer({ min: 1, max: 99 }),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
        const open = new OpenGrants();
        const model = new Map<string, Grant>();
        // A grant's order keys are fixed once created: later operations on the same n reuse them.
        const made = new Map<number, Grant>();
        for (const o of ops) {
          const first = made.get(o.n) ?? grant(o.n, o.priority, o.expiresIn, o.createdAt);
          made.set(o.n, first);
          if (o.kind === "delete") {
            open.delete(first);
            model.delete(first.id);
          } else {
            const g = { ...first, remaining: o.kind === "update" ? o.remaining : first.remaining };
            open.set(g);
            model.set(g.id, g);
          }
          const want = [...model.values()].sort(compareGrants);
          expect(open.values()).toEqual(want);
          expect(open.size).toBe(want.length);
        }
      }),
      { numRuns: 300 },
    );
  });

  it("hands out a copy from values() and replaces an updated grant where it stands", () => {
    const open = new OpenGrants();
    const a = grant(1, 0, null, 0);
    const b = grant(2, 1, null, 0);
    open.set(b);
    open.set(a);
    const copy = open.values();
    copy.pop();
    expect(open.values().map((g) => g.id)).toEqual([a.id, b.id]);
    open.set({ ...b, remaining: 7 });
    expect(open.values().map((g) => g.remaining)).toEqual([1, 7]);
    expect(open.live()).toHaveLength(2);
  });
});
