import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { WorkingSet } from "../src/core/domain/working-set.js";
import { deep } from "./fixtures/depth.js";

interface Row {
  readonly id: string;
  readonly v: number;
}

describe("WorkingSet (a unit of work's grants and holds)", () => {
  it("answers like a map of the loaded rows overlaid with the written and added ones, short lists and long", () => {
    const step = fc.oneof(
      fc.record({ op: fc.constant("put" as const), n: fc.nat(), v: fc.integer() }),
      fc.record({ op: fc.constant("add" as const), v: fc.integer() }),
      fc.record({ op: fc.constant("create" as const), v: fc.integer() }),
      fc.record({ op: fc.constant("get" as const), n: fc.integer({ min: 0, max: 400 }) }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 150 }), fc.array(step, { maxLength: 60 }), (size, steps) => {
        const loaded: Row[] = Array.from({ length: size }, (_, i) => ({ id: `r${i}`, v: i }));
        const frozen = Object.freeze([...loaded]);
        const set = new WorkingSet<Row>(frozen);
        const model = new Map(loaded.map((r) => [r.id, r]));
        const order = loaded.map((r) => r.id);
        let added = 0;
        const touched = new Map<string, boolean>(); // id → created here, in the order first written
        for (const s of steps) {
          if (s.op === "put" && order.length > 0) {
            const id = order[s.n % order.length] as string;
            set.put({ id, v: s.v });
            model.set(id, { id, v: s.v });
            if (!touched.has(id)) touched.set(id, false);
          } else if (s.op === "add" || s.op === "create") {
            const row = { id: `new${added++}`, v: s.v };
            if (s.op === "add") set.add(row);
            else {
              set.create(row);
              touched.set(row.id, true);
            }
            model.set(row.id, row);
            order.push(row.id);
          } else if (s.op === "get") {
            const id = s.n % 2 === 0 ? `r${s.n / 2}` : `new${(s.n - 1) / 2}`;
            expect(set.get(id)).toEqual(model.get(id));
          }
        }
        expect(set.all()).toEqual(order.map((id) => model.get(id)));
        expect(set.added().map((r) => r.id)).toEqual(order.slice(size));
        for (const r of loaded) expect(set.current(r)).toEqual(model.get(r.id));
        // What the work saves: the rows it changed or created, as they stand, in first-write order.
        const saved: Array<[Row, boolean]> = [];
        set.forEachTouched((row, created) => saved.push([row, created]));
        expect(saved).toEqual([...touched].map(([id, created]) => [model.get(id), created]));
        expect(set.changed).toBe(touched.size > 0);
        expect(frozen).toEqual(loaded); // the store's list is only read
      }),
      { numRuns: deep(300) },
    );
  });
  it("keeps each changed row's original when asked, from the version the caller replaces: no lookup by id", () => {
    // A list whose index is never built: a lookup by id maps it, and that throws here.
    class Unindexed<R> extends Array<R> {
      override map<U>(): U[] {
        throw new Error("indexed");
      }
    }
    const loaded = Unindexed.from([
      { id: "a", v: 1 },
      { id: "b", v: 2 },
    ]) as Row[];
    const set = new WorkingSet<Row>(loaded, true);
    const a = loaded[0] as Row;
    set.put({ id: "a", v: 10 }, a);
    set.put({ id: "a", v: 20 }, set.current(a));
    expect(set.original("a")).toBe(a); // the version before this work's first change
    expect(set.original("b")).toBeUndefined(); // unchanged
    set.create({ id: "c", v: 3 });
    set.put({ id: "c", v: 4 }, { id: "c", v: 3 });
    expect(set.original("c")).toBeUndefined(); // created here
    expect(set.current(a)).toEqual({ id: "a", v: 20 });
  });
});
