import { own } from "./own.js";
import type { Account, Grant, GrantScope, JournalEntry, Reservation } from "../models/index.js";
import { readSnapshot } from "./checkpoint.js";
import { stringify } from "safe-stable-stringify";
import { type JournalKeys, MissingJournalKeyError, hashEntry } from "./hash.js";
import { chargeDraw, reversedOf } from "./reversal.js";

/** Result of `audit(userId)`. @public */
export interface AuditReport {
  /** The account audited. */
  userId: string;
  /** True when the journal is intact and the stored state equals what it recomputes. */
  ok: boolean;
  /** What is wrong, in plain words (empty when ok). */
  problems: string[];
  /**
   * The problems of `problems` a program can act on, by kind (docs/operations.md, "Auditing");
   * absent when there is none. `"unknown key"`: entries are signed with a journal key the manager
   * does not hold (`journalKeys`, or `CREDIT_JOURNAL_KEYS`; docs/concepts.md, "A keyed chain"):
   * `keyId`, the first entry naming it (`seq`) and how many do (`entries`); their hashes could not
   * be checked, the rest of the account was audited. `message`: the problem as `problems` has it.
   */
  issues?: { kind: "unknown key"; keyId: string; seq: number; entries: number; message: string }[];
  /** Journal entries checked. */
  entries: number;
  /**
   * Where the replay started: at the first entry ("genesis"), or at the account's latest checkpoint
   * ("checkpoint"), trusting the state it records and the hash chain up to it (docs/operations.md,
   * "Checkpoints and archival").
   */
  from: "genesis" | "checkpoint";
  /** The seq of the entry the replay started at: 1 from genesis (0 without entries), else the checkpoint's. */
  fromSeq: number;
  /** Recomputed from the journal. */
  balance: number;
  /** Credits held, as the replay of the journal finds them. */
  reserved: number;
  /** Debt, as the replay finds it. */
  debt: number;
  /** Credits available, as the replay finds them. */
  available: number;
  /**
   * Recomputed `remaining` of every grant the replayed entries mention (from a checkpoint: the
   * grants it records and those the entries after it mention).
   */
  grants: Record<string, number>;
  /** Recomputed amounts of the holds still active. */
  activeReservations: Record<string, number>;
  /**
   * Recomputed figures of each unit other than the default one (docs/units.md), by name; absent when
   * the journal has none. `balance`, `reserved`, `debt` and `available` above are the default unit's.
   */
  units?: Record<string, { balance: number; reserved: number; debt: number; available: number }>;
}

/**
 * Replays a user's journal from zero — or, when `entries` starts with a checkpoint entry (`seq` >
 * 1), from the state that checkpoint records — and compares it with the stored state (`stored`
 * null: an archive's part, which has none; its closing checkpoint is checked like any other).
 *
 * Each entry type has one effect (docs/concepts.md, "The journal"):
 * add +balance, grants created, debt paid by amount − Σgrants; deduct −balance, grants drawn,
 * debt += amount − Σgrants; expire/void −balance, grants removed; reserve +reserved, grants moved
 * into the hold; commit_reserved −balance −reserved, taken from the hold (a partial capture also
 * returns the rest: see `replayCapture`); release_reserved −reserved, the hold's remaining
 * allocations return (net of debt paid from them); reverse +balance, credits back to the grants it
 * lists (`returned`; those with `kind: "debt_paid"` paid debt instead), debt −= amount − Σ the
 * returned ones (a
 * reversal must name a charge of this account and, with the charge's other reversals, stay within
 * what it charged: see `checkReversal`).
 *
 * Each entry's hash is recomputed (a keyed entry's with the key `keys` holds under its `keyId`:
 * none there, a `MissingJournalKeyError`); `keys: "links only"` (an archive's check, which has no
 * keys) checks a keyed entry's links and not its HMAC.
 *
 * This is deliberately a second, independent statement of the rules in `AccountWork`.
 */
