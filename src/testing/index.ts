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
 * and a property test of random operation sequences against an independent model.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it, useTestApi, type TestApi } from "./runner.js";
import type { DbManager, OptionalPart } from "../db/types.js";
import { AccountWork } from "../domain/account-work.js";
import {
  ConfigurationError,
  ConflictError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  NotFoundError,
  ReservationExpiredError,
  ReservationNotActiveError,
  StorageError,
} from "../errors.js";
import type { JournalEntry, LedgerEntry, Reservation } from "../models/index.js";
import { CreditService } from "../services/credit-service.js";
import { ExpirationService } from "../services/expiration-service.js";
import { SubscriptionService } from "../services/subscription-service.js";
import { verifyArchive } from "../services/archive.js";
import { CreditModel, type ModelHold } from "./model.js";
import { scribble } from "./scribble.js";
import { subscriptionContract } from "./subscriptions.js";
import { runPromoPaymentContract as promoPaymentContract } from "./promos.js";
import { runNotificationContract } from "./notifications.js";
import { runTrialContract as trialContract } from "./trial.js";
import { runManagersContract } from "./managers.js";
import { autoTopUpContract } from "./auto-top-up.js";
import { mulberry32, runLeasesContract } from "./leases.js";
import { scopedAccountCases, scopedConcurrencyCase } from "./scoped.js";

export { CreditModel } from "./model.js";
export { runManagersContract } from "./managers.js";
export { runLeasesContract } from "./leases.js";
export { runNotificationContract } from "./notifications.js";

/** The plans and subscriptions part of the contract (renewals, plan changes, cancellation, the outbox events). */
export function runSubscriptionContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  subscriptionContract(getDb, T0);
}

/** The promo codes and payments part of the contract (guarded uses, compare-and-set payments, races). */
export function runPromoPaymentContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  promoPaymentContract(getDb);
  autoTopUpContract(getDb);
}

/** Trial credits: granted once, in the unit of work that creates the account, also under races. */
export function runTrialContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  trialContract(getDb);
}
export type { Assertion, AsyncAssertion, Expect, TestApi } from "./runner.js";
export {
  runPaymentProviderContract,
  type PaymentProviderContractOptions,
  type PaymentProviderVectors,
  type WebhookVector,
} from "./payment-providers.js";

export interface ContractOptions {
  /** Shown in the describe block. */
  name: string;
  /** A fresh store; the suite calls `init()` (twice, to prove it idempotent) and `close()`. */
  create: () => Promise<DbManager>;
  /** Drops what `create` made (database, schema), after `close()`. */
  destroy?: (db: DbManager) => Promise<void>;
  /** fast-check runs of the property test. Default 60. */
  propertyRuns?: number;
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

/** The parts of the contract suite, each also exported on its own (`run…Contract`). */
export type ContractPart =
  "accounts" | "subscriptions" | "concurrency" | "promos" | "trial" | "properties" | "outbox" | "managers" | "leases";

/** What each part's runner takes besides the store. */
export interface PartOptions {
  /** Your test runner's functions (see `ContractOptions.test`). */
  test?: TestApi;
}

const T0 = Date.parse("2030-01-01T00:00:00.000Z");
const DAY = 86_400_000;

/** A service over `db` whose clock the test moves. */
export function serviceWithClock(db: DbManager, start = T0, overdraftLimit: number | null = null) {
  const clock = { now: start };
  const credits = new CreditService({ db, clock: () => new Date(clock.now), overdraftLimit });
  return { credits, clock };
}

export function runDbManagerContract(options: ContractOptions): void {
  useTestApi(options.test);
  const runs = options.propertyRuns ?? 60;
  const race = options.raceSize ?? 1000;
  const skip = options.skip ?? {};
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
            if (db.capabilities.parts?.[name] === false) await expectPartMissing(db, name);
          });
        });
        return;
      }
      if (optional) {
        it(`has the ${name} part (else pass skip: { ${name}: "<reason>" })`, () => {
          expect(
            db.capabilities.parts?.[name] !== false,
            `${options.name} has no ${name} part: skip it with a reason`,
          ).toBe(true);
        });
      }
      run();
    };

    part("accounts", () => runAccountsContract(getDb));
    // Before the races: their 500 lapsed holds on one account would be the jobs' to release.
    part("subscriptions", () => subscriptionContract(getDb, T0));
    part("concurrency", () => runConcurrencyContract(getDb, { raceSize: race }));
    part("promos", () => runPromoPaymentContract(getDb));
    part("trial", () => runTrialContract(getDb));
    part("properties", () => runPropertyContract(getDb, { runs }));
    part("outbox", () => runNotificationContract(getDb, { raceSize: Math.min(race, 50) }));
    if (createPeer !== undefined)
      part("managers", () =>
        runManagersContract(
          () => db,
          () => peer as DbManager,
        ),
      );
    // Credit leases of two managers on one user (over `db` twice without a peer).
    part("leases", () =>
      runLeasesContract(
        () => db,
        () => peer ?? db,
        { seed },
      ),
    );
  });
}

/**
 * `db` and `peer` as one `DbManager`: each method call goes to one of them, chosen by a PRNG
 * seeded with `seed` (mulberry32), so a case runs its operations through both managers in an
 * order a failing run reproduces. Properties (`name`, `capabilities`, …) are `db`'s.
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

/**
 * The accounts and journal part: the store's reads and units of work, checked directly and through
 * `CreditService` (burn-down, expiry, holds, debt, idempotency). `getDb`: an initialised store.
 */
