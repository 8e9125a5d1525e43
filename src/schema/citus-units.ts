import { pgIdent as q, pgQualified, sqlLit as lit } from "./ident.js";
import { keyDigestSql } from "./key-digest.js";
import type { NamingOptions, SqlTable } from "./sql.js";

/**
 * The account row's revision on a store distributed on Citus: every save of the account adds one
 * (the functions below, and the save statement of a unit of work in a transaction). It moves with
 * the row when its shard moves, as `xmin` does not: the state cache of a distributed store keys on
 * it (docs/scaling-out.md, "A unit of work in one call").
 */
export const REVISION = "rev";

/** The names of a distributed store's unit-of-work functions, quoted and qualified. */
export function unitFunctionNames(naming: NamingOptions): { load: string; save: string; saves: string } {
  const prefix = naming.prefix ?? "";
  return {
    load: pgQualified(naming.schema, `${prefix}unit_load`),
    save: pgQualified(naming.schema, `${prefix}unit_save`),
    saves: pgQualified(naming.schema, `${prefix}unit_saves`),
  };
}

/** The parameter types of the save function, in order (for `create_distributed_function`). */
const SAVE_ARGS = [
  "p_user text",
  "p_rev bigint",
  "p_prev bigint",
  "p_account json",
  "p_grants json",
  "p_grant_updates json",
  "p_holds json",
  "p_hold_updates json",
  "p_entries json",
  "p_notifications json",
  "p_lock_timeout_ms integer",
];

/**
 * Citus (docs/scaling-out.md, "A unit of work in one call"): the account's revision column and two
 * functions Citus delegates, whole, to the worker that holds the account named by their first
 * argument (`create_distributed_function(…, 'p_user', colocate_with => accounts)`), each committed
 * there with a plain COMMIT:
 *
 * - `unit_load(user, key)`: the account, its open grants and active holds, the journal entry of
 *   an idempotency key, the revision and the node's group id, as one JSON text read in one snapshot;
 * - `unit_save(user, rev, prev, …, lock_timeout_ms)`: a unit of work's changes (the account row as
 *   a whole, new and changed grants and holds, journal entries, outbox rows) if the account is
 *   still at revision `rev` and `seq` `prev` — else nothing, and SQLSTATE 40001, which runs the
 *   unit again from a fresh load. A new account (`prev` null) is inserted; a concurrent first
 *   write fails it with a unique violation, which runs it again too. It waits for the account's
 *   row lock at most `lock_timeout_ms` (0: no limit). Returns the account's new revision.
 * - `unit_saves(user, units, lock_timeout_ms)`: several units' saves in one call, handed to the
 *   worker of `user`'s account, each `units` element the arguments of one `unit_save` in order;
 *   each runs in a subtransaction of its own, so its failure undoes its writes only, and they
 *   commit together. Returns a JSON array, per unit `{"rev": …}` or `{"code": SQLSTATE, "message": …}`.
 *   A unit whose account is no longer on this node (its shard moved since the unit's load) is
 *   refused with SQLSTATE 40001 and runs again from a fresh load, so the call stays on one node.
 *
 * Each statement inside is keyed by the user id, and the inserts are `VALUES` of a row variable's
 * fields, so every statement runs on the worker's local shard. Every statement can run again.
 */
