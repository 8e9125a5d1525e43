import type { DbManager } from "../../core/db/types.js";
import type { ModuleContext } from "../../core/module.js";
import type { EntryMeta } from "../../core/domain/account-work.js";
import { fingerprint } from "../../core/domain/hash.js";
import { leaseBlock, leaseSettleKey, type LeasePart, type LeaseSizing } from "./rules.js";
import { limitRoom, type Spend } from "../../core/domain/limits.js";
import { ReservationExpiredError, ReservationNotActiveError } from "../../core/errors.js";
import type { JournalEntry, Reservation } from "../../core/models/index.js";
import { activeHold } from "../../core/services/unit-of-work.js";
import { NO_SPEND } from "../../core/domain/entry-meta.js";

/*
 * Lease settling (docs/metering.md, "Leases"): the one unit of work that turns a lease window's
 * usage into a journal entry and holds the next block. `CreditLeases` (src/modules/leases/service.ts)
 * decides when, and runs it through the leases module's context (`ModuleContext.runUnitOfWork`,
 * src/core/module.ts).
 */

/** What a settle asks of the credit service (`LeaseCore.settleLease`). */
export interface LeaseSettle {
  lease: string;
  window: number;
  /** The window's hold; null when there is none (an opening window). */
  holdId: string | null;
  used: number;
  requests: number;
  /** The window's usage by feature, spender and model, when a charge named one (docs/usage.md). */
  parts?: LeasePart[];
  /** Hold the next block (its sizing and TTL); null: end the lease. `plainOnly`: only on an account where no limit or scoped grant makes who spends matter. */
  roll: { sizing: LeaseSizing; ttlSeconds: number; plainOnly?: boolean } | null;
  /** The lease's spender and feature (docs/teams-and-limits.md, "Leases"): its holds and charges name them. */
  spender?: string | undefined;
  feature?: string | undefined;
  /** The lease's unit (docs/units.md); absent: the default unit. Its block is held and its usage charged in it. */
  unit?: string | undefined;
}

/** A block as a lease keeps it. */
export interface LeaseHold {
  id: string;
  amount: number;
  expiresAt: number;
}

/** The settle's outcome: its entry, the next block, whether it was answered by its key. */
export interface LeaseSettled {
  entry: JournalEntry | null;
  next: LeaseHold | null;
  replayed: boolean;
  /** True when the account has spend limits or scoped grants (who spends on what matters); absent on a replay. */
  aware?: boolean;
  /** ms: the earliest end of the limit windows that apply to the lease's spends (its block serves until then). */
  until?: number;
}

/** A settle's unit of work: named in diagnostics (docs/observability.md). */
const SETTLE = { operation: "settleLease" } as const;

/** A hold as a lease keeps it. */
function leaseHoldOf(r: Reservation): LeaseHold {
  return { id: r.id, amount: r.amount, expiresAt: r.expiresAt.getTime() };
}

/**
 * Settles window `s.window` of lease `s.lease` in one keyed unit of work: commits what
 * the window used from its hold (or, the hold gone, deducts it after service within the overdraft
 * limit), then — `s.roll` — holds the next block (`leaseBlock`). The key `lease:<lease>:<window>`
 * makes a retried or recovered settle charge once; a replay finds the next block it placed.
 */
