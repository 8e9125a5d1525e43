/**
 * The rules of revenue recognition (docs/revenue.md), once: the value of credits at their grant's
 * cost basis, rounded cumulatively per grant, and the roll-forward of an account's journal into
 * paid, recognized, breakage, refunds and deferred, by calendar window. Pure functions: no I/O.
 */
import type { CostBasis, Grant, JournalEntry } from "../../core/models/index.js";
import type { RevenueDimension, RevenueRow } from "./model.js";
import { ValidationError } from "../../core/errors.js";
import { DEFAULT_UNIT } from "../../core/models/common.js";
import { rateOf, sameBasis, valueAt, type Rate } from "../../core/domain/cost-basis.js";
import { windowIndex } from "../../core/domain/windows.js";
import { placedAt } from "../../core/domain/usage.js";

// ---- The roll-forward ----

/** What the roll-forward knows of a paid addition's credits. */
export interface Lot {
  rate: Rate;
  currency: string;
  source: string | null;
  /** The plan whose subscription sold it (null: none). */
  plan: string | null;
  /** Position of the lot's first credit in its addition (the debt the addition paid comes first). */
  offset: number;
  /**
   * Credits of the lot gone (used, expired, voided, taken back): positions `offset` to `offset +
   * gone`. Below 0 when a reversal gave back credits its addition paid debt with: they are the
   * lot's again, from position `offset + gone`.
   */
  gone: number;
  /** The payment (`JournalEntry.paymentId`) whose addition made the lot, if any: what it earns is that payment's. */
  payment: string | null;
  /** The unit of its grant (null: the default one), read by reports grouped by unit (not kept in a saved state). */
  unit?: string | null;
}

/** A paid addition of a payment (`JournalEntry.paymentId`), for its refunds. */
export interface Payment {
  rate: Rate;
  currency: string;
  source: string | null;
  plan: string | null;
  /** The id of the grant it created (null: it only paid debt). */
  lot: string | null;
  /** Its credits. */
  size: number;
  /** Credits whose revenue a refund reversed: positions 0 to `reversed` of the addition. */
  reversed: number;
  /** What its credits were recognized for so far (the debt it paid included), less what refunds reversed of it. */
  recognized: number;
  /** What its credits broke (expired or voided unused) so far, less what refunds reversed of it. */
  broken: number;
  /** The unit of its grant (null: the default one), as its lot's. */
  unit?: string | null;
}

/**
 * What the roll-forward of one account knows after some of its entries (paid lots by grant id,
 * paid additions of payments by payment id, active holds' credits by reservation and grant):
 * enough to go on from the next entry without reading the ones before (docs/revenue.md, "How it
 * is computed").
 */
export interface RevenueState {
  lots: Map<string, Lot>;
  payments: Map<string, Payment>;
  holds: Map<string, Map<string, number>>;
}

/** A roll-forward at the first entry. */
export const emptyRevenueState = (): RevenueState => ({ lots: new Map(), payments: new Map(), holds: new Map() });

/** `state` as compact JSON text (bigints as decimal text), for a store to keep. */
export function revenueStateText(state: RevenueState): string {
  return JSON.stringify({
    l: [...state.lots].map(([id, l]) => [
      id,
      `${l.rate.num}`,
      `${l.rate.den}`,
      l.currency,
      l.source,
      l.offset,
      l.gone,
      l.payment,
      l.plan,
    ]),
    p: [...state.payments].map(([id, p]) => [
      id,
      `${p.rate.num}`,
      `${p.rate.den}`,
      p.currency,
      p.source,
      p.lot,
      p.size,
      p.reversed,
      p.recognized,
      p.broken,
      p.plan,
    ]),
    h: [...state.holds].map(([id, alloc]) => [id, [...alloc]]),
  });
}

