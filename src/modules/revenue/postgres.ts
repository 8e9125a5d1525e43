import type { JournalEntry } from "../../core/models/index.js";
import type { PeriodClose, PeriodCloseMark, RevenueDimension } from "./model.js";
import { grantGroups, type GrantGroups } from "./rules.js";
import { revenueNames, type RevenueNames } from "./schema-pg.js";
import type { NamingOptions } from "../../schema/sql.js";
import type { PostgresBoundPart, PostgresStoreHost } from "../../db/postgres/module-part.js";
import { list } from "../../db/postgres/reads.js";
import { output } from "../../db/postgres/sql.js";
import { decodeRow } from "../../schema/codec.js";
import type {
  MovedEntriesQuery,
  PeriodCloseStore,
  RevenueBucketRow,
  RevenueCheckpoint,
  RevenueDeferredRow,
  RevenueDayRow,
  RevenueSave,
  RevenueSummaryOfAccount,
  RevenueSummaryReads,
  RevenueSummaryStore,
} from "./store.js";
import { closeGoesBack } from "./store-errors.js";

/** What the summary needs of `PostgresDbManager`. */
type Runner = PostgresStoreHost;

/**
 * The revenue module's part of `PostgresDbManager` (`revenueStorePart.postgres`): the summary (none
 * on Citus) and the closed periods.
 */
export function revenuePostgresPart(host: PostgresStoreHost): PostgresBoundPart<RevenueSummaryReads> {
  let summary: PostgresRevenueSummary | undefined;
  const closes = new PostgresPeriodCloses(host);
  return {
    reads: {
      summary: () =>
        host.sql.distributed
          ? undefined
          : (summary ??= new PostgresRevenueSummary(host, host.sql.naming, host.sql.tables.accounts.qualified)),
      recordClose: (through, closedAt) => closes.recordClose(through, closedAt),
      listCloses: () => closes.listCloses(),
      marks: (userIds) => closes.marks(userIds),
      movedEntries: (query) => closes.movedEntries(query),
    },
  };
}

/**
 * The advisory lock of a store's closes (docs/revenue.md, "Closing a month"), by its closes
 * table's name: a close holds it exclusively from its check of the latest close to its commit, a
 * save of the summary shared while it checks that no later close was recorded — so a summary never
 * keeps entries booked without a close that marked them as later.
 */
const closeLock = (exclusive: boolean) =>
  `SELECT ${exclusive ? "pg_advisory_xact_lock" : "pg_advisory_xact_lock_shared"}(hashtext($1))`;

/**
 * Closed periods of `PostgresDbManager` (tables `period_closes`, `period_close_marks`; on Citus the
 * marks distributed with the accounts, the closes a reference table). A close is one transaction
 * under the closes' advisory lock: the check against the latest close, every account's mark (one
 * `INSERT … SELECT` from the accounts), the close row.
 */
class PostgresPeriodCloses implements PeriodCloseStore {
  constructor(private readonly db: PostgresStoreHost) {}

  async recordClose(through: Date, closedAt: Date): Promise<PeriodClose> {
    const t = this.db.sql.tables;
    return this.db.inTransaction("closePeriod", async (query) => {
      // Citus: a reference table's write after a multi-shard one needs the shards' writes in sequence.
      if (this.db.sql.distributed) await query("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'");
      await query(closeLock(true), [t.periodCloses.qualified]);
      const [last] = await query(`SELECT max("through") AS latest FROM ${t.periodCloses.qualified}`);
      const latest = last?.latest == null ? null : new Date(last.latest as string | Date);
      if (latest !== null && through.getTime() <= latest.getTime()) throw closeGoesBack("postgres", through, latest);
      await query(
        `INSERT INTO ${t.periodCloseMarks.qualified} ("through", "user_id", "seq") SELECT $1::timestamptz, "user_id", "seq" FROM ${t.accounts.qualified}`,
        [through],
      );
      const [marked] = await query(
        `SELECT count(*)::int AS n FROM ${t.periodCloseMarks.qualified} WHERE "through" = $1::timestamptz`,
        [through],
      );
      const count = num(marked?.n);
      await query(
        `INSERT INTO ${t.periodCloses.qualified} ("through", "closed_at", "accounts") VALUES ($1::timestamptz, $2::timestamptz, $3)`,
        [through, closedAt, count],
      );
      return { through, closedAt, accounts: count };
    });
  }

