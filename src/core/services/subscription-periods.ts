import type { DbManager } from "../db/types.js";
import type { SubscriptionStore } from "../db/types-subscriptions.js";
import type { EntryMeta } from "../domain/account-work.js";
import { fingerprint } from "../domain/hash.js";
import { systemKey } from "../domain/keys.js";
import { liveAt, readExpiry, unspentAtEnd, type ExpiryRead, type PeriodEndExpiry } from "../domain/rollover.js";
import * as rules from "../domain/subscriptions.js";
import { ConflictError, NotFoundError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import type { JournalEntry, Reservation, Subscription, SubscriptionIntent } from "../models/index.js";
import type { CreditCore } from "./credit-core.js";
import type { AdvanceResult } from "./subscription-service.js";

/*
 * Subscription periods (docs/subscriptions.md): bringing a subscription up to a time, one guarded
 * step at a time — the account work its intent owes, in one keyed unit of work on the account, then
 * each renewal or end. `SubscriptionService` (its `advance`, its changes, the renewal job) and the
 * credit service's units of work (a due period brought before the operation) both use it.
 */

const MAX_RACES = 50;

/** What the periods work with. */
export interface PeriodsDeps {
  db: DbManager;
  /** Runs the account's units of work. */
  core: Pick<CreditCore, "runUnitOfWork">;
  ledger?: LedgerLogger | undefined;
  clock: () => Date;
}

export class SubscriptionPeriods {
  constructor(private readonly deps: PeriodsDeps) {}

  /**
   * Brings `userId`'s active subscription when its next step is due (its period ended, or work is
   * owed), as the renewal job would. Resolves to whether one was due (and is now brought).
   */
  async bringDue(userId: string): Promise<boolean> {
    const now = this.deps.clock();
    const s = await this.deps.db.getActiveSubscription(userId);
    if (s === null || s.nextRunAt === null || s.nextRunAt.getTime() > now.getTime()) return false;
    await this.advance(s, now);
    return true;
  }

  /**
   * Brings one subscription up to `now`: completes the account work it owes, then renews (or ends)
   * every period that has ended, one guarded step at a time. Safe to call from several workers at
   * once. Used by the renewal job and `allocateSubscriptionCredits`.
   *
   * A `now` before the clock (a job run with a past `asOf`) brings it up to the clock instead: the
   * account work happens now and cannot be backdated, so moving to a period that has already ended
   * would allocate credits born expired (and roll them over), and leave a result that depends on
   * how the job was run. Periods that ended meanwhile are skipped, as in any late catch-up.
   */
  async advance(subscription: Subscription, asOf: Date = this.deps.clock()): Promise<AdvanceResult> {
    const clock = this.deps.clock();
    const now = asOf.getTime() < clock.getTime() ? clock : asOf;
    const result: AdvanceResult = { subscription, intentsCompleted: 0, renewed: 0, periodsSkipped: 0, ended: 0 };
    let s = subscription;
    for (let step = 0; ; step++) {
      if (step > 10_000) throw new Error(`subscription ${s.id} did not settle`);
      if (s.intent !== null) {
        // Work for a period that has not started yet waits for its start.
        if (s.status === "active" && s.currentPeriodStart.getTime() > now.getTime()) break;
        const done = await this.complete(s, now);
        if (done.completed) result.intentsCompleted++;
        s = done.subscription;
        continue;
      }
      if (s.status !== "active" || s.currentPeriodEnd.getTime() > now.getTime()) break;
      const { value: next, won } = await this.renew(s, now);
      if (!won) {
        s = next; // another worker moved it first: look again
        continue;
      }
      if (next.status === "active") {
        result.renewed++;
        result.periodsSkipped += rules.periodsSkipped(s, next);
      } else {
        result.ended++;
      }
      s = next;
    }
    result.subscription = s;
    return result;
  }

  /** The period end: end the subscription, or move to the period containing `now` and owe its work. */
  private async renew(s: Subscription, now: Date): Promise<{ value: Subscription; won: boolean }> {
    if (!rules.renews(s)) return this.tryWrite(s, (x) => rules.endAtPeriodEnd(x, now), now, false);
    const plan = await this.deps.db.getPlan(s.pendingPlanId ?? s.planId);
    if (plan === null) {
      await this.deps.ledger?.logError(
        "subscription ended: its plan no longer exists",
        { subscriptionId: s.id, planId: s.planId },
        { userId: s.userId },
      );
      return this.tryWrite(s, (x) => rules.endWithoutPlan(x, now), now, false);
    }
    const endingPlan = s.pendingPlanId === null ? plan : await this.deps.db.getPlan(s.planId);
    return this.tryWrite(s, (x) => rules.renew(x, plan, endingPlan, now), now, false);
  }

  /**
   * Carries out the subscription's intent in one unit of work on the account, keyed by the
   * intent's key (a second run replays it), then clears it with a guarded write.
   */
  private async complete(s: Subscription, now: Date): Promise<{ subscription: Subscription; completed: boolean }> {
    const it = s.intent as SubscriptionIntent;
    const meta: EntryMeta = {
      idempotencyKey: systemKey(it.key),
      // Events are not part of it: they may join work already owed (see cancel).
      fingerprint: fingerprint("subscriptionPeriod", { ...it, events: undefined }),
      correlationId: it.key,
      description: `subscription ${s.id}`,
      // A renewal run late is dated at its period's start (docs/concepts.md, "Two times on every entry").
      ...(it.dueAt !== undefined && it.dueAt < now.getTime() ? { occurredAt: new Date(it.dueAt) } : {}),
    };
    let outcome: { created: string[] } | { replayed: JournalEntry } | undefined;
    for (let race = 0; outcome === undefined; race++) {
      // What the period's grants had unspent when they expired, as far as committed work shows it
      // (read outside the unit of work, which checks that nothing changed it since).
      const expiry = it.carry === null ? null : await this.periodEndExpiry(s.userId, it.carry);
      try {
        outcome = await this.deps.core.runUnitOfWork<{ created: string[] } | { replayed: JournalEntry }>(
          s.userId,
          meta,
          async (work, tx) => {
            const ids = rules.intentGrantIds(s, it).filter((id) => work.getGrant(id) === undefined);
            if (ids.length > 0) work.include(await tx.getGrants(ids));
            // The cycle the account's subscription-period alerts count in from now on
            // (docs/customer-state.md, "Alerts"): this unit of work is where it moves.
            work.subscriptionCycle =
              s.status === "active" ? { anchorAt: s.anchorAt.getTime(), billingPeriod: s.billingPeriod } : null;
            return { created: rules.applyIntent(work, s, it, meta, expiry) };
          },
          async (first) => ({ replayed: first }),
          { settle: true, operation: "subscriptionPeriod" },
        );
      } catch (error) {
        if (!(error instanceof rules.ExpiryMoved)) throw error;
        if (race >= MAX_RACES)
          throw new ConflictError(`The credits of subscription ${s.id} kept changing; try again.`, {
            subscriptionId: s.id,
          });
      }
    }
    // Read outside the unit of work: a store with a connection pool must not be asked for a second
    // connection while the unit of work holds one.
    const newGrants = "created" in outcome ? outcome.created : await this.grantsOf(s.userId, outcome.replayed, it.key);
    let completed = false;
    for (let race = 0; ; race++) {
      const current = race === 0 ? s : await this.deps.db.getSubscription(s.id, s.userId);
      if (current === null || current.intent?.key !== it.key) return { subscription: current ?? s, completed };
      const next: Subscription = {
        ...rules.intentDone(current, it, newGrants),
        version: current.version + 1,
        updatedAt: now,
      };
      if (await this.deps.db.updateSubscription(next, current.version)) {
        completed = true;
        return { subscription: next, completed };
      }
      if (race > MAX_RACES)
        throw new ConflictError(`Subscription ${s.id} kept changing; try again.`, { subscriptionId: s.id });
    }
  }

  /**
   * For each of the carried grants that expire at the period's end: how much it has expired in all
   * (`expired`), and how much of that it had unspent and unheld at the period's end (`atExpiry`,
   * src/core/domain/rollover.ts: `readExpiry` tells what came back after the end). Reads the user's
   * `expire` and `reverse` entries newest first, only as far back as each grant's closing entry,
   * and the holds that made those expiries.
   */
  private async periodEndExpiry(
    userId: string,
    carry: NonNullable<SubscriptionIntent["carry"]>,
  ): Promise<PeriodEndExpiry> {
    const out: PeriodEndExpiry = new Map();
    const reading = new Map<string, ExpiryRead>();
    for (const id of carry.grantIds) {
      const g = await this.deps.db.getGrant(id, userId);
      if (g === null || g.userId !== userId || g.expiresAt?.getTime() !== carry.periodEnd) continue;
      const expired = g.expiredAmount ?? 0;
      if (g.closedAt === null || expired === 0) out.set(id, { expired, atExpiry: expired });
      else reading.set(id, { expired, seen: 0, held: 0 });
    }
    const holds = new Map<string, Reservation | null>();
    const holdLive = (reservationId: string) => liveAt(holds.get(reservationId), carry.periodEnd);
    const done = (id: string) => {
      const x = reading.get(id) as ExpiryRead;
      out.set(id, { expired: x.expired, atExpiry: unspentAtEnd(x) });
      reading.delete(id);
    };
    const PAGE = 200;
    let beforeSeq: number | undefined;
    while (reading.size > 0) {
      const page = await this.deps.db.listJournal(userId, {
        order: "desc",
        types: ["expire", "reverse"],
        limit: PAGE,
        ...(beforeSeq === undefined ? {} : { beforeSeq }),
      });
      for (const e of page) {
        const r = e.reservationId;
        if (r !== null && !holds.has(r) && e.grants.some((p) => reading.has(p.grantId)))
          holds.set(r, await this.deps.db.getReservation(r, userId));
        for (const id of readExpiry(reading, e, holdLive)) done(id);
      }
      if (page.length < PAGE) break;
      beforeSeq = (page[page.length - 1] as JournalEntry).seq;
    }
    // Not reached (a journal written before returns were told apart): the best estimate.
    for (const id of [...reading.keys()]) done(id);
    return out;
  }

  /** The grants a completed intent created, from its journal entries (committed, immutable). */
  private async grantsOf(userId: string, first: JournalEntry, key: string): Promise<string[]> {
    // One unit's entries: an expiry, a rollover and an allocation each for the general credits and
    // up to 20 allowances (docs/subscriptions.md, "Allowances"), or a proration of each.
    const entries = await this.deps.db.listJournal(userId, { order: "asc", afterSeq: first.seq - 1, limit: 100 });
    const ids: string[] = [];
    for (const e of entries) {
      if (e.type === "add" && (e.idempotencyKey === key || e.correlationId === key))
        for (const p of e.grants) ids.push(p.grantId);
    }
    return ids;
  }

  /**
   * Applies `change` to the subscription if its stored version is still the one read. On a lost
   * race: `retry` re-reads and applies it again; else returns what the other worker wrote.
   */
  async tryWrite(
    s: Subscription,
    change: (s: Subscription) => Subscription,
    now: Date,
    retry: boolean,
  ): Promise<{ value: Subscription; won: boolean }> {
    let current: Subscription | null = s;
    for (let race = 0; race <= MAX_RACES; race++) {
      if (current === null) throw new NotFoundError(`Subscription ${s.id} not found.`, { subscriptionId: s.id });
      const next: Subscription = { ...change(current), version: current.version + 1, updatedAt: now };
      if (await this.deps.db.updateSubscription(next, current.version)) return { value: next, won: true };
      current = await this.deps.db.getSubscription(s.id, s.userId);
      if (!retry && current !== null) return { value: current, won: false };
    }
    throw new ConflictError(`Subscription ${s.id} kept changing; try again.`, { subscriptionId: s.id });
  }
}

/** The plan id of `userId`'s active subscription, or null (none, or a store without subscriptions). */
export async function activePlanId(db: DbManager, userId: string): Promise<string | null> {
  return (await activeSubscription(db, userId))?.planId ?? null;
}

export async function activeSubscription(db: DbManager, userId: string): Promise<Subscription | null> {
  if (db.capabilities.parts?.subscriptions === false) return null;
  const store = db as Partial<SubscriptionStore>;
  return store.getActiveSubscription === undefined ? null : store.getActiveSubscription(userId);
}
