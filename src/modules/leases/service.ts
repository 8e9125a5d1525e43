import { randomUUID } from "node:crypto";
import type * as Fs from "node:fs";
import type * as Readline from "node:readline";
import { ConfigurationError } from "../../core/errors.js";
import type { LedgerLogger } from "../../core/ledger/index.js";
import {
  addLeaseLine,
  addLeasePart,
  blockServes,
  leaseLineOf,
  leaseWindowParts,
  type FileWindow,
  type LeaseChargeDims,
  type LeasePart,
  type LeaseSizing,
} from "./rules.js";
import { Amount, LeaseChargeOptions, LeaseOptions, UserId, parse, type JournalEntry } from "../../models-entry.js";
import type { ModuleContext } from "../../core/module.js";
import { leaseHold, settleLease, type LeaseHold, type LeaseSettle, type LeaseSettled } from "./service-settle.js";
import {
  MeterSession,
  type MeterLease,
  type MeterOutcome,
  type SessionDeps,
  type SetAside,
} from "../metering/service.js";
import { FeatureName, SpenderId, type MeterOptions } from "../../models-entry.js";
import { parseConfig, wellFormed } from "../../core/models/parse.js";
import { DEFAULT_UNIT } from "../../core/models/common.js";
import { nodeBuiltin } from "../../core/util/runtime.js";

/** What one `charge()` did. @public */
export interface LeaseCharge {
  /** The account charged. */
  userId: string;
  /** Credits charged. */
  amount: number;
  /** `lease`: served from the user's block in memory, settled with its window; `exact`: a deduction of its own. */
  via: "lease" | "exact";
  /** The deduction of an exact charge; null for a leased one (its window's settle entry comes later). */
  entry: JournalEntry | null;
}

/** What `recover()` settled for a predecessor that died with unsettled windows in the ledger file. @public */
export interface LeaseRecovery {
  /** Windows settled now (each once: a window already settled is answered by its key). */
  windows: number;
  /** Requests and credits those windows charged. */
  requests: number;
  /** Credits recovered. */
  credits: number;
}

/** @internal What leases use of the core (their module's context): its exact deduction, lease settles, metering, ledger, logger and clock. */
export type LeaseCore = Pick<ModuleContext, "deduct" | "unitOf" | "clock" | "realClock"> &
  SessionDeps & {
    /** Settles a window of a lease in one keyed unit of work (./service-settle.ts). */
    settleLease(userId: string, s: LeaseSettle): Promise<LeaseSettled>;
    /** The active hold a lease's settle placed for `window`, or null. */
    leaseHold(userId: string, lease: string, window: number): Promise<LeaseHold | null>;
  };

/** What leases use of the module context `ctx`: metering's part (`session`), the exact deduction and the settles. @internal */
export function leaseCore(ctx: ModuleContext, session: SessionDeps): LeaseCore {
  return {
    ...session,
    deduct: ctx.deduct,
    unitOf: ctx.unitOf,
    clock: ctx.clock,
    realClock: ctx.realClock,
    settleLease: (userId, s) => settleLease(ctx, userId, s),
    leaseHold: (userId, lease, window) => leaseHold(ctx.db, userId, lease, window),
  };
}

/** One user's lease in this process (for a spender and feature, on an account where they matter). */
interface UserLease {
  readonly userId: string;
  /** Its key in `users`: the user id, or `leaseKey(user, spender, feature)` for a named lease. */
  readonly key: string;
  /** A named lease's spender and feature (docs/teams-and-limits.md, "Leases"); undefined: unnamed. */
  readonly spender: string | undefined;
  readonly feature: string | undefined;
  /** The unit its block is held and settled in (docs/units.md); undefined: the default unit. */
  readonly unit: string | undefined;
  /** `"userId"` as JSON, for the ledger lines. */
  readonly userJson: string;
  readonly lease: string;
  window: number;
  holdId: string | null;
  held: number;
  /** Charges are served from the block until then (ms), well before its hold lapses. */
  serveUntil: number;
  used: number;
  requests: number;
  /**
   * Credits of metered calls in flight held inside this block (`openMeter`): not charged yet, but
   * not free for other charges either. Carried into the next block when the window rolls.
   */
  pending: number;
  /** The window's usage by feature, spender and model; null until a charge names one. */
  parts: Map<string, LeasePart> | null;
  /** True while charges may be served from the block (not while it settles, nor after a failed settle). */
  open: boolean;
  /** Opened since the last tick: not idle yet. */
  fresh: boolean;
  settling: Promise<void> | null;
}

