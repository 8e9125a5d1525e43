/**
 * What a unit of work holds of one kind of row (grants, holds): the rows loaded with the account
 * and those it added, by id, each as it stands in this work, and which of them the work wrote. The
 * loaded rows are never changed: a write replaces the row in the map.
 */
export class WorkingSet<T extends { readonly id: string }> {
  /** Every row as it stands, by id: the loaded ones first (in their order), then those added. */
  private readonly rows = new Map<string, T>();
  /** The ids of the rows this work wrote, in the order first written: true for a row it created. */
  private readonly written = new Map<string, boolean>();

  /** `loaded` may be the store's own list: it is only read. */
  constructor(readonly loaded: readonly T[]) {
    for (const row of loaded) this.rows.set(row.id, row);
  }

  /** The row as it stands in this work, or undefined when it is neither loaded nor added. */
  get(id: string): T | undefined {
    return this.rows.get(id);
  }

  /** `listed` (a loaded or added row) as it stands in this work. */
  current(listed: T): T {
    return this.rows.get(listed.id) ?? listed;
  }

  /** Writes a new version of a row that `get` finds. */
  put(row: T): void {
    this.rows.set(row.id, row);
    if (!this.written.has(row.id)) this.written.set(row.id, false);
  }

  /** Adds a row this work creates. */
  create(row: T): void {
    this.rows.set(row.id, row);
    this.written.set(row.id, true);
  }

  /** Makes a row read separately part of the work (it is saved only if changed). */
  add(row: T): void {
    this.rows.set(row.id, row);
  }

  /** True when this work changed or created a row. */
  get changed(): boolean {
    return this.written.size > 0;
  }

  /** The rows this work changed or created, as they stand, in the order first written, each with whether it created it. */
  touched(): [T, boolean][] {
    return [...this.written].map(([id, created]) => [this.rows.get(id) as T, created]);
  }

  /** The rows this work created (`created` true) or changed (false), as they stand: what it saves. */
  saved(created: boolean): T[] {
    return this.touched()
      .filter(([, c]) => c === created)
      .map(([row]) => row);
  }

  /** Every row as it stands: the loaded ones (in their order), then those added. */
  all(): T[] {
    return [...this.rows.values()];
  }

  /** The rows added (created or included here), as they stand. */
  added(): T[] {
    return this.all().slice(this.loaded.length);
  }
}
