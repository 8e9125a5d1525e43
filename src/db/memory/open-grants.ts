import { compareGrants } from "../../domain/order.js";
import type { Grant } from "../../models/index.js";

/**
 * An account's open grants, kept in burn-down order (`compareGrants`). A grant's place in that
 * order never changes (priority, expiry, creation time and id are fixed), so an update replaces the
 * object where it stands and an insert or removal finds its place by binary search. The unit of
 * work receives them in order and reads only the grants it draws from.
 */
export class OpenGrants {
  private readonly list: Grant[] = [];
  private readonly ids = new Set<string>();

  get size(): number {
    return this.list.length;
  }

  /** The grants in burn-down order (a copy: the caller may keep it). */
  values(): Grant[] {
    return this.list.slice();
  }

  /**
   * The list itself, for a unit of work's load: it only reads it, under the account's lock, and is
   * done before its save changes the list (no copy on every deduction).
   */
  live(): readonly Grant[] {
    return this.list;
  }

  /** Inserts `g`, or replaces the stored version of it. */
  set(g: Grant): void {
    const list = this.list;
    if (this.ids.has(g.id)) {
      // Deductions draw from the first grants: look there before searching.
      const at = list[0]?.id === g.id ? 0 : this.indexOf(g);
      list[at] = g;
      return;
    }
    this.ids.add(g.id);
    // Nearly always the newest grant sorts last (same priority, no or a later expiry).
    const last = list[list.length - 1];
    if (last === undefined || compareGrants(last, g) < 0) list.push(g);
    else list.splice(this.indexOf(g), 0, g);
  }

  delete(g: Grant): void {
    if (this.ids.delete(g.id)) this.list.splice(this.indexOf(g), 1);
  }

  /** The first index whose grant does not sort before `g`: where `g` is, or belongs. */
  private indexOf(g: Grant): number {
    const list = this.list;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareGrants(list[mid] as Grant, g) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
