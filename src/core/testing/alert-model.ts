/**
 * A naive, independent statement of the alert rules of docs/notifications.md ("Alerts"), over
 * `CreditModel`'s state: it shares no code with `src/core/domain`. The property test evaluates it
 * where the service evaluates its thresholds and expects the same events, one by one.
 */
import type { AlertThreshold } from "../models/index.js";
import type { CreditModel } from "./model.js";

const DAY = 86_400_000;

/** The event a move records, as the property test compares them: `triggered:<id>=<value>`, `resolved:<id>=<value>,…`. */
export type ModelAlertEvent = string;

export class AlertModel {
  /** Each threshold's state (absent: ok). */
  private readonly alarm = new Map<string, boolean>();
  /** Spend of the current UTC day (`period_spend` with `window: "day"` only). */
  private spentDay = 0;
  private dayStart = 0;
  /** What each grant was given (its credits when it was made, after any debt they paid), by id. */
  private readonly given = new Map<string, number>();
  /**
   * The grants drawn to their last credit (spent or held) since the pool last had nothing left:
   * what they were given still counts as granted (docs/customer-state.md, "What was granted").
   */
  private readonly drawn = new Set<string>();
  /** Each grant as the last change left it: open, drawn out (nothing left, not closed), or closed. */
  private readonly seen = new Map<string, "open" | "out" | "closed">();
  /** True once the account changed (a never-changed account evaluates nothing). */
  changed = false;
  readonly events: ModelAlertEvent[] = [];
  /** Evaluations that found a value exactly on its line (the test checks the runs reach some). */
  onLine = 0;

  constructor(private readonly thresholds: readonly AlertThreshold[]) {}

  /** Notes what the grant `id` of `model`, just added, was given. */
  added(model: CreditModel, id: string | null): void {
    const g = model.grants.find((x) => x.id === id);
    if (g !== undefined) this.given.set(g.id, g.remaining);
  }

  /** Counts captured spend at `at` (ms). */
  spend(amount: number, at: number): void {
    this.roll(at);
    this.spentDay += amount;
  }

  private roll(at: number): void {
    const start = Math.floor(at / DAY) * DAY;
    if (start !== this.dayStart) {
      this.dayStart = start;
      this.spentDay = 0;
    }
  }

  /**
   * Follows the pool's allowance after a change: a grant not closed with nothing left is drawn out
   * (and stays so once closed), one given credits back is open again; with no open grant and
   * nothing held, the allowance starts again.
   */
  private follow(model: CreditModel): void {
    let open = false;
    for (const g of model.grants) {
      const was = this.seen.get(g.id) ?? "open";
      const now = g.closed !== null ? "closed" : g.remaining === 0 ? "out" : "open";
      this.seen.set(g.id, now);
      if (now === "open") open = true;
      if (was === "open" && now === "out") this.drawn.add(g.id);
      if (was === "out" && now === "open") this.drawn.delete(g.id);
    }
    if (!open && model.reserved === 0) this.drawn.clear();
  }

  /** Evaluates every threshold on `model` at `model.now`, recording the events of each move. */
  evaluate(model: CreditModel): void {
    if (!this.changed) return;
    this.follow(model);
    this.roll(model.now);
    const resolved: string[] = [];
    for (const t of this.thresholds) {
      const [value, alarm] = this.read(t, model);
      if (value === (t.kind === "available" || t.kind === "left_percent" ? t.atOrBelow : t.atOrAbove)) this.onLine++;
      const was = this.alarm.get(t.id) ?? false;
      this.alarm.set(t.id, alarm);
      if (!was && alarm) this.events.push(`triggered:${t.id}=${String(value)}`);
      if (was && !alarm) resolved.push(`${t.id}=${String(value)}`);
    }
    if (resolved.length > 0) this.events.push(`resolved:${resolved.join(",")}`);
  }

  private read(t: AlertThreshold, model: CreditModel): [number | null, boolean] {
    const available = model.available; // less the unheld credits of scoped grants
    switch (t.kind) {
      case "available":
        return [available, available <= t.atOrBelow];
      case "left_percent": {
        if (t.feature !== undefined) throw new Error("the model knows the pool only");
        // The grants still open with something left, neither closed nor past their expiry, and
        // those drawn out in the pool's allowance: what they were given; what the open ones hold
        // now less the debt.
        let granted = 0;
        let left = -model.debt;
        for (const g of model.grants) {
          if (this.drawn.has(g.id)) granted += this.given.get(g.id) ?? 0;
          if (g.closed !== null || g.remaining <= 0 || (g.expiresAt !== null && g.expiresAt <= model.now)) continue;
          granted += this.given.get(g.id) ?? 0;
          left += g.remaining;
        }
        if (granted === 0) return [0, true];
        return [(left * 100) / granted, left * 100 <= t.atOrBelow * granted];
      }
      case "period_spend":
        if (t.window !== "day" || (t.timeZone ?? "UTC") !== "UTC") throw new Error("the model knows UTC days only");
        return [this.spentDay, this.spentDay >= t.atOrAbove];
      case "expiring": {
        let left = 0;
        for (const g of model.grants) {
          if (g.closed !== null || g.expiresAt === null || g.remaining <= 0) continue;
          if (g.expiresAt > model.now && g.expiresAt <= model.now + t.withinDays * DAY) left += g.remaining;
        }
        return [left, left >= t.atOrAbove];
      }
    }
  }
}
