/**
 * The contract suite's own proof (docs/testing.md, "The suite is tested too"): stores with a planted
 * fault, each a thin wrapper over the in-memory store that gets one thing wrong, must each fail
 * `runDbManagerContract`, in the cases named here. Two controls pass it: the in-memory store behind
 * a wrapper that changes nothing, and an optimistic store (no lock from load to save) guarded on the
 * account row as docs/writing-a-store.md asks, so each failure is its fault's. The suite runs in
 * process on a runner of its own (test/contract-collector.ts): its failures are read here, not
 * reported as this run's.
 *
 * Not a fault: `getGrant`/`getReservation` answering another user's row when given a `userId`
 * (a store may look up by id alone, as `defineStore` drivers do): every caller checks the owner.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { InMemoryDbManager } from "../src/index.js";
import { ConflictError } from "../src/core/errors.js";
import type {
  Changes,
  DbManager,
  DbTransaction,
  JournalQuery,
  LoadRequest,
  LoadedState,
} from "../src/core/db/types.js";
import type { UsageScan } from "../src/core/domain/usage.js";
import { runDbManagerContract } from "../src/testing/index.js";
import { runCollected, type SuiteReport } from "./contract-collector.js";

// A failed property is reported at once (no shrinking), and every run draws the same sequences.
fc.configureGlobal({ endOnFailure: true, seed: 92 });

/** Smaller than the suite's defaults: enough to catch each fault, 25 runs of the suite in about a minute. */
const SUITE = { propertyRuns: 10, usageRuns: 2, raceSize: 50 };

/** `target` with `overrides` in front of its own members (its methods bound to it). */
function override<T extends object>(target: T, overrides: Partial<Record<keyof T, unknown>>): T {
  return new Proxy(target, {
    get(t, key) {
      if (Object.prototype.hasOwnProperty.call(overrides, key)) return (overrides as Record<PropertyKey, unknown>)[key];
      const value = Reflect.get(t, key, t) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(t) : value;
    },
  });
}

/** The in-memory store (`base`) whose units of work get their transaction as `wrap` changes it. */
function withTransaction(
  wrap: (tx: DbTransaction) => Partial<DbTransaction>,
  base = new InMemoryDbManager(),
): DbManager {
  return override<DbManager>(base, {
    transaction: <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T) =>
      base.transaction(userId, (tx) => fn(override(tx, wrap(tx)))),
  });
}

/** `save` of a transaction that hands the store what `change` makes of the changes. */
const saving = (change: (changes: Changes) => Changes) => (tx: DbTransaction) => ({
  save: (changes: Changes) => tx.save(change(changes)),
});

/** A second store over the rows of `db`, an `optimistic` store. */
const bases = new WeakMap<DbManager, InMemoryDbManager>();
const sameRows = (db: DbManager) => bases.get(db) as InMemoryDbManager;

/** What a unit of work reads besides `load`: the core's reads, and the billing module's (`tx.part("billing")`). */
const READS = ["getGrants", "getReservation", "getCharge"] as const;
const BILLING_READS = ["getPromo", "countPromoClaims", "getPayment"] as const;

/**
 * An optimistic store over the in-memory store's rows, with no lock held from load to save: each
 * read of a unit of work is a copy read on its own, and its save is written at the end, guarded on
 * the account row as `load` read it (`"row"`), on its seq alone (`"seq"`), or not at all (`"none"`:
 * the write is made to pass the in-memory store's own seq check). A write refused with
 * ConflictError runs the unit of work again, as `defineStore` does.
 */
function optimistic(base: InMemoryDbManager, guard: "row" | "seq" | "none"): DbManager {
  const db = override<DbManager>(base, {
    transaction: async <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T) => {
      for (let attempt = 1; ; attempt++) {
        const read =
          (key: string) =>
          (...args: unknown[]) =>
            base.transaction(userId, async (tx) => {
              const method = Reflect.get(tx, key) as (...a: unknown[]) => unknown;
              return structuredClone(await method.apply(tx, args));
            });
        const readPart =
          (module: string, key: string) =>
          (...args: unknown[]) =>
            base.transaction(userId, async (tx) => {
              const part = tx.part?.(module) as object;
              const method = Reflect.get(part, key) as (...a: unknown[]) => unknown;
              return structuredClone(await method.apply(part, args));
            });
        let loaded: LoadedState | undefined;
        let saved: Changes | undefined;
        const tx = Object.fromEntries([
          ["userId", userId],
          ["load", async (request?: LoadRequest) => (loaded = (await read("load")(request)) as LoadedState)],
          ["save", (changes: Changes) => void (saved = changes)],
          ...READS.map((key) => [key, read(key)]),
          [
            "part",
            (module: string) =>
              module === "billing"
                ? Object.fromEntries(BILLING_READS.map((key) => [key, readPart(module, key)]))
                : undefined,
          ],
        ]) as DbTransaction;
        const result = await fn(tx);
        const changes = saved;
        if (changes === undefined) return result;
        try {
          await base.transaction(userId, async (tx) => {
            const now = (await tx.load()).account;
            if (guard === "row" && JSON.stringify(now) !== JSON.stringify(loaded?.account ?? null)) {
              throw new ConflictError(`account ${userId} changed during the unit of work`);
            }
            await tx.save(guard === "none" ? { ...changes, previousSeq: now?.seq ?? null } : changes);
          });
          return result;
        } catch (error) {
          if (!(error instanceof ConflictError) || attempt >= 200) throw error;
        }
      }
    },
  });
  bases.set(db, base);
  return db;
}