export function replayJournal(
  userId: string,
  entries: readonly JournalEntry[],
  stored: { account: Account | null; grants: readonly Grant[]; reservations: readonly Reservation[] } | null,
  keys?: JournalKeys | "links only",
): AuditReport {
  const problems: string[] = [];
  /** Keys named by entries and not given: the first entry and how many name each. */
  const unknownKeys = new Map<string, { seq: number; entries: number }>();
  /** Each unit's figures (null: the default unit), checked per unit: no entry moves credits between units (docs/units.md). */
  const figures = new Map<string | null, { balance: number; reserved: number; debt: number }>();
  const fig = (unit: string | null) => {
    let f = figures.get(unit);
    if (f === undefined) figures.set(unit, (f = { balance: 0, reserved: 0, debt: 0 }));
    return f;
  };
  /** The unit of each grant and hold met that is not in the default one. */
  const grantUnit = new Map<string, string>();
  const holdUnit = new Map<string, string>();
  const unitOfGrant = (id: string) => grantUnit.get(id) ?? null;
  let prevHash: string | null = null;
  const remaining = new Map<string, number>();
  const holds = new Map<string, Map<string, number>>();
  const created = new Set<string>();
  const expired = new Map<string, number>();
  /** Grants added to start later whose `start` entry has not come yet: in no balance (docs/units.md). */
  const upcoming = new Set<string>();
  /**
   * From a checkpoint: the grants a reversal returns credits to that neither the checkpoint records
   * nor an entry after it created, and what the reversals returned to each (`compareStored`).
   */
  const metInReverse = new Map<string, number>();
  /** The seq before the first entry replayed: 0 from genesis, the checkpoint's − 1 from one. */
  let base = 0;
  const first = entries[0];
  if (first !== undefined && first.type === "checkpoint" && first.seq > 1) {
    // Start from the checkpoint: its state and its predecessor's hash are taken as they are (the
    // checkpoint's own hash, which covers both, is still checked below).
    base = first.seq - 1;
    prevHash = first.prevHash;
    fig(null).balance = first.balanceAfter;
    fig(null).reserved = first.reservedAfter;
    fig(null).debt = first.debtAfter;
    const snapshot = readSnapshot(first);
    // (One that cannot be read is reported by its own case below.)
    if (typeof snapshot !== "string") {
      for (const [id, [left, gone]] of Object.entries(snapshot.grants)) {
        created.add(id);
        remaining.set(id, left);
        if (gone > 0) expired.set(id, gone);
      }
      for (const [id, alloc] of Object.entries(snapshot.holds)) holds.set(id, new Map(Object.entries(alloc)));
      for (const id of snapshot.upcoming ?? []) upcoming.add(id);
      for (const [unit, [b, r, d]] of Object.entries(snapshot.units ?? {}))
        Object.assign(fig(unit), { balance: b, reserved: r, debt: d });
      for (const [id, unit] of Object.entries(snapshot.grantUnits ?? {})) grantUnit.set(id, unit);
      for (const [id, alloc] of Object.entries(snapshot.holds)) {
        const unit = unitOfGrant(Object.keys(alloc)[0] ?? "");
        if (unit !== null) holdUnit.set(id, unit);
      }
    }
  }

  /** The newest hash version met, the first keyed entry's seq, and each grant's scope as its add entry (version 2) recorded it. */
  let newestVersion = 1;
  let keyedAt: number | null = null;
  const scopes = new Map<string, GrantScope | null>();

  const sumOf = (e: JournalEntry) => e.grants.reduce((s, g) => s + g.amount, 0);
  const take = (grantId: string, amount: number, seq: number) => {
    const left = (remaining.get(grantId) ?? 0) - amount;
    if (!created.has(grantId)) problems.push(`entry ${seq} draws from grant ${grantId} that no add entry created`);
    if (left < 0) problems.push(`entry ${seq} takes grant ${grantId} below zero`);
    remaining.set(grantId, left);
  };

  /** The entries replayed so far, by id, and the reversals of each charge (`checkReversal`). */
  const byId = new Map<string, JournalEntry>();
  const reversals = new Map<string, JournalEntry[]>();

  entries.forEach((e, i) => {
    const where = `entry ${e.seq}`;
    if (e.userId !== userId) problems.push(`${where} belongs to another account`);
    if (e.seq !== base + i + 1) problems.push(`${where} is out of sequence: expected seq ${base + i + 1}`);
    if (e.prevHash !== prevHash) problems.push(`${where} does not chain to the previous entry`);
    const { hash, ...rest } = e;
    const unverified = keys === "links only" && (e.keyId ?? null) !== null;
    if (!unverified) {
      let expected: string | null;
      try {
        expected = hashEntry(rest, keys === "links only" ? undefined : keys);
      } catch (error) {
        // Its hash cannot be checked without the key; the rest of the account still is.
        if (!(error instanceof MissingJournalKeyError)) throw error;
        const seen = unknownKeys.get(error.keyId);
        if (seen === undefined) unknownKeys.set(error.keyId, { seq: e.seq, entries: 1 });
        else seen.entries++;
        expected = null;
      }
      if (expected !== null && expected !== hash)
        problems.push(`${where} was altered: its hash does not match its content`);
    }
    prevHash = hash;
    // Written in seq order, a chain never goes back to an older hash input or drops its key: an
    // entry that does was written again without the key (docs/concepts.md, "A keyed chain").
    const version = e.hashVersion ?? 1;
    if (version < newestVersion)
      problems.push(`${where} has hash version ${version} after an entry of version ${newestVersion}: rewritten`);
    newestVersion = Math.max(newestVersion, version);
    if ((e.keyId ?? null) !== null) keyedAt ??= e.seq;
    else if (keyedAt !== null)
      problems.push(`${where} is not keyed, though entry ${keyedAt} before it is: written again without the key`);
    if (e.type === "add" && version >= 2) for (const g of e.grants) scopes.set(g.grantId, e.scope ?? null);
    const s = sumOf(e);
    const unit = e.unit ?? null;
    const f = fig(unit);
    let { balance, reserved, debt } = f;
    // Every grant an entry names is in its unit (a hold's and a charge's unit are their entry's).
    if (e.type === "add" && unit !== null) for (const g of e.grants) grantUnit.set(g.grantId, unit);
    if (e.type === "reverse" && unit !== null)
      for (const g of e.grants) if (!created.has(g.grantId)) grantUnit.set(g.grantId, unit);
    for (const g of e.grants)
      if (unitOfGrant(g.grantId) !== unit && (created.has(g.grantId) || e.type === "add"))
        problems.push(`${where} moves credits of grant ${g.grantId}, of another unit`);
    if (e.type === "reserve" && unit !== null && e.reservationId !== null) holdUnit.set(e.reservationId, unit);
    if ((e.type === "commit_reserved" || e.type === "release_reserved") && e.reservationId !== null)
      if ((holdUnit.get(e.reservationId) ?? null) !== unit && holds.has(e.reservationId))
        problems.push(`${where} settles a hold of another unit`);
    switch (e.type) {
      case "add":
        if ((e.effectiveAt ?? null) !== null) {
          // A grant that starts later: created whole, in no balance until its `start` entry.
          if (s !== e.amount || e.grants.length !== 1)
            problems.push(`${where} adds a grant that starts later but does not create it whole`);
          for (const g of e.grants) {
            created.add(g.grantId);
            remaining.set(g.grantId, g.amount);
            upcoming.add(g.grantId);
          }
          break;
        }
        if (s > e.amount) problems.push(`${where} creates more than it adds`);
        for (const g of e.grants) {
          created.add(g.grantId);
          remaining.set(g.grantId, g.amount);
        }
        balance += e.amount;
        debt -= e.amount - s;
        break;
      case "deduct":
        for (const g of e.grants) take(g.grantId, g.amount, e.seq);
        balance -= e.amount;
        debt += e.amount - s;
        break;
      case "expire":
      case "void": {
        if (s !== e.amount) problems.push(`${where} removes ${s} from grants but says ${e.amount}`);
        for (const g of e.grants) take(g.grantId, g.amount, e.seq);
        if (e.type === "expire")
          for (const g of e.grants) expired.set(g.grantId, (expired.get(g.grantId) ?? 0) + g.amount);
        // An upcoming grant's credits were in no balance.
        let notInBalance = 0;
        for (const g of e.grants) if (upcoming.has(g.grantId)) notInBalance += g.amount;
        balance -= e.amount - notInBalance;
        break;
      }
      case "start": {
        // An upcoming grant starts: its credits join the balance, the `debt_paid` part paying debt.
        if (s !== e.amount) problems.push(`${where} starts ${s} of grants but says ${e.amount}`);
        let paid = 0;
        for (const g of e.grants) {
          if (!upcoming.has(g.grantId)) problems.push(`${where} starts grant ${g.grantId}, which is not upcoming`);
          if (g.kind === "debt_paid") {
            paid += g.amount;
            take(g.grantId, g.amount, e.seq);
          }
        }
        for (const g of e.grants) upcoming.delete(g.grantId);
        balance += e.amount;
        debt -= paid;
        break;
      }
      case "reserve": {
        if (s !== e.amount) problems.push(`${where} holds ${s} from grants but says ${e.amount}`);
        if (e.reservationId === null) problems.push(`${where} has no reservation id`);
        const alloc = new Map<string, number>();
        for (const g of e.grants) {
          take(g.grantId, g.amount, e.seq);
          alloc.set(g.grantId, (alloc.get(g.grantId) ?? 0) + g.amount);
        }
        holds.set(e.reservationId ?? "", alloc);
        reserved += e.amount;
        break;
      }
      case "commit_reserved": {
        const alloc = holds.get(e.reservationId ?? "");
        if (alloc === undefined) {
          problems.push(`${where} commits a reservation that is not active`);
          break;
        }
        const r = replayCapture(e, alloc, remaining, problems);
        balance -= e.amount;
        reserved -= r.spent + r.returned + r.debtPaid;
        debt -= r.debtPaid;
        if (r.partial && ![...alloc.values()].every((v) => v === 0))
          problems.push(`${where} returns part of the hold but leaves some of it held`);
        if ([...alloc.values()].every((v) => v === 0)) holds.delete(e.reservationId ?? "");
        break;
      }
      case "release_reserved": {
        const alloc = holds.get(e.reservationId ?? "");
        if (alloc === undefined) {
          problems.push(`${where} releases a reservation that is not active`);
          break;
        }
        const held = [...alloc.values()].reduce((a, b) => a + b, 0);
        if (held !== e.amount) problems.push(`${where} releases ${e.amount} but the hold had ${held}`);
        for (const g of e.grants) {
          if (g.amount > (alloc.get(g.grantId) ?? 0))
            problems.push(`${where} returns more to ${g.grantId} than was held`);
          remaining.set(g.grantId, (remaining.get(g.grantId) ?? 0) + g.amount);
        }
        reserved -= e.amount;
        debt -= e.amount - s;
        holds.delete(e.reservationId ?? "");
        break;
      }
      case "reverse": {
        let back = 0;
        for (const g of e.grants) {
          if (g.kind === "debt_paid") continue;
          back += g.amount;
          if (base > 0 && (!created.has(g.grantId) || metInReverse.has(g.grantId)))
            metInReverse.set(g.grantId, (metInReverse.get(g.grantId) ?? 0) + g.amount);
          // (A grant no entry created: the one a reversal makes for debt paid since, checked below;
          // from a checkpoint, also one closed before it, which the checkpoint does not record.)
          created.add(g.grantId);
          remaining.set(g.grantId, (remaining.get(g.grantId) ?? 0) + g.amount);
        }
        if (back > e.amount) problems.push(`${where} returns ${back} to grants but gives back ${e.amount}`);
        balance += e.amount;
        debt -= e.amount - back;
        checkReversal(e, byId, reversals, base > 0, problems);
        break;
      }
      case "limits":
        if (e.amount !== 0 || e.grants.length > 0) problems.push(`${where}: setting limits moves no credits`);
        break;
      case "checkpoint":
        if (e.amount !== 0 || e.grants.length > 0) problems.push(`${where}: a checkpoint changes nothing`);
        checkSnapshot(e, { remaining, expired, holds }, problems);
        break;
    }
    byId.set(e.id, e);
    if (e.type !== "reverse" && e.reverses != null) problems.push(`${where} is a ${e.type} entry but names a charge`);
    if (e.balanceAfter !== balance) problems.push(`${where}: balanceAfter ${e.balanceAfter}, replay gives ${balance}`);
    if (e.reservedAfter !== reserved)
      problems.push(`${where}: reservedAfter ${e.reservedAfter}, replay gives ${reserved}`);
    if (e.debtAfter !== debt) problems.push(`${where}: debtAfter ${e.debtAfter}, replay gives ${debt}`);
    if (debt < 0) problems.push(`${where}: debt below zero`);
    if (reserved < 0) problems.push(`${where}: reserved below zero`);
    Object.assign(f, { balance, reserved, debt });
  });

  // The invariants of docs/concepts.md ("Audit") on the replayed state, per unit (docs/units.md);
  // an upcoming grant's credits are in no balance (docs/units.md, "Grants that start later").
  const activeReservations: Record<string, number> = {};
  const held = new Map<string | null, number>();
  for (const [id, alloc] of holds) {
    const v = [...alloc.values()].reduce((a, b) => a + b, 0);
    activeReservations[id] = v;
    const unit = holdUnit.get(id) ?? null;
    held.set(unit, (held.get(unit) ?? 0) + v);
  }
  const left = new Map<string | null, number>();
  for (const [id, v] of remaining)
    if (!upcoming.has(id)) left.set(unitOfGrant(id), (left.get(unitOfGrant(id)) ?? 0) + v);
  fig(null);
  for (const [unit, { balance, reserved, debt }] of figures) {
    const named = unit === null ? "" : ` (${unit})`;
    const sumRemaining = left.get(unit) ?? 0;
    const sumHolds = held.get(unit) ?? 0;
    if (reserved !== sumHolds) problems.push(`reserved ${reserved} != Σ active holds ${sumHolds}${named}`);
    if (balance !== sumRemaining + sumHolds - debt) {
      problems.push(
        `balance ${balance} != Σ grant.remaining ${sumRemaining} + Σ holds ${sumHolds} − debt ${debt}${named}`,
      );
    }
    // Debt is paid by unscoped credits only (docs/teams-and-limits.md, "Scoped credits"): scoped
    // grants may keep theirs while it is owed. Their scopes are the stored grants' (none: an archive).
    let sumUnscoped = sumRemaining;
    if (debt > 0 && stored !== null)
      for (const g of stored.grants)
        if ((g.scope ?? null) !== null && unitOfGrant(g.id) === unit && !upcoming.has(g.id))
          sumUnscoped -= remaining.get(g.id) ?? 0;
    if (debt > 0 && sumUnscoped > 0)
      problems.push(`debt ${debt} outstanding while grants still hold ${sumUnscoped}${named}`);
  }
  const { balance, reserved, debt } = fig(null);
  const units: Record<string, { balance: number; reserved: number; debt: number; available: number }> = {};
  for (const [unit, f] of figures) if (unit !== null) units[unit] = { ...f, available: f.balance - f.reserved };

  // A scoped grant's scope is in its add entry's hash (version 2): the stored grant must keep it.
  if (stored !== null)
    for (const g of stored.grants) {
      const recorded = scopes.get(g.id);
      if (recorded !== undefined && stringify(g.scope ?? null) !== stringify(recorded))
        problems.push(`grant ${g.id}'s scope is not the one its add entry recorded`);
    }

  // The stored state must be what the journal says (unless there is none: an archive).
  if (stored !== null)
    compareStored(
      stored,
      entries,
      {
        base,
        balance,
        reserved,
        debt,
        units,
        grantUnits: grantUnit,
        prevHash,
        remaining,
        expired,
        upcoming,
        activeReservations,
        metInReverse,
        checkpointAt: base > 0 ? (first as JournalEntry).createdAt : null,
      },
      problems,
    );

  const issues: NonNullable<AuditReport["issues"]> = [];
  for (const [keyId, { seq, entries: n }] of unknownKeys) {
    const message =
      `${n === 1 ? `entry ${seq} is` : `${n} entries from entry ${seq} are`} signed with the journal key ${JSON.stringify(keyId)}, ` +
      `which ${keys === undefined ? "is not given (no journalKeys)" : "journalKeys does not hold"}: ${n === 1 ? "its hash was" : "their hashes were"} not checked (give every key an entry names: docs/concepts.md, "A keyed chain")`;
    problems.unshift(message);
    issues.push({ kind: "unknown key", keyId, seq, entries: n, message });
  }

  return {
    userId,
    ok: problems.length === 0,
    problems,
    ...(issues.length > 0 ? { issues } : {}),
    entries: entries.length,
    from: base > 0 ? "checkpoint" : "genesis",
    fromSeq: base > 0 ? base + 1 : Math.min(entries.length, 1),
    balance,
    reserved,
    debt,
    available: balance - reserved,
    grants: Object.fromEntries(remaining),
    activeReservations,
    ...(Object.keys(units).length > 0 ? { units } : {}),
  };
}

