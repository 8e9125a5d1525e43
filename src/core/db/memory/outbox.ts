import type { Notification } from "../../models/index.js";
import { completedFields, type ClaimQuery, type NotificationUpdate, type OutboxQuery } from "../types-notifications.js";

/**
 * The in-memory outbox: rows by id, each user's pending ids in id order, and the used dedupe keys.
 * Every method is synchronous inside, so a claim is atomic between concurrent dispatchers.
 */
export class MemoryOutbox {
  private readonly rows = new Map<string, Notification>();
  /** userId → ids of pending rows, ascending. */
  private readonly pending = new Map<string, string[]>();
  private readonly keys = new Set<string>();
  /** userId → ids of every row, in insertion order. */
  private readonly byUser = new Map<string, string[]>();

  /** Pending and failed rows, and the oldest pending row's creation (`DbManager.stats`). */
  stats(): { pending: number; failed: number; oldestPendingAt: Date | null } {
    let pending = 0;
    let failed = 0;
    let oldest: Date | null = null;
    for (const r of this.rows.values()) {
      if (r.status === "failed") failed++;
      else if (r.status === "pending") {
        pending++;
        if (oldest === null || r.createdAt.getTime() < oldest.getTime()) oldest = r.createdAt;
      }
    }
    return { pending, failed, oldestPendingAt: oldest === null ? null : new Date(oldest) };
  }

  /** True when the row may be stored (its dedupe key is unused). */
  accepts(row: Notification): boolean {
    return row.dedupeKey === null || !this.keys.has(dedupe(row));
  }

  /** Stores rows; rows whose dedupe key is used are skipped. Returns how many were stored. */
  insertNotifications(rows: readonly Notification[]): number {
    let n = 0;
    for (const row of rows) {
      if (!this.accepts(row) || this.rows.has(row.id)) continue;
      if (row.dedupeKey !== null) this.keys.add(dedupe(row));
      const r = structuredClone(row);
      this.rows.set(r.id, r);
      let all = this.byUser.get(r.userId);
      if (all === undefined) this.byUser.set(r.userId, (all = []));
      all.push(r.id);
      if (r.status === "pending") {
        let ids = this.pending.get(r.userId);
        if (ids === undefined) this.pending.set(r.userId, (ids = []));
        let i = ids.length;
        while (i > 0 && (ids[i - 1] as string) > r.id) i--;
        ids.splice(i, 0, r.id);
      }
      n++;
    }
    return n;
  }

  claimNotifications(q: ClaimQuery): Notification[] {
    const now = q.now.getTime();
    const heads: Notification[] = [];
    const due = (row: Notification) =>
      row.nextAttemptAt.getTime() <= now && (row.claimedUntil === null || row.claimedUntil.getTime() <= now);
    for (const ids of this.pending.values()) {
      if (q.types !== undefined) {
        // Rows of these types, each due one: no per-user order (ClaimQuery.types).
        for (const id of ids) {
          const row = this.rows.get(id) as Notification;
          if (q.types.includes(row.type) && due(row)) heads.push(row);
        }
        continue;
      }
      const head = this.rows.get(ids[0] as string) as Notification;
      if (due(head)) heads.push(head);
    }
    heads.sort((a, b) => a.nextAttemptAt.getTime() - b.nextAttemptAt.getTime() || (a.id < b.id ? -1 : 1));
    return heads.slice(0, q.limit).map((h) => {
      const claimed = { ...h, claimedUntil: new Date(now + q.leaseMs), claimToken: q.token };
      this.rows.set(h.id, claimed);
      return structuredClone(claimed);
    });
  }

  completeNotification(id: string, token: string, u: NotificationUpdate): boolean {
    const row = this.rows.get(id);
    if (row === undefined || row.status !== "pending" || row.claimToken !== token) return false;
    const next: Notification = { ...row, ...completedFields(u) };
    this.rows.set(id, next);
    if (u.status !== "pending") {
      const ids = this.pending.get(row.userId) as string[];
      ids.splice(ids.indexOf(id), 1);
      if (ids.length === 0) this.pending.delete(row.userId);
    }
    return true;
  }

  purgeNotifications(before: Date, limit: number): number {
    const t = before.getTime();
    const gone: Notification[] = [];
    for (const r of this.rows.values()) {
      if (gone.length >= limit) break;
      if (r.status !== "pending" && r.settledAt !== null && r.settledAt.getTime() < t) gone.push(r);
    }
    for (const r of gone) {
      this.rows.delete(r.id);
      if (r.dedupeKey !== null) this.keys.delete(dedupe(r));
      const all = this.byUser.get(r.userId) as string[];
      all.splice(all.indexOf(r.id), 1);
      if (all.length === 0) this.byUser.delete(r.userId);
    }
    return gone.length;
  }

  /**
   * Pending rows by (nextAttemptAt, id), failed ones by (settledAt, id) descending: a scan of the
   * rows (this store keeps no index by time for the outbox; it holds what fits in memory).
   */
  listOutbox(q: OutboxQuery): Notification[] {
    const pending = q.status === "pending";
    const at = (r: Notification) => (pending ? r.nextAttemptAt : (r.settledAt as Date)).getTime();
    const after = q.after === undefined ? null : { at: q.after.at.getTime(), id: q.after.id };
    const out: Notification[] = [];
    for (const r of this.rows.values()) {
      if (r.status !== q.status || (!pending && r.settledAt === null)) continue;
      if (after !== null) {
        const t = at(r);
        const later = pending
          ? t > after.at || (t === after.at && r.id > after.id)
          : t < after.at || (t === after.at && r.id < after.id);
        if (!later) continue;
      }
      out.push(r);
    }
    const sign = pending ? 1 : -1;
    return out
      .sort((a, b) => sign * (at(a) - at(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)))
      .slice(0, Math.max(0, q.limit))
      .map((r) => structuredClone(r));
  }

  listNotifications(userId: string, query: { status?: Notification["status"]; limit: number }): Notification[] {
    const out: Notification[] = [];
    for (const id of this.byUser.get(userId) ?? []) {
      const r = this.rows.get(id) as Notification;
      if (query.status === undefined || r.status === query.status) out.push(r);
    }
    return out
      .sort((a, b) => (a.id < b.id ? -1 : 1))
      .slice(0, query.limit)
      .map((r) => structuredClone(r));
  }
}

const dedupe = (row: Notification) => `${row.userId}\u0000${row.dedupeKey}`;
