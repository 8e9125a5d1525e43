import * as z from "zod/mini";
import { NO_NUL, NUL_ERROR, isoDateTime, text } from "./text.js";

/**
 * An amount of credits: a safe integer in the smallest unit the host bills (like cents).
 * Fractions, NaN, Infinity, strings and anything beyond Number.MAX_SAFE_INTEGER are refused.
 */
export const Amount = z
  .number({ error: (i) => (i.input === undefined ? "amount is required" : "amount must be a number") })
  .check(
    z.int({ error: "amount must be a whole number of the smallest unit (a safe integer)" }),
    z.minimum(1, { error: "amount must be at least 1" }),
    z.maximum(Number.MAX_SAFE_INTEGER, { error: "amount must not exceed Number.MAX_SAFE_INTEGER" }),
  );

/** An amount that may be zero (a commit of nothing). */
export const NonNegativeAmount = z
  .number()
  .check(
    z.int({ error: "amount must be a whole number of the smallest unit (a safe integer)" }),
    z.minimum(0, { error: "amount must not be negative" }),
    z.maximum(Number.MAX_SAFE_INTEGER, { error: "amount must not exceed Number.MAX_SAFE_INTEGER" }),
  );

/** A signed safe integer (balances can go below zero through debt). */
export const SignedAmount = z
  .number()
  .check(z.int(), z.minimum(-Number.MAX_SAFE_INTEGER), z.maximum(Number.MAX_SAFE_INTEGER));

// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const printable = /^[^\u0000-\u001f\u007f]+$/;

/** A user (account) id chosen by the host: 1–256 printable characters, not `.` nor `..`. */
export const UserId = z.string({ error: "userId must be a string" }).check(
  z.minLength(1, { error: "userId must not be empty" }),
  z.maxLength(256, { error: "userId must be at most 256 characters" }),
  z.regex(printable, { error: "userId must not contain control characters" }),
  z.regex(/^(?!\.\.?$)/, {
    error:
      'userId must not be "." or "..": a URL parser removes those path segments, so the account\'s URLs would name other routes',
  }),
);

/** An id the library generated (grant, reservation, entry). */
export const EntityId = z
  .string({ error: "id must be a string" })
  .check(
    z.minLength(1, { error: "id must not be empty" }),
    z.maxLength(128, { error: "id must be at most 128 characters" }),
    z.regex(printable, { error: "id must not contain control characters" }),
  );

/**
 * The prefix of the idempotency keys the library gives its own operations on an account (crediting
 * a payment, taking back a refund or a lost dispute, a subscription period's unit of work). A
 * client's key may not start with it: keys are unique per user, and a user who could pick one of
 * these keys first (a 1-credit hold through the HTTP API's `Idempotency-Key` header, say) would
 * make the library's own operation fail as a conflict — a refund that never takes its credits back.
 */
export const SYSTEM_KEY_PREFIX = "cm:";

/** Client-chosen key that makes a mutation safe to retry. Unique per user. */
export const IdempotencyKey = z.string({ error: "idempotencyKey must be a string" }).check(
  z.minLength(1, { error: "idempotencyKey must not be empty" }),
  z.maxLength(255, { error: "idempotencyKey must be at most 255 characters" }),
  z.regex(printable, { error: "idempotencyKey must not contain control characters" }),
  z.regex(/^(?!cm:)/, {
    error: `idempotencyKey must not start with "${SYSTEM_KEY_PREFIX}": that prefix is reserved for the library's own operations (payments, refunds, disputes, subscription periods)`,
  }),
);

/**
 * The name of the unit a balance is kept in (docs/units.md): a short identifier the application
 * chooses (`credits`, `images`, `gpu_seconds`): a lower-case letter, then up to 31 lower-case
 * letters, digits or `_`. No operation converts one unit into another.
 *
 * @beta
 */
export const UnitName = z.string({ error: "unit must be a string" }).check(
  z.regex(/^[a-z][a-z0-9_]{0,31}$/, {
    error: "unit must be a lower-case letter, then up to 31 lower-case letters, digits or '_'",
  }),
);

/**
 * The default unit's name (docs/units.md): what an operation naming no unit acts in. Rows and
 * entries in it store no unit (null).
 *
 * @beta
 */
export const DEFAULT_UNIT = "credits";

/** Deepest nesting of metadata: the metadata object itself is level 1. */
export const METADATA_MAX_DEPTH = 32;
/** Largest metadata, in characters of its JSON text (not counting escapes). */
export const METADATA_MAX_LENGTH = 65_536;

const JsonRecord = z.record(z.string(), z.json());

/**
 * Free-form JSON metadata stored with an entry: plain objects, arrays, strings, finite numbers,
 * booleans and null, at most {@link METADATA_MAX_DEPTH} levels deep and
 * {@link METADATA_MAX_LENGTH} characters as JSON. Refused before the JSON schema walks it (a cycle
 * or a deep nesting would overflow the stack there): cycles, anything deeper or larger, objects
 * that are not plain (a Map, a Date, a class instance) and the key `"__proto__"` — JavaScript
 * reads that key as the object's prototype, not as data, so copying the metadata (into the store,
 * into the journal's hash) would drop it silently.
 */