const DEFAULTS = { size: 1000, ttlSeconds: 60, settleEveryMs: 1000, exactBelow: 4, share: 0.5 };

/**
 * Credit leases (docs/metering.md, "Leases"), from `credits.leases(options)`: this process holds a
 * block of each busy user's credits (one unit of work), serves `charge()` from it in memory, and
 * settles what it used in one journal entry per window — every `settleEveryMs`, when the block runs
 * out, or to end an idle lease — holding the next block in the same unit of work. Each settle is
 * keyed by lease and window, so a retried or recovered settle charges once. With the ledger file
 * on, each leased charge is a line of it (`eventType: "lease"`), flushed before its window settles;
 * `recover()` settles what a process that died on that file used and did not settle.
 * @public
 */
export class CreditLeases {
  /** By user id (a lease naming nobody), or `leaseKey` (a lease for a spender and feature). */
  private readonly users = new Map<string, UserLease>();
  /** Leases (by key) on the exact path (too few credits, or too little under a limit, for a block) until then (ms). */
  private readonly exactUntil = new Map<string, number>();
  /**
   * Users whose account has spend limits or scoped grants, as the last settle saw it: their charges
   * naming a spender or feature are served from a lease for that spender and feature, whose hold
   * names them (docs/teams-and-limits.md, "Leases"). Elsewhere they share the user's block.
   */
  private readonly aware = new Set<string>();
  private readonly sizing: LeaseSizing;
  /** The unit of its blocks and charges (`LeaseOptions.unit`); undefined: the default unit. */
  private readonly unit: string | undefined;
  private readonly ttlSeconds: number;
  private readonly every: number;
  /** How long before its hold lapses a block stops serving (ms). */
  private readonly margin: number;
  private readonly timer: NodeJS.Timeout;
  private readonly file: LedgerLogger | undefined;
  private closed = false;
  private closing: Promise<void> | null = null;
  private lastReason: string | undefined;
  private lastReasonJson = "";
  /**
   * Now, in ms, by the manager's clock: a block's hold lapses and a limit window ends by that
   * clock (the store's units of work read it), so a block serves by it too.
   */
  private readonly now: () => number;

  /** @internal Made by `credits.leases(options)`. */
  constructor(
    private readonly core: LeaseCore,
    options: LeaseOptions = {},
  ) {
    const o = parseConfig(LeaseOptions, options ?? {}, "options", "leases");
    // The manager's `clock` (docs/api.md): blocks and limit windows end by it. The real one: `Date.now()`.
    const clock = core.clock;
    this.now = core.realClock ? Date.now : () => clock().getTime();
    this.sizing = {
      size: o.size ?? DEFAULTS.size,
      exactBelow: o.exactBelow ?? DEFAULTS.exactBelow,
      share: o.share ?? DEFAULTS.share,
    };
    this.unit = o.unit === DEFAULT_UNIT ? undefined : o.unit;
    this.ttlSeconds = o.ttlSeconds ?? DEFAULTS.ttlSeconds;
    this.every = o.settleEveryMs ?? DEFAULTS.settleEveryMs;
    if (this.every >= this.ttlSeconds * 1000) {
      throw new ConfigurationError(
        `Lease options: settleEveryMs (${this.every}) must be shorter than the hold's TTL (${this.ttlSeconds} s).`,
      );
    }
    this.margin = Math.min(this.ttlSeconds * 500, 2 * this.every);
    this.file = core.ledger?.filePath != null ? core.ledger : undefined;
    this.timer = setInterval(() => this.tick(), this.every);
    this.timer.unref();
  }

  /** Users with a block in this process now. */
  get size(): number {
    return this.users.size;
  }

