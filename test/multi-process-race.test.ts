/**
 * Jobs race the API across processes (issue 39): two processes serve deductions, holds, commits,
 * releases and expiring grants on a few shared accounts while two others run
 * `releaseExpiredHolds()` and `expireDueGrants()`, each process with its own manager (and state
 * cache) over one store: SQLite always, PostgreSQL and MongoDB when CREDIT_PG_URL /
 * CREDIT_MONGO_URI are set. Afterwards no hold is active past its TTL, no due grant is left
 * unexpired, the balances are what the answers add up to, and `audit()` is clean.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { runProcess } from "./fixtures/processes.js";
import { openRaceStore, raceProblems, type Acked } from "./fixtures/race-store.js";

interface Run {
  role: "api" | "jobs";
  done: Acked[];
  errors: Record<string, number>;
  unexpected: string[];
  lastRound: string | null;
  jobs: { holdsReleased: number; grantsExpired: number };
}

const USERS = 4;
const dir = mkdtempSync(join(tmpdir(), "cm-race-"));
const backends: Array<{ name: string; store: () => string; drop: (store: string) => Promise<void> }> = [
  {
    name: "sqlite",
    store: () => join(dir, `${randomUUID()}.db`),
    drop: async (file) => {
      for (const suffix of ["", "-wal", "-shm"]) rmSync(`${file}${suffix}`, { force: true });
    },
  },
];
const pgUrl = process.env.CREDIT_PG_URL;
if (pgUrl)
  backends.push({
    name: "postgres",
    store: () => `cm_race_${randomUUID().replace(/-/g, "").slice(0, 10)}`,
    drop: async (schema) => {
      const client = new pg.Client({ connectionString: pgUrl });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    },
  });
const mongoUri = process.env.CREDIT_MONGO_URI;
if (mongoUri)
  backends.push({
    name: "mongodb",
    store: () => `credit_test_race_${process.pid}_${randomUUID().slice(0, 8)}`,
    drop: async (dbName) => {
      const client = await new MongoClient(mongoUri).connect();
      await client.db(dbName).dropDatabase();
      await client.close();
    },
  });

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.each(backends)("jobs race the API across processes: $name", ({ name, store: newStore, drop }) => {
  it("leaves no hold past its TTL, no due grant, the balances the answers add up to, and a clean audit", async () => {
    const store = newStore();
    const db = openRaceStore(name, store);
    await db.init();
    const stop = join(dir, `stop-${randomUUID()}`);
    try {
      const env = { RACE_BACKEND: name, RACE_STORE: store, RACE_OPS: "60", RACE_USERS: String(USERS), RACE_STOP: stop };
      const api = [0, 1].map((w) =>
        runProcess<Run>("test/fixtures/race.ts", { ...env, RACE_ROLE: "api", RACE_WORKER: String(w) }),
      );
      const jobs = [2, 3].map((w) =>
        runProcess<Run>("test/fixtures/race.ts", { ...env, RACE_ROLE: "jobs", RACE_WORKER: String(w) }),
      );
      const apiRuns = await Promise.all(api);
      // Every grant (2 s at most) and hold (2 s) made is due before the jobs' last round.
      await new Promise((resolve) => setTimeout(resolve, 2100));
      writeFileSync(stop, "");
      const jobRuns = await Promise.all(jobs);
      const runs = [...apiRuns, ...jobRuns];
      for (const r of runs) expect(r.unexpected).toEqual([]);
      const acked = apiRuns.flatMap((r) => r.done);
      const dueBy = new Date(Math.min(...jobRuns.map((r) => Date.parse(r.lastRound as string))));
      const users = Array.from({ length: USERS }, (_, u) => `r-${u}`);
      expect(await raceProblems(db, users, acked, dueBy)).toEqual([]);
      // Not vacuous: the callers were answered and refused, the jobs found work.
      for (const type of ["add", "deduct", "reserve"])
        expect(
          acked.some((e) => e.type === type),
          type,
        ).toBe(true);
      // (On a slow machine a hold may lapse before its caller commits it: either settle will do.)
      expect(acked.some((e) => e.type === "commit_reserved" || e.type === "release_reserved")).toBe(true);
      expect(apiRuns.some((r) => (r.errors.INSUFFICIENT_CREDITS ?? 0) > 0)).toBe(true);
      expect(jobRuns.reduce((n, r) => n + r.jobs.holdsReleased, 0)).toBeGreaterThan(0);
      expect(jobRuns.reduce((n, r) => n + r.jobs.grantsExpired, 0)).toBeGreaterThan(0);
    } finally {
      await db.close();
      await drop(store);
    }
  }, 120_000);
});
