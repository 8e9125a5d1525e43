// A fleet-wide usage report on MongoDB comes back in one batch (docs/usage.md, "How each store
// answers"): a cursor left open for getMore could be lost by a gateway between the aggregate and its
// getMore ("Failed to locate the cursor"), failing the report. See issue 60.
import { randomUUID } from "node:crypto";
import { MongoClient, type CommandStartedEvent } from "mongodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { createCreditManager, type CreditManager } from "../src/index.js";

const uri = process.env.CREDIT_MONGO_URI;
const ACCOUNTS = 150;

// reason: needs a MongoDB server (a replica set), whose URL .ci/run sets in CREDIT_MONGO_URI
describe.skipIf(!uri)("usage reports on MongoDB with more groups than a first batch", () => {
  let client: MongoClient;
  let dbName: string;
  let m: CreditManager;
  const commands: CommandStartedEvent[] = [];
  const from = new Date(Date.now() - 60_000);

  beforeAll(async () => {
    client = await new MongoClient(uri as string, { monitorCommands: true }).connect();
    client.on("commandStarted", (event) => commands.push(event));
    dbName = `credit_test_usage_batch_${process.pid}_${randomUUID().slice(0, 8)}`;
    m = await createCreditManager({ db: new MongoDbManager({ client, dbName }) });
    for (let i = 0; i < ACCOUNTS; i++) {
      const account = `acct-${String(i).padStart(3, "0")}`;
      await m.credits.addCredits(account, 1000);
      await m.credits.deductCredits(account, i + 1);
    }
  }, 120_000);
  afterAll(async () => {
    await m?.close();
    await client?.db(dbName).dropDatabase();
    await client?.close();
  });

  it("returns every group of a fleet report in one round trip (no getMore)", async () => {
    commands.length = 0;
    const report = await m.credits.getUsage({
      from,
      to: new Date(Date.now() + 60_000),
      interval: null,
      groupBy: ["account"],
      kinds: ["spend"],
    });
    expect(report.truncated).toBe(false);
    expect(report.rows).toHaveLength(ACCOUNTS);
    const byAccount = new Map(report.rows.map((r) => [r.account, r.credits]));
    for (let i = 0; i < ACCOUNTS; i++) expect(byAccount.get(`acct-${String(i).padStart(3, "0")}`)).toBe(i + 1);
    const names = commands.map((c) => c.commandName);
    expect(names).toContain("aggregate");
    expect(names).not.toContain("getMore");
  });

  it("closes a period and reads the usage moved past it, on more accounts than a first batch, with no getMore", async () => {
    const through = new Date();
    commands.length = 0;
    await m.credits.closePeriod(through);
    // Late usage of every account: its time is before the close, so it is moved past it.
    for (let i = 0; i < ACCOUNTS; i++)
      await m.credits.deductCredits(`acct-${String(i).padStart(3, "0")}`, 1, {
        occurredAt: new Date(through.getTime() - 1_000),
      });
    const report = await m.credits.getUsage({
      from: through,
      to: new Date(Date.now() + 60_000),
      interval: null,
      groupBy: ["account"],
      kinds: ["spend"],
    });
    const caughtUp = report.rows.filter((r) => r.catchUpThrough?.getTime() === through.getTime());
    expect(caughtUp.map((r) => [r.account, r.credits])).toEqual(
      Array.from({ length: ACCOUNTS }, (_, i) => [`acct-${String(i).padStart(3, "0")}`, 1]),
    );
    const names = commands.map((c) => c.commandName);
    expect(names).toContain("find");
    expect(names).toContain("insert");
    expect(names).not.toContain("getMore");
  });
});
