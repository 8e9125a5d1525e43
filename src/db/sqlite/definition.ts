import { ConflictError } from "../../core/errors.js";
import type {
  Account,
  Grant,
  JournalEntry,
  LedgerEntry,
  Notification,
  Plan,
  Reservation,
  Subscription,
} from "../../models-entry.js";
import { SYSTEM_KEY_PREFIX } from "../../core/models/common.js";
import type { StoreDefinition } from "../store/define.js";
import { origin } from "../../core/db/store/errors.js";
import type { JournalQuery, LedgerQuery, ScanCursor } from "../../core/db/types.js";
import type { ClaimQuery, NotificationUpdate, OutboxQuery } from "../../core/db/types-notifications.js";
import type { SubscriptionCursor } from "../../core/db/types-subscriptions.js";
import type { UsageScan } from "../../core/domain/usage.js";
import type { TableKey } from "../../schema/tables.js";
import { SQLITE_QUERY, usageBucket, usageQuery } from "../usage-query.js";
import { type SqliteDbManagerOptions, batchUnits, lockableFile } from "./options.js";
import type { Sqlite } from "./connection.js";
import { SqliteReader } from "./reader.js";
import { Locker, SqliteAttempt, isConflict } from "./unit.js";
import { ModuleParts } from "../../core/db/module-part.js";
import { bindSqlite, type SqliteBoundPart } from "./module-part.js";
import { SqliteUsageRollup } from "./usage-rollup.js";
import { SqliteBatches } from "./batch.js";

// The SQLite store's `defineStore` definition (docs/storage.md, SQLite): each method one
// statement or one transaction, run again while the file is locked.

/** SQL conditions and their parameters, built one by one. */
function conditions() {
  const where: string[] = [];
  const params: unknown[] = [];
  const add = (condition: string, ...values: unknown[]) => {
    where.push(condition);
    params.push(...values);
  };
  return { where, params, add };
}

/** `(col, id) > (at, id)`: resume a scan ordered by (col, id) strictly after a cursor. */
const after = (col: string, cursor: { at: Date; id: string } | undefined): [string, unknown[]] =>
  cursor === undefined ? ["", []] : [` AND (${col} > ? OR (${col} = ? AND id > ?))`, [cursor.at, cursor.at, cursor.id]];

