import type * as z from "zod";
import { ValidationError } from "../errors.js";

/**
 * Validates `value` against `schema`; a mismatch becomes a `ValidationError` naming the argument
 * and each field. Used at every public entry point before anything is read or written.
 */
export function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({
    path: issue.path.map(String).join("."),
    message: issue.message,
  }));
  const first = issues[0];
  const where = first && first.path ? `${what}.${first.path}` : what;
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
  throw new ValidationError(`Invalid ${where}: ${first?.message ?? "invalid value"}${more}`, issues, result.error);
}
