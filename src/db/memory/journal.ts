import type { EntryType, JournalEntry } from "../../models/index.js";

/**
 * An entry's rare fields. Metadata is kept as its JSON text: a string needs no copy to be safe from
 * the caller, and writing and reading JSON costs a tenth of `structuredClone` on small objects
 * (metadata is JSON by its model).
 */
type Extras = Pick<JournalEntry, "reservationId" | "idempotencyKey" | "fingerprint" | "correlationId" | "description"> & {
  metadata: string | null;
};

const TYPES: readonly EntryType[] = ["add", "deduct", "expire", "void", "reserve", "commit_reserved", "release_reserved"];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i]));
/** Flag in an entry's type byte: its reservation id is stored in the row. */
const HAS_RESERVATION = 0x80;

/**
 * One entry's fixed part, in bytes: five float64 (amount, balanceAfter, reservedAfter, debtAfter,
 * createdAt ms) at 0–39, the id at 40–55, the hash at 56–87, the reservation id at 88–103, the type
 * byte at 104, and at 108 (a uint32) where the entry's grant portions end in the pool.
 */
const ROW = 112;
const F64_PER_ROW = ROW / 8;
const U32_PER_ROW = ROW / 4;
const AT_ID = 40;
const AT_HASH = 56;
const AT_RESERVATION = 88;
const AT_TYPE = 104;
const U32_PORTIONS_END = 27;

/**
 * One account's journal, stored as fixed-size rows in one buffer: ids and hashes as bytes, numbers
 * as float64 (exact for safe integers), grant portions in a pool of (grant index, amount) pairs.
 * About 130 bytes an entry that the garbage collector never has to trace, instead of several small
 * objects and strings per entry — which is what keeps a million-entry store small and its
 * per-operation cost flat; and an entry's fields share one or two cache lines, so appending to one
 * of many accounts touches little memory. `seq`, `userId` and `prevHash` are implied; rare fields
 * live in a sparse map. Anything that does not fit the compact form (an id that is not a UUID, say)
 * is kept as is.
 */
export class CompactJournal {
  length = 0;
  private capacity = 0;
  private bytes = Buffer.alloc(0);
  private f64 = new Float64Array(0);
  private u32 = new Uint32Array(0);
  /** (grant index, amount) pairs of every entry, in order. */
  private pool = new Float64Array(0);
  private portions = 0;
  private readonly grantIds: string[] = [];
  private readonly grantIndex = new Map<string, number>();
  private readonly extras = new Map<number, Extras>();
  /** Ids and hashes that are not in the compact form. */
  private readonly oddIds = new Map<number, string>();
  private readonly oddHashes = new Map<number, string>();

  append(e: JournalEntry): void {
    const i = this.length;
    if (i === this.capacity) this.grow();
    const f = i * F64_PER_ROW;
    const row = i * ROW;
    this.f64[f] = e.amount;
    this.f64[f + 1] = e.balanceAfter;
    this.f64[f + 2] = e.reservedAfter;
    this.f64[f + 3] = e.debtAfter;
    this.f64[f + 4] = e.createdAt.getTime();
    let code = TYPE_CODE.get(e.type) as number;
    const r = e.reservationId;
    const oddReservation = r !== null && !writeUuid(this.bytes, row + AT_RESERVATION, r);
    if (r !== null && !oddReservation) code |= HAS_RESERVATION;
    this.bytes[row + AT_TYPE] = code;
    if (!writeUuid(this.bytes, row + AT_ID, e.id)) this.oddIds.set(i, e.id);
    if (!writeHex(this.bytes, row + AT_HASH, e.hash, 64)) this.oddHashes.set(i, e.hash);
    for (const p of e.grants) {
      if (2 * this.portions === this.pool.length) this.growPool();
      let g = this.grantIndex.get(p.grantId);
      if (g === undefined) {
        g = this.grantIds.length;
        this.grantIds.push(p.grantId);
        this.grantIndex.set(p.grantId, g);
      }
      this.pool[2 * this.portions] = g;
      this.pool[2 * this.portions + 1] = p.amount;
      this.portions++;
    }
    this.u32[i * U32_PER_ROW + U32_PORTIONS_END] = this.portions;
    if (
      oddReservation ||
      e.idempotencyKey !== null ||
      e.fingerprint !== null ||
      e.correlationId !== null ||
      e.description !== null ||
      e.metadata !== null
    ) {
      this.extras.set(i, {
        reservationId: oddReservation ? r : null,
        idempotencyKey: e.idempotencyKey,
        fingerprint: e.fingerprint,
        correlationId: e.correlationId,
        description: e.description,
        metadata: e.metadata === null ? null : JSON.stringify(e.metadata),
      });
    }
    this.length = i + 1;
  }

  type(i: number): EntryType {
    return TYPES[(this.bytes[i * ROW + AT_TYPE] as number) & ~HAS_RESERVATION] as EntryType;
  }

  createdAt(i: number): number {
    return this.f64[i * F64_PER_ROW + 4] as number;
  }

  hash(i: number): string {
    const at = i * ROW + AT_HASH;
    return this.oddHashes.get(i) ?? this.bytes.toString("hex", at, at + 32);
  }

