import { createHash } from "node:crypto";
import type * as Fs from "node:fs";
import type * as FsPromises from "node:fs/promises";
import type * as Path from "node:path";
import { ConfigurationError, ConflictError } from "../../core/errors.js";
import type { JournalEntry, LedgerEntry } from "../../core/models/index.js";
import {
  PARTITIONED_TABLES,
  type PartitionInterval,
  partitionName,
  rangeAfter,
  rangeStart,
  rangesAround,
  timestampLiteral,
} from "../../schema/partitions.js";
import { SCHEMA_COMPONENT, type SqlTable, partitionSql, quoteIdent } from "../../schema/sql.js";
import { targetVersion } from "../../schema/version.js";
import type { TableKey } from "../../schema/tables.js";
import type { PgPoolClient as PoolClient } from "./pg-types.js";
import type {
  ArchivePartitionsInput,
  ArchivePartitionsReport,
  ConvertReport,
  EnsurePartitionsReport,
  PartitionInfo,
} from "../../core/db/types-partitions.js";
import type { PostgresDbManager } from "./index.js";
import { storageError } from "./errors.js";
import { cols, output } from "./sql.js";
import { nodeBuiltin } from "../../core/util/runtime.js";

// Files only where partitions are archived, loaded then, not at import (docs/runtimes.md).
const fsp = (): typeof FsPromises => nodeBuiltin<typeof FsPromises>("node:fs/promises");
const join = (...parts: string[]): string => nodeBuiltin<typeof Path>("node:path").join(...parts);

const q = (name: string) => quoteIdent("postgres", name);

/** Rows read per statement when a partition is exported. */
const PAGE = 1000;
/** Accounts named in the error of an archive that lacks their checkpoints. */
const NAMED = 20;

/** Runs `fn` in a transaction whose dates print as ISO 8601 in UTC (partition bounds are parsed). */
async function inTransaction<T>(db: PostgresDbManager, what: string, fn: (c: PoolClient) => Promise<T>): Promise<T> {
  const client = await db.connect();
  let broken: unknown = false;
  try {
    await client.query("BEGIN");
    await client.query("SET LOCAL TimeZone = 'UTC'");
    await client.query("SET LOCAL DateStyle = 'ISO, YMD'");
    // DDL on a partitioned table waits for every transaction using it, and writers queue behind it.
    await client.query("SET LOCAL lock_timeout = '10s'");
    const out = await fn(client);
    await client.query("COMMIT");
    return out;
  } catch (error) {
    try {
      await client.query("ROLLBACK");
    } catch {
      broken = error;
    }
    if (error instanceof ConflictError || error instanceof ConfigurationError) throw error;
    throw storageError(what, error);
  } finally {
    db.release(client, broken);
  }
}

/** `'2030-01-01 00:00:00+00'` (DateStyle ISO, TimeZone UTC) as a Date. */
function parseBound(text: string): Date {
  return new Date(`${text.replace(" ", "T").replace(/([+-]\d\d)$/, "$1:00")}`);
}

/** Whether the table of `key` is partitioned (null: it does not exist). */
export async function relationKind(db: PostgresDbManager, client: PoolClient, key: TableKey): Promise<string | null> {
  const t = db.sql.tables[key];
  const r: { rows: { kind: string | null }[] } = await client.query(
    "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)) AS kind",
    [t.qualified],
  );
  return r.rows[0]?.kind ?? null;
}

async function listOn(db: PostgresDbManager, client: PoolClient, key: "journal" | "ledger"): Promise<PartitionInfo[]> {
  const t = db.sql.tables[key];
  const r: { rows: { name: string; bound: string }[] } = await client.query(
    "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i " +
      "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1) ORDER BY c.relname",
    [t.qualified],
  );
  const out: PartitionInfo[] = [];
  for (const row of r.rows) {
    if (/^DEFAULT$/i.test(row.bound.trim())) {
      out.push({ table: key, name: row.name, from: null, to: null });
      continue;
    }
    const m = /FROM \('([^']+)'\) TO \('([^']+)'\)/.exec(row.bound);
    if (m === null) continue; // not a range of ours (MINVALUE …): left alone
    out.push({ table: key, name: row.name, from: parseBound(m[1] as string), to: parseBound(m[2] as string) });
  }
  return out.sort((a, b) => (a.from?.getTime() ?? Infinity) - (b.from?.getTime() ?? Infinity));
}