/** The state `revenueStateText` wrote. */
export function parseRevenueState(text: string): RevenueState {
  // A state saved before lots knew their payment and plan, and payments what they earned, reads
  // them as none (the upgrades to schema versions 19 and 21 empty summaries saved before them).
  type L = [string, string, string, string, string | null, number, number, (string | null)?, (string | null)?];
  type P = [
    string,
    string,
    string,
    string,
    string | null,
    string | null,
    number,
    number,
    number?,
    number?,
    (string | null)?,
  ];
  const raw = JSON.parse(text) as { l: L[]; p: P[]; h: [string, [string, number][]][] };
  const rate = (num: string, den: string): Rate => ({ num: BigInt(num), den: BigInt(den) });
  return {
    lots: new Map(
      raw.l.map(([id, n, d, currency, source, offset, gone, payment, plan]) => [
        id,
        { rate: rate(n, d), currency, source, plan: plan ?? null, offset, gone, payment: payment ?? null },
      ]),
    ),
    payments: new Map(
      raw.p.map(([id, n, d, currency, source, lot, size, reversed, recognized, broken, plan]) => [
        id,
        {
          rate: rate(n, d),
          currency,
          source,
          plan: plan ?? null,
          lot,
          size,
          reversed,
          recognized: recognized ?? 0,
          broken: broken ?? 0,
        },
      ]),
    ),
    holds: new Map(raw.h.map(([id, alloc]) => [id, new Map(alloc)])),
  };
}

/**
 * Credits of usage served and not charged: the entry's `shortfall`, which the library alone records
 * on a charge the overdraft limit cut (an entry of 0 credits when it allowed nothing,
 * docs/metering.md "Served and not paid"), never the metadata's say. `unbilledCredits` counts it
 * (docs/revenue.md, decision 4), as usage reports do.
 */
export function servedUnpaid(e: Pick<JournalEntry, "type"> & Partial<Pick<JournalEntry, "shortfall">>): number {
  if (e.type !== "deduct" && e.type !== "commit_reserved") return 0;
  const v = e.shortfall ?? 0;
  return Number.isSafeInteger(v) && v > 0 ? v : 0;
}

/** The name of the unit of a grant or an entry, for a report grouped by unit (docs/revenue.md, decision 4). */
function unitKey(x: { unit?: string | null } | null): string {
  return x?.unit ?? DEFAULT_UNIT;
}

/** Figures of one group in one window (`deferredStart`/`deferredEnd` filled per row at the end). */
export interface Sums {
  paid: number;
  recognized: number;
  breakage: number;
  refunds: number;
  unbilledCredits: number;
}

/**
 * What a paid grant's figures are grouped by besides currency: its `source`, and the plan whose
 * subscription sold it (`metadata.planId` of a subscription grant; null: none, docs/revenue.md).
 * @beta
 */
export interface GrantGroups {
  /** The grant's `source` (`payment`, `subscription`, …). */
  source: string;
  /** The plan whose subscription sold it; null: none. */
  plan: string | null;
}

/** The groups of `grant`'s figures (docs/revenue.md, "The report"): the plan only of a subscription's grant. */
export function grantGroups(grant: {
  source: string;
  metadata: Readonly<Record<string, unknown>> | null;
}): GrantGroups {
  const plan = grant.metadata?.planId;
  const fromPlan = grant.source === "subscription" || grant.source === "rollover";
  return { source: grant.source, plan: fromPlan && typeof plan === "string" ? plan : null };
}

/**
 * A closed period as revenue books entries by it (docs/revenue.md, "Closing a month"): the close's
 * `through` (ms) and each account's mark (its journal seq at the close; an account without one had
 * no entry then).
 */
export interface CloseCut {
  through: number;
  marks: ReadonlyMap<string, number>;
}

/**
 * When revenue books entry `e` with closed periods `cuts` (ascending `through`; docs/revenue.md,
 * "Closing a month"): when its money moved (`placedAt(e)`), unless it was recorded after a close
 * (its seq past the account's mark) with a time before that close's `through` — then at
 * `through`, as catch-up of the first close that moved it (`catchUp`: that close's `through`;
 * null: an ordinary entry).
 */
export function bookingOf(
  e: Pick<JournalEntry, "occurredAt" | "createdAt" | "seq" | "userId">,
  cuts: readonly CloseCut[],
): { at: number; catchUp: number | null } {
  let at = placedAt(e);
  let catchUp: number | null = null;
  for (const c of cuts) {
    if (at >= c.through) continue;
    const mark = c.marks.get(e.userId);
    if (mark !== undefined && e.seq <= mark) continue;
    at = c.through;
    catchUp ??= c.through;
  }
  return { at, catchUp };
}

