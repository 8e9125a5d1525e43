/**
 * MongoDB rows of `npm run bench` (when CREDIT_MONGO_URI is set): `deductCredits` with 16
 * concurrent callers over 1,000 users, beside a baseline measured in the same run on the same
 * server — a raw guarded `findOneAndUpdate({ _id, balance: { $gte: n } }, { $inc: { balance: -n } })`
 * at the same concurrency. Targets: at least 0.75 of the baseline's ops/s, and 0.5 for
 * two managers on shared accounts. Where the server is this machine's MongoDB-compatible one, each
 * row also splits the server's CPU per operation between its wire gateway and DocumentDB.
 *
 * Also `deductCredits` with `batch: false` (one transaction per deduction, no group commit), with
 * `stateCacheSize: 0`, and from two managers with clients of their own (two processes: 8 callers
 * each) drawing on the same accounts, so each one's cached states keep going stale. Each deductCredits row gives the commands sent per deduction (the
 * driver's command monitoring: every command, `commitTransaction` included, is one round trip) and
 * the client's CPU per deduction (this process: driver and library).
 *
 * Also a floor: the same three writes per deduction sent by hand, grouped and committed the way
 * group commit does, so the gap between it and `deductCredits` is the library's and the gap between
 * it and the baseline the server's. Each row gives the BSON bytes its commands sent per operation.
 *
 * Runs in a fresh database that it drops afterwards; bounded to a few seconds (BENCH_MONGO_OPS sets
 * the deductions per round). Alone: `tsx bench/mongodb.ts`.
 */
import { randomUUID } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { BSON, MongoClient, type Document } from "mongodb";
import { core, mongodb } from "./pkg.js";
import { measure, printTable, type BenchRow } from "./lib.js";

const { CreditService } = core;
const { MongoDbManager } = await mongodb();

/**
 * CPU time (µs) so far of the server processes on this host, when the server is the
 * MongoDB-compatible one CI uses (CONTRIBUTING.md: a JavaScript wire gateway, `gateway.js`, in
 * front of DocumentDB, a PostgreSQL extension): the gateway, and the DocumentDB backends (the
 * children of the postmaster whose data directory is the DocumentDB one). Null where /proc or
 * those processes are missing (a real mongod, another host). Other clients of the same server
 * count too: the figures are meant for a run with the machine otherwise quiet.
 */
function serverCpu(): { gateway: number; documentdb: number } | null {
  if (process.platform !== "linux") return null;
  try {
    const procs: Array<{ pid: string; ppid: string; args: string; cpu: number }> = [];
    for (const pid of readdirSync("/proc")) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
        procs.push({ pid, ppid: fields[1] ?? "", args, cpu: (Number(fields[11]) + Number(fields[12])) * 10_000 });
      } catch {
        // gone meanwhile
      }
    }
    const gateway = procs.filter((p) => p.args.includes("gateway.js"));
    const master = procs.find((p) => p.args.includes("postgres") && p.args.includes("/ddb"));
    if (gateway.length === 0 || master === undefined) return null;
    const sum = (xs: typeof procs) => xs.reduce((a, p) => a + p.cpu, 0);
    return { gateway: sum(gateway), documentdb: sum(procs.filter((p) => p.ppid === master.pid)) + master.cpu };
  } catch {
    return null;
  }
}

const USERS = 1000;
const CALLERS = 16;
/** The MongoDB adapter's transaction options (src/db/mongodb/index.ts), for the floor row. */
const TRANSACTION = { readConcern: { level: "snapshot" }, writeConcern: { w: "majority" } } as const;
/** Short alternating rounds, best of each: the machine is shared, so one slow round says little. */
const ROUNDS = 5;