/**
 * A reversal's charge (docs/concepts.md, "Giving a charge back"): an earlier entry of this account
 * that is a charge, whose reversals so far (this one included) give back no more than it charged,
 * nor to any grant more than it drew from it; what goes to a grant the charge did not draw from
 * (one the reversal made for the charge's debt that an addition paid since) stays within the
 * charge's debt. From a checkpoint, a charge before it is not among the entries: not checked.
 */
function checkReversal(
  e: JournalEntry,
  byId: ReadonlyMap<string, JournalEntry>,
  reversals: Map<string, JournalEntry[]>,
  fromCheckpoint: boolean,
  problems: string[],
): void {
  const where = `entry ${e.seq}`;
  if (e.reverses == null) {
    problems.push(`${where} is a reversal that names no charge`);
    return;
  }
  const charge = byId.get(e.reverses);
  if (charge === undefined) {
    if (!fromCheckpoint) problems.push(`${where} reverses ${e.reverses}, which is no earlier entry of this account`);
    return;
  }
  const draw = chargeDraw(charge);
  if (typeof draw === "string") {
    problems.push(`${where} reverses entry ${charge.seq}, which is not a charge`);
    return;
  }
  const all = [...(reversals.get(charge.id) ?? []), e];
  reversals.set(charge.id, all);
  const so = reversedOf(draw, all);
  if (so.total > draw.amount)
    problems.push(`the reversals of entry ${charge.seq} give back ${so.total}, more than its ${draw.amount}`);
  for (const d of draw.draws) {
    const back = so.toGrants.get(d.grantId) ?? 0;
    if (back > d.amount)
      problems.push(
        `the reversals of entry ${charge.seq} give ${back} back to grant ${d.grantId}, which it drew ${d.amount} from`,
      );
  }
  if (so.debt > draw.debt)
    problems.push(
      `the reversals of entry ${charge.seq} give back ${so.debt} of debt, more than the ${draw.debt} it made`,
    );
}

