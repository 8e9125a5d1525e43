import { ConfigurationError } from "../../core/errors.js";
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
