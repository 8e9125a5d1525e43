import type { EntryType, JournalEntry } from "../../models/index.js";

type Extras = Pick<
  JournalEntry,
  "reservationId" | "idempotencyKey" | "fingerprint" | "correlationId" | "description" | "metadata"
>;

const TYPES: readonly EntryType[] = ["add", "deduct", "expire", "void", "reserve", "commit_reserved", "release_reserved"];
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i]));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HEX64 = /^[0-9a-f]{64}$/;
/** Numbers kept per entry: amount, balanceAfter, reservedAfter, debtAfter, createdAt (ms). */
const NUMS = 5;

/**
 * One account's journal, stored column-wise in typed arrays: ids and hashes as bytes, numbers as
 * float64 (exact for safe integers), grant portions in a pool of (grant index, amount). About 110
 * bytes an entry that the garbage collector never has to trace, instead of several small objects
 * and strings per entry — which is what keeps a million-entry store small and its per-operation
 * cost flat. `seq`, `userId` and `prevHash` are implied; rare fields live in a sparse map.
 * Anything that does not fit the compact form (an id that is not a UUID, say) is kept as is.
 */
export class ColumnarJournal {
  length = 0;
  private capacity = 0;
  private nums = new Float64Array(0);
  private types = new Uint8Array(0);
  private ids = new Uint8Array(0);
  private hashes = new Uint8Array(0);
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
    this.types[i] = TYPE_CODE.get(e.type) as number;
    if (UUID.test(e.id)) this.ids.set(Buffer.from(e.id.replaceAll("-", ""), "hex"), i * 16);
    else this.oddIds.set(i, e.id);
    if (HEX64.test(e.hash)) this.hashes.set(Buffer.from(e.hash, "hex"), i * 32);
    else this.oddHashes.set(i, e.hash);
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
      e.reservationId !== null ||
      e.idempotencyKey !== null ||
      e.fingerprint !== null ||
      e.correlationId !== null ||
      e.description !== null ||
      e.metadata !== null
    ) {
      this.extras.set(i, {
        reservationId: e.reservationId,
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
    return TYPES[this.types[i] as number] as EntryType;
  }

  createdAt(i: number): number {
    return this.nums[i * NUMS + 4] as number;
  }

  hash(i: number): string {
    return this.oddHashes.get(i) ?? Buffer.from(this.hashes.buffer, this.hashes.byteOffset + i * 32, 32).toString("hex");
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
      reservationId: x?.reservationId ?? null,
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
  const b = new (a.constructor as new (n: number) => T)(length);
  b.set(a);
  return b;
}

function uuid(bytes: Uint8Array, at: number): string {
  const h = Buffer.from(bytes.buffer, bytes.byteOffset + at, 16).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
