import * as z from "zod/mini";
import { UserId } from "../../core/models/common.js";

/** The most accounts one page of `listCustomerStates` answers (docs/customer-state.md). */
export const MAX_CUSTOMER_STATES_PAGE = 1000;

/** `credits.listCustomerStates(query)`: a page of accounts' states (docs/customer-state.md). @public */
export const CustomerStatesQuery = z.strictObject({
  /** The `nextCursor` of the previous page (the last account id it answered); omitted: from the start. */
  cursor: z.optional(UserId),
  /** Accounts a page, 1 to 1,000; default 100. */
  limit: z.optional(
    z
      .number({ error: "limit must be a number" })
      .check(
        z.int({ error: "limit must be a whole number" }),
        z.minimum(1, { error: "limit must be at least 1" }),
        z.maximum(MAX_CUSTOMER_STATES_PAGE, { error: "limit must be at most 1,000" }),
      ),
  ),
  /**
   * Only these accounts (1 to 1,000 ids), in id order; an id with no account yet answers an
   * empty state. Omitted: every account of the store.
   */
  userIds: z.optional(z.array(UserId).check(z.minLength(1), z.maxLength(MAX_CUSTOMER_STATES_PAGE))),
});
/** `credits.listCustomerStates(query)`: a page of accounts' states (docs/customer-state.md). @public */
export type CustomerStatesQuery = z.input<typeof CustomerStatesQuery>;
