import type { InMemoryDbManager } from "../../src/built-in-parts.js";
import type { AlertThreshold, JournalEntry, Notification } from "../../src/core/models/index.js";
import type { CreditModel } from "../../src/core/testing/model.js";
import type { Prng } from "./prng.js";

/**
 * The simulation's model of the alert thresholds (docs/customer-state.md, "Alerts that fire once
 * per crossing"), shared with no code of src/core/domain: each account's committed journal is replayed
 * in commit (seq) order, and after each unit of work that evaluates the account, every threshold
 * is read on the model's state at the step's instant. A move into alarm is one `triggered`, the
 * moves back of one unit are one `resolved`; nothing while a state holds.
 *
 * The kinds: `available` (at or below), `period_spend` over the UTC day, of the account or of one
 * spender or feature (at or above), `expiring` (at or above), and `left_percent` of the pool (at or
 * below): what its unscoped grants hold less the debt, as a share of what they were granted in the
 * pool's current allowance (docs/customer-state.md, "What was granted"), followed here commit by
 * commit: a grant not closed with nothing left is drawn out and counts (closed after, it still
 * does), one given credits back is open again, and with no open unscoped grant and nothing held in
 * any unit of the account the allowance starts again.
 *
 * A `period_spend` threshold counts the spend whose time is in the current day: a deduction or a
 * capture at its usage time (a late one's `occurredAt`, else when it was committed), a reversal
 * taken off at its charge's time; a payment's take-back is no spend. Every threshold is set before
 * the account's first change, so the spend counted from when it applies is all of it.
 */

const DAY = 86_400_000;

/** Fractions of a day a `withinDays` may be: exact in binary, so `now + withinDays · DAY` has no rounding. */
const WITHIN_DAYS = [1 / 128, 1 / 32, 1 / 8, 1] as const;

/**
 * The thresholds of one simulated account, drawn from `rng`: ladders of lines, each a few credits
 * apart, across the range the random amounts walk through (additions of 1–120, spends of 1–60), so
 * values often land exactly on a line.
 */
export function drawThresholds(rng: Prng, scoped: boolean): AlertThreshold[] {
  const list: AlertThreshold[] = [];
  const ladder = (rungs: number, from: number, step: number, make: (line: number, i: number) => AlertThreshold) => {
    for (let i = 0; i < rungs; i++) list.push(make(from + i * step, i));
  };
  ladder(rng.range(2, 4), rng.range(-10, 20), rng.range(5, 15), (line, i) => ({
    id: `low-${i}`,
    kind: "available",
    atOrBelow: line,
  }));
  ladder(rng.range(1, 3), rng.range(1, 40), rng.range(5, 30), (line, i) => ({
    id: `daily-${i}`,
    kind: "period_spend",
    window: "day",
    atOrAbove: line,
  }));
  if (scoped && rng.chance(0.6))
    list.push(
      rng.chance(0.5)
        ? { id: "daily:key-1", kind: "period_spend", window: "day", spender: "key-1", atOrAbove: rng.range(1, 60) }
        : { id: "daily:images", kind: "period_spend", window: "day", feature: "images", atOrAbove: rng.range(1, 60) },
    );
  ladder(rng.range(1, 3), rng.range(5, 40), rng.range(10, 25), (line, i) => ({
    id: `pct-${i}`,
    kind: "left_percent",
    atOrBelow: line,
  }));
  const within = rng.pick(WITHIN_DAYS);
  ladder(rng.range(1, 2), rng.range(1, 40), rng.range(5, 30), (line, i) => ({
    id: `soon-${i}`,
    kind: "expiring",
    withinDays: i === 0 ? within : rng.pick(WITHIN_DAYS),
    atOrAbove: line,
  }));
  return list;
}

/** What the model records for an event: `seq <n>: triggered <id>=<value> #<crossing>` or `seq <n>: resolved <id>=<value>,…`. */
export type AlertLine = string;

/** A spend counted by `period_spend` thresholds: when, how much (negative: a reversal), by whom on what. */
interface Spend {
  at: number;
  amount: number;
  spender: string | null;
  feature: string | null;
}

