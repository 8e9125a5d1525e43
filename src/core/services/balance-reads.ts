import { own } from "../domain/own.js";
import type { CacheAside } from "../cache/aside.js";
import type { AccountCredits, DbManager } from "../db/types.js";
import type { AccountWork } from "../domain/account-work.js";
import type { Spend } from "../domain/limits.js";
import { outOfScope, scopedTotals } from "../domain/scope.js";
import type { Account, CreditsInfo, SpendLimit } from "../models/index.js";
import { infoKey, type UnitRunner } from "./unit-of-work.js";

/**
 * What `CreditService` reads of an account's balance and limits (`getUserCreditsInfo`, `check`,
 * `getLimits`): settled, from the cache when there is one, and never stale after the account's own
 * writes (docs/storage.md, "Caches: what each may answer").
 */
export class BalanceReads {
  constructor(
    private readonly db: DbManager,
    private readonly cache: CacheAside | undefined,
    private readonly clock: () => Date,
    private readonly units: UnitRunner,
  ) {}

  /**
   * The account's credits and spend limits, settled, from the cache when there is one. With
   * `spend`, `available` is what it may use and `scoped` the totals per scope: an account given
   * scoped grants is then answered from one read of the store (its state and grants at one
   * snapshot, `settled`), never from the cache, which keeps one answer per account.
   * `fresh`: read from the store by this call.
   */
  async state(user: string, spend: Spend | null): Promise<CreditsState> {
    const now = this.clock();
    const cache = this.cache;
    if (cache === undefined) return this.stateOf(user, await this.settled(user, now), spend, now);
    const key = infoKey(user);
    const hit = await cache.get<{
      info: CreditsInfo;
      validUntil: number | null;
      limits?: SpendLimit[] | null;
      scoped?: boolean;
    }>(key);
    // Valid until the next expiry by *our* clock (the cache's TTL runs on its own clock).
    if (hit !== undefined && (hit.validUntil === null || now.getTime() < hit.validUntil)) {
      if (hit.scoped !== true || spend === null)
        return { info: { ...hit.info }, limits: hit.limits ?? null, fresh: false };
      return this.stateOf(user, await this.settled(user, now), spend, now);
    }
    const read = await cache.readThrough(
      key,
      () => this.settled(user, now),
      ({ account }) => ({
        info: creditsInfo(user, account),
        validUntil: account?.nextExpiryAt ? account.nextExpiryAt.getTime() : null,
        limits: account?.limits ?? null,
        scoped: account?.scoped === true,
      }),
    );
    return this.stateOf(user, read, spend, now);
  }

  /** What `state` answers from a read of the store. */
  stateOf(user: string, read: AccountCredits, spend: Spend | null, now: Date): CreditsState {
    const info = creditsInfo(user, read.account);
    if (read.grants !== null && spend !== null) {
      // The default unit's scoped grants (docs/units.md).
      const grants = read.account?.units == null ? read.grants : read.grants.filter((g) => (g.unit ?? null) === null);
      info.available -= outOfScope(grants, spend, now);
      info.scoped = scopedTotals(grants, now);
      // Each other unit's `available` as the default unit's: less its own scoped grants `spend` may not use.
      for (const [unit, f] of Object.entries(info.units ?? {}))
        f.available -= outOfScope(
          read.grants.filter((g) => g.unit === unit),
          spend,
          now,
        );
    }
    return { info, limits: read.account?.limits ?? null, fresh: true };
  }

  /**
   * The account settled at `now`, with its open grants when it has been given a scoped grant, in
   * one read: the store's `getAccountCredits` (one snapshot; one round trip on PostgreSQL); or,
   * on a store without it, `getAccount` and, for a scoped account, its state in one unit of work.
   * When an expiry is due, one unit of work settles it and answers with what it left.
   */
  async settled(user: string, now: Date): Promise<AccountCredits> {
    const db = this.db;
    let read: AccountCredits;
    if (db.getAccountCredits !== undefined) read = await db.getAccountCredits(user);
    else {
      const account = await db.getAccount(user);
      read = { account, grants: null };
      if (account?.scoped === true) {
        const state = await db.transaction(user, (tx) => tx.load());
        read = { account: state.account, grants: state.account?.scoped === true ? [...state.grants] : null };
      }
    }
    const next = read.account?.nextExpiryAt;
    if (next == null || next.getTime() > now.getTime()) return read;
    return this.units.mutate("settle", user, {}, workCredits);
  }
}

/** What a unit of work leaves of the account, as `settled` answers (null: it made none). */
export function workCredits(work: AccountWork): AccountCredits {
  if (work.isNew && !work.changed) return { account: null, grants: null };
  return { account: { ...work.account }, grants: work.account.scoped === true ? work.openGrants() : null };
}

/** What `check()`, `getUserCreditsInfo()` and `getLimits()` read of an account. */
export interface CreditsState {
  info: CreditsInfo;
  limits: SpendLimit[] | null;
  /** Read from the store by this call (not from the cache). */
  fresh: boolean;
}

/** What `getUserCreditsInfo` answers for an account as read (none yet: all zero), as a new object. */
export function creditsInfo(userId: string, account: Account | null): CreditsInfo {
  if (account === null) return { userId, balance: 0, reserved: 0, available: 0, debt: 0 };
  const info: CreditsInfo = {
    userId,
    balance: account.balance,
    reserved: account.reserved,
    available: account.balance - account.reserved,
    debt: account.debt,
  };
  // Every other unit beside, never added to the default one (docs/units.md).
  const units = account.units;
  if (units != null) {
    const out: NonNullable<CreditsInfo["units"]> = {};
    for (const [unit, f] of Object.entries(units))
      out[unit] = { balance: f.balance, reserved: f.reserved, available: f.balance - f.reserved, debt: f.debt };
    if (Object.keys(out).length > 0) info.units = out;
  }
  return info;
}

/**
 * `info` answered in `unit` (docs/units.md): its figures that unit's, scoped grants of that unit
 * only (`grants`: the account's open grants, when read). The default unit (null): `info` as it is.
 */
export function inUnit(info: CreditsInfo, unit: string | null): CreditsInfo {
  if (unit === null) return info;
  const f = own(info.units, unit) ?? { balance: 0, reserved: 0, available: 0, debt: 0 };
  const { scoped: _default, units: _all, ...rest } = info;
  return { ...rest, unit, ...f };
}
