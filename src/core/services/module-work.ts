import type { AccountWork } from "../domain/account-work.js";
import type { EntryMeta, NewGrant, UnitWork } from "../domain/unit-work.js";
import { ModuleError } from "../errors.js";
import type { ModuleCapability } from "../module.js";
import type { Account, Grant, JournalEntry, Reservation } from "../models/index.js";

/*
 * The `UnitWork` a module's unit of work gets (`ModuleContext.runUnitOfWork`, docs/modules.md,
 * "Capabilities"): the core's `AccountWork` behind the core's rules. An option that passes one of
 * them — an overdraft limit looser than the manager's, spend limits skipped or not enforced, an
 * entry that takes credits back — needs the capability the module declared; without it the
 * operation is a `ModuleError` before anything is recorded (the unit of work then writes nothing).
 */

/** A module's view of one account in a unit of work: `work`'s operations within `allowed`. */
export class ModuleWork implements UnitWork {
  constructor(
    private readonly work: AccountWork,
    private readonly module: string,
    private readonly allowed: ReadonlySet<ModuleCapability>,
    /** The manager's overdraft limit of the default unit (null: unlimited). */
    private readonly overdraftLimit: number | null,
  ) {}

  get userId(): string {
    return this.work.userId;
  }
  get now(): Date {
    return this.work.now;
  }
  get isNew(): boolean {
    return this.work.isNew;
  }
  get changed(): boolean {
    return this.work.changed;
  }
  get account(): Account {
    return this.work.account;
  }
  openGrants(): Grant[] {
    return this.work.openGrants();
  }
  getGrant(id: string): Grant | undefined {
    return this.work.getGrant(id);
  }
  getHold(id: string): Reservation | undefined {
    return this.work.getHold(id);
  }
  include(grants: readonly Grant[]): void {
    this.work.include(grants);
  }
  useUnit(unit: string | null | undefined): void {
    this.work.useUnit(unit);
  }
  availableFor(spend: { spender: string | null; feature: string | null; unit?: string | null | undefined }): number {
    return this.work.availableFor(spend);
  }

  add(amount: number, grant: NewGrant, meta: EntryMeta): JournalEntry {
    return this.work.add(amount, grant, this.meta(meta, "add"));
  }

  deduct(
    amount: number,
    meta: EntryMeta,
    options: { allowDebt: boolean; overdraftLimit: number | null; limits?: "enforce" | "force" | "skip" },
  ): JournalEntry {
    const { allowDebt, overdraftLimit, limits } = options;
    // The overdraft limit applies to a deduction into debt alone.
    if (allowDebt === true) this.overdraft(overdraftLimit, "deduct");
    if (limits === "skip" || (limits === "force" && allowDebt !== true))
      this.need("spendLimits", "deduct", `limits: "${limits}"${limits === "force" ? " without allowDebt" : ""}`);
    // Only the options of `UnitWork.deduct`: the core's own (a hold's id, an overdraft checked by the caller) stay its own.
    return this.work.deduct(amount, this.meta(meta, "deduct"), {
      allowDebt: allowDebt === true,
      overdraftLimit,
      ...(limits === undefined ? {} : { limits }),
    });
  }

  deductUpToLimit(requested: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry {
    this.overdraft(overdraftLimit, "deductUpToLimit");
    return this.work.deductUpToLimit(requested, this.meta(meta, "deductUpToLimit"), overdraftLimit);
  }

  reserve(
    requested: number,
    ttlSeconds: number,
    reason: string | null,
    meta: EntryMeta,
    minimum?: number,
  ): { reservation: Reservation; entry: JournalEntry } {
    return this.work.reserve(requested, ttlSeconds, reason, this.meta(meta, "reserve"), minimum);
  }

  commitUpToLimit(hold: Reservation, requested: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry {
    this.overdraft(overdraftLimit, "commitUpToLimit");
    return this.work.commitUpToLimit(hold, requested, this.meta(meta, "commitUpToLimit"), overdraftLimit);
  }

  releaseHold(
    hold: Reservation,
    status: "released" | "expired",
    meta: EntryMeta,
  ): { entry: JournalEntry; expired: number } {
    return this.work.releaseHold(hold, status, this.meta(meta, "releaseHold"));
  }

  voidGrant(grant: Grant, meta: EntryMeta): JournalEntry {
    return this.work.voidGrant(grant, this.meta(meta, "voidGrant"));
  }

  /** `meta`, unless it takes credits back without the `takeBack` capability. */
  private meta(meta: EntryMeta, operation: string): EntryMeta {
    if (meta.takeBack !== undefined && meta.takeBack !== null)
      this.need("takeBack", operation, `takeBack: "${String(meta.takeBack)}"`);
    return meta;
  }

  /**
   * An overdraft limit no looser than the manager's (a lower one is a stricter rule, anyone's to
   * apply); a looser one needs `overdraftLimit`.
   */
  private overdraft(given: number | null, operation: string): void {
    const own = this.overdraftLimit;
    if (own === null) return;
    if (given !== null && typeof given === "number" && given <= own) return;
    this.need("overdraftLimit", operation, `overdraftLimit: ${String(given)} (the manager's is ${own})`);
  }

  /** A `ModuleError` unless the module declared `capability`. */
  private need(capability: ModuleCapability, operation: string, asked: string): void {
    if (this.allowed.has(capability)) return;
    throw new ModuleError(
      this.module,
      `[credit-management] module "${this.module}": UnitWork.${operation} with ${asked} needs the "${capability}" capability, which the module does not declare (docs/modules.md, "Capabilities"); nothing was written`,
      { capability, operation },
    );
  }
}