/**
 * Compares the state a checkpoint entry records with the state replayed up to it: its grants with
 * credits left or held (remaining and expired), its active holds, portion by portion.
 */
function checkSnapshot(
  e: JournalEntry,
  state: {
    remaining: ReadonlyMap<string, number>;
    expired: ReadonlyMap<string, number>;
    holds: ReadonlyMap<string, ReadonlyMap<string, number>>;
  },
  problems: string[],
): void {
  const where = `checkpoint ${e.seq}`;
  const snapshot = readSnapshot(e);
  if (typeof snapshot === "string") {
    problems.push(snapshot);
    return;
  }
  const held = new Set<string>();
  const activeHolds = new Map<string, Map<string, number>>();
  for (const [id, alloc] of state.holds) {
    const nonZero = new Map([...alloc].filter(([, v]) => v !== 0));
    if (nonZero.size === 0) continue;
    activeHolds.set(id, nonZero);
    for (const grantId of nonZero.keys()) held.add(grantId);
  }
  for (const [id, left] of state.remaining) {
    if (left === 0 && !held.has(id)) continue;
    const recorded = snapshot.grants[id];
    if (recorded === undefined) problems.push(`${where} does not record grant ${id} (replay: ${left} left)`);
    else if (recorded[0] !== left || recorded[1] !== (state.expired.get(id) ?? 0))
      problems.push(
        `${where} records grant ${id} with ${recorded[0]} left, ${recorded[1]} expired; replay gives ${left}, ${state.expired.get(id) ?? 0}`,
      );
  }
  for (const id of Object.keys(snapshot.grants)) {
    if (!state.remaining.has(id)) problems.push(`${where} records grant ${id} that the journal never created`);
  }
  for (const [id, alloc] of activeHolds) {
    const recorded = snapshot.holds[id];
    const same =
      recorded !== undefined &&
      Object.keys(recorded).length === alloc.size &&
      [...alloc].every(([grantId, v]) => recorded[grantId] === v);
    if (!same) problems.push(`${where} records hold ${id} otherwise than the replay`);
  }
  for (const id of Object.keys(snapshot.holds)) {
    if (!activeHolds.has(id)) problems.push(`${where} records hold ${id} that is not active in the replay`);
  }
}

