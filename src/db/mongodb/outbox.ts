import type { ClientSession, Collection, Filter, IndexDescription } from "mongodb";
import { Notification, type Notification as NotificationT } from "../../core/models/index.js";
import {
  completedFields,
  type ClaimQuery,
  type NotificationUpdate,
  type OutboxQuery,
} from "../../core/db/types-notifications.js";
import { fromDoc, kind, toDoc, type Kind, type StoredDoc } from "./documents.js";
import { DUPLICATE_KEY, guard, isDriverError, writeOne } from "./errors.js";
import { batchOf } from "./collections.js";

export const NOTIFICATION: Kind<NotificationT> = kind<NotificationT>("id", Notification.shape);

/** An outbox row; a document without `version` has a payload of version 1. */
function rowOf(doc: StoredDoc): NotificationT {
  const row = fromDoc(NOTIFICATION, doc);
  if (row.version === null) row.version = 1;
  return row;
}

/** The outbox collection's indexes (created by `init()`). */
export const NOTIFICATION_INDEXES: IndexDescription[] = [
  // Dedupe keys are unique per user, where a row has one.
  {
    key: { userId: 1, dedupeKey: 1 },
    name: "user_dedupe_key",
    unique: true,
    partialFilterExpression: { dedupeKey: { $type: "string" } },
  },
  // A user's oldest pending row (the only one a dispatcher may claim); listNotifications().
  { key: { userId: 1, status: 1, _id: 1 }, name: "user_status_id" },
  // Dispatchers: pending rows that are due, oldest first (delivered rows leave the index).
  { key: { nextAttemptAt: 1, _id: 1 }, name: "pending_due", partialFilterExpression: { status: "pending" } },
  // purgeNotifications(): settled rows by settlement time.
  { key: { settledAt: 1 }, name: "settled", partialFilterExpression: { settledAt: { $type: "date" } } },
];

/** How many due rows a claim looks at per row it may claim (several may belong to one user). */
const SCAN_FACTOR = 8;
/** Pages of due rows one claim looks at, at most. */
const MAX_PAGES = 8;

/** The MongoDB outbox: rows written in the unit of work's transaction, claimed with a lease. */
export class MongoOutbox {
  constructor(private readonly c: Collection<StoredDoc>) {}

  /** Inside a unit of work's transaction (a dedupe clash aborts it, like any unique index). */
  async insertInTransaction(rows: readonly NotificationT[], session: ClientSession): Promise<void> {
    if (rows.length === 0) return;
    const docs = rows.map((r) => toDoc(NOTIFICATION, r));
    if (docs.length === 1) await this.c.insertOne(docs[0] as StoredDoc, { session });
    else await this.c.insertMany(docs, { session, ordered: true });
  }

  async insertNotifications(rows: readonly NotificationT[]): Promise<number> {
    if (rows.length === 0) return 0;
    try {
      const res = await this.c.insertMany(
        rows.map((r) => toDoc(NOTIFICATION, r)),
        { ordered: false },
      );
      return res.insertedCount;
    } catch (error) {
      // Rows whose dedupe key is taken are skipped; anything else is a failure.
      const e = error as {
        writeErrors?: { code?: number }[] | { code?: number };
        insertedCount?: number;
        result?: { insertedCount?: number };
      };
      const errors = Array.isArray(e.writeErrors) ? e.writeErrors : e.writeErrors ? [e.writeErrors] : [];
      if (isDriverError(error) && errors.length > 0 && errors.every((w) => w.code === DUPLICATE_KEY)) {
        return e.insertedCount ?? e.result?.insertedCount ?? rows.length - errors.length;
      }
      return guard("insertNotifications", () => Promise.reject(error));
    }
  }

  /**
   * Looks at the due pending rows (oldest first), and for each user among them claims the user's
   * oldest pending row if it is due and not claimed: one `findOneAndUpdate` per row, guarded on
   * `status` and the lapsed lease, so of several dispatchers exactly one wins it. Users already
   * looked at are left out of the next page (`$nin`), so a user whose oldest row waits for its
   * backoff (with later rows due behind it) never hides the other users' rows.
   */
  async claimNotifications(q: ClaimQuery): Promise<NotificationT[]> {
    if (q.limit <= 0) return [];
    if (q.types !== undefined) return this.claimOfTypes(q, q.types);
    const seen: string[] = [];
    const claimed: NotificationT[] = [];
    const until = new Date(q.now.getTime() + q.leaseMs);
    for (let page = 0; page < MAX_PAGES && claimed.length < q.limit; page++) {
      const filter: Filter<StoredDoc> = { status: "pending", nextAttemptAt: { $lte: q.now } };
      if (seen.length > 0) filter.userId = { $nin: seen };
      const due = await guard("claimNotifications", () =>
        this.c
          .find(filter, { projection: { userId: 1 }, ...batchOf((q.limit - claimed.length) * SCAN_FACTOR) })
          .sort({ nextAttemptAt: 1, _id: 1 })
          .limit((q.limit - claimed.length) * SCAN_FACTOR)
          .toArray(),
      );
      const users: string[] = [];
      for (const d of due) {
        const u = d.userId as string;
        if (!users.includes(u)) users.push(u);
        if (users.length >= q.limit - claimed.length) break;
      }
      if (users.length === 0) break;
      seen.push(...users);
      const won = await guard("claimNotifications", () =>
        Promise.all(users.map((userId) => this.claimHead(userId, q, until))),
      );
      for (const doc of won) if (doc !== null) claimed.push(rowOf(doc));
    }
    return claimed.sort((a, b) => a.nextAttemptAt.getTime() - b.nextAttemptAt.getTime() || (a.id < b.id ? -1 : 1));
  }

