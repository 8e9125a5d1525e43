import type * as z from "zod";
import { ValidationError } from "../errors.js";

/**
 * Strings and numbers each schema accepted lately (user ids, amounts): the same value is not
 * parsed again on the hot path. Bounded; only values a schema returned unchanged are kept.
 */
const accepted = new WeakMap<z.ZodType, Set<unknown>>();
const ACCEPTED_MAX = 4096;

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
  }
  const result = schema.safeParse(value);
  if (result.success) {
    // Our schemas are pure: a string or number one accepted unchanged it always accepts unchanged.
    if (primitive && result.data === value) {
      if (seen === undefined) accepted.set(schema, (seen = new Set()));
      else if (seen.size >= ACCEPTED_MAX) seen.clear();
      seen.add(value);
    }
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
