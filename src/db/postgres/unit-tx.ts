import { ConflictError } from "../../errors.js";
import type { Account, Grant, JournalEntry, Payment, Promo, Reservation } from "../../models/index.js";
import { decodeRow } from "../../schema/codec.js";
import type { SqlTable } from "../../schema/sql.js";
import type { ChargeRecord, Changes, DbTransaction, LoadRequest, LoadedState } from "../types.js";
import type { Batch } from "./batch.js";
import type { ChainState, SaveItem } from "./chain.js";
import { decode as decodePromoRow, inUnit } from "./promos.js";
import { chargeOf, idempotentEntry, toRow } from "./sql.js";
import type { AccountState } from "./state-cache.js";
import { NotRun, type Unit } from "./unit.js";
import { type Deferred, deferred } from "../store/group-commit.js";

/** The `DbTransaction` one unit of work sees inside a batch. */
export class UnitTx implements DbTransaction, SaveItem {
  readonly userId: string;
  isReady = false;
  /** A later unit of its account's chain in the batch (see `Batch.runChain`). */
  follower = false;
  /** A later unit of a chain that asked what the chain cannot answer: it runs again on its own. */
  unchained = false;
  /**
   * Started from the state cache without locking (`Batch.optimistic`): the `xmin` of the account
   * row that state was made at, which its save requires the row still to have. Null otherwise.
   */
  xmin: string | null = null;
  /** A later unit's chain state (null: the first unit, or a unit alone). */
  private chain: ChainState | null = null;
  /** The first `load()` request, answered by the batch. */
  loadRequest: LoadRequest | null = null;
  /** The idempotency key the load in flight asks for (null: none). */
  key: string | null = null;
  loadDone = false;
  readonly loaded = deferred<LoadedState>();
  /** Another method was called before the batch opened its transaction. */
  needsTransaction = false;
  pending: Changes | null = null;
  /** Resolved once the unit is settled here (see `Batch.resolveInOrder`). */
  readonly done = deferred<void>();
  /** Its resolution waits for an earlier unit of the account: `untrack` comes then. */
  deferred = false;
  /** The cached state whose `xmin` the load statement compared with the account row's. */
  cached: AccountState | undefined = undefined;
  /** The account, open grants and active holds as loaded (null: no account yet): the cache's next state starts from them. */
  base: Omit<AccountState, "xmin"> | null = null;
  /** Tests: the state came from the cache; compare it with the database. */
  private verifyHit = false;
  private saved = false;
  private state: { seq: number | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } | null = null;
  /** Rows as read in this unit of work: updates write only the columns that differ from them. */
  readonly originals: { account: Account | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } = {
    account: null,
    grants: new Map(),
    holds: new Map(),
  };

  constructor(
    private readonly batch: Batch,
    readonly unit: Unit,
  ) {
    this.userId = unit.userId;
  }

  get pendingChanges(): Changes {
    return this.pending as Changes;
  }

  /** A later unit of a chain starts from what the ones before it left, under the same lock. */
  follow(at: ChainState): void {
    this.chain = at;
    this.xmin = at.xmin;
    const base = at.base;
    this.state = {
      seq: base?.account.seq ?? null,
      grants: new Map((base?.grants ?? []).map((g) => [g.id, g])),
      holds: new Map((base?.reservations ?? []).map((r) => [r.id, r])),
    };
    this.base = base;
    this.originals.account = base?.account ?? null;
    for (const g of base?.grants ?? []) this.originals.grants.set(g.id, g);
    for (const r of base?.reservations ?? []) this.originals.holds.set(r.id, r);
  }

  /** Leaves the chain: the unit of work runs again in a transaction of its own. */
  private unchain(): never {
    this.unchained = true;
    throw new NotRun(true);
  }

