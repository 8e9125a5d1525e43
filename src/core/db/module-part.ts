import type { ModuleRowLists } from "../domain/state.js";
import type { DbTransaction } from "./types.js";

export type { ModuleRowLists, ModuleRows } from "../domain/state.js";

/**
 * The kinds of store a module's part is written for: a store binds the side of its own dialect
 * (`SqliteDbManager`: `sqlite`; `PostgresDbManager`, on PostgreSQL or Citus: `postgres`;
 * `MongoDbManager`: `mongodb`; `CoreInMemoryDbManager`: `memory`).
 *
 * @beta
 */
export type StoreDialect = "memory" | "sqlite" | "postgres" | "mongodb";

/**
 * A module's part bound to one store: what the store keeps of it and calls. Each store's dialect
 * adds the hooks of its own unit of work (`MemoryBoundPart` here; `SqliteBoundPart`,
 * `PostgresBoundPart`, `MongoBoundPart` beside their stores in `credit-management/store`).
 *
 * @beta
 */
export interface BoundStorePart<Reads extends object = object> {
  /**
   * The module's reads and writes outside units of work: the object its service talks to
   * (`DbManager.usePart` answers it).
   */
  readonly reads: Reads;
  /**
   * The module's reads inside one unit of work, on that unit's transaction (the store's
   * transaction handle of its dialect): what `DbTransaction.part(module)` answers.
   */
  transaction?(tx: never): object;
  /**
   * Creates the part's tables, indexes or collections where missing. The store's `init()` runs it
   * for each part bound before it (`createCreditManager` binds its modules' parts first), after the
   * store's own schema and unless the store was made with `migrate: false`, at every `init()`: it
   * must be idempotent (`CREATE TABLE IF NOT EXISTS`). Each dialect says what it is handed.
   */
  migrate?(run: never): unknown;
}

/**
 * The memory side of a module's part: `check` refuses the rows a unit of work saves for the module
 * (throwing `ConflictError`, before anything of the unit is written), `apply` writes them, both
 * synchronously at the unit's commit, so nothing interleaves with them.
 *
 * @beta
 */
export interface MemoryBoundPart<Reads extends object = object> extends BoundStorePart<Reads> {
  /** The module's reads inside a unit of work (`tx.part(moduleId)`). */
  transaction?(tx: DbTransaction): object;
  /** Checks the module's rows a unit of work saves, before anything is applied (throws to refuse). */
  check?(rows: ModuleRowLists): void;
  /** Applies the module's rows of a unit of work, at its commit. */
  apply?(rows: ModuleRowLists): void;
  /** Run by the store's `init()` (`BoundStorePart.migrate`); the in-memory store has no table to create. */
  migrate?(): void | Promise<void>;
}

/**
 * A module's store part, one side per dialect (docs/writing-a-store.md, "A module's part"): its
 * tables or collections and their migrations, the rows it saves inside a unit of work's transaction
 * (`Changes.rows[module]`), and its reads. A store binds the side of its dialect with the store's
 * own host (`PostgresPartHost`, `SqlitePartHost`, `MongoPartHost`, exported with each store) once
 * per module (`DbManager.usePart`); a store of a dialect the part has no side for answers
 * `usePart` with undefined, and the module's calls there are the module's to refuse.
 *
 * The stores import no module: a module brings its part, and the package's own modules (promo
 * codes and payments, the revenue summary) attach theirs the same way.
 *
 * @beta
 */
export interface ModuleStorePart<Reads extends object = object> {
  /** The module's id: the key of its rows on `Changes.rows` and of its part on a store. */
  readonly module: string;
  /** The in-memory store's side. */
  readonly memory?: () => MemoryBoundPart<Reads>;
  /** `SqliteDbManager`'s side: `(host: SqlitePartHost) => SqliteBoundPart`. */
  readonly sqlite?: (host: never) => BoundStorePart<Reads>;
  /** `PostgresDbManager`'s side (PostgreSQL and Citus): `(host: PostgresPartHost) => PostgresBoundPart`. */
  readonly postgres?: (host: never) => BoundStorePart<Reads>;
  /** `MongoDbManager`'s side: `(host: MongoPartHost) => MongoBoundPart`. */
  readonly mongodb?: (host: never) => BoundStorePart<Reads>;
}

/**
 * The module parts one store has bound, by module id (a store's helper, for stores written on
 * `StoreBase`). A part is bound once: a second `use` of the same module answers the first binding.
 *
 * @beta
 */
export class ModuleParts<B extends BoundStorePart = BoundStorePart> {
  private readonly byId = new Map<string, B | null>();
  /** The bound parts, in the order they were attached. */
  readonly bound: Array<{ readonly module: string; readonly part: B; readonly source: ModuleStorePart }> = [];

  /** Binds `part` with `bind` unless its module is bound; the bound part, or null where `bind` has none. */
  use(part: ModuleStorePart, bind: (part: ModuleStorePart) => B | undefined): B | null {
    const known = this.byId.get(part.module);
    if (known !== undefined) return known;
    const b = bind(part) ?? null;
    this.byId.set(part.module, b);
    if (b !== null) this.bound.push({ module: part.module, part: b, source: part });
    return b;
  }

  /** The bound part of `module`, or undefined. */
  get(module: string): B | undefined {
    return this.byId.get(module) ?? undefined;
  }

  /** The same modules bound again with `bind` (a store on another connection or session). */
  rebound(bind: (part: ModuleStorePart) => B | undefined): ModuleParts<B> {
    const out = new ModuleParts<B>();
    for (const { source } of this.bound) out.use(source, bind);
    return out;
  }

  /** True when some module is bound. */
  get any(): boolean {
    return this.bound.length > 0;
  }
}

/** True when `rows` holds at least one row of some module. */
export function hasModuleRows(rows: { readonly [module: string]: ModuleRowLists | undefined } | undefined): boolean {
  if (rows === undefined) return false;
  for (const lists of Object.values(rows)) {
    if (lists === undefined) continue;
    for (const list of Object.values(lists)) if ((list?.length ?? 0) > 0) return true;
  }
  return false;
}

/** The modules' rows of several units of work as one (each module's lists concatenated, in order); undefined when none has any. */
export function mergeModuleRows(
  all: ReadonlyArray<{ readonly [module: string]: ModuleRowLists | undefined } | undefined>,
): { [module: string]: ModuleRowLists } | undefined {
  let out: { [module: string]: { [list: string]: unknown[] } } | undefined;
  for (const rows of all) {
    if (rows === undefined) continue;
    for (const [module, lists] of Object.entries(rows)) {
      if (lists === undefined) continue;
      out ??= {};
      const into = (out[module] ??= {});
      for (const [name, list] of Object.entries(lists)) if (list !== undefined) (into[name] ??= []).push(...list);
    }
  }
  return out;
}
