export { type Column, type ColumnKind, columnsOf, modelJsonSchema, snakeCase } from "./columns.js";
export { decodeRow, encodeRow } from "./codec.js";
export { type MongoCollection, type MongoIndex, type MongoOptions, generateMongoSchema } from "./mongo.js";
export { MIGRATIONS, type UpgradeSqlOptions, generateUpgradeSql, upgradeStatements } from "./migrations.js";
export {
  type NamingOptions,
  type SqlDialect,
  type SqlOptions,
  type SqlTable,
  SCHEMA_COMPONENT,
  SCHEMA_VERSION,
  SQL_DIALECTS,
  generateSql,
  quoteIdent,
  sqlTables,
  versionTableName,
} from "./sql.js";
export {
  type IndexCondition,
  type IndexSpec,
  type TableKey,
  type TableSpec,
  type TableSpecs,
  indexesOf,
  tableSpecs,
} from "./tables.js";
