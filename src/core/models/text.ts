import * as z from "zod/mini";
import { en } from "zod/locales";

// zod/mini, unlike zod classic, sets no locale: every issue would read "Invalid input". The models
// set English, as zod classic does, unless the program chose a locale first (`z.config(...)`).
if (!z.config().localeError) z.config(en());

/**
 * Free text a store keeps as written — descriptions, reasons, correlation ids, references, names,
 * metadata keys and string values — holds no NUL character (U+0000): PostgreSQL's text and JSON
 * cannot store one, so it is refused on every store alike (docs/concepts.md, "How credits behave").
 */
// eslint-disable-next-line no-control-regex -- refusing NUL is the point
export const NO_NUL = /^[^\u0000]*$/;
export const NUL_ERROR = "must not contain the NUL character (U+0000): no store keeps it in text";

/** Free text of at most `max` characters, without NUL. */
export const text = (max: number): z.ZodMiniString<string> =>
  z
    .string()
    .check(z.maxLength(max, { error: `must be at most ${max} characters` }), z.regex(NO_NUL, { error: NUL_ERROR }));
