export { type Column, type ColumnKind, columnsOf, modelJsonSchema, snakeCase } from "./columns.js";
export { decodeRow, encodeRow } from "./codec.js";
export { type MongoCollection, type MongoIndex, type MongoOptions, generateMongoSchema } from "./mongo.js";
export {
  type NamingOptions,
  type SqlDialect,
  type SqlOptions,
  type SqlTable,
  SQL_DIALECTS,
  generateSql,
  quoteIdent,
  sqlTables,
} from "./sql.js";
export { type IndexCondition, type IndexSpec, type TableKey, type TableSpec, type TableSpecs, indexesOf, tableSpecs } from "./tables.js";