  async listCloses(): Promise<PeriodClose[]> {
    const rows = await this.db.read(
      "listPeriodCloses",
      `SELECT "through", "closed_at", "accounts" FROM ${this.db.sql.tables.periodCloses.qualified} ORDER BY "through"`,
      [],
    );
    return rows.map((r) => ({
      through: new Date(r.through as string | Date),
      closedAt: new Date(r.closed_at as string | Date),
      accounts: num(r.accounts),
    }));
  }

  async marks(userIds: readonly string[] | null): Promise<PeriodCloseMark[]> {
    const table = this.db.sql.tables.periodCloseMarks.qualified;
    const select = `SELECT "through", "user_id", "seq" FROM ${table}`;
    // One account's (an audit, a report of one account): keyed by it, one shard on Citus.
    const rows = await this.db.read(
      "periodCloseMarks",
      userIds === null
        ? select
        : userIds.length === 1
          ? `${select} WHERE user_id = $1`
          : `${select} WHERE user_id = ANY($1::text[])`,
      userIds === null ? [] : userIds.length === 1 ? [userIds[0]] : [[...userIds]],
    );
    return rows.map((r) => ({
      through: new Date(r.through as string | Date),
      userId: String(r.user_id),
      seq: num(r.seq),
    }));
  }

  /**
   * One statement per page: the accounts in user id order, each with its mark at the close (none:
   * an account the close did not know), and each account's entries past it read by the journal's
   * primary key (user_id, seq). Both are LATERAL subqueries with a LIMIT, which the planner does not
   * merge into the join: each account is one lookup of its mark and one range of its entries —
   * never a scan of the whole journal, nor a join of every mark with every account, whatever the
   * plan of the prepared statement (generic after a few runs) guesses of its parameters. On Citus
   * the three tables are distributed by user_id and joined on it: the statement runs on each shard.
   */
  async movedEntries(query: MovedEntriesQuery): Promise<JournalEntry[]> {
    const t = this.db.sql.tables;
    const params: unknown[] = [query.through, [...query.types], query.before, query.limit];
    let from = "0";
    let accounts = "";
    if (query.after !== null) {
      params.push(query.after.userId, query.after.seq);
      // The account of the last entry from past that entry; the next accounts from their marks.
      from = "CASE WHEN a.user_id = $5 THEN $6::bigint ELSE 0 END";
      accounts = " WHERE a.user_id >= $5";
    }
    const rows = await this.db.read(
      "movedEntries",
      `SELECT ${output(t.journal, "j")} FROM ${t.accounts.qualified} a ` +
        `LEFT JOIN LATERAL (SELECT m.seq FROM ${t.periodCloseMarks.qualified} m ` +
        `WHERE m.user_id = a.user_id AND m.through = $1::timestamptz LIMIT 1) m ON true ` +
        `CROSS JOIN LATERAL (SELECT * FROM ${t.journal.qualified} e WHERE e.user_id = a.user_id ` +
        `AND e.seq > greatest(coalesce(m.seq, 0), ${from}) AND e.type = ANY($2::text[]) ` +
        `AND coalesce(e.occurred_at, e.created_at) < $3::timestamptz ORDER BY e.seq LIMIT $4) j` +
        `${accounts} ORDER BY a.user_id, j.seq LIMIT $4`,
      params,
    );
    return rows.map((r) => decodeRow<JournalEntry>(t.journal.columns, r));
  }
}

const DAY = 86_400_000;
const dayText = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const dayMs = (v: unknown) => (v === null ? null : Date.parse(`${String(v)}T00:00:00Z`));
const num = (v: unknown) => Number(v ?? 0);
const str = (v: unknown) => (v === null || v === undefined ? null : String(v));
/** A `json_agg(…)::text` column: its rows (none for null). */
const jsonRows = (v: unknown) => (typeof v === "string" ? (JSON.parse(v) as Record<string, unknown>[]) : []);
/** The groups and figures of a summary row as `json_agg` gives them. */
const figuresOf = (r: Record<string, unknown>) => ({
  currency: str(r.currency),
  source: str(r.source),
  plan: str(r.plan),
  feature: str(r.feature),
  spender: str(r.spender),
  paid: num(r.paid),
  recognized: num(r.recognized),
  breakage: num(r.breakage),
  refunds: num(r.refunds),
  unbilled: num(r.unbilled),
  catchUp: r.catch_up == null ? null : num(r.catch_up),
});