/** The stored account, grants and holds against the replayed state. */
function compareStored(
  stored: { account: Account | null; grants: readonly Grant[]; reservations: readonly Reservation[] },
  entries: readonly JournalEntry[],
  r: {
    base: number;
    balance: number;
    reserved: number;
    debt: number;
    units: Readonly<Record<string, { balance: number; reserved: number; debt: number }>>;
    grantUnits: ReadonlyMap<string, string>;
    prevHash: string | null;
    remaining: ReadonlyMap<string, number>;
    expired: ReadonlyMap<string, number>;
    upcoming: ReadonlySet<string>;
    activeReservations: Record<string, number>;
    metInReverse: ReadonlyMap<string, number>;
    checkpointAt: Date | null;
  },
  problems: string[],
): void {
  const { base, balance, reserved, debt, prevHash, remaining, expired, activeReservations } = r;
  const acc = stored.account;
  if (acc === null) {
    if (entries.length > 0) problems.push("journal has entries but the account does not exist");
  } else {
    if (acc.seq !== base + entries.length)
      problems.push(`account seq ${acc.seq} != ${base + entries.length}, the last journal entry's`);
    if (acc.balance !== balance) problems.push(`stored balance ${acc.balance} != replayed ${balance}`);
    if (acc.reserved !== reserved) problems.push(`stored reserved ${acc.reserved} != replayed ${reserved}`);
    if (acc.debt !== debt) problems.push(`stored debt ${acc.debt} != replayed ${debt}`);
    if (acc.lastHash !== prevHash) problems.push("stored lastHash is not the hash of the last entry");
    const last = entries[entries.length - 1];
    if (last !== undefined && (acc.lastKeyId ?? null) !== (last.keyId ?? null))
      problems.push("stored lastKeyId is not the key id of the last entry");
    const storedUnits = acc.units ?? {};
    for (const unit of new Set([...Object.keys(storedUnits), ...Object.keys(r.units)])) {
      const want = own(r.units, unit) ?? { balance: 0, reserved: 0, debt: 0 };
      const got = own(storedUnits, unit) ?? { balance: 0, reserved: 0, debt: 0 };
      for (const k of ["balance", "reserved", "debt"] as const)
        if (got[k] !== want[k]) problems.push(`stored ${unit} ${k} ${got[k]} != replayed ${want[k]}`);
    }
  }
  for (const g of stored.grants) {
    const unit = g.unit ?? null;
    if (r.remaining.has(g.id) && unit !== (r.grantUnits.get(g.id) ?? null))
      problems.push(`grant ${g.id}'s unit is not the one its entries recorded`);
  }
  const storedGrants = new Map(stored.grants.map((g) => [g.id, g]));
  for (const [id, v] of remaining) {
    const g = storedGrants.get(id);
    if (g === undefined) problems.push(`grant ${id} is in the journal but not stored`);
    else if (g.remaining !== v) problems.push(`grant ${id}: stored remaining ${g.remaining}, replayed ${v}`);
    if (g && g.remaining < 0) problems.push(`grant ${id} below zero`);
    // Open and upcoming exactly when the journal has not started it (docs/units.md).
    if (g && g.closedAt === null && (g.upcoming === true) !== r.upcoming.has(id))
      problems.push(`grant ${id}: stored ${g.upcoming === true ? "upcoming" : "started"}, the journal says otherwise`);
    const returned = r.metInReverse.get(id);
    if (g && returned !== undefined && closedBefore(g, r.checkpointAt))
      problems.push(...closedBeforeProblems(g, v, expired.get(id) ?? 0, returned));
    else if (g && (g.expiredAmount ?? 0) !== (expired.get(id) ?? 0)) {
      problems.push(`grant ${id}: stored expiredAmount ${g.expiredAmount}, replayed ${expired.get(id) ?? 0}`);
    }
  }
  for (const g of stored.grants) {
    if (!remaining.has(g.id) && g.remaining !== 0)
      problems.push(`grant ${g.id} is stored with credits but no entry created it`);
  }
  const storedActive = stored.reservations.filter((r) => r.status === "active");
  for (const r of storedActive) {
    if (activeReservations[r.id] !== r.amount) {
      problems.push(
        `reservation ${r.id}: stored active with ${r.amount}, replayed ${activeReservations[r.id] ?? "not active"}`,
      );
    }
  }
  if (storedActive.length !== Object.keys(activeReservations).length) {
    problems.push(
      `${storedActive.length} reservations stored active, journal has ${Object.keys(activeReservations).length}`,
    );
  }
}

