import * as z from "zod/mini";
import { ConflictError, RuleViolationError } from "../core/errors.js";
import type { JournalEntry } from "../core/models/index.js";
import { DateInput } from "../core/models/common.js";
import { parse, parseConfig } from "../core/models/parse.js";
import type { CreditManager } from "../manager.js";
import { type WorkerRound, WorkerOptions, createWorker } from "../worker/index.js";

/*
 * A clock for tests and staging that runs what falls due as it moves (docs/testing.md, "A test
 * clock"): at every instant at which a hold lapses, a grant expires or a subscription renews, it
 * stops and runs the worker's round there, as a worker on a real clock would have at that instant.
 */

/** `createTestClock`'s options, validated (see `TestClockOptions`). */
const Options = z.strictObject({
  /** How far one `advance` may move the clock, in days (1–3,660). Default 731 (two years). */
  maxDays: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(3660))),
  /** How many instants one `advance` may stop at (1–100,000). Default 10,000. */
  maxSteps: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(100_000))),
  /**
   * The longest move between two stops, in ms (60,000 to 31 days), or null: none. With one, the
   * clock also stops at least that often, for what time moves without a due row to find: the
   * expiring-credit reminders and alerts, the spend windows that end. Default null.
   */
  maxStepMs: z.optional(z.nullable(z.number().check(z.int(), z.minimum(60_000), z.maximum(31 * 86_400_000)))),
  /** The worker's options at each stop (`createWorker`'s); its `jitter` is 0 whatever is given. */
  worker: z.optional(WorkerOptions),
});
/** `createTestClock(start, options)`, validated like every public input. @beta */
export interface TestClockOptions {
  /** How far one `advance` may move the clock, in days (1–3,660). Default 731 (two years). */
  maxDays?: number;
  /** How many instants one `advance` may stop at (1–100,000). Default 10,000. */
  maxSteps?: number;
  /**
   * The longest move between two stops, in ms (60,000 to 31 days), or null: none (the default).
   * With one, the clock also stops at least that often, for what time moves without a due row to
   * find: the expiring-credit reminders and alerts, the spend windows that end.
   */
  maxStepMs?: number | null;
  /** The worker's options at each stop (`createWorker`'s); its `jitter` is 0 whatever is given. */
  worker?: WorkerOptions;
}

/** One stop of `advance`: the instant, the accounts that had something due then, what the worker did. @beta */
export interface TestClockStep {
  /** The instant the clock stopped at. */
  at: Date;
  /** The accounts with a hold, grant or subscription due at or before `at`, in code-unit order. */
  accounts: string[];
  /** The journal entries those accounts recorded at `at` (the worker's, at the step), by account then seq. */
  entries: JournalEntry[];
  /** The worker's rounds at `at` (`CreditWorker.runOnce`). */
  rounds: WorkerRound[];
}

/** A clock a test moves forward (`createTestClock`). @beta */
export interface TestClock {
  /** The clock to give the manager: `createCreditManager({ clock: testClock.now })`. */
  readonly now: () => Date;
  /** "advancing" while an `advance` runs, else "ready". */
  readonly status: "ready" | "advancing";
  /** The manager whose due work `advance` runs; it must have been made with this clock's `now`. */
  attach(manager: CreditManager): void;
  /**
   * Moves the clock forward to `to`, stopping at every instant after now and up to `to` at which
   * the attached manager's store has a hold lapsing, a grant expiring or a subscription renewing,
   * and at `to`; at each, it runs the worker's round (jobs, reminders and alerts, the outbox, top-ups,
   * rollups). `to` before now, or further than `maxDays`, is a `RuleViolationError` that moves
   * nothing; more than `maxSteps` stops is one that leaves the clock at the last stop. Resolves to
   * every stop, in time order; the last is at `to`.
   */
  advance(to: Date | string): Promise<TestClockStep[]>;
}

/** Rows each due scan reads per page when it lists a step's accounts. */
const PAGE = 1000;

/**
 * A clock that starts at `start` and moves only when `advance` moves it, running at each instant
 * what falls due there (docs/testing.md, "A test clock"). Each test gets its own: two managers on
 * two clocks never see each other's time. Throws `ConfigurationError` for bad options.
 * @beta
 */
