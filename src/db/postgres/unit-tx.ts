import type { Changes } from "../../core/domain/state.js";
import type { ModuleParts } from "../../core/db/module-part.js";
import type { PostgresBoundPart } from "./module-part.js";
import { hasModuleRows } from "../../core/db/module-part.js";
import type { Account, Grant, JournalEntry, Reservation } from "../../core/models/index.js";
import { decodeRow } from "../../schema/codec.js";
import type { DbTransaction, LoadRequest, LoadedState } from "../../core/db/types.js";
import type { Batch } from "./batch.js";
import type { ChainState, SaveItem } from "./chain.js";
import { checkOneAccount } from "./errors.js";
import { type PostgresSql, idempotentEntry } from "./sql.js";
import type { AccountState } from "./state-cache.js";
import { NotRun, type Unit } from "./unit.js";
import { UnitReads, stateOf, stateText } from "./reads.js";
import { type Deferred, deferred } from "../store/group-commit.js";

/** The `DbTransaction` one unit of work sees inside a batch. */
export class UnitTx extends UnitReads implements DbTransaction, SaveItem {
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

  constructor(
    private readonly batch: Batch,
    readonly unit: Unit,
  ) {
    super();
    this.userId = unit.userId;
  }

  protected get modules(): ModuleParts<PostgresBoundPart> {
    return this.batch.db.modules;
  }

  protected get sql(): PostgresSql {
    return this.batch.db.sql;
  }

  protected query(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    return this.batch.query(what, text, params);
  }

  /**
   * Before a read from the database: the batch's transaction is open. A later unit of a chain
   * reads no charge nor a module's row there (an earlier unit of it may have written one
   * the database does not have yet), nor one started from the state cache any of the last three:
   * it leaves the chain and runs again alone.
   */
  protected async beforeRead(what: "rows" | "charge" | "module"): Promise<void> {
    if (what === "charge" && this.chain !== null) this.unchain();
    if (what === "module" && (this.chain?.modules === true || this.xmin !== null)) this.unchain();
    await this.opening();
  }

  get pendingChanges(): Changes {
    return this.pending as Changes;
  }

  /** A later unit of a chain starts from what the ones before it left, under the same lock. */
  follow(at: ChainState): void {
    this.chain = at;
    this.xmin = at.xmin;
    this.base = at.base;
    this.startFrom(at.base ?? { account: null, grants: [], reservations: [] });
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
    this.base = { account, grants, reservations };
    this.startFrom(this.base);
    this.loadDone = true;
    return { account, grants: [...grants], reservations: [...reservations], idempotent: null };
  }

  /** The batch's answer to `load()`: the state statement's row (undefined: no account). */
  receive(stateRow: Record<string, unknown> | undefined): void {
    const { db } = this.batch;
    try {
      const read = stateOf(db.sql.tables, stateRow);
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
        ({ account, grants, reservations } = read);
        if (account !== null && xmin !== null) db.states?.set(this.userId, { xmin, account, grants, reservations });
      }
      const idempotent = read.idempotent;
      this.base = account === null ? null : { account, grants, reservations };
      this.startFrom({ account, grants, reservations });
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
    const read = stateText(tables, stateOf(tables, row));
    const cached = stateText(tables, state);
    if (read !== cached) {
      throw new Error(`state cache of ${this.userId} differs from the database: ${cached} != ${read}`);
    }
  }

  override async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    // In a chain, a grant an earlier unit wrote is as it left it (the database has it as before).
    const loaded = this.state?.grants;
    const written = this.chain?.grants;
    if (
      written === undefined ||
      grantIds.every((id) => loaded?.has(id) === true) ||
      !grantIds.some((id) => written.has(id))
    )
      return super.getGrants(grantIds);
    const rest = grantIds.filter((id) => !written.has(id) && !loaded?.has(id));
    const read = rest.length === 0 ? [] : await super.getGrants(rest);
    const byId = new Map(read.map((g) => [g.id, g]));
    return grantIds.flatMap((id) => written.get(id) ?? loaded?.get(id) ?? byId.get(id) ?? []);
  }

  override async getReservation(reservationId: string): Promise<Reservation | null> {
    return (
      this.state?.holds.get(reservationId) ??
      this.chain?.holds.get(reservationId) ??
      super.getReservation(reservationId)
    );
  }

  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    if (this.chain?.modules === true && hasModuleRows(changes.rows)) this.unchain();
    this.saved = true;
    this.checkSave(changes);
    checkOneAccount(this.userId, changes);
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