/** `changes` with the billing module's list `list` left out (its guard then checks nothing). */
const withoutBilling = (changes: Changes, list: "paymentUpdates" | "promoClaims"): Changes => ({
  ...changes,
  rows: { ...changes.rows, billing: { ...changes.rows?.billing, [list]: undefined } },
});

/** Payment updates written without their compare-and-set on `version`. */
class PaymentsUnguarded extends InMemoryDbManager {
  override check(rows: Parameters<InMemoryDbManager["check"]>[0], changes: Changes): void {
    super.check(rows, withoutBilling(changes, "paymentUpdates"));
  }
}

/** Promo claims written without the `maxUses` guard (nor the claim's uniqueness). */
class PromosUnguarded extends InMemoryDbManager {
  override check(rows: Parameters<InMemoryDbManager["check"]>[0], changes: Changes): void {
    super.check(rows, withoutBilling(changes, "promoClaims"));
  }
}

/** Idempotency keys not kept unique: a second entry of a key is written. */
class KeysNotUnique extends InMemoryDbManager {
  override check(rows: Parameters<InMemoryDbManager["check"]>[0], changes: Changes): void {
    super.check(rows, { ...changes, entries: [] });
  }
}

/** `load` that does not look the idempotency key up. */
const keyNotLookedUp = (tx: DbTransaction) => ({
  load: (request?: LoadRequest) => tx.load(request && { ...request, idempotencyKey: undefined }),
});

/** `load` whose open grants are put in `order` and said to be in burn-down order. */
const grantsLoaded = (order: (grants: LoadedState["grants"]) => LoadedState["grants"]) => (tx: DbTransaction) => ({
  load: async (request?: LoadRequest): Promise<LoadedState> => {
    const state = await tx.load(request);
    return { ...state, grants: order(state.grants), grantsInOrder: true };
  },
});

/** A store with a planted fault, and the suite's cases that must catch it (among others). */
interface Fault {
  fault: string;
  create: () => DbManager;
  /** A second manager over the same rows: the suite runs through both, and its `managers` part. */
  peer?: (db: DbManager) => DbManager;
  caughtBy: RegExp[];
}

const RACE = /concurrency > \d+ concurrent deductCredits\(u, 1\) on a balance of \d+: exactly \d+ succeed/;

