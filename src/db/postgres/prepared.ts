import type { PgPoolClient as PoolClient } from "./pg-types.js";
import { type Statement, prepareText } from "./sql.js";

/** Statements each pooled connection has prepared (shared by every manager on a pool). */
const preparedOn = new WeakMap<object, Set<string>>();

/**
 * `PREPARE` text for the statements `client` lacks, to put in front of the message that runs them
 * (prepared statements outlive a rollback, so this costs no round trip).
 */
export function prepareFor(client: PoolClient, statements: readonly Statement[]): { text: string; names: string[] } {
  const done = preparedOn.get(client);
  const missing = statements.filter((s) => !done?.has(s.name));
  return { text: missing.map((s) => `${prepareText(s)}; `).join(""), names: missing.map((s) => s.name) };
}

/** Records statements as prepared on `client` after their message succeeded. */
export function markPrepared(client: PoolClient, names: readonly string[]): void {
  if (names.length === 0) return;
  let done = preparedOn.get(client);
  if (done === undefined) {
    done = new Set();
    preparedOn.set(client, done);
  }
  for (const n of names) done.add(n);
}

/** After a failed message that carried PREPAREs: learn which exist now (one round trip). */
export async function resyncPrepared(client: PoolClient): Promise<void> {
  try {
    const r: { rows: { name: string }[] } = await client.query(
      "SELECT name FROM pg_prepared_statements WHERE name LIKE 'cm\\_%'",
    );
    preparedOn.set(client, new Set(r.rows.map((row) => row.name)));
  } catch {
    preparedOn.delete(client);
  }
}

/**
 * The query of a statement outside the save (`text` with `values`): prepared by name on each
 * connection (`preparedStatements`), except on Citus, which cannot plan most statements
 * generically (a named statement's plan after five runs): there unnamed ones, planned for their
 * values each time.
 */
export function queryOf(
  db: { readonly prepared: boolean; readonly sql: { readonly distributed: boolean } },
  text: string,
  values: unknown[],
): { name?: string; text: string; values: unknown[] } {
  return db.prepared && !db.sql.distributed ? { name: statementName(text), text, values } : { text, values };
}

const names = new Map<string, string>();
/** A stable, short prepared-statement name for a query text. */
export function statementName(text: string): string {
  let name = names.get(text);
  if (name === undefined) {
    name = `cmq_${names.size.toString(36)}_${hash(text)}`;
    names.set(text, name);
  }
  return name;
}

function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(36);
}
