import type { MongoMigration } from "../db/mongodb/layout.js";
import type { Migration } from "./migrations.js";

/**
 * The version of the storage schema this release writes and reads, kept in the
 * `<prefix>schema_version` table (MongoDB: collection) under the component `credit-management`
 * (docs/schema-upgrades.md). A release that changes the layout raises it and adds the step that
 * reaches it to `MIGRATIONS` (./migrations.ts) and `MONGO_MIGRATIONS` (src/db/mongodb/layout.ts).
 * @public
 */
export const SCHEMA_VERSION = 2;

/**
 * A schema version after this release's, with its upgrade steps: what a test of the upgrade
 * machinery defines to upgrade a store this release wrote, through the same code a later release's
 * steps will run (test/schema-next-version.test.ts). The package never sets one and no entry point
 * exports this.
 */
export interface NextVersion {
  /** Above `SCHEMA_VERSION`: the version stores are then made at and upgraded to. */
  version: number;
  /** Steps after the shipped ones, SQL stores (each `to` at most `version`). */
  sql: readonly Migration[];
  /** Steps after the shipped ones, MongoDB. */
  mongo: readonly MongoMigration[];
}

let next: NextVersion | null = null;

/** The version set by `setNextVersion`; null (always, outside tests of the upgrade machinery). */
export function nextVersion(): NextVersion | null {
  return next;
}

/** Sets the version after this release's (null: none again). For tests of the upgrade machinery. */
export function setNextVersion(version: NextVersion | null): void {
  if (version !== null && !(Number.isSafeInteger(version.version) && version.version > SCHEMA_VERSION))
    throw new Error(`a next schema version must be above ${SCHEMA_VERSION}, got ${String(version.version)}`);
  next = version;
}

/** The version stores are made at and upgraded to: `SCHEMA_VERSION`, or a test's next version. */
export function targetVersion(): number {
  return next?.version ?? SCHEMA_VERSION;
}