export function runAccountsContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  describe("accounts", () => {
    const user = () => `u-${randomUUID()}`;

    scopedAccountCases(db);

    describe("store", () => {
      it("has no account, grants or journal for an unknown user", async () => {
        const u = user();
        expect(await db.getAccount(u)).toBeNull();
        expect(await db.listGrants(u)).toEqual([]);
        expect(await db.listJournal(u, { order: "desc", limit: 10 })).toEqual([]);
        expect(await db.getGrant(randomUUID())).toBeNull();
        expect(await db.getReservation(randomUUID())).toBeNull();
      });

      it("names the owner of a hold, active or settled: `reservationOwner`, else `getReservation`", async () => {
        // (`reservationOwner` is optional: without it the services read the hold whole to learn its owner.)
        const owner = async (id: string) =>
          db.reservationOwner === undefined
            ? ((await db.getReservation(id))?.userId ?? null)
            : await db.reservationOwner(id);
        const u = user();
        const { credits } = serviceWithClock(db);
        await credits.addCredits(u, 10);
        const active = await credits.reserveCredits(u, 3);
        const settled = await credits.reserveCredits(u, 2);
        await credits.commitReservedCredits(settled.id, { amount: 1 });
        expect(await owner(active.id)).toBe(u);
        expect(await owner(settled.id)).toBe(u);
        expect(await owner(randomUUID())).toBeNull();
        expect(await owner("not-a-uuid")).toBeNull();
      });

      it("saves a unit of work atomically and loads it back with the same shape", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        const e = await credits.addCredits(u, 9_007_199_254_740_000, {
          expiresAt: new Date(T0 + DAY),
          priority: 3,
          source: "promo",
          sourceRef: "WELCOME",
          metadata: { nested: { b: 1, a: [1, "x", null] } },
          description: "big",
        });
        const account = await db.getAccount(u);
        expect(account).toMatchObject({ userId: u, balance: 9_007_199_254_740_000, reserved: 0, debt: 0, seq: 1 });
        expect(account?.lastHash).toBe(e.hash);
        expect(account?.nextExpiryAt?.getTime()).toBe(T0 + DAY);
        const [g] = await db.listGrants(u);
        expect(g).toEqual({
          id: e.grants[0]?.grantId,
          userId: u,
          amount: 9_007_199_254_740_000,
          remaining: 9_007_199_254_740_000,
          expiresAt: new Date(T0 + DAY),
          priority: 3,
          source: "promo",
          sourceRef: "WELCOME",
          description: "big",
          metadata: { nested: { b: 1, a: [1, "x", null] } },
          createdAt: new Date(T0),
          expiredAmount: 0,
          closedAt: null,
          closedReason: null,
          scope: null,
          costBasis: null,
        });
        const [stored] = await db.listJournal(u, { order: "asc", limit: 10 });
        expect(stored).toEqual(e);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("keeps metadata keys named like Object.prototype's members (constructor, prototype, toString) as data, through the hash", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        // "__proto__" is refused by validation: assigning it sets the prototype, so a copy would drop it.
        const metadata = JSON.parse(
          '{"constructor":{"name":"x"},"prototype":1,"toString":"s","hasOwnProperty":[1]}',
        ) as Record<string, never>;
        const e = await credits.addCredits(u, 5, { metadata });
        expect(e.metadata).toEqual(metadata);
        expect((await db.listGrants(u))[0]?.metadata).toEqual(metadata);
        expect((await db.listJournal(u, { order: "asc", limit: 1 }))[0]?.metadata).toEqual(metadata);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("refuses a save whose account moved (seq guard) with ConflictError and writes nothing", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        await credits.addCredits(u, 10);
        await expect(
          db.transaction(u, async (tx) => {
            const state = await tx.load();
            const work = new AccountWork(
              u,
              { ...state, account: state.account && { ...state.account, seq: 99 } },
              new Date(T0),
              randomUUID,
            );
            work.add(
              5,
              { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
              {},
            );
            await tx.save(work.changes());
          }),
        ).rejects.toBeInstanceOf(ConflictError);
        expect((await db.getAccount(u))?.balance).toBe(10);
        expect(await db.listJournal(u, { order: "asc", limit: 10 })).toHaveLength(1);
      });

      it("never answers a unit of work with the entry of another key, even one the store cannot tell apart", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        const first = await credits.addCredits(u, 100, { idempotencyKey: "top-up-\uFFFD" });
        // Below the service's validation (which refuses lone surrogates): node-pg and BSON send a
        // lone surrogate as U+FFFD, so the store may find the first key's entry for this one.
        const unit = (key: string) =>
          credits.runUnitOfWork(
            u,
            { idempotencyKey: key, fingerprint: first.fingerprint ?? undefined },
            async () => "ran",
            async (entry) => entry.id,
          );
        expect(await unit("top-up-\uFFFD")).toBe(first.id);
        const other = await unit("top-up-\uD800").catch((e: unknown) => e);
        if (other !== "ran") {
          expect(other).toBeInstanceOf(StorageError);
          expect((other as Error).message).toMatch(/cannot tell them apart/);
        }
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100 });
      });

      it("rolls back everything when the unit of work throws", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        await credits.addCredits(u, 10);
        await expect(
          db.transaction(u, async (tx) => {
            const state = await tx.load();
            const work = new AccountWork(u, state, new Date(T0), randomUUID);
            work.add(
              5,
              { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
              {},
            );
            await tx.save(work.changes());
            throw new Error("boom after save");
          }),
        ).rejects.toThrow("boom after save");
        expect((await db.getAccount(u))?.balance).toBe(10);
        expect(await db.listGrants(u)).toHaveLength(1);
      });

      it("pages the journal both ways with type and time filters", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db);
        for (let i = 0; i < 5; i++) {
          await credits.addCredits(u, 10);
          clock.now += 1000;
          await credits.deductCredits(u, 1);
          clock.now += 1000;
        }
        const desc = await db.listJournal(u, { order: "desc", limit: 3 });
        expect(desc.map((e) => e.seq)).toEqual([10, 9, 8]);
        const before = await db.listJournal(u, { order: "desc", beforeSeq: 8, limit: 3 });
        expect(before.map((e) => e.seq)).toEqual([7, 6, 5]);
        const asc = await db.listJournal(u, { order: "asc", afterSeq: 8, limit: 10 });
        expect(asc.map((e) => e.seq)).toEqual([9, 10]);
        const deducts = await db.listJournal(u, { order: "desc", limit: 10, types: ["deduct"] });
        expect(deducts.map((e) => e.seq)).toEqual([10, 8, 6, 4, 2]);
        const window = await db.listJournal(u, {
          order: "asc",
          limit: 10,
          from: new Date(T0 + 2000),
          to: new Date(T0 + 5000),
        });
        expect(window.map((e) => e.seq)).toEqual([3, 4, 5]);
      });

      it("scans due grants and lapsed holds in (expiresAt, id) order with a cursor", async () => {
        const { credits } = serviceWithClock(db);
        const tag = randomUUID();
        const users = [0, 1, 2].map((i) => `scan-${tag}-${i}`);
        const far = T0 + 400 * DAY; // far from other tests' data in a shared store
        for (const [i, u] of users.entries()) {
          await credits.addCredits(u, 10, { expiresAt: new Date(far + i * 1000) });
          await credits.addCredits(u, 10, { expiresAt: new Date(far + 10 * DAY) });
          await credits.reserveCredits(u, 1, { ttlSeconds: 3600 });
        }
        const due = (await db.findDueGrants(new Date(far + 2000), 1000)).filter((g) => users.includes(g.userId));
        expect(due.map((g) => g.userId)).toEqual(users);
        const first = due[0];
        if (first?.expiresAt == null) throw new Error("expected a due grant");
        const rest = (
          await db.findDueGrants(new Date(far + 2000), 1000, { expiresAt: first.expiresAt, id: first.id })
        ).filter((g) => users.includes(g.userId));
        expect(rest.map((g) => g.userId)).toEqual(users.slice(1));
        const lapsed = (await db.findExpiredReservations(new Date(T0 + 3600_000), 10_000)).filter((r) =>
          users.includes(r.userId),
        );
        expect(lapsed).toHaveLength(3);
        expect(
          (await db.findExpiredReservations(new Date(T0 + 3599_000), 10_000)).filter((r) => users.includes(r.userId)),
        ).toHaveLength(0);
      });

      it("stores system and error ledger events and lists them newest first", async () => {
        const u = user();
        const base = { correlationId: null, details: { n: 1 } };
        await db.insertLedgerEntry({
          ...base,
          id: randomUUID(),
          eventType: "system",
          userId: u,
          message: "a",
          createdAt: new Date(T0),
        });
        await db.insertLedgerEntry({
          ...base,
          id: randomUUID(),
          eventType: "error",
          userId: u,
          message: "b",
          createdAt: new Date(T0 + 1),
        });
        const all = await db.listLedgerEntries({ userId: u, limit: 10 });
        expect(all.map((e) => e.message)).toEqual(["b", "a"]);
        expect(
          (await db.listLedgerEntries({ userId: u, eventType: "system", limit: 10 })).map((e) => e.message),
        ).toEqual(["a"]);
        expect(all[0]?.details).toEqual({ n: 1 });
      });

      it("hands out copies: mutating a returned row (or a row after inserting it) changes nothing stored", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        const far = T0 + 500 * DAY; // a scan window of its own in a shared store
        await credits.addCredits(u, 100, { expiresAt: new Date(far), metadata: { tags: ["a"], n: { v: 1 } } });
        const settled = await credits.reserveCredits(u, 5, { metadata: { m: [1] } });
        await credits.commitReservedCredits(settled.id);
        const active = await credits.reserveCredits(u, 7, { ttlSeconds: 60, metadata: { m: [2] } });
        const event: LedgerEntry = {
          id: randomUUID(),
          eventType: "system",
          userId: u,
          message: "m",
          correlationId: null,
          details: { d: [1] },
          createdAt: new Date(T0),
        };
        await db.insertLedgerEntry(event);
        scribble(event);
        const reads = async () => ({
          account: await db.getAccount(u),
          grant: await db.getGrant(((await db.listGrants(u))[0] ?? { id: "" }).id),
          grants: await db.listGrants(u),
          allGrants: await db.listGrants(u, { includeInactive: true }),
          active: await db.getReservation(active.id),
          settled: await db.getReservation(settled.id),
          holds: await db.listReservations(u),
          activeHolds: await db.listReservations(u, { status: "active" }),
          committedHolds: await db.listReservations(u, { status: "committed" }),
          journal: await db.listJournal(u, { order: "asc", limit: 10 }),
          due: (await db.findDueGrants(new Date(far), 10_000)).filter((g) => g.userId === u),
          lapsed: (await db.findExpiredReservations(new Date(T0 + 60_000), 10_000)).filter((r) => r.userId === u),
          events: await db.listLedgerEntries({ userId: u, limit: 10 }),
        });
        const before = await reads();
        expect(before.due).toHaveLength(1);
        expect(before.lapsed).toHaveLength(1);
        expect(before.events[0]).toMatchObject({ message: "m", details: { d: [1] }, createdAt: new Date(T0) });
        scribble(await reads());
        expect(await reads()).toEqual(before);
        expect((await credits.audit(u)).ok).toBe(true);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 95, reserved: 7, available: 88 });
      });

      it("pages ledger events with before/beforeId without skipping or repeating those of one millisecond", async () => {
        const u = user();
        const base = { correlationId: null, details: {}, eventType: "system" as const, userId: u };
        const instants = [T0, T0 + 5, T0 + 5, T0 + 5, T0 + 5, T0 + 5, T0 + 9, T0 + 9];
        for (const [k, t] of instants.entries())
          await db.insertLedgerEntry({ ...base, id: randomUUID(), message: `m${k}`, createdAt: new Date(t) });
        const seen: string[] = [];
        let page = await db.listLedgerEntries({ userId: u, limit: 2 });
        while (page.length > 0) {
          seen.push(...page.map((e) => e.message));
          const last = page[page.length - 1] as LedgerEntry;
          page = await db.listLedgerEntries({ userId: u, limit: 2, before: last.createdAt, beforeId: last.id });
        }
        expect([...seen].sort()).toEqual(instants.map((_, k) => `m${k}`).sort());
        expect(seen.slice(0, 2).sort()).toEqual(["m6", "m7"]);
        expect(seen[seen.length - 1]).toBe("m0");
        // Without beforeId, `before` alone still means "strictly older".
        expect(
          (await db.listLedgerEntries({ userId: u, limit: 10, before: new Date(T0 + 5) })).map((e) => e.message),
        ).toEqual(["m0"]);
      });
    });

    describe("credits", () => {
      it("a checkpoint entry is stored and read back as written: both audits agree, across expiry and holds", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db);
        await credits.addCredits(u, 100, { expiresAt: new Date(T0 + DAY) });
        await credits.addCredits(u, 50);
        await credits.deductCredits(u, 60);
        const hold = await credits.reserveCredits(u, 30, { ttlSeconds: 3 * 86400 });
        const cp = await credits.checkpoint(u);
        expect(cp).toMatchObject({ type: "checkpoint", amount: 0, seq: 5, balanceAfter: 90, reservedAfter: 30 });
        expect(await credits.latestCheckpoint(u)).toEqual(cp);
        clock.now = T0 + DAY;
        await credits.commitReservedCredits(hold.id, { amount: 20 });
        await credits.deductCredits(u, 5);
        const fromCheckpoint = await credits.audit(u);
        const fromGenesis = await credits.audit(u, { from: "genesis" });
        expect(fromCheckpoint.problems).toEqual([]);
        expect(fromGenesis.problems).toEqual([]);
        expect([fromCheckpoint.fromSeq, fromGenesis.fromSeq]).toEqual([5, 1]);
        expect([fromCheckpoint.balance, fromCheckpoint.reserved]).toEqual([fromGenesis.balance, fromGenesis.reserved]);
        expect(fromCheckpoint.balance).toBe(45);
      });

      it("archiveJournal moves the entries before a checkpoint to a file the archive check verifies; the store keeps the rest", async () => {
        if (db.deleteJournalBefore === undefined) {
          console.warn(`[contract] ${db.name}: no deleteJournalBefore, the archive case is not run`);
          return;
        }
        const u = user();
        const { credits } = serviceWithClock(db);
        await credits.addCredits(u, 100);
        for (let i = 0; i < 5; i++) await credits.deductCredits(u, 3);
        const cp = (await credits.checkpoint(u)) as JournalEntry;
        await credits.deductCredits(u, 1);
        const dir = await mkdtemp(join(tmpdir(), "cm-contract-"));
        try {
          const file = join(dir, "archive.jsonl");
          const report = await credits.archiveJournal({ file, userId: u });
          expect(report).toMatchObject({ accounts: 1, entriesArchived: cp.seq - 1, linesWritten: cp.seq });
          const kept = await db.listJournal(u, { order: "asc", limit: 10 });
          expect(kept.map((e) => e.seq)).toEqual([cp.seq, cp.seq + 1]);
          expect((await db.listJournal(u, { order: "desc", beforeSeq: cp.seq, limit: 10 })).length).toBe(0);
          const audit = await credits.audit(u);
          expect(audit.problems).toEqual([]);
          expect(audit.balance).toBe(84);
          const verified = await verifyArchive(file);
          expect(verified.problems).toEqual([]);
          expect(verified.accounts.map((a) => [a.userId, a.ok, a.checkpoint?.hash])).toEqual([[u, true, cp.hash]]);
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      });

      it("draws by priority, then soonest expiry, never-expiring last, then oldest", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db);
        const never = await credits.addCredits(u, 10);
        clock.now += 1000;
        const late = await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 9 * DAY) });
        const soon = await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 2 * DAY) });
        const low = await credits.addCredits(u, 10, { priority: 5, expiresAt: new Date(T0 + DAY) });
        const older = await credits.addCredits(u, 10, { priority: 5 });
        const e = await credits.deductCredits(u, 45);
        const id = (x: JournalEntry) => x.grants[0]?.grantId;
        expect(e.grants).toEqual([
          { grantId: id(soon), amount: 10 },
          { grantId: id(late), amount: 10 },
          { grantId: id(never), amount: 10 },
          { grantId: id(low), amount: 10 },
          { grantId: id(older), amount: 5 },
        ]);
      });

      it("expires only what is unspent, and never what is held until the hold ends", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db);
        await credits.addCredits(u, 100, { expiresAt: new Date(T0 + DAY) });
        await credits.addCredits(u, 50);
        await credits.deductCredits(u, 60);
        const hold = await credits.reserveCredits(u, 30, { ttlSeconds: 3 * 86400 });
        clock.now = T0 + DAY;
        // 100 − 60 − 30 held = 10 unspent expire now; the held 30 stay held.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 80, reserved: 30, available: 50 });
        const released = await credits.releaseReservedCredits(hold.id);
        expect(released.type).toBe("release_reserved");
        // The 30 returned to an expired grant expire at once.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 50, reserved: 0, available: 50 });
        const types = (await credits.getCreditHistory(u)).items.map((e) => e.type);
        expect(types.slice(0, 3)).toEqual(["expire", "release_reserved", "expire"]);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("commits less (the rest returns) and more (the excess is usage, into debt)", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        await credits.addCredits(u, 100);
        const a = await credits.reserveCredits(u, 40);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 40, available: 60 });
        const c = await credits.commitReservedCredits(a.id, { amount: 25 });
        expect(c).toMatchObject({ type: "commit_reserved", amount: 25, reservationId: a.id });
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 75, reserved: 0, available: 75 });
        expect((await credits.getReservation(a.id)).status).toBe("committed");
        expect((await credits.getReservation(a.id)).committedAmount).toBe(25);
        const b = await credits.reserveCredits(u, 70);
        await credits.commitReservedCredits(b.id, { amount: 90 });
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -15,
          reserved: 0,
          available: -15,
          debt: 15,
        });
        await credits.addCredits(u, 20);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 5, debt: 0, available: 5 });
        const grants = await credits.getGrants(u);
        expect(grants.map((g) => g.remaining)).toEqual([5]);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("records a partial capture in one entry: spent, returned and debt-paid portions, stored as written", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db, T0, 50);
        const g1 = await credits.addCredits(u, 30, { expiresAt: new Date(T0 + DAY) });
        const g2 = await credits.addCredits(u, 70);
        const [first, second] = [g1.grants[0]?.grantId, g2.grants[0]?.grantId];
        const hold = await credits.reserveCredits(u, 50, { ttlSeconds: 3 * 86400 });
        // Usage delivered meanwhile takes the 50 unheld credits and 10 more as debt.
        await credits.deductCreditsAfterService(u, 60);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 40, reserved: 50, debt: 10 });
        const c = await credits.commitReservedCredits(hold.id, { amount: 25 });
        // 25 of the first grant spent; the held rest (5 of it, 20 of the second) pays the 10 of debt first.
        expect(c).toMatchObject({
          type: "commit_reserved",
          amount: 25,
          reservedAfter: 0,
          debtAfter: 0,
          balanceAfter: 15,
        });
        expect(c.grants).toEqual([
          { grantId: first, amount: 25 },
          { grantId: first, amount: 5, kind: "debt_paid" },
          { grantId: second, amount: 5, kind: "debt_paid" },
          { grantId: second, amount: 15, kind: "returned" },
        ]);
        const stored = (await credits.getCreditHistory(u, { types: ["commit_reserved"] })).items;
        expect(stored).toEqual([c]);
        expect((await credits.getCreditHistory(u)).items.map((e) => e.type)).toEqual([
          "commit_reserved",
          "deduct",
          "reserve",
          "add",
          "add",
        ]);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 15, reserved: 0, debt: 0, available: 15 });
        expect((await credits.audit(u)).ok).toBe(true);
        // A partial capture whose rest returns to a grant that expired meanwhile: the rest expires at once.
        await credits.addCredits(u, 20, { expiresAt: new Date(T0 + 2 * DAY) });
        const late = await credits.reserveCredits(u, 30, { ttlSeconds: 5 * 86400 });
        clock.now = T0 + 2 * DAY;
        const partial = await credits.commitReservedCredits(late.id, { amount: 10 });
        expect(partial.grants.filter((g) => g.kind === "returned").reduce((s, g) => s + g.amount, 0)).toBe(20);
        expect((await credits.getCreditHistory(u, { limit: 2 })).items.map((e) => e.type)).toEqual([
          "expire",
          "commit_reserved",
        ]);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("refuses deductions past available, allows after-service ones into debt within the limit", async () => {
        const u = user();
        const { credits } = serviceWithClock(db, T0, 50);
        await credits.addCredits(u, 30);
        const hold = await credits.reserveCredits(u, 10);
        await expect(credits.deductCredits(u, 21)).rejects.toBeInstanceOf(InsufficientCreditsError);
        await credits.deductCreditsAfterService(u, 60);
        // Held credits are never taken: 20 from grants, 40 as debt.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -30,
          reserved: 10,
          available: -40,
          debt: 40,
        });
        await expect(credits.deductCreditsAfterService(u, 11)).rejects.toBeInstanceOf(InsufficientCreditsError);
        await credits.deductCreditsAfterService(u, 10);
        // Releasing the hold pays the debt from the returned credits first.
        await credits.releaseReservedCredits(hold.id);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -40,
          reserved: 0,
          available: -40,
          debt: 40,
        });
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("credits a hold returns to a voided or expired grant are removed, never pay debt", async () => {
        // Voided: a refund voids the grant while 60 of it are held; usage then runs into debt.
        const u = user();
        const { credits, clock } = serviceWithClock(db, T0, 50);
        const g = await credits.addCredits(u, 100);
        const hold = await credits.reserveCredits(u, 60);
        await credits.voidGrant(g.grants[0]?.grantId as string);
        await credits.deductCreditsAfterService(u, 30);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 30, reserved: 60, debt: 30 });
        await credits.releaseReservedCredits(hold.id);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -30,
          reserved: 0,
          available: -30,
          debt: 30,
        });
        expect((await credits.audit(u)).ok).toBe(true);

        // Expired: the grant expires while 60 are held; debt run up after it does not eat them.
        const v = user();
        await credits.addCredits(v, 100, { expiresAt: new Date(clock.now + 10_000) });
        const held = await credits.reserveCredits(v, 60, { ttlSeconds: 3600 });
        clock.now += 11_000;
        await credits.deductCreditsAfterService(v, 30);
        expect(await credits.getUserCreditsInfo(v)).toMatchObject({ balance: 30, reserved: 60, debt: 30 });
        await credits.releaseReservedCredits(held.id);
        expect(await credits.getUserCreditsInfo(v)).toMatchObject({ balance: -30, reserved: 0, debt: 30 });
        expect((await credits.audit(v)).ok).toBe(true);
      });

      it("settles holds exactly once: expired, not active, lazily released", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db);
        await credits.addCredits(u, 10);
        const a = await credits.reserveCredits(u, 4, { ttlSeconds: 60 });
        await credits.commitReservedCredits(a.id);
        await expect(credits.commitReservedCredits(a.id)).rejects.toBeInstanceOf(ReservationNotActiveError);
        await expect(credits.releaseReservedCredits(a.id)).rejects.toBeInstanceOf(ReservationNotActiveError);
        const b = await credits.reserveCredits(u, 5, { ttlSeconds: 60 });
        clock.now += 61_000;
        await expect(credits.commitReservedCredits(b.id)).rejects.toBeInstanceOf(ReservationExpiredError);
        // Touching the account released it lazily.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 6, reserved: 0, available: 6 });
        expect((await credits.getReservation(b.id)).status).toBe("expired");
        await expect(credits.releaseReservedCredits(b.id)).rejects.toBeInstanceOf(ReservationExpiredError);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("answers a repeated idempotency key with the first result and changes nothing", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        const a1 = await credits.addCredits(u, 10, { idempotencyKey: "k-add" });
        const a2 = await credits.addCredits(u, 10, { idempotencyKey: "k-add" });
        expect(a2).toEqual(a1);
        await expect(credits.addCredits(u, 11, { idempotencyKey: "k-add" })).rejects.toBeInstanceOf(
          IdempotencyConflictError,
        );
        await expect(credits.deductCredits(u, 10, { idempotencyKey: "k-add" })).rejects.toBeInstanceOf(
          IdempotencyConflictError,
        );
        const r1 = await credits.reserveCredits(u, 3, { idempotencyKey: "k-res" });
        const r2 = await credits.reserveCredits(u, 3, { idempotencyKey: "k-res" });
        expect(r2.id).toBe(r1.id);
        const c1 = await credits.commitReservedCredits(r1.id, { amount: 2, idempotencyKey: "k-commit" });
        const c2 = await credits.commitReservedCredits(r1.id, { amount: 2, idempotencyKey: "k-commit" });
        expect(c2).toEqual(c1);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 8, reserved: 0 });
        // add, reserve, and the partial capture (with its returned part) in one entry.
        expect((await credits.getCreditHistory(u)).items).toHaveLength(3);
      });

      it("forgets idempotency keys past the retention window: a retry within it answers the first result; after the job the key is a new operation and the entry still audits", async () => {
        const u = user();
        // Long before the other cases' clocks (T0 on), so the job forgets none of their keys.
        const start = T0 - 400 * DAY;
        const { credits, clock } = serviceWithClock(db, start);
        // Unused by this job; on a credit service of its own, so that it hooks nothing into `credits`.
        const subscriptions = new SubscriptionService({ db, credits: new CreditService({ db }) });
        const expiration = new ExpirationService({ db, credits, subscriptions, idempotencyRetention: "1h" });
        await credits.addCredits(u, 100);
        const first = await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" });
        clock.now += 30 * 60_000;
        expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(first.id);
        // Younger than the window: still remembered after the job. A store that cannot forget keys
        // (no forgetIdempotencyKeys, or a defineStore journal part without it) refuses the job
        // with ConfigurationError rather than ignore the window; it keeps every key.
        const early = await expiration.forgetIdempotencyKeys().catch((e: unknown) => e);
        if (db.forgetIdempotencyKeys === undefined || early instanceof ConfigurationError) {
          expect(early).toBeInstanceOf(ConfigurationError);
          expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(first.id);
          return;
        }
        expect(early).toMatchObject({ retentionMs: 3_600_000 });
        expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(first.id);
        expect((await credits.getUserCreditsInfo(u)).balance).toBe(90);
        clock.now += 31 * 60_000;
        const report = await expiration.forgetIdempotencyKeys();
        expect(report.keysForgotten).toBeGreaterThanOrEqual(1);
        const again = await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" });
        expect(again.id).not.toBe(first.id);
        expect((await credits.getUserCreditsInfo(u)).balance).toBe(80);
        // The new entry remembers the key for a window of its own.
        expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(again.id);
        // The forgotten entry reads back with its key (its hash covers it) and the chain verifies.
        const journal = await db.listJournal(u, { order: "asc", limit: 10 });
        expect(journal.filter((e) => e.idempotencyKey === "k-retained").map((e) => e.id)).toEqual([first.id, again.id]);
        const inside = await db.transaction(
          u,
          async (tx) => (await tx.load({ idempotencyKey: "k-retained" })).idempotent,
        );
        expect(inside?.id).toBe(again.id);
        const audit = await credits.audit(u);
        expect(audit.problems).toEqual([]);
        expect(audit.ok).toBe(true);
      });

      it("voids what is left of a grant, and its held part when the hold ends", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        const g = await credits.addCredits(u, 100);
        await credits.addCredits(u, 5, { priority: 9 });
        await credits.deductCredits(u, 30);
        const hold = await credits.reserveCredits(u, 20);
        const v = await credits.voidGrant(g.grants[0]?.grantId ?? "");
        expect(v).toMatchObject({ type: "void", amount: 50 });
        await expect(credits.voidGrant(g.grants[0]?.grantId ?? "")).rejects.toBeInstanceOf(ConflictError);
        await credits.releaseReservedCredits(hold.id);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 5, reserved: 0 });
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("commit, release and void routed by a given userId: the owner's succeed, another user's are not found and change nothing", async () => {
        const [owner, other] = [user(), user()];
        const { credits } = serviceWithClock(db);
        const g = await credits.addCredits(owner, 100);
        await credits.addCredits(other, 10);
        const grantId = g.grants[0]?.grantId ?? "";
        const [a, b, c] = [
          await credits.reserveCredits(owner, 10),
          await credits.reserveCredits(owner, 20),
          await credits.reserveCredits(owner, 30),
        ];
        const stateOf = async () => ({
          owner: await credits.getUserCreditsInfo(owner),
          other: await credits.getUserCreditsInfo(other),
          entries: (await credits.getCreditHistory(owner, { limit: 100 })).items.length,
          otherEntries: (await credits.getCreditHistory(other, { limit: 100 })).items.length,
          holds: [await credits.getReservation(a.id), await credits.getReservation(b.id)].map((r) => r.status),
        });
        const before = await stateOf();
        const strangers = [other, `never-seen-${randomUUID()}`];
        for (const stranger of strangers) {
          await expect(credits.commitReservedCredits(a.id, { userId: stranger })).rejects.toBeInstanceOf(NotFoundError);
          await expect(
            credits.commitReservedCredits(a.id, { userId: stranger, idempotencyKey: `k-${stranger}` }),
          ).rejects.toBeInstanceOf(NotFoundError);
          await expect(credits.releaseReservedCredits(b.id, { userId: stranger })).rejects.toBeInstanceOf(
            NotFoundError,
          );
          await expect(credits.voidGrant(grantId, { userId: stranger })).rejects.toBeInstanceOf(NotFoundError);
        }
        expect(await stateOf()).toEqual(before);
        expect(await db.getAccount(strangers[1] as string)).toBeNull();
        // Validated by the models: a malformed userId is a ValidationError before anything is read.
        await expect(credits.commitReservedCredits(a.id, { userId: "" })).rejects.toMatchObject({
          code: "VALIDATION_ERROR",
        });
        // The owner's own: as without userId (and the key's fingerprint does not include the routing).
        const first = await credits.commitReservedCredits(a.id, { userId: owner, amount: 4, idempotencyKey: "k-a" });
        expect(first).toMatchObject({ type: "commit_reserved", amount: 4 });
        const replay = await credits.commitReservedCredits(a.id, { amount: 4, idempotencyKey: "k-a" });
        expect(replay.id).toBe(first.id);
        expect(await credits.releaseReservedCredits(b.id, { userId: owner })).toMatchObject({
          type: "release_reserved",
        });
        expect(await credits.voidGrant(grantId, { userId: owner })).toMatchObject({ type: "void", amount: 66 });
        await credits.releaseReservedCredits(c.id, { userId: owner });
        expect(await credits.getUserCreditsInfo(owner)).toMatchObject({ balance: 0, reserved: 0 });
        expect((await credits.audit(owner)).ok).toBe(true);
        expect((await credits.audit(other)).ok).toBe(true);
      });

      it("lists history newest first with cursor paging and type filters; expiring credits in a window", async () => {
        const u = user();
        const { credits } = serviceWithClock(db);
        await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 2 * DAY) });
        await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 10 * DAY) });
        for (let i = 0; i < 5; i++) await credits.deductCredits(u, 1);
        const p1 = await credits.getCreditHistory(u, { limit: 4 });
        expect(p1.items.map((e) => e.seq)).toEqual([7, 6, 5, 4]);
        const p2 = await credits.getCreditHistory(u, { limit: 4, cursor: p1.nextCursor ?? undefined });
        expect(p2.items.map((e) => e.seq)).toEqual([3, 2, 1]);
        expect(p2.nextCursor).toBeNull();
        const adds = await credits.getCreditHistory(u, { types: ["add"] });
        expect(adds.items.map((e) => e.type)).toEqual(["add", "add"]);
        const soon = await credits.getExpiringCredits(u, 3);
        expect(soon.total).toBe(5);
        expect((await credits.getExpiringCredits(u, 30)).total).toBe(15);
      });

      it("expireCredits(asOf) expires what was due at asOf and reports the amount", async () => {
        const u = user();
        const { credits, clock } = serviceWithClock(db);
        await credits.addCredits(u, 7, { expiresAt: new Date(T0 + DAY) });
        await credits.addCredits(u, 9, { expiresAt: new Date(T0 + 3 * DAY) });
        clock.now = T0 + 5 * DAY;
        expect(await credits.expireCredits(u, new Date(T0 + 2 * DAY))).toBe(7);
        expect(await credits.expireCredits(u)).toBe(9);
        expect(await credits.expireCredits(u)).toBe(0);
        expect((await credits.audit(u)).ok).toBe(true);
      });
    });
  });
}