/** The partitions of the journal and the ledger table, oldest first, each table's DEFAULT last. */
export function listPartitions(db: PostgresDbManager): Promise<PartitionInfo[]> {
  return inTransaction(db, "listPartitions", async (client) => {
    const out: PartitionInfo[] = [];
    for (const key of PARTITIONED_TABLES as ("journal" | "ledger")[]) out.push(...(await listOn(db, client, key)));
    return out;
  });
}

function qualifiedPartition(db: PostgresDbManager, name: string): string {
  const schema = db.sql.naming.schema;
  return schema === undefined ? q(name) : `${q(schema)}.${q(name)}`;
}

/**
 * Creates the partitions of the current interval at `now` and the `ahead` after it, on each
 * partitioned table, where no partition covers them yet. Rows that reached the DEFAULT partition in
 * such a range (no partition existed for it then) move into the new one, in the same transaction.
 * Under the store's advisory lock: several workers may run it at once.
 */
export function ensurePartitions(
  db: PostgresDbManager,
  interval: PartitionInterval,
  ahead: number,
  now: Date,
): Promise<EnsurePartitionsReport> {
  return inTransaction(db, "ensurePartitions", async (client) => {
    await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [db.sql.lockKey]);
    const report: EnsurePartitionsReport = { created: [], movedFromDefault: 0 };
    for (const key of PARTITIONED_TABLES as ("journal" | "ledger")[]) {
      const t = db.sql.tables[key];
      const existing = await listOn(db, client, key);
      const def = existing.find((p) => p.from === null);
      for (const range of rangesAround(interval, now, ahead)) {
        const overlaps = existing.some(
          (p) => p.from !== null && p.to !== null && p.from < range.to && range.from < p.to,
        );
        if (overlaps) continue;
        const inDefault =
          def === undefined
            ? 0
            : Number(
                (
                  (await client.query(
                    `SELECT count(*)::float8 AS n FROM ${qualifiedPartition(db, def.name)} WHERE created_at >= $1 AND created_at < $2`,
                    [range.from, range.to],
                  )) as { rows: { n: number }[] }
                ).rows[0]?.n ?? 0,
              );
        if (inDefault === 0 || def === undefined) {
          await client.query(partitionSql(t, range, db.sql.naming));
        } else {
          // PostgreSQL refuses a partition whose range has rows in the DEFAULT one: take the
          // DEFAULT off, make the partition, move the rows, put the DEFAULT back.
          const d = qualifiedPartition(db, def.name);
          const where = `created_at >= ${timestampLiteral(range.from)} AND created_at < ${timestampLiteral(range.to)}`;
          await client.query(`ALTER TABLE ${t.qualified} DETACH PARTITION ${d}`);
          await client.query(partitionSql(t, range, db.sql.naming));
          // A moved entry keeps its seq: the usage rollup's cursors (docs/usage.md, "The daily
          // rollup") need nothing.
          const columns = cols(t);
          const moved = await client.query(
            `WITH m AS (DELETE FROM ${d} WHERE ${where} RETURNING ${columns}) INSERT INTO ${t.qualified} (${columns}) SELECT ${columns} FROM m`,
          );
          report.movedFromDefault += moved.rowCount ?? 0;
          await client.query(`ALTER TABLE ${t.qualified} ATTACH PARTITION ${d} DEFAULT`);
        }
        existing.push({ table: key, name: partitionName(t.name, range.from), from: range.from, to: range.to });
        report.created.push(partitionName(t.name, range.from));
      }
    }
    return report;
  });
}

/**
 * Archives every range partition of the journal and the ledger table whose range ends at or
 * before `before`, oldest first (docs/running-for-years.md, "Partitioning on PostgreSQL"):
 *
 *  1. journal: every account with entries in the partition must have a checkpoint after its last
 *     entry there, so that `audit()` (from its latest checkpoint) and history pages never need the
 *     partition; `checkpoint` writes the missing ones, or the archive is refused naming them;
 *  2. the partition's rows go to `<dir>/<partition>.jsonl` (journal: one entry a line as
 *     `archiveJournal` writes them, by account and seq; ledger: one event a line), through a
 *     temporary file that is flushed to disk and then renamed (a file already there from a run
 *     that stopped before step 3 must hold the same rows, byte for byte);
 *  3. one transaction detaches the partition, checks that it still holds exactly the rows written
 *     (a writer with a late clock could have added one: then nothing changes and the run fails),
 *     and drops it (`keepDetached`: leaves it as a table of its own).
 *
 * The DEFAULT partitions are never archived.
 */