interface Account {
  readonly thresholds: readonly AlertThreshold[];
  /** Each threshold's state (absent: ok) and how many times it went into alarm. */
  readonly alarm: Map<string, boolean>;
  readonly crossings: Map<string, number>;
  readonly spends: Spend[];
  /** The charges (deductions and captures) by entry id, for their reversals. */
  readonly charges: Map<string, Omit<Spend, "amount">>;
  /** Who spent on what with each hold, by reservation id (its capture is theirs). */
  readonly holds: Map<string, { spender: string | null; feature: string | null }>;
  /** Journal entries committed so far: an account with none evaluates nothing. */
  entries: number;
  readonly events: AlertLine[];
  /** What each grant was given (its credits when first seen), by id. */
  readonly given: Map<string, number>;
  /** Each grant as the last commit left it: open, drawn out (nothing left, not closed), or closed. */
  readonly seen: Map<string, "open" | "out" | "closed">;
  /** The unscoped grants drawn out in the pool's current allowance. */
  readonly drawn: Set<string>;
}

/**
 * A planted bug of the model's own making, to prove the comparison catches the service's
 * mistakes: the thresholds the service is given compare strictly (`atOrBelow` one lower,
 * `atOrAbove` one higher: on whole credits, `< line` and `> line`), while the model keeps the line
 * on the alarm side.
 */
export function strictLines(list: readonly AlertThreshold[]): AlertThreshold[] {
  return list.map((t) =>
    t.kind === "available" || t.kind === "left_percent"
      ? { ...t, atOrBelow: t.atOrBelow - 1 }
      : { ...t, atOrAbove: t.atOrAbove + 1 },
  );
}

export class AlertsModel {
  private readonly accounts = new Map<string, Account>();
  /** Evaluations that found a value exactly on its line, and moves into alarm exactly on it. */
  onLine = 0;
  triggeredOnLine = 0;
  /** Events the model predicted, by kind of move. */
  triggered = 0;
  resolved = 0;
  /** Moves of time alone: an evaluation without journal entries that recorded an event. */
  timeMoves = 0;

  constructor(private readonly fail: (what: string) => never) {}

  /** `user`'s thresholds, set before the run; `journal`: the account's entries so far (replayed). */
  setThresholds(user: string, thresholds: readonly AlertThreshold[], journal: readonly JournalEntry[]): void {
    const a: Account = {
      thresholds,
      alarm: new Map(),
      crossings: new Map(),
      spends: [],
      charges: new Map(),
      holds: new Map(),
      entries: 0,
      events: [],
      given: new Map(),
      seen: new Map(),
      drawn: new Set(),
    };
    this.accounts.set(user, a);
    for (const e of journal) this.replay(a, e, e.createdAt.getTime());
    a.entries = journal.length;
  }

  users(): string[] {
    return [...this.accounts.keys()];
  }

  events(user: string): readonly AlertLine[] {
    return this.accounts.get(user)?.events ?? [];
  }

  /** Each threshold's state: `in_alarm` or `ok`. */
  states(user: string): Record<string, string> {
    const a = this.accounts.get(user);
    if (a === undefined) return {};
    return Object.fromEntries(a.thresholds.map((t) => [t.id, a.alarm.get(t.id) === true ? "in_alarm" : "ok"]));
  }

  /**
   * One commit of `user`'s, in commit order: its journal `entries` are replayed, then, where the
   * unit `evaluates` the account, every threshold is read on `m` (the account as the commit left
   * it) at `now`. `seq`: the account's journal position after the commit; `held`: what the account
   * holds in all its units (docs/customer-state.md, "What was granted": an allowance ends only while
   * the account holds nothing).
   */
  commit(
    user: string,
    entries: readonly JournalEntry[],
    m: CreditModel,
    now: number,
    seq: number,
    evaluates: boolean,
    held: number,
  ): void {
    const a = this.accounts.get(user);
    if (a === undefined) return;
    for (const e of entries) this.replay(a, e, now);
    a.entries += entries.length;
    this.follow(a, m, held);
    if (!evaluates || a.entries === 0) return;
    const before = a.events.length;
    this.evaluate(a, m, now, seq);
    if (entries.length === 0 && a.events.length > before) this.timeMoves++;
  }

