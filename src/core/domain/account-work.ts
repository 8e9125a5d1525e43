import { own } from "./own.js";
import type { Changes, LoadedState } from "./state.js";
import { noteAddSource } from "./events.js";
import { ConfigurationError, InsufficientCreditsError, RuleViolationError } from "../errors.js";
import type {
  Account,
  UnitFigures,
  CostBasis,
  EntryType,
  Grant,
  GrantPortion,
  GrantSource,
  JournalEntry,
  GrantScope,
  LimitCycle,
  Reservation,
  SpendLimit,
} from "../models/index.js";
import { checkpointMetadata, snapshotOf, withUnits } from "./checkpoint.js";
import { hashNewEntry } from "./hash.js";
import type { JournalKey } from "./journal-keys.js";
import type { WorkEvent } from "./notifications.js";
import { type Counted, type Spend, countSpend, describeLimit, giveBackSpend, limitRoom, trueUpHold } from "./limits.js";
import { compareGrants, isDue, isOpenGrant, isUpcoming, isUsable, startsBy } from "./order.js";
import { outOfScope, spendOrder } from "./scope.js";
import { chargeWithinLimit, commitWithinLimit, headroom, requestedMeta } from "./overdraft.js";
import { WorkingSet } from "./working-set.js";
import { trackAllowance } from "./allowance.js";
import { type ChargeDraw, type Reversed, debtGrant, reversalShares } from "./reversal.js";
import { DEFAULT_UNIT } from "../models/common.js";
import type { EntryMeta, NewGrant, UnitWork } from "./unit-work.js";
import { NO_SPEND, excessMetadata, holdSpend, spendOf, withHoldMetadata, withSpend } from "./entry-meta.js";

export type { EntryMeta, NewGrant } from "./unit-work.js";

/**
 * The rules of docs/concepts.md, once, as a pure state machine over one account.
 *
 * A unit of work loads the account's state, builds an `AccountWork`, calls the operations below
 * (each appends journal entries and keeps `balance == Σ remaining + Σ holds − debt`), and saves
 * `changes()`. No I/O happens here; every backend therefore behaves identically.
 *
 * Loaded objects are never mutated: every change replaces the object in the working maps.
 */

export class AccountWork implements UnitWork {
  readonly userId: string;
  readonly now: Date;
  private readonly newId: () => string;
  /** The account as the unit of work loaded it (null when new). */
  readonly loaded: Account | null;
  /** True when the unit of work loaded no account: saving it creates the account (an insert). */
  get isNew(): boolean {
    return this.loaded === null;
  }
  account: Account;
  /**
   * The account's open grants (loaded in burn-down order when the store says so, `grantsInOrder`)
   * and active holds, under what this work writes: nothing is copied or indexed per unit of work,
   * so its cost does not grow with the account's open grants or holds.
   */
  private readonly grants: WorkingSet<Grant>;
  private readonly holds: WorkingSet<Reservation>;
  /** While true, the loaded grants are in burn-down order and none was added: a draw stops early. */
  private ordered: boolean;
  /** True once `settle()` ran: the next expiry is then computed from everything again. */
  private settled = false;
  /**
   * The instant a settlement step acts at (its due instant), null outside one: a grant's expiry is
   * judged then, not now, so what a hold lapsing earlier returns to it is still its own.
   */
  private asOf: Date | null = null;
  /** The entries this work made, in seq order, and the canonical text of each (what its hash covers), for the ledger line. */
  private readonly made: JournalEntry[] = [];
  private readonly texts: string[] = [];
  /** Events recorded with this change, in order. */
  private readonly recorded: WorkEvent[] = [];
  /** The limits this work's spends took past 80 % and 100 %, in order (docs/teams-and-limits.md). */
  limitsCrossed: Counted["crossed"] | undefined;
  /**
   * Set by a unit of work that knows the account's subscription (a subscription period's): its
   * cycle, null when none is active, for the alerts counting spend per subscription period
   * (docs/customer-state.md, "Alerts"). Undefined: not known here (the one stored holds).
   */
  subscriptionCycle: LimitCycle | null | undefined;

  /**
   * The key this work signs its entries with (docs/concepts.md, "A keyed chain"): their `keyId`, and
   * their hash an HMAC under it. Undefined: plain SHA-256.
   */
  chainKey: JournalKey | undefined;

  /**
   * The overdraft limit of each unit but the default one (docs/units.md, "Debt per unit"), null:
   * unlimited; a unit not listed has none (0). The default unit's is the one each operation is given.
   */
  unitOverdraftLimits: Readonly<Record<string, number | null>> | undefined;

  /** The unit the current operation acts in: null, the default unit (docs/units.md). */
  private unit: string | null = null;
  /** That unit's figures: the account itself for the default unit, else its entry of `account.units` (a copy this work owns). */
  private f: UnitFigures;
  /** True once `account.units` is this work's own copy. */
  private unitsOwned = false;

  constructor(userId: string, state: LoadedState, now: Date, newId: () => string) {
    this.userId = userId;
    this.now = now;
    this.newId = newId;
    this.loaded = state.account;
    // A private copy, updated in place (the loaded object is never mutated). It keeps the columns a
    // module added to the row (ARCHITECTURE.md, "Seams"): a module's rule may change them in the unit.
    this.account = state.account
      ? { ...state.account }
      : {
          userId,
          balance: 0,
          reserved: 0,
          debt: 0,
          seq: 0,
          lastHash: null,
          nextExpiryAt: null,
          alert: null,
          limits: null,
          scoped: null,
          createdAt: now,
          updatedAt: now,
        };
    this.f = this.account;
    this.grants = new WorkingSet(state.grants, true);
    this.holds = new WorkingSet(state.reservations);
    // A grant that started later is ordered by its start, which the stores' order does not read.
    this.ordered = state.grantsInOrder === true && !state.grants.some((g) => g.effectiveAt != null);
  }

  /**
   * Makes `unit` (null or undefined: the default unit) the one the next figures and entries are in
   * (docs/units.md): no operation moves credits between units.
   */
  private inUnit(unit: string | null | undefined): void {
    const u = unit === undefined || unit === DEFAULT_UNIT ? null : unit;
    if (u === this.unit) return;
    this.unit = u;
    if (u === null) {
      this.f = this.account;
      return;
    }
    if (!this.unitsOwned) {
      this.account.units = { ...this.account.units };
      this.unitsOwned = true;
    }
    const units = this.account.units as Record<string, UnitFigures>;
    const had = own(units, u);
    // A copy, changed in place from here on (the loaded one is never mutated).
    this.f = had === undefined ? { balance: 0, reserved: 0, debt: 0 } : { ...had };
    units[u] = this.f;
  }

  /** Makes `unit` (null or undefined: the default unit) the one `available` and `availableFor` read (docs/units.md). */
  useUnit(unit: string | null | undefined): void {
    this.inUnit(unit);
  }

  /** The unit a grant, hold or entry is in: null for the default one. */
  private static unitOf(row: { unit?: string | null | undefined }): string | null {
    return row.unit ?? null;
  }

  /** The figures of `unit` (null: the default unit) as this work leaves them. */
  figures(unit: string | null = null): UnitFigures {
    const u = unit === DEFAULT_UNIT ? null : unit;
    if (u === null) return this.account;
    return own(this.account.units, u) ?? { balance: 0, reserved: 0, debt: 0 };
  }