/** The group of a figure: currency (null: unbilled) and the dimension values. */
export interface Key {
  currency: string | null;
  account: string;
  source: string | null;
  plan: string | null;
  feature: string | null;
  spender: string | null;
  /** The unit by name (`DEFAULT_UNIT` for the default one) when grouped by unit; else null. */
  unit: string | null;
  /** Catch-up figures: the `through` (ms) of the close whose closed period held them; null: ordinary. */
  catchUp: number | null;
}

/**
 * Sums one or more accounts' journals into a revenue report's rows (docs/revenue.md, "The
 * report"). Feed each account's entries in seq order from its first (`add`), then `rows()`.
 *
 * Each credit that leaves a paid addition is of one figure, at the position it leaves from:
 * a deduction's or a capture's credits (and held credits that paid debt) are recognized; an
 * expiry's and a void's are breakage; those a refund or lost dispute takes back from the
 * refunded payment's own grant are refunds; those it deducts from other paid grants are recognized
 * (they pay for the usage the refund reverses), and for every credit it takes from another grant,
 * paid or free, or past the balance (debt, unbilled), the refunded payment's revenue for as many
 * credits is reversed (refunds positive; recognized negative up to what the payment's credits were
 * recognized for, then breakage negative up to what they broke). An addition's credits that pay debt
 * are recognized when it is made. So per account and currency, at every instant, the value of
 * what was paid equals recognized + breakage + refunds + deferred.
 */
export class RevenueAccumulator {
  private readonly sums = new Map<string, { key: Key; window: Sums[] }>();
  /**
   * Deferred per group at each boundary: `at[i]` is the value at `boundaries[i]`, plus the changes
   * in `step` from index 0 to i (folded in by `settleDeferred`).
   */
  private readonly deferredAt = new Map<string, { key: Key; at: number[]; step: number[] }>();
  private readonly windows: number;
  /** Groups met so far (by id), for the cap on cells. */
  private readonly groups = new Set<string>();

  /**
   * `maxCells`: most windows × groups the report may hold (docs/revenue.md, "How large a report
   * can be"); the group that passes it is refused with a `ValidationError` before its windows are
   * filled.
   */
  constructor(
    private readonly boundaries: readonly number[],
    private readonly groupBy: readonly RevenueDimension[],
    readonly maxCells = Number.POSITIVE_INFINITY,
  ) {
    this.windows = boundaries.length - 1;
  }

