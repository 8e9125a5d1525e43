// One SQLite file, two drivers (docs/runtimes.md, "SQLite on Bun"): a store written through
// `bun:sqlite` is read, audited and written on through `better-sqlite3`, and the other way round.
// Run by .ci/runtimes/check.sh from the project that installed the packed package.
//
//   bun sqlite-file.mjs DIR      under Bun, both directions: DIR/from-bun.db is made by the
//                                bun:sqlite store, then opened by the better-sqlite3 one (audit,
//                                balances, more writes), then by bun:sqlite again; DIR/from-bs3.db
//                                the other way round. Writes DIR/expected.json.
//   node sqlite-file.mjs DIR     under Node.js (better-sqlite3 only): both files opened as they
//                                are (openExisting, as `credit-management audit` does), audited,
//                                and the balances compared with DIR/expected.json.
// Exits 1 on any difference or audit problem.
import { existsSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { createCreditManager } from "credit-management";
import { SqliteDbManager } from "credit-management/sqlite";

const dir = process.argv[2];
if (!dir) throw new Error("usage: sqlite-file.mjs DIR");
const onBun = typeof globalThis.Bun !== "undefined";
const runtime = onBun ? `Bun ${globalThis.Bun.version}` : `Node ${process.version}`;
const DAY = 86_400_000;
const users = ["alice", "bob", "carol"];
let failures = 0;
const fail = (message) => {
  failures++;
  console.error(`FAIL ${message}`);
};

/**
 * After `close()`, this process holds nothing of the file (Linux: /proc/self/fd). bun:sqlite keeps
 * a closed connection's file open while a statement of it is not finalized; two SQLite libraries in
 * one process (bun:sqlite's and better-sqlite3's) do not see each other's locks, so a connection
 * left open by one corrupts the WAL for the other (docs/runtimes.md, "SQLite on Bun").
 */
function closed(file, what) {
  if (!existsSync("/proc/self/fd")) return;
  const open = readdirSync("/proc/self/fd")
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return "";
      }
    })
    .filter((path) => path.startsWith(resolve(file)));
  if (open.length > 0) fail(`${what}: still open after close(): ${open.join(", ")}`);
}

/** Every account of the file audited (from the first entry and from the checkpoint); its balances. */
async function auditAll(db, what) {
  const manager = await createCreditManager({ db, init: false, ledger: false });
  const balances = {};
  for (const userId of await db.listAccountIds(undefined, 100)) {
    let entries = 0;
    for (const from of [undefined, "genesis"]) {
      const report = await manager.credits.audit(userId, from === undefined ? {} : { from });
      if (!report.ok || report.problems.length > 0)
        fail(`${what}: audit of ${userId}${from ? " from the first entry" : ""}: ${JSON.stringify(report.problems)}`);
      entries = report.entries;
    }
    const info = await manager.credits.getUserCreditsInfo(userId);
    balances[userId] = { balance: info.balance, reserved: info.reserved, entries };
  }
  if (Object.keys(balances).length !== users.length) fail(`${what}: accounts ${Object.keys(balances)}`);
  return balances;
}

/** Writes through a manager on `driver`: grants with and without expiry, holds, deductions, a void, a checkpoint. */
async function write(driver, file, round) {
  const db = new SqliteDbManager({ filename: file, driver });
  if (db.driver !== driver) fail(`asked for ${driver}, got ${db.driver}`);
  const { credits } = await createCreditManager({ db, ledger: false });
  for (const [i, u] of users.entries()) {
    const expiring = await credits.addCredits(u, 100 + i, {
      expiresAt: new Date(Date.now() + 30 * DAY),
      metadata: { round, driver, note: "ünïcode ✓", big: 2 ** 40 },
    });
    await credits.addCredits(u, 2 ** 40 + i, { idempotencyKey: `grant-${round}-${u}` });
    await credits.deductCredits(u, 7 + i, { metadata: { model: "m", tokens: 12.5 } });
    const hold = await credits.reserveCredits(u, 20, { ttlSeconds: 3600 });
    await credits.commitReservedCredits(hold.id, { amount: 11 });
    await credits.reserveCredits(u, 3, { ttlSeconds: 3600 }); // left active
    if (i === 1) await credits.voidGrant(expiring.grants[0].grantId, { description: "void" });
    await credits.checkpoint(u);
    await credits.deductCredits(u, 1);
  }
  await db.close();
  closed(file, `${file} written by ${driver}`);
}

