import { notificationsPart } from "../parts.js";
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import {
  ConflictError,
  InsufficientCreditsError,
  ReservationExpiredError,
  ReservationNotActiveError,
} from "../errors.js";
import type { AlertThreshold, Reservation } from "../models/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { NotificationService } from "../services/notification-service.js";
import { AlertModel } from "./alert-model.js";
import { CreditModel, type ModelHold } from "./model.js";
import { DAY, lazy, serviceWithClock, T0, type PartOptions } from "./support.js";

/** Random operation sequences against the real service and an independent model (fast-check). @beta */
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

export function commandsArbitrary(length: { min: number; max: number } = { min: 1, max: 40 }): fc.Arbitrary<Command[]> {
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
  return fc.array(command, { minLength: length.min, maxLength: length.max });
}

/**
 * Runs `commands` on a fresh user of `db` and on the model; throws on the first disagreement. With
 * `alerts`, every account has those alert thresholds, and the alert events the store records must
 * be, one by one, those `AlertModel` predicts (docs/notifications.md, "Alerts"): the account is
 * evaluated before each command (what the clock moved) and by the command's own unit of work. The
 * clock then starts 10 minutes before a UTC midnight, so spend windows end during a run.
 */
export async function runAgainstModel(
  db: DbManager,
  commands: readonly Command[],
  alerts?: readonly AlertThreshold[],
  stats?: { events: number; onLine: number },
): Promise<void> {
  const u = `prop-${randomUUID()}`;
  const { credits, clock } =
    alerts === undefined ? serviceWithClock(db, T0, "unlimited") : alertServices(db, [...alerts], T0 + DAY - 600_000);
  const notifications =
    alerts === undefined
      ? null
      : new NotificationService({ db, clock: () => new Date(clock.now), alerts: [...alerts] });
  const watch = alerts === undefined ? null : new AlertModel(alerts);
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

  /** Evaluates what the clock moved, in the store (a settling read, then `evaluateAlerts`) and the model. */
  let evaluatedAt = clock.now;
  const evaluateNow = async () => {
    // Only time moves anything between two commands: nothing to evaluate while the clock stood still.
    if (notifications === null || watch === null || clock.now === evaluatedAt) return;
    evaluatedAt = clock.now;
    model.now = clock.now;
    model.settle();
    await credits.getUserCreditsInfo(u);
    await notifications.evaluateAlerts(u);
    watch.evaluate(model);
  };

  for (const [step, c] of commands.entries()) {
    const what = `step ${step} ${JSON.stringify(c)}`;
    await evaluateNow();
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
        if (watch !== null) {
          watch.changed = true;
          watch.added(model, gid);
        }
        break;
      }
      case "deduct":
      case "after": {
        model.settle();
        // The model refuses before changing anything, like the service.
        const allowed = model.deduct(c.amount, c.op === "after");
        if (allowed && watch !== null) {
          watch.changed = true;
          watch.spend(c.amount, clock.now);
        }
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
          if (watch !== null) watch.changed = true;
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
          if (c.op === "commit") watch?.spend(c.amount ?? h.real.amount, clock.now);
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
    // The model's events so far; the store's are compared once, at the end (fewer reads per step).
    watch?.evaluate(model);
    await expectNextExpiry(db, u, what);
  }
  if (notifications !== null && watch !== null) {
    await evaluateNow();
    await expectAlertEvents(notifications, u, watch, "at the end");
    if (stats !== undefined) {
      stats.events += watch.events.length;
      stats.onLine += watch.onLine;
    }
  }
  const report = await credits.audit(u);
  if (!report.ok) throw new Error(`audit failed: ${report.problems.join("; ")}`);
  if (report.balance !== model.balance || report.reserved !== model.reserved || report.debt !== model.debt) {
    throw new Error(`audit ${JSON.stringify(report)} disagrees with the model`);
  }
  const account = await db.getAccount(u);
  if (account !== null && account.seq !== report.entries) throw new Error("seq is not gap-free");
}

/** The services of an account whose alert thresholds are `alerts`, on a clock starting at `start`. */
function alertServices(db: DbManager, alerts: AlertThreshold[], start: number) {
  const clock = { now: start };
  const credits = new CoreCreditService({
    db,
    clock: () => new Date(clock.now),
    notifications: notificationsPart({ alerts }),
    overdraftLimit: "unlimited",
  });
  return { credits, clock };
}

/** The store's alert events of `u` are the model's, one by one (type, thresholds and values). */
async function expectAlertEvents(
  notifications: NotificationService,
  u: string,
  watch: AlertModel,
  what: string,
): Promise<void> {
  const rows = await notifications.list(u, { limit: 1000 });
  const got = rows.flatMap((r) => {
    if (r.type === "alert_triggered") return [`triggered:${String(r.payload.thresholdId)}=${String(r.payload.value)}`];
    if (r.type !== "alert_resolved") return [];
    const list = r.payload.resolved as { thresholdId: string; value: number | null }[];
    return [`resolved:${list.map((x) => `${x.thresholdId}=${String(x.value)}`).join(",")}`];
  });
  if (JSON.stringify(got) !== JSON.stringify(watch.events)) {
    throw new Error(`${what}: alert events ${JSON.stringify(got)} != model ${JSON.stringify(watch.events)}`);
  }
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