  private replay(a: Account, e: JournalEntry, now: number): void {
    // Alerts watch the default unit (docs/units.md): another unit's entries move no threshold.
    if ((e.unit ?? null) !== null) return;
    const at = e.occurredAt?.getTime() ?? now;
    const who = { spender: e.spender ?? null, feature: e.feature ?? null };
    switch (e.type) {
      case "reserve":
        if (e.reservationId !== null) a.holds.set(e.reservationId, who);
        return;
      case "deduct":
      case "commit_reserved": {
        // A payment's take-back (recorded by the library as one) is no spend (the rules of usage, docs/usage.md).
        if (e.takeBack != null) return;
        // A capture, and the part of one beyond its hold, are the hold's spender's and feature's.
        const hold = e.reservationId === null ? undefined : a.holds.get(e.reservationId);
        const by = hold ?? who;
        a.charges.set(e.id, { at, ...by });
        if (e.amount > 0) a.spends.push({ at, amount: e.amount, ...by });
        return;
      }
      case "reverse": {
        const charge = e.reverses == null ? undefined : a.charges.get(e.reverses);
        if (charge === undefined) return this.fail(`a reversal of ${String(e.reverses)}: no charge the model knows`);
        a.spends.push({ ...charge, amount: -e.amount });
        return;
      }
      default:
        return;
    }
  }

  /** Follows the pool's allowance through one commit (`m`: the account as it left it; `held`: in all units). */
  private follow(a: Account, m: CreditModel, held: number): void {
    let open = false;
    for (const g of m.grants) {
      if ((g.features ?? null) !== null || (g.spenders ?? null) !== null) continue;
      // A grant that starts later is given at its start (docs/units.md).
      if (g.upcoming === true) continue;
      if (!a.given.has(g.id)) a.given.set(g.id, g.startedWith ?? g.remaining);
      const was = a.seen.get(g.id) ?? "open";
      const is = g.closed !== null ? "closed" : g.remaining === 0 ? "out" : "open";
      a.seen.set(g.id, is);
      if (is === "open") open = true;
      if (was === "open" && is === "out") a.drawn.add(g.id);
      if (was === "out" && is === "open") a.drawn.delete(g.id);
    }
    if (!open && held === 0) a.drawn.clear();
  }

  private evaluate(a: Account, m: CreditModel, now: number, seq: number): void {
    const resolved: string[] = [];
    for (const t of a.thresholds) {
      const line = t.kind === "available" || t.kind === "left_percent" ? t.atOrBelow : t.atOrAbove;
      let value: number;
      let alarm: boolean;
      if (t.kind === "left_percent") [value, alarm] = this.leftPercent(a, t.atOrBelow, m, now);
      else {
        value = this.read(a, t, m, now);
        alarm = t.kind === "available" ? value <= line : value >= line;
      }
      if (value === line) this.onLine++;
      const was = a.alarm.get(t.id) === true;
      a.alarm.set(t.id, alarm);
      if (!was && alarm) {
        const n = (a.crossings.get(t.id) ?? 0) + 1;
        a.crossings.set(t.id, n);
        a.events.push(`seq ${seq}: triggered ${t.id}=${value} #${n}`);
        this.triggered++;
        if (value === line) this.triggeredOnLine++;
      } else if (was && !alarm) resolved.push(`${t.id}=${value}`);
    }
    if (resolved.length > 0) {
      a.events.push(`seq ${seq}: resolved ${resolved.join(",")}`);
      this.resolved++;
    }
  }

  private read(a: Account, t: AlertThreshold, m: CreditModel, now: number): number {
    switch (t.kind) {
      case "available":
        // What a spend naming no feature may use: less the unheld credits of scoped grants.
        return m.available;
      case "period_spend": {
        if (t.window !== "day" || (t.timeZone ?? "UTC") !== "UTC") this.fail("the model knows UTC days only");
        const start = Math.floor(now / DAY) * DAY;
        let spent = 0;
        for (const s of a.spends) {
          if (s.at < start || s.at >= start + DAY) continue;
          if (
            (t.spender !== undefined && s.spender !== t.spender) ||
            (t.feature !== undefined && s.feature !== t.feature)
          )
            continue;
          spent += s.amount;
        }
        return Math.max(0, spent);
      }
      case "expiring": {
        const until = now + t.withinDays * DAY;
        let left = 0;
        for (const g of m.grants)
          if (
            g.closed === null &&
            g.upcoming !== true &&
            g.expiresAt !== null &&
            g.expiresAt > now &&
            g.expiresAt <= until
          )
            left += g.remaining;
        return left;
      }
      case "left_percent":
        return this.fail("left_percent is read by leftPercent");
    }
  }

