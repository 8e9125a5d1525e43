import * as z from "zod/mini";
import { en } from "zod/locales";
import { _isoDateTime } from "zod/v4/core";

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

/**
 * `z.iso.datetime(params)`, built as zod/mini builds it: `z.iso` is a namespace object, and naming
 * it keeps every ISO format of zod (dates, times, durations, their patterns) in a user's bundle.
 */
export const isoDateTime = (params?: { offset?: boolean }): z.ZodMiniISODateTime =>
  _isoDateTime(z.ZodMiniISODateTime, params);
