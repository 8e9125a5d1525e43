/**
 * What a unit of work holds of one kind of row (grants, holds): the rows loaded with the account,
 * never changed, under the versions this work wrote. Nothing is copied or indexed up front, so a
 * unit of work costs the same whether the account has one open grant or hundreds: most touch one
 * or two rows, found by a scan (ids compare in a few instructions); past a few scans of a long
 * list an index is built once. What the work writes is kept the same way — a short list of slots,
 * indexed only once it grows — since a deduction writes one grant: two maps for it (the rows
 * written, the rows to save) were a sixteenth of the bytes a deduction allocates.
 */
export class WorkingSet<T extends { readonly id: string }> {
  /**
   * Rows this work wrote (changed or created) or added, one slot per id, linked in the order first
   * written or added: they shadow `loaded`. (Lists linked through the slots: no array to allocate.)
   */
  private first: Slot<T> | null = null;
  private last: Slot<T> | null = null;
  private count = 0;
  /** The slots by id, once there are more than a few. */
  private slotIndex: Map<string, Slot<T>> | null = null;
  /** The slots of rows this work changed or created, linked in the order first written: what it saves. */
  private firstTouched: Slot<T> | null = null;
  private lastTouched: Slot<T> | null = null;
  /** How many slots are of rows not in `loaded` (created or added here). */
  private extras = 0;
  private index: Map<string, T> | null = null;
  private scans = 0;

  /** `loaded` may be the store's own list: it is only read. */
  constructor(readonly loaded: readonly T[]) {}

  /** The row as it stands in this work, or undefined when it is neither loaded nor added. */
  get(id: string): T | undefined {
    return this.slotOf(id)?.row ?? this.loadedById(id);
  }

  /** `listed` (a loaded or added row) as it stands in this work. */
  current(listed: T): T {
    return this.first === null ? listed : (this.slotOf(listed.id)?.row ?? listed);
  }

  /** Writes a new version of a row that `get` finds. */
  put(row: T): void {
    const slot = this.slotOf(row.id);
    if (slot === undefined) this.touch(this.newSlot(row, false, false));
    else {
      slot.row = row;
      if (!slot.touched) this.touch(slot);
    }
  }

  /** Adds a row this work creates. */
  create(row: T): void {
    this.touch(this.newSlot(row, true, true));
  }

  /** Makes a row read separately part of the work (it is saved only if changed). */
  add(row: T): void {
    this.newSlot(row, true, false);
  }

  /** True when this work changed or created a row. */
  get changed(): boolean {
    return this.firstTouched !== null;
  }

  /** Calls `fn` with each row this work changed or created, as it stands, in the order first written. */
  forEachTouched(fn: (row: T, created: boolean) => void): void {
    for (let slot = this.firstTouched; slot !== null; slot = slot.nextTouched) fn(slot.row, slot.created);
  }

  /**
   * The rows this work created (`created` true) or changed (false), as they stand, in the order
   * first written: what it saves.
   */
  saved(created: boolean): readonly T[] {
    let out: T[] | null = null;
    for (let slot = this.firstTouched; slot !== null; slot = slot.nextTouched) {
      if (slot.created !== created) continue;
      if (out === null) out = [slot.row];
      else out.push(slot.row);
    }
    return out ?? (NONE as readonly T[]);
  }

  /** Every row as it stands: the loaded ones (in their order), then those added. */
  all(): T[] {
    const out: T[] = [];
    for (const row of this.loaded) out.push(this.current(row));
    this.pushAdded(out);
    return out;
  }

  /** The rows added (created or included here), as they stand. */
  added(): T[] {
    const out: T[] = [];
    this.pushAdded(out);
    return out;
  }

  private pushAdded(out: T[]): void {
    if (this.extras > 0)
      for (let slot = this.first; slot !== null; slot = slot.next) if (slot.extra) out.push(slot.row);
  }

  private slotOf(id: string): Slot<T> | undefined {
    if (this.slotIndex !== null) return this.slotIndex.get(id);
    for (let slot = this.first; slot !== null; slot = slot.next) if (slot.row.id === id) return slot;
    return undefined;
  }

  private newSlot(row: T, extra: boolean, created: boolean): Slot<T> {
    const slot: Slot<T> = { row, extra, created, touched: false, next: null, nextTouched: null };
    if (this.last === null) this.first = slot;
    else this.last.next = slot;
    this.last = slot;
    if (extra) this.extras++;
    if (this.slotIndex !== null) this.slotIndex.set(row.id, slot);
    else if (++this.count > 8) {
      this.slotIndex = new Map();
      for (let s: Slot<T> | null = this.first; s !== null; s = s.next) this.slotIndex.set(s.row.id, s);
    }
    return slot;
  }

  private touch(slot: Slot<T>): void {
    slot.touched = true;
    if (this.lastTouched === null) this.firstTouched = slot;
    else this.lastTouched.nextTouched = slot;
    this.lastTouched = slot;
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

/** A row this work wrote or added: `extra` when not among the loaded ones, `created` here, `touched` (to be saved). */
interface Slot<T> {
  row: T;
  readonly extra: boolean;
  readonly created: boolean;
  touched: boolean;
  next: Slot<T> | null;
  nextTouched: Slot<T> | null;
}

/** What `saved` answers when nothing was written (most units of work, for three of its four lists): shared, never written. */
const NONE: readonly never[] = Object.freeze([]);
