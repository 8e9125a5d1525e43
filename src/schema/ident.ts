/**
 * PostgreSQL identifiers and string literals, quoted: a leaf module, so that the modules ./sql.ts
 * imports (the rollup, the revenue summary, the Citus units) and `serve`'s own tables quote as
 * `quoteIdent` does.
 */

/** A PostgreSQL (or SQLite) identifier in double quotes, any `"` in it doubled. */
export const pgIdent = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/** `name` quoted, in `schema` when there is one. */
export const pgQualified = (schema: string | undefined, name: string): string =>
  schema === undefined ? pgIdent(name) : `${pgIdent(schema)}.${pgIdent(name)}`;

/** A SQL string literal, any `'` in it doubled. Rules' keys and texts are constants of the table, quoted all the same. */
export const sqlLit = (s: string): string => `'${s.replace(/'/g, "''")}'`;
