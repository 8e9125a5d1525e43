/**
 * PostgreSQL: the 16-byte digest a `digest` index (`IndexSpec.digest`) holds, of the SQL values
 * `refs` (quoted columns of the row, or the parameters of a lookup, which must use this same
 * expression to use the index): the first 16 bytes of the SHA-256 of the values joined by a
 * newline (ids and keys cannot hold one). `decode(…, 'escape')` of the text with its backslashes
 * doubled is its exact bytes, and unlike `convert_to` it is IMMUTABLE, as an index expression must
 * be; `sha256` rather than `md5`, which servers in FIPS mode refuse.
 */
export function keyDigestSql(refs: readonly string[]): string {
  return `substr(sha256(decode(replace(${refs.join(` || E'\\n' || `)}, E'\\\\', E'\\\\\\\\'), 'escape')), 1, 16)`;
}
