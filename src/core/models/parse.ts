import type * as z from "zod/mini";
import { ConfigurationError, ValidationError } from "../errors.js";

/**
 * Validates `value` against `schema`, a zod 4 schema built with `zod/mini` or with `zod` (both parse
 * with `safeParse`); a mismatch becomes a `ValidationError` naming the argument and each field. Used
 * at every public entry point before anything is read or written.
 */
export function parse<S extends z.core.$ZodType & { safeParse(value: unknown): z.core.util.SafeParseResult<unknown> }>(
  schema: S,
  value: unknown,
  what: string,
): z.output<S> {
  if (typeof value === "object" && value !== null && takesObject(schema)) {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      const message = `must be a plain object ({ … }), not ${describe(value)}: its contents would be ignored`;
      throw new ValidationError(`Invalid ${what}: ${message}`, [{ path: "", message }]);
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
    return result.data as z.output<S>;
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

/**
 * `parse` for options given once, when the program sets something up (`createCreditManager`, a
 * service's constructor, the worker): a mismatch is a mistake in the program, not in one call's
 * input, so it is a `ConfigurationError` — its message names the field, and its `cause` is the
 * `ValidationError` with each issue. `owner` ("PaymentService") starts the message when given.
 */
export function parseConfig<
  S extends z.core.$ZodType & { safeParse(value: unknown): z.core.util.SafeParseResult<unknown> },
>(schema: S, value: unknown, what: string, owner?: string): z.output<S> {
  try {
    return parse(schema, value, what);
  } catch (error) {
    if (!(error instanceof ValidationError)) throw error;
    const where = owner === undefined ? "" : `${owner}: `;
    throw new ConfigurationError(`[credit-management] ${where}${error.message}`, error);
  }
}

/**
 * Whether `schema` takes an object of named fields (options, a query). zod reads such an object's
 * own enumerable keys only, so a Map, a Date, a Set or a class instance would pass as an object
 * with no fields: `deductCredits(u, 10, new Map([["idempotencyKey", "k"]]))` would deduct without
 * its key, and a retry would deduct twice. `parse` refuses any object but a plain one for these.
 */
function takesObject(schema: z.core.$ZodType): boolean {
  // Seen through optional, nullable, default and pipe.
  let def = schema._zod.def as SchemaDef;
  for (;;) {
    if (def.type === "pipe" && def.in) def = def.in._zod.def;
    else if (WRAPPERS.has(def.type) && def.innerType) def = def.innerType._zod.def;
    else break;
  }
  return def.type === "object" || def.type === "record";
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
    ? (s) => (s as string & { isWellFormed(): boolean }).isWellFormed()
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
