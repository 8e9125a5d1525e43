import type { JournalKeysOptions } from "../core/models/index.js";
import { UsageError } from "./usage-error.js";

/**
 * `CREDIT_JOURNAL_KEYS`: the journal's keys as JSON, `{ "current": "k1", "keys": { "k1": "…" } }`
 * (docs/concepts.md, "A keyed chain"), so that the commands sign what they write and `audit`
 * verifies keyed entries. Unset: none. Not JSON: a `UsageError`.
 */
export function journalKeysOf(env: Record<string, string | undefined>): JournalKeysOptions | undefined {
  const text = env.CREDIT_JOURNAL_KEYS?.trim();
  if (text === undefined || text === "") return undefined;
  try {
    return JSON.parse(text) as JournalKeysOptions;
  } catch {
    throw new UsageError('CREDIT_JOURNAL_KEYS must be JSON: { "current": "<id>", "keys": { "<id>": "<key>" } }');
  }
}
