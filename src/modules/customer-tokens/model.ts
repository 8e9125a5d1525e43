import * as z from "zod/mini";
import { SpenderId } from "../../core/models/limits.js";

/** The longest a customer token may live: one day, in seconds (docs/usage.md, "For your customers"). */
export const MAX_CUSTOMER_TOKEN_TTL_SECONDS = 86_400;

/** `credits.customerToken(account, options)`. @public */
export const CustomerTokenOptions = z.strictObject({
  /** Only this spender's usage is readable with the token (balance and grants are the account's). */
  spender: z.optional(SpenderId),
  /** How long the token is valid, in seconds: 1 to 86,400 (a day). */
  ttlSeconds: z
    .number({ error: "ttlSeconds is required (1 to 86,400 seconds)" })
    .check(
      z.int({ error: "ttlSeconds must be a whole number of seconds" }),
      z.minimum(1, { error: "ttlSeconds must be at least 1" }),
      z.maximum(MAX_CUSTOMER_TOKEN_TTL_SECONDS, { error: "ttlSeconds must be at most 86,400 (a day)" }),
    ),
});
/** `credits.customerToken(account, options)`. @public */
export type CustomerTokenOptions = z.input<typeof CustomerTokenOptions>;

/**
 * The keys customer tokens are signed with: a secret of 32 characters or more, or a list whose
 * first signs and every one verifies (rotation: put the new secret first, drop the old one once
 * its tokens have expired).
 */
const TokenSecret = z
  .string()
  .check(z.minLength(32, { error: "each customer token secret must be 32 characters or more" }));
/** The manager's `customerTokens` option: the secret (or secrets, while one is rotated) that signs customer tokens. @public */
export const CustomerTokenSettings = z.strictObject({
  secret: z.union([TokenSecret, z.array(TokenSecret).check(z.minLength(1), z.maxLength(8))]),
});
/** The manager's `customerTokens` option: the secret (or secrets, while one is rotated) that signs customer tokens. @public */
export type CustomerTokenSettings = z.input<typeof CustomerTokenSettings>;
