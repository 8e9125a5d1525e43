/**
 * Adding a worker to a Citus cluster and rebalancing while spends run (docs/scaling-out.md,
 * "Adding a worker"). The test starts a cluster of its own — a coordinator and one worker, then a
 * second worker — as PostgreSQL 15 servers with the citus extension in a temporary directory on
 * free loopback ports (as ../shared/citus/up.sh does), and stops and removes them at the end: the
 * rebalancer moves every distributed table's shards, and the shared cluster's belong to others.
 * @see issue 61, item 7
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, rmSync, appendFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { LockTimeoutError, StorageError } from "../src/core/errors.js";
import { CreditService } from "../src/credit-service.js";

const PG_BIN = "/usr/lib/postgresql/15/bin";
/** Root (to run the servers as user postgres), PostgreSQL 15 and the citus extension installed (by ../shared/citus/up.sh). */
const canRun =
  process.env.CREDIT_CITUS_URL !== undefined &&
  process.getuid?.() === 0 &&
  existsSync(`${PG_BIN}/pg_ctl`) &&
  existsSync("/usr/lib/postgresql/15/lib/citus.so");
/** A free TCP port on loopback. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

function asPostgres(command: string): void {
  execFileSync("su", ["postgres", "-s", "/bin/sh", "-c", command], { stdio: "ignore" });
}

/** One server of the test's cluster: initdb, the settings up.sh gives its nodes, started, citus created. */
async function startNode(home: string, port: number): Promise<void> {
  const dir = join(home, `n${port}`);
  asPostgres(`${PG_BIN}/initdb -D ${dir} -U postgres --auth=trust -E UTF8 --locale=C.UTF-8`);
  appendFileSync(
    join(dir, "postgresql.conf"),
    [
      "listen_addresses = '127.0.0.1'",
      `port = ${port}`,
      `unix_socket_directories = '${home}'`,
      "shared_preload_libraries = 'citus'",
      "max_connections = 100",
      "max_prepared_transactions = 100",
      "wal_level = logical",
      "fsync = off",
      "",
    ].join("\n"),
  );
  asPostgres(`${PG_BIN}/pg_ctl -D ${dir} -l ${dir}.log -w -t 120 start`);
  await sql(port, "CREATE EXTENSION citus");
}

