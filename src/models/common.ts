import * as z from "zod";
import { neverRemember } from "./parse.js";

/**
 * An amount of credits: a safe integer in the smallest unit the host bills (like cents).
 * Fractions, NaN, Infinity, strings and anything beyond Number.MAX_SAFE_INTEGER are refused.
 */
export const Amount = z
  .number({ error: (i) => (i.input === undefined ? "amount is required" : "amount must be a number") })
  .int({ error: "amount must be a whole number of the smallest unit (a safe integer)" })
  .min(1, { error: "amount must be at least 1" })
  .max(Number.MAX_SAFE_INTEGER, { error: "amount must not exceed Number.MAX_SAFE_INTEGER" });

/** An amount that may be zero (a commit of nothing). */
export const NonNegativeAmount = z
  .number()
  .int({ error: "amount must be a whole number of the smallest unit (a safe integer)" })
  .min(0, { error: "amount must not be negative" })
  .max(Number.MAX_SAFE_INTEGER, { error: "amount must not exceed Number.MAX_SAFE_INTEGER" });

/** A signed safe integer (balances can go below zero through debt). */
export const SignedAmount = z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER);

// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const printable = /^[^\u0000-\u001f\u007f]+$/;

/** A user (account) id chosen by the host: 1–256 printable characters. */
export const UserId = z
  .string({ error: "userId must be a string" })
  .min(1, { error: "userId must not be empty" })
  .max(256, { error: "userId must be at most 256 characters" })
  .regex(printable, { error: "userId must not contain control characters" });

/** An id the library generated (grant, reservation, entry): each seldom comes back, so `parse` does not remember it. */
export const EntityId = neverRemember(
  z
    .string({ error: "id must be a string" })
    .min(1, { error: "id must not be empty" })
    .max(128, { error: "id must be at most 128 characters" })
    .regex(printable, { error: "id must not contain control characters" }),
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
export const IdempotencyKey = z
  .string({ error: "idempotencyKey must be a string" })
  .min(1, { error: "idempotencyKey must not be empty" })
  .max(255, { error: "idempotencyKey must be at most 255 characters" })
  .regex(printable, { error: "idempotencyKey must not contain control characters" })
  .regex(/^(?!cm:)/, {
    error: `idempotencyKey must not start with "${SYSTEM_KEY_PREFIX}": that prefix is reserved for the library's own operations (payments, refunds, disputes, subscription periods)`,
  });

/** Free-form JSON metadata stored with an entry. */
export const Metadata = z.record(z.string(), z.json());

/** The instants every store can keep as written: years 1–9999 (UTC). */
const MIN_DATE = new Date(0).setUTCFullYear(1, 0, 1); // Date.UTC reads years 0–99 as 1900–1999
const MAX_DATE = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/**
 * A date given as a Date or an ISO-8601 string with offset; always a valid instant in years 1–9999
 * (UTC). Beyond them an ISO string needs an expanded year (`+010000-…`) that PostgreSQL refuses,
 * and year 0 does not exist there: refused here for every store alike.
 */
export const DateInput = z
  .union([z.date(), z.iso.datetime({ offset: true })], { error: "must be a Date or an ISO-8601 date-time" })
  .transform((v) => (typeof v === "string" ? new Date(v) : v))
  .refine((d) => !Number.isNaN(d.getTime()), { error: "must be a valid date" })
  .refine((d) => d.getTime() >= MIN_DATE && d.getTime() <= MAX_DATE, { error: "must be between the years 1 and 9999 (UTC)" });

/** Priority of a grant: lower numbers are drawn first. */
export const Priority = z.number().int({ error: "priority must be an integer" }).min(0).max(1_000_000);

export const ShortText = z.string().max(1000, { error: "must be at most 1000 characters" });
