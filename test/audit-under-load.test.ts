// audit() of live accounts (docs/operations.md, "Auditing"): under concurrent writes on several
// accounts, every audit reads one consistent state of the account — the journal, the account row,
// its grants, its holds and (PostgreSQL) the usage rollup — so none reports a problem. On every store.
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { CoreInMemoryDbManager } from "../src/core/db/memory/index.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager, type AuditReport } from "../src/index.js";
import type { DbManager } from "../src/store.js";

const PG_URL = process.env.CREDIT_PG_URL;
const MONGO_URI = process.env.CREDIT_MONGO_URI;
const dir = mkdtempSync(join(tmpdir(), "cm-audit-load-"));
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups) await c();
  rmSync(dir, { recursive: true, force: true });
});

const stores: Record<string, (() => DbManager) | null> = {
  memory: () => new CoreInMemoryDbManager(),
  sqlite: () => new SqliteDbManager({ filename: join(dir, `${randomUUID()}.db`) }),
  postgres:
    PG_URL === undefined
      ? null
      : () => {
          const schema = `cm_audit_load_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
          cleanups.push(async () => {
            const client = new pg.Client({ connectionString: PG_URL });
            await client.connect();
            await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
            await client.end();
          });
          return new PostgresDbManager({ connectionString: PG_URL, schema });
        },
  mongodb:
    MONGO_URI === undefined
      ? null
      : () => {
          const name = `credit_audit_load_${randomUUID().slice(0, 8)}`;
          cleanups.push(async () => {
            const client = new MongoClient(MONGO_URI);
            await client.db(name).dropDatabase();
            await client.close();
          });
          return MongoDbManager.fromUri(MONGO_URI, name);
        },
};

/** Accounts written and audited, writers per account, and writes each writer makes (at least, at most). */
const ACCOUNTS = 3;
const WRITERS = 2;
const WRITES_MIN = 5;
const WRITES_MAX = 200;

for (const [name, make] of Object.entries(stores)) {
  // reason: PostgreSQL and MongoDB need their servers (CREDIT_PG_URL, CREDIT_MONGO_URI, set by .ci/run)
  describe.skipIf(make === null)(`audit() under concurrent writes: ${name}`, () => {
    it("no audit interleaved with the writes reports a problem", async () => {
      const manager = await createCreditManager({ db: (make as () => DbManager)(), overdraftLimit: "unlimited" });
      try {
        const { credits } = manager;
        const users = Array.from({ length: ACCOUNTS }, (_, i) => `load-${i}-${randomUUID().slice(0, 6)}`);
        for (const u of users) await credits.addCredits(u, 1_000);
        /** Audits each auditor makes; the writers write until they are done. */
        const AUDITS = 6;
        let auditing = true;
        const written = new Map<string, number>(users.map((u) => [u, 1]));
        const writer = async (u: string, w: number) => {
          for (let i = 0; i < WRITES_MAX && (auditing || i < WRITES_MIN); i++) {
            const step = (i + w) % 4;
            if (step === 0) await credits.addCredits(u, 5);
            else if (step === 1) await credits.deductCredits(u, 2);
            else if (step === 2) {
              const hold = await credits.reserveCredits(u, 4);
              await credits.commitReservedCredits(hold.id, { amount: 3 });
            } else await credits.releaseReservedCredits((await credits.reserveCredits(u, 2)).id);
            written.set(u, (written.get(u) as number) + (step < 2 ? 1 : 2));
          }
        };
        const reports: AuditReport[] = [];
        const auditor = async (k: number) => {
          for (let i = 0; i < AUDITS; i++) reports.push(await credits.audit(users[(i + k) % ACCOUNTS] as string));
        };
        const writers = Promise.all(users.flatMap((u) => Array.from({ length: WRITERS }, (_, w) => writer(u, w))));
        const total = () => [...written.values()].reduce((a, b) => a + b, 0);
        const atStart = total();
        await Promise.all([auditor(0), auditor(1)]);
        auditing = false;
        const whileAuditing = total() - atStart;
        await writers;
        const problems = reports.flatMap((r) => r.problems.map((p) => `${r.userId}: ${p}`));
        expect(problems).toEqual([]);
        // The audits saw the accounts while they were being written.
        expect(whileAuditing).toBeGreaterThan(0);
        for (const u of users) expect((await credits.audit(u)).entries).toBe(written.get(u));
      } finally {
        await manager.close();
      }
    }, 60_000);
  });
}
