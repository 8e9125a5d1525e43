/**
 * A deliberately naive, independent statement of the rules of docs/concepts.md, used by the property test to check
 * what a store + CreditService does. It shares no code with `src/core/domain`: if both agree over
 * thousands of random sequences, the rules are what docs/concepts.md says.
 */

export interface ModelGrant {
  id: string;
  remaining: number;
  expiresAt: number | null;
  priority: number;
  createdAt: number;
  closed: "expired" | "voided" | null;
  /** The features it pays for (null: any); with `spenders`, docs/teams-and-limits.md "Scoped credits". */
  features?: string[] | null;
  /** The spenders it pays for (null: any). */
  spenders?: string[] | null;
  /** When it starts, for a grant added to start later (docs/units.md); absent: at `createdAt`. */
  startsAt?: number;
  /** True until it starts: in no balance, drawn by nothing. */
  upcoming?: boolean;
  /** What it held when it started, after paying debt: what it was given, as an addition then. */
  startedWith?: number;
  /**
   * What it had left, unheld, when it expired at its `expiresAt` (held parts expire later, when
   * their hold returns them): what a subscription's rollover carries of it (docs/subscriptions.md).
   */
  expiredAtExpiry?: number;
}

/** Who spends on what (null: not named). */
export interface ModelSpend {
  spender: string | null;
  feature: string | null;
}

const ANY: ModelSpend = { spender: null, feature: null };

/** True when `g` may pay for `spend`: each list it has names the spend's value. */
export function mayPay(g: ModelGrant, spend: ModelSpend): boolean {
  const features = g.features ?? null;
  const spenders = g.spenders ?? null;
  if (features !== null && (spend.feature === null || features.indexOf(spend.feature) < 0)) return false;
  if (spenders !== null && (spend.spender === null || spenders.indexOf(spend.spender) < 0)) return false;
  return true;
}

const isScoped = (g: ModelGrant): boolean => (g.features ?? null) !== null || (g.spenders ?? null) !== null;

export interface ModelHold {
  id: string;
  /** [grantId, amount] in the order they were drawn. */
  parts: Array<[string, number]>;
  expiresAt: number;
  status: "active" | "committed" | "released" | "expired";
  /** The spend it was placed for (absent: none named). */
  spend?: ModelSpend;
}

export class CreditModel {
  balance = 0;
  reserved = 0;
  debt = 0;
  grants: ModelGrant[] = [];
  holds: ModelHold[] = [];
  /** True once usage was taken past zero (after-service or over-commit). */
  overdrawn = false;
  /**
   * How far below zero usage already delivered may take `available` (null: unbounded). An
   * after-service charge or an over-commit's excess past it is refused (docs/concepts.md,
   * "Overdraft and debt"; each unit has its own, docs/units.md "Debt per unit").
   */
  overdraftLimit: number | null = null;

  constructor(public now: number) {}

  get available(): number {
    return this.availableFor(ANY);
  }

  /** What `spend` may use: available less the usable scoped credits it may not pay with. */
  availableFor(spend: ModelSpend): number {
    let other = 0;
    for (const g of this.grants)
      if (
        g.closed === null &&
        g.upcoming !== true &&
        (g.expiresAt === null || g.expiresAt > this.now) &&
        !mayPay(g, spend)
      )
        other += g.remaining;
    return this.balance - this.reserved - other;
  }

