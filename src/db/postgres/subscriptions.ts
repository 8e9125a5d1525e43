import { ConflictError } from "../../core/errors.js";
import { unlessTaken } from "./errors.js";
import { cols, insertRowText, toRow } from "./sql.js";
import type { Plan, Subscription } from "../../core/models/index.js";
import type { SqlTable } from "../../schema/sql.js";
import type { SubscriptionCursor, SubscriptionStore } from "../../core/db/types-subscriptions.js";
import type { PostgresDbManager } from "./index.js";
import { byId, list, one, scanDue } from "./reads.js";

/** The error of a write that would give `s`'s user a second active subscription. */
function activeTaken(s: Subscription, cause: unknown): ConflictError {
  return new ConflictError(`User ${s.userId} already has an active subscription.`, { userId: s.userId }, cause);
}

/** What the store needs of `PostgresDbManager`. */
type Runner = Pick<PostgresDbManager, "read" | "sql">;

/**
 * Plans and subscriptions on PostgreSQL: one statement per write, guarded by `version` in its
 * WHERE clause (compare-and-set), and a partial unique index on `user_id` for active subscriptions.
 * Rows travel as JSON through `json_populate_record`, like the ledger's.
 */
export class PostgresSubscriptionStore implements SubscriptionStore {
  constructor(private readonly db: Runner) {}

  /** Replaces every column of the row with id $2 whose version is $3 (and, `byUser`, whose user_id is $4). */
  private replaceText(t: SqlTable, byUser = false): string {
    // Citus refuses a write of the distribution column, even of its own value: not `user_id`.
    const c = this.db.sql.distributed
      ? cols({ ...t, columns: t.columns.filter((x) => x.name !== "user_id") })
      : cols(t);
    return (
      `UPDATE ${t.qualified} SET (${c}) = (SELECT ${c} FROM json_populate_record(NULL::${t.qualified}, $1::json)) ` +
      `WHERE id = $2 AND version = $3${byUser ? " AND user_id = $4" : ""} RETURNING 1`
    );
  }

  private json(t: SqlTable, value: object): string {
    return JSON.stringify(toRow(t.columns, value as Record<string, unknown>));
  }

  async insertPlan(plan: Plan): Promise<void> {
    const t = this.db.sql.tables.plans;
    const write = this.db.read("insertPlan", insertRowText(t, this.db.sql.distributed), [this.json(t, plan)]);
    await unlessTaken(
      write,
      (error) => new ConflictError(`Plan ${plan.id} already exists.`, { planId: plan.id }, error),
    );
  }

  getPlan(planId: string): Promise<Plan | null> {
    return byId(this.db, "getPlan", "plans", planId, undefined);
  }

  listPlans(options: { includeInactive: boolean }): Promise<Plan[]> {
    return list(this.db, "listPlans", "plans", `${options.includeInactive ? "" : "WHERE is_active "}ORDER BY id`, []);
  }

  async updatePlan(plan: Plan, expectedVersion: number): Promise<boolean> {
    const t = this.db.sql.tables.plans;
    const rows = await this.db.read("updatePlan", this.replaceText(t), [this.json(t, plan), plan.id, expectedVersion]);
    return rows.length === 1;
  }

  async deletePlan(planId: string, expectedVersion: number): Promise<boolean> {
    const t = this.db.sql.tables.plans;
    const rows = await this.db.read(
      "deletePlan",
      `DELETE FROM ${t.qualified} WHERE id = $1 AND version = $2 RETURNING 1`,
      [planId, expectedVersion],
    );
    return rows.length === 1;
  }

  async planHasSubscribers(planId: string): Promise<boolean> {
    const t = this.db.sql.tables.subscriptions;
    const rows = await this.db.read(
      "planHasSubscribers",
      `SELECT 1 FROM ${t.qualified} WHERE status = 'active' AND (plan_id = $1 OR pending_plan_id = $1) LIMIT 1`,
      [planId],
    );
    return rows.length > 0;
  }

  async insertSubscription(s: Subscription): Promise<void> {
    const t = this.db.sql.tables.subscriptions;
    const write = this.db.read("insertSubscription", insertRowText(t, this.db.sql.distributed), [this.json(t, s)]);
    await unlessTaken(write, (error) => activeTaken(s, error));
  }

  getSubscription(id: string, userId?: string): Promise<Subscription | null> {
    return byId(this.db, "getSubscription", "subscriptions", id, userId);
  }

  getActiveSubscription(userId: string): Promise<Subscription | null> {
    return one(this.db, "getActiveSubscription", "subscriptions", "WHERE user_id = $1 AND status = 'active'", [userId]);
  }

  listSubscriptions(userId: string): Promise<Subscription[]> {
    const order = `${this.db.sql.column("subscriptions", "created_at")}, id`;
    return list(this.db, "listSubscriptions", "subscriptions", `WHERE user_id = $1 ORDER BY ${order}`, [userId]);
  }

  async updateSubscription(s: Subscription, expectedVersion: number): Promise<boolean> {
    const t = this.db.sql.tables.subscriptions;
    // Keyed by the owner too (docs/scaling-out.md): a subscription never changes user.
    const write = this.db.read("updateSubscription", this.replaceText(t, true), [
      this.json(t, s),
      s.id,
      expectedVersion,
      s.userId,
    ]);
    const rows = await unlessTaken(write, (error) => activeTaken(s, error));
    return rows.length === 1;
  }

  findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]> {
    const cursor = after && { at: after.nextRunAt, id: after.id };
    const where = "next_run_at IS NOT NULL";
    return scanDue(this.db, "findDueSubscriptions", "subscriptions", "next_run_at", where, asOf, limit, cursor);
  }
}
