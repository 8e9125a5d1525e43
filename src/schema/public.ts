/**
 * `credit-management/schema`: the tables and collections the built-in stores create, as data
 * (`tableSpecs`) and as DDL (`generateSql` for PostgreSQL and MySQL,
 * `generateUpgradeSql` from an older version, `generateMongoSchema` for MongoDB, and
 * `generateMongoScript`: the mongosh script of what `MongoDbManager.init()` makes), for a team that
 * runs its migrations with its own tool. The row codecs (`./codec.ts`) and naming helpers (`./sql.ts`)
 * the stores share stay inside the package.
 */
export { type MongoCollection, type MongoIndex, type MongoOptions, generateMongoSchema } from "./mongo.js";
export { type UpgradeSqlOptions, generateUpgradeSql } from "./migrations.js";
export type { PartitionInterval, PartitionOptions } from "./partitions.js";
export { type MongoScriptOptions, generateMongoScript } from "./mongo-script.js";
export {
  type NamingOptions,
  type SqlDialect,
  type SqlOptions,
  SCHEMA_VERSION,
  SQL_DIALECTS,
  generateSql,
} from "./sql.js";
// The tables as data, and the types a changed copy of them (the generators' `tables` option) is written in.
export { type IndexSpec, type TableSpec, type TableSpecs, tableSpecs } from "./tables.js";