/**
 * The revenue summary on PostgreSQL (docs/revenue.md, "How it is computed"; tables in
 * src/schema/revenue-pg.ts): one statement per call; a catch-up is a compare-and-set on the
 * account's `through_seq`, with its days and deferred changes in the same statement.
 */
export class PostgresRevenueSummary implements RevenueSummaryStore {
  private readonly n: RevenueNames;

  constructor(
    private readonly db: Runner,
    naming: NamingOptions,
    private readonly accounts: string,
  ) {
    this.n = revenueNames(naming);
  }

  async staleRevenue(account: string | null, after: string | null, limit: number): Promise<RevenueCheckpoint[]> {
    const params: unknown[] = [limit];
    const where = ["a.seq > coalesce(s.through_seq, 0)"];
    if (account !== null) {
      params.push(account);
      where.push(`a.user_id = $${params.length}`);
    }
    if (after !== null) {
      params.push(after);
      where.push(`a.user_id > $${params.length}`);
    }
    const rows = await this.db.read(
      "staleRevenue",
      `SELECT a.user_id, a.seq, coalesce(s.through_seq, 0) AS through_seq, s.state ` +
        `FROM ${this.accounts} a LEFT JOIN ${this.n.state} s ON s.user_id = a.user_id ` +
        `WHERE ${where.join(" AND ")} ORDER BY a.user_id LIMIT $1`,
      params,
    );
    return rows.map((r) => ({
      userId: String(r.user_id),
      throughSeq: num(r.through_seq),
      seq: num(r.seq),
      state: str(r.state),
    }));
  }

  async revenueEntries(checkpoints: readonly RevenueCheckpoint[]): Promise<JournalEntry[]> {
    if (checkpoints.length === 0) return [];
    return list(
      this.db,
      "revenueEntries",
      "journal",
      `WHERE (user_id, seq) IN (SELECT c.u, s FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS c(u, a, b), ` +
        `generate_series(c.a + 1, c.b) AS s) ORDER BY user_id, seq`,
      [
        checkpoints.map((c) => c.userId),
        checkpoints.map((c) => c.throughSeq),
        checkpoints.map((c) => c.seq ?? c.throughSeq),
      ],
    );
  }

  async grantGroups(grantIds: readonly string[]): Promise<Map<string, GrantGroups>> {
    if (grantIds.length === 0) return new Map();
    const rows = await this.db.read(
      "grantGroups",
      `SELECT id, source, metadata ->> 'planId' AS plan FROM ${this.db.sql.tables.grants.qualified} WHERE id = ANY($1::text[])`,
      [[...grantIds]],
    );
    return new Map(
      rows.map((r) => [
        String(r.id),
        grantGroups({ source: String(r.source), metadata: r.plan === null ? null : { planId: String(r.plan) } }),
      ]),
    );
  }

