import type { Grant, JournalEntry, Reservation } from "../models/index.js";

/**
 * The account state a `checkpoint` journal entry records (docs/operations.md, "Checkpoints and
 * archival"), in its `metadata.checkpoint` — so the entry's hash covers it. Its balance, reserved
 * and debt are the entry's own `balanceAfter`, `reservedAfter` and `debtAfter` (a checkpoint
 * changes nothing: amount 0). An audit can start its replay here instead of at the first entry.
 */
export interface CheckpointSnapshot {
  /** Format of the snapshot (1). */
  v: 1;
  /**
   * Every grant with credits left, and every grant an active hold draws from: grant id →
   * `[remaining, expiredAmount]`.
   */
  grants: Record<string, [number, number]>;
  /** Every active hold: reservation id → grant id → credits held from it (no zero portions). */
  holds: Record<string, Record<string, number>>;
  /**
   * The grants of `grants` that have not started (docs/units.md, "Grants that start later"): their
   * credits are in no balance. Absent: none.
   */
  upcoming?: string[];
  /**
   * Only on an account that holds units other than the default one (docs/units.md): each such
   * unit's `[balance, reserved, debt]`, and the unit of every grant above that is not in the
   * default unit.
   */
  units?: Record<string, [number, number, number]>;
  grantUnits?: Record<string, string>;
}

/**
 * The snapshot of an account's state from its grants and holds: the open grants with credits left,
 * the active holds, and the grants those draw from (`grantOf` must know every one of them).
 */
export function snapshotOf(
  grants: Iterable<Grant>,
  holds: Iterable<Reservation>,
  grantOf: (id: string) => Grant | undefined,
): CheckpointSnapshot {
  const out: CheckpointSnapshot = { v: 1, grants: {}, holds: {} };
  for (const g of grants) {
    if (g.remaining <= 0) continue;
    out.grants[g.id] = [g.remaining, g.expiredAmount];
    if (g.upcoming === true && g.closedAt === null) (out.upcoming ??= []).push(g.id);
  }
  for (const h of holds) {
    if (h.status !== "active") continue;
    const alloc: Record<string, number> = {};
    for (const p of h.allocations) {
      if (p.amount === 0) continue;
      alloc[p.grantId] = (alloc[p.grantId] ?? 0) + p.amount;
      if (out.grants[p.grantId] === undefined) {
        const g = grantOf(p.grantId);
        if (g === undefined) throw new Error(`checkpoint: grant ${p.grantId} of hold ${h.id} is not loaded`);
        out.grants[p.grantId] = [g.remaining, g.expiredAmount];
      }
    }
    out.holds[h.id] = alloc;
  }
  return out;
}

/** `snapshot` with the figures of the units other than the default one and its grants' units (docs/units.md). */
export function withUnits(
  snapshot: CheckpointSnapshot,
  units: Readonly<Record<string, { balance: number; reserved: number; debt: number }>> | null | undefined,
  grantOf: (id: string) => Grant | undefined,
): CheckpointSnapshot {
  if (units == null || Object.keys(units).length === 0) return snapshot;
  const grantUnits: Record<string, string> = {};
  for (const id of Object.keys(snapshot.grants)) {
    const unit = grantOf(id)?.unit ?? null;
    if (unit !== null) grantUnits[id] = unit;
  }
  const figures: Record<string, [number, number, number]> = {};
  for (const [unit, f] of Object.entries(units)) figures[unit] = [f.balance, f.reserved, f.debt];
  return { ...snapshot, units: figures, grantUnits };
}

/** The snapshot a checkpoint entry carries, or a sentence saying why it has none that can be read. */
export function readSnapshot(entry: JournalEntry): CheckpointSnapshot | string {
  const s = (entry.metadata as { checkpoint?: unknown } | null)?.checkpoint as Partial<CheckpointSnapshot> | undefined;
  if (typeof s !== "object" || s === null || s.v !== 1) return `checkpoint ${entry.seq} has no snapshot of version 1`;
  const isCount = (n: unknown) => typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
  const grants = s.grants;
  const holds = s.holds;
  if (typeof grants !== "object" || grants === null || typeof holds !== "object" || holds === null)
    return `checkpoint ${entry.seq} has a malformed snapshot`;
  for (const g of Object.values(grants)) {
    if (!Array.isArray(g) || g.length !== 2 || !isCount(g[0]) || !isCount(g[1]))
      return `checkpoint ${entry.seq} has a malformed grant in its snapshot`;
  }
  for (const h of Object.values(holds)) {
    if (typeof h !== "object" || h === null || !Object.values(h).every(isCount))
      return `checkpoint ${entry.seq} has a malformed hold in its snapshot`;
  }
  const upcoming = s.upcoming;
  if (
    upcoming !== undefined &&
    (!Array.isArray(upcoming) || !upcoming.every((id) => typeof id === "string" && grants[id] !== undefined))
  )
    return `checkpoint ${entry.seq} has a malformed list of upcoming grants in its snapshot`;
  const snapshot: CheckpointSnapshot = { v: 1, grants, holds, ...(upcoming === undefined ? {} : { upcoming }) };
  const units = s.units;
  const grantUnits = s.grantUnits;
  if (units !== undefined || grantUnits !== undefined) {
    const figuresOk =
      typeof units === "object" &&
      units !== null &&
      Object.values(units).every(
        (f) => Array.isArray(f) && f.length === 3 && Number.isSafeInteger(f[0]) && isCount(f[1]) && isCount(f[2]),
      );
    const namesOk =
      typeof grantUnits === "object" &&
      grantUnits !== null &&
      Object.values(grantUnits).every((u) => typeof u === "string");
    if (!figuresOk || !namesOk) return `checkpoint ${entry.seq} has malformed units in its snapshot`;
    return { ...snapshot, units, grantUnits };
  }
  return snapshot;
}

/** The metadata of a checkpoint entry. */
export function checkpointMetadata(snapshot: CheckpointSnapshot): Record<string, unknown> {
  return { checkpoint: snapshot };
}