  /**
   * What time did since the last operation, in the order it was due (docs/concepts.md, "Two times
   * on every entry"): at each instant, the grants that start then, those that expire then, then
   * the holds that lapse then.
   */
  settle(): void {
    const lapsed = this.holds
      .filter((h) => h.status === "active" && h.expiresAt <= this.now)
      .sort((a, b) => a.expiresAt - b.expiresAt || (a.id < b.id ? -1 : 1));
    const instants = new Set<number>(lapsed.map((h) => h.expiresAt));
    for (const g of this.grants) {
      if (g.closed !== null) continue;
      if (g.upcoming === true && (g.startsAt ?? 0) <= this.now) instants.add(g.startsAt ?? 0);
      if (g.expiresAt !== null && g.expiresAt <= this.now) instants.add(g.expiresAt);
    }
    for (const t of [...instants].sort((a, b) => a - b)) {
      this.startDue(t);
      for (const g of this.grants) {
        if (g.closed === null && g.expiresAt !== null && g.expiresAt <= t) {
          this.balance -= g.upcoming === true ? 0 : g.remaining;
          g.expiredAtExpiry = g.remaining;
          g.remaining = 0;
          g.closed = "expired";
        }
      }
      for (const h of lapsed) {
        if (h.expiresAt !== t) continue;
        h.status = "expired";
        this.giveBack(h.parts, h.expiresAt);
        this.reserved -= sumParts(h.parts);
      }
    }
  }

  /**
   * Grants whose start has come by `t` (default now), by start: each joins the balance as an
   * addition then, paying debt first when unscoped (docs/units.md, "Grants that start later").
   */
  startDue(t: number = this.now): void {
    const due = this.grants
      .filter((g) => g.upcoming === true && g.closed === null && (g.startsAt ?? 0) <= t)
      .sort((a, b) => (a.startsAt ?? 0) - (b.startsAt ?? 0) || byBurnDown(a, b));
    for (const g of due) {
      g.upcoming = false;
      const pay = isScoped(g) ? 0 : Math.min(this.debt, g.remaining);
      this.debt -= pay;
      this.balance += g.remaining;
      g.remaining -= pay;
      g.startedWith = g.remaining;
    }
  }

  add(
    id: string | null,
    amount: number,
    expiresAt: number | null,
    priority: number,
    scope: { features?: string[]; spenders?: string[] } | null = null,
    startsAt: number | null = null,
  ): void {
    if (startsAt !== null && startsAt > this.now) {
      // Upcoming: the whole amount waits on the grant, in no balance, paying no debt.
      if (id === null) return;
      const g: ModelGrant = {
        id,
        remaining: amount,
        expiresAt,
        priority,
        createdAt: this.now,
        closed: null,
        startsAt,
        upcoming: true,
      };
      if (scope !== null) {
        g.features = scope.features ?? null;
        g.spenders = scope.spenders ?? null;
      }
      this.grants.push(g);
      return;
    }
    // A scoped grant pays no debt: the debt is owed for spends of any scope.
    const pay = scope === null ? Math.min(this.debt, amount) : 0;
    this.debt -= pay;
    this.balance += amount;
    if (amount - pay > 0 && id !== null) {
      const g: ModelGrant = { id, remaining: amount - pay, expiresAt, priority, createdAt: this.now, closed: null };
      if (scope !== null) {
        g.features = scope.features ?? null;
        g.spenders = scope.spenders ?? null;
      }
      this.grants.push(g);
    }
  }

  /** What usage already delivered by `spend` may take now: what keeps available >= -overdraftLimit. */
  headroom(spend: ModelSpend = ANY): number {
    return this.overdraftLimit === null ? Infinity : Math.max(0, this.availableFor(spend) + this.overdraftLimit);
  }

  /** Returns false when the real service must refuse. */
  deduct(amount: number, afterService: boolean, spend: ModelSpend = ANY): boolean {
    if (!afterService && this.availableFor(spend) < amount) return false;
    if (afterService && amount > this.headroom(spend)) return false;
    const taken = this.take(amount, spend);
    this.balance -= amount;
    this.debt += amount - taken;
    if (afterService && this.available < 0) this.overdrawn = true;
    return true;
  }

  reserve(id: string | null, amount: number, ttlMs: number, spend: ModelSpend = ANY): boolean {
    if (this.availableFor(spend) < amount) return false;
    const parts = this.draw(amount, spend);
    this.reserved += amount;
    if (id !== null) this.holds.push({ id, parts, expiresAt: this.now + ttlMs, status: "active", spend });
    return true;
  }

