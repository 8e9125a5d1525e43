/**
 * Time partitions of the append-only tables (PostgreSQL: docs/running-for-years.md, "Partitioning
 * on PostgreSQL"): what a store that has them reports.
 */

/** One partition of a partitioned table; `from`/`to` null: the DEFAULT partition. @public */
export interface PartitionInfo {
  /** The partitioned table. */
  table: "journal" | "ledger";
  /** The partition's table name (with the prefix, without the schema). */
  name: string;
  /** The start of the partition's range. */
  from: Date | null;
  /** The end of the partition's range. */
  to: Date | null;
}

/** What `ensurePartitions` did. @public */
export interface EnsurePartitionsReport {
  /** Partitions created (names). */
  created: string[];
  /** Rows moved out of a DEFAULT partition into a partition made for their range. */
  movedFromDefault: number;
}

/** Options of `archivePartitions` (validated by `credits.archivePartitions`). @public */
export interface ArchivePartitionsInput {
  /** Partitions whose whole range ends at or before this instant. */
  before: Date;
  /** Directory of the JSONL files, one per partition (`<partition>.jsonl`). */
  dir: string;
  /** Keep the detached tables (default false: dropped once their file is on disk). */
  keepDetached: boolean;
  /**
   * Writes a checkpoint on an account (the service's `credits.checkpoint`): called for each account
   * whose last entry in a partition has no later checkpoint; null: such an account refuses the archive.
   */
  checkpoint: ((userId: string) => Promise<unknown>) | null;
}

/** One archived partition. @public */
export interface ArchivedPartition {
  /** The table the partition belonged to. */
  table: "journal" | "ledger";
  /** The partition's name. */
  name: string;
  /** The start of the partition's range. */
  from: Date;
  /** The end of the partition's range. */
  to: Date;
  /** Rows written to `file` (and gone from the store with the partition). */
  rows: number;
  /** The file the partition was written to. */
  file: string;
  /** Journal partitions: the accounts with entries in it. */
  accounts: number;
}

/** What `archivePartitions` did. @public */
export interface ArchivePartitionsReport {
  /** The partitions archived. */
  partitions: ArchivedPartition[];
  /** Checkpoints written so that every archived account has one after its archived entries. */
  checkpointsWritten: number;
}

/** What `convertToPartitioned` did. @public */
export interface ConvertReport {
  /** The tables converted, the rows copied, and the old table's name when it was kept (`keepOld`). */
  tables: { table: "journal" | "ledger"; rows: number; kept: string | null }[];
  /** Partitions created (names). */
  created: string[];
}
