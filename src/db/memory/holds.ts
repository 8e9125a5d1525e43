import type { Reservation } from "../../models/index.js";
import { Interned, PortionPool, RowBuffer, readUuid, writeUuid } from "./rows.js";

const STATUSES: readonly Reservation["status"][] = ["active", "committed", "released", "expired"];

/** A status's place in `STATUSES` (a switch: no map lookup per settled hold). */
function statusCode(status: Reservation["status"]): number {
  switch (status) {
    case "active":
      return 0;
    case "committed":
      return 1;
    case "released":
      return 2;
    case "expired":
      return 3;
  }
}

/**
 * One hold's fixed part, in bytes: five float64 (amount, expiresAt ms, createdAt ms, settledAt ms
 * or NaN, committedAmount or NaN) at 0–39, the id at 40–55, at 56 (a uint32) the reason's number
 * (0: none), the status byte at 60, and at 64 and 68 (uint32) where its allocations end and begin
 * in the pool.
 */
const ROW = 72;
const F64_PER_ROW = ROW / 8;
const U32_PER_ROW = ROW / 4;
const AT_ID = 40;
/** The id's first uint32 (`AT_ID` / 4). */
const U32_ID = 10;
const U32_REASON = 14;
const AT_STATUS = 60;
const U32_ALLOCATIONS_END = 16;
const U32_ALLOCATIONS_START = 17;

/**
 * One account's settled holds (committed, released, expired), as fixed-size rows in one buffer,
 * like `CompactJournal`. A settled hold never changes again, is read rarely (`getReservation`, an
 * audit, a repeated idempotency key) and is kept forever — one per metered request. As objects
 * (dates, allocation arrays, a reason string each) they held about 0.6 KB of heap apiece, which a
 * long-running metered service on this store grew without end; a row is 72 bytes outside the heap,
 * and the store's `HoldIndex` finds it by id (24 bytes a slot, also outside the heap). Reasons are
 * interned (a route's holds share one), metadata is kept as JSON text, and an id that is not a UUID
 * is kept as is. Reads build a new object each time.
 */
export class SettledHolds {
  private length = 0;
  private readonly rowBuffer = new RowBuffer(ROW);
  /** The allocations of every hold, in order. */
  private readonly portions = new PortionPool();
  /** Reasons by number (a row's 0: none). */
  private readonly reasons = new Interned();
  private readonly metadata = new Map<number, string>();
  private readonly oddIds = new Map<number, string>();
  /** Spender and feature of the holds that named one (docs/teams-and-limits.md). */
  private readonly spends = new Map<number, [string | null, string | null]>();

  get size(): number {
    return this.length;
  }

  /**
   * Stores a settled hold in row `i`: an existing row (a hold stored again replaces its row; holds
   * do not change once settled), or `size`, a new row at the end. (Which row a hold has is the
   * store's `HoldIndex`'s to know.) `key`: the id's bytes as four uint32, when the caller has them
   * already (`HoldIndex.key`), else null: the id is read from `r`.
   */
  set(r: Reservation, i = this.length, key: Uint32Array | null = null): void {
    const added = i === this.length;
    if (added) {
      this.length++;
      this.rowBuffer.reserve(i);
    }
    const { f64, u32, bytes } = this.rowBuffer;
    const f = i * F64_PER_ROW;
    const row = i * ROW;
    const w = i * U32_PER_ROW;
    f64[f] = r.amount;
    f64[f + 1] = r.expiresAt.getTime();
    f64[f + 2] = r.createdAt.getTime();
    f64[f + 3] = r.settledAt === null ? NaN : r.settledAt.getTime();
    f64[f + 4] = r.committedAmount === null ? NaN : r.committedAmount;
    if (key !== null) {
      u32[w + U32_ID] = key[0] as number;
      u32[w + U32_ID + 1] = key[1] as number;
      u32[w + U32_ID + 2] = key[2] as number;
      u32[w + U32_ID + 3] = key[3] as number;
      if (!added) this.oddIds.delete(i);
    } else if (!writeUuid(bytes, row + AT_ID, r.id)) this.oddIds.set(i, r.id);
    else if (!added) this.oddIds.delete(i);
    u32[w + U32_REASON] = r.reason === null ? 0 : this.reasons.number(r.reason);
    bytes[row + AT_STATUS] = statusCode(r.status);
    u32[w + U32_ALLOCATIONS_START] = this.portions.length;
    u32[w + U32_ALLOCATIONS_END] = this.portions.add(r.allocations);
    if (r.metadata !== null) this.metadata.set(i, JSON.stringify(r.metadata));
    else if (!added) this.metadata.delete(i);
    if (r.spender != null || r.feature != null) this.spends.set(i, [r.spender ?? null, r.feature ?? null]);
    else if (!added) this.spends.delete(i);
  }

  /** Every settled hold, in the order they were first stored. */
  values(userId: string): Reservation[] {
    const out: Reservation[] = [];
    for (let i = 0; i < this.length; i++) out.push(this.at(i, userId));
    return out;
  }

  /** The hold at row `i` as a new object. */
  at(i: number, userId: string): Reservation {
    const { f64, u32, bytes } = this.rowBuffer;
    const f = i * F64_PER_ROW;
    const row = i * ROW;
    const allocations = this.portions.read(
      u32[i * U32_PER_ROW + U32_ALLOCATIONS_START] as number,
      u32[i * U32_PER_ROW + U32_ALLOCATIONS_END] as number,
    );
    const reason = u32[i * U32_PER_ROW + U32_REASON] as number;
    const settledAt = f64[f + 3] as number;
    const committed = f64[f + 4] as number;
    const metadata = this.metadata.get(i);
    const spend = this.spends.get(i);
    const hold: Reservation = {
      id: this.oddIds.get(i) ?? readUuid(bytes, row + AT_ID),
      userId,
      amount: f64[f] as number,
      status: STATUSES[bytes[row + AT_STATUS] as number] as Reservation["status"],
      allocations,
      expiresAt: new Date(f64[f + 1] as number),
      reason: reason === 0 ? null : this.reasons.at(reason),
      metadata: metadata === undefined ? null : (JSON.parse(metadata) as Reservation["metadata"]),
      createdAt: new Date(f64[f + 2] as number),
      settledAt: Number.isNaN(settledAt) ? null : new Date(settledAt),
      committedAmount: Number.isNaN(committed) ? null : committed,
      spender: spend === undefined ? null : spend[0],
      feature: spend === undefined ? null : spend[1],
    };
    return hold;
  }
}