export async function run(): Promise<BenchRow[]> {
  const uri = process.env.CREDIT_MONGO_URI;
  if (!uri) return [];
  const ops = Number(process.env.BENCH_MONGO_OPS ?? 400);
  const dbName = `credit_bench_${process.pid}_${randomUUID().slice(0, 8)}`;
  const client = new MongoClient(uri, { monitorCommands: true });
  let commands = 0;
  /** BSON bytes of the commands sent (their documents, as the driver encodes them). */
  let bytes = 0;
  const seen = (e: { command: Document }) => {
    commands++;
    bytes += BSON.calculateObjectSize(e.command);
  };
  client.on("commandStarted", seen);
  // The second "process" of the shared-accounts row.
  const other = new MongoClient(uri, { monitorCommands: true });
  other.on("commandStarted", seen);
  await client.connect();
  await other.connect();
  try {
    const db = new MongoDbManager({ client, dbName });
    await db.init();
    const credits = new CreditService({ db });
    // The same store without the state cache: every unit of work reads its account first (what a
    // process sees for accounts other processes keep changing).
    const uncached = new CreditService({ db: new MongoDbManager({ client, dbName, stateCacheSize: 0 }) });
    // Without group commit: one transaction per deduction (state cache on).
    const single = new CreditService({ db: new MongoDbManager({ client, dbName, batch: false }) });
    const users = Array.from({ length: USERS }, (_, i) => `user-${i}`);
    const pick = (i: number) => users[(i * 7919) % USERS] as string;

    // Every user has an account, one grant and one journal entry; the baseline its own document.
    await measure(USERS, CALLERS, (i) => credits.addCredits(users[i] as string, 1e12));
    const raw = client.db(dbName).collection<Document>("bench_baseline");
    await raw.insertMany(users.map((u) => ({ _id: u as never, balance: 1e12 })));

    const baselineOp = (i: number) =>
      raw.findOneAndUpdate({ _id: pick(i) as never, balance: { $gte: 1 } }, { $inc: { balance: -1 } });
    const deductOp = (i: number) => credits.deductCredits(pick(i), 1);
    const singleOp = (i: number) => single.deductCredits(pick(i), 1);
    const uncachedOp = (i: number) => uncached.deductCredits(pick(i), 1);

    // The floor: the documents a batch of deductions writes, sent by hand with no library around
    // them — per deduction a guarded account `$inc` (on the baseline's documents), a grant update
    // (on a copy of the grants, with their indexes) and a copy of a real journal entry (in the
    // journal collection, under a user of its own, so its indexes are the real ones) — grouped like
    // ours: what is waiting (up to the callers' 16) goes in one transaction of three commands and a
    // commit. What the server alone costs for our writes, so the gap to it is the library's.
    const grantsCopy = client.db(dbName).collection<Document>("bench_floor_grants");
    const realGrants = await client.db(dbName).collection<Document>("credit_grants").find({}).toArray();
    await grantsCopy.insertMany(realGrants);
    // With the grants' own indexes: every update of a document rewrites its index entries here.
    for (const ix of await client.db(dbName).collection("credit_grants").listIndexes().toArray()) {
      if (ix.name === "_id_") continue;
      await grantsCopy.createIndex(ix.key as Document, {
        name: ix.name as string,
        ...(ix.unique === true ? { unique: true } : {}),
        ...(ix.partialFilterExpression ? { partialFilterExpression: ix.partialFilterExpression as Document } : {}),
      });
    }
    const sample = await client.db(dbName).collection<Document>("credit_journal").findOne({});
    const journal = client.db(dbName).collection<Document>("credit_journal");
    const grantOf = new Map(realGrants.map((g) => [g.userId as string, g._id]));
    let floorSeq = 0;
    let queue: Array<{ user: string; done: (e?: unknown) => void }> = [];
    let running = false;
    const runFloor = async (): Promise<void> => {
      running = true;
      while (queue.length > 0) {
        const batch = queue;
        queue = [];
        const session = client.startSession();
        try {
          // With the adapter's transaction options (snapshot reads, majority commit).
          await session.withTransaction(async () => {
            await raw.bulkWrite(
              batch.map((b) => ({
                updateOne: {
                  filter: { _id: b.user as never, balance: { $gte: 1 } },
                  update: { $inc: { balance: -1 } },
                },
              })),
              { session, ordered: true },
            );
            await grantsCopy.bulkWrite(
              batch.map((b) => ({
                updateOne: {
                  filter: { _id: grantOf.get(b.user) },
                  update: { $inc: { remaining: -1 }, $set: { _open: true } },
                },
              })),
              { session, ordered: true },
            );
            await journal.insertMany(
              batch.map((b) => ({ ...sample, _id: randomUUID() as never, userId: `floor-${b.user}`, seq: ++floorSeq })),
              { session, ordered: true },
            );
          }, TRANSACTION);
          for (const b of batch) b.done();
        } catch (error) {
          for (const b of batch) b.done(error);
        } finally {
          await session.endSession();
        }
      }
      running = false;
    };
    const floorOp = (i: number) =>
      new Promise<void>((resolve, reject) => {
        queue.push({ user: pick(i), done: (e) => (e === undefined ? resolve() : reject(e)) });
        if (!running) void runFloor();
      });

    /** Best ops/s of the rounds, with commands and client CPU (µs) per operation over all of them. */
    const stats = () => ({ best: 0, ops: 0, commands: 0, bytes: 0, cpu: 0, gateway: 0, documentdb: 0, server: true });
    const round = async (s: ReturnType<typeof stats>, count: number, op: (i: number) => Promise<unknown>) => {
      const c0 = commands;
      const b0 = bytes;
      const cpu0 = process.cpuUsage();
      const server0 = serverCpu();
      s.best = Math.max(s.best, await measure(count, CALLERS, op));
      s.bytes += bytes - b0;
      const cpu = process.cpuUsage(cpu0);
      const server1 = serverCpu();
      s.ops += count;
      s.commands += commands - c0;
      s.cpu += cpu.user + cpu.system;
      if (server0 === null || server1 === null) s.server = false;
      else {
        s.gateway += server1.gateway - server0.gateway;
        s.documentdb += server1.documentdb - server0.documentdb;
      }
    };
    // Where the time goes: this process (driver and library), the wire gateway, DocumentDB.
    const perOp = (s: ReturnType<typeof stats>) =>
      `${(s.commands / s.ops).toFixed(2)} round trips, ${Math.round(s.bytes / s.ops)} bytes sent and ${Math.round(s.cpu / s.ops)} µs of client CPU per operation` +
      (s.server
        ? ` (server: ${Math.round(s.gateway / s.ops)} µs in the wire gateway + ${Math.round(s.documentdb / s.ops)} µs in DocumentDB)`
        : "");

    // Warm both paths (every user a round touches is then in the state cache), then alternate
    // rounds. Each store runs its rounds before the next one writes: another manager's writes
    // leave its cached states stale.
    await measure(100, CALLERS, baselineOp);
    await measure(ops, CALLERS, deductOp);
    const baseline = stats();
    const deduct = stats();
    const deductSingle = stats();
    const deductUncached = stats();
    const deductShared = stats();
    const floorStats = stats();
    await measure(ops, CALLERS, floorOp);
    for (let r = 0; r < ROUNDS; r++) {
      await round(baseline, ops * 3, baselineOp);
      await round(deduct, ops, deductOp);
      await round(floorStats, ops, floorOp);
    }
    await measure(ops, CALLERS, singleOp);
    for (let r = 0; r < 2; r++) {
      await round(baseline, ops * 3, baselineOp);
      await round(deductSingle, ops, singleOp);
    }
    for (let r = 0; r < 2; r++) {
      await round(baseline, ops * 3, baselineOp);
      await round(deductUncached, ops, uncachedOp);
    }
    // Two managers with clients of their own (like two processes) on the same accounts, each
    // touching them in its own order: a state one caches is often stale by its next use.
    const p1 = new CreditService({ db: new MongoDbManager({ client, dbName }) });
    const p2 = new CreditService({ db: new MongoDbManager({ client: other, dbName }) });
    const half = CALLERS / 2;
    const sharedOp = async (n: number) => {
      await Promise.all([
        measure(n / 2, half, (i) => p1.deductCredits(pick(i), 1)),
        measure(n / 2, half, (i) => p2.deductCredits(users[(i * 6007 + 500) % USERS] as string, 1)),
      ]);
    };
    await sharedOp(ops);
    for (let r = 0; r < 2; r++) {
      await round(baseline, ops * 3, baselineOp);
      const c0 = commands;
      const b0 = bytes;
      const cpu0 = process.cpuUsage();
      const server0 = serverCpu();
      const t0 = process.hrtime.bigint();
      await sharedOp(ops);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = process.cpuUsage(cpu0);
      const server1 = serverCpu();
      if (server0 === null || server1 === null) deductShared.server = false;
      else {
        deductShared.gateway += server1.gateway - server0.gateway;
        deductShared.documentdb += server1.documentdb - server0.documentdb;
      }
      deductShared.best = Math.max(deductShared.best, ops / seconds);
      deductShared.ops += ops;
      deductShared.commands += commands - c0;
      deductShared.bytes += bytes - b0;
      deductShared.cpu += cpu.user + cpu.system;
    }
    const ratio = deduct.best / baseline.best;
    const server = (await client.db("admin").command({ buildInfo: 1 })) as { version?: string };
    return [
      {
        backend: "mongodb",
        scenario: `baseline: guarded findOneAndUpdate + $inc (${CALLERS} callers, ${USERS.toLocaleString("en-US")} docs)`,
        opsPerSec: baseline.best,
        note: perOp(baseline),
      },
      {
        backend: "mongodb",
        scenario: `deductCredits (${CALLERS} callers, ${USERS.toLocaleString("en-US")} users)`,
        opsPerSec: deduct.best,
        baseline: "findOneAndUpdate",
        ratio,
        target: ">= 0.75 of baseline",
        met: ratio >= 0.75,
        note:
          `server ${server.version ?? "?"}; ${perOp(deduct)}; group commit: deductions on different accounts waiting ` +
          `together share one transaction — guarded account updates, grant updates, journal inserts (one command each), ` +
          `one commit (the accounts' states come from the state cache)`,
      },
      {
        backend: "mongodb",
        scenario: `floor: the same writes by hand, grouped the same way (${CALLERS} callers, ${USERS.toLocaleString("en-US")} users)`,
        opsPerSec: floorStats.best,
        baseline: "findOneAndUpdate",
        ratio: floorStats.best / baseline.best,
        note:
          `${perOp(floorStats)}; per deduction a guarded account $inc, a grant update and a journal document ` +
          `(a copy of a real entry), what is waiting in one transaction: 3 commands + commit; deductCredits is ` +
          `${(deduct.best / floorStats.best).toFixed(2)}× this floor`,
      },
      {
        backend: "mongodb",
        scenario: `deductCredits, batch: false (${CALLERS} callers, ${USERS.toLocaleString("en-US")} users)`,
        opsPerSec: deductSingle.best,
        baseline: "findOneAndUpdate",
        ratio: deductSingle.best / baseline.best,
        note: `${perOp(deductSingle)}; one transaction per deduction: guarded account update, grant update, journal insert, commit`,
      },
      {
        backend: "mongodb",
        scenario: `deductCredits, stateCacheSize 0 (${CALLERS} callers, ${USERS.toLocaleString("en-US")} users)`,
        opsPerSec: deductUncached.best,
        baseline: "findOneAndUpdate",
        ratio: deductUncached.best / baseline.best,
        note: `${perOp(deductUncached)}; every unit of work first reads its account, open grants and holds ($lookup), one read per batch`,
      },
      {
        backend: "mongodb",
        scenario: `deductCredits, two managers on shared accounts (2 × ${half} callers, ${USERS.toLocaleString("en-US")} users)`,
        opsPerSec: deductShared.best,
        baseline: "findOneAndUpdate",
        ratio: deductShared.best / baseline.best,
        target: ">= 0.50 of baseline",
        met: deductShared.best / baseline.best >= 0.5,
        note:
          `${perOp(deductShared)} (both clients); like two processes: a batch with a state the other one made stale ` +
          `aborts on its guard and runs again on fresh reads, and once that keeps happening its batches read their ` +
          `states instead of starting from the cache`,
      },
    ];
  } finally {
    await client
      .db(dbName)
      .dropDatabase()
      .catch(() => undefined);
    await client.close();
    await other.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const rows = await run();
  if (rows.length === 0) console.log("mongodb bench skipped: set CREDIT_MONGO_URI");
  else printTable(rows);
}
