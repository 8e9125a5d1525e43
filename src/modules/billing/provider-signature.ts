import { createHmac, timingSafeEqual } from "node:crypto";
import { WebhookRejectedError } from "./errors.js";
import type { HeadersLike } from "./provider.js";

/** HMAC-SHA256 of `data` with `secret`, hex. */
export function hmacHex(secret: string, data: Uint8Array | string): string {
  return createHmac("sha256", secret).update(data).digest("hex");
}

/** Constant-time equality of two hex strings (false when lengths differ). */
export function safeEqualHex(a: string, b: string): boolean {
  const x = Buffer.from(a, "utf8");
  const y = Buffer.from(b, "utf8");
  return x.length === y.length && timingSafeEqual(x, y);
}

/** A header's value, case-insensitively, from `Headers` or a plain object. */
export function header(headers: HeadersLike, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  const lower = name.toLowerCase();
  for (const [k, v] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
    if (k.toLowerCase() === lower) return Array.isArray(v) ? v[0] : v;
  }
  return undefined;
}

/** Parses a verified body as JSON, or refuses it. */
export function parseJson(rawBody: Uint8Array): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(rawBody).toString("utf8"));
  } catch (error) {
    throw new WebhookRejectedError("Webhook body is not JSON.", "malformed", { cause: String(error) });
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new WebhookRejectedError("Webhook body is not a JSON object.", "malformed");
  }
  return v as Record<string, unknown>;
}

/** Safe property access into parsed JSON. */
export function at(v: unknown, ...path: string[]): unknown {
  let cur = v;
  for (const p of path) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[p];
  }
  return cur;
}

export const str = (v: unknown): string | null => (typeof v === "string" && v.length > 0 ? v : null);
export const int = (v: unknown): number | null => (typeof v === "number" && Number.isSafeInteger(v) ? v : null);