  async saveRevenue(saves: readonly RevenueSave[]): Promise<number> {
    if (saves.length === 0) return 0;
    const { state, daily, split, deferred: deferredTable } = this.n;
    const figures = ["paid", "recognized", "breakage", "refunds", "unbilled"] as const;
    const checkpoints = saves.map((x) => ({
      u: x.checkpoint.userId,
      f: x.fromSeq,
      t: x.checkpoint.throughSeq,
      s: x.checkpoint.state,
    }));
    // Two groupings of the same figures: by currency and source (what most reports read), and by
    // feature and spender too (reports grouped by them).
    const coarse = new Map<string, Record<string, unknown>>();
    const fine: Record<string, unknown>[] = [];
    // A catch-up row's close is part of its group (docs/revenue.md, "Closing a month").
    const closeOf = (d: RevenueDayRow) => (d.catchUp === null ? [] : [d.catchUp]);
    for (const x of saves) {
      for (const d of x.days) {
        const day = dayText(d.day);
        fine.push({
          u: x.checkpoint.userId,
          day,
          grp: JSON.stringify([d.currency, d.source, d.plan, d.feature, d.spender, ...closeOf(d)]),
          currency: d.currency,
          source: d.source,
          plan: d.plan,
          feature: d.feature,
          spender: d.spender,
          catch_up: d.catchUp,
          ...Object.fromEntries(figures.map((f) => [f, d[f]])),
        });
        const grp = JSON.stringify([d.currency, d.source, d.plan, ...closeOf(d)]);
        const id = `${x.checkpoint.userId}\u0000${day}\u0000${grp}`;
        const c = coarse.get(id) ?? {
          u: x.checkpoint.userId,
          day,
          grp,
          currency: d.currency,
          source: d.source,
          plan: d.plan,
          catch_up: d.catchUp,
          ...Object.fromEntries(figures.map((f) => [f, 0])),
        };
        for (const f of figures) (c[f] as number) += d[f];
        coarse.set(id, c);
      }
    }
    const deferredRows = saves.flatMap((x) =>
      x.deferred.map((d) => ({
        u: x.checkpoint.userId,
        grp: JSON.stringify([d.currency, d.source, d.plan]),
        currency: d.currency,
        source: d.source,
        plan: d.plan,
        delta: d.delta,
      })),
    );
    const add = (cols: readonly string[]) => cols.map((x) => `"${x}" = t."${x}" + EXCLUDED."${x}"`).join(", ");
    const figureCols = figures.join(", ");
    const figureTypes = figures.map((f) => `${f} bigint`).join(", ");
    const upsertDays = (table: string, param: string, groups: string[]) =>
      `INSERT INTO ${table} AS t (user_id, day, grp, ${groups.join(", ")}, catch_up, ${figureCols}) ` +
      `SELECT x.u, x.day, x.grp, ${groups.map((g) => `x.${g}`).join(", ")}, x.catch_up, ${figures.map((f) => `x.${f}`).join(", ")} ` +
      `FROM json_to_recordset(${param}::json) AS x(u text, day date, grp text, ${groups.map((g) => `${g} text`).join(", ")}, catch_up bigint, ${figureTypes}) ` +
      `WHERE x.u IN (SELECT user_id FROM ok) ON CONFLICT (user_id, day, grp) DO UPDATE SET ${add(figures)}`;
    // One statement: each checkpoint moves only from its `fromSeq` (a concurrent report's
    // catch-up of the same entries finds it moved and adds nothing), and an account's days and
    // deferred changes are written only with its checkpoint.
    const text =
      `WITH ok AS (INSERT INTO ${state} AS s (user_id, through_seq, state) ` +
      `SELECT c.u, c.t, c.s FROM json_to_recordset($1::json) AS c(u text, f bigint, t bigint, s text) ` +
      `ON CONFLICT (user_id) DO UPDATE SET through_seq = EXCLUDED.through_seq, state = EXCLUDED.state ` +
      `WHERE s.through_seq = (SELECT c.f FROM json_to_recordset($1::json) AS c(u text, f bigint) WHERE c.u = s.user_id) ` +
      `RETURNING user_id), ` +
      `d AS (${upsertDays(daily, "$2", ["currency", "source", "plan"])}), ` +
      `sp AS (${upsertDays(split, "$3", ["currency", "source", "plan", "feature", "spender"])}), ` +
      `f AS (INSERT INTO ${deferredTable} AS t (user_id, grp, currency, source, plan, deferred) ` +
      `SELECT x.u, x.grp, x.currency, x.source, x.plan, x.delta FROM json_to_recordset($4::json) AS x(u text, grp text, currency text, source text, plan text, delta bigint) ` +
      `WHERE x.u IN (SELECT user_id FROM ok) ON CONFLICT (user_id, grp) DO UPDATE SET deferred = t.deferred + EXCLUDED.deferred) ` +
      `SELECT count(*)::int AS n FROM ok`;
    const closes = this.db.sql.tables.periodCloses.qualified;
    const latest = saves[0]!.latestClose;
    // Under the closes' lock (shared), and only while the close the days were booked with is still
    // the latest: a close recorded meanwhile marked some of these entries as later (catch-up).
    return this.db.inTransaction("saveRevenue", async (query) => {
      await query(closeLock(false), [closes]);
      const [now] = await query(`SELECT max("through") AS latest FROM ${closes}`);
      const at = now?.latest == null ? null : new Date(now.latest as string | Date).getTime();
      if (at !== latest) return 0;
      const rows = await query(text, [
        JSON.stringify(checkpoints),
        JSON.stringify([...coarse.values()]),
        JSON.stringify(fine),
        JSON.stringify(deferredRows),
      ]);
      return num(rows[0]?.n);
    });
  }

