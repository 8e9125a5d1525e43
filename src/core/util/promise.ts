/** True for a promise (or any thenable): what a caller must await; anything else is the value. */
export function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null | undefined)?.then === "function";
}

/**
 * `promise`, or a rejection with `timeoutError()` after `ms`; the timer is cleared when either
 * settles. With `unref`, the timer never keeps the process alive.
 */
export function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  timeoutError: () => Error,
  options: { unref?: boolean } = {},
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timeoutError()), ms);
    if (options.unref === true) timer.unref();
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
