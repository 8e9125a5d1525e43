import type { Grant, GrantPortion, JournalEntry } from "../models/index.js";
import { RuleViolationError } from "../errors.js";
import { largestRemainder } from "./fraction.js";
import { usageKind } from "./usage.js";

/**
 * Giving a charge back (docs/concepts.md, "Giving a charge back"): which entries are charges, what
 * each drew, and how a reversal of part of one is shared among the grants it drew from. Pure: the
 * unit of work (`AccountWork.reverse`) and the audit (`replayJournal`) both read it.
 */

/** What `getReversals` answers (docs/concepts.md, "Giving a charge back"). @public */
export interface ChargeReversals {
  /** The charge's journal entry. */
  charge: JournalEntry;
  /** Its `reverse` entries, oldest first. */
  reversals: JournalEntry[];
  /** Credits they gave back, together. */
  reversed: number;
  /** Credits of the charge still to give back: its amount less `reversed`. */
  remaining: number;
}

/** What a charge took: its amount, the credits it drew from each grant (in its order), and the debt it made. */
export interface ChargeDraw {
  /** Credits charged: all a reversal can give back. */
  amount: number;
  /** Per grant, what the charge drew (one portion per grant, in the order the charge drew them). */
  draws: GrantPortion[];
  /** The part of `amount` no grant paid: debt the charge made. */
  debt: number;
}

/**
 * The draw of `entry` when it is a charge that can be given back, else why not (a sentence). A
 * charge is a spend (docs/usage.md, "What counts"): a deduction (`deductCredits`, after-service
 * usage, a metered request, an AI SDK call, a lease window settled as a deduction, the excess of a
 * commit beyond its hold) or a hold's capture (`commit_reserved`: what it captured, not what it
 * returned). A take-back (a refund's or a lost dispute's deduction), an addition, an expiry, a
 * void, a hold, a release and a reversal are not charges.
 */
export function chargeDraw(entry: JournalEntry): ChargeDraw | string {
  if (entry.type !== "deduct" && entry.type !== "commit_reserved")
    return `entry ${entry.id} is a${/^[aeiou]/.test(entry.type) ? "n" : ""} ${entry.type} entry, not a charge: only deductions and captured holds can be given back`;
  if (usageKind(entry) !== "spend")
    return `entry ${entry.id} takes credits back for a refunded payment or a lost dispute: it is not a charge and cannot be given back`;
  const draws: GrantPortion[] = [];
  let drawn = 0;
  for (const p of entry.grants) {
    // A capture's `returned` and `debt_paid` portions are what it did not take.
    if (p.kind !== undefined || p.amount === 0) continue;
    drawn += p.amount;
    const same = draws.find((d) => d.grantId === p.grantId);
    if (same === undefined) draws.push({ grantId: p.grantId, amount: p.amount });
    else same.amount += p.amount;
  }
  return { amount: entry.amount, draws, debt: entry.amount - drawn };
}

/** What the reversals of a charge gave back so far. */
export interface Reversed {
  /** Credits given back, all reversals together. */
  total: number;
  /** Per grant the charge drew from: credits given back to it (those that paid debt instead included). */
  toGrants: Map<string, number>;
  /** Credits of the charge's debt given back (`total` less what went to the charge's grants). */
  debt: number;
}

/** Sums `reversals` (the `reverse` entries naming the charge of `draw`). */
export function reversedOf(draw: ChargeDraw, reversals: readonly JournalEntry[]): Reversed {
  const drawn = new Set(draw.draws.map((d) => d.grantId));
  const toGrants = new Map<string, number>();
  let total = 0;
  let toDrawn = 0;
  for (const r of reversals) {
    total += r.amount;
    for (const p of r.grants) {
      // (Credits that had paid the charge's debt, back to the grant that paid it: debt given back.)
      if (!drawn.has(p.grantId) || p.kind === "debt_returned") continue;
      toGrants.set(p.grantId, (toGrants.get(p.grantId) ?? 0) + p.amount);
      toDrawn += p.amount;
    }
  }
  return { total, toGrants, debt: total - toDrawn };
}

