import { CoreInMemoryDbManager } from "./core/db/memory/index.js";
import type { ModuleStorePart } from "./core/db/module-part.js";
import type { DbManager } from "./core/db/types.js";
import { billingStorePart } from "./modules/billing/store-part.js";
import { revenueStorePart } from "./modules/revenue/store-part.js";

/**
 * The store parts of the package's own modules: promo codes and payments (billing), the revenue
 * summary and the closed periods of revenue reports. `createCreditManager` binds them to its store (`DbManager.usePart`); a module's service
 * binds its own part too on first use, so a store handed straight to a service has it.
 */
export const BUILT_IN_STORE_PARTS: readonly ModuleStorePart[] = [billingStorePart, revenueStorePart];

/** Binds the package's own modules' store parts to `db` (a store without `usePart` is left as it is). */
export function useBuiltInParts<D extends DbManager>(db: D): D {
  for (const part of BUILT_IN_STORE_PARTS) db.usePart?.(part);
  return db;
}

/**
 * The in-memory store with the package's own modules' parts (promo codes and payments): the
 * default store of `createCreditManager`. `CoreInMemoryDbManager` is the same store with no
 * module's part.
 *
 * @public
 */
export class InMemoryDbManager extends CoreInMemoryDbManager {
  constructor() {
    super();
    useBuiltInParts(this);
  }
}
