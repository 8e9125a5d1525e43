import { JournalKeysOptions } from "../core/models/index.js";
import { UsageError } from "../util/usage-error.js";

/**
 * `CREDIT_JOURNAL_KEYS`: the journal's keys as JSON, `{ "current": "k1", "keys": { "k1": "…" } }`
 * (docs/concepts.md, "A keyed chain"), so that the commands sign what they write and `audit`
 * verifies keyed entries. Unset: none. Blank, not JSON or not valid keys (one too short): a
 * `UsageError` naming the variable.
 */
export function journalKeysOf(env: Record<string, string | undefined>): JournalKeysOptions | undefined {
  const text = env.CREDIT_JOURNAL_KEYS;
  if (text === undefined) return undefined;
  if (text.trim() === "") throw new UsageError("CREDIT_JOURNAL_KEYS is set but blank (unset it or give the keys)");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new UsageError('CREDIT_JOURNAL_KEYS must be JSON: { "current": "<id>", "keys": { "<id>": "<key>" } }');
  }
  // Checked here, so that a key too short stops the command naming the variable (exit 2).
  const r = JournalKeysOptions.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    const at = issue === undefined || issue.path.length === 0 ? "" : ` (${issue.path.map(String).join(".")})`;
    throw new UsageError(`CREDIT_JOURNAL_KEYS${at}: ${issue?.message ?? "is invalid"}`);
  }
  return value as JournalKeysOptions;
}
