import type { GrantPortion, PortionKind } from "../../models/index.js";

/** A portion's kind as stored (0: none). */
const KINDS: readonly (PortionKind | undefined)[] = [undefined, "returned", "debt_paid"];
const KIND_CODE: Record<PortionKind, number> = { returned: 1, debt_paid: 2 };

/**
 * Fixed-size rows in one buffer that doubles as it fills, seen as bytes, float64 and uint32 (the
 * in-memory store's compact journal and settled holds): numbers and ids as bytes, outside the heap
 * the garbage collector traces.
 */
export class RowBuffer {
  bytes = Buffer.alloc(0);
  f64 = new Float64Array(0);
  u32 = new Uint32Array(0);
  private capacity = 0;

  constructor(private readonly rowBytes: number) {}

  /** Makes room for row `i` (rows are added in order). */
  reserve(i: number): void {
    if (i < this.capacity) return;
    const cap = Math.max(8, this.capacity * 2);
    const buffer = new ArrayBuffer(cap * this.rowBytes);
    const bytes = Buffer.from(buffer);
    bytes.set(this.bytes);
    this.bytes = bytes;
    this.f64 = new Float64Array(buffer);
    this.u32 = new Uint32Array(buffer);
    this.capacity = cap;
  }
}

/** The grant portions of many rows, in order, as (grant index, amount) pairs; grant ids stored once. */
export class PortionPool {
  private pool = new Float64Array(0);
  /** Pairs stored so far: where the next row's portions begin. */
  length = 0;
  private readonly grantIds: string[] = [];
  private readonly grantIndex = new Map<string, number>();

  /** Appends `portions`; returns where they end (the row keeps it). */
  add(portions: readonly GrantPortion[]): number {
    for (const p of portions) {
      if (2 * this.length === this.pool.length) {
        const next = new Float64Array(Math.max(16, this.pool.length * 2));
        next.set(this.pool);
        this.pool = next;
      }
      let g = this.grantIndex.get(p.grantId);
      if (g === undefined) {
        g = this.grantIds.length;
        this.grantIds.push(p.grantId);
        this.grantIndex.set(p.grantId, g);
      }
      // The portion's kind in the two low bits of the grant's number (exact in a float64).
      this.pool[2 * this.length] = 4 * g + (p.kind === undefined ? 0 : KIND_CODE[p.kind]);
      this.pool[2 * this.length + 1] = p.amount;
      this.length++;
    }
    return this.length;
  }

  /** Portions [from, to) as new objects. */
  read(from: number, to: number): GrantPortion[] {
    const out: GrantPortion[] = [];
    for (let p = from; p < to; p++) {
      const code = this.pool[2 * p] as number;
      const grantId = this.grantIds[Math.floor(code / 4)] as string;
      const amount = this.pool[2 * p + 1] as number;
      const kind = code % 4;
      out.push(kind === 0 ? { grantId, amount } : { grantId, amount, kind: KINDS[kind] as PortionKind });
    }
    return out;
  }
}

/**
 * Writes a lower-case hex string of `chars` characters as bytes at `at`, in place (no temporary
 * buffer, no native call). False — and the caller keeps the string as is — for anything else: a
 * wrong length, upper case (it would not read back the same) or a character that is not hex.
 */
export function writeHex(into: Uint8Array, at: number, hex: string, chars: number): boolean {
  return hex.length === chars && hexRun(into, at, hex, 0, chars);
}

/**
 * The id `writeUuid` last wrote and its 16 bytes. A hold's id is written several times in a row —
 * indexed, then as its entry's reservation id; looked up for its commit, then as the commit entry's
 * reservation id — so the second time copies 16 bytes instead of parsing 32 hex digits again.
 */
let lastUuid: string | null = null;
const lastUuidBytes = new Uint8Array(16);

/** A canonical lower-case UUID (8-4-4-4-12) as 16 bytes at `at`; false for anything else. */
export function writeUuid(into: Uint8Array, at: number, id: string): boolean {
  const last = lastUuidBytes;
  if (id === lastUuid) {
    for (let k = 0; k < 16; k++) into[at + k] = last[k] as number;
    return true;
  }
  if (!parseUuid(into, at, id)) return false;
  for (let k = 0; k < 16; k++) last[k] = into[at + k] as number;
  lastUuid = id;
  return true;
}

function parseUuid(into: Uint8Array, at: number, id: string): boolean {
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

/** The UUID written at `at` by `writeUuid`. */
export function readUuid(bytes: Buffer, at: number): string {
  const h = bytes.toString("hex", at, at + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
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

/** Strings stored once and referred to by number (from 1): reasons of holds, descriptions of entries. */
export class Interned {
  private readonly values: string[] = [];
  private readonly index = new Map<string, number>();

  /** `max`: how many strings the table takes; beyond it `number()` answers 0. */
  constructor(private readonly max = 0xffffffff) {}

  /** The number of `s`, added if new; 0 when the table is full (the caller keeps `s` itself). */
  number(s: string): number {
    let n = this.index.get(s);
    if (n === undefined) {
      if (this.values.length >= this.max) return 0;
      this.values.push(s);
      n = this.values.length;
      this.index.set(s, n);
    }
    return n;
  }

  /** The string of number `n` (>= 1). */
  at(n: number): string {
    return this.values[n - 1] as string;
  }
}
