import type { Collection, Filter } from "mongodb";
import { ConflictError } from "../../core/errors.js";
import type { PeriodClose, PeriodCloseMark } from "./model.js";
import type { MongoBoundPart, MongoPartHost } from "../../db/mongodb/module-part.js";
import { ENTRY, fromDoc, type StoredDoc } from "../../db/mongodb/documents.js";
import { ONE_BATCH, batchOf } from "../../db/mongodb/collections.js";
import type { JournalEntry } from "../../core/models/index.js";
import { DUPLICATE_KEY, errorCode, guard, writeOne } from "../../db/mongodb/errors.js";
import type { MovedEntriesQuery, PeriodCloseStore, RevenueSummaryReads } from "./store.js";
import { closeGoesBack } from "./store-errors.js";

/** Marks inserted per command; accounts whose moved entries one `find` reads. */
const BATCH = 1000;

/** The revenue module's part of `MongoDbManager` (`revenueStorePart.mongodb`): the closed periods, no summary. */
export function revenueMongoPart(host: MongoPartHost): MongoBoundPart<RevenueSummaryReads> {
  return { reads: new MongoPeriodCloses(host) };
}

/**
 * Closed periods of `MongoDbManager` (collections `<prefix>period_closes`, `_id` the close's
 * `through`, and `<prefix>period_close_marks`, `_id` "<through ms>:<user id>"). A close reads the
 * accounts and inserts their marks (a retry after a crash finds its marks there and keeps them),
 * then its row last, so a reader sees a close only once its marks are complete. The row names the
 * close before it (`after`, unique): of two racing closes, one is recorded.
 */
class MongoPeriodCloses implements PeriodCloseStore {
  private readonly closes: Collection<StoredDoc>;
  private readonly marksOf: Collection<StoredDoc>;
  private readonly accounts: Collection<StoredDoc>;
  private readonly journal: Collection<StoredDoc>;

  constructor(host: MongoPartHost) {
    this.closes = host.collection("period_closes");
    this.marksOf = host.collection("period_close_marks");
    this.accounts = host.collection("accounts");
    this.journal = host.collection("journal");
  }

  private async latest(): Promise<Date | null> {
    const [d] = await guard("closePeriod", () => this.closes.find({}).sort({ _id: -1 }).limit(1).toArray());
    return d === undefined ? null : (d._id as unknown as Date);
  }

  async recordClose(through: Date, closedAt: Date): Promise<PeriodClose> {
    const latest = await this.latest();
    if (latest !== null && through.getTime() <= latest.getTime()) throw closeGoesBack("mongodb", through, latest);
    let accounts = 0;
    let batch: StoredDoc[] = [];
    const flush = async () => {
      if (batch.length === 0) return;
      const docs = batch;
      batch = [];
      try {
        await this.marksOf.insertMany(docs, { ordered: false });
      } catch (error) {
        // A retry of a close that crashed: its marks are there already (kept as they were).
        const errors = (error as { writeErrors?: unknown[] | unknown }).writeErrors;
        const list = Array.isArray(errors) ? errors : errors === undefined ? [] : [errors];
        if (list.length === 0 || !list.every((e) => errorCode(e) === DUPLICATE_KEY)) throw error;
      }
    };
    await guard("closePeriod", async () => {
      // Every account's seq, a page by `_id` at a time, each page in one batch (no cursor left
      // open for a `getMore`, as in `movedEntries`).
      for (let after: string | null = null; ;) {
        const page = await this.accounts
          .find(after === null ? {} : { _id: { $gt: after } }, { projection: { _id: 1, seq: 1 }, ...batchOf(BATCH) })
          .sort({ _id: 1 })
          .limit(BATCH)
          .toArray();
        for (const a of page) {
          const userId = String(a._id);
          batch.push({ _id: `${through.getTime()}:${userId}`, through, userId, seq: Number(a.seq ?? 0) } as StoredDoc);
          accounts++;
        }
        await flush();
        if (page.length < BATCH) break;
        after = String(page[page.length - 1]!._id);
      }
    });
    const close: PeriodClose = { through, closedAt, accounts };
    await writeOne(
      "closePeriod",
      () =>
        this.closes.insertOne({
          _id: through as unknown as string,
          closedAt,
          accounts,
          after: latest,
        } as StoredDoc),
      (cause) =>
        new ConflictError(
          `[credit-management] [mongodb] closePeriod: another close was recorded at the same moment (closes only move forward): list them before closing again`,
          { through: through.toISOString() },
          cause,
        ),
    );
    return close;
  }