/**
 * The credits one reversal of `charge` gives back: `asked`, or all that is left when none is asked;
 * never more than its reversals so far (`reversed`) left of its `draw` (docs/concepts.md, "Giving a
 * charge back"). A `RuleViolationError` when nothing is left or more is asked.
 */
export function amountToGiveBack(
  chargeId: string,
  draw: ChargeDraw,
  reversed: Reversed,
  asked: number | undefined,
): number {
  const left = draw.amount - reversed.total;
  if (left === 0)
    throw new RuleViolationError(`Entry ${chargeId} is already given back in full (${draw.amount} credits).`, [
      { path: "entryId", message: "nothing of the charge is left to give back" },
    ]);
  const amount = asked ?? left;
  if (amount > left)
    throw new RuleViolationError(
      `Cannot give back ${amount} credits of entry ${chargeId}: ${left} of its ${draw.amount} are left to give back.`,
      [{ path: "amount", message: `must be at most ${left}, what is left of the charge` }],
    );
  return amount;
}

/** How one reversal of `amount` credits is shared: the charge's debt first, then its grants. */
export interface ReversalShares {
  /** Credits that give back debt the charge made. */
  debt: number;
  /** Per grant the charge drew from, in its order: credits going back to it (none listed with 0). */
  grants: GrantPortion[];
}

/**
 * Shares a reversal of `amount` (at most what is left of the charge: `draw.amount − reversed.total`)
 * — the rule is deterministic and the shares add up to `amount` exactly:
 *
 * 1. the debt the charge made comes back first, as far as earlier reversals left any of it;
 * 2. the rest goes to the grants the charge drew from, in proportion to what each has not had back
 *    yet, by largest remainder (`largestRemainder`: equal remainders in the order the charge drew
 *    them). Over a charge's reversals, no grant ever gets back more than the charge drew from it,
 *    and the last reversal (what is left) gives each grant exactly the rest of its draw.
 */
export function reversalShares(draw: ChargeDraw, reversed: Reversed, amount: number): ReversalShares {
  const debt = Math.min(amount, Math.max(0, draw.debt - reversed.debt));
  const toGrants = amount - debt;
  const left = draw.draws.map((d) => Math.max(0, d.amount - (reversed.toGrants.get(d.grantId) ?? 0)));
  const open = left.reduce((s, l) => s + l, 0);
  if (toGrants > open) throw new Error(`a reversal of ${amount} exceeds what is left of the charge`);
  if (toGrants === 0) return { debt, grants: [] };
  const shares = largestRemainder(left, toGrants, open);
  const grants: GrantPortion[] = [];
  draw.draws.forEach((d, i) => {
    const s = shares[i] as number;
    if (s > 0) grants.push({ grantId: d.grantId, amount: s });
  });
  return { debt, grants };
}

/** When a charge's usage happened: what its reversals carry as `occurredAt`. */
export const chargedAt = (charge: JournalEntry): Date => charge.occurredAt ?? charge.createdAt;

/**
 * Who paid the part of a charge's debt that a reversal gives back and the account no longer owes
 * (docs/concepts.md, "Giving a charge back"): the credits that paid debt since the charge, the most
 * recent first — an addition's (the grant it formed keeps them), a hold's returning to its grants,
 * a reversal's — less what reversals since gave back to each of them already. Feed the entries
 * after the charge newest first (`read`; a `release_reserved` with its hold's allocations) until
 * `done`; `portions` then says how many of those credits go back to each paying grant, and `rest`
 * is what no grant can take back: paid by an addition that formed no grant, or by nothing the
 * entries show.
 */
export class PaidDebt {
  private need: number;
  private grantless = 0;
  private readonly back = new Map<string, number>();
  /** Credits reversals read so far gave back to each paying grant (null: as a grant of their own), not yet matched to a payment. */
  private readonly claimed = new Map<string | null, number>();

  constructor(amount: number) {
    this.need = amount;
  }

  get done(): boolean {
    return this.need === 0;
  }

