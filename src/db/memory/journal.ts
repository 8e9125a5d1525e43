import type { EntryType, JournalEntry } from "../../models/index.js";

type Extras = Pick<
  JournalEntry,
  "reservationId" | "idempotencyKey" | "fingerprint" | "correlationId" | "description" | "metadata"
>;

const TYPES: readonly EntryType[] = ["add", "deduct", "expire", "void", "reserve", "commit_reserved", "release_reserved"];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i]));
/** Flag in an entry's type byte: its reservation id is in the `resIds` column. */
const HAS_RESERVATION = 0x80;
/** Numbers kept per entry: amount, balanceAfter, reservedAfter, debtAfter, createdAt (ms). */
const NUMS = 5;

/**
 * One account's journal, stored column-wise in typed arrays: ids and hashes as bytes, numbers as
 * float64 (exact for safe integers), reservation ids as bytes, grant portions in a pool of (grant
 * index, amount). About 126 bytes an entry that the garbage collector never has to trace, instead
 * of several small objects and strings per entry — which is what keeps a million-entry store small and its per-operation
 * cost flat. `seq`, `userId` and `prevHash` are implied; rare fields live in a sparse map.
 * Anything that does not fit the compact form (an id that is not a UUID, say) is kept as is.
 */
export class ColumnarJournal {
  length = 0;
  private capacity = 0;
  private nums = new Float64Array(0);
  private types = new Uint8Array(0);
  private ids = Buffer.alloc(0);
  private hashes = Buffer.alloc(0);
  /** Reservation ids as bytes, for entries whose type byte has `HAS_RESERVATION` set. */
  private resIds = Buffer.alloc(0);
  /** Start of each entry's portions in the pool; entry i's portions end where i + 1's start. */
  private portionStart = new Uint32Array(1);
  private pGrant = new Uint32Array(0);
  private pAmount = new Float64Array(0);
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
    const n = i * NUMS;
    this.nums[n] = e.amount;
    this.nums[n + 1] = e.balanceAfter;
    this.nums[n + 2] = e.reservedAfter;
    this.nums[n + 3] = e.debtAfter;
    this.nums[n + 4] = e.createdAt.getTime();
    let code = TYPE_CODE.get(e.type) as number;
    const r = e.reservationId;
    const oddReservation = r !== null && !writeUuid(this.resIds, i * 16, r);
    if (r !== null && !oddReservation) code |= HAS_RESERVATION;
    this.types[i] = code;
    if (!writeUuid(this.ids, i * 16, e.id)) this.oddIds.set(i, e.id);
    if (!writeHex(this.hashes, i * 32, e.hash, 64)) this.oddHashes.set(i, e.hash);
    for (const p of e.grants) {
      if (this.portions === this.pGrant.length) this.growPortions();
      let g = this.grantIndex.get(p.grantId);
      if (g === undefined) {
        g = this.grantIds.length;
        this.grantIds.push(p.grantId);
        this.grantIndex.set(p.grantId, g);
      }
      this.pGrant[this.portions] = g;
      this.pAmount[this.portions] = p.amount;
      this.portions++;
    }
    this.portionStart[i + 1] = this.portions;
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
        metadata: e.metadata === null ? null : structuredClone(e.metadata),
      });
    }
    this.length = i + 1;
  }

  type(i: number): EntryType {
    return TYPES[(this.types[i] as number) & ~HAS_RESERVATION] as EntryType;
  }

  createdAt(i: number): number {
    return this.nums[i * NUMS + 4] as number;
  }

  hash(i: number): string {
    return this.oddHashes.get(i) ?? this.hashes.toString("hex", i * 32, i * 32 + 32);
  }

  /** The full entry at index i (seq i + 1), as a new object. */
  get(i: number, userId: string): JournalEntry {
    const n = i * NUMS;
    const grants: JournalEntry["grants"] = [];
    for (let p = this.portionStart[i] as number; p < (this.portionStart[i + 1] as number); p++) {
      grants.push({ grantId: this.grantIds[this.pGrant[p] as number] as string, amount: this.pAmount[p] as number });
    }
    const x = this.extras.get(i);
    return {
      id: this.oddIds.get(i) ?? uuid(this.ids, i * 16),
      userId,
      seq: i + 1,
      type: this.type(i),
      amount: this.nums[n] as number,
      balanceAfter: this.nums[n + 1] as number,
      reservedAfter: this.nums[n + 2] as number,
      debtAfter: this.nums[n + 3] as number,
      grants,
      reservationId: ((this.types[i] as number) & HAS_RESERVATION) !== 0 ? uuid(this.resIds, i * 16) : (x?.reservationId ?? null),
      idempotencyKey: x?.idempotencyKey ?? null,
      fingerprint: x?.fingerprint ?? null,
      correlationId: x?.correlationId ?? null,
      description: x?.description ?? null,
      metadata: x?.metadata == null ? null : structuredClone(x.metadata),
      createdAt: new Date(this.nums[n + 4] as number),
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
    if (change.amount !== undefined) this.nums[i * NUMS] = change.amount;
    if (change.balanceAfter !== undefined) this.nums[i * NUMS + 1] = change.balanceAfter;
  }

  private grow(): void {
    const cap = Math.max(8, this.capacity * 2);
    this.nums = resize(this.nums, cap * NUMS);
    this.types = resize(this.types, cap);
    this.ids = resize(this.ids, cap * 16);
    this.hashes = resize(this.hashes, cap * 32);
    this.resIds = resize(this.resIds, cap * 16);
    this.portionStart = resize(this.portionStart, cap + 1);
    this.capacity = cap;
  }

  private growPortions(): void {
    const cap = Math.max(8, this.pGrant.length * 2);
    this.pGrant = resize(this.pGrant, cap);
    this.pAmount = resize(this.pAmount, cap);
  }
}

function resize<T extends Float64Array | Uint8Array | Uint32Array>(a: T, length: number): T {
  const b = (Buffer.isBuffer(a) ? Buffer.alloc(length) : new (a.constructor as new (n: number) => T)(length)) as T;
  b.set(a);
  return b;
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

/** Bytes of s[from, to) (lower-case hex, even length) at `at`; false at the first other character. */
function hexRun(into: Uint8Array, at: number, s: string, from: number, to: number): boolean {
  for (let k = from; k < to; k += 2) {
    const hi = nibble(s.charCodeAt(k));
    const lo = nibble(s.charCodeAt(k + 1));
    if ((hi | lo) < 0) return false;
    into[at++] = (hi << 4) | lo;
  }
  return true;
}

function nibble(c: number): number {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  return -1;
}

function uuid(bytes: Buffer, at: number): string {
  const h = bytes.toString("hex", at, at + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