  /**
   * Charges `amount` credits to `userId`. When the user's block covers it, the charge is served in
   * memory and the answer is there at once (not a promise: `await` it all the same); otherwise it
   * opens or rolls the block, or takes the exact path (a keyed charge, a small balance, an amount
   * bigger than a block) and resolves once the deduction is stored. `InsufficientCreditsError` when
   * the exact path refuses it.
   */
  charge(userId: string, amount: number, options?: LeaseChargeOptions): LeaseCharge | Promise<LeaseCharge> {
    // The fast path takes only what it can check as `parse` would, cheaply; anything else goes
    // through `slow`, which validates it (a ValidationError, nothing counted).
    if (options === undefined || servedInMemory(options)) {
      const key = this.tryKey(userId, options?.spender, options?.feature);
      const l = key === null ? undefined : this.users.get(key);
      if (l !== undefined && Number.isSafeInteger(amount) && amount > 0 && blockServes(l, amount, this.now()))
        return this.serve(l, amount, options?.reason, "", dimsOf(options));
    }
    return this.slow(userId, amount, options);
  }

  /** True when `userId`'s block in this process covers `amount` now (a charge of it would be served in memory). */
  covers(userId: string, amount: number, spend?: LeaseSpend): boolean {
    const key = this.meteredKey(userId, spend?.spender, spend?.feature);
    const l = key === null ? undefined : this.users.get(key);
    return l !== undefined && blockServes(l, amount, this.now());
  }

  /** The fast path alone: true when the user's block covered `amount` (charged), false otherwise (nothing done). */
  tryCharge(userId: string, amount: number, reason?: string, spend?: LeaseSpend): boolean {
    const key = this.meteredKey(userId, spend?.spender, spend?.feature);
    const l = key === null ? undefined : this.users.get(key);
    if (l === undefined || !Number.isSafeInteger(amount) || amount <= 0 || !blockServes(l, amount, this.now()))
      return false;
    if (reason !== undefined && !isReason(reason)) return false;
    if (spend !== undefined && !servedInMemory(spend)) return false;
    this.take(l, amount, reason, "", dimsOf(spend));
    return true;
  }

  /**
   * The key of the lease that serves `userId`'s charges for `spender` and `feature`: the user's own
   * (one block for all of its charges) unless the account has spend limits or scoped grants and the
   * charge names one of them (docs/teams-and-limits.md, "Leases").
   */
  private keyOf(userId: string, spender: string | undefined, feature: string | undefined): string {
    const base =
      (spender === undefined && feature === undefined) || !this.aware.has(userId)
        ? userId
        : leaseKey(userId, spender, feature);
    // A charge of a feature paid in another unit (docs/units.md) has a block of that unit.
    const unit = this.unitFor(feature);
    return unit === this.unit ? base : `${base}\u0001${unit ?? ""}`;
  }

  /** `keyOf`, or null when the charge's feature is paid in another unit than this lease's (a `ValidationError` on the exact path). */
  private tryKey(userId: string, spender: string | undefined, feature: string | undefined): string | null {
    try {
      return this.keyOf(userId, spender, feature);
    } catch {
      return null;
    }
  }

  /**
   * `tryKey` for the metering middlewares, which spend in the unit the feature names (or the
   * default one) when they hold in the store: null when this lease's unit is another.
   */
  private meteredKey(userId: string, spender: string | undefined, feature: string | undefined): string | null {
    const key = this.tryKey(userId, spender, feature);
    if (key === null || this.unit === undefined) return key;
    const own = feature === undefined ? undefined : this.core.unitOf(feature, undefined);
    return own === this.unit ? key : null;
  }

  /** The unit of a charge of `feature`: its rule's, else this lease's (another: `ValidationError`, docs/units.md). */
  private unitFor(feature: string | undefined): string | undefined {
    return feature === undefined ? this.unit : this.core.unitOf(feature, this.unit);
  }

  /** Settles every window with usage now (rolling the blocks) and writes the ledger file. */
  async flush(): Promise<void> {
    await this.settleAll(true);
    await this.file?.flush();
  }

