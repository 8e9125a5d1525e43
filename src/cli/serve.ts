import { SpenderId, UserId } from "../core/models/index.js";
import { newKey } from "../serve/keys.js";
import { openStores } from "../serve/store.js";
import { runServe } from "../serve/server.js";
import { SERVE_FLAGS, serveSettings, type Env } from "../serve/settings.js";
import type { CliIo } from "./run.js";
import { UsageError } from "../util/usage-error.js";
import { exitCodeOf, parseCommandLine } from "./args.js";
import { closeQuietly } from "./store.js";

/**
 * `credit-management serve` and `credit-management keys create|list|revoke` (docs/service.md).
 * Resolves to the exit code: 0 done, 1 failed, 2 bad usage, 3 better-sqlite3 missing.
 */
export async function runServeCli(args: readonly string[], io: CliIo, env: Env): Promise<number> {
  try {
    const [command, ...rest] = args;
    if (command === "serve") {
      const { values, positionals } = parseCommandLine(rest, SERVE_FLAGS);
      if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      return await runServe(serveSettings(values, env), io, env);
    }
    const { values, positionals } = parseCommandLine(rest, {
      role: { type: "string" },
      name: { type: "string" },
      spender: { type: "string" },
      sqlite: { type: "string" },
      json: { type: "boolean" },
    });
    const [sub, ...more] = positionals;
    const settings = serveSettings({ sqlite: values.sqlite }, env);
    if (sub === "create") {
      if (more.length > 0) throw new UsageError(`unexpected argument "${more[0]}"`);
      const role = values.role;
      let userId: string | null = null;
      if (role === undefined) throw new UsageError("keys create needs --role admin or --role user:ID");
      if (role !== "admin") {
        const m = /^user:(.+)$/s.exec(role);
        if (m === null || !UserId.safeParse(m[1]).success)
          throw new UsageError(`--role must be admin or user:ID (an account id), not "${role}"`);
        userId = m[1] as string;
      }
      const spender = values.spender ?? null;
      if (spender !== null) {
        if (userId === null) throw new UsageError("--spender applies to a user key (--role user:ID) only");
        if (!SpenderId.safeParse(spender).success)
          throw new UsageError("--spender must be 1 to 255 printable characters (a member's or a key's id)");
      }
      const name = values.name ?? null;
      if (name !== null && (name.length > 256 || [...name].some((c) => c.charCodeAt(0) < 32)))
        throw new UsageError("--name must be up to 256 printable characters");
      return await withKeys(settings.store, async (keys) => {
        const { key, record } = newKey(role === "admin" ? "admin" : "user", userId, name, spender);
        await keys.insert(record);
        const as = spender === null ? role : `${role}, spender ${spender}`;
        io.stderr(`credit-management: key ${record.id} created (${as}); it is shown once, store it now\n`);
        io.stdout(`${key}\n`);
        return 0;
      });
    }
    if (values.spender !== undefined) throw new UsageError('--spender applies to "keys create" only');
    if (sub === "list") {
      if (more.length > 0) throw new UsageError(`unexpected argument "${more[0]}"`);
      return await withKeys(settings.store, async (keys) => {
        for (const r of await keys.list()) {
          const { hash: _hash, ...shown } = r;
          io.stdout(
            values.json === true
              ? `${JSON.stringify(shown)}\n`
              : `${r.id}  ${r.role === "admin" ? "admin" : `user:${r.userId}${r.spender === null ? "" : `/${r.spender}`}`}  ${r.name ?? "-"}  ${r.createdAt}  ${r.revokedAt === null ? "active" : `revoked ${r.revokedAt}`}\n`,
          );
        }
        return 0;
      });
    }
    if (sub === "revoke") {
      const [id, ...extra] = more;
      if (id === undefined || !/^[0-9a-f]{16}$/.test(id))
        throw new UsageError("keys revoke needs a key id (keys list shows them)");
      if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
      return await withKeys(settings.store, async (keys) => {
        if (!(await keys.revoke(id, new Date().toISOString()))) {
          io.stderr(`credit-management: no active key ${id}\n`);
          return 1;
        }
        io.stderr(
          `credit-management: key ${id} revoked; running services refuse it within CREDIT_KEY_CACHE_MS (5 s by default)\n`,
        );
        return 0;
      });
    }
    throw new UsageError(`keys needs create, list or revoke${sub === undefined ? "" : `, not "${sub}"`}`);
  } catch (error) {
    return exitCodeOf(error, io, args[0]);
  }
}

async function withKeys(
  store: Parameters<typeof openStores>[0],
  fn: (keys: Awaited<ReturnType<typeof openStores>>["keys"]) => Promise<number>,
): Promise<number> {
  const stores = await openStores(store);
  try {
    // The credit store's tables too: `keys create` on a fresh database makes the whole store.
    await stores.db.init();
    await stores.keys.init();
    return await fn(stores.keys);
  } finally {
    await closeQuietly(
      () => stores.keys.close(),
      () => stores.db.close(),
    );
  }
}