async function sql<R extends pg.QueryResultRow = Record<string, unknown>>(
  port: number,
  text: string,
  params: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres` });
  await client.connect();
  try {
    return (await client.query<R>(text, params)).rows;
  } finally {
    await client.end();
  }
}

// reason: starts and stops PostgreSQL servers of its own with citus: needs root and ../shared/citus/up.sh's installation (CREDIT_CITUS_URL set by .ci/run)
describe.skipIf(!canRun)("adding a worker and rebalancing while spends run (a cluster of the test's own)", () => {
  let home = "";
  const ports: number[] = [];
  let coordinator = 0;
  let first = 0;
  let second = 0;
  let db: PostgresDbManager | undefined;

  beforeAll(async () => {
    home = mkdtempSync(join(tmpdir(), "cm-citus-"));
    chownSync(home, Number(execFileSync("id", ["-u", "postgres"]).toString()), 0);
    coordinator = await freePort();
    first = await freePort();
    second = await freePort();
    for (const port of [coordinator, first]) {
      await startNode(home, port);
      ports.push(port);
    }
    await sql(coordinator, "SELECT citus_set_coordinator_host('127.0.0.1', $1)", [coordinator]);
    await sql(coordinator, "SELECT citus_add_node('127.0.0.1', $1)", [first]);
    // Four shards per table (Citus's default is 32): the rebalance moves two colocated groups.
    await sql(coordinator, "ALTER DATABASE postgres SET citus.shard_count = 4");
  }, 300_000);

  afterAll(async () => {
    await db?.close();
    for (const port of ports.reverse()) {
      try {
        asPostgres(`${PG_BIN}/pg_ctl -D ${join(home, `n${port}`)} -m fast -w stop`);
      } catch {
        // Not running (it failed to start): nothing to stop.
      }
    }
    if (home !== "") rmSync(home, { recursive: true, force: true });
  }, 120_000);

  /** The worker port of each user's shard. */
  async function placements(users: readonly string[]): Promise<Map<string, number>> {
    const rows = await sql<{ user_id: string; port: number }>(
      coordinator,
      `SELECT u AS user_id, s.nodeport AS port FROM unnest($1::text[]) AS u ` +
        `JOIN citus_shards s ON s.shardid = get_shard_id_for_distribution_column('billing.accounts', u)`,
      [users],
    );
    return new Map(rows.map((r) => [r.user_id, Number(r.port)]));
  }

  it("citus_add_node and citus_rebalance_start during spends: shards spread over both workers, every spend in the journal once, balances match, audit clean", async () => {
    db = new PostgresDbManager({
      connectionString: `postgres://postgres@127.0.0.1:${coordinator}/postgres`,
      schema: "billing",
      poolConfig: { max: 12 },
    });
    await db.init();
    expect(db.sql.distributed).toBe(true);
    const credits = new CreditService({ db });
    const users = Array.from({ length: 16 }, (_, i) => `grow-${i}`);
    for (const u of users) await credits.addCredits(u, 100_000);
    expect(new Set((await placements(users)).values())).toEqual(new Set([first]));

    let running = true;
    let done = 0;
    let retried = 0;
    const failures: unknown[] = [];
    const spender = async (u: string) => {
      for (let i = 0; running; i++) {
        const key = `grow-${u}-${i}`;
        for (let attempt = 0; ; attempt++) {
          try {
            await credits.deductCredits(u, 1, { idempotencyKey: key });
            done++;
            break;
          } catch (error) {
            // A spend refused during a move's switch-over (a store error, or the account's lock held past
            // lockTimeoutMs while the shard is blocked) is retried under its key, as a client would.
            if (!(error instanceof StorageError || error instanceof LockTimeoutError) || attempt > 60) {
              failures.push(error);
              return;
            }
            retried++;
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      }
    };
    const load = Promise.all(users.map(spender));
    await new Promise((r) => setTimeout(r, 500));
    // The new worker: a server with citus, added to the cluster, then the rebalance, all while spends run.
    await startNode(home, second);
    ports.push(second);
    await sql(coordinator, "SELECT citus_add_node('127.0.0.1', $1)", [second]);
    const atRebalance = done;
    const t0 = Date.now();
    await sql(coordinator, "SELECT citus_rebalance_start(shard_transfer_mode => 'force_logical')");
    await sql(coordinator, "SELECT citus_rebalance_wait()");
    const rebalanceMs = Date.now() - t0;
    const during = done - atRebalance;
    await new Promise((r) => setTimeout(r, 500));
    running = false;
    await load;

    expect(failures).toEqual([]);
    expect(during).toBeGreaterThan(0);
    const where = await placements(users);
    expect(new Set(where.values())).toEqual(new Set([first, second]));
    const jobs = await sql<{ state: string }>(coordinator, "SELECT state FROM pg_dist_background_job");
    expect(jobs.map((j) => j.state)).toEqual(["finished"]);

    const applied = await sql<{ user_id: string; n: number }>(
      coordinator,
      `SELECT user_id, count(*)::int AS n FROM billing.journal_entries WHERE type = 'deduct' GROUP BY 1`,
    );
    expect(applied.reduce((s, r) => s + r.n, 0)).toBe(done);
    for (const r of applied) {
      expect((await credits.getUserCreditsInfo(r.user_id)).balance, r.user_id).toBe(100_000 - r.n);
      expect((await credits.audit(r.user_id)).ok, r.user_id).toBe(true);
    }
    const doubled = await sql(
      coordinator,
      `SELECT idempotency_key FROM billing.journal_entries WHERE idempotency_key IS NOT NULL GROUP BY 1 HAVING count(*) > 1`,
    );
    expect(doubled).toEqual([]);
    console.log(
      `[citus-rebalance.test] ${done} spends, ${during} during the rebalance (${rebalanceMs} ms), ${retried} retried under their key`,
    );
  }, 600_000);
});
