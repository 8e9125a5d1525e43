import type { Logger } from "../../core/logger.js";
import type { Cache } from "../../core/cache/index.js";
import type { DbManager } from "../../core/db/types.js";
import { fingerprint } from "../../core/domain/hash.js";
import type { Thresholds } from "../../core/domain/notifications.js";
import { promoEligibility } from "./rules-promos.js";
import { ConflictError, NotFoundError, ValidationError } from "../../core/errors.js";
import { PromoNotEligibleError } from "./errors.js";
import type { LedgerLogger } from "../../core/ledger/index.js";
import {
  ClaimPromoOptions,
  CreatePromoInput,
  PromoCode,
  UserId,
  parse,
  type JournalEntry,
  type Promo,
  type PromoClaim,
  type PromoEligibility,
} from "../../models-entry.js";
import * as z from "zod/mini";
import { billingDeps, runBillingUnit, type BillingDeps } from "./service-units.js";
import { BILLING, billingTx } from "./store.js";
import type { CreditService } from "../../credit-service.js";
import { newId } from "../../core/util/uuid.js";

/**
 * Options of `new PromoService()`: the store, the credit service, the ledger, the cache, the clock and the
 * logger. @public
 */
export interface PromoServiceOptions {
  /** The store. */
  db: DbManager;
  /**
   * Runs the account's units of work — pass the one your application uses (as `createCreditManager`
   * does), so its notification thresholds apply to promo claims too. Default: a
   * `CreditService` over `db` with the `alerts` below.
   */
  credits?: CreditService;
  /**
   * Without `credits`: the thresholds of the `CreditService` built here (`CreditService({ alerts })`),
   * so its changes record notification events (low_credits, credits_exhausted, balance_restored, …)
   * like every other change of the account. Omitted: none are recorded (and a warning is logged the
   * first time it changes an account another service records alerts for). With `credits`: a
   * `ConfigurationError` (that service's own `alerts` apply).
   */
  alerts?: Thresholds;
  /** The audit ledger; omit for none. */
  ledger?: LedgerLogger;
  /** Caches promo reads. Never consulted for a decision that moves credits. */
  cache?: Cache;
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  /** Where warnings and errors are logged. Default: none. */
  logger?: Logger;
}

/** What `claimPromo` resolves to. @public */
export interface PromoClaimResult {
  /** The claim recorded. */
  claim: PromoClaim;
  /** The `add` journal entry (its grant has source `promo` and sourceRef the code). */
  entry: JournalEntry;
}