  /**
   * Adds one account's journal (every entry from seq 1, in order; `grants`: the source and plan of
   * each paid grant by id, for `groupBy` `source` and `plan`). With `state` (what an earlier call
   * returned), the entries after those it had read; returns the state after them (`state`, changed).
   * `cuts`: the closed periods (`bookingOf`), ascending.
   */
  addAccount(
    userId: string,
    entries: Iterable<JournalEntry>,
    grants?: ReadonlyMap<string, GrantGroups>,
    state: RevenueState = emptyRevenueState(),
    cuts: readonly CloseCut[] = [],
  ): RevenueState {
    /** Paid additions by payment id (`JournalEntry.paymentId`), for refunds. */
    const { lots, payments, holds } = state;
    const bySource = this.groupBy.includes("source");
    const byPlan = this.groupBy.includes("plan");
    const byUnit = this.groupBy.includes("unit");
    let at = 0; // when the entry being read is booked (`bookingOf`), in ms
    let catchUp: number | null = null; // the entry's close, when it is catch-up
    /**
     * The group of a figure of credits sold as `g` (null: debt), under entry `e`'s feature and
     * spender; catch-up of the entry being read unless `cu` says (deferred: always ordinary).
     */
    const key = (
      currency: string | null,
      g: Pick<Lot, "source" | "plan" | "unit"> | null,
      e: JournalEntry | null,
      cu: number | null = catchUp,
    ): Key => ({
      currency,
      account: userId,
      source: bySource ? (g?.source ?? null) : null,
      plan: byPlan ? (g?.plan ?? null) : null,
      feature: e === null ? null : (e.feature ?? null),
      spender: e === null ? null : (e.spender ?? null),
      unit: byUnit ? unitKey(g === null ? e : g) : null,
      catchUp: cu,
    });
    /** Deferred changed by `delta` at the entry's instant: at every boundary after it (on the ordinary row). */
    const shift = (lot: Lot, delta: number) =>
      this.deferredChange(key(lot.currency, lot, null, null), firstAfter, delta);
    /** Takes `amount` credits off `lot`: their value (cumulatively rounded). */
    const take = (lot: Lot, amount: number): number => {
      const from = lot.offset + lot.gone;
      const v = valueAt(lot.rate, from + amount) - valueAt(lot.rate, from);
      lot.gone += amount;
      shift(lot, -v);
      return v;
    };

    let w = -1; // the window of the entry being read
    let firstAfter = 0; // the first boundary after it (`boundaries.length`: none)
    const add = (k: Key, figure: keyof Sums, v: number) => {
      if (w < 0 || v === 0) return;
      this.sum(k, w)[figure] += v;
    };
    /**
     * `credits` of entry `e` used past the balance (negative: no longer): `unbilledCredits` counts
     * the default unit's only, never adding two units (docs/units.md); another unit's are that
     * unit's `debt`.
     */
    const unbilled = (e: JournalEntry, credits: number) => {
      if (byUnit || (e.unit ?? null) === null) add(key(null, null, e), "unbilledCredits", credits);
    };
    /** `v` of `lot`'s credits recognized or broken: its payment's (what a refund of it may reverse). */
    const earned = (lot: Lot, figure: "recognized" | "breakage", v: number) => {
      const p = lot.payment === null ? undefined : payments.get(lot.payment);
      if (p === undefined) return;
      if (figure === "recognized") p.recognized += v;
      else p.broken += v;
    };
    /**
     * The refunded payment's revenue for `credits` credits its take-back took elsewhere than its own
     * grant, reversed (docs/revenue.md, decision 3): their value at its basis, from its first positions
     * on, is refunds, and comes out of what its credits were recognized for, then out of what they
     * broke; past both (its own credits not used yet, the take-back drew on others first), out of
     * recognized again.
     */
    const reverse = (p: Payment, credits: number, at: JournalEntry) => {
      const n = Math.min(credits, p.size - p.reversed);
      const v = valueAt(p.rate, p.reversed + n) - valueAt(p.rate, p.reversed);
      p.reversed += n;
      const broken = Math.min(Math.max(v - Math.max(p.recognized, 0), 0), Math.max(p.broken, 0));
      p.recognized -= v - broken;
      p.broken -= broken;
      add(key(p.currency, p, at), "recognized", -(v - broken));
      add(key(p.currency, p, null), "breakage", -broken);
      add(key(p.currency, p, at), "refunds", v);
    };

    for (const e of entries) {
      ({ at, catchUp } = bookingOf(e, cuts));
      w = windowIndex(this.boundaries, at);
      // An entry at a boundary is in the window that starts there: the boundaries after it are
      // those from its window's end (before the first window: all; after the last: none).
      firstAfter = w >= 0 ? w + 1 : at < this.boundaries[0]! ? 0 : this.boundaries.length;
      // The payment an addition credits or a take-back takes back from, and a payment's take-back,
      // as the payments module recorded them (never the metadata's say: docs/revenue.md, "Payments").
      const paymentId = e.paymentId ?? null;
      const takeBack = e.takeBack != null;
      switch (e.type) {
        case "add": {
          const b = e.costBasis ?? null;
          // Free credits: no revenue; the debt they pay stays unbilled for good (docs/revenue.md, "Debt").
          if (b === null) break;
          const drawn = e.grants.reduce((s, g) => s + g.amount, 0);
          const debtPaid = e.amount - drawn;
          // Its source and plan: the entry's own (an addition that only pays debt has no grant),
          // by the rule of its grant's; else its grant's.
          const grantId = e.grants[0]?.grantId;
          const of =
            e.source != null
              ? grantGroups({ source: e.source, metadata: e.metadata })
              : grantId === undefined
                ? undefined
                : grants?.get(grantId);
          const groups = { source: of?.source ?? null, plan: of?.plan ?? null, unit: e.unit ?? null };
          const rate = rateOf(b.perCredit);
          add(key(b.currency, groups, null), "paid", valueAt(rate, e.amount));
          if (debtPaid > 0) add(key(b.currency, groups, null), "recognized", valueAt(rate, debtPaid));
          const first = e.grants[0]?.grantId ?? null;
          for (const g of e.grants) {
            const lot: Lot = { rate, currency: b.currency, ...groups, offset: debtPaid, gone: 0, payment: paymentId };
            lots.set(g.grantId, lot);
            shift(lot, valueAt(rate, debtPaid + g.amount) - valueAt(rate, debtPaid));
          }
          if (paymentId !== null)
            payments.set(paymentId, {
              rate,
              currency: b.currency,
              ...groups,
              lot: first,
              size: e.amount,
              reversed: 0,
              recognized: valueAt(rate, debtPaid),
              broken: 0,
            });
          break;
        }
        case "deduct":
        case "commit_reserved": {
          const p = takeBack && paymentId !== null ? (payments.get(paymentId) ?? null) : null;
          const alloc = e.type === "commit_reserved" ? holds.get(e.reservationId ?? "") : undefined;
          let past = e.type === "deduct" ? e.amount : 0;
          for (const g of e.grants) {
            if (alloc !== undefined) alloc.set(g.grantId, (alloc.get(g.grantId) ?? 0) - g.amount);
            // A partial capture's returned credits go back to their grant: not used.
            if (g.kind === "returned") continue;
            past -= e.type === "deduct" ? g.amount : 0;
            // A take-back's credits from another grant than the refunded payment's, paid or free,
            // pay for the used credits it takes back: the payment's revenue for as many is reversed.
            if (p !== null && p.lot !== g.grantId) reverse(p, g.amount, e);
            const lot = lots.get(g.grantId);
            if (lot === undefined) continue; // a free grant's credits: no revenue
            const v = take(lot, g.amount);
            // Those of another paid grant are recognized at its basis; the payment's own are refunds.
            const figure = takeBack && (p === null || p.lot === g.grantId) ? "refunds" : "recognized";
            add(key(lot.currency, lot, e), figure, v);
            if (figure === "recognized") earned(lot, figure, v);
          }
          // What a deduction takes past the grants becomes debt: usage not paid for yet, a
          // take-back's too (docs/revenue.md, decisions 3 and 4), whose payment's revenue is reversed.
          if (past > 0) {
            unbilled(e, past);
            if (p !== null) reverse(p, past, e);
          }
          // Usage served past the overdraft limit, never charged: unbilled too (decision 4).
          unbilled(e, servedUnpaid(e));
          if (alloc !== undefined && [...alloc.values()].every((v) => v <= 0)) holds.delete(e.reservationId ?? "");
          break;
        }
        case "reverse": {
          // A charge given back (docs/revenue.md, decision 9): booked now, in the window it is
          // written — a closed window is never restated. Its credits go back to the grants that
          // paid, each to the positions it was last used from (the charge's own grants, and those
          // that paid its debt since): their recognized value reversed at that grant's basis,
          // deferred again. What it takes off debt (the amount less what went
          // back to grants: the replay's rule, src/core/domain/replay.ts) is unbilled no more.
          let past = e.amount;
          for (const g of e.grants) {
            // (Credits that paid debt instead of going back to their grant: debt paid off, below.)
            if (g.kind === "debt_paid") continue;
            past -= g.amount;
            const lot = lots.get(g.grantId);
            if (lot === undefined) continue; // a free grant's credits: no revenue
            // Credits that had paid the charge's debt (`debt_returned`) go back to the positions
            // below the lot's first: those its addition paid debt with (docs/revenue.md, decision 9).
            const n = Math.min(g.amount, lot.offset + lot.gone);
            const to = lot.offset + lot.gone;
            const v = valueAt(lot.rate, to) - valueAt(lot.rate, to - n);
            lot.gone -= n;
            shift(lot, v);
            add(key(lot.currency, lot, e), "recognized", -v);
            earned(lot, "recognized", -v);
          }
          if (past > 0) unbilled(e, -past);
          break;
        }
        case "expire":
        case "void":
          for (const g of e.grants) {
            const lot = lots.get(g.grantId);
            if (lot === undefined) continue;
            const v = take(lot, g.amount);
            add(key(lot.currency, lot, null), takeBack ? "refunds" : "breakage", v);
            if (!takeBack) earned(lot, "breakage", v);
          }
          break;
        case "reserve": {
          const alloc = new Map<string, number>();
          for (const g of e.grants) alloc.set(g.grantId, (alloc.get(g.grantId) ?? 0) + g.amount);
          holds.set(e.reservationId ?? "", alloc);
          break;
        }
        case "release_reserved": {
          // Held credits that did not go back paid debt: recognized (the usage behind the debt is paid now).
          const alloc = holds.get(e.reservationId ?? "");
          holds.delete(e.reservationId ?? "");
          if (alloc === undefined) break;
          for (const g of e.grants) alloc.set(g.grantId, (alloc.get(g.grantId) ?? 0) - g.amount);
          for (const [grantId, left] of alloc) {
            const lot = left > 0 ? lots.get(grantId) : undefined;
            if (lot === undefined) continue;
            const v = take(lot, left);
            add(key(lot.currency, lot, e), "recognized", v);
            earned(lot, "recognized", v);
          }
          break;
        }
        case "start":
          // A grant that started later (docs/units.md, "Grants that start later"): paid at its
          // addition; the credits its start paid debt with are recognized now.
          for (const g of e.grants) {
            if (g.kind !== "debt_paid") continue;
            const lot = lots.get(g.grantId);
            if (lot === undefined) continue; // a free grant's credits: no revenue
            const v = take(lot, g.amount);
            add(key(lot.currency, lot, e), "recognized", v);
            earned(lot, "recognized", v);
          }
          break;
        default:
          break;
      }
    }
    return state;
  }

