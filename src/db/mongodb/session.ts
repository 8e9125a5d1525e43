import type { ClientSession } from "mongodb";

/** Where each collection method the adapter calls takes its options (0-based argument index). */
const OPTIONS_AT: Readonly<Record<string, number>> = {
  find: 1,
  findOne: 1,
  aggregate: 1,
  countDocuments: 1,
  insertOne: 1,
  insertMany: 1,
  deleteOne: 1,
  deleteMany: 1,
  bulkWrite: 1,
  findOneAndDelete: 1,
  distinct: 2,
  updateOne: 2,
  updateMany: 2,
  replaceOne: 2,
  findOneAndUpdate: 2,
  findOneAndReplace: 2,
};

/**
 * `collection` with `session` in the options of every read and write, so that the store's reads
 * and writes outside units of work run in the application's transaction too (they see its own
 * uncommitted writes, and commit or roll back with it; docs/transactions.md).
 */
export function inSession<C extends object>(collection: C, session: ClientSession): C {
  return new Proxy(collection, {
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== "function") return value;
      const at = typeof key === "string" ? OPTIONS_AT[key] : undefined;
      if (at === undefined) return (value as (...a: unknown[]) => unknown).bind(target);
      return (...args: unknown[]) => {
        const a = [...args];
        while (a.length < at) a.push(undefined);
        a[at] = { ...(a[at] as object | undefined), session };
        return (value as (...a: unknown[]) => unknown).apply(target, a);
      };
    },
  });
}