/** Each column's storage classes (typeof) over its rows, read through bun:sqlite, read-only. */
async function storageClasses(file) {
  const { Database } = await import("bun:sqlite");
  const db = new Database(file, { readonly: true });
  const found = {};
  const rows = (sql) => {
    const statement = db.prepare(sql);
    try {
      return statement.all();
    } finally {
      statement.finalize(); // else close() leaves the file open (see `closed`)
    }
  };
  for (const { name } of rows("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"))
    for (const column of rows(`PRAGMA table_info("${name}")`))
      found[`${name}.${column.name}`] = rows(
        `SELECT group_concat(t) AS t FROM (SELECT DISTINCT typeof("${column.name}") AS t FROM "${name}" ORDER BY 1)`,
      )[0].t;
  db.close();
  closed(file, `${file} read by bun:sqlite itself`);
  return found;
}

if (onBun) {
  const expected = {};
  const classes = [];
  for (const [name, first, second] of [
    ["from-bun.db", "bun:sqlite", "better-sqlite3"],
    ["from-bs3.db", "better-sqlite3", "bun:sqlite"],
  ]) {
    const file = join(dir, name);
    await write(first, file, 1);
    // The same values stored as the same SQLite types by either driver (integer, real, text, null).
    classes.push(await storageClasses(file));
    // Opened by the other driver as it is (nothing created or migrated), audited.
    const reader = new SqliteDbManager({ filename: file, driver: second });
    await reader.openExisting();
    const written = await auditAll(reader, `${name} (${first}) read by ${second}`);
    await reader.close();
    closed(file, `${file} read by ${second}`);
    // Written on by the other driver, then read by the first again.
    await write(second, file, 2);
    const back = new SqliteDbManager({ filename: file, driver: first });
    await back.openExisting();
    const both = await auditAll(back, `${name} written by ${first} then ${second}, read by ${first}`);
    await back.close();
    closed(file, `${file} read by ${first}`);
    for (const u of users) {
      const [a, b] = [written[u], both[u]];
      if (a === undefined || b === undefined || !(b.entries > a.entries && b.balance > a.balance))
        fail(`${name}: ${u}: the second round's writes are missing (${JSON.stringify(a)} then ${JSON.stringify(b)})`);
    }
    expected[name] = both;
    console.log(`${runtime}: ${name}: written by ${first}, read and audited by ${second}, written on by ${second}, read and audited by ${first}: ${JSON.stringify(both)}`);
  }
  const [byBun, byBs3] = classes;
  const differ = Object.keys({ ...byBun, ...byBs3 }).filter((column) => byBun[column] !== byBs3[column]);
  if (differ.length > 0)
    fail(`storage classes differ (bun:sqlite, better-sqlite3): ${differ.map((c) => `${c}: ${byBun[c]}, ${byBs3[c]}`).join("; ")}`);
  else
    console.log(`${runtime}: the same writes store the same SQLite types in every column through either driver (${Object.keys(byBun).length} columns)`);
  writeFileSync(join(dir, "expected.json"), JSON.stringify(expected));
} else {
  const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));
  for (const [name, balances] of Object.entries(expected)) {
    const db = new SqliteDbManager({ filename: join(dir, name) });
    if (db.driver !== "better-sqlite3") fail(`the default driver on Node is ${db.driver}`);
    await db.openExisting();
    const found = await auditAll(db, `${name} on ${runtime}`);
    await db.close();
    if (JSON.stringify(found) !== JSON.stringify(balances))
      fail(`${name} on ${runtime}: ${JSON.stringify(found)}, under Bun ${JSON.stringify(balances)}`);
    else console.log(`${runtime}: ${name} (written under Bun by both drivers) read by better-sqlite3 and audited: the same balances`);
  }
}
if (failures > 0) process.exit(1);
