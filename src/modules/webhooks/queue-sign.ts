import { createHmac, randomBytes } from "node:crypto";
import { ConfigurationError } from "../../core/errors.js";

/**
 * Standard Webhooks signatures (docs/notifications.md, "Webhooks"): a secret is `whsec_` and the
 * base64 of 24 to 64 random bytes; a signature is `v1,` and the base64 of the HMAC-SHA256, keyed
 * by those bytes, of `<webhook-id>.<webhook-timestamp>.<body>`.
 */

const SECRET = /^whsec_([A-Za-z0-9+/]+={0,2})$/;

/** A new endpoint secret: `whsec_` and 32 random bytes in base64. @public */
export function generateWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

/** The key bytes of a `whsec_…` secret, or null when it is not one (24 to 64 bytes of base64). */
export function secretKey(secret: string): Buffer | null {
  const m = SECRET.exec(secret);
  if (m === null) return null;
  const key = Buffer.from(m[1] as string, "base64");
  // Buffer.from skips what is not base64: a round trip tells a well-formed value.
  if (key.toString("base64").replace(/=+$/, "") !== (m[1] as string).replace(/=+$/, "")) return null;
  return key.length >= 24 && key.length <= 64 ? key : null;
}

/** `v1,<base64 signature>` of one message with one secret. `timestamp` in seconds since the epoch. */
export function signWebhook(secret: string, id: string, timestamp: number, body: string): string {
  const key = secretKey(secret);
  if (key === null) throw new ConfigurationError("a webhook secret is whsec_ and the base64 of 24 to 64 bytes");
  return `v1,${createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64")}`;
}

/**
 * The Standard Webhooks headers of one attempt: `webhook-id`, `webhook-timestamp` (seconds) and
 * `webhook-signature`, one `v1,…` per secret separated by spaces (all of them while a secret is
 * rotated, so a receiver with either verifies).
 */
export function webhookHeaders(
  secrets: readonly string[],
  id: string,
  timestamp: number,
  body: string,
): Record<"webhook-id" | "webhook-timestamp" | "webhook-signature", string> {
  return {
    "webhook-id": id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": secrets.map((s) => signWebhook(s, id, timestamp, body)).join(" "),
  };
}