export function definition(s: Sqlite, options: SqliteDbManagerOptions): StoreDefinition {
  const count = (text: string, params: unknown[]) => Number(s.all(text, params)[0]?.n ?? 0);
  /** A row by its id (and its owner's, when `userId` is given). */
  const byId = <T>(table: TableKey, id: string, userId: string | undefined) =>
    userId === undefined
      ? s.one<T>(table, "WHERE id = ?", [id])
      : s.one<T>(table, "WHERE user_id = ? AND id = ?", [userId, id]);
  const unique = (what: string, run: () => unknown) => {
    try {
      run();
    } catch (error) {
      if (isConflict(error)) throw new ConflictError(origin("sqlite", what), undefined, error);
      throw error;
    }
  };
  // Each method is one statement or one transaction: run again while the file is locked.
  const patient = <T extends object>(part: T): T =>
    Object.fromEntries(
      Object.entries(part).map(([key, f]) => [
        key,
        typeof f === "function" && key !== "begin" && key !== "beginLocked"
          ? (...args: unknown[]) => s.patiently(() => (f as (...a: unknown[]) => unknown)(...args))
          : f,
      ]),
    ) as T;
  const file = lockableFile(options);
  // docs/usage.md, "The daily rollup": kept from schema version 2 (src/db/sqlite/usage-rollup.ts).
  const rollup = new SqliteUsageRollup(s, options.tablePrefix);
  // The modules' parts (./module-part.ts), bound on the store's connection.
  const modules = new ModuleParts<SqliteBoundPart>();
  const locker = file === null ? null : new Locker(options, file, s.driver ?? "better-sqlite3", rollup, modules);
  const reader = new SqliteReader(file, s.driver ?? "better-sqlite3");
  // Group commit (./batch.ts); `batch: false`: a write transaction per unit of work.
  const units = batchUnits(options);
  const batches = units === null ? undefined : new SqliteBatches(s, units);
  const store: StoreDefinition = {
    name: "sqlite",
    multiProcess: true,
    maxAttempts: options.maxAttempts ?? (locker === null ? 10 : 3),
    init: async () => {
      await s.init();
      rollup.detect();
      // The modules' tables, after the store's own, each part in one write transaction.
      if (options.migrate !== false)
        for (const { part } of modules.bound) await s.patiently(() => s.tx(() => part.migrate?.(s), true));
    },
    close: async () => {
      locker?.close();
      await reader.close();
      s.close();
    },
    accounts: {
      begin: (userId) => new SqliteAttempt(s, userId, undefined, rollup, modules, batches),
      ...(locker !== null && { beginLocked: (userId: string) => locker.begin(userId) }),
      getAccount: (userId) => s.one<Account>("accounts", "WHERE user_id = ?", [userId]),
      getAccountCredits: (userId) => {
        const account = s.one<Account>("accounts", "WHERE user_id = ?", [userId]);
        if (account?.scoped !== true) return { account, grants: null };
        // A scoped account: read again with its open grants in one transaction (one snapshot:
        // another connection may have written since).
        return s.tx(() => {
          const now = s.one<Account>("accounts", "WHERE user_id = ?", [userId]);
          const grants =
            now?.scoped === true
              ? s.list<Grant>("grants", "WHERE user_id = ? AND remaining > 0 AND closed_at IS NULL", [userId])
              : null;
          return { account: now, grants };
        });
      },
      getGrant: (id, userId) => byId<Grant>("grants", id, userId),
      getReservation: (id, userId) => byId<Reservation>("reservations", id, userId),
      listGrants: (userId, o) =>
        s.list<Grant>(
          "grants",
          `WHERE user_id = ?${o?.includeInactive ? "" : " AND remaining > 0 AND closed_at IS NULL"} ORDER BY created_at, rowid`,
          [userId],
        ),
      listReservations: (userId, o) =>
        o?.status === undefined
          ? s.list<Reservation>("reservations", "WHERE user_id = ? ORDER BY created_at, rowid", [userId])
          : s.list<Reservation>("reservations", "WHERE user_id = ? AND status = ? ORDER BY created_at, rowid", [
              userId,
              o.status,
            ]),
      listAccountIds: (from, limit) =>
        s
          .all(`SELECT user_id FROM ${s.t.accounts.qualified} WHERE user_id > ? ORDER BY user_id LIMIT ?`, [
            from ?? "",
            limit,
          ])
          .map((r) => r.user_id as string),
      findDueGrants: (asOf: Date, limit: number, cursor?: ScanCursor) => {
        const [more, params] = after("expires_at", cursor && { at: cursor.expiresAt, id: cursor.id });
        return s.list<Grant>(
          "grants",
          `WHERE remaining > 0 AND closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?${more} ORDER BY expires_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
      findExpiredReservations: (asOf: Date, limit: number, cursor?: ScanCursor) => {
        const [more, params] = after("expires_at", cursor && { at: cursor.expiresAt, id: cursor.id });
        return s.list<Reservation>(
          "reservations",
          `WHERE status = 'active' AND expires_at <= ?${more} ORDER BY expires_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
    },
    journal: {
      listJournal: (userId, q: JournalQuery) => {
        const { where, params, add } = conditions();
        add("user_id = ?", userId);
        if (q.order === "desc" && q.beforeSeq !== undefined) add("seq < ?", q.beforeSeq);
        if (q.order === "asc" && q.afterSeq !== undefined) add("seq > ?", q.afterSeq);
        if (q.types !== undefined) add(`type IN (${q.types.map(() => "?").join(", ") || "NULL"})`, ...q.types);
        // When the money moved (docs/concepts.md, "Two times on every entry"); never after created_at.
        if (q.from !== undefined) add("created_at >= ? AND coalesce(occurred_at, created_at) >= ?", q.from, q.from);
        if (q.to !== undefined) add("coalesce(occurred_at, created_at) < ?", q.to);
        return s.list<JournalEntry>(
          "journal",
          `WHERE ${where.join(" AND ")} ORDER BY seq ${q.order === "desc" ? "DESC" : "ASC"} LIMIT ?`,
          [...params, q.limit],
        );
      },
      // docs/usage.md: aggregated here, only the groups come back; on the reader thread
      // (docs/storage.md, "Reports off the event loop").
      // The whole UTC days from the daily rollup, caught up first, when the report's windows and
      // groups allow (docs/usage.md, "The daily rollup").
      usage: async (scan: UsageScan) => {
        const days = rollup.days(scan);
        if (days !== null) await rollup.catchUp(scan.account ?? undefined);
        const { text, params } = usageQuery(
          SQLITE_QUERY,
          s.t.journal.qualified,
          scan,
          undefined,
          days === null
            ? undefined
            : { days, rows: (q) => rollup.rowsSql(scan, days, q), cursor: (p) => rollup.cursorSql(scan, p) },
        );
        const rows = await reader.all(text, params, () => s.patiently(() => s.once(text, params)));
        return rows.map((r) => usageBucket(r, scan));
      },
      // The key moves to forgotten_key: out of the unique index, still part of the entry.
      forgetIdempotencyKeys: (before: Date, limit: number) => {
        const t = s.t.journal.qualified;
        return s.run(
          `UPDATE ${t} SET forgotten_key = idempotency_key, idempotency_key = NULL WHERE (user_id, seq) IN ` +
            `(SELECT user_id, seq FROM ${t} WHERE idempotency_key IS NOT NULL AND created_at < ? ` +
            `AND substr(idempotency_key, 1, ${SYSTEM_KEY_PREFIX.length}) <> ? LIMIT ?)`,
          [before, SYSTEM_KEY_PREFIX, limit],
        );
      },
      // docs/operations.md, "Checkpoints and archival": after archiveJournal wrote them to a file.
      // The rollup keeps the days it empties: their entries are added to it first.
      deleteJournalBefore: async (userId: string, beforeSeq: number) => {
        await rollup.catchUp(userId);
        return s.run(`DELETE FROM ${s.t.journal.qualified} WHERE user_id = ? AND seq < ?`, [userId, beforeSeq]);
      },
      usageRollup: (userId: string) => rollup.rows(userId),
      insertLedgerEntry: (entry: LedgerEntry) => void s.insert("ledger", [entry]),
      listLedgerEntries: (q: LedgerQuery) => {
        const { where, params, add } = conditions();
        if (q.eventType !== undefined) add("event_type = ?", q.eventType);
        if (q.userId !== undefined) add("user_id = ?", q.userId);
        if (q.before !== undefined && q.beforeId !== undefined) {
          // The same instant as the previous page's last entry: those inserted before it.
          where.push(
            `(created_at < ? OR (created_at = ? AND rowid < coalesce((SELECT rowid FROM ${s.t.ledger.qualified} WHERE id = ?), 0)))`,
          );
          params.push(q.before, q.before, q.beforeId);
        } else if (q.before !== undefined) add("created_at < ?", q.before);
        return s.list<LedgerEntry>(
          "ledger",
          `${where.length > 0 ? `WHERE ${where.join(" AND ")} ` : ""}ORDER BY created_at DESC, rowid DESC LIMIT ?`,
          [...params, q.limit],
        );
      },
    },
    subscriptions: {
      insertPlan: (plan: Plan) => unique(`plan ${plan.id} already exists`, () => s.insert("plans", [plan])),
      getPlan: (id) => s.one<Plan>("plans", "WHERE id = ?", [id]),
      listPlans: (o) => s.list<Plan>("plans", `${o.includeInactive ? "" : "WHERE is_active = 1 "}ORDER BY id`),
      updatePlan: (plan, expected) => s.update("plans", plan, " AND version = ?", [expected]),
      deletePlan: (id, expected) =>
        s.run(`DELETE FROM ${s.t.plans.qualified} WHERE id = ? AND version = ?`, [id, expected]) === 1,
      planHasSubscribers: (id) =>
        count(
          `SELECT count(*) AS n FROM ${s.t.subscriptions.qualified} WHERE status = 'active' AND (plan_id = ? OR pending_plan_id = ?)`,
          [id, id],
        ) > 0,
      insertSubscription: (sub: Subscription) =>
        unique(`user ${sub.userId} already has an active subscription`, () => s.insert("subscriptions", [sub])),
      getSubscription: (id, userId) => byId<Subscription>("subscriptions", id, userId),
      getActiveSubscription: (userId) =>
        s.one<Subscription>("subscriptions", "WHERE user_id = ? AND status = 'active'", [userId]),
      listSubscriptions: (userId) =>
        s.list<Subscription>("subscriptions", "WHERE user_id = ? ORDER BY created_at, id", [userId]),
      updateSubscription: (sub, expected) => {
        let done = false;
        unique(
          `user ${sub.userId} already has an active subscription`,
          () => (done = s.update("subscriptions", sub, " AND version = ?", [expected])),
        );
        return done;
      },
      findDueSubscriptions: (asOf: Date, limit: number, cursor?: SubscriptionCursor) => {
        const [more, params] = after("next_run_at", cursor && { at: cursor.nextRunAt, id: cursor.id });
        return s.list<Subscription>(
          "subscriptions",
          `WHERE next_run_at IS NOT NULL AND next_run_at <= ?${more} ORDER BY next_run_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
    },
    outbox: {
      insertNotifications: (rows: readonly Notification[]) => s.tx(() => s.insert("notifications", rows, true), true),
      claimNotifications: (q: ClaimQuery) => {
        if (q.limit <= 0) return [];
        const t = s.t.notifications.qualified;
        const until = new Date(q.now.getTime() + q.leaseMs);
        return s.tx(() => {
          // Only the oldest pending row of each user, so a user's events go out in id order; with
          // `types`, every due row of those types (ClaimQuery.types).
          const types = q.types ?? [];
          const which =
            q.types === undefined
              ? `AND NOT EXISTS (SELECT 1 FROM ${t} p WHERE p.user_id = ${t}.user_id AND p.status = 'pending' AND p.id < ${t}.id) `
              : `AND type IN (${types.map(() => "?").join(", ") || "NULL"}) `;
          const picked = s.list<Notification>(
            "notifications",
            `WHERE status = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?) ` +
              `${which}ORDER BY next_attempt_at, id LIMIT ?`,
            [q.now, q.now, ...types, q.limit],
          );
          for (const n of picked)
            s.run(`UPDATE ${t} SET claimed_until = ?, claim_token = ? WHERE id = ?`, [until, q.token, n.id]);
          return picked.map((n) => ({ ...n, claimedUntil: until, claimToken: q.token }));
        }, true);
      },
      completeNotification: (id, token, u: NotificationUpdate) =>
        s.run(
          `UPDATE ${s.t.notifications.qualified} SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, settled_at = ?, claimed_until = NULL, claim_token = NULL WHERE id = ? AND claim_token = ? AND status = 'pending'`,
          [u.status, u.attempts, u.nextAttemptAt, u.lastError, u.settledAt, id, token],
        ) === 1,
      purgeNotifications: (before, limit) =>
        limit <= 0
          ? 0
          : s.run(
              `DELETE FROM ${s.t.notifications.qualified} WHERE id IN (SELECT id FROM ${s.t.notifications.qualified} WHERE settled_at IS NOT NULL AND settled_at < ? AND status <> 'pending' ORDER BY settled_at LIMIT ?)`,
              [before, limit],
            ),
      // Pending rows through the pending_due index, failed ones through settled (docs/console.md).
      listOutbox: (q: OutboxQuery) => {
        if (q.limit <= 0) return [];
        const pending = q.status === "pending";
        const col = pending ? "next_attempt_at" : "settled_at";
        const dir = pending ? "ASC" : "DESC";
        const cmp = pending ? ">" : "<";
        const where = pending ? "WHERE status = 'pending'" : "WHERE settled_at IS NOT NULL AND status = 'failed'";
        const page = q.after === undefined ? "" : ` AND (${col} ${cmp} ? OR (${col} = ? AND id ${cmp} ?))`;
        const params = q.after === undefined ? [q.limit] : [q.after.at, q.after.at, q.after.id, q.limit];
        return s.list<Notification>(
          "notifications",
          `${where}${page} ORDER BY ${col} ${dir}, id ${dir} LIMIT ?`,
          params,
        );
      },
      listNotifications: (userId, q) =>
        q.status === undefined
          ? s.list<Notification>("notifications", "WHERE user_id = ? ORDER BY id LIMIT ?", [userId, q.limit])
          : s.list<Notification>("notifications", "WHERE user_id = ? AND status = ? ORDER BY id LIMIT ?", [
              userId,
              q.status,
              q.limit,
            ]),
    },
  };
  return {
    ...store,
    accounts: patient(store.accounts),
    journal: patient(store.journal),
    subscriptions: store.subscriptions && patient(store.subscriptions),
    bindPart: (part) => {
      const bound = modules.use(part, (p) => bindSqlite(p, s));
      // Reads outside units of work run again while the file is locked, as the store's own do.
      return bound === null ? undefined : { ...bound, reads: patient(bound.reads) };
    },
    outbox: store.outbox && patient(store.outbox),
  };
}
