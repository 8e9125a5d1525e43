// The schema of each released version, frozen in test/fixtures/schema/v<N>/ (docs/schema-upgrades.md,
// "The versions"): while SCHEMA_VERSION is N, today's DDL is that version's, and a SQLite store
// written by the release of each version opens with this one, keeps its balances and audits clean.
// A version not released yet (CONTRIBUTING.md, "Changing the schema") has no fixtures: it is the
// one after the last frozen version, the changelog's unreleased section names it, and the last
// frozen version's DDL upgraded by its step is today's.
import { billingStore } from "../src/modules/billing/store.js";
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import Database from "better-sqlite3";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager } from "../src/index.js";
import { upgradeStatements } from "../src/schema/migrations.js";
import { SCHEMA_VERSION, generateSql } from "../src/schema/sql.js";
import { ACCOUNTS, FIXTURES, schemaTexts, unreleasedVersion } from "./fixtures/schema/write.js";

const versions = readdirSync(FIXTURES)
  .filter((d) => /^v\d+$/.test(d))
  .map((d) => Number(d.slice(1)))
  .sort((a, b) => a - b);
const tmp = mkdtempSync(join(tmpdir(), "cm-schema-fixtures-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A SQLite schema, comparable: each table's columns and its definition's items, each index's definition. */
function sqliteSchema(sql: string): Record<string, unknown> {
  const db = new Database(":memory:");
  try {
    db.exec(sql);
    const out: Record<string, unknown> = {};
    const rows = db
      .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
      .all() as { type: string; name: string; sql: string | null }[];
    const flat = (t: string) => t.replace(/\s+/g, " ").replace(/\( /g, "(").replace(/ \)/g, ")").trim();
    for (const { type, name, sql: text } of rows) {
      if (type !== "table") {
        out[`${type} ${name}`] = flat((text ?? "").replace(/ IF NOT EXISTS/, ""));
        continue;
      }
      // The definition's items (columns with their checks, constraints), split at the top level:
      // ADD COLUMN puts a column after the constraints, a fresh table before them.
      const body = (text ?? "").slice((text ?? "").indexOf("(") + 1, (text ?? "").lastIndexOf(")"));
      const items: string[] = [];
      let depth = 0;
      let item = "";
      for (const c of body) {
        if (c === "," && depth === 0) {
          items.push(flat(item));
          item = "";
          continue;
        }
        if (c === "(") depth++;
        if (c === ")") depth--;
        item += c;
      }
      items.push(flat(item));
      // By name: a column an upgrade adds comes last, after those a fresh table puts after it.
      const columns = (db.prepare(`PRAGMA table_xinfo(${JSON.stringify(name)})`).all() as { name: string }[])
        .map(({ cid: _, ...c }: { cid?: number; name: string }) => c)
        .sort((a, b) => a.name.localeCompare(b.name));
      out[`table ${name}`] = { columns, items: items.sort() };
    }
    return out;
  } finally {
    db.close();
  }
}

describe("the schema of each released version (test/fixtures/schema)", () => {
  const last = versions[versions.length - 1] ?? 0;

  it("a version not released yet is the next one, named by the changelog's unreleased section", () => {
    if (versions.includes(SCHEMA_VERSION)) return;
    expect(SCHEMA_VERSION, `the last frozen version is ${last}`).toBe(last + 1);
    expect(
      unreleasedVersion(),
      `no fixtures of version ${SCHEMA_VERSION}, and CHANGELOG.md's [Unreleased] section does not name it ` +
        `("schema version ${SCHEMA_VERSION}"): once released, write them (npx tsx test/fixtures/schema/write.ts)`,
    ).toBe(SCHEMA_VERSION);
  });

  it("the last frozen version's SQLite schema, upgraded by the steps after it, is today's", () => {
    const frozen = readFileSync(join(FIXTURES, `v${last}`, "sqlite.sql"), "utf8");
    const upgrade = upgradeStatements({ dialect: "sqlite", fromVersion: last }).join("\n");
    const today = generateSql({ dialect: "sqlite" });
    // (The version row aside: the upgraded store's is written by init().)
    const rowless = (t: string) => t.replace(/^INSERT INTO "schema_version".*$/m, "");
    expect(sqliteSchema(rowless(`${frozen}\n${upgrade}\n${today}`))).toEqual(sqliteSchema(rowless(today)));
  });

  it("this version's tables, indexes and collections are the ones its release froze", () => {
    // Not released yet: changed in place until it is (the test above holds it to the last frozen one's upgrade).
    if (!versions.includes(SCHEMA_VERSION)) return;
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
      // With a keyed chain (docs/concepts.md, "A keyed chain"): the old entries keep their unkeyed hashes.
      const m = await createCreditManager({ db, journalKeys: { current: "k1", keys: { k1: "k".repeat(32) } } });
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
        expect(await billingStore(db).listPromoClaims("carol")).toHaveLength(1);
        expect((await m.credits.deductCredits("alice", 10, { feature: "chat" })).keyId).toBe("k1");
        expect((await m.credits.getUserCreditsInfo("alice")).balance).toBe(expected.accounts.alice!.balance - 10);
        expect((await m.credits.audit("alice")).ok).toBe(true);
      } finally {
        await m.close();
      }
    });
  }
});
