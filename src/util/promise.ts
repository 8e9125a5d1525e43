/** True for a promise (or any thenable): what a caller must await; anything else is the value. */
export function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null | undefined)?.then === "function";
}

/**
 * `f(value)` at once when `value` is at hand, else once it resolves: the step of a unit of work
 * that stays synchronous on a store answering synchronously (in memory) and makes a promise only
 * where one is needed.
 */
export function andThen<T, R>(value: T | PromiseLike<T>, f: (value: T) => R | Promise<R>): R | Promise<R> {
  return isPromiseLike(value) ? Promise.resolve(value).then(f) : f(value);
}
