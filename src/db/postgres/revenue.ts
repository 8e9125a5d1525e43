import type { RevenueDimension } from "../../models/revenue.js";
import { revenueNames, type RevenueNames } from "../../schema/revenue-pg.js";
import type { NamingOptions } from "../../schema/sql.js";
import type {
  RevenueBucketRow,
  RevenueCheckpoint,
  RevenueDayRow,
  RevenueDeferredRow,
  RevenueSummaryStore,
} from "../types-revenue.js";

/** What the summary needs of `PostgresDbManager`. */
interface Runner {
  read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]>;
}

const DAY = 86_400_000;
const dayText = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const dayMs = (v: unknown) => (v === null ? null : Date.parse(`${String(v)}T00:00:00Z`));
const num = (v: unknown) => Number(v ?? 0);
const str = (v: unknown) => (v === null || v === undefined ? null : String(v));

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
    const where = ["a.seq > coalesce(s.through_seq, 0)", "coalesce(s.disordered, false) = false"];
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
      `SELECT a.user_id, coalesce(s.through_seq, 0) AS through_seq, to_char(s.max_day, 'YYYY-MM-DD') AS max_day, s.state ` +
        `FROM ${this.accounts} a LEFT JOIN ${this.n.state} s ON s.user_id = a.user_id ` +
        `WHERE ${where.join(" AND ")} ORDER BY a.user_id LIMIT $1`,
      params,
    );
    return rows.map((r) => ({
      userId: String(r.user_id),
      throughSeq: num(r.through_seq),
      maxDay: dayMs(r.max_day),
      state: str(r.state),
    }));
  }

  async saveRevenue(
    fromSeq: number,
    c: RevenueCheckpoint,
    days: readonly RevenueDayRow[],
    deferred: readonly { currency: string; source: string | null; delta: number }[],
    disordered: boolean,
  ): Promise<boolean> {
    const { state, daily, deferred: deferredTable } = this.n;
    const dayRows = days.map((d) => ({
      day: dayText(d.day),
      grp: JSON.stringify([d.currency, d.source, d.feature, d.spender]),
      currency: d.currency,
      source: d.source,
      feature: d.feature,
      spender: d.spender,
      paid: d.paid,
      recognized: d.recognized,
      breakage: d.breakage,
      refunds: d.refunds,
      unbilled: d.unbilled,
    }));
    const deferredRows = deferred.map((d) => ({
      grp: JSON.stringify([d.currency, d.source]),
      currency: d.currency,
      source: d.source,
      delta: d.delta,
    }));
    const add = (t: string, cols: string[]) => cols.map((x) => `"${x}" = ${t}."${x}" + EXCLUDED."${x}"`).join(", ");
    const figures = ["paid", "recognized", "breakage", "refunds", "unbilled"];
    // One statement: the checkpoint moves only from `fromSeq` (a concurrent report's catch-up of
    // the same entries finds it moved and adds nothing), and the days and deferred changes are
    // written only with it.
    const text =
      `WITH st AS (INSERT INTO ${state} AS s (user_id, through_seq, max_day, disordered, state) ` +
      `VALUES ($1, $3, $4::date, $5, $6) ON CONFLICT (user_id) DO UPDATE SET through_seq = EXCLUDED.through_seq, ` +
      `max_day = EXCLUDED.max_day, disordered = EXCLUDED.disordered, state = EXCLUDED.state ` +
      `WHERE s.through_seq = $2 AND NOT s.disordered RETURNING 1), ` +
      `dd AS (DELETE FROM ${daily} WHERE $5 AND user_id = $1 AND EXISTS (SELECT 1 FROM st)), ` +
      `df AS (DELETE FROM ${deferredTable} WHERE $5 AND user_id = $1 AND EXISTS (SELECT 1 FROM st)), ` +
      `d AS (INSERT INTO ${daily} AS t (user_id, day, grp, currency, source, feature, spender, ${figures.join(", ")}) ` +
      `SELECT $1, x.day, x.grp, x.currency, x.source, x.feature, x.spender, ${figures.map((f) => `x.${f}`).join(", ")} ` +
      `FROM json_to_recordset($7::json) AS x(day date, grp text, currency text, source text, feature text, spender text, ` +
      `${figures.map((f) => `${f} bigint`).join(", ")}) WHERE EXISTS (SELECT 1 FROM st) ` +
      `ON CONFLICT (user_id, day, grp) DO UPDATE SET ${add("t", figures)}), ` +
      `f AS (INSERT INTO ${deferredTable} AS t (user_id, grp, currency, source, deferred) ` +
      `SELECT $1, x.grp, x.currency, x.source, x.delta FROM json_to_recordset($8::json) AS x(grp text, currency text, source text, delta bigint) ` +
      `WHERE EXISTS (SELECT 1 FROM st) ON CONFLICT (user_id, grp) DO UPDATE SET deferred = t.deferred + EXCLUDED.deferred) ` +
      `SELECT count(*)::int AS n FROM st`;
    const rows = await this.db.read("saveRevenue", text, [
      c.userId,
      fromSeq,
      c.throughSeq,
      c.maxDay === null ? null : dayText(c.maxDay),
      disordered,
      disordered ? null : c.state,
      JSON.stringify(disordered ? [] : dayRows),
      JSON.stringify(disordered ? [] : deferredRows),
    ]);
    return num(rows[0]?.n) === 1;
  }

  async readRevenue(query: {
    account: string | null;
    boundaries: readonly number[];
    groupBy: readonly RevenueDimension[];
  }): Promise<{ buckets: RevenueBucketRow[]; deferred: RevenueDeferredRow[]; disordered: string[] }> {
    const { boundaries, groupBy } = query;
    if (boundaries.some((b) => b % DAY !== 0)) throw new Error("revenue summary: boundaries must be UTC midnights");
    const params: unknown[] = [boundaries.map(dayText), dayText(boundaries[0]!)];
    const mine = query.account === null ? "" : ` AND user_id = $${params.push(query.account)}`;
    const col = (d: RevenueDimension) => (d === "account" ? "user_id" : d);
    const groups = ["currency", ...groupBy.map(col)];
    const sums = ["paid", "recognized", "breakage", "refunds", "unbilled"].map((f) => `sum(${f}) AS ${f}`).join(", ");
    const deferredGroups = ["currency", ...groupBy.filter((d) => d === "account" || d === "source").map(col)];
    const of = query.account === null ? "" : " AND user_id = $3";
    // One statement, so one snapshot: the figures and deferred now agree with each other while a
    // concurrent report adds to the summary.
    const [row] = await this.db.read(
      "readRevenue",
      `SELECT (SELECT json_agg(b) FROM (SELECT width_bucket(day, $1::date[]) - 1 AS w, ${groups.join(", ")}, ${sums} ` +
        `FROM ${this.n.daily} WHERE day >= $2::date${mine} GROUP BY 1, ${groups.join(", ")}) b)::text AS buckets, ` +
        `(SELECT json_agg(d) FROM (SELECT ${deferredGroups.join(", ")}, sum(deferred) AS deferred FROM ${this.n.deferred} ` +
        `WHERE true${of} GROUP BY ${deferredGroups.join(", ")}) d)::text AS deferred, ` +
        `(SELECT json_agg(user_id) FROM ${this.n.state} WHERE disordered${of})::text AS disordered`,
      params,
    );
    const parse = (v: unknown) => (typeof v === "string" ? (JSON.parse(v) as Record<string, unknown>[]) : []);
    const buckets = parse(row?.buckets);
    const deferred = parse(row?.deferred);
    const disordered = parse(row?.disordered) as unknown as string[];
    return {
      buckets: buckets.map((r) => ({
        window: num(r.w),
        currency: str(r.currency),
        account: str(r.user_id),
        source: str(r.source),
        feature: str(r.feature),
        spender: str(r.spender),
        paid: num(r.paid),
        recognized: num(r.recognized),
        breakage: num(r.breakage),
        refunds: num(r.refunds),
        unbilled: num(r.unbilled),
      })),
      deferred: deferred.map((r) => ({
        currency: String(r.currency),
        account: str(r.user_id),
        source: str(r.source),
        deferred: num(r.deferred),
      })),
      disordered: disordered.map(String),
    };
  }
}