  /** The overdraft limit of the current unit: `given` (the default unit's) or the unit's own. */
  private limitOf(given: number | null): number | null {
    if (this.unit === null) return given;
    const limits = this.unitOverdraftLimits;
    if (limits === undefined || !Object.prototype.hasOwnProperty.call(limits, this.unit)) return 0;
    return limits[this.unit] ?? null;
  }

  /** The current unit's name in a message: "credits" for the default unit. */
  private get unitWord(): string {
    return this.unit ?? DEFAULT_UNIT;
  }

  /** An error's details, naming the current unit when it is not the default one. */
  private withUnit<T extends object>(details: T): T & { unit?: string } {
    return this.unit === null ? details : { ...details, unit: this.unit };
  }

  /** The journal entries this work made, in seq order. */
  get entries(): readonly JournalEntry[] {
    return this.made;
  }

  /** The canonical text of each of `entries` (what its hash covers), for the ledger line. */
  get canonicals(): readonly string[] {
    return this.texts;
  }

  /**
   * Records `event` as part of this unit of work: the service writes it to the outbox in the same
   * transaction as the change when notifications are on, and drops it when they are off or the
   * work changes nothing (docs/notifications.md). How the subscription service's units of work
   * carry `subscription_allocation`, `subscription_cancelled` and `subscription_ended`.
   */
  recordEvent(event: WorkEvent): void {
    this.recorded.push(event);
  }

  /** The events recorded with this change, in order. */
  get events(): readonly WorkEvent[] {
    return this.recorded;
  }

  /** Makes grants read separately (closed or spent ones a hold points at) part of the work. */
  include(grants: readonly Grant[]): void {
    for (const g of grants) if (this.grants.get(g.id) === undefined) this.addGrant(g);
  }

  getGrant(id: string): Grant | undefined {
    return this.grants.get(id);
  }

  /** Creates grant `g` (draws then sort what they see): the portion of the entry that makes it. */
  private newGrant(g: Grant): GrantPortion {
    this.grants.create(g);
    this.ordered = false;
    return { grantId: g.id, amount: g.amount };
  }

  /** Makes a grant read separately part of the work (draws then sort what they see). */
  private addGrant(g: Grant): void {
    this.grants.add(g);
    this.ordered = false;
  }

  /** The account's open grants (remaining > 0, not closed) as this work leaves them. */
  openGrants(): Grant[] {
    return this.grants.all().filter(isOpenGrant);
  }

  getHold(id: string): Reservation | undefined {
    return this.holds.get(id);
  }

  /** Credits that can be reserved or deducted without overdraft. */
  get available(): number {
    return this.f.balance - this.f.reserved;
  }

  /**
   * Credits `spend` may use (docs/teams-and-limits.md, "Scoped credits"): `available` less the
   * unheld credits of scoped grants outside its scope. An account never given a scoped grant
   * answers `available` without reading its grants.
   */
  availableFor(spend: Spend): number {
    if (this.account.scoped !== true) return this.available;
    return this.available - outOfScope(this.unitGrants(), spend, this.now);
  }

  /** The grants of the current unit, as they stand (all of them while the account holds only the default unit). */
  private unitGrants(): Grant[] {
    const all = this.grants.all();
    if (this.unit === null && this.account.units == null) return all;
    return all.filter((g) => AccountWork.unitOf(g) === this.unit);
  }

  /**
   * The most an after-service charge of `spend` may take now: what keeps its available credits
   * >= −overdraftLimit (unbounded without a limit). Deductions and over-commits past it are refused.
   */
  headroom(overdraftLimit: number | null, spend: Spend = NO_SPEND): number {
    return headroom(this.availableFor(spend), this.limitOf(overdraftLimit));
  }

  /** True when a grant or hold may be past its expiry, so `settle()` has work to do. */
  get needsSettle(): boolean {
    const next = this.account.nextExpiryAt;
    return next !== null && next.getTime() <= this.now.getTime();
  }

  // ---------------------------------------------------------------------------------------------
  // Settlement: what time has done since the account was last touched.

  /**
   * Settles what time did up to `asOf` (default now; never later), in the order it was due
   * (docs/concepts.md, "Two times on every entry"): at each instant, the grants that start then,
   * then those that expire then, then the holds that lapse then. Each entry is dated at its due
   * instant (`occurredAt`) however late it is written. The grants the holds drew from must be loaded.
   */
  settle(asOf: Date = this.now): Settlement {
    this.settled = true;
    const out: Settlement = { expired: 0, holdsReleased: 0, creditsReleased: 0, periodGrantsEnded: 0, started: 0 };
    for (const g of this.grants.all()) if (isPeriodGrant(g) && isDue(g, asOf)) out.periodGrantsEnded++;
    const lapsed = this.holds
      .all()
      .filter((h) => h.status === "active" && h.expiresAt.getTime() <= asOf.getTime())
      .sort((a, b) => a.expiresAt.getTime() - b.expiresAt.getTime() || (a.id < b.id ? -1 : 1));
    let next = 0;
    for (const t of this.dueInstants(asOf, lapsed)) {
      const at = new Date(t);
      // Grants first, so credits a hold lapsing at the same instant returns to a grant that
      // expired then expire with it at once.
      const grants = this.dueAt(at, (meta) => this.settleGrantsAt(at, meta), {});
      out.started += grants.started;
      out.expired += grants.expired;
      for (; next < lapsed.length && lapsed[next]!.expiresAt.getTime() === t; next++) {
        const hold = lapsed[next]!;
        const { entry, expired } = this.dueAt(at, (meta) => this.releaseHold(hold, "expired", meta), {
          description: "reservation expired",
        });
        out.expired += expired;
        out.holdsReleased++;
        out.creditsReleased += entry.amount;
      }
    }
    return out;
  }

  /**
   * Starts every upcoming grant whose start is at or before `asOf` (docs/units.md, "Grants that
   * start later"), each dated at its start, in order of their starts: one `start` entry each.
   * Returns the grants started.
   */
  startDue(asOf: Date): number {
    let started = 0;
    for (const t of this.dueInstants(asOf, [], "starts"))
      started += this.dueAt(new Date(t), () => this.startAt(new Date(t)), {});
    return started;
  }

  /**
   * The instants at or before `asOf` at which something of the loaded state falls due, ascending:
   * grants' starts (`what`: "starts" only) or starts and expiries, and the given holds' lapses.
   */
  private dueInstants(asOf: Date, lapsed: readonly Reservation[], what: "starts" | "all" = "all"): number[] {
    const out = new Set<number>();
    const by = asOf.getTime();
    for (const g of this.grants.all()) {
      if (g.closedAt !== null) continue;
      if (startsBy(g, asOf)) out.add(g.effectiveAt?.getTime() ?? 0);
      if (what === "all" && g.expiresAt !== null && g.expiresAt.getTime() <= by) out.add(g.expiresAt.getTime());
    }
    for (const h of lapsed) out.add(h.expiresAt.getTime());
    return [...out].sort((a, b) => a - b);
  }

