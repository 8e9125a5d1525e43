import type { Changes } from "../../src/core/domain/state.js";
import { billingRows } from "../../src/modules/billing/store.js";
import { createHash } from "node:crypto";
import { InMemoryDbManager } from "../../src/built-in-parts.js";
import { ConflictError, CreditError, OutcomeUnknownError, StorageError } from "../../src/core/errors.js";
import { createCreditManager, type CreditManager } from "../../src/manager.js";
import type { JournalEntry, Payment, Subscription } from "../../src/models-entry.js";
import { CreditService } from "../../src/credit-service.js";
import { NotificationService } from "../../src/core/services/notification-service.js";
import { mayPay, type CreditModel, type ModelGrant, type ModelSpend } from "../../src/core/testing/model.js";
import {
  AccountsModel,
  cloneModel,
  findGrant,
  findHold,
  heldAmount,
  openGrants,
  settleGrants,
  type ClosedGrant,
} from "./model.js";
import { Prng } from "./prng.js";
import { NO_FAULTS, Scheduler, inOp, type FaultRates, type OpContext } from "./scheduler.js";
import { derivedProblems, reverseInModel } from "./derived.js";
import { usageKind } from "../../src/core/domain/usage.js";
import { ProcessCache, SimStore, type StoreEvent } from "./store.js";
import { PaymentsModel, SimBank, simProvider, webhook } from "./payments.js";
import { AlertsModel, alertProblems, drawThresholds, strictLines } from "./alerts.js";
import { DAY, PLANS, ROLLOVER, SubscriptionsModel, type SubRequest } from "./subscriptions.js";

interface PromoSpec {
  credits: number;
  /** Claims over all users (null: unlimited). */
  maxUses: number | null;
  perUser: number;
  /** Days until a claim's credits expire (null: never). */
  days: number | null;
  /** Ms after the start when the promo ends (null: never). */
  endsAfter: number | null;
}

/** The promo codes of every run. */
const PROMOS: Readonly<Record<string, PromoSpec>> = {
  LIMITED: { credits: 50, maxUses: 4, perUser: 2, days: 1, endsAfter: 3 * DAY },
  WELCOME: { credits: 20, maxUses: null, perUser: 1, days: null, endsAfter: null },
};

/** One client request of the simulation (what it asks; every retry asks the same). */
export type Spec =
  | {
      kind: "add";
      user: string;
      amount: number;
      expiresAt: number | null;
      priority: number;
      scope?: SimScope;
      /** A grant that starts later (docs/units.md): when it starts. */
      effectiveAt?: number;
      /** Its unit (docs/units.md; absent: the default one), as for the spends below. */
      unit?: string;
    }
  | ({ kind: "deduct"; user: string; amount: number } & SimSpend & InUnit)
  | ({ kind: "after"; user: string; amount: number } & SimSpend & InUnit)
  /** Usage recorded late: an after-service deduction with `occurredAt` (docs/usage.md, "Late usage"). */
  | ({ kind: "late"; user: string; amount: number; occurredAt: number } & SimSpend & InUnit)
  /** A charge given back, in part or (amount null) what is left of it (docs/concepts.md, "Giving a charge back"). */
  | { kind: "reverse"; user: string; charge: string; amount: number | null }
  | ({ kind: "reserve"; user: string; amount: number; ttlSec: number } & SimSpend & InUnit)
  | { kind: "commit"; user: string; hold: string; amount: number | null }
  | { kind: "release"; user: string; hold: string }
  | { kind: "void"; user: string; grant: string }
  | { kind: "expire"; user: string }
  | { kind: "read"; user: string }
  | { kind: "expireJob" }
  | { kind: "holdJob" }
  | SubRequest
  | { kind: "renewJob" }
  | { kind: "claim"; user: string; code: string }
  | { kind: "pay"; user: string; amount: number }
  | { kind: "paid"; user: string; payment: string }
  | { kind: "refund"; user: string; payment: string; total: number }
  | { kind: "dispatch" }
  /**
   * What time alone moved in the alert thresholds (docs/customer-state.md, "Time-based moves"): the
   * worker's rounds (`evaluateExpiringAlerts`, `evaluateEndedSpendWindows`) or one account's
   * `evaluateAlerts`.
   */
  | { kind: "alerts"; user: string; round: "expiring" | "ended" | "account" };

/** A scoped grant's scope (docs/teams-and-limits.md, "Scoped credits"). */
type SimScope = { features?: string[]; spenders?: string[] };
/** Who spends on what (absent: not named). */
type SimSpend = { spender?: string; feature?: string };
/** The unit a request names (docs/units.md; absent: the default one). */
type InUnit = { unit?: string };
/**
 * The units other than the default one, each with its overdraft limit (null: unlimited), as the
 * processes' `overdraftLimits` give them: `gpu_seconds` may go 25 below zero, `images` without bound.
 */
const UNIT_LIMITS: Readonly<Record<string, number | null>> = { images: null, gpu_seconds: 25 };
const UNITS = Object.keys(UNIT_LIMITS);
const SCOPES: readonly SimScope[] = [
  { features: ["images"] },
  { spenders: ["key-1"] },
  { features: ["chat"], spenders: ["key-1", "key-2"] },
];
const SPENDS: readonly SimSpend[] = [
  {},
  { spender: "key-1" },
  { feature: "images" },
  { spender: "key-2", feature: "chat" },
  { spender: "key-1", feature: "images" },
];
/** A spend limit of a simulated account (its window outlasts the run). */
interface SimLimit {
  spender: string | null;
  feature: string | null;
  amount: number;
}

const spendOf = (s: SimSpend): ModelSpend => ({ spender: s.spender ?? null, feature: s.feature ?? null });

export interface SimOptions {
  seed: number;
  /** Steps (batches of concurrent requests, then a check, then maybe a clock tick). */
  steps: number;
  /**
   * The command that replays a seed, printed in a failure (`{seed}` and `{steps}` are filled in).
   * Default: `SIM_SEED={seed} SIM_STEPS={steps} npx vitest run test/simulation.test.ts`.
   */
  replay?: string;
  /** Makes the code under test's ids come from the simulation's PRNG (see test/simulation.test.ts). */
  setIdSource?: (next: () => string) => void;
  /**
   * A planted bug, to prove the simulation catches one: `"lost-commit"` makes the store answer
   * some commits as done without writing them; `"stale-cache"` makes every process answer a unit
   * of work that started from its state cache and saves nothing (a refusal, a settle with nothing
   * to do, a job's account without work) without checking its copy is still the store's state;
   * `"scope-lost"` makes the store load grants without their scope (an adapter that forgot the
   * column), so spends draw from scoped grants outside their scope; `"limit-skipped"` makes the
   * store load spend limits without their amount (as unlimited), so every spend passes the check;
   * `"alert-line-strict"` gives the service alert thresholds that compare strictly (the line on the
   * safe side) while the model keeps it on the alarm side; `"alert-marks-lost"` makes the store load
   * accounts without their alert thresholds' states, so every unit of work evaluates them from `ok`;
   * `"unit-lost"` makes the store load grants without their unit (all in the default one), so
   * spends draw grants of another unit.
   */
  plantedBug?:
    | "lost-commit"
    | "stale-cache"
    | "charge-without-key"
    | "scope-lost"
    | "limit-skipped"
    | "alert-line-strict"
    | "alert-marks-lost"
    | "unit-lost";
}

export interface SimResult {
  seed: number;
  steps: number;
  requests: number;
  commits: number;
  storeCalls: number;
  /** Requests whose first answer was an error or none (then retried with the same key). */
  inDoubt: number;
  /** Answers by request kind and outcome ("deduct ok", "claim PromoNotEligibleError", …). */
  outcomes: Record<string, number>;
  /** Auto top-ups: successful charges at the provider, and top-ups credited. */
  topUps: { charged: number; credited: number };
  /**
   * Alert events the model predicted (and the store's outbox held, one by one): moves into alarm
   * and resolutions; evaluations with a value exactly on its line and moves into alarm on it; events
   * recorded by an evaluation of time alone (the worker's rounds, `evaluateAlerts`).
   */
  alerts: { triggered: number; resolved: number; onLine: number; triggeredOnLine: number; timeMoves: number };
  /**
   * Entries the library wrote for time after their due instant (an expiry, a start, a lapse settled
   * by a later operation or read), each found dated at that instant (`dueProblems`).
   */
  settledLate: number;
  /** Renewals that carried a rollover grant, each as the model owed it (docs/subscriptions.md, "Rollover"). */
  rollovers: number;
  /** A digest of everything that happened: the same seed gives the same digest. */
  digest: string;
}

export class SimulationFailure extends Error {
  constructor(
    readonly seed: number,
    readonly step: number,
    what: string,
    readonly replay: string,
    trace: readonly string[],
  ) {
    const shown = process.env.SIM_TRACE === undefined ? trace.slice(-15) : trace;
    super(
      `simulation failed (seed ${seed}, step ${step}): ${what}\n  replay: ${replay}\n  last requests:\n    ${shown.join("\n    ")}`,
    );
    this.name = "SimulationFailure";
  }
}

const USERS = ["alice", "bob", "carol"];
const T0 = Date.parse("2031-03-01T00:00:00.000Z");
const DEFAULT_REPLAY =
  "SIM_SEED={seed} SIM_STEPS={steps} npx vitest run test/simulation.test.ts  (or: npm run sim -- --seed {seed} --steps {steps} --trace)";

