import { ConflictError, StorageError } from "../../errors.js";
import { routedInsert, toRow } from "./sql.js";
import type { Plan, Subscription } from "../../models/index.js";
import type { SqlTable } from "../../schema/sql.js";
import type { SubscriptionCursor, SubscriptionStore } from "../types-subscriptions.js";

/** What the store needs of `PostgresDbManager`. */
interface Runner {
  read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]>;
  decode<T>(key: "plans" | "subscriptions", row: Record<string, unknown>): T;
  readonly sql: {
    distributed: boolean;
    tables: { plans: SqlTable; subscriptions: SqlTable };
    select(key: "plans" | "subscriptions"): string;
    column(key: "plans" | "subscriptions", name: string): string;
  };
}

const UNIQUE_VIOLATION = "23505";

/** A unique violation, seen through the StorageError the runner wraps driver errors in. */
function isUnique(error: unknown): boolean {
  const cause =
    error instanceof StorageError ? (error.cause as { code?: string } | undefined) : (error as { code?: string });
  return cause?.code === UNIQUE_VIOLATION;
}

const cols = (t: SqlTable) => t.columns.map((c) => `"${c.name}"`).join(", ");

/**
 * Plans and subscriptions on PostgreSQL: one statement per write, guarded by `version` in its
 * WHERE clause (compare-and-set), and a partial unique index on `user_id` for active subscriptions.
 * Rows travel as JSON through `json_populate_record`, like the ledger's.
 */
export class PostgresSubscriptionStore implements SubscriptionStore {
  constructor(private readonly db: Runner) {}

  private insertText(t: SqlTable): string {
    // Citus: routed to the row's shard (`routedInsert`), not run by the coordinator.
    if (this.db.sql.distributed) return routedInsert(t, "$1::json", null);
    return `INSERT INTO ${t.qualified} (${cols(t)}) SELECT ${cols(t)} FROM json_populate_record(NULL::${t.qualified}, $1::json)`;
  }

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
    try {
      await this.db.read("insertPlan", this.insertText(t), [this.json(t, plan)]);
    } catch (error) {
      if (isUnique(error)) throw new ConflictError(`Plan ${plan.id} already exists.`, { planId: plan.id }, error);
      throw error;
    }
  }

  async getPlan(planId: string): Promise<Plan | null> {
    const rows = await this.db.read("getPlan", `${this.db.sql.select("plans")} WHERE id = $1`, [planId]);
    return rows[0] === undefined ? null : this.db.decode<Plan>("plans", rows[0]);
  }

  async listPlans(options: { includeInactive: boolean }): Promise<Plan[]> {
    const where = options.includeInactive ? "" : " WHERE is_active";
    const rows = await this.db.read("listPlans", `${this.db.sql.select("plans")}${where} ORDER BY id`, []);
    return rows.map((r) => this.db.decode<Plan>("plans", r));
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
    try {
      await this.db.read("insertSubscription", this.insertText(t), [this.json(t, s)]);
    } catch (error) {
      if (isUnique(error))
        throw new ConflictError(`User ${s.userId} already has an active subscription.`, { userId: s.userId }, error);
      throw error;
    }
  }

  async getSubscription(id: string, userId?: string): Promise<Subscription | null> {
    const select = this.db.sql.select("subscriptions");
    const rows =
      userId === undefined
        ? await this.db.read("getSubscription", `${select} WHERE id = $1`, [id])
        : await this.db.read("getSubscription", `${select} WHERE user_id = $2 AND id = $1`, [id, userId]);
    return rows[0] === undefined ? null : this.db.decode<Subscription>("subscriptions", rows[0]);
  }

  async getActiveSubscription(userId: string): Promise<Subscription | null> {
    const rows = await this.db.read(
      "getActiveSubscription",
      `${this.db.sql.select("subscriptions")} WHERE user_id = $1 AND status = 'active'`,
      [userId],
    );
    return rows[0] === undefined ? null : this.db.decode<Subscription>("subscriptions", rows[0]);
  }

  async listSubscriptions(userId: string): Promise<Subscription[]> {
    const rows = await this.db.read(
      "listSubscriptions",
      `${this.db.sql.select("subscriptions")} WHERE user_id = $1 ORDER BY ${this.db.sql.column("subscriptions", "created_at")}, id`,
      [userId],
    );
    return rows.map((r) => this.db.decode<Subscription>("subscriptions", r));
  }

  async updateSubscription(s: Subscription, expectedVersion: number): Promise<boolean> {
    const t = this.db.sql.tables.subscriptions;
    try {
      // Keyed by the owner too (docs/scaling-out.md): a subscription never changes user.
      const rows = await this.db.read("updateSubscription", this.replaceText(t, true), [
        this.json(t, s),
        s.id,
        expectedVersion,
        s.userId,
      ]);
      return rows.length === 1;
    } catch (error) {
      if (isUnique(error))
        throw new ConflictError(`User ${s.userId} already has an active subscription.`, { userId: s.userId }, error);
      throw error;
    }
  }

  async findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]> {
    const params: unknown[] = [asOf];
    let cursor = "";
    if (after !== undefined) {
      params.push(after.nextRunAt, after.id);
      cursor = " AND (next_run_at, id) > ($2, $3)";
    }
    params.push(limit);
    const rows = await this.db.read(
      "findDueSubscriptions",
      `${this.db.sql.select("subscriptions")} WHERE next_run_at IS NOT NULL AND next_run_at <= $1${cursor} ORDER BY ${this.db.sql.column("subscriptions", "next_run_at")}, id LIMIT $${params.length}`,
      params,
    );
    return rows.map((r) => this.db.decode<Subscription>("subscriptions", r));
  }
}
