import type { JournalKeys } from "./hash.js";

/** The key new entries are signed with (docs/concepts.md, "A keyed chain"). */
export interface JournalKey {
  id: string;
  key: Uint8Array;
}

/** `journalKeys`, validated, as the write path and `audit()` use them. */
export interface JournalKeyring {
  current: JournalKey;
  keys: JournalKeys;
}

/** The keyring of validated `journalKeys` options: each key as bytes (a string's UTF-8). */
export function journalKeyring(o: { current: string; keys: Record<string, string | Uint8Array> }): JournalKeyring {
  const keys = new Map<string, Uint8Array>();
  for (const [id, secret] of Object.entries(o.keys))
    keys.set(id, typeof secret === "string" ? new TextEncoder().encode(secret) : Uint8Array.from(secret));
  return { current: { id: o.current, key: keys.get(o.current) as Uint8Array }, keys };
}
