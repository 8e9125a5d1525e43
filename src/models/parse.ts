import type * as z from "zod";
import { ValidationError } from "../errors.js";

/**
 * Strings and numbers each schema accepted lately (user ids, amounts): the same value is not
 * parsed again on the hot path. Bounded; only values a schema returned unchanged are kept.
 */
const accepted = new WeakMap<z.ZodType, Set<unknown>>();
const ACCEPTED_MAX = 4096;
/** Schemas whose values seldom come back (ids of holds and grants): remembering them is waste. */
const unremembered = new WeakSet<z.ZodType>();
/** Per schema, a test that proves a string is one it accepts unchanged (no need to run it). */
const provenBy = new WeakMap<z.ZodType, (value: string) => boolean>();

/**
 * Marks a schema whose accepted values `parse` should not remember: each value is new (a
 * reservation id is committed once), so remembering it would only fill and clear the set.
 * `proven`: a cheap test that only passes strings the schema accepts unchanged (the ids the library
 * makes itself), answered without running the schema; anything else the schema judges.
 */
export function neverRemember<S extends z.ZodType>(schema: S, proven?: (value: string) => boolean): S {
  unremembered.add(schema);
  if (proven !== undefined) provenBy.set(schema, proven);
  return schema;
}

/**
 * Validates `value` against `schema`; a mismatch becomes a `ValidationError` naming the argument
 * and each field. Used at every public entry point before anything is read or written.
 */
export function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const primitive = typeof value === "string" || typeof value === "number";
  let seen: Set<unknown> | undefined;
  if (primitive) {
    seen = accepted.get(schema);
    if (seen?.has(value)) return value as z.output<S>;
    if (typeof value === "string" && provenBy.get(schema)?.(value) === true) return value as z.output<S>;
  }
  let fields: StrictFields | null = null;
  if (typeof value === "object" && value !== null && takesObject(schema)) {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      const message = `must be a plain object ({ … }), not ${describe(value)}: its contents would be ignored`;
      throw new ValidationError(`Invalid ${what}: ${message}`, [{ path: "", message }]);
    }
    fields = strictFields(schema);
    if (fields !== null) {
      const known = acceptedFields(fields, value as Record<string, unknown>);
      if (known !== null) return known as z.output<S>;
    }
  }
  const result = schema.safeParse(value);
  if (result.success) {
    const bad = illFormedAt(result.data, "");
    if (bad !== null) {
      const path = bad === "" ? what : `${what}.${bad}`;
      const message =
        "must be well-formed text (a lone UTF-16 surrogate cannot be stored: stores would replace it and mix up ids and keys)";
      throw new ValidationError(`Invalid ${path}: ${message}`, [{ path: bad, message }]);
    }
    // Our schemas are pure: a string or number one accepted unchanged it always accepts unchanged.
    if (primitive && result.data === value) remember(schema, value, seen);
    else if (fields !== null) rememberFields(fields, value as Record<string, unknown>, result.data);
    return result.data;
  }
  const issues = result.error.issues.map((issue) => ({
    path: issue.path.map(String).join("."),
    message: issue.message,
  }));
  const first = issues[0];
  const where = first && first.path ? `${what}.${first.path}` : what;
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
  throw new ValidationError(`Invalid ${where}: ${first?.message ?? "invalid value"}${more}`, issues, result.error);
}

/** Adds `value` to what `schema` accepted unchanged (`seen`: its set, when known). */
function remember(schema: z.ZodType, value: unknown, seen = accepted.get(schema)): void {
  if (unremembered.has(schema)) return;
  if (seen === undefined) accepted.set(schema, (seen = new Set()));
  else if (seen.size >= ACCEPTED_MAX) seen.clear();
  seen.add(value);
}

/**
 * A strict object schema (`z.strictObject`, no checks of its own) seen field by field: each field's
 * schema, and whether it may be left out (`optional`).
 */
interface StrictFields {
  keys: readonly string[];
  schemas: readonly z.ZodType[];
  optional: readonly boolean[];
  index: ReadonlyMap<string, number>;
}

const strictFieldsOf = new WeakMap<z.ZodType, StrictFields | null>();

/** `schema`'s fields when it is a strict object with no checks of its own, else null. */
function strictFields(schema: z.ZodType): StrictFields | null {
  let known = strictFieldsOf.get(schema);
  if (known !== undefined) return known;
  known = null;
  const def = (schema as unknown as { _zod: { def: ObjectDef } })._zod.def;
  if (
    def.type === "object" &&
    def.catchall?._zod.def.type === "never" &&
    (def.checks?.length ?? 0) === 0 &&
    def.shape
  ) {
    const keys = Object.keys(def.shape);
    const schemas = keys.map((k) => (def.shape as Record<string, z.ZodType>)[k] as z.ZodType);
    known = {
      keys,
      schemas,
      optional: schemas.map((f) => (f as unknown as { _zod: { def: SchemaDef } })._zod.def.type === "optional"),
      index: new Map(keys.map((k, i) => [k, i])),
    };
  }
  strictFieldsOf.set(schema, known);
  return known;
}

interface ObjectDef extends SchemaDef {
  shape?: Record<string, unknown>;
  catchall?: { _zod: { def: SchemaDef } };
  checks?: readonly unknown[];
}