  /** Returns false when the real service must refuse: an excess past the overdraft limit (nothing changes). */
  commit(hold: ModelHold, amount: number): boolean {
    const held = sumParts(hold.parts);
    if (amount - held > 0 && amount - held > this.headroom(hold.spend ?? ANY)) return false;
    let toTake = Math.min(amount, held);
    const rest: Array<[string, number]> = [];
    for (const [gid, a] of hold.parts) {
      const t = Math.min(a, toTake);
      toTake -= t;
      if (a - t > 0) rest.push([gid, a - t]);
    }
    const captured = Math.min(amount, held);
    this.balance -= captured;
    this.reserved -= held;
    hold.status = "committed";
    this.giveBack(rest);
    if (amount > held) {
      const excess = amount - held;
      const taken = this.take(excess, hold.spend ?? ANY);
      this.balance -= excess;
      this.debt += excess - taken;
      if (this.available < 0) this.overdrawn = true;
    }
    return true;
  }

  release(hold: ModelHold): void {
    hold.status = "released";
    this.reserved -= sumParts(hold.parts);
    this.giveBack(hold.parts);
  }

  voidGrant(g: ModelGrant): void {
    if (g.upcoming !== true) this.balance -= g.remaining;
    g.remaining = 0;
    g.closed = "voided";
  }

  /** The grants `spend` may draw from, in order: scoped ones that match it first, then the others. */
  private usable(spend: ModelSpend): ModelGrant[] {
    return this.grants
      .filter(
        (g) =>
          g.closed === null &&
          g.upcoming !== true &&
          g.remaining > 0 &&
          (g.expiresAt === null || g.expiresAt > this.now) &&
          mayPay(g, spend),
      )
      .sort((a, b) => Number(isScoped(b)) - Number(isScoped(a)) || byBurnDown(a, b));
  }

  /** Takes up to `amount` from usable grants in burn-down order; returns what each gave. */
  private draw(amount: number, spend: ModelSpend): Array<[string, number]> {
    const parts: Array<[string, number]> = [];
    let left = amount;
    for (const g of this.usable(spend)) {
      if (left === 0) break;
      const t = Math.min(g.remaining, left);
      g.remaining -= t;
      left -= t;
      parts.push([g.id, t]);
    }
    return parts;
  }

  private take(amount: number, spend: ModelSpend): number {
    return sumParts(this.draw(amount, spend));
  }

  /**
   * Returned credits pay debt first if their grant is still open; what lands on a closed grant
   * (voided or expired) is removed at once and pays nothing. A hold that lapsed (`lapsedAt`) before
   * the grant's expiry held nothing at that expiry: what it returns to the grant, expired by then
   * (by a job that settles grants alone), counts as unspent and unheld then (`expiredAtExpiry`).
   */
  private giveBack(parts: Array<[string, number]>, lapsedAt?: number): void {
    for (const [gid, a] of parts) {
      const g = this.grants.find((x) => x.id === gid);
      if (g === undefined) continue;
      if (g.closed !== null) {
        this.balance -= a;
        if (lapsedAt !== undefined && g.expiredAtExpiry !== undefined && g.expiresAt !== null && lapsedAt < g.expiresAt)
          g.expiredAtExpiry += a;
        continue;
      }
      const pay = isScoped(g) ? 0 : Math.min(this.debt, a);
      this.debt -= pay;
      g.remaining += a - pay;
    }
  }
}

/** Lower priority, sooner expiry (never last), older start (a later grant's age counts from its start), id. */
function byBurnDown(a: ModelGrant, b: ModelGrant): number {
  return (
    a.priority - b.priority ||
    (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) ||
    (a.startsAt ?? a.createdAt) - (b.startsAt ?? b.createdAt) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

function sumParts(parts: Array<[string, number]>): number {
  return parts.reduce((s, [, a]) => s + a, 0);
}