  async listCloses(): Promise<PeriodClose[]> {
    const docs = await guard("listPeriodCloses", () => this.closes.find({}, ONE_BATCH).sort({ _id: 1 }).toArray());
    return docs.map((d) => ({
      through: d._id as unknown as Date,
      closedAt: d.closedAt as Date,
      accounts: Number(d.accounts),
    }));
  }

  async marks(userIds: readonly string[] | null): Promise<PeriodCloseMark[]> {
    const filter = userIds === null ? {} : { userId: { $in: [...userIds] } };
    const docs = await guard("periodCloseMarks", () => this.marksOf.find(filter, ONE_BATCH).toArray());
    return docs.map((d) => ({ through: d.through as Date, userId: String(d.userId), seq: Number(d.seq) }));
  }

  /**
   * A page of accounts at a time (by `_id`, the user id), their marks at the close (`_id`
   * "<through ms>:<user id>"), then one `find` of their entries past the marks — an `$or` of one
   * range of the journal's (userId, seq) index per account — until `limit` entries or the last
   * account. Each read asks for its whole answer in one batch: no cursor is left open for a
   * `getMore`, which a failover or a wire gateway can lose, failing the report.
   */
  async movedEntries(query: MovedEntriesQuery): Promise<JournalEntry[]> {
    const out: JournalEntry[] = [];
    const after = query.after;
    // Accounts from the last entry's (past that entry), then the next ones.
    let accounts: Filter<StoredDoc> = after === null ? {} : { _id: { $gte: after.userId } };
    const moved: Filter<StoredDoc> = {
      type: { $in: [...query.types] },
      // When the money moved: `occurredAt`, else `createdAt` (as `listJournal` reads it).
      $or: [{ occurredAt: { $lt: query.before } }, { occurredAt: null, createdAt: { $lt: query.before } }],
    };
    for (;;) {
      const ids = (
        await guard("movedEntries", () =>
          this.accounts
            .find(accounts, { projection: { _id: 1 }, ...batchOf(BATCH) })
            .sort({ _id: 1 })
            .limit(BATCH)
            .toArray(),
        )
      ).map((d) => String(d._id));
      if (ids.length === 0) return out;
      const through = query.through.getTime();
      const marks = await guard("movedEntries", () =>
        this.marksOf
          .find(
            { _id: { $in: ids.map((u) => `${through}:${u}`) } },
            { projection: { userId: 1, seq: 1 }, ...ONE_BATCH },
          )
          .toArray(),
      );
      const markOf = new Map(marks.map((m) => [String(m.userId), Number(m.seq)]));
      const past = ids.map((u) => ({
        userId: u,
        seq: { $gt: Math.max(markOf.get(u) ?? 0, after !== null && u === after.userId ? after.seq : 0) },
      }));
      const want = query.limit - out.length;
      const docs = await guard("movedEntries", () =>
        this.journal
          .find({ $and: [{ $or: past }, moved] }, batchOf(want))
          .sort({ userId: 1, seq: 1 })
          .limit(want)
          .toArray(),
      );
      for (const d of docs) out.push(fromDoc(ENTRY, d));
      if (out.length >= query.limit || ids.length < BATCH) return out;
      accounts = { _id: { $gt: ids[ids.length - 1]! } };
    }
  }
}