const FAULTS: Fault[] = [
  {
    fault: "a lost commit: every fifth unit of work reports success and writes nothing",
    create: () => {
      let saves = 0;
      return withTransaction((tx) => ({
        save: (changes: Changes) => (++saves % 5 === 0 ? undefined : tx.save(changes)),
      }));
    },
    caughtBy: [RACE],
  },
  {
    fault: "a lost journal row: every fifth unit of work writes the account, grants and holds, not its entries",
    create: () => {
      let saves = 0;
      return withTransaction(saving((changes) => (++saves % 5 === 0 ? { ...changes, entries: [] } : changes)));
    },
    caughtBy: [RACE],
  },
  {
    fault: "no seq guard: a unit of work's write goes over whatever committed since it loaded",
    create: () => optimistic(new InMemoryDbManager(), "none"),
    peer: (db) => optimistic(sameRows(db), "none"),
    caughtBy: [/refuses a save whose account moved \(seq guard\)/, RACE],
  },
  {
    fault: "a guard on the seq alone: a change that keeps the seq (limits, thresholds) is written over",
    create: () => optimistic(new InMemoryDbManager(), "seq"),
    peer: (db) => optimistic(sameRows(db), "seq"),
    caughtBy: [/two managers over one store > a change to the account alone .* is never written back by A/],
  },
  {
    fault: "no rollback: a unit of work that throws after its save is written all the same",
    create: () => {
      const base = new InMemoryDbManager();
      return override<DbManager>(base, {
        transaction: async <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T) => {
          let failure: { error: unknown } | undefined;
          const result = await base.transaction(userId, async (tx) => {
            try {
              return await fn(tx);
            } catch (error) {
              failure = { error }; // swallowed here, so the store writes what was saved
              return undefined as T;
            }
          });
          if (failure !== undefined) throw failure.error;
          return result;
        },
      });
    },
    caughtBy: [
      /rolls back everything when the unit of work throws/,
      /writes nothing when the unit of work fails after save/,
    ],
  },
  {
    fault: "the wrong burn-down order: open grants loaded newest first",
    create: () => withTransaction(grantsLoaded((grants) => [...grants].reverse())),
    caughtBy: [/draws by priority, then soonest expiry, never-expiring last, then oldest/],
  },
  {
    fault: "the wrong burn-down order: open grants loaded oldest first, priority and expiry ignored",
    create: () =>
      withTransaction(
        grantsLoaded((grants) =>
          [...grants].sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || (a.id < b.id ? -1 : 1)),
        ),
      ),
    caughtBy: [/draws by priority, then soonest expiry, never-expiring last, then oldest/],
  },
  {
    fault: "a hold that outlives its TTL: the scan for lapsed holds finds none",
    create: () => override<DbManager>(new InMemoryDbManager(), { findExpiredReservations: async () => [] }),
    caughtBy: [/scans due grants and lapsed holds in \(expiresAt, id\) order/],
  },
  {
    fault: "a hold that outlives its TTL: its expiry written an hour late",
    create: () =>
      withTransaction(
        saving((changes) => ({
          ...changes,
          insertReservations: changes.insertReservations.map((r) => ({
            ...r,
            expiresAt: new Date(r.expiresAt.getTime() + 3_600_000),
          })),
        })),
      ),
    caughtBy: [/settles holds exactly once: expired, not active, lazily released/],
  },
  {
    fault: "a grant that outlives its expiry: the scan for due grants finds none",
    create: () => override<DbManager>(new InMemoryDbManager(), { findDueGrants: async () => [] }),
    caughtBy: [/scans due grants and lapsed holds/, /expiring_credits: once per grant and window/],
  },
  {
    fault: "a forgotten idempotency key: not looked up (a retry is refused as a conflict)",
    create: () => withTransaction(keyNotLookedUp),
    caughtBy: [/answers a repeated idempotency key with the first result/, /one idempotency key sent 50 times at once/],
  },
  {
    fault: "a forgotten idempotency key: not looked up, not kept unique (a retry applies twice)",
    create: () => withTransaction(keyNotLookedUp, new KeysNotUnique()),
    caughtBy: [/answers a repeated idempotency key with the first result/, /one idempotency key sent 50 times at once/],
  },
  {
    fault: "the library's own idempotency keys (`cm:`) forgotten with the callers'",
    create: () => {
      const base = new InMemoryDbManager();
      return override<DbManager>(base, {
        forgetIdempotencyKeys: async (before: Date, limit: number) => {
          let forgotten = await base.forgetIdempotencyKeys(before, limit);
          for (const id of await base.listAccountIds(null, Number.MAX_SAFE_INTEGER)) {
            const rows = base.user(id);
            for (const [key, seq] of rows?.byKey ?? []) {
              const entry = rows?.journal[seq - 1 - rows.archived];
              if (forgotten < limit && key.startsWith("cm:") && entry !== undefined && entry.createdAt < before) {
                rows?.byKey.delete(key);
                forgotten++;
              }
            }
          }
          return forgotten;
        },
      });
    },
    caughtBy: [/forgets idempotency keys past the retention window/],
  },
  {
    fault: "a balance that does not match the grants: a top-up's account written one credit over",
    create: () =>
      withTransaction(
        saving((changes) =>
          changes.insertGrants.length === 0
            ? changes
            : { ...changes, account: { ...changes.account, balance: changes.account.balance + 1 } },
        ),
      ),
    caughtBy: [/saves a unit of work atomically and loads it back with the same shape/, RACE],
  },
  {
    fault: "journal times kept to the second",
    create: () =>
      withTransaction(
        saving((changes) => ({
          ...changes,
          entries: changes.entries.map((e) => ({
            ...e,
            createdAt: new Date(Math.floor(e.createdAt.getTime() / 1000) * 1000),
          })),
        })),
      ),
    caughtBy: [/usage > a capture carries its hold's metadata/],
  },
  {
    fault: "lost outbox rows: a unit of work's notifications are not written",
    create: () => withTransaction(saving((changes) => ({ ...changes, notifications: undefined }))),
    caughtBy: [
      /records one event per crossing: low, exhausted, restored/,
      /alerts > 50 concurrent deductions around the line/,
    ],
  },
  {
    fault: "a journal page's time filter that takes its end (`to`) in",
    create: () => {
      const base = new InMemoryDbManager();
      return override<DbManager>(base, {
        listJournal: (u: string, q: JournalQuery) =>
          base.listJournal(u, q.to === undefined ? q : { ...q, to: new Date(q.to.getTime() + 1) }),
      });
    },
    caughtBy: [/pages the journal both ways with type and time filters/],
  },
  {
    fault: "usage windows a millisecond late: an entry at a window's start counted in the window before",
    create: () => {
      const base = new InMemoryDbManager();
      return override<DbManager>(base, {
        usage: (scan: UsageScan) => base.usage({ ...scan, boundaries: scan.boundaries.map((b) => b + 1) }),
      });
    },
    caughtBy: [/a deduction with occurredAt is appended now and counted in the window it happened in/],
  },
  {
    fault: "closed grants listed as open",
    create: () => {
      const base = new InMemoryDbManager();
      return override<DbManager>(base, { listGrants: (u: string) => base.listGrants(u, { includeInactive: true }) });
    },
    caughtBy: [/commits less \(the rest returns\) and more/],
  },
  {
    fault: "holds listed whatever status is asked for",
    create: () => {
      const base = new InMemoryDbManager();
      return override<DbManager>(base, { listReservations: (u: string) => base.listReservations(u) });
    },
    caughtBy: [/hands out copies: mutating a returned row/],
  },
  {
    fault: "a promo code's uses not guarded at commit",
    create: () => new PromosUnguarded(),
    caughtBy: [/users claiming a 10-use code at once: exactly 10 grants/],
  },
  {
    fault: "a payment written without its compare-and-set",
    create: () => new PaymentsUnguarded(),
    caughtBy: [/refuses a unit of work whose payment moved since it was read/],
  },
];