export async function archivePartitions(
  db: PostgresDbManager,
  input: ArchivePartitionsInput,
): Promise<ArchivePartitionsReport> {
  const report: ArchivePartitionsReport = { partitions: [], checkpointsWritten: 0 };
  const kind = await inTransaction(db, "archivePartitions", (client) => relationKind(db, client, "journal"));
  if (kind !== "p")
    throw new ConfigurationError(
      `[credit-management] [postgres] the journal (${db.sql.tables.journal.qualified}) is not partitioned: use archiveJournal, or convert the store (docs/running-for-years.md, "Partitioning on PostgreSQL")`,
    );
  const all = await listPartitions(db);
  const due = all.filter((p) => p.to !== null && p.to.getTime() <= input.before.getTime());
  for (const p of due) {
    const from = p.from as Date;
    const to = p.to as Date;
    const table = db.sql.tables[p.table];
    const qualified = qualifiedPartition(db, p.name);
    let accounts = 0;
    if (p.table === "journal") {
      const uncovered = async () =>
        (
          await db.read(
            "archivePartitions",
            `SELECT p.user_id FROM (SELECT user_id, max(seq) AS last FROM ${qualified} GROUP BY user_id) p ` +
              `WHERE NOT EXISTS (SELECT 1 FROM ${table.qualified} j WHERE j.user_id = p.user_id AND j.seq > p.last AND j.type = 'checkpoint') ` +
              `ORDER BY p.user_id`,
            [],
          )
        ).map((r) => r.user_id as string);
      let missing = await uncovered();
      if (missing.length > 0 && input.checkpoint !== null) {
        for (const userId of missing) {
          await input.checkpoint(userId);
          report.checkpointsWritten++;
        }
        missing = await uncovered();
      }
      if (missing.length > 0)
        throw new ConflictError(
          `[credit-management] [postgres] partition ${p.name} cannot be archived: ${missing.length} account(s) have no checkpoint after their last entry in it (${missing.slice(0, NAMED).join(", ")}${missing.length > NAMED ? ", …" : ""}); write them first (credits.checkpoint, the checkpointAccounts job) or leave \`checkpoint\` on (the default)`,
          { partition: p.name, accounts: missing.slice(0, NAMED), count: missing.length },
        );
      const n = await db.read("archivePartitions", `SELECT count(DISTINCT user_id)::float8 AS n FROM ${qualified}`, []);
      accounts = Number(n[0]?.n ?? 0);
    }
    // The usage rollup keeps the days of archived entries: it has them before they go (docs/usage.md).
    if (p.table === "journal") await db.catchUpUsageRollup();
    const file = join(input.dir, `${p.name}.jsonl`);
    const rows = await exportPartition(db, table, p.table, qualified, file);
    await inTransaction(db, "archivePartitions", async (client) => {
      await client.query(`ALTER TABLE ${table.qualified} DETACH PARTITION ${qualified}`);
      const left: { rows: { n: number }[] } = await client.query(`SELECT count(*)::float8 AS n FROM ${qualified}`);
      const count = Number(left.rows[0]?.n ?? 0);
      if (count !== rows)
        throw new ConflictError(
          `[credit-management] [postgres] partition ${p.name} changed while it was archived (${count} rows, ${rows} written): run the archive again`,
          { partition: p.name },
        );
      if (!input.keepDetached) await client.query(`DROP TABLE ${qualified}`);
    });
    report.partitions.push({ table: p.table, name: p.name, from, to, rows, file, accounts });
  }
  return report;
}

/** Writes a partition's rows to `file` (see `archivePartitions`, step 2); the number of rows. */
async function exportPartition(
  db: PostgresDbManager,
  table: SqlTable,
  key: "journal" | "ledger",
  qualified: string,
  file: string,
): Promise<number> {
  const temporary = `${file}.partial`;
  const out = await fsp().open(temporary, "w");
  let rows = 0;
  try {
    const journal = key === "journal";
    let after: [string, number | string] | null = null;
    for (;;) {
      const where = after === null ? "" : journal ? " WHERE (user_id, seq) > ($1, $2)" : " WHERE id > $1";
      const order = journal ? "user_id, seq" : "id";
      const params: unknown[] = after === null ? [] : journal ? after : [after[0]];
      const page = await db.read(
        "archivePartitions",
        `SELECT ${output(table)} FROM ${qualified}${where} ORDER BY ${order} LIMIT ${PAGE}`,
        params,
      );
      let text = "";
      for (const r of page) {
        const row = db.decode<JournalEntry | LedgerEntry>(key, r);
        text += `${JSON.stringify(row)}\n`;
        after = journal ? [(row as JournalEntry).userId, (row as JournalEntry).seq] : [row.id, 0];
      }
      await out.write(text);
      rows += page.length;
      if (page.length < PAGE) break;
    }
    await out.datasync();
  } finally {
    await out.close();
  }
  // No file there (ENOENT) is the usual case; the temporary file beside it was just written, so any
  // other failure to stat it fails the rename below as well, naming the file.
  const existing = await fsp()
    .stat(file)
    .catch(() => null);
  if (existing !== null) {
    // A run that stopped after its rename: the same rows give the same bytes.
    if ((await digest(file)) !== (await digest(temporary)))
      throw new ConfigurationError(
        `[credit-management] [postgres] ${file} exists and differs from partition ${qualified}: move it away or archive into another directory`,
      );
    await fsp().rm(temporary);
  } else {
    await fsp().rename(temporary, file);
  }
  const dir = await fsp().open(join(file, ".."), "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
  return rows;
}

function digest(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    nodeBuiltin<typeof Fs>("node:fs")
      .createReadStream(file)
      .on("data", (d) => h.update(d))
      .on("end", () => resolve(h.digest("hex")))
      .on("error", reject);
  });
}

