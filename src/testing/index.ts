/**
 * `credit-management/testing`: the `DbManager` contract suite. An adapter's test file is a few
 * lines:
 *
 * ```ts
 * import { afterAll, beforeAll, describe, expect, it } from "vitest";
 * import { runDbManagerContract } from "credit-management/testing";
 * runDbManagerContract({
 *   name: "my-store",
 *   create: async () => new MyDbManager(...),
 *   test: { describe, it, expect, beforeAll, afterAll },
 * });
 * ```
 *
 * It runs on the test functions it is given (vitest's, jest's; without `test`, the runner's
 * globals), so this entry point loads with `import` and `require` under any runner; fast-check (a
 * peer dependency of this entry point) drives its property test. It checks the store
 * directly and through `CreditService`: burn-down, expiry, holds, debt, idempotency, concurrency,
 * a property test of random operation sequences against an independent model, and usage reports
 * against a naive sum over the journal.
 */
import { afterAll, beforeAll, describe, expect, it, useTestApi, type TestApi } from "../core/testing/runner.js";
import type { DbManager, OptionalPart } from "../core/db/types.js";
import { ConfigurationError } from "../core/errors.js";
import { runSubscriptionContract } from "../core/testing/subscriptions.js";
import {
  runPromoManagersContract,
  runPromoPaymentContract as promoPaymentContract,
} from "../modules/billing/contract.js";
import { billingStore } from "../modules/billing/store.js";
import { billingStorePart } from "../modules/billing/store-part.js";
import { runArchiveContract } from "../modules/archive/contract.js";
import { runPlanRevenueContract } from "../modules/revenue/contract.js";
import { runNotificationContract } from "../core/testing/notifications.js";
import { runAlertsContract } from "../core/testing/alerts.js";
import { runTrialContract } from "../core/testing/trial.js";
import { runManagersContract as runCoreManagersContract } from "../core/testing/managers.js";
import { autoTopUpContract } from "../modules/billing/contract-auto-top-up.js";
import { mulberry32, runLeasesContract } from "../modules/leases/contract.js";
import type { PartOptions } from "../core/testing/support.js";
import { runAccountsContract } from "../core/testing/accounts.js";
import { runConcurrencyContract } from "../core/testing/concurrency.js";
import { runPropertyContract } from "../core/testing/properties.js";
import { runUsageContract } from "./usage.js";
import { runReversalsContract } from "./reversals.js";
import { runLateUsageContract } from "./late-usage.js";
import { runCappedHoldContract } from "../core/testing/capped-holds.js";
import { runUnitsContract } from "../core/testing/units.js";
import { runCustomerStateContract } from "./customer-state.js";
import { runLaterGrantsContract } from "../core/testing/later-grants.js";

export type { PartOptions } from "../core/testing/support.js";
export { createTestClock, type TestClock, type TestClockOptions, type TestClockStep } from "./test-clock.js";

/** The parts of the contract suite, in the order `runDbManagerContract` runs them. */
const CONTRACT_PARTS: readonly ContractPart[] = [
  "accounts",
  "subscriptions",
  "concurrency",
  "promos",
  "trial",
  "properties",
  "outbox",
  "alerts",
  "usage",
  "reversals",
  "lateUsage",
  "cappedHolds",
  "units",
  "customerState",
  "laterGrants",
  "managers",
  "leases",
];

/**
 * Runs one part of the contract suite against the initialised store `getDb` answers, e.g. inside a
 * `describe` of your own (docs/testing.md#the-contract-suite). `managers` needs `options.getPeer`.
 * An unknown part, or `managers` without a peer, throws ConfigurationError. @beta
 */
export function runContractPart(part: ContractPart, getDb: () => DbManager, options: PartOptions = {}): void {
  if (!CONTRACT_PARTS.includes(part)) {
    throw new ConfigurationError(
      `[credit-management] [testing] no contract part "${String(part)}": one of ${CONTRACT_PARTS.join(", ")}`,
    );
  }
  if (options.test !== undefined) useTestApi(options.test);
  const { getPeer, raceSize, runs, seed } = options;
  const peer = getPeer ?? getDb;
  switch (part) {
    case "accounts":
      runAccountsContract(getDb);
      runArchiveContract(getDb);
      return;
    case "subscriptions":
      runSubscriptionContract(getDb);
      runPlanRevenueContract(getDb);
      return;
    case "concurrency":
      return runConcurrencyContract(getDb, { raceSize });
    case "promos":
      promoPaymentContract(getDb);
      autoTopUpContract(getDb);
      return;
    case "trial":
      return runTrialContract(getDb);
    case "properties":
      return runPropertyContract(getDb, { runs });
    case "outbox":
      return runNotificationContract(getDb, { raceSize });
    case "alerts":
      return runAlertsContract(getDb, { raceSize, runs, seed });
    case "usage":
      return runUsageContract(getDb, { runs });
    case "reversals":
      return runReversalsContract(getDb, { getPeer: peer });
    case "lateUsage":
      return runLateUsageContract(getDb);
    case "cappedHolds":
      return runCappedHoldContract(getDb, { getPeer: peer });
    case "units":
      return runUnitsContract(getDb, { getPeer: peer, runs });
    case "customerState":
      return runCustomerStateContract(getDb, { getPeer: peer, outbox: options.outbox });
    case "laterGrants":
      return runLaterGrantsContract(getDb, { getPeer: peer });
    case "managers":
      if (getPeer === undefined) {
        throw new ConfigurationError(
          "[credit-management] [testing] the managers part needs `getPeer`: a second manager",
        );
      }
      runCoreManagersContract(getDb, getPeer);
      runPromoManagersContract(getDb, getPeer);
      return;
    case "leases":
      return runLeasesContract(getDb, peer, { seed });
  }
}

