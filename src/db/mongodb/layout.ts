import type { IndexDescription } from "mongodb";
import type { TableKey } from "../../schema/tables.js";
import { nextVersion } from "../../schema/version.js";
import { V1_TAKE_BACK } from "../../core/domain/usage.js";
import { usageTestsExpression } from "./usage.js";
import { NOTIFICATION_INDEXES } from "./outbox.js";
import { SUBSCRIPTION_INDEXES } from "./subscriptions.js";

/**
 * The collections `MongoDbManager` keeps, in one place, for `init()` and for the mongosh script of
 * `credit-management schema --dialect mongodb` (src/schema/mongo-script.ts), which must create the
 * same thing. Type-only imports of the driver: the CLI uses this without `mongodb` installed.
 */
export interface MongoCollectionLayout {
  /** The collection's name after the prefix. */
  name: string;
  /** The model (src/schema/tables.ts) whose validator describes its documents. */
  table: TableKey;
  /** The model field stored as `_id` (src/db/mongodb/documents.ts). */
  idField: string;
  /** The indexes `init()` creates (besides `_id`). */
  indexes: IndexDescription[];
}

/** One collection per table of the schema (src/schema/tables.ts). */
export type MongoCollectionKey = TableKey;

/** Every collection, with the indexes every query and guarantee of the adapter relies on. */
export const MONGO_COLLECTIONS: Record<MongoCollectionKey, MongoCollectionLayout> = {
  // The account document is `_id: userId`; its `_id` index is the only one it needs.
  accounts: { name: "accounts", table: "accounts", idField: "userId", indexes: [] },
  grants: {
    name: "grants",
    table: "grants",
    idField: "id",
    indexes: [
      // load(): a user's open grants; listGrants(): a user's grants in insertion order.
      { key: { userId: 1, _open: 1, _ord: 1 }, name: "user_open_ord" },
      // findDueGrants(): open grants by expiry (closed grants are left out of the index).
      { key: { expiresAt: 1, _id: 1 }, name: "due_open", partialFilterExpression: { _open: true } },
    ],
  },
  reservations: {
    name: "reservations",
    table: "reservations",
    idField: "id",
    indexes: [
      // load(): a user's active holds; listReservations(): by status, in insertion order.
      { key: { userId: 1, status: 1, _ord: 1 }, name: "user_status_ord" },
      // findExpiredReservations(): active holds by expiry.
      { key: { status: 1, expiresAt: 1, _id: 1 }, name: "status_expiry" },
    ],
  },
  journal: {
    name: "journal",
    table: "journal",
    idField: "id",
    indexes: [
      // Gap-free, one entry per seq, and the cursor of listJournal().
      { key: { userId: 1, seq: 1 }, name: "user_seq", unique: true },
      // Idempotency keys are unique per user, where an entry has one.
      {
        key: { userId: 1, idempotencyKey: 1 },
        name: "user_idempotency_key",
        unique: true,
        partialFilterExpression: { idempotencyKey: { $type: "string" } },
      },
      // Usage reports across accounts: a range of createdAt (docs/usage.md).
      { key: { createdAt: 1 }, name: "created" },
      // A charge's reversals within its account (a charge itself is found by `_id`).
      {
        key: { userId: 1, reverses: 1 },
        name: "user_reverses",
        partialFilterExpression: { reverses: { $type: "string" } },
      },
      // Usage placed at another time than its recording (late entries, reversals: docs/usage.md).
      { key: { occurredAt: 1 }, name: "occurred", partialFilterExpression: { occurredAt: { $type: "date" } } },
    ],
  },
  ledger: {
    name: "ledger",
    table: "ledger",
    idField: "id",
    // listLedgerEntries(): newest first in (createdAt, _ord, _id) order — the sort's own keys, so a
    // page reads `limit` entries off the index instead of sorting every match.
    indexes: [
      { key: { createdAt: -1, _ord: -1, _id: -1 }, name: "created_id" },
      { key: { userId: 1, createdAt: -1, _ord: -1, _id: -1 }, name: "user_created_id" },
      { key: { eventType: 1, createdAt: -1, _ord: -1, _id: -1 }, name: "type_created_id" },
    ],
  },
  notifications: {
    name: "notifications",
    table: "notifications",
    idField: "id",
    indexes: NOTIFICATION_INDEXES,
  },
  plans: { name: "plans", table: "plans", idField: "id", indexes: SUBSCRIPTION_INDEXES.plans },
  subscriptions: {
    name: "subscriptions",
    table: "subscriptions",
    idField: "id",
    indexes: SUBSCRIPTION_INDEXES.subscriptions,
  },
  // `_id` is the upper-cased code: unique.
  promos: {
    name: "promos",
    table: "promos",
    idField: "code",
    indexes: [{ key: { createdAt: -1, _id: -1 }, name: "created" }],
  },
  promoClaims: {
    name: "promo_claims",
    table: "promoClaims",
    idField: "id",
    indexes: [
      // One claim per (code, user, claim number): the backstop of the per-user limit.
      { key: { code: 1, userId: 1, claimNumber: 1 }, name: "code_user_n", unique: true },
      { key: { userId: 1, createdAt: 1 }, name: "user_created" },
    ],
  },
  payments: {
    name: "payments",
    table: "payments",
    idField: "id",
    indexes: [
      { key: { userId: 1, createdAt: -1, _id: -1 }, name: "user_created" },
      {
        key: { provider: 1, providerRef: 1 },
        name: "provider_ref",
        partialFilterExpression: { providerRef: { $type: "string" } },
      },
      {
        key: { provider: 1, providerPaymentId: 1 },
        name: "provider_payment",
        unique: true,
        partialFilterExpression: { providerPaymentId: { $type: "string" } },
      },
    ],
  },
  // Closed periods of revenue reports (docs/revenue.md, "Closing a month"): `_id` is the close's
  // `through`; a mark's `_id` is "<through ms>:<user id>" (unique per close and account).
  periodCloses: {
    name: "period_closes",
    table: "periodCloses",
    idField: "through",
    // Each close names the one before it (`after`, null: the first): of two racing closes, the
    // second's insert is refused by this index (src/modules/revenue/mongodb.ts).
    indexes: [{ key: { after: 1 }, name: "after", unique: true }],
  },
  periodCloseMarks: {
    name: "period_close_marks",
    table: "periodCloseMarks",
    idField: "id",
    indexes: [{ key: { userId: 1, through: 1 }, name: "user_through", unique: true }],
  },
};