  /**
   * Figures summed elsewhere (a store's summary, docs/revenue.md "How it is computed"), added to
   * window `w` of group `k`.
   */
  addFigures(k: Key, w: number, figures: Sums): void {
    const s = this.sum(k, w);
    s.paid += figures.paid;
    s.recognized += figures.recognized;
    s.breakage += figures.breakage;
    s.refunds += figures.refunds;
    s.unbilledCredits += figures.unbilledCredits;
  }

  /** Deferred worked out elsewhere, added to group `k`'s (feature and spender null) at `boundaries[i]`. */
  addDeferred(k: Key, i: number, v: number): void {
    this.deferredOf(keyId(k, this.groupBy), k).at[i]! += v;
  }

  /** The figures summed so far, each with its group and window (not the deferred values). */
  *figures(): Generator<{ key: Key; window: number; sums: Sums }> {
    for (const { key, window } of this.sums.values())
      for (let w = 0; w < window.length; w++) {
        const sums = window[w];
        if (sums !== undefined) yield { key, window: w, sums };
      }
  }

  private sum(k: Key, w: number): Sums {
    const id = keyId(k, this.groupBy);
    let s = this.sums.get(id);
    if (s === undefined) {
      this.meet(id);
      s = { key: k, window: [] };
      this.sums.set(id, s);
    }
    return (s.window[w] ??= { paid: 0, recognized: 0, breakage: 0, refunds: 0, unbilledCredits: 0 });
  }

