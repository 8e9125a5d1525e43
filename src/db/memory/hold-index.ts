import { writeUuid } from "./rows.js";

/** Slots taken at most, as a fraction of the table, before it doubles (linear probing stays short). */
const MAX_LOAD = 0.7;
const FIRST_CAPACITY = 1024;

/**
 * Every hold of the in-memory store by id: the number of its account (given at the account's first
 * hold) and, once settled, its row among the account's settled holds (`SettledHolds`) — the lookup
 * of `getReservation`, of a commit or release by id, and of the expiry job.
 *
 * One metered request makes one hold, kept for good, so this index grows with every request. As
 * two `Map`s keyed by the id string (hold → account, and per account id → row) it kept the id's
 * string and two map entries on the traced heap, about 130 bytes a hold, and each insert hashed a
 * fresh string into a large table. Here a canonical UUID (every id the store makes) is its 16 bytes
 * in an open-addressing table of typed arrays: 24 bytes a slot, nothing for the collector to
 * trace. Ids in any other form go to a `Map`.
 */
export class HoldIndex {
  private capacity = 0;
  private count = 0;
  /** Per slot: the id's bytes as four uint32. */
  private keys = new Uint32Array(0);
  /** Per slot: the account's number + 1 (0: an empty slot). */
  private owners = new Int32Array(0);
  /** Per slot: the settled row, -1 while the hold is active. */
  private rows = new Int32Array(0);
  /** Ids that are not canonical UUIDs. */
  private readonly odd = new Map<string, { owner: number; row: number }>();
  private readonly scratch = new Uint32Array(4);
  private readonly scratchBytes = new Uint8Array(this.scratch.buffer);
  /**
   * The id last found or indexed and its slot: a commit or release looks its hold up by id (whose
   * account is it?), then settles it by the same id a moment later, in the same turn of the event
   * loop as a rule — found again without parsing the id or probing. (Slots move only when the
   * table grows, which forgets it.)
   */
  private lastId: string | null = null;
  private lastSlot = -1;

  /** Holds indexed. */
  get size(): number {
    return this.count + this.odd.size;
  }

  /** Indexes a new hold of account `owner` (>= 0), not settled. */
  add(id: string, owner: number): void {
    const slot = this.slotOf(id, true);
    if (slot === -1) {
      this.odd.set(id, { owner, row: -1 });
      return;
    }
    this.owners[slot] = owner + 1;
    this.rows[slot] = -1;
  }

  /** The account number of hold `id`, -1 if unknown. */
  owner(id: string): number {
    const slot = this.slotOf(id, false);
    if (slot === -1) return this.odd.get(id)?.owner ?? -1;
    return slot === -2 ? -1 : (this.owners[slot] as number) - 1;
  }

  /** The settled row of hold `id` if it is account `owner`'s, else -1 (unknown, another account's, or active). */
  settledRow(id: string, owner: number): number {
    const slot = this.slotOf(id, false);
    if (slot === -1) {
      const o = this.odd.get(id);
      return o !== undefined && o.owner === owner ? o.row : -1;
    }
    return slot >= 0 && this.owners[slot] === owner + 1 ? (this.rows[slot] as number) : -1;
  }

  /**
   * The row of hold `id` among account `owner`'s settled holds: the one it has, or else `next`
   * (the row a new settled hold takes), recorded as its row now. One lookup for the store's
   * settling of a hold, which looks for its row and records a new one in the same step. After it,
   * `key` holds the id's bytes (when it is a canonical UUID) for the settled row to copy.
   */
  settle(id: string, owner: number, next: number): number {
    const slot = this.slotOf(id, true);
    this.settledSlot = slot;
    if (slot === -1) {
      const o = this.odd.get(id);
      if (o !== undefined && o.owner === owner && o.row >= 0) return o.row;
      this.odd.set(id, { owner, row: next });
      return next;
    }
    if (this.owners[slot] === owner + 1 && (this.rows[slot] as number) >= 0) return this.rows[slot] as number;
    this.owners[slot] = owner + 1;
    this.rows[slot] = next;
    return next;
  }

