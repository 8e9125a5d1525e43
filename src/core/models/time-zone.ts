import * as z from "zod/mini";

const isZone = (tz: string): boolean => {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
};
/** An IANA time zone name (`Europe/Berlin`, `UTC`), one this runtime knows. */
export const TimeZone = z
  .string()
  .check(z.maxLength(64), z.refine(isZone, { error: "must be an IANA time zone (e.g. Europe/Berlin)" }));