  async revenueSummaryOf(account: string): Promise<RevenueSummaryOfAccount | null> {
    const figures = "paid, recognized, breakage, refunds, unbilled, catch_up";
    const days = (table: string, groups: string) =>
      `(SELECT json_agg(x) FROM (SELECT to_char(day, 'YYYY-MM-DD') AS day, ${groups}, ${figures} FROM ${table} WHERE user_id = $1) x)::text`;
    const [row] = await this.db.read(
      "revenueSummaryOf",
      `SELECT s.through_seq, s.state, ` +
        `${days(this.n.split, "currency, source, plan, feature, spender")} AS split, ${days(this.n.daily, "currency, source, plan")} AS days, ` +
        `(SELECT json_agg(x) FROM (SELECT currency, source, plan, deferred FROM ${this.n.deferred} WHERE user_id = $1) x)::text AS deferred ` +
        `FROM ${this.n.state} s WHERE s.user_id = $1`,
      [account],
    );
    if (row === undefined) return null;
    const dayRow = (r: Record<string, unknown>): RevenueDayRow => ({ day: dayMs(r.day)!, ...figuresOf(r) });
    return {
      checkpoint: {
        userId: account,
        throughSeq: num(row.through_seq),
        state: str(row.state),
      },
      split: jsonRows(row.split).map(dayRow),
      days: jsonRows(row.days).map(dayRow),
      deferred: jsonRows(row.deferred).map((r) => ({
        currency: String(r.currency),
        source: str(r.source),
        plan: str(r.plan),
        deferred: num(r.deferred),
      })),
    };
  }

  async readRevenue(query: {
    account: string | null;
    boundaries: readonly number[];
    groupBy: readonly RevenueDimension[];
  }): Promise<{ buckets: RevenueBucketRow[]; deferred: RevenueDeferredRow[] }> {
    const { boundaries, groupBy } = query;
    if (boundaries.some((b) => b % DAY !== 0)) throw new Error("revenue summary: boundaries must be UTC midnights");
    const params: unknown[] = [boundaries.map(dayText), dayText(boundaries[0]!)];
    const mine = query.account === null ? "" : ` AND user_id = $${params.push(query.account)}`;
    const col = (d: RevenueDimension) => (d === "account" ? "user_id" : d);
    const groups = ["currency", ...groupBy.map(col), "catch_up"];
    // Grouped by feature or spender: the finer days; else the days by currency and source.
    const days = groupBy.includes("feature") || groupBy.includes("spender") ? this.n.split : this.n.daily;
    const sums = ["paid", "recognized", "breakage", "refunds", "unbilled"].map((f) => `sum(${f}) AS ${f}`).join(", ");
    const deferredGroups = [
      "currency",
      ...groupBy.filter((d) => d === "account" || d === "source" || d === "plan").map(col),
    ];
    const of = query.account === null ? "" : " AND user_id = $3";
    // One statement, so one snapshot: the figures and deferred now agree with each other while a
    // concurrent report adds to the summary.
    const [row] = await this.db.read(
      "readRevenue",
      `SELECT (SELECT json_agg(b) FROM (SELECT width_bucket(day, $1::date[]) - 1 AS w, ${groups.join(", ")}, ${sums} ` +
        `FROM ${days} WHERE day >= $2::date${mine} GROUP BY 1, ${groups.join(", ")}) b)::text AS buckets, ` +
        `(SELECT json_agg(d) FROM (SELECT ${deferredGroups.join(", ")}, sum(deferred) AS deferred FROM ${this.n.deferred} ` +
        `WHERE true${of} GROUP BY ${deferredGroups.join(", ")}) d)::text AS deferred`,
      params,
    );
    const buckets = jsonRows(row?.buckets);
    const deferred = jsonRows(row?.deferred);
    return {
      buckets: buckets.map((r) => ({ window: num(r.w), account: str(r.user_id), ...figuresOf(r) })),
      deferred: deferred.map((r) => ({
        currency: String(r.currency),
        account: str(r.user_id),
        source: str(r.source),
        plan: str(r.plan),
        deferred: num(r.deferred),
      })),
    };
  }
}