interface Op {
  readonly id: number;
  readonly spec: Spec;
  readonly key: string | null;
  attempts: number;
  /** Commits carrying this request's key (all attempts): exactly one once it succeeded. */
  commits: number;
  /**
   * The model's answers at the request's last load of its own unit of work, and at each live read
   * after it (a promo's uses are read live, as under read committed): the request may answer any.
   */
  accept: Set<string>;
  /** At that load, and still when it answered, the user's subscription period had ended and the next was due. */
  periodDue: boolean;
  state: "new" | "in-doubt" | "done";
}

interface Attempt {
  readonly op: Op;
  readonly ctx: OpContext;
  readonly slot: number;
  settled: boolean;
  ok: boolean;
  value: unknown;
  error: unknown;
}

/** Runs one seed. Throws `SimulationFailure` (with the replay command) on the first disagreement. */
export async function runSimulation(options: SimOptions): Promise<SimResult> {
  // The code under test draws its own jitter from `Math.random` (a notification's retry backoff,
  // docs/notifications.md): during a run it comes from the seed too, or two retries due at nearly
  // the same instant would be dispatched in an order the seed does not decide.
  const jitter = new Prng(options.seed ^ 0x7177e5);
  const random = Math.random;
  Math.random = () => jitter.u32() / 4294967296;
  try {
    return await simulate(options);
  } finally {
    Math.random = random;
  }
}