export async function settleLease(
  ctx: Pick<ModuleContext, "runUnitOfWork" | "db" | "overdraftLimit">,
  userId: string,
  s: LeaseSettle,
): Promise<LeaseSettled> {
  const limit = ctx.overdraftLimit;
  const key = leaseSettleKey(s.lease, s.window);
  const window = {
    lease: s.lease,
    window: s.window,
    requests: s.requests,
    total: s.used,
    // By feature, spender and model, when a charge named one (docs/usage.md, "Leases").
    ...(s.parts === undefined ? {} : { parts: s.parts.map((p) => ({ ...p })) }),
  };
  // A lease for a spender or feature (docs/teams-and-limits.md, "Leases"): its holds and an
  // after-service charge name them, so the limits for them count its spends and the scoped grants
  // it may use fund it.
  const spend: Spend =
    s.spender === undefined && s.feature === undefined
      ? NO_SPEND
      : { spender: s.spender ?? null, feature: s.feature ?? null };
  const meta: EntryMeta = {
    idempotencyKey: key,
    fingerprint: fingerprint("settleLease", window),
    metadata: { leaseWindow: window },
    ...(s.spender === undefined ? {} : { spender: s.spender }),
    ...(s.feature === undefined ? {} : { feature: s.feature }),
    ...(s.unit === undefined ? {} : { unit: s.unit }),
  };
  const next = { lease: s.lease, window: s.window + 1 };
  const settled = await ctx.runUnitOfWork(
    userId,
    meta,
    async (work, tx): Promise<LeaseSettled> => {
      let keyed = false;
      const roll = (entry: JournalEntry | null): LeaseSettled => {
        let hold: Reservation | null = null;
        const limits = work.account.limits;
        // Whether who spends on what matters on this account: limits, or a scoped grant ever.
        const aware = limits != null || work.account.scoped === true;
        if (s.roll?.plainOnly === true && aware) return { entry, next: null, replayed: false, aware };
        let block = 0;
        let until: number | undefined;
        if (s.roll !== null) {
          // Sized on what the lease's spends may use (scoped grants outside their scope do not
          // count) and within what every limit that applies to them still allows.
          work.useUnit(s.unit);
          let room = work.availableFor(spend);
          // Spend limits count the default unit (docs/units.md): none bounds a block in another.
          const r = limits == null || s.unit !== undefined ? null : limitRoom(limits, spend, work.now.getTime());
          if (r !== null) {
            room = Math.min(room, r.left);
            until = r.until;
          }
          block = leaseBlock(room, s.roll.sizing);
        }
        if (s.roll !== null && block > 0) {
          // The key goes on the unit's first entry (an opening window has no settle entry).
          const holdMeta: EntryMeta = keyed
            ? {
                ...(spend === NO_SPEND ? {} : { spender: s.spender, feature: s.feature }),
                ...(s.unit === undefined ? {} : { unit: s.unit }),
                metadata: { leaseHold: next },
              }
            : { ...meta, metadata: { leaseHold: next } };
          hold = work.reserve(block, s.roll.ttlSeconds, "lease", holdMeta).reservation;
        }
        const out: LeaseSettled = { entry, next: hold === null ? null : leaseHoldOf(hold), replayed: false, aware };
        if (until !== undefined) out.until = until;
        return out;
      };
      const charge = (hold: Reservation | null): LeaseSettled => {
        keyed = true;
        if (hold !== null) {
          if (s.used === 0 && s.requests === 0) return roll(work.releaseHold(hold, "released", meta).entry);
          return roll(work.commitUpToLimit(hold, s.used, meta, limit));
        }
        if (s.used === 0) {
          keyed = false;
          return roll(null);
        }
        // The hold lapsed: the usage was delivered, so it is charged after service.
        // (Past the overdraft limit, an entry of what it allows, 0 included, with the shortfall.)
        return roll(work.deductUpToLimit(s.used, meta, limit));
      };
      if (s.holdId === null) return charge(null);
      let hold: Reservation;
      try {
        hold = await activeHold(work, tx, s.holdId);
      } catch (error) {
        // The hold lapsed or was settled: charged after service, as without one.
        if (error instanceof ReservationExpiredError || error instanceof ReservationNotActiveError) return charge(null);
        throw error;
      }
      return charge(hold.expiresAt.getTime() <= work.now.getTime() ? null : hold);
    },
    (entry) => Promise.resolve({ entry, next: null, replayed: true }),
    SETTLE,
  );
  if (!settled.replayed || s.roll === null) return settled;
  // A replay: the next block (if the first settle placed one) is the active hold tagged with it.
  return { entry: settled.entry, next: await leaseHold(ctx.db, userId, next.lease, next.window), replayed: true };
}

/** The active hold a lease's settle placed for window `window`, or null. */
export async function leaseHold(
  db: DbManager,
  userId: string,
  lease: string,
  window: number,
): Promise<LeaseHold | null> {
  const holds = await db.transaction(userId, async (tx) => (await tx.load()).reservations);
  const placed = holds.find((h) => {
    const tag = (h.metadata as { leaseHold?: { lease?: unknown; window?: unknown } } | null)?.leaseHold;
    return tag?.lease === lease && tag.window === window;
  });
  return placed === undefined ? null : leaseHoldOf(placed);
}