  /**
   * `left_percent` of the pool: what the unscoped grants usable at `now` hold less the debt, as a
   * share of what they and the pool's drawn-out grants were given; 0 (in alarm) with nothing granted.
   */
  private leftPercent(a: Account, atOrBelow: number, m: CreditModel, now: number): [number, boolean] {
    let granted = 0;
    let left = -m.debt;
    for (const g of m.grants) {
      if ((g.features ?? null) !== null || (g.spenders ?? null) !== null) continue;
      if (a.drawn.has(g.id)) granted += a.given.get(g.id) ?? 0;
      if (g.closed !== null || g.upcoming === true || g.remaining <= 0 || (g.expiresAt !== null && g.expiresAt <= now))
        continue;
      granted += a.given.get(g.id) ?? 0;
      left += g.remaining;
    }
    if (granted === 0) return [0, true];
    return [(left * 100) / granted, left * 100 <= atOrBelow * granted];
  }
}

const ALERT_TYPES = new Set<Notification["type"]>(["alert_triggered", "alert_resolved"]);

/**
 * What the store's outbox holds of `user`'s alert events against the model's, and the account's
 * stored states against the model's (empty: they agree). The rows are the store's, so an event of
 * a commit whose answer was lost is there exactly when its commit landed. Each row's dedupe key
 * numbers the account's alert events: they must be 1, 2, … with none missing or twice, in the
 * order of the rows' ids (docs/notifications.md, "Ordering").
 */
export async function alertProblems(inner: InMemoryDbManager, user: string, model: AlertsModel): Promise<string[]> {
  const rows = (await inner.listNotifications(user, { limit: 1_000_000 })).filter((r) => ALERT_TYPES.has(r.type));
  const problems: string[] = [];
  const numbered = rows.map((r) => ({ r, n: Number(r.dedupeKey?.slice(r.dedupeKey.lastIndexOf(":") + 1)) }));
  numbered.forEach(({ r, n }, i) => {
    if (n !== i + 1) problems.push(`alert row ${r.id} (${String(r.dedupeKey)}) is number ${i + 1} in id order`);
  });
  const got = numbered.sort((x, y) => x.n - y.n).map(({ r }) => describeRow(r));
  const want = model.events(user);
  if (got.join("\n") !== want.join("\n")) {
    let i = 0;
    while (i < got.length && got[i] === want[i]) i++;
    problems.push(
      `alert events differ from event ${i + 1} on: the store has ${JSON.stringify(got.slice(i, i + 4))}, ` +
        `the model ${JSON.stringify(want.slice(i, i + 4))} (${got.length} and ${want.length} in all)`,
    );
  }
  const account = await inner.getAccount(user);
  const marks = account?.alert?.marks ?? {};
  const stored = Object.fromEntries(Object.keys(model.states(user)).map((id) => [id, marks[id]?.state ?? "ok"]));
  if (JSON.stringify(stored) !== JSON.stringify(model.states(user)))
    problems.push(`alert states ${JSON.stringify(stored)}, the model ${JSON.stringify(model.states(user))}`);
  return problems;
}

function describeRow(r: Notification): AlertLine {
  const p = r.payload;
  if (r.type === "alert_triggered")
    return `seq ${String(p.seq)}: triggered ${String(p.thresholdId)}=${String(p.value)} #${String(p.crossing)}`;
  const list = p.resolved as { thresholdId: string; value: number | null }[];
  return `seq ${String(p.seq)}: resolved ${list.map((x) => `${x.thresholdId}=${String(x.value)}`).join(",")}`;
}
