// Inside the package: the published entry (./public.ts), and the row codecs and naming helpers
// the stores and the tests share besides.
export * from "./public.js";
export { decodeRow, encodeValues } from "./codec.js";
export { modelJsonSchema, snakeCase } from "./columns.js";
export { upgradeStatements } from "./migrations.js";
export { type SqlTable, SCHEMA_COMPONENT, quoteIdent, sqlTables, versionTableName } from "./sql.js";
export { indexesOf } from "./tables.js";
