import * as z from "zod/mini";
import type { ZodMiniObject } from "zod/mini";
import { Account, Grant, Reservation } from "../core/models/entities.js";
import { JournalEntry, LedgerEntry } from "../core/models/records.js";
import { promoPaymentTableSpecs } from "../modules/billing/schema-tables.js";
import { periodCloseTableSpecs } from "../modules/revenue/schema-tables.js";
import { AccountAutoTopUp } from "../modules/billing/model-auto-top-up.js";
import { Notification } from "../core/models/notifications.js";
import { Plan, Subscription } from "../core/models/subscriptions.js";

/** A condition of a partial index, on a model field (`IndexSpec.where`). */
export type IndexCondition = NonNullable<IndexSpec["where"]>[number];

/** An index of a table. @public */
export interface IndexSpec {
  /** Suffix of the index name (the table name is put in front). */
  name: string;
  /** Model fields, in key order. */
  fields: readonly string[];
  /** Whether the index is unique. */
  unique?: boolean;
  /**
   * Rows the index covers (a partial index in PostgreSQL, SQLite and MongoDB), each condition on a
   * model field: null or not, greater than a number, equal to a string. MySQL has no partial
   * indexes: there the index covers every row.
   */
  where?: readonly (
    | { field: string; op: "isNull" | "notNull" }
    | { field: string; op: "gt"; value: number }
    | { field: string; op: "eq"; value: string }
  )[];
  /**
   * PostgreSQL: the index holds one 16-byte digest of the fields' values (`keyDigestSql` in
   * ./sql.ts) instead of the values, for long text keys that are only ever looked up whole (the
   * idempotency key: 40 characters and more). Lookups compare the same expression and then the
   * values themselves, so a digest collision can only refuse an insert, never answer with another
   * key's entry. Other dialects index the fields (docs/running-for-years.md).
   */
  digest?: boolean;
  /**
   * Only where the store has partial indexes (PostgreSQL, SQLite): an index useful only
   * for the few rows `where` selects. MySQL, where it would cover every row, leaves it out.
   */
  partialOnly?: boolean;
  /**
   * PostgreSQL: a BRIN index (a summary per range of table blocks: a few kilobytes, next to no cost
   * per insert) instead of a B-tree, for a column that grows with the table's physical order (a
   * journal's `createdAt`). Other dialects get a B-tree.
   */
  brin?: boolean;
}

/**
 * What a model cannot say about its table: name, primary key, which field is the idempotency
 * key, and the indexes the adapters' queries rely on. The columns come from the model.
 * @public
 */
export interface TableSpec {
  /** Table (collection) name before any prefix. */
  name: string;
  /** The zod model the table's rows follow. */
  model: ZodMiniObject;
  /** The columns of the primary key. */
  primaryKey: readonly string[];
  /** The field holding the idempotency key: unique per user where it is set. */
  idempotencyKey?: string;
  /** Fields holding SHA-256 digests as hex (see `Column.bytes`): bytes where the store can keep them. */
  binary?: readonly string[];
  /** JSON fields kept as compact text on PostgreSQL (see `Column.jsonText`). */
  jsonText?: readonly string[];
  /**
   * Fields holding arrays of objects, stored as arrays of their values (see `Column.tuple`). The
   * objects' optional fields must come last in their model, and none may be nullable.
   */
  tuples?: readonly string[];
  /** The table's indexes. */
  indexes: readonly IndexSpec[];
  /**
   * MongoDB: null fields are left out of the documents (read back as null), and `binary` fields
   * are stored as BinData (read back as hex; a hex string stored there reads as it is). The
   * validator allows both.
   */
  sparse?: boolean;
  /**
   * PostgreSQL fillfactor (percent): room left in each page so that updates of rows that change
   * often stay in-page (HOT) instead of rewriting the indexes.
   */
  fillfactor?: number;
}