/** Whether `db` has the optional part `name` (a core part by its capabilities; `promos`: the billing module's part binds). */
function hasPart(db: DbManager, name: OptionalPart | "promos"): boolean {
  if (name === "promos") return db.usePart?.(billingStorePart) !== undefined;
  return db.capabilities.parts?.[name] !== false;
}

/** Every method of an absent part refuses with ConfigurationError (`promos`: the billing module's store part). */
async function expectPartMissing(db: DbManager, name: OptionalPart | "promos"): Promise<void> {
  const probe: Record<OptionalPart | "promos", () => Promise<unknown>> = {
    subscriptions: () => db.getPlan("p"),
    promos: () => billingStore(db).getPromo("P"),
    outbox: () => db.listNotifications("u", { limit: 1 }),
  };
  await expect(probe[name]()).rejects.toBeInstanceOf(ConfigurationError);
}

export type { Assertion, AsyncAssertion, Expect, TestApi } from "../core/testing/runner.js";
export {
  runPaymentProviderContract,
  type PaymentProviderContractOptions,
  type PaymentProviderVectors,
  type WebhookVector,
} from "../modules/billing/contract-providers.js";

/**
 * Options of `runDbManagerContract`: the store to test, a second one on the same data, the test functions and
 * the parts. @beta
 */
export interface ContractOptions {
  /** Shown in the describe block. */
  name: string;
  /** A fresh store; the suite calls `init()` (twice, to prove it idempotent) and `close()`. */
  create: () => Promise<DbManager>;
  /** Drops what `create` made (database, schema), after `close()`. */
  destroy?: (db: DbManager) => Promise<void>;
  /** fast-check runs of the property test. Default 60. */
  propertyRuns?: number;
  /** fast-check runs of the usage reports' property test (random journals against a naive sum). Default 12. */
  usageRuns?: number;
  /** Concurrent callers in the race tests (1,000 deductions of 1 on 500). Default 1,000. */
  raceSize?: number;
  /**
   * Your test runner's functions, e.g. vitest's `{ describe, it, expect, beforeAll, afterAll }`.
   * Default: the runner's globals (vitest with `globals: true`, jest); without them the suite
   * throws ConfigurationError.
   */
  test?: TestApi;
  /**
   * Parts of the contract not to run, each with the reason (shown as the skipped test's name): a
   * new backend goes green part by part. A store built by `defineStore` without a part has it
   * absent from `capabilities.parts`; the suite then checks that the part's methods refuse with
   * `ConfigurationError`, and needs no entry here.
   */
  skip?: Partial<Record<ContractPart, string>>;
  /**
   * A second manager over the same store as `db` (its own pool or client, its own caches), for a
   * store that more than one process may use: every case then runs through both managers, each
   * call to one of them chosen at random (seeded by `seed`, reproducible), and the `managers`
   * part checks decisions one manager takes after the other changed the account
   * (docs/testing.md#several-managers). The suite calls its `init()` and `close()`.
   */
  createPeer?: (db: DbManager) => Promise<DbManager>;
  /** Seed of the choice between the two managers (with `createPeer`). Default 39. */
  seed?: number;
}

/** The parts of the contract suite (`runContractPart` runs one). @beta */
export type ContractPart =
  | "accounts"
  | "subscriptions"
  | "concurrency"
  | "promos"
  | "trial"
  | "properties"
  | "outbox"
  | "alerts"
  | "managers"
  | "leases"
  | "usage"
  | "reversals"
  | "lateUsage"
  | "cappedHolds"
  | "customerState"
  | "laterGrants"
  | "units";

