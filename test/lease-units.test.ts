import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager, ValidationError, type CreditManager } from "../src/index.js";
import { testStores, type TestStore } from "./fixtures/stores.js";

// Leases in a unit (docs/metering.md, "Leases"; docs/units.md): blocks held, charges served and
// windows settled in the lease's unit, or in the unit a charge's feature is paid in.

const dir = mkdtempSync(join(tmpdir(), "cm-lease-units-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const stores: TestStore[] = [
  ...testStores("lease_units"),
  {
    name: "sqlite",
    open: async () => {
      const filename = join(dir, `s-${Math.random().toString(36).slice(2)}.db`);
      return {
        db: new SqliteDbManager({ filename }),
        another: () => new SqliteDbManager({ filename }),
        drop: async () => undefined,
      };
    },
  },
];

const figures = async (m: CreditManager, u: string, unit?: string) => {
  const i = await m.credits.getUserCreditsInfo(u, unit === undefined ? {} : { unit });
  return { balance: i.balance, reserved: i.reserved };
};

for (const store of stores) {
  describe(`credit leases in a unit on ${store.name}`, () => {
    it("a lease naming a unit holds its block, serves and settles in that unit; the default unit does not move", async () => {
      const opened = await store.open();
      const m = await createCreditManager({ db: opened.db });
      try {
        await m.credits.addCredits("u", 10_000);
        await m.credits.addCredits("u", 5_000, { unit: "images" });
        const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000, unit: "images" });
        expect((await lease.charge("u", 5)).via).toBe("lease");
        expect(lease.charge("u", 7)).not.toBeInstanceOf(Promise);
        // The metering middlewares spend in the default unit here: the images block is not theirs.
        expect(lease.covers("u", 1)).toBe(false);
        expect(lease.setAside("u", 1)).toBeNull();
        expect(await figures(m, "u", "images")).toEqual({ balance: 5_000, reserved: 1000 });
        await lease.flush();
        expect(await figures(m, "u", "images")).toEqual({ balance: 4_988, reserved: 1000 });
        await lease.close();
        expect(await figures(m, "u", "images")).toEqual({ balance: 4_988, reserved: 0 });
        expect(await figures(m, "u")).toEqual({ balance: 10_000, reserved: 0 });
        const settled = (await m.credits.getCreditHistory("u", { limit: 100 })).items.filter(
          (e) => e.metadata?.leaseWindow !== undefined,
        );
        // The window's commit, then the last block's release at close: both in images.
        expect(settled.map((e) => [e.type, e.unit])).toEqual([
          ["release_reserved", "images"],
          ["commit_reserved", "images"],
        ]);
        expect(settled.find((e) => e.type === "commit_reserved")?.amount).toBe(12);
        // Too few images for a block: the exact path, in images too.
        await m.credits.addCredits("v", 50, { unit: "images" });
        const small = m.credits.leases({ size: 100, unit: "images" });
        const exact = await small.charge("v", 4);
        expect(exact.via).toBe("exact");
        expect(exact.entry).toMatchObject({ type: "deduct", unit: "images" });
        await small.close();
        expect((await m.credits.audit("u")).ok).toBe(true);
      } finally {
        await m.close();
        await opened.drop();
      }
    });

    it("a charge naming a feature paid in a unit is served from a block of that unit; a lease in another unit refuses it", async () => {
      const opened = await store.open();
      const m = await createCreditManager({
        db: opened.db,
        features: { render: { minAvailable: 0, unit: "images" } },
      });
      try {
        await m.credits.addCredits("u", 10_000);
        await m.credits.addCredits("u", 5_000, { unit: "images" });
        const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
        expect((await lease.charge("u", 3, { feature: "render" })).via).toBe("lease");
        expect((await lease.charge("u", 2)).via).toBe("lease");
        await lease.close();
        expect(await figures(m, "u", "images")).toEqual({ balance: 4_997, reserved: 0 });
        expect(await figures(m, "u")).toEqual({ balance: 9_998, reserved: 0 });
        const seconds = m.credits.leases({ unit: "seconds" });
        await expect(seconds.charge("u", 1, { feature: "render" })).rejects.toBeInstanceOf(ValidationError);
        await seconds.close();
        expect((await m.credits.audit("u")).ok).toBe(true);
      } finally {
        await m.close();
        await opened.drop();
      }
    });
  });
}
