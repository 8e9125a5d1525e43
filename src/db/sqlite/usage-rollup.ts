import {
  groupValue,
  placedAt,
  USAGE_MEASURES,
  usageEntryTypes,
  usageParts,
  type UsageRollupRow,
  type UsageScan,
  type UsageSums,
} from "../../core/domain/usage.js";
import type { JournalEntry } from "../../core/models/index.js";
import type { UsageKind } from "../../core/models/usage.js";
import { sqliteRollupNames, type SqliteRollupNames } from "../../schema/sqlite-rollup.js";
import { rollupColumn, sqlMeasure } from "../../schema/usage-sql.js";
import type { RollupDays } from "../usage-query.js";
import type { Sqlite } from "./connection.js";

const DAY = 86_400_000;
/** Journal entries a catch-up reads and adds in one write transaction. */
const PAGE = 1000;
/** Passes of a catch-up at most (a pass runs again only when another connection moved a cursor first). */
const MAX_PASSES = 100;
/** The dimensions the rollup keeps besides the account. */
const KEPT = new Set(["account", "feature", "spender", "model"]);
const USAGE_TYPES = usageEntryTypes();

/**
 * A row's key of its dimensions: the JSON array of its feature, spender and model, and its unit
 * after them when it is not the default one (docs/units.md: each unit's usage is a row of its own).
 */
const dimsOf = (r: Pick<RollupRow, "feature" | "spender" | "model" | "unit">): string =>
  JSON.stringify(r.unit === null ? [r.feature, r.spender, r.model] : [r.feature, r.spender, r.model, r.unit]);
/** A rollup row's unit (of `r`), read back from its `dims`: NULL for the default unit. */
const UNIT = `json_extract(r."dims", '$[3]')`;

interface RollupRow extends UsageSums {
  day: string;
  kind: UsageKind;
  unit: string | null;
  feature: string | null;
  spender: string | null;
  model: string | null;
}

/**
 * SQLite's daily usage rollup (schema in src/schema/sqlite-rollup.ts; docs/usage.md, "The daily
 * rollup"): the unit of work that writes an account's entries adds them (`saved`, in its
 * transaction) while the account's cursor is at the seq it loaded; a report, the audit and
 * archival first catch up the accounts whose cursor is behind (`catchUp`), a page of entries a
 * write transaction, moving the cursor by a compare-and-set, so that every entry is counted once
 * whichever connection adds it. Off (`on` false) on a store without the tables (schema version 1).
 */
export class SqliteUsageRollup {
  on = false;
  readonly names: SqliteRollupNames;

  constructor(
    private readonly s: Sqlite,
    prefix: string | undefined,
  ) {
    this.names = sqliteRollupNames({ prefix });
  }