  /** Reads `e`, the newest entry not read yet; `held`: the allocations of the hold a `release_reserved` ends. */
  read(e: JournalEntry, held?: readonly GrantPortion[]): void {
    for (const payer of debtPaidBy(e, held)) {
      if (this.need === 0) break;
      // What later reversals gave back of this payer's credits is theirs (the newest payment first).
      const c = this.claimed.get(payer.grantId) ?? 0;
      const gone = Math.min(c, payer.amount);
      this.claimed.set(payer.grantId, c - gone);
      const take = Math.min(this.need, payer.amount - gone);
      this.need -= take;
      if (payer.grantId === null) this.grantless += take;
      else if (take > 0) this.back.set(payer.grantId, (this.back.get(payer.grantId) ?? 0) + take);
    }
    if (e.type !== "reverse") return;
    for (const p of e.grants) {
      // A reversal's portion without a kind is the grant it made for paid debt no grant could take back.
      const payer = p.kind === "debt_returned" ? p.grantId : p.kind === undefined ? null : undefined;
      if (payer !== undefined) this.claimed.set(payer, (this.claimed.get(payer) ?? 0) + p.amount);
    }
  }

  /** Credits going back to each paying grant, newest payment first. */
  get portions(): GrantPortion[] {
    return [...this.back].map(([grantId, amount]) => ({ grantId, amount }));
  }

  /** Credits no paying grant takes back. */
  get rest(): number {
    return this.need + this.grantless;
  }
}

/** The credits `e` paid debt with, by the grant they came from (null: an addition that formed none, or a hold not known). */
function debtPaidBy(
  e: JournalEntry,
  held: readonly GrantPortion[] | undefined,
): { grantId: string | null; amount: number }[] {
  const listed = e.grants.reduce((s, p) => s + (p.kind === "debt_paid" ? 0 : p.amount), 0);
  switch (e.type) {
    case "add": {
      const paid = e.amount - listed;
      return paid > 0 ? [{ grantId: e.grants[0]?.grantId ?? null, amount: paid }] : [];
    }
    // (A grant's start, docs/units.md "Grants that start later", lists the debt it paid too.)
    case "commit_reserved":
    case "reverse":
    case "start":
      return e.grants.filter((p) => p.kind === "debt_paid").map((p) => ({ grantId: p.grantId, amount: p.amount }));
    case "release_reserved": {
      // A release lists what went back to each grant; the rest of the hold paid debt.
      const paid = e.amount - listed;
      if (paid <= 0) return [];
      if (held === undefined) return [{ grantId: null, amount: paid }];
      const out: { grantId: string; amount: number }[] = [];
      for (const a of held) {
        const returned = e.grants.filter((p) => p.grantId === a.grantId).reduce((s, p) => s + p.amount, 0);
        if (a.amount - returned > 0) out.push({ grantId: a.grantId, amount: a.amount - returned });
      }
      return out;
    }
    default:
      return [];
  }
}

/** The entry types that may pay debt (`PaidDebt` reads them) or give paid debt back (a reversal). */
export const PAYING_TYPES = ["add", "commit_reserved", "release_reserved", "reverse", "start"] as const;

/**
 * The grant a reversal makes for the part of its charge's debt that was paid since by credits no
 * grant holds (`PaidDebt.rest`: an addition that went whole to debt formed none) (docs/concepts.md,
 * "Giving a charge back"): no expiry, unscoped, no cost basis; `metadata.reverses` names the charge.
 */
export function debtGrant(id: string, userId: string, amount: number, chargeId: string, now: Date): Grant {
  return {
    id,
    userId,
    amount,
    remaining: amount,
    expiresAt: null,
    priority: 0,
    source: "adjustment",
    sourceRef: null,
    description: "given back: debt of a reversed charge that an addition paid",
    metadata: { reverses: chargeId },
    createdAt: now,
    expiredAmount: 0,
    closedAt: null,
    closedReason: null,
    scope: null,
    costBasis: null,
    effectiveAt: null,
    upcoming: null,
    drawnOutIn: null,
  };
}