  /** Settles everything and returns every block; later charges are refused. Idempotent. */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closed = true;
    clearInterval(this.timer);
    this.closing = (async () => {
      await this.settleAll(false);
      await this.file?.flush();
    })();
    return this.closing;
  }

  /**
   * Settles, exactly once, the windows a process that died on this manager's ledger file used and
   * did not settle: a window whose hold is still active is committed against it; a lapsed one is
   * charged as a keyed after-service deduction. A window already settled is answered by its key and
   * charges nothing. Call it at startup, before serving; the file must be this process's own (one
   * ledger file per process). Without a ledger file there is nothing to recover.
   */
  async recover(): Promise<LeaseRecovery> {
    const report: LeaseRecovery = { windows: 0, requests: 0, credits: 0 };
    const ledger = this.file;
    if (ledger === undefined || ledger.filePath === null) return report;
    await ledger.flush();
    const windows = new Map<string, FileWindow>();
    // Loaded here, where the ledger file is read, not at import (docs/runtimes.md).
    const input = nodeBuiltin<typeof Fs>("node:fs").createReadStream(ledger.filePath, { encoding: "utf8" });
    const lines = nodeBuiltin<typeof Readline>("node:readline").createInterface({ input, crlfDelay: Infinity });
    for await (const text of lines) {
      if (!text.includes('"eventType":"lease"')) continue;
      let line;
      try {
        line = leaseLineOf(JSON.parse(text));
      } catch {
        continue; // a line cut by the crash
      }
      if (line !== null) addLeaseLine(windows, line);
    }
    const mine = new Set([...this.users.values()].map((l) => l.lease));
    for (const w of windows.values()) {
      if (w.settled || mine.has(w.lease) || (w.requests === 0 && w.reservationId === null)) continue;
      const s = {
        lease: w.lease,
        window: w.window,
        holdId: w.reservationId,
        used: w.total,
        requests: w.requests,
        spender: w.spender,
        feature: w.feature,
        ...(w.unit === undefined ? {} : { unit: w.unit }),
      };
      const r = await this.core.settleLease(w.userId, { ...s, roll: null });
      this.settledLine(JSON.stringify(w.userId), w.lease, w.window, r.entry);
      if (!r.replayed) {
        report.windows++;
        report.requests += w.requests;
        report.credits += w.total;
      } else if (!windows.has(`${w.lease}:${w.window + 1}`)) {
        // Settled before the crash, the next block unrecorded: return it now, under its own key.
        const next = await this.core.leaseHold(w.userId, w.lease, w.window + 1);
        if (next !== null)
          await this.core.settleLease(w.userId, {
            ...s,
            window: w.window + 1,
            holdId: next.id,
            used: 0,
            requests: 0,
            roll: null,
          });
      }
    }
    await ledger.flush();
    return report;
  }

  /**
   * A metered call (estimate, then usage: the metering middlewares' `lease` option
   * without `price`) served from `userId`'s block: the estimate is held inside the block in memory,
   * and the session's commit charges the usage from the block (a line of the window, settled with
   * it) or, when the block no longer covers it, as an after-service deduction. Null when the block
   * does not cover the estimate now (or there is none, or the call is keyed): the caller places a
   * hold in the store as without a lease. Opens (or rolls) no block itself: `warm` does.
   * @beta
   */
  openMeter(userId: string, options: MeterOptions): MeterSession | null {
    // A keyed call, and one with metadata (a window's entry cannot carry each call's), hold in the store.
    if (this.closed || options.idempotencyKey !== undefined || hasKeys(options.metadata)) return null;
    const key = this.meteredKey(userId, options.spender, options.feature);
    if (key === null) return null;
    const l = this.users.get(key);
    const n = options.estimate;
    if (l === undefined || !blockServes(l, n, this.now())) {
      this.warm(userId, key, n, options);
      return null;
    }
    l.pending += n;
    const charge = (amount: number, reason: string | undefined, extra: string, dims?: LeaseChargeDims) =>
      this.chargeHeld(l, n, amount, reason, extra, dims);
    return new LeasedSession(this.core, l, n, options, charge);
  }

  /**
   * @internal Opens (or rolls) `userId`'s block in the background after a metered call found none
   * that covers `amount`, so that the user's next calls are served from it. Errors are left to the
   * exact path (the next call tries again).
   */
  private warm(userId: string, key: string, amount: number, spend: LeaseSpend): void {
    if (this.closed || amount > this.sizing.size || (this.exactUntil.get(key) ?? 0) > this.now()) return;
    const l = this.users.get(key);
    // Background warm-up: `settle` logs a failure (warn) and the next call tries again.
    if (l === undefined) void this.open(userId, key, spend, false, this.unitFor(spend.feature)).catch(() => undefined);
    else if (l.settling === null && l.open) void this.settle(l, true).catch(() => undefined);
  }

  /**
   * Settles a leased metered call: its estimate leaves the block's pending credits, and `amount` is
   * charged from the block when it still covers it (waiting out a settle under way). False when it
   * does not (the block rolled smaller, ended, or stops serving): the caller charges it as an
   * after-service deduction.
   */
  private async chargeHeld(
    l: UserLease,
    estimate: number,
    amount: number,
    reason: string | undefined,
    extra: string,
    dims?: LeaseChargeDims,
  ): Promise<boolean> {
    l.pending -= estimate;
    if (amount === 0) return true;
    // Waits for the settle in flight only: `settle` logs its failure and it is retried; the block is checked again.
    if (l.settling !== null) await l.settling.catch(() => undefined);
    if (this.users.get(l.key) !== l || !blockServes(l, amount, this.now())) return false;
    this.take(l, amount, reason, extra, dims);
    return true;
  }

  /**
   * Fixed-price metering's check (the middlewares' `lease` option with `price`): when
   * `userId`'s block covers `amount` now, sets it aside inside the block, as a metered call's
   * estimate is (not free for other charges, carried into the next block when the window rolls),
   * and returns what charges it or gives it back. Null when it does not cover it (nothing done):
   * the caller checks on the store instead.
   * @beta
   */
  setAside(userId: string, amount: number, spend?: LeaseSpend): SetAside | null {
    const key = this.meteredKey(userId, spend?.spender, spend?.feature);
    const l = key === null ? undefined : this.users.get(key);
    if (l === undefined || !blockServes(l, amount, this.now())) return null;
    l.pending += amount;
    return {
      charge: (reason) => {
        l.pending -= amount;
        // An open block is the user's current one: a block that ended or failed to settle never reopens.
        if (!blockServes(l, amount, this.now())) return false;
        this.take(l, amount, reason, "", dimsOf(spend));
        return true;
      },
      giveBack: () => {
        l.pending -= amount;
      },
    };
  }

  /** Whether `close()` was called: later charges are refused. */
  get isClosed(): boolean {
    return this.closed;
  }

  // -----------------------------------------------------------------------------------------------

  private serve(
    l: UserLease,
    amount: number,
    reason: string | undefined,
    extra = "",
    dims?: LeaseChargeDims,
  ): LeaseCharge {
    this.take(l, amount, reason, extra, dims);
    return { userId: l.userId, amount, via: "lease", entry: null };
  }

  /** Takes `amount` from the block: its window's count and total, the ledger line, a settle when it ran out. */
  private take(l: UserLease, amount: number, reason: string | undefined, extra: string, dims?: LeaseChargeDims): void {
    l.used += amount;
    l.requests++;
    if (dims !== undefined) addLeasePart((l.parts ??= new Map()), amount, dims);
    if (this.file !== undefined) {
      let r = "";
      if (reason !== undefined) {
        if (reason !== this.lastReason) {
          this.lastReason = reason;
          this.lastReasonJson = `,"reason":${JSON.stringify(reason)}`;
        }
        r = this.lastReasonJson;
      }
      this.file.recordLine(
        `{"eventType":"lease","action":"charge","userId":${l.userJson},"lease":"${l.lease}","window":${l.window},"amount":${amount}${r}${extra}}`,
      );
    }
    // The block ran out: settle (and roll) now rather than at the tick.
    // `settle` logs a failure (warn); the window is settled again at the next tick or charge.
    if (l.used + l.pending >= l.held) void this.settle(l, true).catch(() => undefined);
  }

  private async slow(userId: string, amount: number, options: LeaseChargeOptions | undefined): Promise<LeaseCharge> {
    const user = parse(UserId, userId, "userId");
    const n = parse(Amount, amount, "amount");
    const o = options === undefined ? undefined : parse(LeaseChargeOptions, options, "options");
    let rolled = false;
    const named = o !== undefined && (o.spender !== undefined || o.feature !== undefined);
    for (;;) {
      if (this.closed)
        throw new ConfigurationError("These credit leases are closed: charge through another lease or the exact path.");
      // A lease for this spender and feature where they matter (docs/teams-and-limits.md, "Leases").
      const key = this.keyOf(user, o?.spender, o?.feature);
      // A keyed charge, one with metadata (a window's entry cannot carry each charge's: docs/usage.md,
      // "What counts"), an amount beyond a block, a small balance or little left under a limit: the exact path.
      if (
        o?.idempotencyKey !== undefined ||
        hasKeys(o?.metadata) ||
        n > this.sizing.size ||
        (this.exactUntil.get(key) ?? 0) > this.now()
      )
        return this.exact(user, n, o);
      const l = this.users.get(key);
      if (l === undefined) {
        // A charge naming someone opens the user's shared block only where they do not matter.
        // (An account that turns out to have limits or scoped grants opens no shared block for it:
        // the next turn finds its key is the named lease's.)
        const unit = this.unitFor(o?.feature);
        const shared = key === user || key.startsWith(`${user}\u0001`);
        await this.open(user, key, shared ? {} : (o ?? {}), named && shared, unit);
        continue;
      }
      if (l.settling !== null) {
        // Waits for the settle in flight only: `settle` logs its failure and it is retried.
        await l.settling.catch(() => undefined);
        continue;
      }
      if (blockServes(l, n, this.now())) return this.serve(l, n, o?.reason, "", dimsOf(o));
      if (rolled) return this.exact(user, n, o);
      // Not covered: settle this window and roll the rest into a new block, then try once more.
      rolled = true;
      await this.settle(l, true);
    }
  }

  private async exact(userId: string, amount: number, o: LeaseChargeOptions | undefined): Promise<LeaseCharge> {
    // The reason is the deduction's description, unless the charge gives one.
    const { reason, description = reason, ...rest } = o ?? {};
    const unit = this.unit === undefined ? {} : { unit: this.unit };
    const entry = await this.core.deduct(userId, amount, { ...rest, ...unit, description });
    return { userId, amount, via: "exact", entry };
  }

  /** Opens a lease: window 0 holds the first block (none: the user goes to the exact path for a window). */
  private open(
    userId: string,
    key: string,
    spend: LeaseSpend,
    plainOnly = false,
    unit: string | undefined = this.unit,
  ): Promise<void> {
    const named = key !== userId && !key.startsWith(`${userId}\u0001`);
    const l: UserLease = {
      userId,
      key,
      spender: named ? spend.spender : undefined,
      feature: named ? spend.feature : undefined,
      unit,
      userJson: JSON.stringify(userId),
      lease: randomUUID(),
      window: 0,
      holdId: null,
      held: 0,
      serveUntil: 0,
      used: 0,
      requests: 0,
      pending: 0,
      parts: null,
      open: false,
      fresh: true,
      settling: null,
    };
    this.users.set(key, l);
    return this.settle(l, true, plainOnly);
  }

  /** Settles `l`'s window; `roll`: hold the next block (else the lease ends). One settle at a time. */
  private settle(l: UserLease, roll: boolean, plainOnly = false): Promise<void> {
    if (l.settling !== null) return l.settling;
    l.open = false;
    const s: LeaseSettle = {
      lease: l.lease,
      window: l.window,
      holdId: l.holdId,
      used: l.used,
      requests: l.requests,
      ...(l.parts === null ? {} : { parts: leaseWindowParts(l.parts, l.used, l.requests) }),
      roll:
        roll && !this.closed
          ? { sizing: this.sizing, ttlSeconds: this.ttlSeconds, ...(plainOnly ? { plainOnly } : {}) }
          : null,
      spender: l.spender,
      feature: l.feature,
      ...(l.unit === undefined ? {} : { unit: l.unit }),
    };
    const run = async (): Promise<void> => {
      try {
        // The window's lines are in the file before its entry is in the journal.
        if (this.file !== undefined && s.requests > 0) await this.file.flush();
        const r = await this.core.settleLease(l.userId, s);
        if (r.aware === true) this.aware.add(l.userId);
        else if (r.aware === false) this.aware.delete(l.userId);
        if (s.holdId !== null) this.settledLine(l.userJson, l.lease, s.window, r.entry);
        if (r.next === null) {
          if (this.users.get(l.key) === l) this.users.delete(l.key);
          // Too few credits (or too little left under a limit) for a block: charge exactly for a
          // window, then try again. (Not for a shared block refused because who spends matters.)
          if (s.roll !== null && !(plainOnly && r.aware === true)) this.exactUntil.set(l.key, this.now() + this.every);
          return;
        }
        l.window = s.window + 1;
        l.holdId = r.next.id;
        l.held = r.next.amount;
        // Not past the end of a limit window: its charges count in the window they fall in.
        l.serveUntil = Math.min(r.next.expiresAt - this.margin, r.until ?? Infinity);
        l.used = 0;
        l.requests = 0;
        l.parts = null;
        l.open = true;
        this.file?.recordLine(
          `{"eventType":"lease","action":"hold","userId":${l.userJson},"lease":"${l.lease}","window":${l.window},"reservationId":${JSON.stringify(r.next.id)}${spendJson(l)}}`,
        );
      } catch (error) {
        // The window stays closed (its usage is fixed) and is settled again, under the same key, at
        // the next tick or charge: a settle that did reach the store is answered by its key.
        if (s.window === 0 && this.users.get(l.key) === l) this.users.delete(l.key);
        this.core.logger?.warn(
          { err: error, userId: l.userId, lease: l.lease, window: s.window },
          "credit-management: settling a credit lease failed; it is retried under the same key",
        );
        throw error;
      } finally {
        l.settling = null;
      }
    };
    l.settling = run();
    return l.settling;
  }

  private settledLine(userJson: string, lease: string, window: number, entry: JournalEntry | null): void {
    this.file?.recordLine(
      `{"eventType":"lease","action":"settled","userId":${userJson},"lease":"${lease}","window":${window},"entryId":${entry === null ? "null" : JSON.stringify(entry.id)}}`,
    );
  }

  /** Every window: settle what was used (rolling the block); a lease idle for a whole window ends. */
  private tick(): void {
    const now = this.now();
    for (const [user, until] of this.exactUntil) if (until <= now) this.exactUntil.delete(user);
    for (const l of this.users.values()) {
      if (l.settling !== null) continue;
      // Idle for the first time, or with metered calls in flight on it: kept (nothing to settle).
      if (l.requests === 0 && l.open && (l.fresh || l.pending > 0)) {
        l.fresh = false;
        continue;
      }
      l.fresh = false;
      // `settle` logs a failure (warn); the window is settled again at the next tick or charge.
      void this.settle(l, l.requests > 0 || !l.open).catch(() => undefined);
    }
  }

  private async settleAll(roll: boolean): Promise<void> {
    const settles: Promise<void>[] = [];
    for (const l of this.users.values()) {
      if (l.settling !== null) {
        const pending = l.settling;
        settles.push(
          pending
            // The settle in flight logged its own failure; the one after it (or its absence) is what counts here.
            .catch(() => undefined)
            .then(() => (roll || this.users.get(l.key) !== l ? undefined : this.settle(l, false))),
        );
      } else if (!roll || l.requests > 0 || !l.open) settles.push(this.settle(l, roll));
    }
    const results = await Promise.allSettled(settles);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed !== undefined) throw failed.reason;
  }
}