  /** Whether the store has the rollup's tables (after `init`). */
  detect(): void {
    const name = this.names.table.slice(1, -1).replace(/""/g, '"');
    this.on = this.s.all("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).length > 0;
  }

  /**
   * In the unit of work's write transaction: the account went from `previousSeq` (null: created)
   * to `seq` with `entries`; added when its cursor is at `previousSeq`, and moved to `seq`.
   */
  saved(s: Sqlite, userId: string, previousSeq: number | null, seq: number, entries: readonly JournalEntry[]): void {
    if (!this.on || entries.length === 0) return;
    if (this.move(s, userId, previousSeq ?? 0, seq)) this.add(s, userId, entries);
  }

  /** The cursor of `userId` from `from` to `to`, when it is at `from` (a new row when it has none and `from` is 0). */
  private move(s: Sqlite, userId: string, from: number, to: number): boolean {
    const { state } = this.names;
    if (from > 0)
      return (
        s.run(`UPDATE ${state} SET "through_seq" = ? WHERE "user_id" = ? AND "through_seq" = ?`, [to, userId, from]) ===
        1
      );
    return (
      s.run(
        `INSERT INTO ${state} ("user_id", "through_seq") VALUES (?, ?) ON CONFLICT ("user_id") ` +
          `DO UPDATE SET "through_seq" = excluded."through_seq" WHERE "through_seq" = 0`,
        [userId, to],
      ) === 1
    );
  }

  /** `entries` of `userId` summed by day, kind, feature, spender and model (`usageParts`), added to their rows. */
  private add(s: Sqlite, userId: string, entries: readonly JournalEntry[]): void {
    const rows = new Map<string, RollupRow>();
    for (const e of entries) {
      const parts = usageParts(e);
      if (parts.length === 0) continue;
      const day = new Date(placedAt(e)).toISOString().slice(0, 10);
      for (const p of parts) {
        const feature = groupValue("feature", userId, e, p);
        const spender = groupValue("spender", userId, e, p);
        const unit = e.unit ?? null;
        const key = JSON.stringify([day, p.kind, feature, spender, p.model, unit]);
        let row = rows.get(key);
        if (row === undefined) {
          row = {
            day,
            kind: p.kind,
            unit,
            feature,
            spender,
            model: p.model,
            credits: 0,
            requests: 0,
            inputTokens: 0,
            outputTokens: 0,
            cachedTokens: 0,
            shortfall: 0,
          };
          rows.set(key, row);
        }
        for (const m of USAGE_MEASURES) row[m] += p[m];
      }
    }
    const columns = USAGE_MEASURES.map((m) => `"${rollupColumn(m)}"`);
    const text =
      `INSERT INTO ${this.names.table} ("user_id", "day", "kind", "dims", "feature", "spender", "model", ${columns.join(", ")}) ` +
      `VALUES (?, ?, ?, ?, ?, ?, ?, ${columns.map(() => "?").join(", ")}) ON CONFLICT ("user_id", "day", "kind", "dims") ` +
      `DO UPDATE SET ${columns.map((c) => `${c} = ${c} + excluded.${c}`).join(", ")}`;
    for (const r of rows.values())
      s.run(text, [
        userId,
        r.day,
        r.kind,
        dimsOf(r),
        r.feature,
        r.spender,
        r.model,
        ...USAGE_MEASURES.map((m) => r[m]),
      ]);
  }

  /**
   * Adds to the rollup the entries past each account's cursor (`userId`'s only, when given), up to
   * its seq: a page of entries a write transaction, the event loop free between pages. When it
   * returns, each cursor is at least the account's seq of its start.
   */
  async catchUp(userId?: string): Promise<void> {
    if (!this.on) return;
    const accounts = this.s.t.accounts.qualified;
    const { state } = this.names;
    for (let pass = 1; pass <= MAX_PASSES; pass++) {
      const stale = this.s.all(
        `SELECT a."user_id" AS u, coalesce(s."through_seq", 0) AS f, a."seq" AS h FROM ${accounts} a ` +
          `LEFT JOIN ${state} s ON s."user_id" = a."user_id" WHERE a."seq" > coalesce(s."through_seq", 0)` +
          (userId === undefined ? "" : ` AND a."user_id" = ?`),
        userId === undefined ? [] : [userId],
      );
      if (stale.length === 0) return;
      let lost = false;
      for (const r of stale) {
        const user = String(r.u);
        const head = Number(r.h);
        let from = Number(r.f);
        while (from < head) {
          const page = this.s.list<JournalEntry>(
            "journal",
            `WHERE user_id = ? AND seq > ? AND seq <= ? AND type IN (${USAGE_TYPES.map(() => "?").join(", ")}) ORDER BY seq LIMIT ?`,
            [user, from, head, ...USAGE_TYPES, PAGE],
          );
          const to = page.length < PAGE ? head : page[page.length - 1]!.seq;
          const at = from;
          const moved = await this.s.patiently(() =>
            this.s.tx(() => {
              if (!this.move(this.s, user, at, to)) return false;
              this.add(this.s, user, page);
              return true;
            }, true),
          );
          if (!moved) {
            lost = true;
            break;
          }
          from = to;
          // Between pages, the event loop's turn.
          if (from < head) await new Promise((resolve) => setImmediate(resolve));
        }
      }
      if (!lost) return;
    }
    throw new Error(
      `[credit-management] [sqlite] the usage rollup's catch-up lost its compare-and-set ${MAX_PASSES} times in a row`,
    );
  }

  /** The rollup's rows of one account by day and kind, oldest day first (what `audit()` compares with the journal). */
  async rows(userId: string): Promise<UsageRollupRow[] | null> {
    if (!this.on) return null;
    await this.catchUp(userId);
    const sums = USAGE_MEASURES.map((m) => `total("${rollupColumn(m)}") AS ${sqlMeasure(m)}`).join(", ");
    return this.s
      .all(
        `SELECT "day", "kind", ${UNIT} AS unit, ${sums} FROM ${this.names.table} r WHERE "user_id" = ? ` +
          `GROUP BY "day", "kind", unit ORDER BY "day", "kind", unit`,
        [userId],
      )
      .map(
        (r) =>
          ({
            day: String(r.day),
            kind: r.kind as UsageKind,
            unit: r.unit === null || r.unit === undefined ? null : String(r.unit),
            ...Object.fromEntries(USAGE_MEASURES.map((m) => [m, Number(r[m])])),
          }) as UsageRollupRow,
      );
  }

  /**
   * The whole UTC days a report reads from the rollup, or null when it reads the journal: grouped
   * by nothing but the account, feature, spender and model, its windows made of whole UTC days,
   * holding at least one (as of an earlier seq, `throughSeq`, one account's only: `cursorSql`). The
   * partial days at the edges are read from the journal.
   */
  days(scan: UsageScan): RollupDays | null {
    if (scan.fromJournal === true || (scan.throughSeq !== undefined && scan.account === null)) return null;
    if (!this.on || scan.groupBy.some((d) => !KEPT.has(d))) return null;
    const b = scan.boundaries;
    for (let i = 1; i < b.length - 1; i++) if (b[i]! % DAY !== 0) return null;
    const from = Math.ceil(scan.from.getTime() / DAY) * DAY;
    const to = Math.floor(scan.to.getTime() / DAY) * DAY;
    return from < to ? { from, to } : null;
  }

  /** The SQL of the cursor of the report's account: the last seq its rows hold (0: none). */
  cursorSql(scan: UsageScan, p: (v: unknown) => string): string {
    return `coalesce((SELECT "through_seq" FROM ${this.names.state} WHERE "user_id" = ${p(scan.account)}), 0)`;
  }

  /** The rollup's rows of the whole days as rows of the usage query's `n` (each day in its window of `win`). */
  rowsSql(scan: UsageScan, days: RollupDays, q: { kindIn: (x: string) => string; p: (v: unknown) => string }): string {
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
    const groups = scan.groupBy.map((g, i) => {
      const column = g === "account" ? `r."user_id"` : `r."${g}"`;
      return `${column} AS g${i}`;
    });
    const at = `(r."day" || 'T00:00:00.000Z')`;
    const where = [`r."day" >= ${q.p(day(days.from))}`, `r."day" < ${q.p(day(days.to))}`, q.kindIn(`r."kind"`)];
    if (scan.account !== null) where.unshift(`r."user_id" = ${q.p(scan.account)}`);
    return (
      `UNION ALL SELECT ${["win.i AS w", `r."kind" AS kind`, `${UNIT} AS unit`, ...groups].join(", ")}, ` +
      `${USAGE_MEASURES.map((m) => `r."${rollupColumn(m)}" AS ${sqlMeasure(m)}`).join(", ")} ` +
      `FROM ${this.names.table} r JOIN win ON ${at} >= win.s AND ${at} < win.t WHERE ${where.join(" AND ")}) `
    );
  }
}
