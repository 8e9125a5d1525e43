// The schema of each released version, frozen in test/fixtures/schema/v<N>/ (docs/schema-upgrades.md,
// "The versions"): while SCHEMA_VERSION is N, today's DDL is that version's, and a SQLite store
// written by the release of each version opens with this one, keeps its balances and audits clean.
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager } from "../src/index.js";
import { SCHEMA_VERSION } from "../src/schema/sql.js";
import { ACCOUNTS, FIXTURES, schemaTexts } from "./fixtures/schema/write.js";

const versions = readdirSync(FIXTURES)
  .filter((d) => /^v\d+$/.test(d))
  .map((d) => Number(d.slice(1)))
  .sort((a, b) => a - b);
const tmp = mkdtempSync(join(tmpdir(), "cm-schema-fixtures-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("the schema of each released version (test/fixtures/schema)", () => {
  it("this version's tables, indexes and collections are the ones its release froze", () => {
    expect(versions, `no fixtures of version ${SCHEMA_VERSION}: npx tsx test/fixtures/schema/write.ts`).toContain(
      SCHEMA_VERSION,
    );
    const dir = join(FIXTURES, `v${SCHEMA_VERSION}`);
    for (const [name, text] of Object.entries(schemaTexts())) {
      expect(
        text,
        `${name} of version ${SCHEMA_VERSION} changed: a released version's layout is frozen; raise ` +
          "SCHEMA_VERSION with an upgrade step (docs/schema-upgrades.md) and write its fixtures " +
          "(npx tsx test/fixtures/schema/write.ts)",
      ).toBe(readFileSync(join(dir, name), "utf8"));
    }
  });

  for (const version of versions) {
    it(`a store written at version ${version} opens (upgraded), keeps every balance and audits clean`, async () => {
      const dir = join(FIXTURES, `v${version}`);
      const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as {
        accounts: Record<string, { balance: number; reserved: number; debt: number; entries: number }>;
      };
      const filename = join(tmp, `v${version}.sqlite`);
      copyFileSync(join(dir, "store.sqlite"), filename);
      const db = new SqliteDbManager({ filename });
      const m = await createCreditManager({ db });
      try {
        expect((await db.ping()).schemaVersion).toBe(SCHEMA_VERSION);
        expect(Object.keys(expected.accounts).sort()).toEqual([...ACCOUNTS].sort());
        for (const [user, want] of Object.entries(expected.accounts)) {
          const info = await m.credits.getUserCreditsInfo(user);
          expect({ balance: info.balance, reserved: info.reserved, debt: info.debt }, user).toEqual({
            balance: want.balance,
            reserved: want.reserved,
            debt: want.debt,
          });
          expect((await m.credits.getCreditHistory(user, { limit: 100 })).items, user).toHaveLength(want.entries);
          expect((await m.credits.audit(user)).problems, user).toEqual([]);
        }
        // The modules' rows are there too, and the store takes new work on the old journal.
        expect((await m.subscriptions.getPlan("pro")).creditsPerPeriod).toBe(500);
        expect(await db.listPromoClaims("carol")).toHaveLength(1);
        await m.credits.deductCredits("alice", 10, { feature: "chat" });
        expect((await m.credits.getUserCreditsInfo("alice")).balance).toBe(expected.accounts.alice!.balance - 10);
        expect((await m.credits.audit("alice")).ok).toBe(true);
      } finally {
        await m.close();
      }
    });
  }
});