/**
 * True when `options` is a plain object with only what the fast path takes — a `reason`, a
 * `feature` and a `spender` — each valid as `parse(LeaseChargeOptions)` would find it (anything
 * else, a Map or a Date among them, goes through `slow`, which validates it).
 */
function servedInMemory(options: unknown): boolean {
  if (typeof options !== "object" || options === null) return false;
  const proto = Object.getPrototypeOf(options) as unknown;
  if (proto !== Object.prototype && proto !== null) return false;
  for (const k in options) {
    const v = (options as Record<string, unknown>)[k];
    if (v === undefined) continue;
    if (k === "reason" ? !isReason(v) : k === "feature" || k === "spender" ? !isName(k, v) : true) return false;
  }
  return true;
}

/** The last reason `isReason` accepted: a hot loop charges with the same one (checked once). */
let lastReason: string | undefined;

/** A valid `reason` (`ShortText`, well-formed). */
function isReason(v: unknown): v is string {
  if (v === lastReason) return true;
  if (typeof v !== "string" || v.length > 1000 || !wellFormed(v)) return false;
  lastReason = v;
  return true;
}

const isName = (k: "feature" | "spender", v: unknown): boolean =>
  typeof v === "string" && (k === "feature" ? FeatureName : SpenderId).safeParse(v).success && wellFormed(v);