async function simulate(options: SimOptions): Promise<SimResult> {
  const { seed, steps } = options;
  const rng = new Prng(seed);
  // Separate streams: the ids the code draws do not shift the schedule, and the reverse.
  const idRng = new Prng(seed ^ 0x5eed1d5);
  options.setIdSource?.(() => idRng.uuid());
  const replay = (options.replay ?? DEFAULT_REPLAY)
    .replaceAll("{seed}", String(seed))
    .replaceAll("{steps}", String(steps));

  // Swarm testing: each seed has its own mix of faults (some none at all).
  const rates: FaultRates = rng.chance(0.15)
    ? NO_FAULTS
    : {
        storageError: rng.pick([0, 0.01, 0.04]),
        conflict: rng.pick([0, 0.03, 0.1]),
        ambiguous: rng.pick([0, 0.02, 0.06]),
        drop: rng.pick([0, 0.005, 0.02]),
      };
  const concurrency = rng.range(1, 5);
  // Fewer users, more contention on each account (one user: every request on one account).
  const users = USERS.slice(
    0,
    rng.weighted<number>([
      [1, 1],
      [1, 2],
      [3, 3],
    ]),
  );
  const scheduler = new Scheduler(rng, rates);
  const inner = new InMemoryDbManager();
  const sim = new SimStore(
    inner,
    scheduler,
    options.plantedBug === "lost-commit" ? rng : undefined,
    options.plantedBug === "scope-lost",
    options.plantedBug === "limit-skipped",
    options.plantedBug === "alert-marks-lost",
    options.plantedBug === "unit-lost",
  );
  // Swarm testing: about half the seeds give scoped grants and name spenders and features.
  // From a stream of their own, so the requests, schedule and faults are those of the same seed without them.
  const scopeRng = new Prng(seed ^ 0x5c0bed);
  const scoped = scopeRng.chance(0.5);
  // On those seeds some users spend under limits (docs/teams-and-limits.md), drawn from a stream of
  // their own too; windows of 100 years: the run never leaves one.
  const limitRng = new Prng(seed ^ 0x11a175);
  // Which after-service charges are recorded late, and how late (docs/usage.md, "Late usage").
  const lateRng = new Prng(seed ^ 0x1a7e0);
  // Which reads are reversals instead, of which charge and how much (a stream of its own too).
  const reverseRng = new Prng(seed ^ 0x7e7e75);
  // Which additions start later, and when (a stream of its own too).
  const laterRng = new Prng(seed ^ 0x1a7e57);
  // Swarm testing: most seeds add, spend and hold in other units too (docs/units.md), drawn from a
  // stream of their own; the others never name a unit, and see the API as it is without units.
  const unitRng = new Prng(seed ^ 0x0417e5);
  const multiUnit = unitRng.chance(0.7);
  /** A unit for a request that may name one (undefined: the default unit). */
  const drawUnit = (): InUnit => (multiUnit && unitRng.chance(0.45) ? { unit: unitRng.pick(UNITS) } : {});
  /** The charges committed, by user: each one's amount, unit and what its reversals gave back so far. */
  const charges = new Map<string, { id: string; amount: number; reversed: number; unit: string | null }[]>();
  const limited = new Map<string, SimLimit[]>();
  /** `user/unit` of each unit other than the default one with a committed entry: the units an account holds. */
  const entered = new Set<string>();
  if (scoped)
    for (const user of users) {
      if (!limitRng.chance(0.6)) continue;
      const list: SimLimit[] = [];
      if (limitRng.chance(0.5)) list.push({ spender: null, feature: null, amount: limitRng.range(50, 600) });
      if (limitRng.chance(0.7)) list.push({ spender: "key-1", feature: null, amount: limitRng.range(10, 200) });
      if (limitRng.chance(0.5)) list.push({ spender: null, feature: "images", amount: limitRng.range(10, 200) });
      if (list.length > 0) limited.set(user, list);
    }
  /** What the committed entries spent under each limit (holds counted while active), and how high a forced spend took it. */
  const counted = new Map<string, { used: number; ceiling: number }[]>();
  /** The holds of limited users: amount and who spent on what. */
  const limitHolds = new Map<string, { amount: number; spend: ModelSpend }>();
  const clock = { now: T0 };
  const model = new AccountsModel(clock.now, UNIT_LIMITS);
  const trace: string[] = [];
  const digest = createHash("sha256");
  let step = 0;
  const fail = (what: string): never => {
    throw new SimulationFailure(seed, step, what, replay, trace);
  };

  // Auto top-up: the card network behind it, each new charge's outcome from the seed.
  const bank = new SimBank(
    () =>
      rng.weighted<"succeeded" | "declined" | "transient" | "lost">([
        [6, "succeeded"],
        [2, "declined"],
        [1, "transient"],
        [2, "lost"],
      ]),
    options.plantedBug === "charge-without-key",
  );
  const payConfig = {
    providers: [simProvider, bank.provider],
    creditsPerUnit: { USD: 0.29 },
    checkoutWaitMs: 0,
    checkoutStaleSeconds: 0,
  };
  // The outbox is dispatched (the worker's part: it charges each auto top-up) to a queue that takes all.
  const queue = { publish: async () => undefined };
  // A process: its own manager over its own view of the store, with its own state cache.
  const newManager = () =>
    createCreditManager({
      db: sim.process(new ProcessCache(options.plantedBug === "stale-cache")),
      clock: () => new Date(clock.now),
      init: false,
      // Checkpoints inside the units of work: the model sees them and both audits must agree.
      checkpointEvery: 7,
      // The model's after-service usage and over-commits go into debt without a bound; in the other
      // units, each unit's own limit (UNIT_LIMITS).
      overdraftLimit: "unlimited",
      overdraftLimits: Object.fromEntries(
        Object.entries(UNIT_LIMITS).map(([unit, limit]) => [unit, limit ?? ("unlimited" as const)]),
      ),
      // No waiting on real timers for a concurrent checkout: the simulation has no timers to run.
      payments: payConfig,
      queue,
      notifications: { backoffBaseMs: 1000, backoffMaxMs: 60_000 },
      // A commit whose answer was lost is looked up once, with no wait between tries (the
      // simulation has no timers to run): found, the call answers its result; else it is in doubt.
      outcomeWaitMs: 0,
    });
  // Two to four processes serving requests; one that dies is replaced by a fresh one (cache empty).
  const managers: CreditManager[] = [];
  for (let n = rng.range(2, 4); managers.length < n;) managers.push(await newManager());
  // Reads for the checks go straight to the store: no scheduler, no faults.
  const checker = new CreditService({ db: inner, clock: () => new Date(clock.now) });

  // Plans are there before the run (written straight to the store).
  const admin = await createCreditManager({
    db: inner,
    clock: () => new Date(clock.now),
    init: false,
    payments: payConfig,
  });
  for (const [id, credits] of Object.entries(PLANS)) {
    await admin.subscriptions.createPlan({
      id,
      name: id,
      creditsPerPeriod: credits,
      billingPeriod: "daily",
      rollover: ROLLOVER[id] ?? "none",
    });
  }
  const subs = new SubscriptionsModel(fail);
  const payments = new PaymentsModel(fail);
  // Some users recharge themselves (set before the run, straight in the store).
  for (const user of users) {
    if (!rng.chance(0.6)) continue;
    await admin.payments.setAutoTopUp(user, {
      below: rng.range(10, 80),
      amount: rng.range(50, 400),
      provider: "card",
      customer: `cus-${user}`,
      paymentMethod: `pm-${user}`,
      currency: "USD",
      maxFailures: 3,
    });
  }
  /**
   * Every successful charge is credited exactly once, and nothing is credited that was not charged
   * (docs/promos-and-payments.md, "Auto top-up"): a credited top-up has one successful charge; with
   * `settled` (nothing in flight any more) each successful charge's payment is credited.
   */
  const checkCharges = (settled: boolean) => {
    for (const id of payments.topUps) {
      const p = payments.payments.get(id);
      const ok = bank.succeeded(id);
      if (p?.credited === true && ok.length !== 1)
        fail(`auto top-up ${id} credited ${p.credits} credits with ${ok.length} successful charges at the provider`);
      if (ok.length > 1) fail(`auto top-up ${id} charged ${ok.length} times: ${ok.map((c) => c.id).join(", ")}`);
    }
    if (settled)
      for (const c of bank.charges)
        if (c.succeeded && payments.payments.get(c.paymentId)?.credited !== true)
          fail(`charge ${c.id} of ${c.paymentId} succeeded and was never credited`);
  };
  for (const [code, p] of Object.entries(PROMOS)) {
    await admin.promos.createPromo({
      code,
      credits: p.credits,
      maxUsesPerUser: p.perUser,
      ...(p.maxUses === null ? {} : { maxUses: p.maxUses }),
      ...(p.days === null ? {} : { creditsExpireInDays: p.days }),
      ...(p.endsAfter === null ? {} : { validUntil: new Date(T0 + p.endsAfter) }),
    });
  }
  for (const [user, list] of limited) {
    await admin.credits.setLimits(
      user,
      list.map((l) => ({
        ...(l.spender === null ? {} : { spender: l.spender }),
        ...(l.feature === null ? {} : { feature: l.feature }),
        amount: l.amount,
        period: { every: 100, unit: "year" as const },
      })),
    );
    counted.set(
      user,
      list.map((l) => ({ used: 0, ceiling: l.amount })),
    );
  }
  // Swarm testing: most seeds give every account alert thresholds (set before the run, straight in
  // the store), drawn from a stream of their own, and the worker's alert rounds run among the requests.
  const alertRng = new Prng(seed ^ 0xa1e475);
  const alerting = alertRng.chance(0.8);
  const alerts = new AlertsModel(fail);
  // Set where notification events are recorded (nothing evaluates them elsewhere: setAlerts refuses):
  // a threshold already past its line fires with the change that set it, as the model evaluates it.
  const setter = new NotificationService({ db: inner, clock: () => new Date(clock.now) });
  if (alerting)
    for (const user of users) {
      const list = drawThresholds(alertRng, scoped);
      await setter.setAlerts(user, options.plantedBug === "alert-line-strict" ? strictLines(list) : list);
      // The journal before the run (a limits change is an entry): the account has changed already.
      const journal = await inner.listJournal(user, { order: "asc", limit: 100 });
      alerts.setThresholds(user, list, journal);
      const last = journal[journal.length - 1];
      if (last !== undefined) alerts.commit(user, [], model.of(user), clock.now, last.seq, true, model.held(user));
    }
  /** Counts a committed entry of a limited user's against its limits, as the service counts it. */
  const countEntry = (user: string, x: Changes["entries"][number]) => {
    const list = limited.get(user);
    const counts = counted.get(user);
    if (list === undefined || counts === undefined) return;
    // Spend limits count the default unit (docs/units.md): another unit's spends pass no limit.
    if ((x.unit ?? null) !== null) return;
    let spend: ModelSpend = { spender: x.spender ?? null, feature: x.feature ?? null };
    let delta = 0;
    let forced = false;
    if (x.type === "deduct") {
      delta = x.amount;
      // After service (usage delivered) or beyond its hold: allowed past a limit, as debt is.
      forced = x.reservationId !== null || (x.metadata as { overLimit?: unknown } | null)?.overLimit === true;
    } else if (x.type === "reverse") {
      // A charge given back: its spend comes off the limits that counted it (their window is the run's).
      delta = -x.amount;
    } else if (x.type === "reserve" && x.reservationId !== null) {
      limitHolds.set(x.reservationId, { amount: x.amount, spend });
      delta = x.amount;
    } else if ((x.type === "commit_reserved" || x.type === "release_reserved") && x.reservationId !== null) {
      const h = limitHolds.get(x.reservationId);
      if (h === undefined) return;
      spend = h.spend;
      delta = (x.type === "commit_reserved" ? x.amount : 0) - h.amount;
    } else return;
    list.forEach((l, i) => {
      if ((l.spender !== null && l.spender !== spend.spender) || (l.feature !== null && l.feature !== spend.feature))
        return;
      const c = counts[i] as { used: number; ceiling: number };
      c.used = Math.max(0, c.used + delta);
      if (forced) c.ceiling = Math.max(c.ceiling, c.used);
    });
  };
  /** No spend passes a limit, except usage already delivered (docs/teams-and-limits.md). */
  const checkLimits = (where: string) => {
    for (const [user, list] of limited) {
      const counts = counted.get(user) ?? [];
      list.forEach((l, i) => {
        const c = counts[i] as { used: number; ceiling: number };
        if (c.used > c.ceiling)
          fail(
            `${where}: ${user}'s limit ${JSON.stringify(l)} counts ${c.used} credits spent or held, past its amount without an after-service charge`,
          );
      });
    }
  };
  /** Claims committed: by code, and by code and user. */
  const promoUses = new Map<string, number>();
  const count = (key: string) => promoUses.get(key) ?? 0;

  const ops = new Map<number, Op>();
  let nextOp = 1;
  let eventCursor = 0;
  let commits = 0;
  let inDoubt = 0;
  const outcomes: Record<string, number> = {};

  const describe = (op: Op) => `#${op.id} ${JSON.stringify(op.spec)}`;

  // ---------------------------------------------------------------------------------------------
  // The model, driven by what the store committed, in commit order.

  /**
   * The unit `spec` acts in (null: the default one): the one it names, its hold's, its grant's or
   * its charge's (docs/units.md); anything else acts in the default unit.
   */
  const unitOfSpec = (spec: Spec): string | null => {
    switch (spec.kind) {
      case "add":
      case "deduct":
      case "after":
      case "late":
      case "reserve":
        return spec.unit ?? null;
      case "commit":
      case "release":
        return model.unitOfHold(spec.user, spec.hold) ?? null;
      case "void":
        return model.unitOfGrant(spec.user, spec.grant) ?? null;
      case "reverse":
        return charges.get(spec.user)?.find((c) => c.id === spec.charge)?.unit ?? null;
      default:
        return null;
    }
  };

  /** What the model answers `spec` on `m`, the model of its unit (changed as the service would change it). */
  const applySpec = (spec: Spec, m: CreditModel, changes: Changes | null): string => {
    switch (spec.kind) {
      case "add":
        // An expiry not after the start is refused before anything is read.
        if (spec.effectiveAt !== undefined && spec.expiresAt !== null && spec.expiresAt <= spec.effectiveAt)
          return "ValidationError";
        if (spec.expiresAt !== null && spec.expiresAt <= m.now) return "RuleViolationError";
        m.add(
          changes === null ? "predicted" : (changes.insertGrants[0]?.id ?? null),
          spec.amount,
          spec.expiresAt,
          spec.priority,
          spec.scope ?? null,
          spec.effectiveAt ?? null,
        );
        return "ok";
      case "deduct":
        return m.deduct(spec.amount, false, spendOf(spec)) ? "ok" : "InsufficientCreditsError";
      case "after":
      case "late":
        // Refused past the unit's overdraft limit (UNIT_LIMITS; the default unit has none).
        return m.deduct(spec.amount, true, spendOf(spec)) ? "ok" : "InsufficientCreditsError";
      case "reverse": {
        const c = charges.get(spec.user)?.find((x) => x.id === spec.charge);
        if (c === undefined) return "NotFoundError";
        const left = c.amount - c.reversed;
        if (left === 0 || (spec.amount ?? left) > left) return "RuleViolationError";
        if (changes !== null) reverseInModel(m, changes);
        return "ok";
      }
      case "reserve": {
        if (m.availableFor(spendOf(spec)) < spec.amount) return "InsufficientCreditsError";
        const id = changes === null ? "predicted" : changes.insertReservations[0]?.id;
        if (id === undefined) return "a reservation without a hold row";
        m.reserve(id, spec.amount, spec.ttlSec * 1000, spendOf(spec));
        return "ok";
      }
      case "commit":
      case "release": {
        const h = findHold(m, spec.hold);
        if (h === undefined) return "NotFoundError";
        if (h.status === "expired") return "ReservationExpiredError";
        if (h.status !== "active") return "ReservationNotActiveError";
        // An over-commit's excess past the unit's overdraft limit is refused.
        if (spec.kind === "commit")
          return m.commit(h, spec.amount ?? heldAmount(h)) ? "ok" : "InsufficientCreditsError";
        m.release(h);
        return "ok";
      }
      case "void": {
        const g = findGrant(m, spec.grant);
        if (g === undefined) return "NotFoundError";
        if (g.closed !== null) return "ConflictError";
        m.voidGrant(g);
        return "ok";
      }
      case "claim": {
        const p = PROMOS[spec.code] as PromoSpec;
        const byUser = count(`${spec.code}/${spec.user}`);
        const eligible =
          (p.endsAfter === null || m.now < T0 + p.endsAfter) &&
          byUser < p.perUser &&
          (p.maxUses === null || count(spec.code) < p.maxUses);
        if (!eligible) return "PromoNotEligibleError";
        if (changes === null) return "ok";
        const claims = billingRows(changes)?.promoClaims;
        const claim = claims?.[0];
        if (claims?.length !== 1 || claim?.code !== spec.code || claim.claimNumber !== byUser + 1) {
          return `a claim saved as ${JSON.stringify(claims ?? null)}`;
        }
        m.add(changes.insertGrants[0]?.id ?? null, p.credits, p.days === null ? null : m.now + p.days * DAY, 0);
        promoUses.set(spec.code, count(spec.code) + 1);
        promoUses.set(`${spec.code}/${spec.user}`, byUser + 1);
        return "ok";
      }
      default:
        return "ok";
    }
  };

  const onCommit = (op: Op | undefined, e: Extract<StoreEvent, { kind: "commit" }>) => {
    commits++;
    // The default unit's model (subscriptions, promos, payments and alerts are in it); each unit settles on its own.
    const m = model.of(e.userId);
    const settleAll = () => {
      for (const [, mu] of model.units(e.userId)) mu.settle();
    };
    const keys = new Set(e.changes.entries.map((x) => x.idempotencyKey).filter((k): k is string => k !== null));
    const where = `commit on ${e.userId} by ${op === undefined ? "no request" : describe(op)}`;
    if (limited.has(e.userId)) {
      for (const x of e.changes.entries) countEntry(e.userId, x);
      checkLimits(where);
    }
    // The charges a reversal may name, and what each has given back (after the model's answer, below).
    const reversedNow = e.changes.entries.filter((x) => x.type === "reverse");
    // No grant pays for a spend outside its scope (docs/teams-and-limits.md): by the model's own
    // record of each grant's scope.
    for (const x of e.changes.entries) {
      if (x.type !== "deduct" && x.type !== "reserve") continue;
      const spend = { spender: x.spender ?? null, feature: x.feature ?? null };
      for (const p of x.grants) {
        const g = findGrant(model.unit(e.userId, x.unit ?? null), p.grantId);
        if (g !== undefined && !mayPay(g, spend))
          fail(`${where}: its ${x.type} entry drew ${p.amount} from grant ${p.grantId}, outside that grant's scope`);
      }
    }
    if (op !== undefined && (op.key !== null ? keys.has(op.key) : unkeyedWork(op, e.userId, e.changes))) {
      if (op.commits > 0) fail(`${where}: a second commit of one request (the retry must replay the first)`);
      op.commits++;
      settleAll();
      const answer = applySpec(op.spec, model.unit(e.userId, unitOfSpec(op.spec)), e.changes);
      if (answer !== "ok") fail(`${where}: the store committed what the model answers with ${answer}`);
    } else if (keys.size === 1 && [...keys][0]?.startsWith("cm:payment:") === true) {
      settleAll();
      const add = e.changes.entries.find((x) => x.type === "add");
      payments.credited(m, billingRows(e.changes)?.paymentUpdates?.[0], add?.grants[0]?.grantId ?? null, where);
    } else if (keys.size === 1 && [...keys][0]?.startsWith("cm:refund:") === true) {
      settleAll();
      const spec = op?.spec;
      if (spec?.kind !== "refund") return fail(`${where}: a refund's work outside a refund`);
      payments.refunded(m, billingRows(e.changes)?.paymentUpdates?.[0], spec.total, where);
    } else if (keys.size === 0 && billingRows(e.changes)?.paymentUpdates !== undefined && op?.spec.kind === "refund") {
      // A refund before the payment was credited: its status only.
      settleAll();
      payments.refunded(m, billingRows(e.changes)?.paymentUpdates?.[0], op.spec.total, where);
    } else if (keys.size === 1 && [...keys][0]?.startsWith("cm:sub:") === true) {
      // A subscription's account work (its period, a plan change, a cancel): what it owes.
      settleAll();
      subs.carry(([...keys][0] as string).slice("cm:".length), m, e.changes.entries, e.changes.insertGrants);
    } else if (keys.size > 0) {
      fail(`${where}: entries with keys ${[...keys].join(", ")} the model does not expect`);
    } else if (op?.spec.kind === "dispatch" && e.changes.entries.length === 0) {
      // The auto top-up's state only (asked, declined, settled): like setThreshold, it settles nothing.
    } else if (op?.spec.kind === "expireJob") {
      for (const [, mu] of model.units(e.userId)) settleGrants(mu);
    } else {
      // Every other unit settles first; an alerts round (`evaluateAlerts`, the worker's) too, then
      // writes the thresholds' states.
      settleAll();
    }
    for (const x of e.changes.entries) {
      if ((x.type === "deduct" || x.type === "commit_reserved") && x.amount > 0 && usageKind(x) === "spend") {
        const list = charges.get(e.userId) ?? [];
        list.push({ id: x.id, amount: x.amount, reversed: 0, unit: x.unit ?? null });
        charges.set(e.userId, list);
      }
    }
    for (const x of reversedNow) {
      const c = charges.get(e.userId)?.find((y) => y.id === x.reverses);
      if (c === undefined) fail(`${where}: a reversal of ${String(x.reverses)}, no charge of this account`);
      else c.reversed += x.amount;
    }
    // No entry moves credits of a grant of another unit, and none draws a grant that has not
    // started (docs/units.md), by the model's own record of each grant's unit and start.
    for (const x of e.changes.entries) {
      const unit = x.unit ?? null;
      if (unit !== null) {
        entered.add(`${e.userId}/${unit}`);
        const tally = `entry ${x.type}@${unit}`;
        outcomes[tally] = (outcomes[tally] ?? 0) + 1;
      }
      for (const p of x.grants) {
        const owner = model.unitOfGrant(e.userId, p.grantId);
        if (owner !== undefined && owner !== unit)
          fail(
            `${where}: its ${x.type} entry in ${unit ?? "credits"} moves ${p.amount} of grant ${p.grantId}, a grant in ${owner ?? "credits"}`,
          );
        const drawn = x.type === "deduct" || x.type === "reserve" || x.type === "commit_reserved";
        if (drawn && p.kind !== "debt_paid" && findGrant(model.unit(e.userId, unit), p.grantId)?.upcoming === true)
          fail(`${where}: its ${x.type} entry drew ${p.amount} from grant ${p.grantId}, which has not started`);
      }
    }
    for (const g of e.changes.insertGrants) {
      const owner = model.unitOfGrant(e.userId, g.id);
      if (owner !== undefined && owner !== (g.unit ?? null))
        fail(`${where}: grant ${g.id} stored in ${g.unit ?? "credits"}, the model has it in ${owner ?? "credits"}`);
    }
    const a = e.changes.account;
    trace.push(
      `  commit ${e.userId} seq ${a.seq} by #${op?.id ?? "-"}: ${e.changes.entries.map((x) => `${x.type} ${x.amount}${x.unit == null ? "" : ` ${x.unit}`}`).join(", ")} → ${a.balance}/${a.reserved}/${a.debt}${a.units == null ? "" : ` ${JSON.stringify(a.units)}`}`,
    );
    if (a.balance !== m.balance || a.reserved !== m.reserved || a.debt !== m.debt) {
      fail(
        `${where}: the account after it is balance ${a.balance}, reserved ${a.reserved}, debt ${a.debt}; ` +
          `the model says ${m.balance}, ${m.reserved}, ${m.debt}`,
      );
    }
    // Each other unit's figures are its model's (a unit the account row lacks: all zero).
    const stored = a.units ?? {};
    const modelled = model.units(e.userId).filter(([unit]) => unit !== null) as Array<[string, CreditModel]>;
    for (const unit of Object.keys(stored))
      if (!modelled.some(([u]) => u === unit)) modelled.push([unit, model.unit(e.userId, unit)]);
    for (const [unit, mu] of modelled) {
      const f = stored[unit] ?? { balance: 0, reserved: 0, debt: 0 };
      if (f.balance !== mu.balance || f.reserved !== mu.reserved || f.debt !== mu.debt)
        fail(
          `${where}: its ${unit} after it are balance ${f.balance}, reserved ${f.reserved}, debt ${f.debt}; ` +
            `the model says ${mu.balance}, ${mu.reserved}, ${mu.debt}`,
        );
    }
    digest.update(`c${e.userId}:${a.seq}:${a.balance}:${a.reserved}:${a.debt}:${JSON.stringify(sortedUnits(stored))};`);
    // Every unit of work that writes the account evaluates its alert thresholds after its change,
    // at the step's instant; a save of the account alone evaluates them only for an alerts round
    // (an auto top-up's state does not).
    alerts.commit(
      e.userId,
      e.changes.entries,
      m,
      model.now,
      a.seq,
      !accountOnly(e.changes) || op?.spec.kind === "alerts",
      model.held(e.userId),
    );
  };

  /** The model's answer to `op` now (a repeated key answers with the first result). */
  const predict = (op: Op, userId: string): string => {
    if (op.commits > 0) return "ok";
    const m = cloneModel(model.unit(userId, unitOfSpec(op.spec)));
    m.settle();
    return applySpec(op.spec, m, null);
  };

  const processEvents = () => {
    for (; eventCursor < sim.events.length; eventCursor++) {
      const e = sim.events[eventCursor] as StoreEvent;
      const op = e.op === undefined ? undefined : ops.get(e.op.id);
      if (e.kind === "txread") {
        if (op !== undefined && ownLoad(op, e.userId, e.key)) op.accept.add(predict(op, e.userId));
      } else if (e.kind === "end") {
        // Still due when it answered: nobody (itself included) brought the period meanwhile.
        if (op !== undefined && op.periodDue && "user" in op.spec)
          op.periodDue = subs.renewalDue(op.spec.user, model.now);
      } else if (e.kind === "write") {
        const request = op !== undefined && SUB_KINDS.has(op.spec.kind) ? (op.spec as SubRequest) : undefined;
        const w = e.args[0] as Subscription;
        if (e.method.endsWith("Subscription"))
          trace.push(
            `  ${e.method} ${w.userId} v${w.version} by #${op?.id ?? "-"}: ${w.planId} ${w.status} ${w.currentPeriodStart.toISOString()}..${w.currentPeriodEnd.toISOString()} intent ${w.intent?.key ?? "none"} next ${w.nextRunAt?.toISOString() ?? "-"}`,
          );
        if (e.method === "insertPayment") {
          const inserted = e.args[0] as Payment;
          if ((inserted.metadata as { autoTopUp?: unknown } | null)?.autoTopUp === true) {
            if (op?.spec.kind !== "dispatch") return fail(`auto top-up ${inserted.id} recorded outside the worker`);
            payments.insertedTopUp(inserted);
            continue;
          }
          const spec = op?.spec;
          if (spec?.kind !== "pay") return fail(`payment inserted outside a payment request`);
          payments.inserted(e.args[0] as Payment, spec.user, spec.amount);
          continue;
        }
        if (e.method === "updatePayment") continue;
        if (e.method === "insertSubscription") subs.inserted(e.args[0] as Subscription, request, model.now);
        else if (e.method === "updateSubscription") subs.updated(e.args[0] as Subscription, request, model.now);
      } else if (e.kind === "load") {
        if (op !== undefined && ownLoad(op, e.userId, e.key)) {
          op.periodDue = subs.renewalDue(e.userId, model.now);
          op.accept = new Set([predict(op, e.userId)]);
        }
      } else if (e.kind === "commit") {
        onCommit(op, e);
      }
    }
  };

  // ---------------------------------------------------------------------------------------------
  // Requests.

  const execute = async (spec: Spec, manager: CreditManager, key: string | null): Promise<unknown> => {
    const c = manager.credits;
    const k = key === null ? {} : { idempotencyKey: key };
    switch (spec.kind) {
      case "add":
        return c.addCredits(spec.user, spec.amount, {
          ...k,
          expiresAt: spec.expiresAt === null ? null : new Date(spec.expiresAt),
          priority: spec.priority,
          ...(spec.scope === undefined ? {} : { scope: spec.scope }),
          ...(spec.effectiveAt === undefined ? {} : { effectiveAt: new Date(spec.effectiveAt) }),
          ...unitOption(spec),
        });
      case "deduct":
        return c.deductCredits(spec.user, spec.amount, { ...k, ...spendOptions(spec), ...unitOption(spec) });
      case "after":
        return c.deductCreditsAfterService(spec.user, spec.amount, {
          ...k,
          ...spendOptions(spec),
          ...unitOption(spec),
        });
      case "late":
        return c.deductCreditsAfterService(spec.user, spec.amount, {
          ...k,
          ...spendOptions(spec),
          ...unitOption(spec),
          occurredAt: new Date(spec.occurredAt),
        });
      case "reserve":
        return c.reserveCredits(spec.user, spec.amount, {
          ...k,
          ...spendOptions(spec),
          ...unitOption(spec),
          ttlSeconds: spec.ttlSec,
        });
      case "commit":
        return c.commitReservedCredits(spec.hold, spec.amount === null ? k : { ...k, amount: spec.amount });
      case "release":
        return c.releaseReservedCredits(spec.hold, k);
      case "void":
        return c.voidGrant(spec.grant, k);
      case "expire":
        return c.expireCredits(spec.user);
      case "read":
        return c.getUserCreditsInfo(spec.user);
      case "reverse":
        return c.reverseCharge(spec.user, spec.charge, {
          ...k,
          reason: "a correction (sim)",
          ...(spec.amount === null ? {} : { amount: spec.amount }),
        });
      case "expireJob":
        return manager.expiration.expireDueGrants();
      case "holdJob":
        return manager.expiration.releaseExpiredHolds();
      case "renewJob":
        return manager.expiration.renewDueSubscriptions();
      case "subscribe":
        return manager.subscriptions.subscribe(spec.user, spec.plan, k);
      case "cancelEnd":
        return manager.subscriptions.cancel(spec.user, { atPeriodEnd: true });
      case "cancelNow":
        return manager.subscriptions.cancel(spec.user, { atPeriodEnd: false, credits: spec.credits });
      case "resume":
        return manager.subscriptions.resume(spec.user);
      case "changeEnd":
        return manager.subscriptions.changePlan(spec.user, spec.plan, { when: "period_end", credits: "keep" });
      case "changeNow":
        return manager.subscriptions.changePlan(spec.user, spec.plan, { when: "now", credits: spec.credits });
      case "claim":
        return manager.promos.claimPromo(spec.user, spec.code, k);
      case "pay":
        return manager.payments.createPaymentLink(spec.user, {
          ...k,
          amount: spec.amount,
          currency: "USD",
          provider: "sim",
        });
      case "paid":
        // An auto top-up's webhook comes from its own provider (the card network).
        if (payments.topUps.has(spec.payment)) {
          const charge = bank.succeeded(spec.payment)[0];
          const p = payments.payments.get(spec.payment);
          const event = {
            ...(JSON.parse(webhook("paid", spec.payment, null)) as Record<string, unknown>),
            providerIds: charge === undefined ? [] : [charge.id],
            providerPaymentId: charge?.id ?? null,
            userId: p?.userId ?? null,
            amount: p?.amount ?? null,
            currency: "USD",
          };
          return manager.payments.handleWebhook("card", JSON.stringify(event), {});
        }
        return manager.payments.handleWebhook("sim", webhook("paid", spec.payment, null), {});
      case "refund":
        return manager.payments.handleWebhook("sim", webhook("refund", spec.payment, spec.total), {});
      case "dispatch":
        return manager.notifications.dispatchPending({ limit: 20 });
      case "alerts":
        if (spec.round === "expiring") return manager.notifications.evaluateExpiringAlerts({ pageSize: 20 });
        if (spec.round === "ended") return manager.notifications.evaluateEndedSpendWindows({ pageSize: 2 });
        return manager.notifications.evaluateAlerts(spec.user);
    }
  };

  const generate = (): Spec => {
    const user = rng.pick(users);
    const kind = rng.weighted<Spec["kind"]>([
      [5, "add"],
      [4, "deduct"],
      [1, "after"],
      [4, "reserve"],
      [3, "commit"],
      [2, "release"],
      [1, "void"],
      [1, "expire"],
      [1, "read"],
      [1, "expireJob"],
      [1, "holdJob"],
      [1, "renewJob"],
      [3, "subscribe"],
      [1, "cancelEnd"],
      [1, "cancelNow"],
      [1, "resume"],
      [1, "changeEnd"],
      [1, "changeNow"],
      [2, "claim"],
      [2, "pay"],
      [2, "paid"],
      [2, "refund"],
      [2, "dispatch"],
    ]);
    const amount = rng.range(1, 60);
    switch (kind) {
      case "add": {
        const expiresAt = rng.chance(0.6) ? clock.now + rng.range(1, 3600) * 1000 : null;
        const plain = { kind, user, amount: rng.range(1, 120), expiresAt, priority: rng.range(0, 2) } as const;
        // A quarter of the additions start later (docs/units.md), some with an expiry not after
        // their start (refused); drawn from a stream of their own.
        const later = laterRng.chance(0.25)
          ? { ...plain, effectiveAt: clock.now + laterRng.range(1, 1800) * 1000 }
          : plain;
        // In any unit, a later grant too (on the seeds with units).
        const add = { ...later, ...drawUnit() };
        return scoped && scopeRng.chance(0.4) ? { ...add, scope: scopeRng.pick(SCOPES) } : add;
      }
      case "after": {
        // Half the after-service charges are usage recorded late, up to 20 days back (the window is
        // 35: still inside it when a retry comes later), drawn from a stream of their own: the
        // schedule is the seed's either way.
        const spend = { ...(scoped ? scopeRng.pick(SPENDS) : {}), ...drawUnit() };
        if (!lateRng.chance(0.5)) return { kind, user, amount, ...spend };
        return {
          kind: "late",
          user,
          amount,
          occurredAt: clock.now - lateRng.range(1, 20 * 24 * 60) * 60_000,
          ...spend,
        };
      }
      case "deduct":
        return scoped
          ? { kind, user, amount, ...scopeRng.pick(SPENDS), ...drawUnit() }
          : { kind, user, amount, ...drawUnit() };
      case "commit":
      case "release": {
        // Any unit's hold (a commit or release acts in its hold's unit).
        const holds = model.units(user).flatMap(([, mu]) => mu.holds);
        const active = holds.filter((h) => h.status === "active");
        const pool = active.length > 0 && rng.chance(0.8) ? active : holds;
        if (pool.length === 0) break;
        const picked = rng.pick(pool);
        const hold = picked.id;
        if (kind === "release") return { kind, user, hold };
        const full = heldAmount(picked);
        const amt = rng.weighted<number | null>([
          [3, null],
          [3, rng.range(0, Math.max(0, full))],
          [1, full + rng.range(1, 30)],
        ]);
        return { kind, user, hold, amount: amt };
      }
      case "void": {
        const grants = model.units(user).flatMap(([, mu]) => mu.grants);
        if (grants.length === 0) break;
        return { kind, user, grant: rng.pick(grants).id };
      }
      case "read": {
        // Half the reads give back one of the user's charges instead, in part or whole.
        const list = charges.get(user) ?? [];
        if (list.length === 0 || !reverseRng.chance(0.5)) return { kind, user };
        const c = reverseRng.pick(list);
        const left = c.amount - c.reversed;
        const amount = reverseRng.chance(0.4) ? null : reverseRng.range(1, Math.max(1, left));
        return { kind: "reverse", user, charge: c.id, amount };
      }
      case "expire":
        return { kind, user };
      case "expireJob":
      case "holdJob":
      case "renewJob":
        return { kind };
      case "subscribe":
      case "changeEnd":
        return { kind, user, plan: rng.pick(Object.keys(PLANS)) };
      case "changeNow":
        return {
          kind,
          user,
          plan: rng.pick(Object.keys(PLANS)),
          credits: rng.pick(["keep", "expire", "prorate"] as const),
        };
      case "cancelNow":
        return { kind, user, credits: rng.pick(["keep", "expire"] as const) };
      case "cancelEnd":
      case "resume":
        return { kind, user };
      case "claim":
        return { kind, user, code: rng.pick(Object.keys(PROMOS)) };
      case "pay":
        return { kind, user, amount: rng.range(4, 400) };
      case "dispatch":
        return { kind };
      case "paid":
      case "refund": {
        // An auto top-up's webhook comes only once it was charged (payment_intent.succeeded); refunds: checkouts only.
        const mine = payments
          .of(user)
          .filter((p) => !payments.topUps.has(p.id) || (kind === "paid" && bank.succeeded(p.id).length > 0));
        if (mine.length === 0) return { kind: "pay", user, amount: rng.range(4, 400) };
        const p = rng.pick(mine);
        if (kind === "paid") return { kind, user, payment: p.id };
        const total = rng.weighted<number>([
          [2, p.amount],
          [2, rng.range(1, p.amount)],
          [1, p.refunded],
        ]);
        return { kind, user, payment: p.id, total: Math.max(1, total) };
      }
      default:
        break;
    }
    const reserve = { kind: "reserve", user, amount, ttlSec: rng.range(1, 3600), ...drawUnit() } as const;
    return scoped ? { ...reserve, ...scopeRng.pick(SPENDS) } : reserve;
  };

  const KEYED = new Set<Spec["kind"]>([
    "add",
    "deduct",
    "after",
    "late",
    "reverse",
    "reserve",
    "commit",
    "release",
    "void",
    "subscribe",
    "claim",
    "pay",
    "paid",
    "refund",
  ]);

  const isDefinite = (error: unknown): boolean => {
    if (error instanceof StorageError || error instanceof OutcomeUnknownError) return false;
    // A conflict that outlived the store's retries is "try again"; a rule's conflict carries details.
    if (error instanceof ConflictError) return error.details !== undefined;
    return true;
  };

  // ---------------------------------------------------------------------------------------------
  // The steps.

  const runBatch = async (batch: Op[], faults: boolean) => {
    const attempts: Attempt[] = batch.map((op) => {
      op.attempts++;
      const ctx: OpContext = {
        id: op.id,
        key: op.key,
        label: op.spec.kind,
        // A request retried several times gets through: the run must end with every outcome known.
        faults: faults && op.attempts <= 3,
        dropped: false,
        faulted: false,
      };
      const a: Attempt = {
        op,
        ctx,
        slot: rng.int(managers.length),
        settled: false,
        ok: false,
        value: undefined,
        error: undefined,
      };
      const manager = managers[a.slot] as CreditManager;
      void inOp(ctx, () => execute(op.spec, manager, op.key)).then(
        (value) => {
          a.settled = true;
          a.ok = true;
          a.value = value;
          sim.events.push({ kind: "end", op: ctx });
        },
        (error: unknown) => {
          a.settled = true;
          a.error = error;
          sim.events.push({ kind: "end", op: ctx });
        },
      );
      return a;
    });
    try {
      await scheduler.run(() => attempts.every((a) => a.settled || a.ctx.dropped));
    } catch (error) {
      const waiting = attempts.filter((a) => !a.settled && !a.ctx.dropped).map((a) => describe(a.op));
      fail(`${(error as Error).message}: ${waiting.join(", ")} (a real timer, or a promise never settled)`);
    }
    processEvents();
    await checkJobs(attempts);
    for (const a of attempts) {
      const op = a.op;
      let outcome: string;
      if (a.ctx.dropped) {
        // The process died mid-request: it is replaced, and the client retries elsewhere.
        managers[a.slot] = await newManager();
        outcome = "dropped";
      } else if (a.ok) outcome = "ok";
      else if (!isDefinite(a.error) || (op.spec.kind === "pay" && a.error instanceof ConflictError)) {
        // (A checkout another call of the same key is opening is a ConflictError to retry.)
        outcome = `in doubt: ${(a.error as Error).message}`;
      } else outcome = (a.error as Error).name;
      trace.push(`step ${step} ${describe(op)} attempt ${op.attempts}: ${outcome}`);
      const variant = "credits" in op.spec ? `/${op.spec.credits}` : "";
      const tally = `${op.spec.kind}${variant} ${outcome.startsWith("in doubt") ? "in doubt" : outcome}`;
      outcomes[tally] = (outcomes[tally] ?? 0) + 1;
      digest.update(`${op.id}:${outcome};`);
      if (a.error !== undefined && isDefinite(a.error) && !(a.error instanceof CreditError)) {
        fail(`${describe(op)} threw ${String((a.error as Error).stack ?? a.error)}`);
      }
      if (op.key === null && (!UNKEYED.has(op.spec.kind) || outcome === "dropped" || outcome.startsWith("in doubt"))) {
        op.state = "done";
        continue;
      }
      if (outcome === "dropped" || outcome.startsWith("in doubt")) {
        if (op.state === "new") inDoubt++;
        op.state = "in-doubt";
        continue;
      }
      op.state = "done";
      if (SUB_KINDS.has(op.spec.kind)) {
        // Checked write by write (SubscriptionsModel); here only what no request may answer.
        if (outcome !== "ok" && outcome !== "ConflictError" && outcome !== "NotFoundError")
          fail(`${describe(op)} answered ${outcome}`);
        continue;
      }
      if (PAYMENT_KINDS.has(op.spec.kind)) {
        // Checked commit by commit (PaymentsModel); a webhook is answered 2xx or redelivered.
        if (outcome !== "ok") fail(`${describe(op)} answered ${outcome}`);
        continue;
      }
      // (A storage error while bringing the period leaves the operation to run without it: documented.)
      if (outcome === "InsufficientCreditsError" && op.periodDue && !a.ctx.faulted) {
        fail(
          `${describe(op)} was refused for lack of credits after its subscription's period ended, without the next period brought first (docs/subscriptions.md, "Periods start on time")`,
        );
      }
      if (outcome === "ok") {
        if (op.commits !== 1) fail(`${describe(op)} succeeded, and the store has ${op.commits} commits of it`);
      } else {
        if (op.commits > 0)
          fail(`${describe(op)} answered ${outcome} although an earlier attempt committed (it must replay)`);
        // A limited user's spend may be refused by a limit (the invariant above checks the counts);
        // never a spend in another unit than the default one: limits count the default unit (docs/units.md).
        const byLimit =
          outcome === "SpendLimitError" &&
          (op.spec.kind === "deduct" || op.spec.kind === "reserve") &&
          op.spec.unit === undefined &&
          limited.has(op.spec.user);
        // An addition whose expiry is not after its start is refused before any load (docs/units.md).
        const badStart =
          outcome === "ValidationError" &&
          op.spec.kind === "add" &&
          op.spec.effectiveAt !== undefined &&
          op.spec.expiresAt !== null &&
          op.spec.expiresAt <= op.spec.effectiveAt;
        if (!op.accept.has(outcome) && !byLimit && !badStart) {
          fail(
            `${describe(op)} answered ${outcome}; the model, at its last load, answers ${[...op.accept].join(" or ") || "nothing (no load)"}`,
          );
        }
      }
    }
  };

  /**
   * A job that ran without a fault and without a failed account left nothing it was due to do: no
   * hold active past its TTL, no grant open past its expiry (nothing makes one due during a step:
   * the clock stands still, and a hold or grant is never made due already).
   */
  const checkJobs = async (attempts: readonly Attempt[]) => {
    const clean = (kind: Spec["kind"]) =>
      attempts.some(
        (a) => a.op.spec.kind === kind && a.ok && !a.ctx.faulted && (a.value as { errors: number }).errors === 0,
      );
    for (const user of users) {
      if (clean("holdJob")) {
        const late = (await inner.listReservations(user, { status: "active" })).filter(
          (r) => r.expiresAt.getTime() <= clock.now,
        );
        if (late.length > 0)
          fail(`after releaseExpiredHolds: ${user}'s holds ${late.map((r) => r.id).join(", ")} active past their TTL`);
      }
      if (clean("expireJob")) {
        const due = (await inner.listGrants(user)).filter(
          (g) => g.remaining > 0 && g.expiresAt !== null && g.expiresAt.getTime() <= clock.now,
        );
        if (due.length > 0)
          fail(`after expireDueGrants: ${user}'s grants ${due.map((g) => g.id).join(", ")} open past their expiry`);
      }
    }
  };

  /** Per user, the journal's seq through which `dueProblems` has checked the entries. */
  const datedThrough = new Map<string, number>();
  let settledLate = 0;
  const check = async () => {
    // A read per user through a process (it settles, like any touch), then the store itself.
    const reads = users.map((user) => ({
      id: nextOp++,
      spec: { kind: "read", user } as Spec,
      key: null,
      attempts: 0,
      commits: 0,
      accept: new Set<string>(),
      periodDue: false,
      state: "new" as const,
    }));
    for (const op of reads) ops.set(op.id, op);
    await runBatch(reads, false);
    for (const user of users) {
      const m = model.of(user);
      const units = model.units(user);
      for (const [, mu] of units) mu.settle();
      const where = `check of ${user}`;
      // The units the account holds: those with an entry (docs/units.md), each unit's figures apart.
      const held = units.filter(([unit]) => unit !== null && entered.has(`${user}/${unit}`)) as Array<
        [string, CreditModel]
      >;
      const figures = (mu: CreditModel) => ({
        balance: mu.balance,
        reserved: mu.reserved,
        available: mu.available,
        debt: mu.debt,
      });
      const info = await checker.getUserCreditsInfo(user);
      const want = {
        userId: user,
        balance: m.balance,
        reserved: m.reserved,
        available: m.available,
        debt: m.debt,
        ...(held.length === 0
          ? {}
          : { units: sortedUnits(Object.fromEntries(held.map(([u, mu]) => [u, figures(mu)]))) }),
        ...scopedTotals(
          m,
          units.some(([, mu]) => mu.grants.some(isScopedGrant)),
        ),
      };
      const got = info.units === undefined ? info : { ...info, units: sortedUnits(info.units) };
      if (JSON.stringify(got) !== JSON.stringify(want))
        fail(`${where}: the service says ${JSON.stringify(got)}, the model ${JSON.stringify(want)}`);
      // Now and then, one unit asked by name, and check() in it, on the edge of what it has available.
      if (multiUnit && unitRng.chance(0.3)) {
        const unit = unitRng.pick(UNITS);
        const mu = model.unit(user, unit);
        const one = await checker.getUserCreditsInfo(user, { unit });
        const flat = (o: object) => JSON.stringify(o, Object.keys(o).sort());
        if (flat(one) !== flat({ userId: user, unit, ...figures(mu) }))
          fail(
            `${where}: the service says ${JSON.stringify(one)} in ${unit}, the model ${JSON.stringify(figures(mu))}`,
          );
        if (mu.available >= 1) {
          const allowed = await checker.check(user, { unit, amount: mu.available });
          const refused = await checker.check(user, { unit, amount: mu.available + 1 });
          if (!allowed.allowed || refused.allowed)
            fail(
              `${where}: check() in ${unit} with ${mu.available} available answers ${String(allowed.allowed)} for ${mu.available}, ${String(refused.allowed)} for one more`,
            );
        }
      }
      // The store counts each limit as the committed entries do.
      const counts = counted.get(user);
      if (counts !== undefined) {
        const used = (await checker.getLimits(user)).map((l) => l.used);
        if (JSON.stringify(used) !== JSON.stringify(counts.map((c) => c.used)))
          fail(
            `${where}: the store's limits counted ${JSON.stringify(used)}, the entries ${JSON.stringify(counts.map((c) => c.used))}`,
          );
      }
      const report = await checker.audit(user);
      if (!report.ok) fail(`${where}: audit found ${report.problems.join("; ")}`);
      const genesis = await checker.audit(user, { from: "genesis" });
      if (!genesis.ok) fail(`${where}: audit from the first entry found ${genesis.problems.join("; ")}`);
      // The same state, but for grants spent before the checkpoint (which only the first entries mention).
      const comparable = (r: typeof report) =>
        JSON.stringify({
          ...r,
          entries: 0,
          from: "",
          fromSeq: 0,
          grants: sorted(Object.fromEntries(Object.entries(r.grants).filter(([, v]) => v !== 0))),
          units: sortedUnits(r.units ?? {}),
        });
      if (comparable(report) !== comparable(genesis))
        fail(
          `${where}: the audits from the checkpoint and from the first entry disagree: ${comparable(report)} ${comparable(genesis)}`,
        );
      if (report.balance !== m.balance || report.reserved !== m.reserved || report.debt !== m.debt) {
        fail(
          `${where}: audit replays ${report.balance}/${report.reserved}/${report.debt}, the model has ${m.balance}/${m.reserved}/${m.debt}`,
        );
      }
      // The audit replays each unit on its own (docs/units.md).
      const replayed = JSON.stringify(sortedUnits(report.units ?? {}));
      const modelledUnits = JSON.stringify(
        sortedUnits(
          Object.fromEntries(
            held.map(([u, mu]) => [
              u,
              { balance: mu.balance, reserved: mu.reserved, debt: mu.debt, available: mu.balance - mu.reserved },
            ]),
          ),
        ),
      );
      if (replayed !== modelledUnits) fail(`${where}: audit replays the units ${replayed}, the model ${modelledUnits}`);
      const open: Record<string, number> = {};
      for (const [, mu] of units) Object.assign(open, openGrants(mu));
      const grants = Object.fromEntries((await inner.listGrants(user)).map((g) => [g.id, g.remaining]));
      if (JSON.stringify(sorted(grants)) !== JSON.stringify(sorted(open))) {
        fail(`${where}: open grants ${JSON.stringify(sorted(grants))}, the model ${JSON.stringify(sorted(open))}`);
      }
      const holds = (await inner.listReservations(user, { status: "active" })).map((r) => r.id).sort();
      const modelHolds = units
        .flatMap(([, mu]) => mu.holds)
        .filter((h) => h.status === "active")
        .map((h) => h.id)
        .sort();
      if (JSON.stringify(holds) !== JSON.stringify(modelHolds))
        fail(`${where}: active holds ${holds.join(",")}, the model ${modelHolds.join(",")}`);
      for (const [unit, mu] of units) {
        const name = unit ?? "credits";
        if (!mu.overdrawn && mu.available < 0)
          fail(`${where}: ${name} available ${mu.available} below zero without an overdraft`);
        // A unit's limit bounds its debt (docs/units.md, "Debt per unit").
        if (mu.overdraftLimit !== null && mu.available < -mu.overdraftLimit)
          fail(`${where}: ${name} available ${mu.available} past its overdraft limit of ${mu.overdraftLimit}`);
        // The balance is its grants' credits and holds, less the debt: per unit.
        const left = mu.grants
          .filter((g) => g.closed === null && g.upcoming !== true)
          .reduce((t, g) => t + g.remaining, 0);
        const holding = mu.holds.filter((h) => h.status === "active").reduce((t, h) => t + heldAmount(h), 0);
        if (mu.balance !== left + holding - mu.debt)
          fail(`${where}: ${name} balance ${mu.balance}, its grants ${left} + holds ${holding} − debt ${mu.debt}`);
        // (Scoped grants pay no debt: docs/teams-and-limits.md, "Scoped credits".)
        const unscoped = mu.grants.filter((g) => !isScopedGrant(g));
        // (Nor do grants that have not started: docs/units.md.)
        if (mu.debt > 0 && unscoped.some((g) => g.closed === null && g.upcoming !== true && g.remaining > 0))
          fail(`${where}: ${name} in debt while a grant of it has credits`);
        if (unit !== null) digest.update(`${user}/${unit}:${mu.balance}:${mu.reserved}:${mu.debt};`);
      }
      const stored = await inner.getActiveSubscription(user);
      const modelled = subs.activeOf(user);
      if ((stored?.id ?? null) !== (modelled?.id ?? null))
        fail(`${where}: active subscription ${String(stored?.id)}, the model ${String(modelled?.id)}`);
      digest.update(`${user}:${m.balance}:${m.reserved}:${m.debt}:${String(stored?.planId)};`);
      // Usage and revenue as the journal has them, late entries and reversals included.
      const journal = await inner.listJournal(user, { order: "asc", limit: 100_000 });
      for (const problem of await derivedProblems(checker, user, journal, T0 - 40 * DAY, clock.now + 60_000))
        fail(`${where}: ${problem}`);
      // What time did is dated when it was due, however late it was settled.
      const due = dueProblems(
        journal,
        datedThrough.get(user) ?? 0,
        units.map(([, mu]) => mu),
      );
      for (const problem of due.problems) fail(`${where}: ${problem}`);
      settledLate += due.late;
      if (journal.length > 0) datedThrough.set(user, journal[journal.length - 1]!.seq);
      // The alert events the store's outbox committed are the model's, one by one.
      for (const problem of await alertProblems(inner, user, alerts)) fail(`${where}: ${problem}`);
      digest.update(`a${alerts.events(user).length};`);
    }
  };

  for (step = 1; step <= steps; step++) {
    model.now = clock.now;
    const batch: Op[] = [...ops.values()].filter((op) => op.state === "in-doubt");
    const fresh = rng.range(1, concurrency);
    for (let i = 0; i < fresh; i++) {
      const spec = generate();
      const id = nextOp++;
      const op: Op = {
        id,
        spec,
        // Some clients send no key (then a request in doubt is not retried: the commits tell).
        key: KEYED.has(spec.kind) && !(UNKEYED.has(spec.kind) && rng.chance(0.25)) ? `sim-${id}` : null,
        attempts: 0,
        commits: 0,
        accept: new Set<string>(),
        periodDue: false,
        state: "new",
      };
      ops.set(id, op);
      batch.push(op);
    }
    if (alerting && alertRng.chance(0.15)) {
      const spec: Spec = {
        kind: "alerts",
        user: alertRng.pick(users),
        round: alertRng.pick(["expiring", "ended", "account"] as const),
      };
      const op: Op = {
        id: nextOp++,
        spec,
        key: null,
        attempts: 0,
        commits: 0,
        accept: new Set<string>(),
        periodDue: false,
        state: "new",
      };
      ops.set(op.id, op);
      batch.push(op);
    }
    await runBatch(batch, true);
    await check();
    checkCharges(false);
    const tick = rng.weighted<number>([
      [4, 0],
      [3, rng.range(1, 120)],
      [2, rng.range(120, 900)],
      [1, rng.range(900, 4 * 3600)],
      [1, rng.range(20 * 3600, 50 * 3600)],
    ]);
    clock.now += tick * 1000;
    model.now = clock.now;
    if (tick > 0) trace.push(`tick ${tick} s → ${new Date(clock.now).toISOString()}`);
    digest.update(`t${tick};`);
  }
  // Every request in doubt is retried until its outcome is known, then the last check.
  for (let round = 0; [...ops.values()].some((op) => op.state === "in-doubt"); round++) {
    if (round > 20) fail("requests still in doubt after 20 rounds of retries");
    model.now = clock.now;
    await runBatch(
      [...ops.values()].filter((op) => op.state === "in-doubt"),
      false,
    );
  }
  // The renewal job, once nothing else runs: every period's work owed must then be done, once.
  const job: Op = {
    id: nextOp++,
    spec: { kind: "renewJob" },
    key: null,
    attempts: 0,
    commits: 0,
    accept: new Set<string>(),
    periodDue: false,
    state: "new",
  };
  ops.set(job.id, job);
  await runBatch([job], false);
  // The worker, without faults, until no auto top-up is in flight (past each retry's backoff).
  for (let round = 0; ; round++) {
    const flying = [];
    for (const user of users) if ((await admin.payments.getAutoTopUp(user))?.pending) flying.push(user);
    if (flying.length === 0) break;
    if (round > 30) fail(`auto top-ups of ${flying.join(", ")} still in flight after 30 rounds of the worker`);
    clock.now += 120_000;
    model.now = clock.now;
    const op: Op = {
      id: nextOp++,
      spec: { kind: "dispatch" },
      key: null,
      attempts: 0,
      commits: 0,
      accept: new Set<string>(),
      periodDue: false,
      state: "new",
    };
    ops.set(op.id, op);
    await runBatch([op], false);
  }
  // The provider's payment_intent.succeeded webhook of every successful charge not credited yet
  // (a stuck attempt replaced after 24 hours whose charge went through): the webhook credits it.
  const uncredited = bank.charges.filter((c) => c.succeeded && payments.payments.get(c.paymentId)?.credited !== true);
  if (uncredited.length > 0) {
    const hooks: Op[] = uncredited.map((c) => ({
      id: nextOp++,
      spec: { kind: "paid", user: payments.payments.get(c.paymentId)?.userId ?? "", payment: c.paymentId },
      key: `sim-hook-${c.id}`,
      attempts: 0,
      commits: 0,
      accept: new Set<string>(),
      periodDue: false,
      state: "new",
    }));
    for (const op of hooks) ops.set(op.id, op);
    await runBatch(hooks, false);
  }
  await check();
  checkCharges(true);
  for (const [key, w] of subs.owed)
    if (!w.done) fail(`the account work of subscription ${w.subscriptionId} under ${key} was never carried out`);
  for (const m of managers) await m.close();
  await admin.close();
  return {
    seed,
    steps,
    requests: nextOp - 1,
    commits,
    storeCalls: scheduler.answered,
    inDoubt,
    outcomes,
    topUps: {
      charged: bank.charges.filter((c) => c.succeeded).length,
      credited: [...payments.topUps].filter((id) => payments.payments.get(id)?.credited === true).length,
    },
    alerts: {
      triggered: alerts.triggered,
      resolved: alerts.resolved,
      onLine: alerts.onLine,
      triggeredOnLine: alerts.triggeredOnLine,
      timeMoves: alerts.timeMoves,
    },
    settledLate,
    rollovers: subs.rollovers,
    digest: digest.digest("hex"),
  };
}

