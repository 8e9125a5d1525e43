import type { DbManager } from "../db/types.js";
import { replayJournal, type AuditReport } from "../domain/replay.js";
import type { AuditCheck } from "./audit-check.js";
import { rollupAuditScan, rollupProblems } from "../domain/usage.js";
import type { Account, AuditOptions, Grant, JournalEntry, JournalHead, Reservation } from "../models/index.js";
import type { JournalKeys } from "../domain/hash.js";
import type * as z from "zod/mini";
import { copy, journalAfter } from "./history.js";
import type { UnitRunner } from "./unit-of-work.js";

/** `CoreCreditService.latestCheckpoint` of a validated user: its latest checkpoint entry, if any. */
export async function latestCheckpoint(db: DbManager, user: string): Promise<JournalEntry | undefined> {
  const [last] = await db.listJournal(user, { order: "desc", types: ["checkpoint"], limit: 1 });
  return last === undefined ? undefined : copy(last);
}

/**
 * `CreditService.audit` of a validated user and options: replays the journal (from the latest
 * checkpoint by default, docs/operations.md, "Checkpoints and archival") against the stored
 * account, grants and holds, then runs the modules' `checks` and checks the daily usage rollup
 * where the store keeps one.
 */
export async function auditAccount(
  db: DbManager,
  user: string,
  o: z.output<typeof AuditOptions>,
  checks: readonly AuditCheck[] = [],
  keys?: JournalKeys,
): Promise<AuditReport> {
  const audit = (store: DbManager) => auditReads(store, user, o, checks, keys);
  // One snapshot: a unit of work committing between two of the reads would look like a mismatch
  // between the journal and the state (docs/operations.md, "Auditing").
  if (db.readSnapshot !== undefined) return db.readSnapshot(user, audit);
  // A store without snapshots: the account, its grants and holds read together again while the
  // account moved during those reads (a unit of work that changes any of them appends an entry,
  // so its seq tells); then the journal up to that seq, whose entries never change once written.
  for (let attempt = 1; ; attempt++) {
    const state = await stillState(db, user);
    if (state !== null || attempt === MAX_AUDIT_READS) return auditReads(db, user, o, checks, keys, state ?? undefined);
  }
}

/** An account's stored state read between two reads of its seq that agree; null when it moved. */
async function stillState(db: DbManager, user: string): Promise<StoredState | null> {
  const before = await db.getAccount(user);
  const [grants, reservations] = await Promise.all([
    db.listGrants(user, { includeInactive: true }),
    db.listReservations(user),
  ]);
  const account = await db.getAccount(user);
  return account?.seq === before?.seq ? { account, grants, reservations } : null;
}

/** An account's stored state: the account, its grants and holds. */
async function storedState(db: DbManager, user: string): Promise<StoredState> {
  const [account, grants, reservations] = await Promise.all([
    db.getAccount(user),
    db.listGrants(user, { includeInactive: true }),
    db.listReservations(user),
  ]);
  return { account, grants, reservations };
}

/** What the store holds of an account beside its journal. */
interface StoredState {
  account: Account | null;
  grants: Grant[];
  reservations: Reservation[];
}

/** Reads of an account's audit at most, on a store without snapshots whose account keeps moving. */
const MAX_AUDIT_READS = 20;

