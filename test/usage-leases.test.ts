// Usage under credit leases (docs/usage.md, "Leases"): a window's entry carries its usage by
// feature, spender and model, so a report by model over a run with leases equals the same run on
// the exact path — without the ledger file. Beyond MAX_LEASE_PARTS combinations a window keeps an
// "other" part that says so, and the totals still add up.
import { describe, expect, it } from "vitest";
import { MAX_LEASE_PARTS } from "../src/modules/leases/rules.js";
import { createCreditManager, type CreditManager } from "../src/index.js";
import { type UsageRow } from "../src/models-public.js";
import { testStores } from "./fixtures/stores.js";

const pricing = {
  models: [
    { model: "small", input: { credits: 1, per: 10 }, output: { credits: 1, per: 2 } },
    { model: "large", input: { credits: 1 }, output: { credits: 3 }, cachedInput: { credits: 1, per: 4 } },
  ],
};

/** A deterministic run: metered LLM calls and plain charges naming a feature and a spender. */
function* run(): Generator<
  | { op: "meter"; model: string; input: number; output: number; cached: number }
  | { op: "charge"; amount: number; feature: string; spender: string }
> {
  let x = 7;
  const next = () => (x = (x * 48_271) % 2_147_483_647);
  for (let i = 0; i < 120; i++) {
    if (next() % 3 === 0)
      yield {
        op: "charge",
        amount: 1 + (next() % 9),
        feature: ["chat", "img"][next() % 2]!,
        spender: ["k1", "k2"][next() % 2]!,
      };
    else
      yield {
        op: "meter",
        model: ["small", "large"][next() % 2]!,
        input: next() % 50,
        output: next() % 20,
        cached: next() % 5,
      };
  }
}

const byModel = async (m: CreditManager, account: string) => {
  const now = Date.now();
  const { rows } = await m.credits.getUsage({
    account,
    from: new Date(now - 3_600_000),
    to: new Date(now + 60_000),
    interval: null,
    groupBy: ["model", "feature", "spender"],
  });
  return rows.map((r: UsageRow) => ({ ...r, start: 0, end: 0 }));
};

for (const store of testStores("usagelease")) {
  describe(`usage under leases on ${store.name}`, () => {
    it("usage by model, feature and spender over a run with leases equals the exact path's", async () => {
      const a = await store.open();
      const b = await store.open();
      const exact = await createCreditManager({ db: a.db, pricing });
      const leased = await createCreditManager({ db: b.db, pricing });
      try {
        await exact.credits.addCredits("u", 1_000_000);
        await leased.credits.addCredits("u", 1_000_000);
        const lease = leased.credits.leases({ size: 5000, settleEveryMs: 30_000 });
        await lease.charge("u", 1, { feature: "chat", spender: "k1" }); // opens the block
        await exact.credits.deductCredits("u", 1, { feature: "chat", spender: "k1" });
        let servedByLease = 0;
        for (const o of run()) {
          if (o.op === "charge") {
            const r = await lease.charge("u", o.amount, { feature: o.feature, spender: o.spender });
            if (r.via === "lease") servedByLease++;
            await exact.credits.deductCredits("u", o.amount, { feature: o.feature, spender: o.spender });
          } else {
            const usage = { model: o.model, inputTokens: o.input, outputTokens: o.output, cachedTokens: o.cached };
            const s1 =
              lease.openMeter("u", { estimate: 200 }) ?? (await leased.credits.openMeter("u", { estimate: 200 }));
            s1.recordUsage(usage);
            const out = await s1.commit();
            if (out.leased === true) servedByLease++;
            const s2 = await exact.credits.openMeter("u", { estimate: 200 });
            s2.recordUsage(usage);
            await s2.commit();
          }
        }
        await lease.close();
        expect(servedByLease).toBeGreaterThan(100);
        const settles = (await leased.credits.getCreditHistory("u", { limit: 1000 })).items.filter(
          (e) => e.metadata?.leaseWindow !== undefined && e.type === "commit_reserved",
        );
        expect(settles.length).toBeGreaterThan(0);
        expect(settles.some((e) => Array.isArray((e.metadata?.leaseWindow as { parts?: unknown }).parts))).toBe(true);
        const want = await byModel(exact, "u");
        expect(want.length).toBeGreaterThan(3);
        expect(await byModel(leased, "u")).toEqual(want);
      } finally {
        await exact.close();
        await leased.close();
        await a.drop();
        await b.drop();
      }
    }, 60_000);

    it(`keeps at most ${MAX_LEASE_PARTS} combinations a window, the rest in an "other" part`, async () => {
      const a = await store.open();
      const m = await createCreditManager({ db: a.db });
      try {
        await m.credits.addCredits("u", 100_000);
        const lease = m.credits.leases({ size: 5000, settleEveryMs: 30_000 });
        for (let i = 0; i < MAX_LEASE_PARTS + 8; i++) await lease.charge("u", 2, { feature: `f${i}` });
        await lease.charge("u", 3); // names nothing
        await lease.close();
        const [settle] = (await m.credits.getCreditHistory("u", { limit: 1000 })).items.filter(
          (e) => e.type === "commit_reserved" && e.metadata?.leaseWindow !== undefined && e.amount > 0,
        );
        const parts = (settle?.metadata?.leaseWindow as { parts: Record<string, unknown>[] }).parts;
        expect(parts.filter((p) => p.other === true)).toEqual([
          expect.objectContaining({ other: true, feature: null, credits: 16, requests: 8 }),
        ]);
        expect(parts.filter((p) => typeof p.feature === "string")).toHaveLength(MAX_LEASE_PARTS);
        const now = Date.now();
        const { rows } = await m.credits.getUsage({
          account: "u",
          from: new Date(now - 3_600_000),
          to: new Date(now + 60_000),
          interval: null,
        });
        expect(rows).toMatchObject([
          { kind: "spend", credits: 2 * (MAX_LEASE_PARTS + 8) + 3, requests: MAX_LEASE_PARTS + 9 },
        ]);
      } finally {
        await m.close();
        await a.drop();
      }
    });
  });
}