/** An index a later version no longer creates: dropped on upgrade when it has exactly these keys. */
export interface DroppedIndex {
  collection: MongoCollectionKey;
  name: string;
  key: Record<string, 1 | -1>;
}

/** A field a later version added: set to `value` in the documents written before, which lack it. */
export interface FilledField {
  collection: MongoCollectionKey;
  field: string;
  value: string | number | boolean;
  /** Only in the documents this aggregation expression holds of (a `$expr`); absent: every one that lacks the field. */
  where?: Record<string, unknown>;
}

/**
 * A field a later version added, set in the documents written before, which lack it, from a count
 * the same document holds at `from` (a dotted path): where that is a whole number of at least 1 (a
 * safe integer) and `where` (a `$expr`, absent: none) holds; left absent on the others.
 */
export interface CopiedCount {
  collection: MongoCollectionKey;
  field: string;
  from: string;
  where?: Record<string, unknown>;
}

/** Whether `v` is what a `CopiedCount` copies: a safe whole number of at least 1. */
export const isCopiedCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 1;

/** The value at dotted `path` of document `d` (undefined when a step is no object). */
export function atPath(d: unknown, path: string): unknown {
  let v = d;
  for (const k of path.split(".")) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

/**
 * A field a later version added, set from another collection: each document of `source` names
 * documents of `collection` of the same `userId` — by its `key` (their `_id`), or those whose `by`
 * field (a dotted path) holds its `_id` and that match `where` — which get `field` = the `source`
 * document's `_id`, where they lack the field.
 */
export interface LinkedField {
  collection: MongoCollectionKey;
  field: string;
  source: MongoCollectionKey;
  key?: string;
  by?: string;
  where?: Record<string, unknown>;
}

/** The documents of `linked.collection` that the `source` document `d` names, lacking the field (a filter). */
export function linkedFilter(linked: LinkedField, d: Record<string, unknown>): Record<string, unknown> {
  const named = linked.key !== undefined ? { _id: d[linked.key] } : { [linked.by as string]: d._id };
  return { ...named, userId: d.userId, [linked.field]: { $exists: false }, ...linked.where };
}

/** One schema version's step for MongoDB (docs/schema-upgrades.md). The version number is the SQL one. */
export interface MongoMigration {
  /** The version this step reaches. */
  to: number;
  summary: string;
  /** Indexes this version no longer creates. */
  dropIndexes: readonly DroppedIndex[];
  /** Fields this version added, set in the documents stored before. */
  fill?: readonly FilledField[];
  /** Fields this version added, set from a count in the same document (after `fill`). */
  copy?: readonly CopiedCount[];
  /** Fields this version added, set from another collection's documents (after `copy`). */
  link?: readonly LinkedField[];
}

/**
 * What each schema version after the first removed from the collections of an earlier one (what it
 * added, `init()` and the script create anyway), and the fields it added to documents already
 * stored, in order. The first release's schema is version 1: no steps yet.
 */
export const MONGO_MIGRATIONS: readonly MongoMigration[] = [
  {
    to: 2,
    summary:
      "journal entries record what a take-back is (takeBack, set from version 1's rule on the entries stored before), the credits served and not paid (shortfall, set from version 1's metadata on the entries stored before), the hash version, the key id of a keyed chain, an addition's scope and its start; grants record their start and whether they are upcoming; entries of type start; " +
      "accounts, grants, holds and entries record their unit (absent: the default unit, which every document version 1 wrote is in); " +
      "accounts record the key id of their latest entry (absent: unkeyed, as every entry version 1 wrote); " +
      "grants record the allowance they were drawn out in (absent on the documents version 1 wrote); " +
      "grant sources and notification types take any lower-case identifier (the validators, which the setup script gives the collections it finds)",
    dropIndexes: [],
    // The documents version 1 wrote lack hashVersion (version 1), keyId and the account's lastKeyId (unkeyed), scope (none
    // recorded), effectiveAt and upcoming (every grant started), unit (the default unit,
    // docs/units.md) and drawnOutIn (counted by no allowance, docs/customer-state.md): absent
    // reads as those.
    fill: V1_TAKE_BACK.map((c) => ({
      collection: "journal" as const,
      field: "takeBack",
      value: c.then,
      where: usageTestsExpression(c.when) as Record<string, unknown>,
    })),
    // Credits served and not paid (docs/metering.md, "Served and not paid"): a deduction's or
    // capture's metadata `shortfall`, as version 1's overdraft cut recorded it and its reports read it.
    copy: [
      {
        collection: "journal",
        field: "shortfall",
        from: "metadata.shortfall",
        where: { $in: ["$type", ["deduct", "commit_reserved"]] },
      },
    ],
    // The payment an entry credits or takes back from (docs/revenue.md, "Payments"): an addition
    // is the one its payment's document names (`creditEntryId`, written in the same unit of work,
    // never by a caller); a take-back (by version 1's rule, just above) names its payment in its
    // metadata, as version 1 read it.
    link: [
      { collection: "journal", field: "paymentId", source: "payments", key: "creditEntryId" },
      {
        collection: "journal",
        field: "paymentId",
        source: "payments",
        by: "metadata.paymentId",
        where: { takeBack: { $type: "string" } },
      },
    ],
  },
];

/** The steps a store is brought through: the shipped ones, then a test's next version's (src/schema/version.ts). */
export function mongoSteps(): readonly MongoMigration[] {
  const next = nextVersion();
  return next === null ? MONGO_MIGRATIONS : [...MONGO_MIGRATIONS, ...next.mongo];
}

/** The collection holding the schema-version document, after the prefix (SQL: the version table). */
export const VERSION_COLLECTION = "schema_version";

/** The fields versions after `fromVersion` added to stored documents. */
export function filledFieldsAfter(fromVersion: number): FilledField[] {
  return mongoSteps()
    .filter((m) => m.to > fromVersion)
    .flatMap((m) => m.fill ?? []);
}

/** The fields versions after `fromVersion` added that are set from a count in the same document. */
export function copiedCountsAfter(fromVersion: number): CopiedCount[] {
  return mongoSteps()
    .filter((m) => m.to > fromVersion)
    .flatMap((m) => m.copy ?? []);
}

/** The fields versions after `fromVersion` added that are set from another collection. */
export function linkedFieldsAfter(fromVersion: number): LinkedField[] {
  return mongoSteps()
    .filter((m) => m.to > fromVersion)
    .flatMap((m) => m.link ?? []);
}

/** The indexes versions after `fromVersion` removed. */
export function droppedIndexesAfter(fromVersion: number): DroppedIndex[] {
  return mongoSteps()
    .filter((m) => m.to > fromVersion)
    .flatMap((m) => m.dropIndexes);
}
