// A module's own grant source and notification type are stored by the SQL stores: their columns take
// any lower-case identifier (docs/modules.md, "Writing a module"), and refuse any other value.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { type CreditModule, createCreditManager, notificationsPart } from "../src/core/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";

const PG_URL = process.env.CREDIT_PG_URL;

/** A module whose grants carry `source: "referral"` and which may emit `referral_rewarded`. */
const referrals: CreditModule = {
  id: "referrals",
  grantSources: ["referral"],
  notificationTypes: ["referral_rewarded"],
};

/** Adds credits with the module's source and emits its notification type, then reads both back. */
async function roundTrip(db: DbManager): Promise<void> {
  const manager = await createCreditManager({
    db,
    modules: [referrals],
    parts: { notifications: notificationsPart() },
  });
  try {
    await manager.credits.addCredits("u", 10, { source: "referral", sourceRef: "friend-1" });
    await manager.credits.addCredits("u", 5, { source: "manual" });
    await manager.notifications.emit("u", { type: "referral_rewarded", payload: { rewarded: 1 } });
    expect((await manager.db.listGrants("u")).map((g) => g.source).sort()).toEqual(["manual", "referral"]);
    const history = await manager.credits.getCreditHistory("u", { limit: 10 });
    expect(history.items.map((e) => e.source).sort()).toEqual(["manual", "referral"]);
    expect((await manager.db.listNotifications("u", { limit: 10 })).map((n) => n.type)).toContain("referral_rewarded");
    expect(await manager.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 15 });
  } finally {
    await manager.close();
  }
}

describe("a module's own grant source and notification type, stored", () => {
  it("SQLite: stored and read back; a value not of the shape is refused by the table", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-sources-"));
    try {
      const filename = join(dir, "credits.db");
      await roundTrip(new SqliteDbManager({ filename }));
      const raw = new Database(filename);
      try {
        expect(() => raw.prepare("UPDATE grants SET source = 'Referral'").run()).toThrow(/CHECK/);
        expect(() => raw.prepare("UPDATE grants SET source = 'referral-2'").run()).toThrow(/CHECK/);
        expect(() => raw.prepare(`UPDATE grants SET source = '${"a".repeat(65)}'`).run()).toThrow(/CHECK/);
        expect(() => raw.prepare("UPDATE notifications SET type = '9_lives'").run()).toThrow(/CHECK/);
        expect(raw.prepare(`UPDATE grants SET source = 'referral_2' WHERE source = 'referral'`).run().changes).toBe(1);
      } finally {
        raw.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // Skipped without CREDIT_PG_URL (.ci/run sets it).
  it.skipIf(PG_URL === undefined)("PostgreSQL: stored and read back; a value not of the shape is refused", async () => {
    const schema = `cm_sources_${process.pid}_${Date.now()}`;
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      await roundTrip(new PostgresDbManager({ connectionString: PG_URL as string, schema }));
      await expect(client.query(`UPDATE "${schema}".grants SET source = 'Referral'`)).rejects.toThrow(/check/);
      await expect(client.query(`UPDATE "${schema}".notifications SET type = 'a-b'`)).rejects.toThrow(/check/);
    } finally {
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    }
  });
});