  private deferredOf(id: string, k: Key): { key: Key; at: number[]; step: number[] } {
    let d = this.deferredAt.get(id);
    if (d === undefined) {
      this.meet(id);
      const n = this.boundaries.length;
      d = { key: k, at: new Array<number>(n).fill(0), step: new Array<number>(n).fill(0) };
      this.deferredAt.set(id, d);
    }
    return d;
  }

  /**
   * Group `k`'s deferred value changed by `delta` at every boundary from index `from` on (an
   * entry's instant: `from` is the first boundary after it), whatever the order the entries come
   * in — a late entry booked in an earlier window changes the deferred values from there on.
   */
  private deferredChange(k: Key, from: number, delta: number): void {
    if (delta === 0 || from >= this.boundaries.length) return;
    this.deferredOf(keyId(k, this.groupBy), k).step[from]! += delta;
  }

  /** Folds the changes `deferredChange` recorded into the values at each boundary (once: they are cleared). */
  private settleDeferred(): void {
    for (const d of this.deferredAt.values()) {
      let run = 0;
      for (let i = 0; i < d.at.length; i++) {
        run += d.step[i]!;
        d.step[i] = 0;
        d.at[i]! += run;
      }
    }
  }

  /** Counts group `id` in, refusing the report when its cells pass `maxCells`. */
  private meet(id: string): void {
    if (this.groups.has(id)) return;
    checkRevenueCells(this.groups.size + 1, this.windows, this.maxCells);
    this.groups.add(id);
  }

  /** The groups met, each id with its key, in no order: `orderedRows` wants them sorted by `compareGroups`. */
  groupKeys(): [string, Key][] {
    const keys = new Map<string, Key>();
    for (const [id, s] of this.sums) keys.set(id, s.key);
    for (const [id, d] of this.deferredAt) if (!keys.has(id)) keys.set(id, d.key);
    return [...keys];
  }

