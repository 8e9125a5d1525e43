import { notInitialised, packageModule, type CreditModule, type ModuleContext } from "../../core/module.js";
import type { AutoTopUpState } from "./model-auto-top-up.js";
import { BILLING_ERROR_CODES } from "./errors.js";
import { AUTO_TOP_UP_NOTIFICATION_TYPES, autoTopUpColumn } from "./rules-auto-top-up.js";
import { autoTopUpHook } from "./service-auto-top-up.js";
import { billingStorePart } from "./store-part.js";

/** The billing module as a `CreditModule`, with the context its services run their units of work on. */
export interface BillingModule extends CreditModule<AutoTopUpState> {
  /** The context the credit service gave the module (a `ConfigurationError` before `init`). */
  context(): ModuleContext;
}

/**
 * The billing module (docs/promos-and-payments.md) as a `CreditModule`: its error codes, the auto
 * top-up notification types, the `promo` and `payment` grant sources, its `autoTopUp` column on the
 * account and the unit hook that asks for an auto top-up, the capabilities its take-backs need; `init` keeps the context the promo and
 * payment services run their units of work on.
 */
export function billingModule(): BillingModule {
  let ctx: ModuleContext | undefined;
  // Reviewed and tested with the core: its hook runs without the guard's copies (src/core/module.ts).
  return packageModule({
    id: "billing",
    errorCodes: BILLING_ERROR_CODES,
    notificationTypes: AUTO_TOP_UP_NOTIFICATION_TYPES,
    grantSources: ["promo", "payment"],
    accountColumn: autoTopUpColumn,
    // A refund or lost dispute takes back credits already spent: into debt past the overdraft
    // limit, recorded as take-backs (docs/modules.md, "Capabilities").
    capabilities: ["overdraftLimit", "takeBack"],
    unitHook: autoTopUpHook,
    store: billingStorePart,
    init(c) {
      ctx = c;
    },
    context() {
      if (ctx === undefined) throw notInitialised("billing");
      return ctx;
    },
  });
}
