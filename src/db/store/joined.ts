import type { DbManager, DbTransaction } from "../../core/db/types.js";

/**
 * `base` inside a transaction the application has open (docs/transactions.md): an object that
 * inherits every method of the store, with `own` in front — the reads and parts a backend rebuilds
 * on the application's connection or session — and a `transaction` that runs each unit of work
 * with `run`, one after another (the units share one connection or session, and a unit that saw
 * another's write half done would fail its guard), each once: no group commit and no retry, since
 * a conflict aborts the application's transaction, which only the application can run again.
 * `init` and `close` do nothing: the store is the base's.
 */
export function joinedStore<S extends DbManager>(
  base: S,
  own: Record<string, unknown>,
  run: <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T) => Promise<T>,
): S {
  const scoped = Object.create(base) as S;
  let tail: Promise<unknown> = Promise.resolve();
  const transaction = <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> => {
    const next = () => run(userId, fn);
    const result = tail.then(next, next);
    // The tail only orders the next unit after this one; `result`, returned, carries the error to its caller.
    tail = result.catch(() => undefined);
    return result;
  };
  const values = { ...own, transaction, init: async () => {}, close: async () => {} };
  for (const [key, value] of Object.entries(values))
    Object.defineProperty(scoped, key, { value, writable: true, configurable: true });
  return scoped;
}