/** Concurrent callers on one account: no double spend, one effect per idempotency key. */
export function runConcurrencyContract(
  getDb: () => DbManager,
  options: PartOptions & { raceSize?: number } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const race = options.raceSize ?? 1000;
  const user = () => `u-${randomUUID()}`;
  const db = lazy(getDb);
  describe("concurrency", () => {
    it(`${race} concurrent deductCredits(u, 1) on a balance of ${race / 2}: exactly ${race / 2} succeed`, async () => {
      const u = user();
      const { credits } = serviceWithClock(db);
      await credits.addCredits(u, race / 2);
      const results = await Promise.allSettled(Array.from({ length: race }, () => credits.deductCredits(u, 1)));
      const ok = results.filter((r) => r.status === "fulfilled").length;
      const refused = results.filter(
        (r) => r.status === "rejected" && r.reason instanceof InsufficientCreditsError,
      ).length;
      expect(ok).toBe(race / 2);
      expect(refused).toBe(race / 2);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0, available: 0 });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it(`${race} concurrent reserveCredits(u, 1) on ${race / 2}: exactly ${race / 2} holds`, async () => {
      const u = user();
      const { credits } = serviceWithClock(db);
      await credits.addCredits(u, race / 2);
      const results = await Promise.allSettled(Array.from({ length: race }, () => credits.reserveCredits(u, 1)));
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(race / 2);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({
        balance: race / 2,
        reserved: race / 2,
        available: 0,
      });
      expect(await db.listReservations(u, { status: "active" })).toHaveLength(race / 2);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("concurrent spends of two spenders under a spender limit and an account limit never pass either (docs/teams-and-limits.md)", async () => {
      const u = user();
      const { credits } = serviceWithClock(db);
      await credits.addCredits(u, 1000);
      await credits.setLimits(u, [
        { amount: 80, period: "month" },
        { spender: "alice", amount: 50, period: "month" },
      ]);
      const n = Math.min(race, 200);
      const results = await Promise.allSettled(
        Array.from({ length: n }, (_, i) => {
          const spender = i % 2 === 0 ? "alice" : "bob";
          return i % 4 < 2
            ? credits.deductCredits(u, 1, { spender })
            : credits.reserveCredits(u, 1, { spender }).then((h) => credits.commitReservedCredits(h.id));
        }),
      );
      const ok = (spender: string) =>
        results.filter((r, i) => r.status === "fulfilled" && (i % 2 === 0 ? "alice" : "bob") === spender).length;
      for (const r of results)
        if (r.status === "rejected") expect((r.reason as { code?: string }).code).toBe("SPEND_LIMIT_EXCEEDED");
      expect(ok("alice")).toBeLessThanOrEqual(50);
      expect(ok("alice") + ok("bob")).toBe(80);
      const limits = await credits.getLimits(u);
      expect(limits.map((l) => l.used)).toEqual([80, ok("alice")]);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 920, reserved: 0 });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    scopedConcurrencyCase(db, race);

    it("one idempotency key sent 50 times at once has one effect", async () => {
      const u = user();
      const { credits } = serviceWithClock(db);
      await credits.addCredits(u, 100);
      const results = await Promise.all(
        Array.from({ length: 50 }, () => credits.deductCredits(u, 7, { idempotencyKey: "once" })),
      );
      expect(new Set(results.map((e) => e.id)).size).toBe(1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 93 });
      const adds = await Promise.all(
        Array.from({ length: 50 }, () => credits.addCredits(u, 5, { idempotencyKey: "once-add" })),
      );
      expect(new Set(adds.map((e) => e.id)).size).toBe(1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 98 });
      expect((await credits.audit(u)).ok).toBe(true);
    });
  });
}

