/**
 * A pause for long work done in the process (a revenue report's roll-forward: docs/revenue.md,
 * "How large a report can be"): `await pause()` between its steps lets the event loop run — health
 * checks, other requests — once `everyMs` milliseconds have passed since the last pause, and costs
 * a clock read otherwise.
 */
export function breather(everyMs = 10): () => Promise<void> | void {
  let last = performance.now();
  return () => {
    if (performance.now() - last < everyMs) return;
    return new Promise<void>((resolve) => {
      const go = () => {
        last = performance.now();
        resolve();
      };
      // setImmediate runs after pending I/O (Node.js, Bun); a timer elsewhere (Deno, Workers).
      if (typeof setImmediate === "function") setImmediate(go);
      else setTimeout(go, 0);
    });
  };
}