/** True when `o` is an object with a key (metadata worth recording). */
function hasKeys(o: object | null | undefined): boolean {
  if (o == null) return false;
  for (const _ in o) return true;
  return false;
}

/** Who spends on what, as a charge names them. @public */
export interface LeaseSpend {
  /** The spender charged, when the lease names one. */
  spender?: string | undefined;
  /** The feature charged, when the lease names one. */
  feature?: string | undefined;
}

/** The key of `userId`'s lease for `spender` and `feature` (no control characters in any of them). */
function leaseKey(userId: string, spender: string | undefined, feature: string | undefined): string {
  return `${userId}\u0000${spender ?? ""}\u0000${feature ?? ""}`;
}

/** A named lease's spender and feature on its ledger-file hold line (recovery charges under them). */
function spendJson(l: UserLease): string {
  let out = "";
  if (l.spender !== undefined) out += `,"spender":${JSON.stringify(l.spender)}`;
  if (l.feature !== undefined) out += `,"feature":${JSON.stringify(l.feature)}`;
  if (l.unit !== undefined) out += `,"unit":${JSON.stringify(l.unit)}`;
  return out;
}

/** What a charge's options name for the window's parts (docs/usage.md, "Leases"); undefined: nothing. */
function dimsOf(o: LeaseSpend | undefined): LeaseChargeDims | undefined {
  if (o === undefined || (o.feature === undefined && o.spender === undefined)) return undefined;
  return { feature: o.feature ?? null, spender: o.spender ?? null };
}