/** Random operation sequences against the real service and an independent model (fast-check). */
export function runPropertyContract(getDb: () => DbManager, options: PartOptions & { runs?: number } = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  const runs = options.runs ?? 60;
  const db = lazy(getDb);
  describe("properties", () => {
    it(`random operation sequences keep every invariant and match an independent model (${runs} runs)`, async () => {
      await fc.assert(
        fc.asyncProperty(commandsArbitrary(), async (commands) => runAgainstModel(db, commands)),
        {
          numRuns: runs,
        },
      );
    });
  });
}

/**
 * The store `getDb` answers when a test runs (the suite's store is made in `beforeAll`, after the
 * tests are registered), with its methods bound to it.
 */
function lazy(getDb: () => DbManager): DbManager {
  return new Proxy({} as DbManager, {
    get(_target, key) {
      const db = getDb();
      const value = Reflect.get(db, key, db) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(db) : value;
    },
    has: (_target, key) => key in getDb(),
  });
}

/** Every method of an absent part refuses with ConfigurationError. */
async function expectPartMissing(db: DbManager, name: OptionalPart): Promise<void> {
  const probe: Record<OptionalPart, () => Promise<unknown>> = {
    subscriptions: () => db.getPlan("p"),
    promos: () => db.getPromo("P"),
    outbox: () => db.listNotifications("u", { limit: 1 }),
  };
  await expect(probe[name]()).rejects.toBeInstanceOf(ConfigurationError);
}

