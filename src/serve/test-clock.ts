import type { Logger as Pino } from "pino";
import * as z from "zod/mini";
import { ConflictError } from "../core/errors.js";
import { JournalEntry } from "../models-entry.js";
import type { CreditWorker } from "../worker/index.js";
import type { RouteDefinition } from "../http/router.js";
import { rootRoute } from "../http/route-helpers.js";
import { createTestClock, type TestClock, type TestClockOptions } from "../testing/test-clock.js";

/**
 * `serve` on a test clock (docs/service.md, "A test clock in staging"): with `CREDIT_TEST_CLOCK`
 * the manager's clock stands still until an admin moves it with `POST /admin/test-clock/advance`,
 * which runs at every instant on the way what the worker would run there (docs/testing.md, "A test
 * clock"). Without the variable none of this exists.
 */
export const TEST_CLOCK_PATH = "/admin/test-clock";

const Advance = z.strictObject({
  /** Where to move the clock: an ISO 8601 date-time with its offset, not before now. */
  to: z.iso.datetime({ offset: true }),
});

const Clock = z.object({
  now: z.string().check(z.describe("The service's time: the test clock's instant (ISO 8601)")),
  start: z.string().check(z.describe("Where the clock stood when the service started (CREDIT_TEST_CLOCK)")),
  status: z.enum(["ready", "advancing"]),
});

const Round = z.object({
  task: z.string(),
  ok: z.boolean(),
  idle: z.boolean(),
  durationMs: z.number(),
  report: z.record(z.string(), z.unknown()),
  error: z.optional(z.string().check(z.describe("What the round threw, when it did"))),
});

const Step = z.object({
  at: z.string().check(z.describe("The instant the clock stopped at")),
  accounts: z.array(z.string()).check(z.describe("The accounts with something due at or before `at`")),
  entries: z.array(JournalEntry).check(z.describe("The journal entries those accounts recorded at `at`")),
  rounds: z.array(Round).check(z.describe("The worker's rounds at `at`")),
});

/** `serve`'s test clock (`serveTestClock`). */
export interface ServeTestClock {
  clock: TestClock;
  routes: RouteDefinition[];
  /**
   * The rounds of `--worker`, paused while an advance runs (the advance runs the worker's round at
   * each stop itself, and reports what it did there); null: none, or the service is stopping.
   */
  rounds: CreditWorker | null;
}

/** The clock `serve` builds its manager on, started at `start`, and its admin routes. */
export function serveTestClock(start: Date, logger: Pino, worker: TestClockOptions["worker"]): ServeTestClock {
  const clock = createTestClock(start, worker === undefined ? {} : { worker });
  let advancing = false;
  const shown = () => ({ now: clock.now().toISOString(), start: start.toISOString(), status: clock.status });
  const tags = ["test-clock"];
  const routes: RouteDefinition[] = [
    rootRoute("GET", TEST_CLOCK_PATH, "admin", {
      operationId: "getTestClock",
      summary: "The test clock: the service's simulated now (only with CREDIT_TEST_CLOCK)",
      tags,
      response: Clock,
      handle: () => shown(),
    }),
    rootRoute("POST", `${TEST_CLOCK_PATH}/advance`, "admin", {
      operationId: "advanceTestClock",
      summary: "Moves the test clock forward to `to`, running what falls due on the way (only with CREDIT_TEST_CLOCK)",
      description:
        'Stops at every instant up to `to` at which a hold lapses, a grant expires or a subscription renews, and at `to`, and runs the worker\'s round at each (docs/testing.md, "A test clock"). A `to` before now, or more than 731 days on, is a 422 `RULE_VIOLATION` that moves nothing; an advance while another runs is a 409 `CONFLICT`.',
      tags,
      body: Advance,
      response: z.object({
        from: z.string(),
        now: z.string(),
        steps: z.array(Step),
      }),
      errors: [409, 422],
      handle: async (ctx) => {
        const { to } = await ctx.body<z.output<typeof Advance>>();
        if (advancing || clock.status === "advancing")
          throw new ConflictError("The test clock is advancing: await the advance in progress.");
        advancing = true;
        const from = clock.now();
        // --worker's rounds wait while the clock moves: a round of theirs at a stop would do what
        // the stop's own round reports, and the stop would report nothing.
        const rounds = out.rounds;
        let steps: Awaited<ReturnType<TestClock["advance"]>>;
        try {
          await rounds?.stop();
          steps = await clock.advance(to);
        } finally {
          advancing = false;
          // Not once the service is stopping (it set `rounds` to null).
          if (rounds !== null && out.rounds === rounds) rounds.start();
        }
        // Loud, as every move of simulated time is (docs/service.md, "A test clock in staging").
        logger.warn(
          { from: from.toISOString(), to: clock.now().toISOString(), steps: steps.length },
          "test clock advanced: the service's time is simulated",
        );
        return {
          from: from.toISOString(),
          now: clock.now().toISOString(),
          steps: steps.map((s) => ({
            at: s.at.toISOString(),
            accounts: s.accounts,
            entries: s.entries,
            rounds: s.rounds.map(({ error, ...r }) =>
              error === undefined ? r : { ...r, error: error instanceof Error ? error.message : String(error) },
            ),
          })),
        };
      },
    }),
  ];
  const out: ServeTestClock = { clock, routes, rounds: null };
  return out;
}