  /** The slot `settle` last used (-1: an id kept in `odd`). */
  private settledSlot = -1;

  /**
   * The bytes of the id `settle` last settled, as four uint32 (the id as `writeUuid` writes it), or
   * null when that id is not a canonical UUID. Valid until the next call.
   */
  get key(): Uint32Array | null {
    const s = this.settledSlot;
    if (s < 0) return null;
    const k = this.scratch;
    const keys = this.keys;
    k[0] = keys[4 * s] as number;
    k[1] = keys[4 * s + 1] as number;
    k[2] = keys[4 * s + 2] as number;
    k[3] = keys[4 * s + 3] as number;
    return k;
  }

  /**
   * The slot of `id`: its own, or with `claim` the empty one it takes (counted). -1: not a
   * canonical UUID (see `odd`); -2: not indexed (without `claim`).
   */
  private slotOf(id: string, claim: boolean): number {
    if (id === this.lastId) return this.lastSlot;
    const s = this.probe(id, claim);
    if (s >= 0) {
      this.lastId = id;
      this.lastSlot = s;
    }
    return s;
  }

  /** `slotOf` without the last id. */
  private probe(id: string, claim: boolean): number {
    const k = this.scratch;
    if (!writeUuid(this.scratchBytes, 0, id)) return -1;
    if (claim && this.count + 1 > this.capacity * MAX_LOAD) this.grow();
    if (this.capacity === 0) return -2;
    const k0 = k[0] as number;
    const k1 = k[1] as number;
    const k2 = k[2] as number;
    const k3 = k[3] as number;
    const mask = this.capacity - 1;
    const keys = this.keys;
    const owners = this.owners;
    for (let s = mix(k0, k1, k2, k3) & mask; ; s = (s + 1) & mask) {
      if (owners[s] === 0) {
        if (!claim) return -2;
        keys[4 * s] = k0;
        keys[4 * s + 1] = k1;
        keys[4 * s + 2] = k2;
        keys[4 * s + 3] = k3;
        this.count++;
        return s;
      }
      if (keys[4 * s] === k0 && keys[4 * s + 1] === k1 && keys[4 * s + 2] === k2 && keys[4 * s + 3] === k3) return s;
    }
  }

  /** Doubles the table (slots are never removed: holds are kept for good). */
  private grow(): void {
    this.lastId = null;
    const { keys, owners, rows, capacity } = this;
    this.capacity = Math.max(FIRST_CAPACITY, capacity * 2);
    this.keys = new Uint32Array(this.capacity * 4);
    this.owners = new Int32Array(this.capacity);
    this.rows = new Int32Array(this.capacity);
    const mask = this.capacity - 1;
    for (let t = 0; t < capacity; t++) {
      if (owners[t] === 0) continue;
      const k0 = keys[4 * t] as number;
      const k1 = keys[4 * t + 1] as number;
      const k2 = keys[4 * t + 2] as number;
      const k3 = keys[4 * t + 3] as number;
      let s = mix(k0, k1, k2, k3) & mask;
      while (this.owners[s] !== 0) s = (s + 1) & mask;
      this.keys.set(keys.subarray(4 * t, 4 * t + 4), 4 * s);
      this.owners[s] = owners[t] as number;
      this.rows[s] = rows[t] as number;
    }
  }
}

/**
 * A slot hash of the id's four words. The ids the store makes are random, but ids that differ in a
 * few bits only (sequential ones) must not crowd together either: every word is mixed in (with
 * murmur3's finalizer).
 */
function mix(k0: number, k1: number, k2: number, k3: number): number {
  let h = k0 ^ Math.imul(k1, 0x9e3779b1) ^ Math.imul(k2, 0x85ebca77) ^ Math.imul(k3, 0xc2b2ae3d);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