/**
 * Converts a store whose journal and ledger table are plain tables into the partitioned layout,
 * in one transaction under the store's advisory lock (writers wait for it: plan a maintenance
 * window, as for a table rewrite): each plain table is renamed `<table>_unpartitioned` (its
 * indexes likewise), the partitioned one is created (the DDL of `db.sql`, whose other statements
 * change nothing), with partitions from the interval of its oldest row up to `ahead` after `now`,
 * the rows are copied by column name, and the old table is dropped (`keepOld`: kept).
 */
export function convertToPartitioned(
  db: PostgresDbManager,
  interval: PartitionInterval,
  ahead: number,
  now: Date,
  keepOld: boolean,
): Promise<ConvertReport> {
  return inTransaction(db, "convertToPartitioned", async (client) => {
    await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [db.sql.lockKey]);
    const found: { rows: { version: number }[] } = await client.query(
      `SELECT (SELECT version FROM ${db.sql.versionTable} WHERE component = $1) AS version`,
      [SCHEMA_COMPONENT],
    );
    const version = found.rows[0]?.version ?? null;
    if (version !== targetVersion())
      throw new ConfigurationError(
        `[credit-management] [postgres] convertToPartitioned needs a store at schema version ${targetVersion()} (it is at ${version ?? "none"}): run init() of a manager without \`partitions\` first`,
      );
    const report: ConvertReport = { tables: [], created: [] };
    const plain: { key: "journal" | "ledger"; old: string; oldest: Date | null }[] = [];
    for (const key of PARTITIONED_TABLES as ("journal" | "ledger")[]) {
      if ((await relationKind(db, client, key)) !== "r") continue;
      const t = db.sql.tables[key];
      const old = `${t.name}_unpartitioned`;
      await client.query(`LOCK TABLE ${t.qualified} IN ACCESS EXCLUSIVE MODE`);
      const indexes: { rows: { name: string }[] } = await client.query(
        "SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass($1)",
        [t.qualified],
      );
      await client.query(`ALTER TABLE ${t.qualified} RENAME TO ${q(old)}`);
      for (const { name } of indexes.rows)
        await client.query(
          `ALTER INDEX ${qualifiedPartition(db, name)} RENAME TO ${q(`${name.slice(0, 48)}_unpartitioned`)}`,
        );
      const r: { rows: { at: string | null }[] } = await client.query(
        `SELECT to_char(min(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at FROM ${qualifiedPartition(db, old)}`,
      );
      plain.push({ key, old, oldest: r.rows[0]?.at ? new Date(r.rows[0].at) : null });
    }
    if (plain.length === 0) return report;
    // The copy below keeps every entry's seq: the usage rollup and its cursors stay as they are
    // (docs/usage.md, "The daily rollup").
    await client.query(db.sql.ddl);
    for (const { key, old, oldest } of plain) {
      const t = db.sql.tables[key];
      const last = rangesAround(interval, now, ahead).at(-1) as { from: Date; to: Date };
      for (let from = rangeStart(interval, oldest ?? now); from < last.to; from = rangeAfter(interval, from)) {
        await client.query(partitionSql(t, { from, to: rangeAfter(interval, from) }, db.sql.naming));
        report.created.push(partitionName(t.name, from));
      }
      const columns = cols(t);
      const copied = await client.query(
        `INSERT INTO ${t.qualified} (${columns}) SELECT ${columns} FROM ${qualifiedPartition(db, old)}`,
      );
      report.tables.push({ table: key, rows: copied.rowCount ?? 0, kept: keepOld ? old : null });
      if (!keepOld) await client.query(`DROP TABLE ${qualifiedPartition(db, old)}`);
    }
    return report;
  });
}
