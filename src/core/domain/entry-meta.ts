import type { JournalEntry, Reservation } from "../models/index.js";
import type { EntryMeta } from "./account-work.js";
import type { Spend } from "./limits.js";

/*
 * What a unit of work's entries say about the spend they were for: the spender and feature an
 * entry's meta or a hold names, and the metadata a hold's settled entries carry (docs/usage.md,
 * "What counts").
 */

/** The spender and feature an entry's meta names. */
export function spendOf(meta: EntryMeta): Spend {
  return { spender: meta.spender ?? null, feature: meta.feature ?? null };
}

/** A spend naming neither spender nor feature; on an account never given a scoped grant, every spend draws as this one. */
export const NO_SPEND: Spend = Object.freeze({ spender: null, feature: null });

/** The spend a hold was placed for. */
export function holdSpend(hold: Reservation): Spend {
  return { spender: hold.spender ?? null, feature: hold.feature ?? null };
}

/**
 * `meta` with the metadata `hold` was placed with under its own (its keys win): what a settled
 * entry of a hold carries (docs/usage.md, "What counts"). Unchanged for a hold placed without any.
 */
export function withHoldMetadata(meta: EntryMeta, hold: Reservation): EntryMeta {
  const held = hold.metadata;
  if (held == null) return meta;
  let some = false;
  for (const _ in held) {
    some = true;
    break;
  }
  if (!some) return meta;
  return { ...meta, metadata: meta.metadata === undefined ? { ...held } : { ...held, ...meta.metadata } };
}

/**
 * Metadata keys of a capture that describe the capture itself, not what it was for: the parts its
 * usage splits into (`usages`, `leaseWindow`) and what the overdraft limit cut (`requested`,
 * `shortfall`). The excess of an over-capture does not repeat them (docs/usage.md, "What counts").
 */
const CAPTURE_ONLY = new Set(["usages", "leaseWindow", "requested", "shortfall"]);

/** The metadata of an over-capture's excess: its capture's, less `CAPTURE_ONLY` (null: none left). */
export function excessMetadata(captured: JournalEntry["metadata"]): Record<string, unknown> | null {
  if (captured == null) return null;
  let out: Record<string, unknown> | null = null;
  for (const [k, v] of Object.entries(captured)) {
    if (CAPTURE_ONLY.has(k)) continue;
    (out ??= {})[k] = v;
  }
  return out;
}

/** `meta` naming `hold`'s spender and feature. */
export function withSpend(meta: EntryMeta, hold: Reservation): EntryMeta {
  return { ...meta, spender: hold.spender ?? undefined, feature: hold.feature ?? undefined };
}

/** True when options name nothing an entry records (no key, description, correlation, metadata, spender, feature or time). */
export function namesNothing(o: { readonly [K in keyof EntryMeta]?: unknown }): boolean {
  return (
    o.occurredAt === undefined &&
    o.idempotencyKey === undefined &&
    o.description === undefined &&
    o.correlationId === undefined &&
    o.metadata === undefined &&
    o.spender === undefined &&
    o.feature === undefined &&
    o.unit === undefined
  );
}