  /** The order of the groups' rows within a window (`orderedRows`). */
  readonly compareGroups = (a: readonly [string, Key], b: readonly [string, Key]): number =>
    compareKeys(a[1], b[1], this.groupBy);

  /** The report's rows, all of them (`orderedRows`). */
  rows(): RevenueRow[] {
    return [...this.orderedRows()];
  }

  /**
   * The report's rows in their order, one at a time (a caller may stop early: docs/revenue.md,
   * "How large a report can be"): by window, then currency (null last), then the groups' values
   * in `groupBy`'s order (null last); a row for every group with a figure other than 0 in its
   * window (deferred at its start or end included). `sorted`: `groupKeys()` sorted by
   * `compareGroups`, when the caller put them in order itself.
   */
  *orderedRows(
    sorted: readonly (readonly [string, Key])[] = this.groupKeys().sort(this.compareGroups),
  ): Generator<RevenueRow> {
    this.settleDeferred();
    for (let w = 0; w < this.windows; w++) {
      for (const [id] of sorted) {
        const s = this.sums.get(id);
        const d = this.deferredAt.get(id);
        const k = (s?.key ?? d?.key) as Key;
        const f = s?.window[w];
        const deferredStart = d?.at[w] ?? 0;
        const deferredEnd = d?.at[w + 1] ?? 0;
        if (
          deferredStart === 0 &&
          deferredEnd === 0 &&
          (f === undefined ||
            (f.paid === 0 && f.recognized === 0 && f.breakage === 0 && f.refunds === 0 && f.unbilledCredits === 0))
        )
          continue;
        const row: RevenueRow = {
          start: new Date(this.boundaries[w]!),
          end: new Date(this.boundaries[w + 1]!),
          currency: k.currency,
          deferredStart,
          paid: f?.paid ?? 0,
          recognized: f?.recognized ?? 0,
          breakage: f?.breakage ?? 0,
          refunds: f?.refunds ?? 0,
          deferredEnd,
          unbilledCredits: f?.unbilledCredits ?? 0,
          catchUpThrough: k.catchUp === null ? null : new Date(k.catchUp),
        };
        // Sales are bounded so sums stay exact; a book of more than hundreds of the largest is refused, not rounded.
        for (const v of [deferredStart, row.paid, row.recognized, row.breakage, row.refunds, deferredEnd])
          if (!Number.isSafeInteger(v))
            throw new ValidationError(
              `Invalid query: a figure in ${k.currency ?? "credits"} passes 2^53 - 1 and would not be exact: report fewer accounts at a time`,
              [{ path: "account", message: "the report's sums are too large to be exact" }],
            );
        for (const dim of this.groupBy) {
          if (dim === "account") row.account = k.account;
          else if (dim === "unit") row.unit = k.unit ?? DEFAULT_UNIT;
          else row[dim] = k[dim];
        }
        yield row;
      }
    }
  }
}

/**
 * Refuses a revenue report of `groups` groups over `windows` windows when its cells pass `max`
 * (docs/revenue.md, "How large a report can be"), before they are filled.
 */
export function checkRevenueCells(groups: number, windows: number, max: number): void {
  if (groups * windows <= max) return;
  throw new ValidationError(
    `Invalid query: the report would hold more than ${max} cells (${windows} windows × ${groups} groups so far): ` +
      "shorten the range, use a longer interval, group by fewer dimensions or name an account",
    [{ path: "to", message: `windows × groups must be at most ${max}` }],
  );
}

/**
 * The order of groups in a report: currency (null last), then `groupBy`'s values in its order (null
 * last), then the ordinary row before the catch-up rows (by their close).
 */
function compareKeys(a: Key, b: Key, groupBy: readonly RevenueDimension[]): number {
  const c = cmp(a.currency, b.currency);
  if (c !== 0) return c;
  for (const d of groupBy) {
    const x = cmp(a[d], b[d]);
    if (x !== 0) return x;
  }
  return (a.catchUp ?? Number.NEGATIVE_INFINITY) - (b.catchUp ?? Number.NEGATIVE_INFINITY) || 0;
}

/** Null last, then by code units. */
const cmp = (a: string | null, b: string | null): number =>
  a === b ? 0 : a === null ? 1 : b === null ? -1 : a < b ? -1 : 1;

