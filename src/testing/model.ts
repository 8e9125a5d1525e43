/**
 * A deliberately naive, independent statement of the rules of docs/concepts.md, used by the property test to check
 * what a store + CreditService does. It shares no code with `src/domain`: if both agree over
 * thousands of random sequences, the rules are what docs/concepts.md says.
 */

export interface ModelGrant {
  id: string;
  remaining: number;
  expiresAt: number | null;
  priority: number;
  createdAt: number;
  closed: "expired" | "voided" | null;
}

export interface ModelHold {
  id: string;
  /** [grantId, amount] in the order they were drawn. */
  parts: Array<[string, number]>;
  expiresAt: number;
  status: "active" | "committed" | "released" | "expired";
}

export class CreditModel {
  balance = 0;
  reserved = 0;
  debt = 0;
  grants: ModelGrant[] = [];
  holds: ModelHold[] = [];
  /** True once usage was taken past zero (after-service or over-commit). */
  overdrawn = false;

  constructor(public now: number) {}

  get available(): number {
    return this.balance - this.reserved;
  }

  settle(): void {
    for (const g of this.grants) {
      if (g.closed === null && g.expiresAt !== null && g.expiresAt <= this.now) {
        this.balance -= g.remaining;
        g.remaining = 0;
        g.closed = "expired";
      }
    }
    const lapsed = this.holds
      .filter((h) => h.status === "active" && h.expiresAt <= this.now)
      .sort((a, b) => a.expiresAt - b.expiresAt || (a.id < b.id ? -1 : 1));
    for (const h of lapsed) {
      h.status = "expired";
      this.giveBack(h.parts);
      this.reserved -= sumParts(h.parts);
    }
  }

  add(id: string | null, amount: number, expiresAt: number | null, priority: number): void {
    const pay = Math.min(this.debt, amount);
    this.debt -= pay;
    this.balance += amount;
    if (amount - pay > 0 && id !== null) {
      this.grants.push({ id, remaining: amount - pay, expiresAt, priority, createdAt: this.now, closed: null });
    }
  }

  /** Returns false when the real service must refuse. */
  deduct(amount: number, afterService: boolean): boolean {
    if (!afterService && this.available < amount) return false;
    const taken = this.take(amount);
    this.balance -= amount;
    this.debt += amount - taken;
    if (afterService && this.available < 0) this.overdrawn = true;
    return true;
  }

  reserve(id: string | null, amount: number, ttlMs: number): boolean {
    if (this.available < amount) return false;
    const parts = this.draw(amount);
    this.reserved += amount;
    if (id !== null) this.holds.push({ id, parts, expiresAt: this.now + ttlMs, status: "active" });
    return true;
  }

  commit(hold: ModelHold, amount: number): void {
    const held = sumParts(hold.parts);
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
      const taken = this.take(excess);
      this.balance -= excess;
      this.debt += excess - taken;
      if (this.available < 0) this.overdrawn = true;
    }
  }

  release(hold: ModelHold): void {
    hold.status = "released";
    this.reserved -= sumParts(hold.parts);
    this.giveBack(hold.parts);
  }

  voidGrant(g: ModelGrant): void {
    this.balance -= g.remaining;
    g.remaining = 0;
    g.closed = "voided";
  }

  private usable(): ModelGrant[] {
    return this.grants
      .filter((g) => g.closed === null && g.remaining > 0 && (g.expiresAt === null || g.expiresAt > this.now))
      .sort(
        (a, b) =>
          a.priority - b.priority ||
          (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) ||
          a.createdAt - b.createdAt ||
          (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
      );
  }

  /** Takes up to `amount` from usable grants in burn-down order; returns what each gave. */
  private draw(amount: number): Array<[string, number]> {
    const parts: Array<[string, number]> = [];
    let left = amount;
    for (const g of this.usable()) {
      if (left === 0) break;
      const t = Math.min(g.remaining, left);
      g.remaining -= t;
      left -= t;
      parts.push([g.id, t]);
    }
    return parts;
  }

  private take(amount: number): number {
    return sumParts(this.draw(amount));
  }

  /**
   * Returned credits pay debt first if their grant is still open; what lands on a closed grant
   * (voided or expired) is removed at once and pays nothing.
   */
  private giveBack(parts: Array<[string, number]>): void {
    for (const [gid, a] of parts) {
      const g = this.grants.find((x) => x.id === gid);
      if (g === undefined) continue;
      if (g.closed !== null) {
        this.balance -= a;
        continue;
      }
      const pay = Math.min(this.debt, a);
      this.debt -= pay;
      g.remaining += a - pay;
    }
  }
}

function sumParts(parts: Array<[string, number]>): number {
  return parts.reduce((s, [, a]) => s + a, 0);
}