  /** The full entry at index i (seq i + 1), as a new object. */
  get(i: number, userId: string): JournalEntry {
    const f = i * F64_PER_ROW;
    const row = i * ROW;
    const grants: JournalEntry["grants"] = [];
    const from = i === 0 ? 0 : (this.u32[(i - 1) * U32_PER_ROW + U32_PORTIONS_END] as number);
    const to = this.u32[i * U32_PER_ROW + U32_PORTIONS_END] as number;
    for (let p = from; p < to; p++) {
      grants.push({ grantId: this.grantIds[this.pool[2 * p] as number] as string, amount: this.pool[2 * p + 1] as number });
    }
    const x = this.extras.get(i);
    const compactReservation = ((this.bytes[row + AT_TYPE] as number) & HAS_RESERVATION) !== 0;
    return {
      id: this.oddIds.get(i) ?? uuid(this.bytes, row + AT_ID),
      userId,
      seq: i + 1,
      type: this.type(i),
      amount: this.f64[f] as number,
      balanceAfter: this.f64[f + 1] as number,
      reservedAfter: this.f64[f + 2] as number,
      debtAfter: this.f64[f + 3] as number,
      grants,
      reservationId: compactReservation ? uuid(this.bytes, row + AT_RESERVATION) : (x?.reservationId ?? null),
      idempotencyKey: x?.idempotencyKey ?? null,
      fingerprint: x?.fingerprint ?? null,
      correlationId: x?.correlationId ?? null,
      description: x?.description ?? null,
      metadata: x?.metadata == null ? null : (JSON.parse(x.metadata) as JournalEntry["metadata"]),
      createdAt: new Date(this.f64[f + 4] as number),
      prevHash: i === 0 ? null : this.hash(i - 1),
      hash: this.hash(i),
    };
  }

  /**
   * Test and audit hook: replaces the stored entry at index i as an attacker with access to the
   * store could (the in-memory store's stand-in for editing a row in a database).
   * @internal
   */
  tamper(i: number, change: Partial<Pick<JournalEntry, "amount" | "balanceAfter">>): void {
    if (change.amount !== undefined) this.f64[i * F64_PER_ROW] = change.amount;
    if (change.balanceAfter !== undefined) this.f64[i * F64_PER_ROW + 1] = change.balanceAfter;
  }

  private grow(): void {
    const cap = Math.max(8, this.capacity * 2);
    const buffer = new ArrayBuffer(cap * ROW);
    const bytes = Buffer.from(buffer);
    bytes.set(this.bytes);
    this.bytes = bytes;
    this.f64 = new Float64Array(buffer);
    this.u32 = new Uint32Array(buffer);
    this.capacity = cap;
  }

  private growPool(): void {
    const next = new Float64Array(Math.max(16, this.pool.length * 2));
    next.set(this.pool);
    this.pool = next;
  }
}


/**
 * Writes a lower-case hex string of `chars` characters as bytes at `at`, in place (no temporary
 * buffer, no native call). False — and the caller keeps the string as is — for anything else: a
 * wrong length, upper case (it would not read back the same) or a character that is not hex.
 */
function writeHex(into: Uint8Array, at: number, hex: string, chars: number): boolean {
  return hex.length === chars && hexRun(into, at, hex, 0, chars);
}

/** A canonical lower-case UUID (8-4-4-4-12) as 16 bytes at `at`; false for anything else. */
function writeUuid(into: Uint8Array, at: number, id: string): boolean {
  return (
    id.length === 36 &&
    id.charCodeAt(8) === 45 &&
    id.charCodeAt(13) === 45 &&
    id.charCodeAt(18) === 45 &&
    id.charCodeAt(23) === 45 &&
    hexRun(into, at, id, 0, 8) &&
    hexRun(into, at + 4, id, 9, 13) &&
    hexRun(into, at + 6, id, 14, 18) &&
    hexRun(into, at + 8, id, 19, 23) &&
    hexRun(into, at + 10, id, 24, 36)
  );
}

/** Bytes of s[from, to) (lower-case hex, even length) at `at`; false if any other character is there. */
function hexRun(into: Uint8Array, at: number, s: string, from: number, to: number): boolean {
  let bad = 0;
  for (let k = from; k < to; k += 2) {
    const a = s.charCodeAt(k);
    const b = s.charCodeAt(k + 1);
    const hi = a < 128 ? (HEX_VALUE[a] as number) : -1;
    const lo = b < 128 ? (HEX_VALUE[b] as number) : -1;
    bad |= hi | lo;
    into[at++] = (hi << 4) | (lo & 15);
  }
  return bad >= 0;
}

/** Value of each ASCII code as a lower-case hex digit, -1 for every other character. */
const HEX_VALUE = (() => {
  const table = new Int8Array(128).fill(-1);
  for (let c = 48; c <= 57; c++) table[c] = c - 48; // 0-9
  for (let c = 97; c <= 102; c++) table[c] = c - 87; // a-f
  return table;
})();

function uuid(bytes: Buffer, at: number): string {
  const h = bytes.toString("hex", at, at + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