  /**
   * `ClaimQuery.types`: the due, unclaimed rows of those types (oldest first, through
   * `pending_due`), each taken by a `findOneAndUpdate` guarded on `status` and the lapsed lease.
   */
  private async claimOfTypes(q: ClaimQuery, types: readonly string[]): Promise<NotificationT[]> {
    const until = new Date(q.now.getTime() + q.leaseMs);
    const lapsed = [{ claimedUntil: null }, { claimedUntil: { $lte: q.now } }];
    const due = await guard("claimNotifications", () =>
      this.c
        .find(
          { status: "pending", nextAttemptAt: { $lte: q.now }, type: { $in: [...types] }, $or: lapsed },
          { projection: { _id: 1 }, ...batchOf(q.limit) },
        )
        .sort({ nextAttemptAt: 1, _id: 1 })
        .limit(q.limit)
        .toArray(),
    );
    const won = await guard("claimNotifications", () =>
      Promise.all(
        due.map((d) =>
          this.c.findOneAndUpdate(
            { _id: d._id, status: "pending", $or: lapsed },
            { $set: { claimedUntil: until, claimToken: q.token } },
            { returnDocument: "after" },
          ),
        ),
      ),
    );
    return won
      .filter((d): d is NonNullable<typeof d> => d !== null)
      .map(rowOf)
      .sort((a, b) => a.nextAttemptAt.getTime() - b.nextAttemptAt.getTime() || (a.id < b.id ? -1 : 1));
  }

  /** Claims `userId`'s oldest pending row if it is due and unclaimed; null otherwise or when another dispatcher won. */
  private async claimHead(userId: string, q: ClaimQuery, until: Date): Promise<StoredDoc | null> {
    const head = await this.c.findOne({ userId, status: "pending" }, { sort: { _id: 1 } });
    if (head === null) return null;
    if ((head.nextAttemptAt as Date).getTime() > q.now.getTime()) return null;
    if (head.claimedUntil !== null && (head.claimedUntil as Date).getTime() > q.now.getTime()) return null;
    return writeOne("claimNotifications", () =>
      this.c.findOneAndUpdate(
        { _id: head._id, userId, status: "pending", $or: [{ claimedUntil: null }, { claimedUntil: { $lte: q.now } }] },
        { $set: { claimedUntil: until, claimToken: q.token } },
        { returnDocument: "after" },
      ),
    );
  }

  async completeNotification(id: string, token: string, u: NotificationUpdate, userId?: string): Promise<boolean> {
    const res = await writeOne("completeNotification", () =>
      this.c.updateOne(
        { _id: id, ...(userId === undefined ? {} : { userId }), status: "pending", claimToken: token },
        { $set: completedFields(u) },
      ),
    );
    return res.matchedCount === 1;
  }

  async purgeNotifications(before: Date, limit: number): Promise<number> {
    if (limit <= 0) return 0;
    const ids = await guard("purgeNotifications", () =>
      this.c
        .find(
          { settledAt: { $type: "date", $lt: before }, status: { $ne: "pending" } },
          { projection: { _id: 1 }, ...batchOf(limit) },
        )
        .sort({ settledAt: 1 })
        .limit(limit)
        .toArray(),
    );
    if (ids.length === 0) return 0;
    const res = await guard("purgeNotifications", () =>
      this.c.deleteMany({ _id: { $in: ids.map((d) => d._id) }, status: { $ne: "pending" } }),
    );
    return res.deletedCount;
  }

  /** Pending rows through `pending_due`, failed ones through `settled` (docs/console.md). */
  async listOutbox(q: OutboxQuery): Promise<NotificationT[]> {
    if (q.limit <= 0) return [];
    const pending = q.status === "pending";
    const field = pending ? "nextAttemptAt" : "settledAt";
    const filter: Filter<StoredDoc> = pending
      ? { status: "pending" }
      : { settledAt: { $type: "date" }, status: "failed" };
    if (q.after !== undefined) {
      const op = pending ? "$gt" : "$lt";
      (filter as Record<string, unknown>).$or = [
        { [field]: { [op]: q.after.at } },
        { [field]: q.after.at, _id: { [op]: q.after.id } },
      ];
    }
    const dir = pending ? 1 : -1;
    const docs = await guard("listOutbox", () =>
      this.c
        .find(filter, batchOf(q.limit))
        .sort({ [field]: dir, _id: dir })
        .limit(q.limit)
        .hint(pending ? "pending_due" : "settled")
        .toArray(),
    );
    return docs.map((d) => fromDoc(NOTIFICATION, d));
  }

  async listNotifications(
    userId: string,
    query: { status?: NotificationT["status"]; limit: number },
  ): Promise<NotificationT[]> {
    if (query.limit <= 0) return [];
    const filter = query.status === undefined ? { userId } : { userId, status: query.status };
    const docs = await guard("listNotifications", () =>
      this.c.find(filter, batchOf(query.limit)).sort({ _id: 1 }).limit(query.limit).toArray(),
    );
    return docs.map(rowOf);
  }
}
