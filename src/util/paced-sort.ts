/** Items sorted in one piece before the first pause, and merged between pauses. */
const RUN = 1024;

/**
 * `items` sorted by `compare`, stably — what `[...items].sort(compare)` gives — in steps of about
 * `RUN` comparisons with `await pause()` between them (docs/revenue.md, "How large a report can
 * be": the event loop runs while a large report's rows are put in order). Runs of `RUN` items are
 * sorted, then merged two by two.
 */
export async function pacedSort<T>(
  items: readonly T[],
  compare: (a: T, b: T) => number,
  pause: () => Promise<void> | void,
): Promise<T[]> {
  let runs: T[][] = [];
  for (let i = 0; i < items.length; i += RUN) {
    runs.push(items.slice(i, i + RUN).sort(compare));
    await pause();
  }
  while (runs.length > 1) {
    const next: T[][] = [];
    for (let i = 0; i < runs.length; i += 2) {
      const a = runs[i]!;
      const b = runs[i + 1];
      if (b === undefined) {
        next.push(a);
        continue;
      }
      const out = new Array<T>(a.length + b.length);
      let x = 0;
      let y = 0;
      let k = 0;
      while (x < a.length && y < b.length) {
        // The left run's item first on a tie: stable.
        out[k++] = compare(b[y]!, a[x]!) < 0 ? b[y++]! : a[x++]!;
        if (k % RUN === 0) await pause();
      }
      while (x < a.length) out[k++] = a[x++]!;
      while (y < b.length) out[k++] = b[y++]!;
      next.push(out);
    }
    runs = next;
  }
  return runs[0] ?? [];
}