export function createTestClock(start: Date | string, options: TestClockOptions = {}): TestClock {
  let current = parse(DateInput, start, "start").getTime();
  const o = parseConfig(Options, options, "options", "testing");
  const maxDays = o.maxDays ?? 731;
  const maxSteps = o.maxSteps ?? 10_000;
  const maxStepMs = o.maxStepMs ?? null;
  let manager: CreditManager | undefined;
  let status: TestClock["status"] = "ready";
  const now = () => new Date(current);

  /** The soonest instant at or before `to` at which the store has something due (null: none). */
  const nextDue = async (m: CreditManager, to: Date): Promise<number | null> => {
    const [grant] = await m.db.findDueGrants(to, 1);
    const [hold] = await m.db.findExpiredReservations(to, 1);
    const [subscription] = await m.db.findDueSubscriptions(to, 1);
    const times = [grant?.expiresAt, hold?.expiresAt, subscription?.nextRunAt]
      .filter((t): t is Date => t instanceof Date)
      .map((t) => t.getTime());
    return times.length === 0 ? null : Math.min(...times);
  };

  /** The accounts with something due at or before `at`. */
  const dueAccounts = async (m: CreditManager, at: Date): Promise<string[]> => {
    const users = new Set<string>();
    const scans = [
      (after: { expiresAt: Date; id: string } | undefined) => m.db.findDueGrants(at, PAGE, after),
      (after: { expiresAt: Date; id: string } | undefined) => m.db.findExpiredReservations(at, PAGE, after),
    ];
    for (const scan of scans) {
      for (let after: { expiresAt: Date; id: string } | undefined; ;) {
        const rows = await scan(after);
        for (const r of rows) users.add(r.userId);
        const last = rows[rows.length - 1];
        if (rows.length < PAGE || last === undefined) break;
        after = { expiresAt: last.expiresAt as Date, id: last.id };
      }
    }
    for (let after: { nextRunAt: Date; id: string } | undefined; ;) {
      const rows = await m.db.findDueSubscriptions(at, PAGE, after);
      for (const s of rows) users.add(s.userId);
      const last = rows[rows.length - 1];
      if (rows.length < PAGE || last?.nextRunAt == null) break;
      after = { nextRunAt: last.nextRunAt, id: last.id };
    }
    return [...users].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  };

  /** What `accounts` recorded at `at`. */
  const recordedAt = async (m: CreditManager, accounts: readonly string[], at: Date): Promise<JournalEntry[]> => {
    const out: JournalEntry[] = [];
    for (const u of accounts) {
      // Newest first, by when they were recorded (`from` would read when their money moved).
      const page = await m.credits.getCreditHistory(u, { limit: 1000 });
      out.push(...page.items.filter((e) => e.createdAt.getTime() === at.getTime()).reverse());
    }
    return out;
  };

  return {
    now,
    get status() {
      return status;
    },
    attach(m: CreditManager) {
      if (m.credits.now().getTime() !== current)
        throw new RuleViolationError(
          "The manager does not run on this clock: create it with { clock: testClock.now }.",
        );
      manager = m;
    },
    async advance(toInput: Date | string): Promise<TestClockStep[]> {
      const to = parse(DateInput, toInput, "to");
      const m = manager;
      if (m === undefined)
        throw new RuleViolationError("No manager is attached: call testClock.attach(manager) first.");
      if (status === "advancing")
        throw new ConflictError("The test clock is advancing: await the advance in progress.");
      if (to.getTime() < current)
        throw new RuleViolationError(
          `A test clock only moves forward: ${to.toISOString()} is before ${now().toISOString()}.`,
        );
      if (to.getTime() - current > maxDays * 86_400_000)
        throw new RuleViolationError(
          `One advance moves the clock at most ${maxDays} days (maxDays); ${to.toISOString()} is further. Advance in shorter moves.`,
        );
      const from = now();
      const steps: TestClockStep[] = [];
      const run = createWorker(m, { ...o.worker, jitter: 0 });
      status = "advancing";
      try {
        const cap = () => (maxStepMs === null ? to.getTime() : Math.min(to.getTime(), current + maxStepMs));
        const nextStop = async () => Math.min((await nextDue(m, to)) ?? Number.POSITIVE_INFINITY, cap());
        // What was due at the start already (a clock whose worker never ran) runs there first.
        let at = (await nextDue(m, from)) !== null ? current : await nextStop();
        for (;;) {
          if (steps.length >= maxSteps)
            throw new RuleViolationError(
              `More than ${maxSteps} instants fall due before ${to.toISOString()} (maxSteps): the clock stopped at ${now().toISOString()}.`,
            );
          current = at;
          const instant = now();
          const accounts = await dueAccounts(m, instant);
          const { rounds } = await run.runOnce();
          steps.push({ at: instant, accounts, entries: await recordedAt(m, accounts, instant), rounds });
          if (current >= to.getTime()) break;
          // Something still due at the instant just run (a job that failed there) would stop here forever.
          const due = await nextDue(m, now());
          if (due !== null) {
            const failed = rounds.filter((r) => !r.ok).map((r) => r.task);
            throw new ConflictError(
              `What fell due by ${instant.toISOString()} is still due after the worker's round there${failed.length > 0 ? ` (failed: ${failed.join(", ")})` : ""}; the clock stopped there.`,
            );
          }
          at = await nextStop();
        }
        return steps;
      } finally {
        status = "ready";
      }
    },
  };
}