  /** Starts the grants due to start at `at` (their start at or before it) and expires those due then. */
  private settleGrantsAt(at: Date, meta: EntryMeta): { started: number; expired: number } {
    const started = this.startAt(at);
    const due = this.grants
      .all()
      .filter((g) => isDue(g, at))
      .sort(compareGrants);
    return {
      started,
      expired: due.length === 0 ? 0 : this.closeExpired(due, { description: "credits expired", ...meta }),
    };
  }

  /** Starts the upcoming grants whose start is at or before `at`, in order of their starts. */
  private startAt(at: Date): number {
    const due = this.grants
      .all()
      .filter((g) => startsBy(g, at))
      .sort(compareGrants)
      .sort((a, b) => (a.effectiveAt?.getTime() ?? 0) - (b.effectiveAt?.getTime() ?? 0));
    for (const g of due) this.start(g);
    // The next expiry is then read again from everything (a start moves it on).
    if (due.length > 0) this.settled = true;
    return due.length;
  }

  /**
   * Runs `step` as of the due instant `at` (<= now): grants' expiry is judged at `at`, and the
   * entries it writes are dated `at` (`emit`).
   */
  private dueAt<T>(at: Date, step: (meta: EntryMeta) => T, meta: EntryMeta): T {
    const before = this.asOf;
    this.asOf = at;
    try {
      return step(meta);
    } finally {
      this.asOf = before;
    }
  }

  /**
   * Starts upcoming grant `g` as an addition made now: its credits join the balance and pay the
   * debt first (an unscoped grant's), the rest stays on the grant. Its `start` entry lists the
   * credits kept and, as a `debt_paid` portion, those that paid debt.
   */
  private start(g: Grant): JournalEntry {
    // In the grant's own unit: it pays that unit's debt (docs/units.md).
    this.inUnit(AccountWork.unitOf(g));
    if (this.f.balance + g.remaining > Number.MAX_SAFE_INTEGER) throw beyondSafe("balance", g.remaining);
    const amount = g.remaining;
    const debtPaid = (g.scope ?? null) === null ? Math.min(this.f.debt, amount) : 0;
    const kept = amount - debtPaid;
    // As a grant added now: created with what the debt left (its `add` entry keeps the whole amount).
    this.grants.put({ ...g, upcoming: null, amount: kept, remaining: kept }, g);
    this.f.balance += amount;
    this.f.debt -= debtPaid;
    const portions: GrantPortion[] = [];
    if (kept > 0) portions.push({ grantId: g.id, amount: kept });
    if (debtPaid > 0) portions.push({ grantId: g.id, amount: debtPaid, kind: "debt_paid" });
    const entry = this.emit("start", amount, portions, null, {
      description: debtPaid > 0 ? `grant started; ${debtPaid} credits paid debt` : "grant started",
    });
    // Its domain event (docs/events.md) names the grant's source, as an addition's does.
    noteAddSource(entry, g.source, g.sourceRef);
    return entry;
  }

  /**
   * Expires the unspent part of every grant due at `asOf` (<= now), each at its own expiry instant
   * and after the starts due before it (docs/units.md). Returns the credits expired.
   */
  expireDue(asOf: Date, meta: EntryMeta): number {
    let expired = 0;
    for (const t of this.dueInstants(asOf, [])) {
      const at = new Date(t);
      expired += this.dueAt(at, (m) => this.settleGrantsAt(at, m).expired, meta);
    }
    return expired;
  }

  /**
   * Expires, now, what the given grants have left and closes them (a plan change or cancellation
   * that ends a period's credits early). Held parts expire when their hold returns them.
   */
  expireGrants(grantIds: readonly string[], meta: EntryMeta): number {
    const open: Grant[] = [];
    for (const id of grantIds) {
      const g = this.grants.get(id);
      if (g !== undefined && g.closedAt === null) open.push(g);
    }
    return this.closeExpired(open, meta);
  }

  /** Closes `grants` as expired, removing what they have left in one `expire` entry per unit. */
  private closeExpired(grants: readonly Grant[], meta: EntryMeta): number {
    let total = 0;
    for (const [unit, group] of byUnit(grants)) {
      this.inUnit(unit);
      // One entry per unit: only the first carries the operation's key (keys are unique per account).
      total += this.closeExpiredIn(group, total > 0 ? unkeyed(meta) : meta);
    }
    return total;
  }

  /** `closeExpired` of grants of the current unit. */
  private closeExpiredIn(grants: readonly Grant[], meta: EntryMeta): number {
    const portions: GrantPortion[] = [];
    // An upcoming grant's credits are in no balance (docs/units.md, "Grants that start later").
    let notInBalance = 0;
    for (const g of grants) {
      if (g.remaining > 0) portions.push({ grantId: g.id, amount: g.remaining });
      if (isUpcoming(g)) notInBalance += g.remaining;
      this.grants.put(
        {
          ...g,
          remaining: 0,
          expiredAmount: (g.expiredAmount ?? 0) + g.remaining,
          closedAt: this.now,
          closedReason: "expired",
        },
        g,
      );
    }
    const total = sum(portions);
    if (total > 0) {
      this.f.balance = this.f.balance - (total - notInBalance);
      this.emit("expire", total, portions, null, meta);
    }
    return total;
  }

  /**
   * Removes up to `amount` unheld credits from the given open grants, in burn-down order, leaving
   * them open (a prorated downgrade). Recorded as a `void` entry. Returns the credits removed.
   */
  removeFromGrants(grantIds: readonly string[], amount: number, meta: EntryMeta): number {
    const ids = new Set(grantIds);
    const usable = this.grants
      .all()
      .filter((g) => ids.has(g.id) && isUsable(g, this.now))
      .sort(compareGrants);
    let total = 0;
    for (const [unit, group] of byUnit(usable)) {
      this.inUnit(unit);
      const portions = this.takeInOrder(group, amount - total);
      const removed = sum(portions);
      if (removed > 0) {
        this.f.balance = this.f.balance - removed;
        this.emit("void", removed, portions, null, total > 0 ? unkeyed(meta) : meta);
      }
      total += removed;
    }
    return total;
  }

  // ---------------------------------------------------------------------------------------------
  // Operations.

  /** Adds credits: pays debt first, the rest forms a new grant. */
  add(amount: number, grant: NewGrant, meta: EntryMeta): JournalEntry {
    this.inUnit(meta.unit);
    if (this.f.balance + amount > Number.MAX_SAFE_INTEGER) throw beyondSafe("balance", amount);
    const startsAt = grant.effectiveAt ?? null;
    if (startsAt !== null && startsAt.getTime() > this.now.getTime())
      return this.addLater(amount, grant, startsAt, meta);
    const scope = grant.scope ?? null;
    // Debt is owed for spends of any scope: a scoped grant pays none of it.
    const debtPaid = scope === null ? Math.min(this.f.debt, amount) : 0;
    const grantAmount = amount - debtPaid;
    const portions: GrantPortion[] = [];
    if (grantAmount > 0) {
      const g = this.grantOf(grant, grantAmount, null);
      if (scope !== null) this.account.scoped = true;
      portions.push(this.newGrant(g));
    }
    this.f.balance = this.f.balance + amount;
    this.f.debt = this.f.debt - debtPaid;
    const entry = this.emit("add", amount, portions, null, meta, {
      costBasis: grant.costBasis ?? null,
      source: grant.source,
      scope,
    });
    // An addition that only paid debt created no grant: its domain event (docs/events.md) still names the source.
    if (grantAmount === 0) noteAddSource(entry, grant.source, grant.sourceRef);
    return entry;
  }

