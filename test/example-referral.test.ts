import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
// The package's public entries only (the built package, as a user's app imports it): the example
// module must need nothing else.
import { createCreditManager, InMemoryDbManager } from "credit-management";
import type { DbManager } from "credit-management/store";
import { createCreditHandler } from "credit-management/http";
import { SqliteDbManager } from "credit-management/sqlite";
import { PostgresDbManager } from "credit-management/postgres";
import { referrals, ReferralTakenError } from "../examples/referral-module/module.js";

const pgUrl = process.env.CREDIT_PG_URL || undefined;

const dirs: string[] = [];
const schemas: string[] = [];

const stores: Array<{ name: string; skip?: string; create: () => DbManager }> = [
  { name: "memory", create: () => new InMemoryDbManager() },
  {
    name: "sqlite",
    create: () => {
      const dir = mkdtempSync(join(tmpdir(), "cm-referral-"));
      dirs.push(dir);
      return new SqliteDbManager({ filename: join(dir, "credits.db") });
    },
  },
  {
    name: "postgres",
    ...(pgUrl === undefined ? { skip: "CREDIT_PG_URL is not set (.ci/run sets it)" } : {}),
    create: () => {
      const schema = `referral_${randomUUID().slice(0, 8)}`;
      schemas.push(schema);
      return new PostgresDbManager({ connectionString: pgUrl ?? "", schema });
    },
  },
];

afterAll(async () => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  if (pgUrl === undefined || schemas.length === 0) return;
  const { default: pg } = await import("pg");
  const client = new pg.Client({ connectionString: pgUrl });
  await client.connect();
  for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
  await client.end();
});

for (const store of stores) {
  describe.skipIf(store.skip !== undefined)(
    `the example referral module on ${store.name}${store.skip ? ` (skipped: ${store.skip})` : ""}`,
    () => {
      const setup = async () => {
        const ref = referrals({ bonus: 25 });
        const db = store.create();
        const m = await createCreditManager({ db, modules: [ref.module] });
        return { m, ref, db };
      };

      it("pays a referral once, saves its row with the grant, refuses the duplicate with REFERRAL_TAKEN, audits clean", async () => {
        const { m, ref } = await setup();
        try {
          const r = await ref.refer(m.credits, "alice", "bob");
          expect(r).toMatchObject({ referee: "bob", referrer: "alice" });
          const grants = await m.credits.getGrants("alice");
          expect(grants.map((g) => [g.id, g.source, g.sourceRef, g.amount])).toEqual([
            [r.grantId, "referral", "bob", 25],
          ]);
          const again = ref.refer(m.credits, "carol", "bob");
          await expect(again).rejects.toBeInstanceOf(ReferralTakenError);
          await expect(again).rejects.toMatchObject({ code: "REFERRAL_TAKEN", status: 409 });
          expect((await m.credits.getUserCreditsInfo("alice")).balance).toBe(25);
          expect((await m.credits.getUserCreditsInfo("carol")).balance).toBe(0);
          expect((await m.credits.audit("alice")).ok).toBe(true);
        } finally {
          await m.close();
        }
      });

      it("a unit whose referral row is refused saves no grant either", async () => {
        const { m, ref } = await setup();
        try {
          await ref.refer(m.credits, "alice", "bob");
          // Past the module's own check: the store refuses the row, and the unit of work with it.
          await expect(m.credits.addCredits("dave", 25, { source: "referral", sourceRef: "bob" })).rejects.toThrow();
          expect((await m.credits.getUserCreditsInfo("dave")).balance).toBe(0);
          expect(await m.credits.getGrants("dave")).toEqual([]);
          expect((await ref.get("bob"))?.referrer).toBe("alice");
          expect((await m.credits.audit("dave")).ok).toBe(true);
        } finally {
          await m.close();
        }
      });

      it("serves its route beside the package's: 201 once, 409 REFERRAL_TAKEN after", async () => {
        const { m, ref } = await setup();
        try {
          const h = createCreditHandler(m, {
            routes: ref.routes,
            authenticate: (req) => ({ userId: req.headers.get("authorization")?.slice(7) ?? "anon", admin: false }),
          });
          const post = (user: string, referee: string) =>
            h(
              new Request("http://localhost/credits/referrals", {
                method: "POST",
                headers: { authorization: `Bearer ${user}`, "content-type": "application/json" },
                body: JSON.stringify({ referee }),
              }),
            );
          const first = await post("erin", "frank");
          expect(first.status).toBe(201);
          expect(await first.json()).toMatchObject({ referee: "frank", referrer: "erin" });
          const second = await post("gina", "frank");
          expect(second.status).toBe(409);
          expect(await second.json()).toMatchObject({ error: { code: "REFERRAL_TAKEN" } });
          expect((await m.credits.getUserCreditsInfo("erin")).balance).toBe(25);
          expect((await m.credits.audit("erin")).ok).toBe(true);
        } finally {
          await m.close();
        }
      });
    },
  );
}