/**
 * The entries the library wrote for time, against the model's grants and holds (docs/concepts.md,
 * "Two times on every entry"): a `start` is dated at its grant's start; a hold's release at its
 * `expiresAt` when the hold lapsed (and an explicit release carries no `occurredAt`); an `expire`
 * at its grant's `expiresAt`, or — for credits a hold returned to a grant closed meanwhile — when
 * the hold returned them (a lapse at the hold's `expiresAt`, an explicit release or a commit when
 * recorded), or when recorded (a plan change that expires the period's credits now), or — credits a
 * reversal gave back to a grant closed since — when the grant closed (its first expiry's date, or
 * when a plan change closed it with nothing left, which no entry says). Checks the entries after
 * seq `after` of `journal` (the account's, from its first); answers the problems and how many of
 * them were settled after their due instant.
 */
function dueProblems(
  journal: readonly JournalEntry[],
  after: number,
  models: readonly CreditModel[],
): { problems: string[]; late: number } {
  const grants = new Map(models.flatMap((m) => m.grants.map((g) => [g.id, g] as const)));
  const holds = new Map(models.flatMap((m) => m.holds.map((h) => [h.id, h] as const)));
  const problems: string[] = [];
  let late = 0;
  /** When each grant's first expiry was dated (the instant it closed). */
  const closed = new Map<string, number>();
  /** When each hold last gave credits back (its release or commit entry's instant). */
  const returned = new Map<string, number>();
  for (const e of journal) {
    const at = (e.occurredAt ?? e.createdAt).getTime();
    // (An earlier entry's: this one is recorded after it is checked.)
    const firstClose = (grantId: string) => closed.get(grantId);
    const record = () => {
      if (e.type === "expire") for (const p of e.grants) if (!closed.has(p.grantId)) closed.set(p.grantId, at);
    };
    if ((e.type === "release_reserved" || e.type === "commit_reserved") && e.reservationId != null)
      returned.set(e.reservationId, at);
    if (e.seq <= after) {
      record();
      continue;
    }
    const recorded = e.createdAt.getTime();
    const say = (what: string) =>
      problems.push(`entry ${e.seq} (${e.type}) is dated ${new Date(at).toISOString()}, ${what}`);
    if (at > recorded) say(`after it was recorded (${e.createdAt.toISOString()})`);
    if (e.type === "start") {
      for (const p of e.grants) {
        const g = grants.get(p.grantId);
        if (g?.startsAt !== undefined && g.startsAt !== at)
          say(`its grant ${p.grantId} started at ${new Date(g.startsAt).toISOString()}`);
      }
    } else if (e.type === "release_reserved") {
      const h = holds.get(e.reservationId ?? "");
      if (h?.status === "expired" && h.expiresAt !== at)
        say(`its hold lapsed at ${new Date(h.expiresAt).toISOString()}`);
      if (h?.status === "released" && e.occurredAt != null) say("an explicit release carries no second time");
    } else if (e.type === "expire" && e.reservationId != null) {
      // Credits a hold gave back to a grant closed meanwhile expire when the hold gave them back.
      const back = returned.get(e.reservationId);
      if (back !== at)
        say(
          `its hold ${e.reservationId} gave them back ${back === undefined ? "never" : `at ${new Date(back).toISOString()}`}`,
        );
    } else if (e.type === "expire") {
      for (const p of e.grants) {
        const g = grants.get(p.grantId);
        if (
          g === undefined ||
          g.expiresAt === at ||
          (e.occurredAt != null && (firstClose(p.grantId) === at || (g as ClosedGrant).closedAt === at)) ||
          (e.occurredAt == null && g.expiresAt !== null && g.expiresAt > at)
        )
          continue;
        say(
          `its grant ${p.grantId} expires at ${g.expiresAt === null ? "never" : new Date(g.expiresAt).toISOString()}`,
        );
      }
    } else continue;
    record();
    if (recorded > at) late++;
  }
  return { problems, late };
}