/**
 * Every table of the schema, by key (`tableSpecs`; docs/storage.md, "Schema generator"). The
 * generators' `tables` option takes one (a changed copy of `tableSpecs`, to see what a model change
 * does).
 * @public
 */
export interface TableSpecs {
  /** One row per account: its balance, reserved credits and settings. */
  accounts: TableSpec;
  /** The credit grants: what each added, what remains, when it expires. */
  grants: TableSpec;
  /** The holds (reservations) and how each settled. */
  reservations: TableSpec;
  /** Each account's journal entries, by seq. */
  journal: TableSpec;
  /** The system ledger. */
  ledger: TableSpec;
  /** The notification outbox. */
  notifications: TableSpec;
  /** Promo codes. */
  promos: TableSpec;
  /** The claims of promo codes. */
  promoClaims: TableSpec;
  /** Payments. */
  payments: TableSpec;
  /** Subscription plans. */
  plans: TableSpec;
  /** Subscriptions. */
  subscriptions: TableSpec;
  /** The closed periods of revenue reports (docs/revenue.md, "Closing a month"). */
  periodCloses: TableSpec;
  /** Each account's journal seq at each close of the revenue reports. */
  periodCloseMarks: TableSpec;
}
/** A table of the schema: a key of `TableSpecs`. */
export type TableKey = keyof TableSpecs;

/**
 * Grants not closed. Deliberately not "remaining > 0": a column in an index predicate makes
 * PostgreSQL rewrite every index on each update of it, while an update of `remaining` alone (every
 * deduction) can then stay a cheap in-page (HOT) update. Spent grants are filtered by the query.
 */
const notClosed: IndexCondition[] = [{ field: "closedAt", op: "isNull" }];