// ------------------------------------------------------------------------------------------------
// The property test: random commands against the real service and the model, compared each step.

type Command =
  | { op: "add"; amount: number; expiresInSec: number | null; priority: number }
  | { op: "deduct"; amount: number }
  | { op: "after"; amount: number }
  | { op: "reserve"; amount: number; ttlSec: number }
  | { op: "commit"; hold: number; amount: number | null }
  | { op: "release"; hold: number }
  | { op: "void"; grant: number }
  | { op: "expire" }
  | { op: "tick"; seconds: number };

export function commandsArbitrary(): fc.Arbitrary<Command[]> {
  const amount = fc.integer({ min: 1, max: 60 });
  const command: fc.Arbitrary<Command> = fc.oneof(
    {
      weight: 4,
      arbitrary: fc.record({
        op: fc.constant("add" as const),
        amount,
        expiresInSec: fc.option(fc.integer({ min: 1, max: 600 }), { nil: null }),
        priority: fc.integer({ min: 0, max: 2 }),
      }),
    },
    { weight: 3, arbitrary: fc.record({ op: fc.constant("deduct" as const), amount }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("after" as const), amount }) },
    {
      weight: 3,
      arbitrary: fc.record({ op: fc.constant("reserve" as const), amount, ttlSec: fc.integer({ min: 1, max: 600 }) }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        op: fc.constant("commit" as const),
        hold: fc.nat(),
        amount: fc.option(fc.integer({ min: 0, max: 80 }), { nil: null }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ op: fc.constant("release" as const), hold: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("void" as const), grant: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("expire" as const) }) },
    {
      weight: 2,
      arbitrary: fc.record({ op: fc.constant("tick" as const), seconds: fc.integer({ min: 1, max: 400 }) }),
    },
  );
  return fc.array(command, { minLength: 1, maxLength: 40 });
}