/** Payments and their webhooks (redelivered, like a provider does, while in doubt). */
const PAYMENT_KINDS = new Set<Spec["kind"]>(["pay", "paid", "refund"]);

const SUB_KINDS = new Set<Spec["kind"]>(["subscribe", "cancelEnd", "cancelNow", "resume", "changeEnd", "changeNow"]);

function sorted(o: Record<string, number>): Array<[string, number]> {
  return Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Requests a client may send without an idempotency key (then it does not retry one in doubt). */
const UNKEYED = new Set<Spec["kind"]>(["deduct", "reserve"]);

/** The load (or live read) of `op`'s own unit of work on `userId`. */
function ownLoad(op: Op, userId: string, key: string | undefined): boolean {
  if (op.key !== null) return key === op.key;
  return UNKEYED.has(op.spec.kind) && key === undefined && "user" in op.spec && op.spec.user === userId;
}

/** A commit of a request sent without a key that carries its work (not only a settle before a refusal). */
function unkeyedWork(op: Op, userId: string, changes: Changes): boolean {
  return ownLoad(op, userId, undefined) && changes.entries.some((x) => x.type === op.spec.kind);
}

/** A save of the account row alone: no entries, no grant, hold, promo or payment written. */
function accountOnly(c: Changes): boolean {
  return (
    c.entries.length === 0 &&
    c.insertGrants.length === 0 &&
    c.updateGrants.length === 0 &&
    c.insertReservations.length === 0 &&
    c.updateReservations.length === 0 &&
    (billingRows(c)?.promoClaims?.length ?? 0) === 0 &&
    (billingRows(c)?.paymentUpdates?.length ?? 0) === 0
  );
}

/** A request's unit as the service's option (none when not named: the default unit). */
function unitOption(s: InUnit): InUnit {
  return s.unit === undefined ? {} : { unit: s.unit };
}

/** A request's spender and feature as the service's options (none when not named). */
function spendOptions(s: SimSpend): SimSpend {
  return {
    ...(s.spender === undefined ? {} : { spender: s.spender }),
    ...(s.feature === undefined ? {} : { feature: s.feature }),
  };
}

/** True for a grant with a scope (docs/teams-and-limits.md, "Scoped credits"). */
function isScopedGrant(g: ModelGrant): boolean {
  return (g.features ?? null) !== null || (g.spenders ?? null) !== null;
}

/**
 * What `getUserCreditsInfo` adds for an account given scoped grants (`scopedAccount`, in any unit):
 * the usable credits of the default unit's (`m`) scoped grants, one total per scope (lists
 * sorted), sorted by scope (docs/teams-and-limits.md; docs/units.md).
 */
function scopedTotals(
  m: CreditModel,
  scopedAccount: boolean,
): {
  scoped?: { features: string[] | null; spenders: string[] | null; remaining: number }[];
} {
  if (!scopedAccount) return {};
  const totals = new Map<string, { features: string[] | null; spenders: string[] | null; remaining: number }>();
  for (const g of m.grants) {
    const features = g.features ?? null;
    const spenders = g.spenders ?? null;
    if (features === null && spenders === null) continue;
    if (g.closed !== null || g.upcoming === true || g.remaining === 0 || (g.expiresAt !== null && g.expiresAt <= m.now))
      continue;
    const f = features === null ? null : [...features].sort();
    const sp = spenders === null ? null : [...spenders].sort();
    const key = JSON.stringify([f, sp]);
    const t = totals.get(key);
    if (t === undefined) totals.set(key, { features: f, spenders: sp, remaining: g.remaining });
    else t.remaining += g.remaining;
  }
  return { scoped: [...totals.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, t]) => t) };
}

/** A units map with its units in name order (an account row keeps them in the order first used). */
function sortedUnits<T>(units: Readonly<Record<string, T>>): Array<[string, T]> {
  return Object.entries(units).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}