/** The tables every SQL adapter and the MongoDB collections use. @public */
export const tableSpecs: TableSpecs = {
  accounts: {
    name: "accounts",
    // The core's account and the billing module's column.
    model: z.extend(Account, AccountAutoTopUp),
    primaryKey: ["userId"],
    indexes: [],
    fillfactor: 85,
  },
  grants: {
    name: "grants",
    model: Grant,
    primaryKey: ["id"],
    indexes: [
      // A unit of work loads the open grants of its account.
      { name: "user_open", fields: ["userId"], where: notClosed },
      // listGrants (oldest first).
      { name: "user_created", fields: ["userId", "createdAt"] },
      // The expiry job: open grants due at a time, in (expiresAt, id) order.
      { name: "due", fields: ["expiresAt", "id"], where: [...notClosed, { field: "expiresAt", op: "notNull" }] },
    ],
    fillfactor: 85,
  },
  reservations: {
    name: "reservations",
    model: Reservation,
    primaryKey: ["id"],
    indexes: [
      // A unit of work loads the active holds of its account.
      { name: "user_active", fields: ["userId"], where: [{ field: "status", op: "eq", value: "active" }] },
      { name: "user_created", fields: ["userId", "createdAt"] },
      // The expiry job: active holds past their TTL, in (expiresAt, id) order.
      { name: "status_expiry", fields: ["status", "expiresAt", "id"] },
    ],
  },
  journal: {
    name: "journal_entries",
    model: JournalEntry,
    // Gap-free per-user sequence; history pages by seq.
    primaryKey: ["userId", "seq"],
    idempotencyKey: "idempotencyKey",
    // 32 bytes each instead of 64 characters (docs/running-for-years.md).
    binary: ["hash", "prevHash"],
    // Never queried inside: `[{"grantId":"…","amount":5}]` as text is smaller than as JSONB.
    jsonText: ["grants"],
    // `[["<grant id>",5]]`: the keys once in the model, not in every entry.
    tuples: ["grants"],
    // MongoDB: no `reservationId: null, correlationId: null, …` in every entry; hashes as BinData.
    sparse: true,
    // Usage reports across accounts read a range of createdAt (docs/usage.md): on PostgreSQL a
    // BRIN index, nearly free per entry; one account's report reads its primary key.
    indexes: [
      { name: "created", fields: ["createdAt"], brin: true },
      // A charge by its id, which is what reversing it names (docs/concepts.md, "The journal").
      { name: "id", fields: ["id"] },
      // A charge's reversals within its account: the few entries that name one.
      { name: "user_reverses", fields: ["userId", "reverses"], where: [{ field: "reverses", op: "notNull" }] },
      // Usage placed at another time than its recording (late entries, reversals: docs/usage.md):
      // reports over a window find those few entries by when they count.
      { name: "occurred", fields: ["occurredAt"], where: [{ field: "occurredAt", op: "notNull" }] },
    ],
  },
  ledger: {
    name: "ledger_entries",
    model: LedgerEntry,
    primaryKey: ["id"],
    indexes: [
      { name: "created", fields: ["createdAt"] },
      { name: "user_created", fields: ["userId", "createdAt"] },
      { name: "type_created", fields: ["eventType", "createdAt"] },
    ],
  },
  ...promoPaymentTableSpecs,
  notifications: {
    name: "notifications",
    model: Notification,
    primaryKey: ["id"],
    indexes: [
      // Dedupe keys are unique per user, where a row has one.
      {
        name: "user_dedupe_key",
        fields: ["userId", "dedupeKey"],
        unique: true,
        where: [{ field: "dedupeKey", op: "notNull" }],
      },
      // A user's oldest pending row (the only one a dispatcher may claim); listNotifications.
      { name: "user_status_id", fields: ["userId", "status", "id"] },
      // Dispatchers: pending rows that are due, oldest first (delivered rows leave the index).
      {
        name: "pending_due",
        fields: ["nextAttemptAt", "id"],
        where: [{ field: "status", op: "eq", value: "pending" }],
      },
      // purgeNotifications: settled rows by settlement time.
      { name: "settled", fields: ["settledAt"], where: [{ field: "settledAt", op: "notNull" }] },
      // stats(): failed rows, counted off this small index instead of a scan of the outbox.
      { name: "failed", fields: ["id"], where: [{ field: "status", op: "eq", value: "failed" }], partialOnly: true },
    ],
  },
  plans: {
    name: "plans",
    model: Plan,
    primaryKey: ["id"],
    indexes: [],
  },
  subscriptions: {
    name: "subscriptions",
    model: Subscription,
    primaryKey: ["id"],
    indexes: [
      // One active subscription per user (and getActiveSubscription).
      {
        name: "user_active",
        fields: ["userId"],
        unique: true,
        where: [{ field: "status", op: "eq", value: "active" }],
      },
      // listSubscriptions (oldest first).
      { name: "user_created", fields: ["userId", "createdAt"] },
      // The renewal job: subscriptions with a next run, in (nextRunAt, id) order.
      { name: "due", fields: ["nextRunAt", "id"], where: [{ field: "nextRunAt", op: "notNull" }] },
      // planHasSubscribers.
      { name: "plan_active", fields: ["planId"], where: [{ field: "status", op: "eq", value: "active" }] },
      {
        name: "pending_plan_active",
        fields: ["pendingPlanId"],
        where: [{ field: "status", op: "eq", value: "active" }],
      },
    ],
  },
  // Closed periods of revenue reports (docs/revenue.md, "Closing a month").
  ...periodCloseTableSpecs,
};

/** Every index of a table, the idempotency key's unique index included. */
export function indexesOf(spec: TableSpec): IndexSpec[] {
  const indexes = [...spec.indexes];
  if (spec.idempotencyKey !== undefined) {
    indexes.unshift({
      name: "idempotency_key",
      fields: ["userId", spec.idempotencyKey],
      unique: true,
      where: [{ field: spec.idempotencyKey, op: "notNull" }],
      digest: true,
    });
  }
  return indexes;
}
