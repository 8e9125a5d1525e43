import type { DbManager } from "../db/types.js";
import type { Grant, JournalEntry, Reservation } from "../models/index.js";

/** What an audit reads of one account: the journal it replayed, the stored grants and holds. @beta */
export interface AuditRead {
  /** The journal entries the audit replayed: from the latest checkpoint, or all with `from: "genesis"`. */
  entries: readonly JournalEntry[];
  /** The account's grants as stored, inactive ones included. */
  grants: readonly Grant[];
  /** The account's holds as stored. */
  reservations: readonly Reservation[];
}

/**
 * A module's own check of one account in `audit()` (ARCHITECTURE.md, "Seams"): the problems it finds
 * in what the audit read, none when all is well. The revenue module checks its roll-forward.
 * @beta
 */
export type AuditCheck = (db: DbManager, user: string, read: AuditRead) => Promise<string[]>;