/** `auditAccount`'s reads and checks, on `db` (one snapshot of the store, where it has them). */
async function auditReads(
  db: DbManager,
  user: string,
  o: z.output<typeof AuditOptions>,
  checks: readonly AuditCheck[],
  keys: JournalKeys | undefined,
  still?: StoredState,
): Promise<AuditReport> {
  const head = o.head;
  // With a head kept elsewhere: from the latest checkpoint at or before it, so the replay covers it.
  const start =
    o.from === "genesis"
      ? undefined
      : head === undefined
        ? await latestCheckpoint(db, user)
        : (await db.listJournal(user, { order: "desc", types: ["checkpoint"], beforeSeq: head.seq + 1, limit: 1 }))[0];
  // With a state read apart (`still`): the journal up to its seq, what it was read at.
  const read = await journalAfter(db, user, start === undefined ? 0 : start.seq - 1);
  const entries = still === undefined ? read : read.filter((e) => e.seq <= (still.account?.seq ?? 0));
  const { account, grants, reservations } = still ?? (await storedState(db, user));
  // A key an entry names and `keys` does not hold is a problem of this account (an issue of kind
  // "unknown key"), not an error: `audit --all` goes on to the next account.
  const report = replayJournal(user, entries, { account, grants, reservations }, keys);
  if (head !== undefined) {
    const problem = headProblem(head, entries);
    if (problem !== null) {
      report.problems.unshift(problem);
      report.ok = false;
    }
  }
  const first = entries[0];
  if (o.from === "genesis" && first !== undefined && first.seq > 1) {
    report.problems.unshift(
      `entries 1 to ${first.seq - 1} are archived: audit from the checkpoint, and the archive with \`credit-management audit --archive\``,
    );
    report.ok = false;
  }
  for (const check of checks) {
    const problems = await check(db, user, { entries, grants, reservations });
    if (problems.length > 0) {
      report.problems.push(...problems);
      report.ok = false;
    }
  }
  const rollup = await usageRollupProblems(db, user);
  if (rollup.length > 0) {
    report.problems.push(...rollup);
    report.ok = false;
  }
  return report;
}

/**
 * What is wrong with the journal against a head kept outside the database (docs/concepts.md, "A
 * keyed chain"): the entry of its seq is gone (the journal cut before it) or has another hash (the
 * journal up to it rewritten: each hash covers the one before). Null: it reaches the head.
 */
function headProblem(head: JournalHead, entries: readonly JournalEntry[]): string | null {
  const first = entries[0];
  const last = entries[entries.length - 1];
  if (last === undefined || last.seq < head.seq)
    return `the journal ends at seq ${last?.seq ?? 0}, before the head kept at seq ${head.seq}: entries were removed`;
  if (first !== undefined && first.seq > head.seq)
    return `entry ${head.seq} (the head kept) is archived: check the head against the archive`;
  const at = entries.find((e) => e.seq === head.seq);
  if (at === undefined) return `entry ${head.seq} (the head kept) is missing`;
  if (at.hash !== head.hash)
    return `entry ${head.seq} does not have the hash of the head kept: the journal up to it was rewritten`;
  return null;
}

/**
 * Where the store keeps a daily usage rollup (PostgreSQL, docs/usage.md, "The daily rollup"):
 * its rows of `user` and the journal's own report by UTC day (the journal path of `getUsage`, a
 * separate implementation of the same rules), compared by `rollupProblems` (src/core/domain/usage.ts).
 */
async function usageRollupProblems(db: DbManager, user: string): Promise<string[]> {
  if (db.usageRollup === undefined || db.usage === undefined) return [];
  const rows = await db.usageRollup(user);
  if (rows === null) return [];
  const [first] = await db.listJournal(user, { order: "asc", limit: 1 });
  const [last] = await db.listJournal(user, { order: "desc", limit: 1 });
  const scan = rollupAuditScan(user, first, last);
  const buckets = scan === null ? [] : await db.usage(scan);
  return rollupProblems(rows, buckets, first, last);
}

/**
 * `CreditService.checkpoint`: a checkpoint entry when at least `min` entries follow the latest one
 * (docs/operations.md, "Checkpoints and archival"), in a unit of work that neither settles nor
 * brings periods; null when fewer do, or the account has none.
 */
export async function writeCheckpoint(
  db: DbManager,
  units: UnitRunner,
  user: string,
  min: number,
): Promise<JournalEntry | null> {
  const last = await latestCheckpoint(db, user);
  const since = last === undefined ? 0 : last.seq;
  return units.mutate(
    "checkpoint",
    user,
    {},
    async (work, tx) => {
      // (A checkpoint written meanwhile by another worker only makes this one less needed.)
      if (work.isNew || work.account.seq - since < min) return null;
      const missing = work.missingHeldGrants();
      if (missing.length > 0) work.include(await tx.getGrants(missing));
      return copy(work.checkpoint());
    },
    undefined,
    { settle: false, periods: false },
  );
}