  /** A later unit's load: the chain's state, and its idempotent entry from the chain or the database. */
  private async loadInChain(chain: ChainState, request: LoadRequest | undefined): Promise<LoadedState> {
    if (this.loadDone) this.unchain();
    this.loadRequest = request ?? {};
    const key = request?.idempotencyKey;
    let idempotent: JournalEntry | null = null;
    if (key !== undefined) {
      for (const c of chain.saved) idempotent ??= c.entries.find((e) => e.idempotencyKey === key) ?? null;
      if (idempotent === null) {
        const { sql } = this.batch.db;
        const j = sql.tables.journal;
        const [row] = await this.batch.query(
          "load",
          `SELECT row_to_json(j)::text AS idem FROM ${j.qualified} j WHERE ${idempotentEntry("$1::text", "$2::text")}`,
          [this.userId, key],
        );
        const text = row?.idem as string | null | undefined;
        idempotent = text ? decodeRow<JournalEntry>(j.columns, JSON.parse(text)) : null;
      }
    }
    this.loadDone = true;
    const base = chain.base;
    return {
      account: base?.account ?? null,
      grants: [...(base?.grants ?? [])],
      reservations: [...(base?.reservations ?? [])],
      idempotent,
    };
  }

  async load(request?: LoadRequest): Promise<LoadedState> {
    if (this.chain !== null) return this.loadInChain(this.chain, request);
    if (this.loadRequest === null && !this.isReady) {
      this.loadRequest = request ?? {};
      const cached = this.batch.optimistic(this, request);
      if (cached !== undefined) {
        const state = this.fromCache(cached);
        this.batch.ready(this);
        if (this.verifyHit) await this.verifyCached(state);
        return state;
      }
      this.batch.ready(this);
      const state = await this.loaded.promise;
      if (this.verifyHit) await this.verifyCached(state);
      return state;
    }
    await this.batch.opened.promise;
    this.xmin = null; // the reload locks the row: the seq guard suffices from here on
    const again = deferred<LoadedState>();
    const previous = this.loaded;
    // `receive` answers through `this.loaded`: point it at a fresh one for this reload.
    (this as { loaded: Deferred<LoadedState> }).loaded = again;
    try {
      await this.batch.reload(this, request);
    } catch (error) {
      (this as { loaded: Deferred<LoadedState> }).loaded = previous;
      throw error;
    }
    return again.promise;
  }

  /**
   * Starts the unit from the state cache without a statement (see `Batch.optimistic`): the save
   * then guards the account row on the `xmin` the state was made at.
   */
  private fromCache(cached: AccountState): LoadedState {
    const { account, grants, reservations } = cached;
    this.xmin = cached.xmin;
    this.batch.db.stateCacheHits++;
    this.verifyHit = this.batch.db.verifyStates;
    this.state = {
      seq: account.seq,
      grants: new Map(grants.map((g) => [g.id, g])),
      holds: new Map(reservations.map((r) => [r.id, r])),
    };
    this.base = { account, grants, reservations };
    this.originals.account = account;
    for (const g of grants) this.originals.grants.set(g.id, g);
    for (const r of reservations) this.originals.holds.set(r.id, r);
    this.loadDone = true;
    return { account, grants: [...grants], reservations: [...reservations], idempotent: null };
  }

  /** The batch's answer to `load()`: the state statement's row (undefined: no account). */
  receive(stateRow: Record<string, unknown> | undefined): void {
    const { db } = this.batch;
    const { tables } = db.sql;
    try {
      const idemText = stateRow?.idem as string | null | undefined;
      const idempotent = idemText ? decodeRow<JournalEntry>(tables.journal.columns, JSON.parse(idemText)) : null;
      const xmin = typeof stateRow?.xmin === "string" ? stateRow.xmin : null;
      const cached = this.cached;
      let account: Account | null;
      let grants: readonly Grant[];
      let reservations: readonly Reservation[];
      if (stateRow?.present === true && cached !== undefined && xmin === cached.xmin) {
        // The account row is the version the cached state was made from: nothing changed since.
        ({ account, grants, reservations } = cached);
        db.stateCacheHits++;
        this.verifyHit = db.verifyStates;
      } else {
        const accountText = stateRow?.present === true ? (stateRow.account as string | null) : null;
        account = accountText ? decodeRow<Account>(tables.accounts.columns, JSON.parse(accountText)) : null;
        grants = parseRows<Grant>(tables.grants, stateRow?.grants as string | null | undefined);
        reservations = parseRows<Reservation>(tables.reservations, stateRow?.holds as string | null | undefined);
        if (account !== null && xmin !== null) db.states?.set(this.userId, { xmin, account, grants, reservations });
      }
      this.state = {
        seq: account?.seq ?? null,
        grants: new Map(grants.map((g) => [g.id, g])),
        holds: new Map(reservations.map((r) => [r.id, r])),
      };
      this.base = account === null ? null : { account, grants, reservations };
      this.originals.account = account;
      for (const g of grants) this.originals.grants.set(g.id, g);
      for (const r of reservations) this.originals.holds.set(r.id, r);
      this.loadDone = true;
      this.loaded.resolve({ account, grants: [...grants], reservations: [...reservations], idempotent });
    } catch (error) {
      this.loaded.reject(error);
    }
  }

