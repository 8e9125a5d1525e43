import { type CostBasis, EntryType, type JournalEntry } from "../../models/index.js";
import { Interned, PortionPool, RowBuffer, readUuid, writeHex, writeUuid } from "./rows.js";

/** An entry's rare fields (its description only when the row could not take its number). */
type Extras = Pick<JournalEntry, "reservationId" | "idempotencyKey" | "fingerprint" | "correlationId" | "description">;

/** Descriptions a journal numbers in its rows (24 bits); beyond, they go with the rare fields. */
const MAX_DESCRIPTIONS = 0xffffff;

/** A type's code in the type byte is its place in the model (the journal lives in memory only). */
const TYPES: readonly EntryType[] = EntryType.options;
const TYPE_CODE = new Map(TYPES.map((t, i) => [t, i]));
/** Flag in an entry's type byte: its reservation id is stored in the row. */
const HAS_RESERVATION = 0x80;
/** Flag in an entry's type byte: it has metadata (its JSON text is in the journal's text pool). */
const HAS_METADATA = 0x40;
/** The type's code in the type byte. */
const TYPE_BITS = 0x3f;

/**
 * One entry's fixed part, in bytes: five float64 (amount, balanceAfter, reservedAfter, debtAfter,
 * createdAt ms) at 0–39, the id at 40–55, the hash at 56–87, the reservation id at 88–103, the type
 * byte at 104 (with two flags: the reservation id is in the row, the entry has metadata), the
 * description's number at 105–107 (24 bits, little-endian; 0: none, or kept with the rare fields),
 * and at 108 (a uint32) where the entry's grant portions end in the pool.
 */
const ROW = 112;
const F64_PER_ROW = ROW / 8;
const U32_PER_ROW = ROW / 4;
const AT_ID = 40;
const AT_HASH = 56;
const AT_RESERVATION = 88;
const AT_TYPE = 104;
const AT_DESCRIPTION = 105;
const U32_PORTIONS_END = 27;

/**
 * One account's journal, stored as fixed-size rows in one buffer: ids and hashes as bytes, numbers
 * as float64 (exact for safe integers), grant portions in a pool of (grant index, amount) pairs.
 * About 130 bytes an entry that the garbage collector never has to trace, instead of several small
 * objects and strings per entry — which is what keeps a million-entry store small and its
 * per-operation cost flat; and an entry's fields share one or two cache lines, so appending to one
 * of many accounts touches little memory. `seq`, `userId` and `prevHash` are implied; descriptions
 * are numbered (the library's own — "unused part of committed reservation" — and a host's usual
 * few are each stored once); metadata is kept as its JSON text (JSON costs a tenth of
 * `structuredClone` on small objects), in UTF-8 in one growing buffer — a metered call's usages
 * leave nothing on the traced heap; the rarer fields live in a sparse map. Anything that does not
 * fit the compact form (an id that is not a UUID, say) is kept as is.
 */
export class CompactJournal {
  length = 0;
  /** Entries archived before the first one kept: the entry at index i has seq `base + i + 1`. */
  private base = 0;
  /** The hash of the last archived entry (the first kept entry's prevHash). */
  private basePrevHash: string | null = null;
  private readonly rows = new RowBuffer(ROW);
  /** Grant portions of every entry, in order. */
  private readonly portions = new PortionPool();
  private readonly extras = new Map<number, Extras>();
  /** The cost basis of each addition that has one (docs/revenue.md), by index. */
  private readonly bases = new Map<number, CostBasis>();
  /**
   * Per entry, the numbers of its spender and feature in `spendNames` (0: none), two uint32 a row;
   * made when the first entry names one (a journal whose entries never do has none). Numbered, not
   * kept with the rare fields: a team's every spend names them, and a map entry and an object per
   * entry cost a spend under limits more than its limits do (docs/benchmarks.md, "Spend limits").
   */
  private spends: Uint32Array | null = null;
  private readonly spendNames = new Interned();
  private readonly descriptions: Interned;
  /** The metadata of every entry that has some, as UTF-8 JSON text, one after another. */
  private metaText = Buffer.alloc(0);
  private metaBytes = 0;
  /** Per entry with metadata, in order: its index and where its text ends in `metaText`. */
  private metaEnds = new Uint32Array(0);
  private metaCount = 0;
  /** Ids and hashes that are not in the compact form. */
  private readonly oddIds = new Map<number, string>();
  private readonly oddHashes = new Map<number, string>();