  /**
   * The grant an addition of `amount` creates, in the current unit: started when created (`startsAt`
   * null), or upcoming until `startsAt` (docs/units.md, "Grants that start later").
   */
  private grantOf(grant: NewGrant, amount: number, startsAt: Date | null): Grant {
    return {
      id: this.newId(),
      userId: this.userId,
      amount,
      remaining: amount,
      expiresAt: grant.expiresAt,
      priority: grant.priority,
      source: grant.source,
      sourceRef: grant.sourceRef,
      description: grant.description,
      metadata: grant.metadata as Grant["metadata"],
      createdAt: this.now,
      expiredAmount: 0,
      closedAt: null,
      closedReason: null,
      scope: grant.scope ?? null,
      costBasis: grant.costBasis ?? null,
      effectiveAt: startsAt,
      upcoming: startsAt === null ? null : true,
      unit: this.unit,
      drawnOutIn: null,
    };
  }

  /**
   * Adds credits that start at `startsAt`, after now (docs/units.md, "Grants that start later"): an
   * upcoming grant of the whole amount, in no balance and paying no debt until `start` (at the first
   * settlement from then on). The `add` entry names the start and leaves balance and debt as they are.
   */
  private addLater(amount: number, grant: NewGrant, startsAt: Date, meta: EntryMeta): JournalEntry {
    const scope = grant.scope ?? null;
    const g = this.grantOf(grant, amount, startsAt);
    if (scope !== null) this.account.scoped = true;
    const portions = [this.newGrant(g)];
    return this.emit("add", amount, portions, null, meta, {
      costBasis: grant.costBasis ?? null,
      source: grant.source,
      scope,
      effectiveAt: startsAt,
    });
  }

  /**
   * Deducts credits. Without `allowDebt` the account must have `available >= amount`. With it
   * (usage already delivered) unheld grants give what they have and the rest becomes debt, as long
   * as available stays >= −overdraftLimit. Held credits are never taken.
   */
  deduct(
    amount: number,
    meta: EntryMeta,
    options: {
      allowDebt: boolean;
      overdraftLimit: number | null;
      reservationId?: string | null;
      /** Spend limits: refuse what does not fit ("enforce", default without `allowDebt`), count it all the same ("force", default with it), or leave them ("skip"). */
      limits?: "enforce" | "force" | "skip";
      /** The overdraft was checked by the caller (an over-commit's excess): `overdraftLimit` applies whatever the unit. */
      overdraftChecked?: boolean;
    },
  ): JournalEntry {
    return this.charge(amount, meta, options, 0);
  }

  /**
   * `deduct`, recording `shortfall` (credits served and not paid) on the entry: the library's own
   * argument, given only by `deductUpToLimit` (docs/metering.md, "Served and not paid"), never
   * from an `EntryMeta` a caller or a module gives.
   */
  private charge(
    amount: number,
    meta: EntryMeta,
    options: Parameters<AccountWork["deduct"]>[2],
    shortfall: number,
  ): JournalEntry {
    this.inUnit(meta.unit);
    const spend = spendOf(meta);
    const available = this.availableFor(spend);
    const overdraftLimit =
      options.overdraftChecked === true ? options.overdraftLimit : this.limitOf(options.overdraftLimit);
    if (!options.allowDebt && available < amount) {
      throw new InsufficientCreditsError(
        `Cannot deduct ${amount} ${this.unitWord}: only ${Math.max(available, 0)} available.`,
        this.withUnit({ requested: amount, available }),
      );
    }
    if (options.allowDebt && amount > headroom(available, overdraftLimit)) {
      throw new InsufficientCreditsError(
        `Cannot deduct ${amount} ${this.unitWord}: it would exceed the overdraft limit of ${overdraftLimit} (available ${available}).`,
        this.withUnit({ requested: amount, available, overdraftLimit }),
      );
    }
    if (this.f.balance - amount < -Number.MAX_SAFE_INTEGER) throw beyondSafe("balance", amount);
    // (Counted before the draw, so a refusal changes nothing.)
    // Spend limits count the spends in their own unit (docs/units.md).
    if (options.limits !== "skip") {
      const force = (options.limits ?? (options.allowDebt ? "force" : "enforce")) === "force";
      // Usage already delivered passes a limit and says so in its entry (as a shortfall does).
      // Late usage counts in the window it happened in, while that window is the current one.
      if (this.countLimits(spend, amount, force, undefined, meta.occurredAt))
        meta = { ...meta, metadata: { ...meta.metadata, overLimit: true } };
    }
    const portions = this.draw(amount, spend);
    const drawn = sum(portions);
    // (A refusal after the draw is safe: a unit of work that throws saves nothing.)
    if (this.f.debt + (amount - drawn) > Number.MAX_SAFE_INTEGER) throw beyondSafe("debt", amount);
    this.f.balance = this.f.balance - amount;
    this.f.debt = this.f.debt + (amount - drawn);
    return this.emit("deduct", amount, portions, options.reservationId ?? null, meta, undefined, shortfall);
  }

  /** The account's holds in flight, as a limit set now counts them (`replaceLimits`, ./limits.ts). */
  inFlight(): { holds: Reservation[]; now: number } {
    return { holds: this.holds.all().filter((h) => h.status === "active"), now: this.now.getTime() };
  }

  /**
   * The most a hold of `spend` may take now (docs/concepts.md, "Holds"): the credits it may use
   * (scoped grants outside its scope do not count; a hold never goes into debt) and what every
   * spend limit that applies to it has left in its window.
   */
  holdRoom(spend: Spend): number {
    const available = Math.max(0, this.availableFor(spend));
    const limits = this.account.limits;
    const room = limits == null ? null : limitRoom(limits, { ...spend, unit: this.unit }, this.now.getTime());
    return room === null ? available : Math.min(available, room.left);
  }

  /**
   * Earmarks credits from grants in burn-down order into a new hold. With `minimum` (a hold for
   * what is there, docs/concepts.md "Holds"): `amount`, or `holdRoom` when that is less, refused as
   * a hold of `minimum` is when the room is below it; the entry's metadata then adds `requested`.
   */
  reserve(
    requested: number,
    ttlSeconds: number,
    reason: string | null,
    meta: EntryMeta,
    minimum?: number,
  ): { reservation: Reservation; entry: JournalEntry } {
    this.inUnit(meta.unit);
    const spend = spendOf(meta);
    // Below the minimum, the checks below refuse a hold of the minimum, with their usual errors.
    const amount = minimum === undefined ? requested : Math.max(minimum, Math.min(requested, this.holdRoom(spend)));
    const available = this.availableFor(spend);
    if (available < amount) {
      const least = minimum === undefined ? "" : ` (the least of a hold of up to ${requested})`;
      throw new InsufficientCreditsError(
        `Cannot reserve ${amount} ${this.unitWord}${least}: only ${Math.max(available, 0)} available.`,
        this.withUnit({ requested: amount, available }),
      );
    }
    // A hold counts against the limits when placed; its commit or release trues it up.
    this.countLimits(spend, amount, false, "reserve");
    const allocations = this.draw(amount, spend);
    const expiresAt = new Date(this.now.getTime() + ttlSeconds * 1000);
    const reservation: Reservation = {
      id: this.newId(),
      userId: this.userId,
      amount,
      status: "active",
      allocations,
      expiresAt,
      reason,
      metadata: (meta.metadata ?? null) as Reservation["metadata"],
      createdAt: this.now,
      settledAt: null,
      committedAmount: null,
      spender: meta.spender ?? null,
      feature: meta.feature ?? null,
      unit: this.unit,
    };
    this.holds.create(reservation);
    this.f.reserved = this.f.reserved + amount;
    this.account.nextExpiryAt = minDate(this.account.nextExpiryAt, expiresAt);
    const entryMeta = amount === requested ? meta : { ...meta, metadata: { ...meta.metadata, requested } };
    const entry = this.emit("reserve", amount, allocations, reservation.id, entryMeta);
    return { reservation, entry };
  }

