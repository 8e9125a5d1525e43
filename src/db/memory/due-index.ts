/**
 * An ordered index of (time, id) for the in-memory store's job scans (`findDueGrants`,
 * `findExpiredReservations`, `findDueSubscriptions`): a sorted array searched by binary search,
 * with additions buffered and merged on the next scan (jobs scan rarely, units of work add
 * often) and removals lazy: the scan asks `live(id, time)` and skips what no longer qualifies;
 * dead entries are dropped when they outnumber the live ones — as soon as `removed()` counts
 * them, so a store whose jobs never run does not keep one entry for every hold it ever had. A scan costs O(log n + what it returns + dead entries in its way); a
 * job that expires a million grants touches each once.
 */
/**
 * How many of the latest additions `removed(time, id)` looks through: more than the holds a busy process
 * has in flight at once, so a hold settled within its request is nearly always found there.
 */
const RECENT = 128;

export class DueIndex {
  private times: number[] = [];
  private ids: string[] = [];
  private addedTimes: number[] = [];
  private addedIds: string[] = [];
  /** Entries known dead (removed or superseded) still in the arrays. */
  private dead = 0;

  /** `live(id, time)`: whether an entry still qualifies (its row still has that time). */
  constructor(private readonly live: (id: string, time: number) => boolean) {}

  /** Records that `id` is due at `time` (ms). Add again when its time changes. */
  add(time: number, id: string): void {
    this.addedTimes.push(time);
    this.addedIds.push(id);
  }

  /**
   * Tells the index one entry died (call it once the entry no longer qualifies); the scan learns it
   * through `live` anyway. Dead entries that outnumber the live ones are dropped at once (O(n)
   * every n/2 removals: O(1) each).
   *
   * With the entry's `time` and `id` (an index where each id is added once, as holds are): an entry added lately — a hold
   * settled within its request, the usual case — is taken out of the additions at once, found among
   * the last `RECENT`, so the index never keeps it, and compaction never has to ask
   * `live` about it.
   */
  removed(time?: number, id?: string): void {
    if (time !== undefined && id !== undefined && this.takeRecent(time, id)) return;
    this.dead++;
    if (this.dead > 1024 && this.dead > this.size / 2) {
      this.compact();
      // Most entries added since the last merge are dead by now (holds settle within a request):
      // dropped before the merge sorts them, not after.
      this.pruneAdded();
      this.merge();
    }
  }

  /**
   * Takes the entry (`time`, `id`) out of the last `RECENT` additions (their order does not
   * matter): false if it is not there. Times are compared first (a number, not a string).
   */
  private takeRecent(time: number, id: string): boolean {
    const ids = this.addedIds;
    const times = this.addedTimes;
    const last = ids.length - 1;
    const stop = Math.max(0, ids.length - RECENT);
    for (let k = last; k >= stop; k--) {
      if (times[k] !== time || ids[k] !== id) continue;
      ids[k] = ids[last] as string;
      times[k] = times[last] as number;
      ids.pop();
      times.pop();
      return true;
    }
    return false;
  }

  /**
   * Up to `limit` ids with time <= `asOf`, ordered by (time, id), strictly after `after`, for
   * which `live(id, time)` holds. Each id once.
   */
  scan(asOf: number, limit: number, after: { time: number; id: string } | undefined): string[] {
    this.merge();
    if (this.dead > 1024 && this.dead > this.times.length / 2) this.compact();
    const live = this.live;
    const out: string[] = [];
    let i = after === undefined ? 0 : this.upperBound(after.time, after.id);
    let prevT = NaN;
    let prevId = "";
    for (; i < this.times.length && out.length < limit; i++) {
      const t = this.times[i] as number;
      if (t > asOf) break;
      const id = this.ids[i] as string;
      if (t === prevT && id === prevId) continue; // the same entry added twice
      prevT = t;
      prevId = id;
      if (live(id, t)) out.push(id);
    }
    return out;
  }

  get size(): number {
    return this.times.length + this.addedTimes.length;
  }

  /** First position strictly after (time, id). */
  private upperBound(time: number, id: string): number {
    let lo = 0;
    let hi = this.times.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const t = this.times[mid] as number;
      if (t < time || (t === time && (this.ids[mid] as string) <= id)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private merge(): void {
    const n = this.addedTimes.length;
    if (n === 0) return;
    const order = Array.from({ length: n }, (_, k) => k);
    const at = this.addedTimes;
    const ai = this.addedIds;
    order.sort(
      (x, y) =>
        (at[x] as number) - (at[y] as number) ||
        ((ai[x] as string) < (ai[y] as string) ? -1 : (ai[x] as string) > (ai[y] as string) ? 1 : 0),
    );
    const times: number[] = new Array(this.times.length + n);
    const ids: string[] = new Array(this.times.length + n);
    let i = 0;
    let j = 0;
    let k = 0;
    while (i < this.times.length || j < n) {
      const takeOld =
        j >= n ||
        (i < this.times.length &&
          ((this.times[i] as number) < (at[order[j] as number] as number) ||
            ((this.times[i] as number) === (at[order[j] as number] as number) &&
              (this.ids[i] as string) <= (ai[order[j] as number] as string))));
      if (takeOld) {
        times[k] = this.times[i] as number;
        ids[k++] = this.ids[i++] as string;
      } else {
        const o = order[j++] as number;
        times[k] = at[o] as number;
        ids[k++] = ai[o] as string;
      }
    }
    this.times = times;
    this.ids = ids;
    this.addedTimes = [];
    this.addedIds = [];
  }

  /** Drops the entries added since the last merge that no longer qualify. */
  private pruneAdded(): void {
    const live = this.live;
    const times = this.addedTimes;
    const ids = this.addedIds;
    let k = 0;
    for (let i = 0; i < times.length; i++) {
      const t = times[i] as number;
      const id = ids[i] as string;
      if (!live(id, t)) continue;
      times[k] = t;
      ids[k++] = id;
    }
    times.length = k;
    ids.length = k;
  }

  private compact(): void {
    const live = this.live;
    const times: number[] = [];
    const ids: string[] = [];
    for (let i = 0; i < this.times.length; i++) {
      const t = this.times[i] as number;
      const id = this.ids[i] as string;
      if (ids.length > 0 && times[times.length - 1] === t && ids[ids.length - 1] === id) continue;
      if (live(id, t)) {
        times.push(t);
        ids.push(id);
      }
    }
    this.times = times;
    this.ids = ids;
    this.dead = 0;
  }
}