/**
 * Whether the store has `g` closed (expired or voided) at or before the checkpoint's time: then a
 * grant the replay first meets in a reversal is one closed before the checkpoint, not the grant a
 * reversal makes for debt paid since (`debtGrant`, created open after the checkpoint).
 */
const closedBefore = (g: Grant, checkpointAt: Date | null): boolean =>
  checkpointAt !== null && g.closedReason !== null && g.closedAt !== null && g.closedAt <= checkpointAt;

/**
 * A grant closed before the checkpoint the audit starts at, which a reversal after it returned
 * credits to (docs/concepts.md, "Giving a charge back": the share comes back already closed, an
 * `expire` or `void` entry removing it at once). The checkpoint records only grants with credits
 * left or held (docs/operations.md, "Checkpoints and archival"), so what such a grant expired
 * before it is outside the replay: the audit cannot check the stored `expiredAmount` as a whole.
 * It checks what the entries after the checkpoint say: all that came back (`returned`) went out
 * again (`left` 0), as expired credits when the store says the grant expired (`expiredAfter` =
 * `returned`) and as voided ones when it says voided (`expiredAfter` 0); and that the stored
 * `expiredAmount` less `expiredAfter` — what expired before the checkpoint — is not negative. It
 * has no upper bound here: credits that had paid debt when the grant was added come back to it by
 * reversals (`debt_returned`) and expire with it, so a grant may expire more than its `amount`, up
 * to its addition's, which only the entries before the checkpoint say. An audit from genesis checks
 * the whole amount.
 */