  /**
   * Charges usage already delivered (docs/concepts.md, "Overdraft and debt"): as much of `requested`
   * as the overdraft limit allows, into debt if need be, with what it could not charge recorded as
   * the entry's `shortfall`. When the limit allows nothing, an entry of 0 credits whose shortfall is
   * all of it: every request served leaves its entry (docs/metering.md, "Served and not paid").
   */
  deductUpToLimit(requested: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry {
    this.inUnit(meta.unit);
    const charge = chargeWithinLimit(requested, this.headroom(overdraftLimit, spendOf(meta)));
    return this.charge(
      charge,
      requestedMeta(meta, requested, charge),
      { allowDebt: true, overdraftLimit },
      requested - charge,
    );
  }

  /**
   * Captures `requested` on `hold` as far as the overdraft limit allows beyond the hold (the hold
   * itself always), recording what it could not charge as the entry's `shortfall`.
   */
  commitUpToLimit(hold: Reservation, requested: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry {
    this.inUnit(AccountWork.unitOf(hold));
    const charge = commitWithinLimit(requested, hold.amount, this.headroom(overdraftLimit, holdSpend(hold)));
    return this.capture(hold, charge, requestedMeta(meta, requested, charge), overdraftLimit, requested - charge);
  }

  /**
   * Captures a hold. `amount` <= hold: that much is spent from the held grants (in their order) and
   * the rest returns. `amount` > hold: the whole hold is spent and the excess is taken like an
   * after-service deduction (it may fail with `InsufficientCreditsError` past the overdraft limit,
   * before anything changes). Returns the commit entry.
   */
  commit(hold: Reservation, amount: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry {
    return this.capture(hold, amount, meta, overdraftLimit, 0);
  }

  /** `commit`, recording `shortfall` on the capture: given only by `commitUpToLimit`, as `charge`'s. */
  private capture(
    hold: Reservation,
    amount: number,
    meta: EntryMeta,
    overdraftLimit: number | null,
    shortfall: number,
  ): JournalEntry {
    this.inUnit(AccountWork.unitOf(hold));
    const excess = amount - hold.amount;
    // Checked up front so a refused over-commit changes nothing (the hold stays active).
    if (excess > 0 && excess > this.headroom(overdraftLimit, holdSpend(hold))) {
      throw new InsufficientCreditsError(
        `Cannot commit ${amount} ${this.unitWord} on a hold of ${hold.amount}: the excess of ${excess} would exceed the overdraft limit of ${this.limitOf(overdraftLimit)}.`,
        this.withUnit({
          requested: amount,
          held: hold.amount,
          available: this.availableFor(holdSpend(hold)),
          overdraftLimit: this.limitOf(overdraftLimit),
        }),
      );
    }
    const captured = Math.min(amount, hold.amount);
    // Recorded under the hold's spender and feature, and with the metadata it was placed with under
    // the commit's (docs/usage.md, "What counts"); the hold's count is trued up to what was spent.
    if (hold.spender != null || hold.feature != null) meta = withSpend(meta, hold);
    meta = withHoldMetadata(meta, hold);
    this.trueUp(hold, amount);
    // One entry (docs/concepts.md, "The journal"): the spent portions, then — a partial capture —
    // what went back to its grants (`returned`) and what paid debt (`debt_paid`).
    const portions: GrantPortion[] = [];
    const leftover: GrantPortion[] = [];
    let toTake = captured;
    for (const p of hold.allocations) {
      const take = Math.min(p.amount, toTake);
      toTake -= take;
      if (take > 0) portions.push({ grantId: p.grantId, amount: take });
      if (p.amount - take > 0) leftover.push({ grantId: p.grantId, amount: p.amount - take });
    }
    this.holds.put({ ...hold, status: "committed", settledAt: this.now, committedAmount: amount });
    let back: Returned | null = null;
    if (leftover.length > 0) {
      back = this.giveBack(`reservation ${hold.id}`, leftover, true);
      portions.push(...back.portions);
    }
    this.f.balance = this.f.balance - captured;
    this.f.reserved = this.f.reserved - hold.amount;
    const entry = this.emit("commit_reserved", captured, portions, hold.id, meta, undefined, shortfall);
    if (back !== null && back.toClosed) this.removeFromClosed(back.portions, hold.id);
    if (excess > 0) {
      const labels: EntryMeta = {
        description: "committed beyond reservation",
        metadata: excessMetadata(entry.metadata) ?? undefined,
        unit: this.unit,
      };
      this.deduct(excess, hold.spender != null || hold.feature != null ? withSpend(labels, hold) : labels, {
        allowDebt: true,
        overdraftLimit: null,
        reservationId: hold.id,
        limits: "skip",
        overdraftChecked: true,
      });
    }
    return entry;
  }

  /** Returns a hold's credits to their grants. Returns the release entry and credits that expired. */
  releaseHold(
    hold: Reservation,
    status: "released" | "expired",
    meta: EntryMeta,
  ): { entry: JournalEntry; expired: number } {
    this.inUnit(AccountWork.unitOf(hold));
    this.holds.put({ ...hold, status, settledAt: this.now });
    if (hold.spender != null || hold.feature != null) meta = withSpend(meta, hold);
    this.trueUp(hold, 0);
    return this.returnToGrants(hold, meta);
  }

  /**
   * Replaces the account's spend limits (docs/teams-and-limits.md) with `limits` (null: none),
   * recorded as a `limits` entry that moves no credits, with the limits in its metadata (which its
   * hash covers): the change is part of the audited journal, and the account's seq moves, so a
   * concurrent spend that loaded the old limits conflicts instead of writing them back.
   */
  setLimits(limits: SpendLimit[] | null, meta: EntryMeta): JournalEntry {
    this.inUnit(null);
    this.account.limits = limits === null || limits.length === 0 ? null : limits;
    const listed = (limits ?? []).map((l) => describeLimit(l));
    return this.emit("limits", 0, [], null, {
      description: "spend limits set",
      ...meta,
      metadata: { ...meta.metadata, limits: listed },
    });
  }

  /**
   * Gives back `amount` credits of `charge` (docs/concepts.md, "Giving a charge back"), at most what
   * its reversals so far (`reversed`) left of its `draw` (`amountToGiveBack`), by `reversalShares`:
   * its debt first — what the account still owes of it is cancelled; what was paid since (`paid`,
   * `PaidDebt`: as much as `reversalShares`' debt less what is still owed) goes back to the grants
   * that paid it (`debt_returned` portions), and what no grant can take (`paid.rest`) is a grant of
   * its own (`debtGrant`) — then its grants. All grants loaded (`include`); credits go back as a
   * hold's do (`giveBack`). `meta` names the charge.
   */
  reverse(
    charge: JournalEntry,
    draw: ChargeDraw,
    reversed: Reversed,
    amount: number,
    paid: { portions: readonly GrantPortion[]; rest: number },
    meta: EntryMeta,
  ): JournalEntry {
    this.inUnit(AccountWork.unitOf(charge));
    if (this.f.balance + amount > Number.MAX_SAFE_INTEGER) throw beyondSafe("balance", amount);
    const shares = reversalShares(draw, reversed, amount);
    const owed = Math.min(shares.debt, this.f.debt);
    if (sum(paid.portions) + paid.rest !== shares.debt - owed)
      throw new Error(`the paid debt of charge ${charge.id} given back does not add up to ${shares.debt - owed}`);
    this.f.debt -= owed;
    // (Debt is left only when all of the charge's debt was still owed: then nothing was paid.)
    const back = this.giveBack(`charge ${charge.id}`, shares.grants, true);
    if (paid.portions.length > 0) {
      const repaid = this.giveBack(`charge ${charge.id}`, paid.portions, true);
      for (const p of repaid.portions) back.portions.push({ ...p, kind: "debt_returned" });
      back.toClosed ||= repaid.toClosed;
    }
    if (paid.rest > 0)
      back.portions.push(
        this.newGrant({ ...debtGrant(this.newId(), this.userId, paid.rest, charge.id, this.now), unit: this.unit }),
      );
    this.f.balance += amount;
    // The spend goes back to the limits that counted the charge, while its window is current
    // (docs/teams-and-limits.md, "Late usage and reversals").
    const limits = this.account.limits;
    if (limits != null && limits.length > 0)
      this.account.limits = giveBackSpend(
        limits,
        { spender: charge.spender ?? null, feature: charge.feature ?? null, unit: this.unit },
        amount,
        { seq: charge.seq, at: (charge.occurredAt ?? charge.createdAt).getTime() },
        this.now.getTime(),
      );
    const entry = this.emit("reverse", amount, back.portions, null, meta);
    if (back.toClosed) this.removeFromClosed(back.portions, null, true);
    return entry;
  }

  /** Voids what is left of a grant (refunds, disputes). Held parts are voided when they return. */
  voidGrant(grant: Grant, meta: EntryMeta): JournalEntry {
    this.inUnit(AccountWork.unitOf(grant));
    let current = this.grants.get(grant.id);
    if (current === undefined) {
      this.addGrant(grant);
      current = grant;
    }
    const amount = current.remaining;
    this.grants.put({ ...current, remaining: 0, closedAt: this.now, closedReason: "voided" }, current);
    // An upcoming grant's credits are in no balance (docs/units.md, "Grants that start later").
    if (!isUpcoming(current)) this.f.balance = this.f.balance - amount;
    return this.emit("void", amount, amount > 0 ? [{ grantId: current.id, amount }] : [], null, meta);
  }

  /**
   * Appends a `checkpoint` entry (docs/operations.md, "Checkpoints and archival"): amount 0, the
   * account's balance, reserved and debt unchanged, and in its metadata (which its hash covers) the
   * open grants with their remaining credits and the active holds with their portions. The grants
   * the active holds draw from must be part of the work (`include`).
   */
  checkpoint(meta: EntryMeta = {}): JournalEntry {
    this.inUnit(null);
    const grantOf = (id: string) => this.grants.get(id);
    const snapshot = withUnits(snapshotOf(this.grants.all(), this.holds.all(), grantOf), this.account.units, grantOf);
    return this.emit("checkpoint", 0, [], null, {
      description: "checkpoint",
      ...meta,
      metadata: checkpointMetadata(snapshot),
    });
  }

  /** The grants the active holds draw from that are not part of the work yet. */
  missingHeldGrants(): string[] {
    const out = new Set<string>();
    for (const h of this.holds.all()) {
      if (h.status !== "active") continue;
      for (const p of h.allocations) if (p.amount > 0 && this.grants.get(p.grantId) === undefined) out.add(p.grantId);
    }
    return [...out];
  }

  // ---------------------------------------------------------------------------------------------
  // Results.

  /** Everything this work changed, for `DbTransaction.save`. */
  changes(): Changes {
    this.account.nextExpiryAt = this.computeNextExpiry();
    // What each scope was granted in its current allowance (docs/customer-state.md, "What was granted").
    const touched: { before: Grant | undefined; after: Grant }[] = [];
    // (Each unit's apart: an alert threshold may watch another unit, docs/units.md.)
    this.grants.forEachTouched((after, created) => {
      touched.push({ before: created ? undefined : this.grants.original(after.id), after });
    });
    trackAllowance(
      this.account,
      this.loaded,
      touched,
      () => this.openGrants(),
      (g) => this.grants.put(g),
    );
    this.account.updatedAt = this.now;
    return {
      account: this.account,
      previousSeq: this.loaded === null ? null : this.loaded.seq,
      insertGrants: this.grants.saved(true),
      updateGrants: this.grants.saved(false),
      insertReservations: this.holds.saved(true),
      updateReservations: this.holds.saved(false),
      entries: this.entries,
    };
  }

  get changed(): boolean {
    return this.entries.length > 0 || this.grants.changed || this.holds.changed;
  }

  // ---------------------------------------------------------------------------------------------
  // Internals.

  /**
   * Counts a spend in the current unit against the account's limits in it (refused unless `force`
   * when it does not fit). True when it passed one (forced).
   */
  private countLimits(spend: Spend, amount: number, force: boolean, what?: string, occurredAt?: Date): boolean {
    const limits = this.account.limits;
    if (limits == null || limits.length === 0) return false;
    const at = (occurredAt ?? this.now).getTime();
    const inUnit = { ...spend, unit: this.unit };
    const counted = countSpend(limits, inUnit, amount, at, { force, what, now: this.now.getTime() });
    this.noteCounted(counted);
    return counted.over;
  }

  /** Trues up `hold`'s count at its commit (`spent`) or release (0). */
  private trueUp(hold: Reservation, spent: number): void {
    const limits = this.account.limits;
    if (limits == null || limits.length === 0) return;
    const spend = { ...holdSpend(hold), unit: AccountWork.unitOf(hold) };
    this.noteCounted(trueUpHold(limits, spend, hold.amount, spent, hold.createdAt.getTime(), this.now.getTime()));
  }

  private noteCounted(counted: Counted): void {
    this.account.limits = counted.limits;
    if (counted.crossed.length > 0) (this.limitsCrossed ??= []).push(...counted.crossed);
  }

  /**
   * Draws up to `amount` from the usable grants `spend` may use, in burn-down order: on an account
   * with scoped grants, those whose scope matches it first, then the unscoped ones (./scope.ts).
   */
  private draw(amount: number, spend: Spend): GrantPortion[] {
    if (this.account.scoped === true) return this.takeInOrder(spendOrder(this.unitGrants(), spend, this.now), amount);
    // Loaded in order and nothing added: the first usable grants are the ones to take.
    if (this.ordered) return this.takeInOrder(this.grants.loaded, amount);
    const usable: Grant[] = [];
    for (const g of this.grants.all()) if (isUsable(g, this.now) && AccountWork.unitOf(g) === this.unit) usable.push(g);
    if (usable.length > 1) usable.sort(compareGrants);
    return this.takeInOrder(usable, amount);
  }

  /**
   * Takes up to `amount` from `grants`, already in burn-down order, each as far as it goes; each is
   * read as it stands in this work, and those not usable now are passed over.
   */
  private takeInOrder(grants: readonly Grant[], amount: number): GrantPortion[] {
    const portions: GrantPortion[] = [];
    let left = amount;
    for (const listed of grants) {
      if (left === 0) break;
      const g = this.grants.current(listed);
      // No operation takes one unit's credits for another's (docs/units.md).
      if (!isUsable(g, this.now) || (g.unit ?? null) !== this.unit) continue;
      const take = Math.min(g.remaining, left);
      left -= take;
      portions.push({ grantId: g.id, amount: take });
      this.grants.put({ ...g, remaining: g.remaining - take }, g);
    }
    return portions;
  }

  /**
   * Ends `hold`'s earmark: its allocations go back to their grants, debt is paid from them first,
   * and what lands on a closed (or past-expiry) grant expires (or is voided) at once.
   */
  private returnToGrants(hold: Reservation, meta: EntryMeta): { entry: JournalEntry; expired: number } {
    this.inUnit(AccountWork.unitOf(hold));
    const back = this.giveBack(`reservation ${hold.id}`, hold.allocations, false);
    this.f.reserved = this.f.reserved - hold.amount;
    const entry = this.emit("release_reserved", hold.amount, back.portions, hold.id, meta);
    // (Nearly always every grant is open: then there is nothing to remove.)
    const expired = back.expired + (back.toClosed ? this.removeFromClosed(back.portions, hold.id) : 0);
    return { entry, expired };
  }

  /**
   * Gives `allocations` of hold `holdId` back to their grants, paying debt from them first; the
   * caller lowers `reserved` and writes the entry. `tagged` (a partial capture): each portion says
   * whether it was `returned` or `debt_paid`; else (a release) only the returned ones are listed.
   */
  private giveBack(of: string, allocations: readonly GrantPortion[], tagged: boolean): Returned {
    // A grant the hold drew from that is past its expiry but not closed yet (a unit of work that
    // does not settle) is closed first, so its expiry records exactly what it had unspent and
    // unheld when it expired; what the hold returns to it then expires as the hold's own entry
    // (`reservationId` set), as it does for a grant closed earlier. Rollover reads the difference.
    let due: Grant[] | null = null;
    for (const p of allocations) {
      const g = this.grants.get(p.grantId);
      if (g !== undefined && isDue(g, this.asOf ?? this.now) && !(due ??= []).includes(g)) due.push(g);
    }
    const expired = due === null ? 0 : this.closeExpired(due.sort(compareGrants), { description: "credits expired" });
    let debt = this.f.debt;
    const portions: GrantPortion[] = [];
    let toClosed = false;
    for (const p of allocations) {
      const g = this.grants.get(p.grantId);
      if (g === undefined) throw new Error(`grant ${p.grantId} of ${of} was not loaded`);
      // Debt is paid from credits that go back to a grant still open. What goes back to a closed
      // grant (voided, or expired — closed just above when it was due) is removed afterwards and
      // pays nothing: a voided grant's credits must not settle usage, nor expired ones.
      // Nor do a scoped grant's: the debt is owed for spends of any scope.
      const pay = g.closedAt === null && (g.scope ?? null) === null ? Math.min(debt, p.amount) : 0;
      debt -= pay;
      if (pay > 0 && tagged) portions.push({ grantId: p.grantId, amount: pay, kind: "debt_paid" });
      const back = p.amount - pay;
      if (back === 0) continue;
      portions.push(
        tagged ? { grantId: p.grantId, amount: back, kind: "returned" } : { grantId: p.grantId, amount: back },
      );
      this.grants.put({ ...g, remaining: g.remaining + back }, g);
      if (g.closedReason !== null) toClosed = true;
    }
    this.f.debt = debt;
    return { portions, expired, toClosed };
  }

  /**
   * Removes what `giveBack` returned to closed grants (`portions`; spent and debt-paid ones passed
   * over): an `expire` or `void` entry of hold `holdId` (null: a reversal) per reason. Returns what expired.
   */
  private removeFromClosed(portions: readonly GrantPortion[], holdId: string | null, asOfCharge = false): number {
    let expired = 0;
    for (const reason of ["expired", "voided"] as const) {
      // By the instant they are dated at: when they return (a hold's release: now, or its lapse's
      // instant), or — credits a reversal gives back, which are its charge's again from the
      // charge's time (docs/concepts.md, "Two times on every entry") — when their grant closed:
      // its `expiresAt` (settled late, its `closedAt` is later) or earlier when something closed it
      // before (a plan change that expired it, a void).
      const byInstant = new Map<number, GrantPortion[]>();
      for (const p of portions) {
        const g = this.grants.get(p.grantId);
        if (p.kind === "debt_paid" || g?.closedReason !== reason) continue;
        const closedAt = Math.min(g.closedAt?.getTime() ?? Infinity, g.expiresAt?.getTime() ?? Infinity);
        const at = asOfCharge ? closedAt : Number.POSITIVE_INFINITY;
        let list = byInstant.get(at);
        if (list === undefined) byInstant.set(at, (list = []));
        list.push({ grantId: p.grantId, amount: p.amount });
      }
      for (const [at, closed] of [...byInstant].sort(([a], [b]) => a - b)) {
        for (const p of closed) {
          const g = this.grants.get(p.grantId) as Grant;
          const lost = reason === "expired" ? p.amount : 0;
          this.grants.put({ ...g, remaining: g.remaining - p.amount, expiredAmount: (g.expiredAmount ?? 0) + lost }, g);
        }
        const total = sum(closed);
        this.f.balance = this.f.balance - total;
        this.emit(reason === "expired" ? "expire" : "void", total, closed, holdId, {
          description: `returned credits of a ${reason} grant`,
          ...(at < this.now.getTime() ? { occurredAt: new Date(at) } : {}),
        });
        if (reason === "expired") expired += total;
      }
    }
    return expired;
  }

  /**
   * The account's next expiry after this work: the soonest `expiresAt` among its open grants with
   * credits left and its active holds. The stored value is kept unless a grant or hold this work
   * touched moves it: one that counts can only bring it forward, and only one that stopped counting
   * at or before it can push it back — then, and after a settlement, everything is read again.
   */
  private computeNextExpiry(): Date | null {
    let next = this.account.nextExpiryAt;
    let rescan = this.settled;
    const touched = (expiresAt: Date | null, counts: boolean) => {
      if (expiresAt === null) return;
      if (counts) next = minDate(next, expiresAt);
      else if (next !== null && expiresAt.getTime() <= next.getTime()) rescan = true;
    };
    this.grants.forEachTouched((g) => {
      touched(g.expiresAt, isOpenGrant(g));
      // An upcoming grant's start is due like an expiry (docs/units.md, "Grants that start later").
      if (isUpcoming(g)) touched(g.effectiveAt ?? null, isOpenGrant(g));
    });
    this.holds.forEachTouched((h) => touched(h.expiresAt, h.status === "active"));
    return rescan ? this.scanNextExpiry() : next;
  }

  /** `computeNextExpiry` from every grant and hold. */
  private scanNextExpiry(): Date | null {
    let next: Date | null = null;
    for (const g of this.grants.all()) {
      if (isOpenGrant(g)) next = minDate(next, isUpcoming(g) ? (g.effectiveAt ?? null) : g.expiresAt);
    }
    for (const h of this.holds.all()) {
      if (h.status === "active") next = minDate(next, h.expiresAt);
    }
    return next;
  }

  /** The due instant of the settlement step in progress, when earlier than now; else null. */
  private dueTime(): Date | null {
    const at = this.asOf;
    return at !== null && at.getTime() < this.now.getTime() ? at : null;
  }

  private emit(
    type: EntryType,
    amount: number,
    grants: GrantPortion[],
    reservationId: string | null,
    meta: EntryMeta,
    added?: { costBasis: CostBasis | null; source: GrantSource; scope: GrantScope | null; effectiveAt?: Date | null },
    /** Credits served and not paid (`charge`, `capture`): 0 on every other entry. */
    shortfall = 0,
  ): JournalEntry {
    const a = this.account;
    const keyId = this.chainKey?.id ?? null;
    // Once an account's chain is keyed it stays keyed (docs/concepts.md, "A keyed chain"): a
    // manager without keys (a replica started without them) writes nothing after a keyed entry.
    if (keyId === null && a.lastKeyId != null) throw unkeyedAfterKeyed(this.userId, a.lastKeyId);
    const entry: JournalEntry = {
      id: this.newId(),
      userId: this.userId,
      seq: a.seq + 1,
      type,
      amount,
      balanceAfter: this.f.balance,
      reservedAfter: this.f.reserved,
      debtAfter: this.f.debt,
      grants,
      reservationId,
      idempotencyKey: meta.idempotencyKey ?? null,
      fingerprint: meta.fingerprint ?? null,
      correlationId: meta.correlationId ?? null,
      description: meta.description ?? null,
      metadata: (meta.metadata ?? null) as JournalEntry["metadata"],
      // Null when not set: the hash leaves them out (canonicalEntry, src/core/domain/hash.ts).
      spender: meta.spender ?? null,
      feature: meta.feature ?? null,
      costBasis: added?.costBasis ?? null,
      source: added?.source ?? null,
      reverses: meta.reverses ?? null,
      // When its money moved (docs/concepts.md, "Two times on every entry"): what the caller says
      // (late usage, a reversal), else a settlement step's due instant; null: at `createdAt`.
      occurredAt: meta.occurredAt ?? this.dueTime(),
      createdAt: this.now,
      prevHash: a.lastHash,
      hash: "",
      takeBack: meta.takeBack ?? null,
      paymentId: meta.paymentId ?? null,
      // Only the library's overdraft cut sets it (docs/metering.md, "Served and not paid").
      shortfall: shortfall > 0 ? shortfall : null,
      // The current hash input (canonicalEntry, src/core/domain/hash.ts).
      hashVersion: 2,
      keyId,
      scope: added?.scope ?? null,
      effectiveAt: added?.effectiveAt ?? null,
      unit: this.unit,
    };
    const { hash, canonical } = hashNewEntry(entry, this.chainKey?.key);
    entry.hash = hash;
    a.seq = entry.seq;
    a.lastHash = entry.hash;
    // Written only when it changes: an unkeyed account's row never gains the field.
    if (keyId !== (a.lastKeyId ?? null)) a.lastKeyId = keyId;
    this.made.push(entry);
    this.texts.push(canonical);
    return entry;
  }
}

export const sum = (portions: readonly GrantPortion[]): number => portions.reduce((total, p) => total + p.amount, 0);

function minDate(a: Date | null, b: Date | null): Date | null {
  if (a === null) return b;
  if (b === null) return a;
  return a.getTime() <= b.getTime() ? a : b;
}

/** What `AccountWork.giveBack` gave back: the entry's portions, credits expired first, whether any went to a closed grant. */
interface Returned {
  portions: GrantPortion[];
  expired: number;
  toClosed: boolean;
}

/** What `AccountWork.settle` did: credits expired (grants and returned holds), holds released. */
export interface Settlement {
  expired: number;
  holdsReleased: number;
  creditsReleased: number;
  /**
   * Grants of a subscription period (its allocation, rollover or proration) that expired here: the
   * period has most likely ended, and its subscription may owe the next one (see
   * docs/subscriptions.md, "Periods start on time").
   */
  periodGrantsEnded: number;
  /** Grants added to start later that started here (docs/units.md, "Grants that start later"). */
  started: number;
}

/** Grants a subscription period is made of. */
export const isPeriodGrant = (g: Grant): boolean => g.source === "subscription" || g.source === "rollover";

/**
 * An operation that would take the balance (or the debt) beyond the safe-integer range, where
 * arithmetic stops being exact: refused before anything changes.
 */
function beyondSafe(what: "balance" | "debt", amount: number): RuleViolationError {
  return new RuleViolationError(
    `Cannot move ${amount} credits: the account's ${what} would go beyond ±${Number.MAX_SAFE_INTEGER}, the largest exact amount.`,
    [{ path: "amount", message: `the ${what} would go beyond the safe-integer range` }],
  );
}

/**
 * A manager without journal keys about to write after an account's keyed entry (docs/concepts.md,
 * "A keyed chain"): refused before anything is written, as an audit would report the unkeyed entry
 * as written again without the key.
 */
function unkeyedAfterKeyed(userId: string, keyId: string): ConfigurationError {
  return new ConfigurationError(
    `[credit-management] account ${JSON.stringify(userId)} has a keyed journal: its latest entry is signed with the journal key ${JSON.stringify(keyId)}, ` +
      "and this manager has no journalKeys (nor CREDIT_JOURNAL_KEYS), so it would write unkeyed entries after it. Give it the keys your other services have.",
  );
}

/**
 * `rows` grouped by unit (docs/units.md), each group in the rows' order, the groups in the order
 * their first row comes: one group, `rows` itself, while every row is in the default unit.
 */
/** `meta` for a second entry of one operation: without its key and fingerprint (the first entry's). */
function unkeyed(meta: EntryMeta): EntryMeta {
  const { idempotencyKey: _key, fingerprint: _print, ...rest } = meta;
  return rest;
}

function byUnit<T extends { unit?: string | null | undefined }>(rows: readonly T[]): [string | null, readonly T[]][] {
  let groups: Map<string | null, T[]> | null = null;
  for (const row of rows) {
    const u = row.unit ?? null;
    if (groups === null) {
      if (u === null) continue;
      groups = new Map();
      const before = rows.slice(0, rows.indexOf(row));
      if (before.length > 0) groups.set(null, before);
    }
    const list = groups.get(u);
    if (list === undefined) groups.set(u, [row]);
    else list.push(row);
  }
  return groups === null ? [[null, rows]] : [...groups];
}