/**
 * A metered call served from a credit lease (`CreditLeases.openMeter`): recording usage,
 * `currentMeter()` and the middlewares' settlement work as for a hold in the store, but the
 * estimate is held inside the process's block and the usage charged from it.
 */
class LeasedSession extends MeterSession {
  constructor(
    session: SessionDeps,
    private readonly block: UserLease,
    estimate: number,
    private readonly meterOptions: MeterOptions,
    /** Charges `amount` from the block, its estimate leaving it (`CreditLeases.chargeHeld`). */
    private readonly charge: (
      amount: number,
      reason: string | undefined,
      extra: string,
      dims?: LeaseChargeDims,
    ) => Promise<boolean>,
  ) {
    super(session, block.userId, block.holdId ?? "", estimate, meterOptions);
  }

  protected override async doCommit(amount: number): Promise<MeterOutcome> {
    // MeterSession settles once: this runs at most once, and then doRelease never does.
    const usages = this.usages.length > 0 ? `,"usages":${JSON.stringify(this.usages)}` : "";
    const reason = this.meterOptions.reason;
    const o = this.meterOptions;
    const named = o.spender !== undefined || o.feature !== undefined;
    const dims =
      this.usages.length > 0 || named
        ? {
            ...(this.usages.length > 0 ? { usages: this.usages } : {}),
            ...(named ? { spender: o.spender ?? null, feature: o.feature ?? null } : {}),
          }
        : undefined;
    if (await this.charge(amount, reason, usages, dims)) {
      const outcome = this.outcome("committed", amount, null);
      outcome.leased = true;
      return outcome;
    }
    // The block no longer covers it: the usage was delivered, so it is an after-service deduction
    // (within the overdraft limit; what the limit leaves is reported as the shortfall).
    return this.chargeAfterService(
      amount,
      undefined,
      { leased: true },
      "metered usage beyond its credit lease exceeded the overdraft limit; charged what the limit allows",
    );
  }

  protected override doRelease(reason: NonNullable<MeterOutcome["releaseReason"]>): Promise<MeterOutcome> {
    // Charges nothing: its estimate goes back to the block.
    this.block.pending -= this.estimate;
    const outcome = this.outcome("released", 0, null);
    outcome.releaseReason = reason;
    outcome.leased = true;
    return Promise.resolve(outcome);
  }
}

// CreditLeases is metering's lease (`MeterLease`, internal to the package: not in the published declarations).
const _isMeterLease = (leases: CreditLeases): MeterLease => leases;
void _isMeterLease;
