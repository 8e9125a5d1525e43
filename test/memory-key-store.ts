import type { ApiKeyRecord, KeyStore } from "../src/serve/keys.js";

/** Keys in process memory: the API key store of the tests that need no database. */
export function memoryKeyStore(): KeyStore {
  const rows = new Map<string, ApiKeyRecord>();
  return {
    async init() {},
    async insert(r) {
      rows.set(r.id, { ...r });
    },
    async get(id) {
      const r = rows.get(id);
      return r === undefined ? null : { ...r };
    },
    async list() {
      return [...rows.values()].map((r) => ({ ...r }));
    },
    async revoke(id, at) {
      const r = rows.get(id);
      if (r === undefined || r.revokedAt !== null) return false;
      r.revokedAt = at;
      return true;
    },
    async close() {},
  };
}