  /** `maxDescriptions`: how many descriptions the rows number (tests lower it). */
  constructor(private readonly maxDescriptions = MAX_DESCRIPTIONS) {
    this.descriptions = new Interned(maxDescriptions);
  }

  append(e: JournalEntry): void {
    const i = this.length;
    const rows = this.rows;
    rows.reserve(i);
    const { f64, bytes } = rows;
    const f = i * F64_PER_ROW;
    const row = i * ROW;
    f64[f] = e.amount;
    f64[f + 1] = e.balanceAfter;
    f64[f + 2] = e.reservedAfter;
    f64[f + 3] = e.debtAfter;
    f64[f + 4] = e.createdAt.getTime();
    let code = TYPE_CODE.get(e.type) as number;
    const r = e.reservationId;
    const oddReservation = r !== null && !writeUuid(bytes, row + AT_RESERVATION, r);
    if (r !== null && !oddReservation) code |= HAS_RESERVATION;
    bytes[row + AT_TYPE] = code;
    if (!writeUuid(bytes, row + AT_ID, e.id)) this.oddIds.set(i, e.id);
    if (!writeHex(bytes, row + AT_HASH, e.hash, 64)) this.oddHashes.set(i, e.hash);
    rows.u32[i * U32_PER_ROW + U32_PORTIONS_END] = this.portions.add(e.grants);
    const d = e.description;
    const dn = d === null ? 0 : this.descriptions.number(d);
    bytes[row + AT_DESCRIPTION] = dn & 0xff;
    bytes[row + AT_DESCRIPTION + 1] = (dn >>> 8) & 0xff;
    bytes[row + AT_DESCRIPTION + 2] = dn >>> 16;
    if (e.metadata !== null) {
      this.addMetadata(i, JSON.stringify(e.metadata));
      bytes[row + AT_TYPE] = code | HAS_METADATA;
    }
    if (
      oddReservation ||
      e.idempotencyKey !== null ||
      e.fingerprint !== null ||
      e.correlationId !== null ||
      (d !== null && dn === 0)
    ) {
      this.extras.set(i, {
        reservationId: oddReservation ? r : null,
        idempotencyKey: e.idempotencyKey,
        fingerprint: e.fingerprint,
        correlationId: e.correlationId,
        description: dn === 0 ? d : null,
      });
    }
    if (e.spender != null || e.feature != null) this.addSpend(i, e.spender ?? null, e.feature ?? null);
    if (e.costBasis != null) this.bases.set(i, { perCredit: e.costBasis.perCredit, currency: e.costBasis.currency });
    this.length = i + 1;
  }

  /** Numbers entry i's spender and feature. */
  private addSpend(i: number, spender: string | null, feature: string | null): void {
    let spends = this.spends;
    if (spends === null || 2 * i >= spends.length) {
      const grown = new Uint32Array(Math.max(16, 2 * (i + 1), spends === null ? 0 : 2 * spends.length));
      if (spends !== null) grown.set(spends);
      this.spends = spends = grown;
    }
    spends[2 * i] = spender === null ? 0 : this.spendNames.number(spender);
    spends[2 * i + 1] = feature === null ? 0 : this.spendNames.number(feature);
  }

  /** Entry i's spender (which: 0) or feature (1), null when it names none. */
  private spendName(i: number, which: 0 | 1): string | null {
    const n = this.spends === null || 2 * i >= this.spends.length ? 0 : (this.spends[2 * i + which] as number);
    return n === 0 ? null : this.spendNames.at(n);
  }

  /** Entry i's cost basis (a copy), null when it has none. */
  private basisOf(i: number): CostBasis | null {
    const b = this.bases.size === 0 ? undefined : this.bases.get(i);
    return b === undefined ? null : { perCredit: b.perCredit, currency: b.currency };
  }

  type(i: number): EntryType {
    return TYPES[(this.rows.bytes[i * ROW + AT_TYPE] as number) & TYPE_BITS] as EntryType;
  }

  /** Appends entry i's metadata text (entries come in order, so `metaEnds` stays sorted by index). */
  private addMetadata(i: number, json: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit (a pair: 4 bytes for 2 units).
    const need = this.metaBytes + 3 * json.length;
    if (need > this.metaText.length) {
      const grown = Buffer.alloc(Math.max(need, 2 * this.metaText.length, 256));
      this.metaText.copy(grown, 0, 0, this.metaBytes);
      this.metaText = grown;
    }
    this.metaBytes += this.metaText.write(json, this.metaBytes, "utf8");
    if (2 * this.metaCount === this.metaEnds.length) {
      const grown = new Uint32Array(Math.max(16, 2 * this.metaEnds.length));
      grown.set(this.metaEnds);
      this.metaEnds = grown;
    }
    this.metaEnds[2 * this.metaCount] = i;
    this.metaEnds[2 * this.metaCount + 1] = this.metaBytes;
    this.metaCount++;
  }

