import type { CreditModule } from "../../core/module.js";
import type { AutoTopUpState } from "./model-auto-top-up.js";
import { BILLING_ERROR_CODES } from "./errors.js";
import { AUTO_TOP_UP_NOTIFICATION_TYPES, autoTopUpColumn } from "./rules-auto-top-up.js";
import { autoTopUpHook } from "./service-auto-top-up.js";
import { billingStorePart } from "./store-part.js";

/**
 * The billing module (docs/promos-and-payments.md) as a `CreditModule`: its error codes, the auto
 * top-up notification types, the `promo` and `payment` grant sources, its `autoTopUp` column on the
 * account and the unit hook that asks for an auto top-up.
 */
export function billingModule(): CreditModule<AutoTopUpState> {
  return {
    id: "billing",
    errorCodes: BILLING_ERROR_CODES,
    notificationTypes: AUTO_TOP_UP_NOTIFICATION_TYPES,
    grantSources: ["promo", "payment"],
    accountColumn: autoTopUpColumn,
    unitHook: autoTopUpHook,
    store: billingStorePart,
  };
}
