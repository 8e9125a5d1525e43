// What the parts of the contract suite share: the suite's clock, the part options, a lazy store.
import { notificationsPart } from "../parts.js";
import type { TestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import type { CreditModule } from "../module.js";
import { InMemoryCache } from "../cache/index.js";
import { LedgerLogger } from "../ledger/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { ExpirationService } from "../services/expiration-service.js";
import { SubscriptionService } from "../services/subscription-service.js";

/** What `runContractPart` takes besides the part and the store; a part reads the options it uses. @beta */
export interface PartOptions {
  /** Your test runner's functions (see `ContractOptions.test`). */
  test?: TestApi;
  /**
   * A second manager over the same store, for the parts that race or read through two managers
   * (`reversals`, `cappedHolds`, `units`, `customerState`, `laterGrants`, `leases`; `managers`
   * needs it). Default: the store itself.
   */
  getPeer?: () => DbManager;
  /** Concurrent callers in the race tests (`concurrency`; `outbox` and `alerts` default to 50). */
  raceSize?: number;
  /** fast-check runs of a random test (`properties`, `usage`, `alerts`, `units`). */
  runs?: number;
  /** Seed of a seeded random test (`alerts`, `leases`). */
  seed?: number;
  /** False for a store without the outbox part (`customerState` leaves out the cases that read its rows). */
  outbox?: boolean;
}

export const T0 = Date.parse("2030-01-01T00:00:00.000Z");
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;

/** A service over `db` whose clock the test moves. */
export function serviceWithClock(db: DbManager, start = T0, overdraftLimit: number | "unlimited" = 0) {
  const clock = { now: start };
  const credits = new CoreCreditService({ db, clock: () => new Date(clock.now), overdraftLimit });
  return { credits, clock };
}

/** A new account `u` (named by `user`) and `serviceWithClock(db, T0, overdraftLimit)`. */
export function accountWithClock(db: DbManager, user: () => string, overdraftLimit: number | "unlimited" = 0) {
  return { u: user(), ...serviceWithClock(db, T0, overdraftLimit) };
}

/**
 * One manager's services over `db`: credits with subscriptions, and the jobs, on a clock the test
 * moves — a start instant, or a clock shared with another manager. `ledgerFile`: the ledger writes
 * this file (none by default); `alerts`: the outbox's alert rows are written; `overdraftLimit` as
 * the option (default 0); `modules`: the credit service's modules.
 */
export function managerServices(
  db: DbManager,
  start: number | { now: number } = T0,
  options: {
    ledgerFile?: string;
    alerts?: boolean;
    overdraftLimit?: number | "unlimited";
    modules?: readonly CreditModule[];
  } = {},
) {
  const clock = typeof start === "number" ? { now: start } : start;
  const now = () => new Date(clock.now);
  const ledger = new LedgerLogger({ db, clock: now, filePath: options.ledgerFile ?? false });
  const overdraftLimit = options.overdraftLimit;
  const modules = options.modules;
  const credits = new CoreCreditService({
    db,
    clock: now,
    ledger,
    notifications: options.alerts === true ? notificationsPart() : undefined,
    subscriptions: true,
    overdraftLimit,
    modules,
  });
  const subscriptions = new SubscriptionService({ db, credits, clock: now, cache: new InMemoryCache(), ledger });
  const expiration = new ExpirationService({ db, credits, subscriptions, clock: now, ledger });
  return { credits, subscriptions, expiration, ledger, clock };
}

/**
 * The store `getDb` answers when a test runs (the suite's store is made in `beforeAll`, after the
 * tests are registered), with its methods bound to it.
 */
export function lazy(getDb: () => DbManager): DbManager {
  return new Proxy({} as DbManager, {
    get(_target, key) {
      const db = getDb();
      const value = Reflect.get(db, key, db) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(db) : value;
    },
    has: (_target, key) => key in getDb(),
  });
}
