import type { Notification } from "../../core/models/index.js";
import type { ClaimQuery, NotificationUpdate, OutboxQuery } from "../../core/db/types-notifications.js";
import type { PostgresDbManager } from "./index.js";
import { list } from "./reads.js";
import { output, routedInsert, toRow } from "./sql.js";

/**
 * The PostgreSQL outbox. Rows of a unit of work are inserted by its save statement (the `n` part
 * of the payload); these are the statements outside units of work.
 */
export class PostgresOutbox {
  constructor(private readonly db: PostgresDbManager) {}

  private get table() {
    return this.db.sql.tables.notifications;
  }

  /**
   * `ON CONFLICT DO NOTHING`: a row whose (user, dedupe key) is taken is skipped. On Citus, one
   * statement per user of `VALUES` rows, each routed to its user's shard and committed there (an
   * `INSERT … SELECT` from the JSON would be run by the coordinator, in two phases across the
   * workers: docs/scaling-out.md); a failure leaves the users before it stored, which a retry
   * skips by their dedupe keys.
   */
  async insertNotifications(rows: readonly Notification[]): Promise<number> {
    if (rows.length === 0) return 0;
    const t = this.table;
    const json = (list: readonly Notification[]) => JSON.stringify(list.map((r) => toRow(t.columns, r)));
    if (this.db.sql.distributed) {
      const byUser = new Map<string, Notification[]>();
      for (const r of rows) byUser.set(r.userId, [...(byUser.get(r.userId) ?? []), r]);
      let stored = 0;
      for (const list of byUser.values()) {
        const text = `${routedInsert(t, "$1::json", list.length)} ON CONFLICT DO NOTHING RETURNING 1`;
        stored += (await this.db.read("insertNotifications", text, [json(list)])).length;
      }
      return stored;
    }
    const columns = t.columns.map((c) => `"${c.name}"`).join(", ");
    const text =
      `INSERT INTO ${t.qualified} (${columns}) SELECT ${columns} FROM json_populate_recordset(NULL::${t.qualified}, $1::json) ` +
      `ON CONFLICT DO NOTHING RETURNING 1`;
    const out = await this.db.read("insertNotifications", text, [json(rows)]);
    return out.length;
  }

  /**
   * One statement: the oldest pending row of each user (no older pending row of the same user
   * exists), if due and not claimed, locked with `FOR UPDATE SKIP LOCKED` so that concurrent
   * dispatchers take disjoint rows, then stamped with the claim. The pick is a `MATERIALIZED` CTE:
   * as a sub-select of the UPDATE (`WHERE id IN (SELECT … LIMIT n)`) the planner may run it again
   * for every row it updates, and every run skips the rows the last one locked, so `LIMIT` bounded
   * nothing (8 due rows, limit 3: 8 claimed). The re-check of the claim in the UPDATE covers a row
   * another dispatcher claimed and committed between our scan and our lock.
   */
  async claimNotifications(q: ClaimQuery): Promise<Notification[]> {
    if (q.limit <= 0) return [];
    if (this.db.sql.distributed) return this.claimDistributed(q);
    const t = this.table.qualified;
    // With `types`: rows of those types through `pending_due`, no per-user order (ClaimQuery.types).
    const which =
      q.types === undefined
        ? `AND NOT EXISTS (SELECT 1 FROM ${t} p WHERE p.user_id = o.user_id AND p.status = 'pending' AND p.id < o.id) `
        : `AND o.type = ANY($5::text[]) `;
    const text =
      `WITH picked AS MATERIALIZED (` +
      `SELECT o.id FROM ${t} o WHERE o.status = 'pending' AND o.next_attempt_at <= $1 ` +
      `AND (o.claimed_until IS NULL OR o.claimed_until <= $1) ` +
      which +
      `ORDER BY o.next_attempt_at, o.id LIMIT $4 FOR UPDATE SKIP LOCKED) ` +
      `UPDATE ${t} n SET claimed_until = $2, claim_token = $3 FROM picked WHERE n.id = picked.id ` +
      `AND n.status = 'pending' AND (n.claimed_until IS NULL OR n.claimed_until <= $1) RETURNING ${output(this.table, "n")}`;
    const rows = await this.db.read("claimNotifications", text, [
      q.now,
      new Date(q.now.getTime() + q.leaseMs),
      q.token,
      q.limit,
      ...(q.types === undefined ? [] : [[...q.types]]),
    ]);
    return this.claimed(rows);
  }