/**
 * A strict object whose every field holds a string or number its field's schema accepted unchanged
 * before (in an object this schema accepted): what the schema would answer — a new object of those
 * fields, in the shape's order — without running it; null for anything else (an unknown key, a
 * required field left out, any other value), which the schema then judges itself. The options of
 * a hot path (`{ amount: 3 }`, `{ estimate: 10, reason: "POST /api/chat" }`) are this.
 */
function acceptedFields(fields: StrictFields, value: Record<string, unknown>): Record<string, unknown> | null {
  const given = Object.keys(value);
  for (const k of given) if (!fields.index.has(k)) return null;
  const { keys, schemas, optional } = fields;
  const out: Record<string, unknown> = {};
  let present = 0;
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i] as string;
    const v = value[k];
    if (v === undefined) {
      if (optional[i] !== true) return null;
      continue;
    }
    if ((typeof v !== "string" && typeof v !== "number") || accepted.get(schemas[i] as z.ZodType)?.has(v) !== true)
      return null;
    out[k] = v;
    present++;
  }
  // (A key given as undefined is the schema's to judge.)
  return present === given.length ? out : null;
}

/** After the schema accepted `value` as `data`: each field it kept unchanged, a string or number, is remembered. */
function rememberFields(fields: StrictFields, value: Record<string, unknown>, data: unknown): void {
  if (typeof data !== "object" || data === null) return;
  const out = data as Record<string, unknown>;
  for (let i = 0; i < fields.keys.length; i++) {
    const k = fields.keys[i] as string;
    const v = out[k];
    if ((typeof v === "string" || typeof v === "number") && value[k] === v) remember(fields.schemas[i] as z.ZodType, v);
  }
}

/** Whether a schema takes an object of fields (seen through optional, nullable, default and pipe). */
const objectTaking = new WeakMap<z.ZodType, boolean>();

/**
 * Whether `schema` takes an object of named fields (options, a query). zod reads such an object's
 * own enumerable keys only, so a Map, a Date, a Set or a class instance would pass as an object
 * with no fields: `deductCredits(u, 10, new Map([["idempotencyKey", "k"]]))` would deduct without
 * its key, and a retry would deduct twice. `parse` refuses any object but a plain one for these.
 */
function takesObject(schema: z.ZodType): boolean {
  let known = objectTaking.get(schema);
  if (known === undefined) {
    let def = (schema as unknown as { _zod: { def: SchemaDef } })._zod.def;
    for (;;) {
      if (def.type === "pipe" && def.in) def = def.in._zod.def;
      else if (WRAPPERS.has(def.type) && def.innerType) def = def.innerType._zod.def;
      else break;
    }
    known = def.type === "object" || def.type === "record";
    objectTaking.set(schema, known);
  }
  return known;
}

interface SchemaDef {
  type: string;
  in?: { _zod: { def: SchemaDef } };
  innerType?: { _zod: { def: SchemaDef } };
}
const WRAPPERS = new Set(["optional", "nullable", "default", "prefault", "readonly", "nonoptional", "catch"]);

/** "a Map", "an array", "a Date", "an instance of Foo", for a message. */
function describe(value: object): string {
  if (Array.isArray(value)) return "an array";
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  if (typeof name !== "string" || name === "" || name === "Object") return "an object with another prototype";
  return /^[AEIOU]/.test(name) ? `an ${name}` : `a ${name}`;
}

/** A lone UTF-16 surrogate: half of a pair, without the other half. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** @internal True when `s` holds no lone UTF-16 surrogate (what `parse` refuses in any text). */
export const wellFormed: (s: string) => boolean =
  typeof (String.prototype as { isWellFormed?: unknown }).isWellFormed === "function"
    ? (s) => (s as unknown as { isWellFormed(): boolean }).isWellFormed()
    : (s) => !LONE_SURROGATE.test(s);

/**
 * The path of the first string — or object key — in a parsed input that is not well-formed UTF-16
 * (it holds a lone surrogate), "" for the value itself, null when all are. Every public input is
 * checked here, after its schema: MongoDB's BSON encoder and PostgreSQL's driver turn a lone
 * surrogate into U+FFFD (PostgreSQL's JSON parser refuses it outright), so two different user ids or
 * idempotency keys would become one in the store — another user's balance, a top-up answered as
 * the replay of another — and stored text would no longer hash as written.
 */
function illFormedAt(v: unknown, path: string): string | null {
  if (typeof v === "string") return wellFormed(v) ? null : path;
  if (typeof v !== "object" || v === null) return null;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const bad = illFormedAt(v[i], path === "" ? String(i) : `${path}.${i}`);
      if (bad !== null) return bad;
    }
    return null;
  }
  const proto = Object.getPrototypeOf(v) as unknown;
  if (proto !== Object.prototype && proto !== null) return null; // a Date, …: no text of the caller's
  for (const [k, x] of Object.entries(v)) {
    const at = path === "" ? k : `${path}.${k}`;
    if (!wellFormed(k)) return at;
    const bad = illFormedAt(x, at);
    if (bad !== null) return bad;
  }
  return null;
}