/** Runs the contract suite against a store: every part, as `options` selects (docs/testing.md). @beta */
export function runDbManagerContract(options: ContractOptions): void {
  useTestApi(options.test);
  const runs = options.propertyRuns ?? 60;
  const race = options.raceSize ?? 1000;
  const skip = { ...options.skip };
  for (const [part, reason] of Object.entries(skip)) {
    if (typeof reason !== "string" || reason.trim() === "") {
      throw new ConfigurationError(`[credit-management] [testing] skip.${part}: give the reason the part is skipped`);
    }
  }

  const createPeer = options.createPeer;
  const seed = options.seed ?? 39;
  const title = createPeer === undefined ? options.name : `${options.name}, two managers (seed ${seed})`;

  describe(`DbManager contract: ${title}`, () => {
    let db: DbManager;
    let peer: DbManager | undefined;
    let both: DbManager | undefined;
    const getDb = () => both ?? db;

    beforeAll(async () => {
      db = await options.create();
      await db.init();
      await db.init();
      if (createPeer !== undefined) {
        peer = await createPeer(db);
        await peer.init();
        both = eitherManager(db, peer, seed);
      }
    });
    afterAll(async () => {
      await peer?.close();
      await db.close();
      await db.close(); // idempotent
      await options.destroy?.(db);
    });

    /** Runs `part` unless skipped; an optional part must be in the store or skipped. */
    const part = (name: ContractPart, run: () => void) => {
      const optional = name === "subscriptions" || name === "promos" || name === "outbox";
      const reason = skip[name];
      if (reason !== undefined) {
        describe(`${name} (skipped: ${reason})`, () => {
          if (!optional) return;
          it(`a store that says it lacks the ${name} part refuses its methods with ConfigurationError`, async () => {
            if (!hasPart(db, name)) await expectPartMissing(db, name);
          });
        });
        return;
      }
      if (optional) {
        it(`has the ${name} part (else pass skip: { ${name}: "<reason>" })`, () => {
          expect(hasPart(db, name), `${options.name} has no ${name} part: skip it with a reason`).toBe(true);
        });
      }
      run();
    };

    part("accounts", () => runContractPart("accounts", getDb));
    // Before the races: their 500 lapsed holds on one account would be the jobs' to release.
    part("subscriptions", () => runContractPart("subscriptions", getDb));
    part("concurrency", () => runContractPart("concurrency", getDb, { raceSize: race }));
    part("promos", () => runContractPart("promos", getDb));
    part("trial", () => runContractPart("trial", getDb));
    part("properties", () => runContractPart("properties", getDb, { runs }));
    part("outbox", () => runContractPart("outbox", getDb, { raceSize: Math.min(race, 50) }));
    // Alert events are outbox rows: a store without the outbox goes without them too (the
    // outbox part's skip says why).
    if (skip.outbox === undefined)
      part("alerts", () =>
        runContractPart("alerts", getDb, { raceSize: Math.min(race, 50), runs: Math.max(10, Math.round(runs / 4)) }),
      );
    part("usage", () => runContractPart("usage", getDb, { runs: options.usageRuns }));
    // The parts below race or read through two managers (over `db` twice without a peer): giving
    // charges back, holds for what is there, spends in two units, the state in one read (a spend
    // through one manager, the read through the other), grants that start later, leases.
    const getPeer = () => peer ?? db;
    part("reversals", () => runContractPart("reversals", getDb, { getPeer }));
    part("lateUsage", () => runContractPart("lateUsage", getDb));
    part("cappedHolds", () => runContractPart("cappedHolds", getDb, { getPeer }));
    part("units", () => runContractPart("units", getDb, { getPeer }));
    part("customerState", () =>
      runContractPart("customerState", getDb, { getPeer, outbox: skip.outbox === undefined }),
    );
    part("laterGrants", () => runContractPart("laterGrants", getDb, { getPeer }));
    if (createPeer !== undefined)
      part("managers", () => runContractPart("managers", () => db, { getPeer: () => peer as DbManager }));
    part("leases", () => runContractPart("leases", () => db, { getPeer, seed }));
  });
}

/**
 * `db` and `peer` as one `DbManager`: each method call goes to one of them, chosen by a PRNG
 * seeded with `seed` (mulberry32), so a case runs its operations through both managers in an
 * order a failing run reproduces. Properties (`name`, `capabilities`, …) are `db`'s.
 * @beta
 */
export function eitherManager(db: DbManager, peer: DbManager, seed: number): DbManager {
  const next = mulberry32(seed);
  const own = new Set<PropertyKey>(["init", "close"]);
  return new Proxy(db, {
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== "function" || own.has(key)) return value;
      return (...args: unknown[]) => {
        const to = next() < 0.5 ? target : peer;
        const method = Reflect.get(to, key, to) as (...a: unknown[]) => unknown;
        return method.apply(to, args);
      };
    },
  });
}
