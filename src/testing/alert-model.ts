/**
 * A naive, independent statement of the alert rules of docs/notifications.md ("Alerts"), over
 * `CreditModel`'s state: it shares no code with `src/domain`. The property test evaluates it
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
  /** The latest addition's amount. */
  lastAdd = 0;
  /** True once the account changed (a never-changed account evaluates nothing). */
  changed = false;
  readonly events: ModelAlertEvent[] = [];
  /** Evaluations that found a value exactly on its line (the test checks the runs reach some). */
  onLine = 0;

  constructor(private readonly thresholds: readonly AlertThreshold[]) {}

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

  /** Evaluates every threshold on `model` at `model.now`, recording the events of each move. */
  evaluate(model: CreditModel): void {
    if (!this.changed) return;
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
    const available = model.balance - model.reserved;
    switch (t.kind) {
      case "available":
        return [available, available <= t.atOrBelow];
      case "left_percent":
        if (this.lastAdd <= 0) return [null, false];
        return [(available * 100) / this.lastAdd, available * 100 <= t.atOrBelow * this.lastAdd];
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