  /** Entry i's metadata (it has some), parsed: a new object. */
  private metadataOf(i: number): JournalEntry["metadata"] {
    const ends = this.metaEnds;
    let lo = 0;
    let hi = this.metaCount - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((ends[2 * mid] as number) < i) lo = mid + 1;
      else hi = mid;
    }
    const start = lo === 0 ? 0 : (ends[2 * lo - 1] as number);
    return JSON.parse(this.metaText.toString("utf8", start, ends[2 * lo + 1] as number)) as JournalEntry["metadata"];
  }

  createdAt(i: number): number {
    return this.rows.f64[i * F64_PER_ROW + 4] as number;
  }

  hash(i: number): string {
    const at = i * ROW + AT_HASH;
    return this.oddHashes.get(i) ?? this.rows.bytes.toString("hex", at, at + 32);
  }

  /** The full entry at index i (seq i + 1), as a new object. */
  get(i: number, userId: string): JournalEntry {
    const { f64, u32, bytes } = this.rows;
    const f = i * F64_PER_ROW;
    const row = i * ROW;
    const from = i === 0 ? 0 : (u32[(i - 1) * U32_PER_ROW + U32_PORTIONS_END] as number);
    const grants = this.portions.read(from, u32[i * U32_PER_ROW + U32_PORTIONS_END] as number);
    const x = this.extras.get(i);
    const dn =
      (bytes[row + AT_DESCRIPTION] as number) |
      ((bytes[row + AT_DESCRIPTION + 1] as number) << 8) |
      ((bytes[row + AT_DESCRIPTION + 2] as number) << 16);
    const typeByte = bytes[row + AT_TYPE] as number;
    const compactReservation = (typeByte & HAS_RESERVATION) !== 0;
    const entry: JournalEntry = {
      id: this.oddIds.get(i) ?? readUuid(bytes, row + AT_ID),
      userId,
      seq: this.base + i + 1,
      type: this.type(i),
      amount: f64[f] as number,
      balanceAfter: f64[f + 1] as number,
      reservedAfter: f64[f + 2] as number,
      debtAfter: f64[f + 3] as number,
      grants,
      reservationId: compactReservation ? readUuid(bytes, row + AT_RESERVATION) : (x?.reservationId ?? null),
      idempotencyKey: x?.idempotencyKey ?? null,
      fingerprint: x?.fingerprint ?? null,
      correlationId: x?.correlationId ?? null,
      description: dn === 0 ? (x?.description ?? null) : this.descriptions.at(dn),
      metadata: (typeByte & HAS_METADATA) === 0 ? null : this.metadataOf(i),
      spender: this.spendName(i, 0),
      feature: this.spendName(i, 1),
      costBasis: this.basisOf(i),
      createdAt: new Date(f64[f + 4] as number),
      prevHash: i === 0 ? this.basePrevHash : this.hash(i - 1),
      hash: this.hash(i),
    };
    return entry;
  }

  /** The seq of the entry at index 0 minus one: the entries archived before it. */
  get archived(): number {
    return this.base;
  }

  /**
   * A journal of this one's entries from `seq` on (those before it archived: docs/operations.md,
   * "Checkpoints and archival"), in fresh buffers, so the memory of the others is let go.
   */
  from(seq: number, userId: string): CompactJournal {
    const out = new CompactJournal(this.maxDescriptions);
    const first = Math.min(Math.max(seq - this.base - 1, 0), this.length);
    out.base = this.base + first;
    out.basePrevHash = first === 0 ? this.basePrevHash : this.hash(first - 1);
    for (let i = first; i < this.length; i++) out.append(this.get(i, userId));
    return out;
  }

  /**
   * Test and audit hook: replaces the stored entry at index i as an attacker with access to the
   * store could (the in-memory store's stand-in for editing a row in a database).
   * @internal
   */
  tamper(i: number, change: Partial<Pick<JournalEntry, "amount" | "balanceAfter" | "costBasis">>): void {
    if (change.costBasis != null) this.bases.set(i, change.costBasis);
    if (change.amount !== undefined) this.rows.f64[i * F64_PER_ROW] = change.amount;
    if (change.balanceAfter !== undefined) this.rows.f64[i * F64_PER_ROW + 1] = change.balanceAfter;
  }
}