  /** Tests (`verifyStateCache`): a state from the cache must be what the database holds. */
  private async verifyCached(state: LoadedState): Promise<void> {
    const { db } = this.batch;
    const [row] = await this.batch.query("verifyStateCache", db.sql.state.text, [[this.userId], [null], [null]]);
    // Started without the lock (`Batch.optimistic`): a state another process made stale since is
    // no fault of the cache; its save's guard refuses it.
    if (this.xmin !== null && row?.xmin !== this.xmin) return;
    const { tables } = db.sql;
    const account = row?.account
      ? decodeRow<Account>(tables.accounts.columns, JSON.parse(row.account as string))
      : null;
    // Stored columns only, keys sorted, null and undefined alike, dates as ISO text.
    const canon = (v: unknown): unknown => {
      if (v instanceof Date) return v.toISOString();
      if (Array.isArray(v)) return v.map(canon);
      if (v === null || typeof v !== "object") return v;
      const o = v as Record<string, unknown>;
      return Object.fromEntries(
        Object.keys(o)
          .sort()
          .filter((k) => o[k] !== null && o[k] !== undefined)
          .map((k) => [k, canon(o[k])]),
      );
    };
    const rows = (table: SqlTable, xs: ReadonlyArray<{ id: string }>) =>
      [...xs].sort((a, b) => (a.id < b.id ? -1 : 1)).map((x) => toRow(table.columns, x));
    const norm = (s: { account: Account | null; grants: readonly Grant[]; reservations: readonly Reservation[] }) =>
      JSON.stringify(
        canon({
          account: s.account === null ? null : toRow(tables.accounts.columns, s.account),
          grants: rows(tables.grants, s.grants),
          reservations: rows(tables.reservations, s.reservations),
        }),
      );
    const read = {
      account,
      grants: parseRows<Grant>(tables.grants, row?.grants as string | null),
      reservations: parseRows<Reservation>(tables.reservations, row?.holds as string | null),
    };
    const cached = { account: state.account, grants: state.grants, reservations: state.reservations };
    if (norm(read) !== norm(cached)) {
      throw new Error(`state cache of ${this.userId} differs from the database: ${norm(cached)} != ${norm(read)}`);
    }
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    // Under the account lock the loaded open grants are current: answer from them when we can.
    const loaded = this.state?.grants;
    if (loaded !== undefined && grantIds.every((id) => loaded.has(id)))
      return grantIds.map((id) => loaded.get(id) as Grant);
    // In a chain, a grant an earlier unit wrote is as it left it (the database has it as before).
    const written = this.chain?.grants;
    if (written !== undefined && grantIds.some((id) => written.has(id))) {
      const rest = grantIds.filter((id) => !written.has(id) && !loaded?.has(id));
      const read = rest.length === 0 ? [] : await this.getGrants(rest);
      const byId = new Map(read.map((g) => [g.id, g]));
      return grantIds.flatMap((id) => written.get(id) ?? loaded?.get(id) ?? byId.get(id) ?? []);
    }
    await this.opening();
    const { db } = this.batch;
    const rows = await this.batch.query(
      "getGrants",
      `${db.sql.select("grants")} WHERE user_id = $1 AND id = ANY($2::text[])`,
      [this.userId, [...grantIds]],
    );
    const byId = new Map(rows.map((r) => [r.id as string, decodeRow<Grant>(db.sql.tables.grants.columns, r)]));
    for (const g of byId.values()) if (!this.originals.grants.has(g.id)) this.originals.grants.set(g.id, g);
    return grantIds.flatMap((id) => byId.get(id) ?? []);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const held = this.state?.holds.get(reservationId) ?? this.chain?.holds.get(reservationId);
    if (held !== undefined) return held;
    await this.opening();
    const { db } = this.batch;
    const rows = await this.batch.query(
      "getReservation",
      `${db.sql.select("reservations")} WHERE user_id = $1 AND id = $2`,
      [this.userId, reservationId],
    );
    if (rows[0] === undefined) return null;
    const r = decodeRow<Reservation>(db.sql.tables.reservations.columns, rows[0]);
    if (!this.originals.holds.has(r.id)) this.originals.holds.set(r.id, r);
    return r;
  }

  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    // An earlier unit of the chain may have written a reversal the database does not have yet.
    if (this.chain !== null) this.unchain();
    await this.opening();
    const { sql } = this.batch.db;
    const rows = await this.batch.query("getCharge", sql.chargeText(), [this.userId, entryId]);
    return chargeOf(sql.tables.journal, rows, entryId);
  }

  async getPromo(code: string): Promise<Promo | null> {
    if (this.chain?.promos === true || this.xmin !== null) this.unchain();
    await this.opening();
    const { sql } = this.batch.db;
    const { text, params } = inUnit.getPromo(sql.tables, code);
    const [row] = await this.batch.query("getPromo", text, params);
    return row === undefined ? null : decodePromoRow.promo(sql.tables, row);
  }

  async countPromoClaims(code: string): Promise<number> {
    if (this.chain?.promos === true || this.xmin !== null) this.unchain();
    await this.opening();
    const { text, params } = inUnit.countClaims(this.batch.db.sql.tables, code, this.userId);
    const [row] = await this.batch.query("countPromoClaims", text, params);
    return Number(row?.n ?? 0);
  }

  async getPayment(paymentId: string): Promise<Payment | null> {
    if (this.chain?.promos === true || this.xmin !== null) this.unchain();
    await this.opening();
    const { sql } = this.batch.db;
    const { text, params } = inUnit.getPayment(sql.tables, paymentId, this.userId);
    const [row] = await this.batch.query("getPayment", text, params);
    return row === undefined ? null : decodePromoRow.payment(sql.tables, row);
  }

  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    if (
      this.chain?.promos === true &&
      ((changes.promoClaims?.length ?? 0) > 0 || (changes.paymentUpdates?.length ?? 0) > 0)
    )
      this.unchain();
    this.saved = true;
    if (this.state !== null && changes.previousSeq !== this.state.seq) {
      throw new ConflictError(`account ${this.userId} changed during the unit of work`, { userId: this.userId });
    }
    const rows: Array<{ userId: string }> = [
      changes.account,
      ...changes.insertGrants,
      ...changes.updateGrants,
      ...changes.insertReservations,
      ...changes.updateReservations,
      ...changes.entries,
      ...(changes.promoClaims ?? []),
      ...(changes.paymentUpdates ?? []),
      ...(changes.notifications ?? []),
    ];
    if (rows.some((o) => o.userId !== this.userId)) {
      throw new Error(`save() of account ${this.userId} got a row of another account`);
    }
    this.pending = changes;
  }

  /** Waits until the batch's transaction is open (reads before `load()` count as ready). */
  private async opening(): Promise<void> {
    if (!this.isReady) {
      this.needsTransaction = true;
      this.batch.ready(this);
    }
    await this.batch.opened.promise;
  }
}

function parseRows<T>(table: SqlTable, json: string | null | undefined): T[] {
  if (!json) return [];
  return (JSON.parse(json) as Record<string, unknown>[]).map((row) => decodeRow<T>(table.columns, row));
}
