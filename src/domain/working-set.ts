/**
 * What a unit of work holds of one kind of row (grants, holds): the rows loaded with the account,
 * never changed, under the versions this work wrote. Nothing is copied or indexed up front, so a
 * unit of work costs the same whether the account has one open grant or hundreds: most touch one
 * or two rows, found by a scan (ids compare in a few instructions); past a few scans of a long
 * list an index is built once.
 */
export class WorkingSet<T extends { readonly id: string }> {
  /**
   * Rows this work wrote (changed or created) or included, by id: they shadow `loaded`. The shared
   * empty map until the first write (many units of work write no hold).
   */
  private written: ReadonlyMap<string, T> = NOTHING;
  /** Ids of rows that are not in `loaded` (created or included here), in the order added. */
  private extra: string[] | null = null;
  /** What this work changed or created (id → true when created here), in the order first written: what it saves. */
  private touched: Map<string, boolean> | null = null;
  private index: Map<string, T> | null = null;
  private scans = 0;

  /** `loaded` may be the store's own list: it is only read. */
  constructor(readonly loaded: readonly T[]) {}

  /** The row as it stands in this work, or undefined when it is neither loaded nor added. */
  get(id: string): T | undefined {
    return this.written.get(id) ?? this.loadedById(id);
  }

  /** `listed` (a loaded or added row) as it stands in this work. */
  current(listed: T): T {
    return this.written.get(listed.id) ?? listed;
  }

  /** Writes a new version of a row that `get` finds. */
  put(row: T): void {
    this.writable().set(row.id, row);
    const touched = (this.touched ??= new Map());
    if (!touched.has(row.id)) touched.set(row.id, false);
  }

  /** Adds a row this work creates. */
  create(row: T): void {
    this.add(row);
    (this.touched ??= new Map()).set(row.id, true);
  }

  /** Makes a row read separately part of the work (it is saved only if changed). */
  add(row: T): void {
    this.writable().set(row.id, row);
    (this.extra ??= []).push(row.id);
  }

  /** True when this work changed or created a row. */
  get changed(): boolean {
    return this.touched !== null;
  }

  /** Calls `fn` with each row this work changed or created, as it stands, in the order first written. */
  forEachTouched(fn: (row: T, created: boolean) => void): void {
    if (this.touched !== null) for (const [id, created] of this.touched) fn(this.written.get(id) as T, created);
  }

  /** Every row as it stands: the loaded ones (in their order), then those added. */
  all(): T[] {
    const out: T[] = [];
    for (const row of this.loaded) out.push(this.written.get(row.id) ?? row);
    if (this.extra !== null) for (const id of this.extra) out.push(this.written.get(id) as T);
    return out;
  }

  /** The rows added (created or included here), as they stand. */
  added(): T[] {
    return this.extra === null ? [] : this.extra.map((id) => this.written.get(id) as T);
  }

  private writable(): Map<string, T> {
    if (this.written === NOTHING) this.written = new Map<string, T>();
    return this.written as Map<string, T>;
  }

  private loadedById(id: string): T | undefined {
    const loaded = this.loaded;
    if (this.index === null && (loaded.length <= 64 || this.scans++ < 4)) {
      for (const row of loaded) if (row.id === id) return row;
      return undefined;
    }
    let index = this.index;
    if (index === null) {
      index = new Map();
      for (const row of loaded) index.set(row.id, row);
      this.index = index;
    }
    return index.get(id);
  }
}

/** Shared, never written: see `writable`. */
const NOTHING: ReadonlyMap<string, never> = new Map<string, never>();