function closedBeforeProblems(g: Grant, left: number, expiredAfter: number, returned: number): string[] {
  const problems: string[] = [];
  const where = `grant ${g.id} (${g.closedReason} before the checkpoint)`;
  if (left !== 0) problems.push(`${where}: the entries after the checkpoint leave it ${left}`);
  const expected = g.closedReason === "expired" ? returned : 0;
  if (expiredAfter !== expected)
    problems.push(`${where}: ${returned} came back, ${expiredAfter} expired again; expected ${expected}`);
  const before = (g.expiredAmount ?? 0) - expiredAfter;
  if (before < 0)
    problems.push(`${where}: stored expiredAmount ${g.expiredAmount}, of which ${before} before the checkpoint`);
  return problems;
}

/**
 * A `commit_reserved` entry's effect on its hold's allocations `alloc` and the grants' `remaining`
 * (docs/concepts.md, "The journal"). Its portions without a kind are spent (their sum is the
 * entry's amount); those of a partial capture say the rest went back: `returned` to its grant,
 * `debt_paid` to debt. A journal written before partial captures were one entry has only spent
 * portions, and a `release_reserved` entry of the rest follows: read the same way, it leaves the
 * rest in the hold for that entry.
 */
export function replayCapture(
  e: JournalEntry,
  alloc: Map<string, number>,
  remaining: Map<string, number>,
  problems: string[],
): { spent: number; returned: number; debtPaid: number; partial: boolean } {
  const where = `entry ${e.seq}`;
  let spent = 0;
  let returned = 0;
  let debtPaid = 0;
  for (const g of e.grants) {
    const left = (alloc.get(g.grantId) ?? 0) - g.amount;
    if (left < 0) problems.push(`${where} takes more of grant ${g.grantId} than the hold had`);
    alloc.set(g.grantId, left);
    if (g.kind === "returned") {
      returned += g.amount;
      remaining.set(g.grantId, (remaining.get(g.grantId) ?? 0) + g.amount);
    } else if (g.kind === "debt_paid") debtPaid += g.amount;
    else spent += g.amount;
  }
  if (spent !== e.amount) problems.push(`${where} takes ${spent} from the hold but says ${e.amount}`);
  return { spent, returned, debtPaid, partial: returned + debtPaid > 0 };
}