export function citusUnitFunctions(tables: readonly SqlTable[], naming: NamingOptions): string[] {
  const get = (key: SqlTable["key"]) => tables.find((t) => t.key === key);
  const accounts = get("accounts");
  const grants = get("grants");
  const holds = get("reservations");
  const journal = get("journal");
  const outbox = get("notifications");
  if (!accounts || !grants || !holds || !journal || !outbox) return [];
  const { load, save, saves } = unitFunctionNames(naming);
  const updatable = (t: SqlTable) => {
    const keys = new Set(["user_id", "created_at", REVISION, ...t.spec.primaryKey.map((f) => snake(t, f))]);
    return t.columns.filter((c) => !keys.has(c.name)).map((c) => c.name);
  };
  // The statements' parameters: $1 the row (of the table's row type), $2 the user id, then `more`.
  const set = (t: SqlTable) =>
    updatable(t)
      .map((n) => `${q(n)} = ($1).${q(n)}`)
      .join(", ");
  // Fields one by one: Citus writes a `VALUES (r.*)` out as the whole row's text once per column.
  const names = (t: SqlTable) => t.columns.map((c) => q(c.name)).join(", ");
  const fields = (t: SqlTable) => t.columns.map((c) => `($1).${q(c.name)}`).join(", ");
  const rev = q(REVISION);
  // The shard of `t` that holds the account: only where a statement is prepared for it.
  const shardOf = (t: SqlTable) => `get_shard_id_for_distribution_column(${lit(t.qualified)}, p_user)`;

  /**
   * One write, two ways. Where this call runs on the worker that holds the account's shards (`here`),
   * on the shard itself, as a statement prepared once per session and shard: Citus would plan the
   * statement on the distributed table again at every call. Elsewhere, on the distributed table,
   * which Citus routes. `sql(table)` is the statement on `table`; its parameters are `$1` (`v`, a row
   * of `t`), `$2` (the user id) and `more`; `into`, the variable its one returned value goes to.
   */
  const write = (
    t: SqlTable,
    v: string,
    sql: (table: string) => string,
    into: string,
    more: ReadonlyArray<{ arg: string; type: string }> = [],
  ): string => {
    const args = [v, "p_user", ...more.map((m) => m.arg)];
    const types = [t.qualified, "text", ...more.map((m) => m.type)];
    const onShard = sql("%s");
    // Named after the statement's text (a function of another release or store prepares its own)
    // and the account's shard: its tables' shards with the account are colocated with it.
    const name = `${lit(`cm_${digest(`${types.join(", ")} ${onShard}`)}_`)} || shard`;
    const setting = `'credit_management.' || ${name}`;
    const literals = args.map(() => "%L").join(", ");
    let distributed = sql(t.qualified);
    args.forEach((arg, i) => {
      distributed = distributed.replace(new RegExp(`\\$${i + 1}(?![0-9])`, "g"), arg);
    });
    return [
      `IF here THEN`,
      `  IF current_setting(${setting}, true) IS DISTINCT FROM '1' THEN`,
      `    IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = ${name}) THEN`,
      `      EXECUTE format(${lit(`PREPARE %I(${types.join(", ")}) AS ${onShard}`)}, ${name}, shard_name(${lit(t.qualified)}::regclass, ${shardOf(t)}));`,
      `    END IF;`,
      `    PERFORM set_config(${setting}, '1', false);`,
      `  END IF;`,
      `  EXECUTE format(${lit(`EXECUTE %I(${literals})`)}, ${name}, ${args.join(", ")}) INTO ${into};`,
      `ELSE`,
      `  ${distributed} INTO ${into};`,
      `END IF;`,
    ].join("\n");
  };
  const indent = (text: string, by: string) =>
    text
      .split("\n")
      .map((line) => by + line)
      .join("\n");
  // A list the unit has none of comes as NULL: no statement runs for it.
  const each = (t: SqlTable, v: string, param: string, body: string) =>
    `  IF ${param} IS NOT NULL THEN\n` +
    `    FOR i IN 0 .. json_array_length(${param}) - 1 LOOP\n` +
    `      ${v} := json_populate_record(NULL::${t.qualified}, ${param} -> i);\n` +
    `      done := NULL;\n` +
    `${indent(body, "      ")}\n` +
    `    END LOOP;\n` +
    `  END IF;`;
  const insertEach = (t: SqlTable, v: string, param: string) =>
    each(
      t,
      v,
      param,
      write(t, v, (table) => `INSERT INTO ${table} (${names(t)}) VALUES (${fields(t)}) RETURNING true`, "done"),
    );
  const updateEach = (t: SqlTable, v: string, param: string) =>
    each(
      t,
      v,
      param,
      `${write(t, v, (table) => `UPDATE ${table} SET ${set(t)} WHERE user_id = $2 AND id = ($1).id RETURNING true`, "done")}\n` +
        `IF done IS NULL THEN RAISE EXCEPTION 'credit-management: % % of account % not found', '${t.name}', ${v}.id, p_user USING ERRCODE = '40001'; END IF;`,
    );
  // Only where not delegated yet, as the tables' calls (src/schema/sql.ts, `citusCalls`).
  const distribute = (signature: string) =>
    `SELECT create_distributed_function(${lit(signature)}, 'p_user', colocate_with => ${lit(accounts.qualified)}) ` +
    `WHERE NOT EXISTS (SELECT 1 FROM pg_dist_object WHERE objid = ${lit(signature)}::regprocedure AND distribution_argument_index IS NOT NULL);`;
  return [
    `ALTER TABLE ${accounts.qualified} ADD COLUMN IF NOT EXISTS ${rev} BIGINT NOT NULL DEFAULT 0;`,
    `CREATE OR REPLACE FUNCTION ${load}(p_user text, p_key text) RETURNS text LANGUAGE plpgsql AS $fn$
BEGIN
  -- Dates in the JSON as ISO 8601 in UTC, whatever the worker's session says.
  PERFORM set_config('TimeZone', 'UTC', true);
  RETURN (SELECT json_build_object(
    'rev', (SELECT a.${rev} FROM ${accounts.qualified} a WHERE a.user_id = p_user),
    'node', (SELECT l.groupid FROM pg_dist_local_group l),
    'account', (SELECT row_to_json(a) FROM ${accounts.qualified} a WHERE a.user_id = p_user),
    'grants', (SELECT json_agg(g) FROM ${grants.qualified} g WHERE g.user_id = p_user AND g.closed_at IS NULL AND g.remaining > 0),
    'holds', (SELECT json_agg(r) FROM ${holds.qualified} r WHERE r.user_id = p_user AND r.status = 'active'),
    'idem', CASE WHEN p_key IS NOT NULL THEN (SELECT row_to_json(j) FROM ${journal.qualified} j WHERE ${keyDigestSql(["j.user_id", "j.idempotency_key"])} = ${keyDigestSql(["p_user", "p_key"])} AND j.user_id = p_user AND j.idempotency_key = p_key) END
  )::text);
END
$fn$;`,
    `CREATE OR REPLACE FUNCTION ${save}(${SAVE_ARGS.join(", ")}) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
  a ${accounts.qualified};
  g ${grants.qualified};
  h ${holds.qualified};
  e ${journal.qualified};
  n ${outbox.qualified};
  next_rev bigint;
  shard bigint;
  here boolean;
  done boolean;
  i integer;
BEGIN
  IF p_lock_timeout_ms > 0 THEN PERFORM set_config('lock_timeout', p_lock_timeout_ms::text, true); END IF;
  -- Whether this call may write the account's shards directly (docs/scaling-out.md, "A unit of work
  -- in one call"): as their tables' owner, under the lock Citus's own writes take on the account's
  -- shard (a move or split of the colocated shards waits for this call, this call for it), and
  -- only if the shard is on this node once it holds the lock. The account's other shards are
  -- colocated with it: placed on the same node, moved and split with it, in the same transaction.
  here := (SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = ${lit(accounts.qualified)}::regclass);
  IF here THEN
    shard := ${shardOf(accounts)};
    PERFORM lock_shard_metadata(5, ARRAY[shard]);
    -- One placement, by its unique index (shard, node): a count over several shards read every
    -- placement of the node at each call.
    here := EXISTS (SELECT 1 FROM pg_dist_placement p WHERE p.shardid = shard
      AND p.groupid = (SELECT l.groupid FROM pg_dist_local_group l));
    -- In a call of several units (unit_saves), an account whose shard has moved since its load is
    -- refused, to run again from a fresh load, alone: written from here through the distributed
    -- tables it would make the whole call a two-phase commit.
    IF NOT here AND current_setting('credit_management.grouped', true) = 'on' THEN
      RAISE EXCEPTION 'credit-management: account % is not on this node', p_user USING ERRCODE = '40001';
    END IF;
  END IF;
  a := json_populate_record(NULL::${accounts.qualified}, p_account);
  IF p_prev IS NULL THEN
    a.${rev} := 0;
    INSERT INTO ${accounts.qualified} (${names(accounts)}, ${rev}) VALUES (${fields(accounts).replace(/\(\$1\)/g, "a")}, a.${rev});
    next_rev := 0;
  ELSE
${indent(
  write(
    accounts,
    "a",
    (table) =>
      `UPDATE ${table} t SET ${set(accounts)}, ${rev} = t.${rev} + 1 WHERE t.user_id = $2 AND t.seq = $3 AND t.${rev} = $4 RETURNING t.${rev}`,
    "next_rev",
    [
      { arg: "p_prev", type: "bigint" },
      { arg: "p_rev", type: "bigint" },
    ],
  ),
  "    ",
)}
    IF next_rev IS NULL THEN
      RAISE EXCEPTION 'credit-management: account % changed since its state was read', p_user USING ERRCODE = '40001';
    END IF;
  END IF;
${insertEach(grants, "g", "p_grants")}
${updateEach(grants, "g", "p_grant_updates")}
${insertEach(holds, "h", "p_holds")}
${updateEach(holds, "h", "p_hold_updates")}
${insertEach(journal, "e", "p_entries")}
${insertEach(outbox, "n", "p_notifications")}
  RETURN next_rev;
END
$fn$;`,
    `CREATE OR REPLACE FUNCTION ${saves}(p_user text, p_units json, p_lock_timeout_ms integer) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
  c json;
  r bigint;
  out text[] := '{}';
BEGIN
  PERFORM set_config('credit_management.grouped', 'on', true);
  FOR i IN 0 .. json_array_length(p_units) - 1 LOOP
    c := p_units -> i;
    -- A block with an exception handler is a subtransaction: a failed unit's writes are undone alone.
    BEGIN
      r := ${save}(c ->> 0, (c ->> 1)::bigint, (c ->> 2)::bigint, (c ->> 3)::json, (c ->> 4)::json, (c ->> 5)::json, (c ->> 6)::json, (c ->> 7)::json, (c ->> 8)::json, (c ->> 9)::json, p_lock_timeout_ms);
      out := out || json_build_object('rev', r)::text;
    EXCEPTION WHEN OTHERS THEN
      out := out || json_build_object('code', SQLSTATE, 'message', SQLERRM)::text;
    END;
  END LOOP;
  RETURN '[' || array_to_string(out, ',') || ']';
END
$fn$;`,
    distribute(`${load}(text, text)`),
    distribute(`${saves}(text, json, integer)`),
    distribute(`${save}(${SAVE_ARGS.map((a) => a.split(" ")[1]).join(", ")})`),
  ];
}

/** A short digest of `text` (two 32-bit FNV-1a hashes, hexadecimal): names a prepared statement. */
function digest(text: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c, 0x811c9dc5) >>> 0;
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
}

/** A primary-key field's column name. */
function snake(t: SqlTable, field: string): string {
  return t.columns.find((c) => c.field === field)?.name ?? field;
}