  /**
   * Citus, which locks no rows across shards (`FOR UPDATE` of a scan of every shard): the due
   * rows are picked by a plain scan, then claimed by one UPDATE of those rows (on their users'
   * shards) that re-checks the claim on each row as it locks it, so two dispatchers never claim
   * one row: the one that comes second finds it claimed and skips it (docs/scaling-out.md).
   */
  private async claimDistributed(q: ClaimQuery): Promise<Notification[]> {
    const t = this.table.qualified;
    const which =
      q.types === undefined
        ? `AND NOT EXISTS (SELECT 1 FROM ${t} p WHERE p.user_id = o.user_id AND p.status = 'pending' AND p.id < o.id) `
        : `AND o.type = ANY($3::text[]) `;
    const picked = await this.db.read(
      "claimNotifications",
      `SELECT o.id, o.user_id FROM ${t} o WHERE o.status = 'pending' AND o.next_attempt_at <= $1 ` +
        `AND (o.claimed_until IS NULL OR o.claimed_until <= $1) ${which}ORDER BY o.next_attempt_at, o.id LIMIT $2`,
      [q.now, q.limit, ...(q.types === undefined ? [] : [[...q.types]])],
    );
    if (picked.length === 0) return [];
    const rows = await this.db.read(
      "claimNotifications",
      `WITH c AS (UPDATE ${t} n SET claimed_until = $2, claim_token = $3 WHERE n.user_id = ANY($4::text[]) AND n.id = ANY($5::text[]) ` +
        `AND n.status = 'pending' AND (n.claimed_until IS NULL OR n.claimed_until <= $1) RETURNING n.*) ` +
        `SELECT ${output(this.table, "c")} FROM c`,
      [
        q.now,
        new Date(q.now.getTime() + q.leaseMs),
        q.token,
        [...new Set(picked.map((r) => r.user_id as string))],
        picked.map((r) => r.id as string),
      ],
    );
    return this.claimed(rows);
  }

  /** Claimed rows, decoded, in the order they were picked (an UPDATE returns them in any order). */
  private claimed(rows: Record<string, unknown>[]): Notification[] {
    return rows
      .map((r) => this.db.decode<Notification>("notifications", r))
      .sort((a, b) => a.nextAttemptAt.getTime() - b.nextAttemptAt.getTime() || (a.id < b.id ? -1 : 1));
  }

  async completeNotification(id: string, token: string, u: NotificationUpdate, userId?: string): Promise<boolean> {
    const text =
      `UPDATE ${this.table.qualified} SET status = $3, attempts = $4, next_attempt_at = $5, last_error = $6, settled_at = $7, ` +
      `claimed_until = NULL, claim_token = NULL WHERE id = $1 AND claim_token = $2 AND status = 'pending'` +
      (userId === undefined ? "" : " AND user_id = $8") +
      " RETURNING 1";
    const rows = await this.db.read("completeNotification", text, [
      id,
      token,
      u.status,
      u.attempts,
      u.nextAttemptAt,
      u.lastError,
      u.settledAt,
      ...(userId === undefined ? [] : [userId]),
    ]);
    return rows.length === 1;
  }

  async purgeNotifications(before: Date, limit: number): Promise<number> {
    if (limit <= 0) return 0;
    const t = this.table.qualified;
    const rows = await this.db.read(
      "purgeNotifications",
      // A MATERIALIZED pick, as in claim(): the LIMIT bounds what one call deletes.
      `WITH picked AS MATERIALIZED (SELECT id FROM ${t} WHERE settled_at IS NOT NULL AND settled_at < $1 AND status <> 'pending' ` +
        `ORDER BY settled_at LIMIT $2) DELETE FROM ${t} d USING picked WHERE d.id = picked.id RETURNING 1`,
      [before, limit],
    );
    return rows.length;
  }

  /** Pending rows through `pending_due`, failed ones through `settled` (docs/console.md). */
  async listOutbox(q: OutboxQuery): Promise<Notification[]> {
    if (q.limit <= 0) return [];
    const pending = q.status === "pending";
    const col = pending ? "next_attempt_at" : "settled_at";
    const params: unknown[] = [q.limit];
    let where = pending ? "status = 'pending'" : "settled_at IS NOT NULL AND status = 'failed'";
    if (q.after !== undefined) {
      params.push(q.after.at, q.after.id);
      where += pending ? ` AND (${col}, id) > ($2, $3)` : ` AND (${col}, id) < ($2, $3)`;
    }
    const dir = pending ? "ASC" : "DESC";
    return list(
      this.db,
      "listOutbox",
      "notifications",
      `WHERE ${where} ORDER BY ${col} ${dir}, id ${dir} LIMIT $1`,
      params,
    );
  }

  listNotifications(
    userId: string,
    query: { status?: Notification["status"]; limit: number },
  ): Promise<Notification[]> {
    const params: unknown[] = [userId];
    let where = "user_id = $1";
    if (query.status !== undefined) {
      params.push(query.status);
      where += " AND status = $2";
    }
    params.push(query.limit);
    return list(
      this.db,
      "listNotifications",
      "notifications",
      `WHERE ${where} ORDER BY id LIMIT $${params.length}`,
      params,
    );
  }
}