/** Runs `commands` on a fresh user of `db` and on the model; throws on the first disagreement. */
export async function runAgainstModel(db: DbManager, commands: readonly Command[]): Promise<void> {
  const u = `prop-${randomUUID()}`;
  const { credits, clock } = serviceWithClock(db);
  const model = new CreditModel(clock.now);
  const holds: Array<{ real: Reservation; model: ModelHold }> = [];
  const grantIds: string[] = [];

  const expectOutcome = async (allowed: boolean, run: () => Promise<unknown>, what: string) => {
    try {
      await run();
      if (!allowed) throw new Error(`${what}: the service accepted what the model refuses`);
    } catch (error) {
      if (allowed) throw new Error(`${what}: the model accepts but the service threw: ${String(error)}`);
      if (!(error instanceof InsufficientCreditsError)) throw error;
    }
  };

  for (const [step, c] of commands.entries()) {
    const what = `step ${step} ${JSON.stringify(c)}`;
    model.now = clock.now;
    switch (c.op) {
      case "tick":
        clock.now += c.seconds * 1000;
        continue;
      case "add": {
        model.settle();
        const expiresAt = c.expiresInSec === null ? null : new Date(clock.now + c.expiresInSec * 1000);
        const e = await credits.addCredits(u, c.amount, { expiresAt, priority: c.priority });
        const gid = e.grants[0]?.grantId ?? null;
        if (gid !== null) grantIds.push(gid);
        model.add(gid, c.amount, expiresAt?.getTime() ?? null, c.priority);
        break;
      }
      case "deduct":
      case "after": {
        model.settle();
        // The model refuses before changing anything, like the service.
        const allowed = model.deduct(c.amount, c.op === "after");
        await expectOutcome(
          allowed,
          () =>
            c.op === "after" ? credits.deductCreditsAfterService(u, c.amount) : credits.deductCredits(u, c.amount),
          what,
        );
        break;
      }
      case "reserve": {
        model.settle();
        let real: Reservation | null = null;
        const allowed = model.available >= c.amount;
        await expectOutcome(
          allowed,
          async () => (real = await credits.reserveCredits(u, c.amount, { ttlSeconds: c.ttlSec })),
          what,
        );
        if (real !== null) {
          const r: Reservation = real;
          model.reserve(r.id, c.amount, c.ttlSec * 1000);
          const mh = model.holds[model.holds.length - 1] as ModelHold;
          holds.push({ real: r, model: mh });
        }
        break;
      }
      case "commit":
      case "release": {
        if (holds.length === 0) continue;
        const h = holds[c.hold % holds.length] as { real: Reservation; model: ModelHold };
        model.settle();
        const status = h.model.status;
        const run =
          c.op === "commit"
            ? () => credits.commitReservedCredits(h.real.id, c.amount === null ? {} : { amount: c.amount })
            : () => credits.releaseReservedCredits(h.real.id);
        if (status === "active") {
          await run();
          if (c.op === "commit") model.commit(h.model, c.amount ?? h.real.amount);
          else model.release(h.model);
        } else {
          const expected = status === "expired" ? ReservationExpiredError : ReservationNotActiveError;
          await expect(run(), what).rejects.toBeInstanceOf(expected);
        }
        break;
      }
      case "void": {
        if (grantIds.length === 0) continue;
        const id = grantIds[c.grant % grantIds.length] as string;
        model.settle();
        const mg = model.grants.find((g) => g.id === id);
        if (mg === undefined) continue;
        if (mg.closed !== null) {
          await expect(credits.voidGrant(id), what).rejects.toBeInstanceOf(ConflictError);
        } else {
          await credits.voidGrant(id);
          model.voidGrant(mg);
        }
        break;
      }
      case "expire":
        model.settle();
        await credits.expireCredits(u);
        break;
    }
    model.settle();
    const info = await credits.getUserCreditsInfo(u);
    const expected = {
      userId: u,
      balance: model.balance,
      reserved: model.reserved,
      available: model.available,
      debt: model.debt,
    };
    if (JSON.stringify(info) !== JSON.stringify(expected)) {
      throw new Error(`${what}: service ${JSON.stringify(info)} != model ${JSON.stringify(expected)}`);
    }
    const real = Object.fromEntries((await credits.getGrants(u)).map((g) => [g.id, g.remaining]));
    const want = Object.fromEntries(
      model.grants.filter((g) => g.remaining > 0 && g.closed === null).map((g) => [g.id, g.remaining]),
    );
    if (JSON.stringify(sortKeys(real)) !== JSON.stringify(sortKeys(want))) {
      throw new Error(`${what}: grants ${JSON.stringify(real)} != model ${JSON.stringify(want)}`);
    }
    if (!model.overdrawn && info.available < 0) throw new Error(`${what}: available below zero without overdraft`);
    await expectNextExpiry(db, u, what);
  }
  const report = await credits.audit(u);
  if (!report.ok) throw new Error(`audit failed: ${report.problems.join("; ")}`);
  if (report.balance !== model.balance || report.reserved !== model.reserved || report.debt !== model.debt) {
    throw new Error(`audit ${JSON.stringify(report)} disagrees with the model`);
  }
  const account = await db.getAccount(u);
  if (account !== null && account.seq !== report.entries) throw new Error("seq is not gap-free");
}

/**
 * The stored account's `nextExpiryAt` is the soonest expiry among its open grants with credits left
 * and its active holds (the unit of work keeps it up to date without reading them all).
 */
async function expectNextExpiry(db: DbManager, u: string, what: string): Promise<void> {
  const account = await db.getAccount(u);
  if (account === null) return;
  let next: number | null = null;
  const consider = (t: number) => void (next = next === null ? t : Math.min(next, t));
  for (const g of await db.listGrants(u)) if (g.expiresAt !== null) consider(g.expiresAt.getTime());
  for (const h of await db.listReservations(u, { status: "active" })) consider(h.expiresAt.getTime());
  const stored = account.nextExpiryAt === null ? null : account.nextExpiryAt.getTime();
  if (stored !== next)
    throw new Error(`${what}: account.nextExpiryAt ${String(stored)} != soonest open expiry ${String(next)}`);
}

function sortKeys(o: Record<string, number>): Array<[string, number]> {
  return Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1));
}
