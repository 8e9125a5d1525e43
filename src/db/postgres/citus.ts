import { ConfigurationError } from "../../errors.js";
import type { PgPoolClient as PoolClient } from "./pg-types.js";

/**
 * In `init()`'s transaction: whether the store is distributed on Citus, from the `distributed`
 * option (`wanted`), the server's extensions and, for a store that exists, its accounts table
 * (`accounts`, qualified). Refuses an option the server or the store contradicts
 * (docs/scaling-out.md).
 */
export async function detectDistributed(
  client: PoolClient,
  wanted: boolean | undefined,
  accounts: string,
): Promise<boolean> {
  const citus = (await client.query("SELECT 1 FROM pg_extension WHERE extname = 'citus'")).rows.length > 0;
  if (wanted === true && !citus)
    throw new ConfigurationError(
      "[credit-management] [postgres] `distributed: true` but the server has no Citus extension (CREATE EXTENSION citus, on a coordinator): docs/scaling-out.md",
    );
  // Without Citus there is no pg_dist_partition to read (and a failed query would end the transaction).
  if (!citus) return false;
  const found: { rows: { exists: boolean | null; distributed: boolean }[] } = await client.query(
    `SELECT to_regclass($1) IS NOT NULL AS exists, EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1)) AS distributed`,
    [accounts],
  );
  const row = found.rows[0];
  // A new store: distributed unless the option says not.
  if (row?.exists !== true) return wanted !== false;
  if (wanted === true && !row.distributed)
    throw new ConfigurationError(
      `[credit-management] [postgres] \`distributed: true\` but the store's accounts table (${accounts}) is a local table of the coordinator: a store is distributed when it is created (docs/scaling-out.md)`,
    );
  if (wanted === false && row.distributed)
    throw new ConfigurationError(
      `[credit-management] [postgres] \`distributed: false\` but the store's accounts table (${accounts}) is distributed by Citus: leave the option out (docs/scaling-out.md)`,
    );
  // A store made before stays as it was made.
  return row.distributed;
}

/**
 * The settings Citus needs for a distributed store's DDL in a transaction (`init()`): triggers on
 * distributed tables (the usage rollup's), and its commands to the workers over one connection
 * each, so that later ones see the tables the first made.
 */
export async function distributedDdlSettings(client: PoolClient): Promise<void> {
  await client.query("SET LOCAL citus.enable_unsafe_triggers = on");
  await client.query("SET LOCAL citus.multi_shard_modify_mode = 'sequential'");
}

/** Accounts whose shard a process keeps (past it the map starts again). */
const SHARDS_KEPT = 100_000;

/**
 * The shard of each account this process works on, for group commit by shard on Citus
 * (docs/scaling-out.md, "Group commit across shards"): asked of the coordinator once per account
 * (`get_shard_id_for_distribution_column`, one statement for all the accounts new in a turn of the
 * event loop), then kept. A shard keeps its id when it moves to another worker; a split gives new
 * ids, and a batch of accounts the split put on two shards then fails as a multi-shard statement:
 * its units run again alone (a process keeps the old ids until it restarts).
 */
export class ShardMap {
  private readonly known = new Map<string, string>();
  private waiting = new Map<string, Array<(shard: string | null) => void>>();
  private scheduled = false;

  constructor(
    private readonly read: (what: string, text: string, params: unknown[]) => Promise<Record<string, unknown>[]>,
    private readonly table: () => string,
  ) {}

  /** Calls `then` with the account's shard (null: the coordinator could not say). */
  of(userId: string, then: (shard: string | null) => void): void {
    const shard = this.known.get(userId);
    if (shard !== undefined) return then(shard);
    const list = this.waiting.get(userId);
    if (list !== undefined) list.push(then);
    else this.waiting.set(userId, [then]);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => void this.ask());
  }

  private async ask(): Promise<void> {
    this.scheduled = false;
    const waiting = this.waiting;
    this.waiting = new Map();
    const users = [...waiting.keys()];
    let found = new Map<string, string>();
    try {
      const rows = await this.read(
        "shardOf",
        "SELECT u AS user_id, get_shard_id_for_distribution_column($1::regclass, u)::text AS shard FROM unnest($2::text[]) u",
        [this.table(), users],
      );
      found = new Map(rows.map((r) => [r.user_id as string, r.shard as string]));
      if (this.known.size + found.size > SHARDS_KEPT) this.known.clear();
      for (const [user, shard] of found) this.known.set(user, shard);
    } catch {
      // Not known: those units run alone (one shard each, as without group commit).
    }
    for (const [user, thens] of waiting) for (const then of thens) then(found.get(user) ?? null);
  }
}
