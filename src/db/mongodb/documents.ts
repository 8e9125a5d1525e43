import type { Document } from "mongodb";
import {
  Grant,
  JournalEntry,
  LedgerEntry,
  Reservation,
  type Account as AccountT,
  type Grant as GrantT,
  type JournalEntry as JournalEntryT,
  type LedgerEntry as LedgerEntryT,
  type Reservation as ReservationT,
} from "../../core/models/index.js";
import { tableSpecs } from "../../schema/tables.js";

/**
 * How entities are stored, in one place: the entity's id field becomes `_id` (a string), dates stay
 * BSON dates, amounts are JS numbers (stored as int32 or double, exact up to
 * Number.MAX_SAFE_INTEGER), nullable fields are stored as null — but in journal entries, which
 * leave them out and keep their hashes as BinData (`TableSpec.sparse`, docs/running-for-years.md). Fields starting with `_` other than
 * `_id` are the adapter's own (sort keys, the open-grant flag, the account's write counter) and
 * never leave this module.
 */
/** A stored document: string ids everywhere. */
export interface StoredDoc extends Document {
  _id: string;
}

export interface Kind<T> {
  /** The entity field stored as `_id`. */
  readonly idField: keyof T & string;
  /** Every field of the entity, from its zod model. */
  readonly keys: readonly (keyof T & string)[];
  /** Null fields are left out of the document (`TableSpec.sparse`); they read back as null. */
  readonly sparse?: boolean;
  /** Hex digests stored as BinData (`TableSpec.binary`, with `sparse`); they read back as hex. */
  readonly binary?: ReadonlySet<string>;
}

export const kind = <T>(
  idField: keyof T & string,
  shape: Record<string, unknown>,
  table?: { sparse?: boolean; binary?: readonly string[] },
): Kind<T> => ({
  idField,
  keys: Object.keys(shape) as (keyof T & string)[],
  ...(table?.sparse === true ? { sparse: true, binary: new Set(table.binary ?? []) } : {}),
});

/** The account table's fields: the core's `Account` and the modules' columns (`autoTopUp`). */
export const ACCOUNT: Kind<AccountT> = kind("userId", tableSpecs.accounts.model.shape);
export const GRANT: Kind<GrantT> = kind("id", Grant.shape);
export const RESERVATION: Kind<ReservationT> = kind("id", Reservation.shape);
export const ENTRY: Kind<JournalEntryT> = kind("id", JournalEntry.shape, tableSpecs.journal);
export const LEDGER: Kind<LedgerEntryT> = kind("id", LedgerEntry.shape);

/** Entity → document: `id` (or `userId` for accounts) moves to `_id`; `extra` adds internal fields. */
export function toDoc<T extends object>(k: Kind<T>, entity: T, extra?: Document): StoredDoc {
  const doc: StoredDoc = { _id: entity[k.idField] as string };
  for (const key of k.keys) {
    if (key === k.idField) continue;
    const v = entity[key];
    if (v === undefined || v === null) {
      if (k.sparse !== true) doc[key] = null;
    } else
      doc[key] = k.binary?.has(key) === true && typeof v === "string" && HEX_DIGEST.test(v) ? Buffer.from(v, "hex") : v;
  }
  if (extra !== undefined) Object.assign(doc, extra);
  return doc;
}

/** A SHA-256 digest as the models write it: stored as its 32 bytes only when reading them back gives this text. */
const HEX_DIGEST = /^[0-9a-f]{64}$/;

/** A digest stored as BinData (or a Buffer, with the driver's `promoteBuffers`) as hex; anything else as it is. */
function hexOfBinary(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex");
  if (v !== null && typeof v === "object" && (v as { _bsontype?: string })._bsontype === "Binary")
    return (v as { toString(encoding: "hex"): string }).toString("hex");
  return v;
}

/**
 * Document → plain entity of exactly the model's fields: `_id` back to the id field, internal
 * fields dropped, missing fields as null (never undefined), 64-bit integers as numbers.
 */
export function fromDoc<T extends object>(k: Kind<T>, doc: Document): T {
  const out: Record<string, unknown> = {};
  for (const key of k.keys) {
    const v = key === k.idField ? doc._id : doc[key];
    out[key] = v === undefined ? null : k.binary?.has(key) === true ? hexOfBinary(v) : toNumberIfLong(v);
  }
  // A journal entry whose idempotency key the retention job forgot keeps it in `forgottenKey`.
  if (typeof doc.forgottenKey === "string" && out.idempotencyKey === null) out.idempotencyKey = doc.forgottenKey;
  return out as T;
}

/**
 * The fields `save` writes when it updates a stored entity: all but the id, the owner and the
 * immutable ones (`createdAt`, `metadata`). Leaving `metadata` out of `$set` matters: MongoDB
 * refuses `$set` of a sub-document with `$`-prefixed keys, which free-form metadata may have.
 */
export function updatableFields<T extends object>(k: Kind<T>, entity: T): Document {
  const set: Document = {};
  for (const key of k.keys) {
    if (key === k.idField || key === "userId" || key === "createdAt" || key === "metadata") continue;
    const v = entity[key];
    set[key] = v === undefined ? null : v;
  }
  return set;
}

/** A stored Int64 (written by another tool, or read with `useBigInt64`) as a JS number. */
function toNumberIfLong(v: unknown): unknown {
  if (typeof v === "bigint") return Number(v);
  if (v !== null && typeof v === "object" && (v as { _bsontype?: string })._bsontype === "Long") {
    return (v as { toNumber(): number }).toNumber();
  }
  return v;
}

/** A grant is open while it has credits left and was neither expired nor voided. */
export { isOpenGrant } from "../../core/domain/order.js";
