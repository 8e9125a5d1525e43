import type { Db } from "mongodb";
import { MONGO_COLLECTIONS, atPath, copiedCountsAfter, isCopiedCount } from "./layout.js";
import { guard } from "./errors.js";
import { batchOf } from "./collections.js";

/**
 * `init()`'s upgrade of the fields versions after `version` set from a count in the same document
 * (`CopiedCount`, ./layout.ts): read and written here, not by an update pipeline (which some
 * servers lack), paged by `_id`; only documents that lack the field, so it can run again.
 */
export async function copyCounts(db: Db, prefix: string, version: number): Promise<void> {
  type Doc = { _id: string } & Record<string, unknown>;
  for (const copied of copiedCountsAfter(version)) {
    const collection = db.collection<Doc>(`${prefix}${MONGO_COLLECTIONS[copied.collection].name}`);
    await guard(`init: copy ${copied.field} of ${collection.collectionName}`, async () => {
      for (let after: string | null = null; ;) {
        const page = await collection
          .find(
            {
              [copied.field]: { $exists: false },
              [copied.from]: { $exists: true },
              ...(copied.where === undefined ? {} : { $expr: copied.where }),
              ...(after === null ? {} : { _id: { $gt: after } }),
            },
            { projection: { _id: 1, [copied.from]: 1 }, ...batchOf(1000) },
          )
          .sort({ _id: 1 })
          .limit(1000)
          .toArray();
        if (page.length === 0) break;
        const updates = page.flatMap((d) => {
          const v = atPath(d, copied.from);
          if (!isCopiedCount(v)) return [];
          const filter = { _id: d._id, [copied.field]: { $exists: false } };
          return [{ updateOne: { filter, update: { $set: { [copied.field]: v } } } }];
        });
        if (updates.length > 0) await collection.bulkWrite(updates, { ordered: false });
        after = page[page.length - 1]?._id ?? null;
      }
    });
  }
}