/** A page of promos, newest first. @public */
export interface PromoPage {
  /** The promos of this page, newest first. */
  items: Promo[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

/** A page of `promos.listPromos()`: its size and the cursor of the previous page. @public */
const ListPromosQuery = z.strictObject({
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
  cursor: z.optional(z.string().check(z.minLength(1), z.maxLength(300))),
});
/** A page of `promos.listPromos()`: its size and the cursor of the previous page. @public */
export type ListPromosQuery = z.input<typeof ListPromosQuery>;

/** Attempts of a claim that lost a race on the promo's counter before it re-checks and gives up. */
const CLAIM_ATTEMPTS = 8;

/**
 * Promo codes: create, list, activate, check and claim. A claim is one unit of work on the
 * claiming user's account that checks eligibility, takes a use from the promo's counter with a
 * guarded write in the same transaction, records the claim and adds the grant — all or nothing.
 * @public
 */
export class PromoService {
  private readonly deps: BillingDeps;

  /** A promo service over `options.db`; `createCreditManager` builds one. */
  constructor(options: PromoServiceOptions) {
    this.deps = billingDeps(options, "PromoService");
  }

  /** Creates a promo. Codes are case-insensitive and unique (`ConflictError` on a duplicate). */
  async createPromo(input: CreatePromoInput): Promise<Promo> {
    const i = parse(CreatePromoInput, input, "input");
    if (i.validFrom !== undefined && i.validUntil !== undefined && i.validUntil.getTime() <= i.validFrom.getTime()) {
      throw new ValidationError("Invalid input.validUntil: must be after validFrom", [
        { path: "validUntil", message: "must be after validFrom" },
      ]);
    }
    const now = this.deps.clock();
    const promo: Promo = {
      code: i.code,
      credits: i.credits,
      creditsExpireInDays: i.creditsExpireInDays ?? null,
      userIds: i.userIds === undefined ? null : [...new Set(i.userIds)],
      maxUses: i.maxUses ?? null,
      maxUsesPerUser: i.maxUsesPerUser ?? 1,
      validFrom: i.validFrom ?? null,
      validUntil: i.validUntil ?? null,
      isActive: i.isActive ?? true,
      uses: 0,
      description: i.description ?? null,
      metadata: i.metadata ?? null,
      createdAt: now,
      updatedAt: now,
    };
    try {
      await this.deps.db.insertPromo(promo);
    } catch (error) {
      if (error instanceof ConflictError) {
        throw new ConflictError(`Promo code ${promo.code} already exists.`, { code: promo.code }, error);
      }
      throw error;
    }
    return promo;
  }

  /** Promos, newest first, with their claim counts (`uses`). */
  async listPromos(query: ListPromosQuery = {}): Promise<PromoPage> {
    const q = parse(ListPromosQuery, query, "query");
    const limit = q.limit ?? 100;
    const before = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const rows = await this.deps.db.listPromos({
      limit: limit + 1,
      before: before && { createdAt: before.at, code: before.id },
    });
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? encodeCursor(last.createdAt, last.code) : null };
  }

  /** A promo by code (case-insensitive). */
  async getPromo(code: string): Promise<Promo> {
    const c = parse(PromoCode, code, "code");
    const p = await this.deps.db.getPromo(c);
    if (p === null) throw new NotFoundError(`Promo code ${c} not found.`, { code: c });
    return p;
  }

  /** Turns a promo on or off. Claims already made stay. */
  async setPromoActive(code: string, isActive: boolean): Promise<Promo> {
    const c = parse(PromoCode, code, "code");
    const a = parse(z.boolean(), isActive, "isActive");
    const p = await this.deps.db.setPromoActive(c, a, this.deps.clock());
    if (p === null) throw new NotFoundError(`Promo code ${c} not found.`, { code: c });
    return p;
  }

  /** Whether `userId` may claim `code` now, or the reason why not. Changes nothing. */
  async checkEligibility(userId: string, code: string): Promise<PromoEligibility> {
    const user = parse(UserId, userId, "userId");
    const c = parse(PromoCode, code, "code");
    const [promo, claimed] = await Promise.all([this.deps.db.getPromo(c), this.deps.db.countPromoClaims(c, user)]);
    return promoEligibility(c, promo, user, claimed, this.deps.clock());
  }

  /**
   * Claims `code` for `userId`: a grant of the promo's credits (source `promo`, sourceRef the code,
   * expiring `creditsExpireInDays` after the claim if set). `PromoNotEligibleError` (with `reason`)
   * when the user may not claim it; nothing is changed then.
   */
  async claimPromo(userId: string, code: string, options: ClaimPromoOptions = {}): Promise<PromoClaimResult> {
    const user = parse(UserId, userId, "userId");
    const c = parse(PromoCode, code, "code");
    const o = parse(ClaimPromoOptions, options, "options");
    const meta = {
      idempotencyKey: o.idempotencyKey,
      fingerprint: o.idempotencyKey === undefined ? undefined : fingerprint("claimPromo", { code: c }),
      correlationId: o.correlationId,
      description: `Promo code ${c}`,
    };
    for (let attempt = 1; ; attempt++) {
      try {
        return await runBillingUnit<{ claim: PromoClaim | null; entry: JournalEntry }>(
          this.deps,
          "claimPromo",
          user,
          meta,
          async (work, tx) => {
            const [promo, claimed] = await Promise.all([
              billingTx(tx, this.deps.db.name).getPromo(c),
              billingTx(tx, this.deps.db.name).countPromoClaims(c),
            ]);
            const e = promoEligibility(c, promo, user, claimed, work.now);
            if (!e.eligible) throw new PromoNotEligibleError(c, e.reason, e.message);
            const p = promo as Promo;
            const expiresAt =
              p.creditsExpireInDays === null ? null : new Date(work.now.getTime() + p.creditsExpireInDays * 86_400_000);
            const entry = work.add(
              p.credits,
              {
                expiresAt,
                priority: 0,
                source: "promo",
                sourceRef: p.code,
                description: meta.description,
                metadata: null,
              },
              meta,
            );
            const claim: PromoClaim = {
              id: newId(),
              code: p.code,
              userId: user,
              claimNumber: claimed + 1,
              credits: p.credits,
              grantId: entry.grants[0]?.grantId ?? null,
              entryId: entry.id,
              createdAt: work.now,
            };
            return { value: { claim, entry }, extra: { [BILLING]: { promoClaims: [claim] } } };
          },
          // A repeated key: the claim is looked up after the transaction (reads outside `tx`
          // inside it could wait for a connection that units of work like this one hold).
          async (entry) => ({ claim: null, entry }),
        ).then(async (r) => {
          if (r.claim !== null) return { claim: r.claim, entry: r.entry };
          const claim = (await this.deps.db.listPromoClaims(user)).find((x) => x.entryId === r.entry.id);
          if (claim === undefined)
            throw new NotFoundError(`Claim of idempotency key ${r.entry.idempotencyKey} not found.`);
          return { claim, entry: r.entry };
        });
      } catch (error) {
        // The promo's guarded counter or the claim's unique index refused the save (a concurrent
        // claim won): run again; the fresh read then says "exhausted" or "already claimed".
        if (error instanceof ConflictError && attempt < CLAIM_ATTEMPTS) continue;
        if (error instanceof ConflictError) {
          const e = await this.checkEligibility(user, c);
          if (!e.eligible) throw new PromoNotEligibleError(c, e.reason, e.message);
        }
        throw error;
      }
    }
  }

  /** A user's claims, oldest first. */
  async listClaims(userId: string): Promise<PromoClaim[]> {
    return this.deps.db.listPromoClaims(parse(UserId, userId, "userId"));
  }
}

/** Opaque page cursor: base64url of `<ms>:<id>`. @internal */
export function encodeCursor(at: Date, id: string): string {
  return Buffer.from(`${at.getTime()}:${id}`).toString("base64url");
}

/** @internal */
export function decodeCursor(cursor: string): { at: Date; id: string } {
  const s = Buffer.from(cursor, "base64url").toString();
  const i = s.indexOf(":");
  const ms = Number(s.slice(0, i));
  if (i < 1 || !Number.isSafeInteger(ms)) {
    throw new ValidationError("Invalid cursor: not one this library returned", [
      { path: "cursor", message: "invalid" },
    ]);
  }
  return { at: new Date(ms), id: s.slice(i + 1) };
}