function keyId(k: Key, groupBy: readonly RevenueDimension[]): string {
  const parts: (string | number | null)[] = [k.currency];
  for (const d of groupBy) parts.push(d === "account" ? k.account : k[d]);
  if (k.catchUp !== null) parts.push(k.catchUp);
  return JSON.stringify(parts);
}

/**
 * The deferred value of an account's grants as stored (docs/revenue.md, "Audit"): what their
 * remaining and held credits are worth at their basis, each grant's from the position its used
 * credits reached, per currency. `held`: credits of each grant in active holds.
 */
export function storedDeferred(
  grants: readonly Grant[],
  held: ReadonlyMap<string, number>,
  debtPaidOf: ReadonlyMap<string, number>,
): Map<string, number> {
  const out = new Map<string, number>();
  for (const g of grants) {
    const b = g.costBasis ?? null;
    if (b === null) continue;
    const rate = rateOf(b.perCredit);
    const offset = debtPaidOf.get(g.id) ?? 0;
    const left = g.remaining + (held.get(g.id) ?? 0);
    const v = valueAt(rate, offset + g.amount) - valueAt(rate, offset + g.amount - left);
    out.set(b.currency, (out.get(b.currency) ?? 0) + v);
  }
  return out;
}

/** The first and last instants a `Date` holds: one window over all time. */
const ALL_TIME = [-8.64e15, 8.64e15] as const;

/**
 * The revenue part of `audit()` (docs/revenue.md, "Audit"): every stored grant's cost basis is its
 * creating entry's (a basis changed in the store after it was written is found here; one changed
 * in the entry breaks its hash), and — for a journal read from its first entry — the roll-forward
 * over the account's whole history balances against the stored grants, per currency: what was
 * paid, less what was recognized, broken and refunded, is what the stored grants' remaining and
 * held credits are worth at their basis.
 */
export function revenueProblems(
  userId: string,
  entries: readonly JournalEntry[],
  stored: {
    grants: readonly Grant[];
    reservations: readonly { status: string; allocations: readonly { grantId: string; amount: number }[] }[];
  },
): string[] {
  const problems: string[] = [];
  const byId = new Map(stored.grants.map((g) => [g.id, g]));
  const debtPaidOf = new Map<string, number>();
  for (const e of entries) {
    // A grant that started later paid debt at its start (docs/units.md, "Grants that start later"):
    // its amount is what was left, from the position after those credits.
    if (e.type === "start")
      for (const p of e.grants)
        if (p.kind === "debt_paid") debtPaidOf.set(p.grantId, (debtPaidOf.get(p.grantId) ?? 0) + p.amount);
    if (e.type !== "add") continue;
    const drawn = e.grants.reduce((s, g) => s + g.amount, 0);
    for (const p of e.grants) {
      debtPaidOf.set(p.grantId, e.amount - drawn);
      const g = byId.get(p.grantId);
      if (g !== undefined && !sameBasis(g.costBasis, e.costBasis))
        problems.push(
          `grant ${p.grantId}: stored cost basis ${basisText(g.costBasis)} is not its entry ${e.seq}'s ${basisText(e.costBasis)}`,
        );
    }
  }
  if (entries[0]?.seq !== 1) return problems;
  const sum = new RevenueAccumulator(ALL_TIME, []);
  sum.addAccount(userId, entries);
  const held = new Map<string, number>();
  for (const r of stored.reservations)
    if (r.status === "active")
      for (const a of r.allocations) held.set(a.grantId, (held.get(a.grantId) ?? 0) + a.amount);
  const deferred = storedDeferred(stored.grants, held, debtPaidOf);
  const rolled = new Map<string, number>();
  for (const row of sum.rows()) {
    if (row.currency === null) continue;
    rolled.set(row.currency, (rolled.get(row.currency) ?? 0) + row.paid - row.recognized - row.breakage - row.refunds);
  }
  for (const currency of new Set([...rolled.keys(), ...deferred.keys()])) {
    const journal = rolled.get(currency) ?? 0;
    const grants = deferred.get(currency) ?? 0;
    if (journal !== grants)
      problems.push(
        `revenue roll-forward in ${currency}: paid − recognized − breakage − refunds is ${journal}, the stored grants' deferred value ${grants}`,
      );
  }
  return problems;
}

const basisText = (b: CostBasis | null | undefined): string => (b == null ? "none" : `${b.perCredit} ${b.currency}`);
