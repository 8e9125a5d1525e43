import type { DbManager } from "../db/types.js";
import type { Grant, JournalEntry, Reservation } from "../models/index.js";

/** What an audit read of one account: the journal it replayed, the stored grants and holds. */
export interface AuditRead {
  entries: readonly JournalEntry[];
  grants: readonly Grant[];
  reservations: readonly Reservation[];
}

/**
 * A module's own check of one account in `audit()` (ARCHITECTURE.md, "Seams"): the problems it finds
 * in what the audit read, none when all is well. The revenue module checks its roll-forward.
 */
export type AuditCheck = (db: DbManager, user: string, read: AuditRead) => Promise<string[]>;