export const Metadata = z.pipe(
  // Typed as the record it should be (the input type callers see); at run time it is any value.
  z.transform((value: z.input<typeof JsonRecord>, ctx) => {
    if (typeof value === "object" && value !== null) {
      const problem = metadataProblem(value);
      if (problem !== null)
        ctx.issues.push({ code: "custom", message: problem.message, path: problem.path, input: value });
    }
    return value;
  }),
  JsonRecord,
);

/**
 * Metadata keys the library reserves: on a charge the overdraft limit cut, what was asked
 * (`requested`); what was served and not paid is the entry's own `shortfall`, which version 1 kept
 * under this key (docs/metering.md, "Served and not paid").
 */
const LIBRARY_KEYS = ["requested", "shortfall"] as const;

/**
 * `Metadata` as a caller gives it: the same, less the keys the library reserves (a caller's would
 * read as the library's to whoever reads the metadata). Such a key is a `ValidationError` naming it.
 */
export const CallerMetadata = Metadata.check(
  z.superRefine((value, ctx) => {
    for (const key of LIBRARY_KEYS)
      if (Object.hasOwn(value, key))
        ctx.addIssue({
          code: "custom",
          path: [key],
          message: `"${key}" is written by the library alone (what an overdraft limit cut): use another key`,
          input: value,
        });
  }),
);

/** The first reason `metadata` cannot be stored as JSON, with its path; null when it can. */
function metadataProblem(metadata: object): { path: string[]; message: string } | null {
  const open = new Set<object>(); // the objects being walked: one of them again is a cycle
  const path: string[] = [];
  let length = 0;
  const walk = (v: unknown): string | null => {
    switch (typeof v) {
      case "string":
        if (!NO_NUL.test(v)) return NUL_ERROR;
        length += v.length + 2;
        break;
      case "number":
        length += String(v).length;
        break;
      case "boolean":
        length += 5;
        break;
      case "object": {
        if (v === null) {
          length += 4;
          break;
        }
        if (open.has(v)) return "must not contain itself (a cycle cannot be stored as JSON)";
        if (open.size >= METADATA_MAX_DEPTH) return `must not be nested more than ${METADATA_MAX_DEPTH} levels deep`;
        const array = Array.isArray(v);
        const proto = Object.getPrototypeOf(v) as unknown;
        if (array ? proto !== Array.prototype : proto !== Object.prototype && proto !== null) {
          return "must hold only plain objects, arrays, strings, numbers, booleans and null";
        }
        open.add(v);
        length += 2;
        const keys = Object.keys(v);
        for (const key of keys) {
          path.push(key);
          if (!array && key === "__proto__") {
            return 'must not use the key "__proto__" (JavaScript reads it as the object\'s prototype, not as data: it would be lost)';
          }
          if (!NO_NUL.test(key)) return `key ${NUL_ERROR}`;
          length += array ? 1 : key.length + 4;
          const bad = length > METADATA_MAX_LENGTH ? null : walk((v as Record<string, unknown>)[key]);
          if (bad !== null) return bad;
          if (length > METADATA_MAX_LENGTH) return `must be at most ${METADATA_MAX_LENGTH} characters as JSON`;
          path.pop();
        }
        open.delete(v);
        break;
      }
      default:
        break; // undefined, a function, …: the JSON schema refuses them with their path
    }
    return null;
  };
  const message = walk(metadata);
  if (message !== null) return { path, message };
  return length > METADATA_MAX_LENGTH
    ? { path, message: `must be at most ${METADATA_MAX_LENGTH} characters as JSON` }
    : null;
}

/** The instants every store can keep as written: years 1–9999 (UTC). */
const MIN_DATE = new Date(0).setUTCFullYear(1, 0, 1); // Date.UTC reads years 0–99 as 1900–1999
const MAX_DATE = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/**
 * A date given as a Date or an ISO-8601 string with offset; always a valid instant in years 1–9999
 * (UTC). Beyond them an ISO string needs an expanded year (`+010000-…`) that PostgreSQL refuses,
 * and year 0 does not exist there: refused here for every store alike.
 */
export const DateInput = z
  .pipe(
    z.union([z.date(), isoDateTime({ offset: true })], { error: "must be a Date or an ISO-8601 date-time" }),
    z.transform((v) => (typeof v === "string" ? new Date(v) : v)),
  )
  .check(
    z.refine((d) => !Number.isNaN(d.getTime()), { error: "must be a valid date" }),
    z.refine((d) => d.getTime() >= MIN_DATE && d.getTime() <= MAX_DATE, {
      error: "must be between the years 1 and 9999 (UTC)",
    }),
  );

/** Priority of a grant: lower numbers are drawn first. */
export const Priority = z
  .number()
  .check(z.int({ error: "priority must be an integer" }), z.minimum(0), z.maximum(1_000_000));

export const ShortText = text(1000);

/** A feature (or plugin) name in `features` rules and `check()`. */
export const FeatureName = z.string().check(
  z.minLength(1),
  z.maxLength(100),
  z.regex(/^[A-Za-z0-9_.:-]+$/, {
    error: "feature must be letters, digits and _ . : -",
  }),
);