/** Runs the suite (only the cases `only` accepts, when given) against `create`'s store, and `peer`'s with it. */
function contract(
  name: string,
  create: () => DbManager,
  peer?: (db: DbManager) => DbManager,
  only?: (name: string) => boolean,
): Promise<SuiteReport> {
  return runCollected(
    (test) =>
      runDbManagerContract({
        ...SUITE,
        name,
        create: async () => create(),
        ...(peer !== undefined && { createPeer: async (db: DbManager) => peer(db) }),
        test,
      }),
    undefined,
    only,
  );
}

describe("the contract suite passes the controls", () => {
  it("passes the in-memory store behind a wrapper that changes nothing", async () => {
    const report = await contract("control", () => override<DbManager>(new InMemoryDbManager(), {}));
    expect(report.failed).toEqual([]);
    expect(report.passed.length).toBeGreaterThan(150);
  }, 120_000);

  it("passes an optimistic store guarded on the account row, through two managers", async () => {
    const report = await contract(
      "optimistic, guarded on the row",
      () => optimistic(new InMemoryDbManager(), "row"),
      (db) => optimistic(sameRows(db), "row"),
    );
    expect(report.failed).toEqual([]);
    expect(report.passed.some((name) => name.includes("two managers over one store > "))).toBe(true);
  }, 120_000);
});

// Several at once (vitest's maxConcurrency). Each fault runs only the cases named to catch it, and
// the same cases run on a control of the same shape (one manager, or two optimistic ones guarded on
// the row), where they must all pass: so each case fails for its fault, not for a state an earlier
// case of the suite would have left. The controls above run the whole suite.
describe.concurrent("the contract suite fails a store with a planted fault", () => {
  for (const f of FAULTS) {
    it(
      f.fault,
      async () => {
        const only = (name: string) => f.caughtBy.some((pattern) => pattern.test(name));
        const report = await contract(f.fault, f.create, f.peer, only);
        const failed = report.failed.map((c) => c.name);
        if (process.env.CONTRACT_FAULTS_VERBOSE) {
          const slowest = [...report.took].sort((a, b) => b[1] - a[1]).slice(0, 3);
          console.log(
            `${f.fault}: ${failed.length} failed\n${report.failed.map((c) => `  ${c.name}\n    ${c.error}`).join("\n")}\nslowest: ${slowest.map(([n, ms]) => `${Math.round(ms)} ms ${n}`).join("; ")}`,
          );
        }
        for (const pattern of f.caughtBy) {
          expect(
            failed.some((name) => pattern.test(name)),
            `${pattern} among the failed cases:\n${failed.join("\n")}`,
          ).toBe(true);
        }
        const control =
          f.peer === undefined
            ? await contract(
                `${f.fault} (control)`,
                () => override<DbManager>(new InMemoryDbManager(), {}),
                undefined,
                only,
              )
            : await contract(
                `${f.fault} (control)`,
                () => optimistic(new InMemoryDbManager(), "row"),
                (db) => optimistic(sameRows(db), "row"),
                only,
              );
        expect(control.failed).toEqual([]);
        for (const pattern of f.caughtBy)
          expect(
            control.passed.some((name) => pattern.test(name)),
            `${pattern}`,
          ).toBe(true);
      },
      120_000,
    );
  }
});
