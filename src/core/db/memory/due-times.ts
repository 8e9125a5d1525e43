/**
 * Things due at a time — grants that expire, holds that lapse, subscriptions that renew — by id,
 * scanned by the jobs in (time, id) order (`findDueGrants`, `findExpiredReservations`,
 * `findDueSubscriptions`). The map is the truth; the ordered list is built by the first scan after
 * an id was set, and reused by the pages that follow (a job that expires a million grants sorts
 * them once). An id deleted since is no longer in the map, and the scan skips it.
 */
export class DueTimes {
  private readonly times = new Map<string, number>();
  /** Every entry of `times` when it was built, by (time, id); null when an id was set since. */
  private ordered: { time: number; id: string }[] | null = null;

  set(id: string, time: number): void {
    if (this.times.get(id) === time) return;
    this.times.set(id, time);
    this.ordered = null;
  }

  delete(id: string): void {
    this.times.delete(id);
  }

  get size(): number {
    return this.times.size;
  }

  /** Up to `limit` ids due at `asOf` (ms) or before, in (time, id) order, strictly after `after`. */
  scan(asOf: number, limit: number, after: { time: number; id: string } | undefined): string[] {
    this.ordered ??= [...this.times].map(([id, time]) => ({ time, id })).sort(byTimeThenId);
    const ordered = this.ordered;
    // The first entry after the cursor, by binary search.
    let lo = 0;
    let hi = ordered.length;
    while (after !== undefined && lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (byTimeThenId(ordered[mid] as { time: number; id: string }, after) <= 0) lo = mid + 1;
      else hi = mid;
    }
    const out: string[] = [];
    for (let i = lo; i < ordered.length && out.length < limit; i++) {
      const { time, id } = ordered[i] as { time: number; id: string };
      if (time > asOf) break;
      if (this.times.get(id) === time) out.push(id); // else deleted since the list was built
    }
    return out;
  }
}

function byTimeThenId(a: { time: number; id: string }, b: { time: number; id: string }): number {
  return a.time - b.time || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}
