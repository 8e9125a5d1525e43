/**
 * What a unit of work holds of one kind of row (grants, holds): the rows loaded with the account,
 * never changed, under the versions this work wrote. Nothing is copied up front, and the loaded
 * rows are indexed only when one is looked up by id, so a deduction that draws from the first
 * grants in order costs the same whether the account has one open grant or hundreds.
 */
export class WorkingSet<T extends { readonly id: string }> {
  /** Rows this work wrote (changed or created) or added, by id, in the order first written or added: they shadow `loaded`. */
  private readonly written = new Map<string, T>();
  /** The ids of the rows this work changed (false) or created (true), in the order first written: what it saves. */
  private readonly touched = new Map<string, boolean>();
  /** The ids of the rows not in `loaded` (created or added here), in the order first written or added. */
  private readonly extras = new Set<string>();
  /** The loaded rows by id, built at the first lookup. */
  private index: Map<string, T> | null = null;
  /** Each row this work changed, as it stood before its first change here. */
  private readonly before = new Map<string, T | undefined>();

  /**
   * `loaded` may be the store's own list: it is only read. `keepsOriginals`: `original` answers the
   * version each changed row had before this work changed it.
   */
  constructor(
    readonly loaded: readonly T[],
    private readonly keepsOriginals = false,
  ) {}

  /** The row as it stands in this work, or undefined when it is neither loaded nor added. */
  get(id: string): T | undefined {
    if (this.written.has(id)) return this.written.get(id);
    this.index ??= new Map(this.loaded.map((row) => [row.id, row]));
    return this.index.get(id);
  }

  /** `listed` (a loaded or added row) as it stands in this work. */
  current(listed: T): T {
    return this.written.get(listed.id) ?? listed;
  }

  /**
   * Writes a new version of a row that `get` finds; `was`: the version it replaces, as the caller
   * read it (kept as its original where this work changes it first, so no lookup by id is made).
   */
  put(row: T, was?: T): void {
    if (!this.touched.has(row.id)) {
      if (this.keepsOriginals) this.before.set(row.id, was ?? this.get(row.id));
      this.touched.set(row.id, false);
    }
    this.written.set(row.id, row);
  }

  /** Adds a row this work creates. */
  create(row: T): void {
    this.add(row);
    this.touched.set(row.id, true);
  }

  /** Makes a row read separately part of the work (it is saved only if changed). */
  add(row: T): void {
    this.written.set(row.id, row);
    this.extras.add(row.id);
  }

  /** True when this work changed or created a row. */
  get changed(): boolean {
    return this.touched.size > 0;
  }

  /** A row this work changed, as it stood before its first change here (undefined: created here, or unchanged). */
  original(id: string): T | undefined {
    return this.before.get(id);
  }

  /** Calls `fn` with each row this work changed or created, as it stands, in the order first written. */
  forEachTouched(fn: (row: T, created: boolean) => void): void {
    for (const [id, created] of this.touched) fn(this.written.get(id) as T, created);
  }

  /**
   * The rows this work created (`created` true) or changed (false), as they stand, in the order
   * first written: what it saves.
   */
  saved(created: boolean): T[] {
    const out: T[] = [];
    this.forEachTouched((row, c) => {
      if (c === created) out.push(row);
    });
    return out;
  }

  /** Every row as it stands: the loaded ones (in their order), then those added. */
  all(): T[] {
    return [...this.loaded.map((row) => this.current(row)), ...this.added()];
  }

  /** The rows added (created or included here), as they stand. */
  added(): T[] {
    return [...this.extras].map((id) => this.written.get(id) as T);
  }
}
