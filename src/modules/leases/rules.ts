/**
 * The money rules of credit leases (docs/metering.md, "Leases"): how big a block a process may hold,
 * when a user's charges stay on the exact path, the key that makes a window's settle happen once,
 * and how a window's per-request lines add up. Pure functions: no I/O.
 */

import { NO_MEASURES } from "../../core/domain/usage.js";

/** The settings a lease's sizing reads (validated by `LeaseOptions`). */
export interface LeaseSizing {
  /** Credits a block holds at most. */
  size: number;
  /** Below `exactBelow × size` available credits, a user's charges take the exact path. */
  exactBelow: number;
  /** A block is at most this share of what the user has available (0 < share ≤ 1). */
  share: number;
}

/**
 * The block a lease takes out of `available` credits: `size`, but never more than `share` of what
 * is available, and none at all (0: charge exactly) when `available` is below `exactBelow × size`.
 */
export function leaseBlock(available: number, s: LeaseSizing): number {
  if (available < s.exactBelow * s.size) return 0;
  return Math.max(0, Math.min(s.size, Math.floor(available * s.share)));
}

/** A lease block as the spending rule reads it: what it holds, used and has set aside, and until when it serves. */
export interface ServingBlock {
  /** False while it settles, after a failed settle, and once it ended. */
  open: boolean;
  held: number;
  used: number;
  /** Credits set aside in it for requests in flight (estimates, fixed prices). */
  pending: number;
  /** ms: it stops serving then, well before its hold lapses. */
  serveUntil: number;
}

/**
 * Whether `block` serves `amount` more credits at `now` (ms): it is open, what it holds covers what
 * it used, what is set aside in it and `amount`, and its hold is not near its end. The rule behind
 * "never overspend" (docs/metering.md, "Leases"): a process spends only credits its block holds.
 */
export function blockServes(block: ServingBlock, amount: number, now: number): boolean {
  return block.open && block.used + block.pending + amount <= block.held && now < block.serveUntil;
}

/** The idempotency key of window `window` of lease `lease`: a retried or recovered settle charges once. */
export function leaseSettleKey(lease: string, window: number): string {
  return `lease:${lease}:${window}`;
}

/** What a settle entry's metadata says about its window (`lease`, `window`, `requests`, `total`). */
export interface LeaseWindow {
  lease: string;
  window: number;
  /** Charges served from the window's block. */
  requests: number;
  /** Σ of their amounts: the credits the window settled. */
  total: number;
}

/** The window a journal entry settled, read from its metadata; null for any other entry. */
export function leaseWindowOf(metadata: Record<string, unknown> | null | undefined): LeaseWindow | null {
  const m = metadata?.leaseWindow as Partial<LeaseWindow> | undefined;
  if (
    m === undefined ||
    m === null ||
    typeof m !== "object" ||
    typeof m.lease !== "string" ||
    typeof m.window !== "number" ||
    typeof m.requests !== "number" ||
    typeof m.total !== "number"
  )
    return null;
  return { lease: m.lease, window: m.window, requests: m.requests, total: m.total };
}

/**
 * A lease window's usage by (feature, spender, model) (docs/usage.md, "Leases"): the settle entry's
 * `leaseWindow.parts`, so a report by model stays exact without the ledger file. At most
 * `MAX_LEASE_PARTS` named parts a window; the charges of further combinations go to one part with
 * `other: true` (its dimensions null); charges that named nothing are the part with every
 * dimension null. The parts add up to the window's `total` and `requests`.
 */
export interface LeasePart {
  feature: string | null;
  spender: string | null;
  model: string | null;
  credits: number;
  requests: number;
  inputTokens: number;
  outputTokens: number;
  cachedTokens: number;
  /** The charges of the combinations beyond `MAX_LEASE_PARTS`. */
  other?: true;
}

/** Distinct (feature, spender, model) parts a lease window keeps (docs/usage.md, "Leases"). */
export const MAX_LEASE_PARTS = 32;

/** What a leased charge named: who spent on what, and the LLM usages it priced. */
export interface LeaseChargeDims {
  feature?: string | null;
  spender?: string | null;
  usages?: readonly {
    amount: number;
    model?: string;
    inputTokens?: number;
    outputTokens?: number;
    cachedTokens?: number;
  }[];
}

const partKey = (feature: string | null, spender: string | null, model: string | null) =>
  JSON.stringify([feature, spender, model]);

/** Adds a charge of `amount` that named `dims` to a window's `parts` (keyed by combination). */
export function addLeasePart(parts: Map<string, LeasePart>, amount: number, dims: LeaseChargeDims): void {
  const feature = dims.feature ?? null;
  const spender = dims.spender ?? null;
  const put = (model: string | null, credits: number, requests: number, i = 0, o = 0, c = 0) => {
    let key = partKey(feature, spender, model);
    let p = parts.get(key);
    if (p === undefined) {
      const full = parts.size >= MAX_LEASE_PARTS + (parts.has("other") ? 1 : 0);
      if (full) key = "other";
      p = parts.get(key);
      if (p === undefined) {
        p = full
          ? { feature: null, spender: null, model: null, ...NO_MEASURES, other: true }
          : { feature, spender, model, ...NO_MEASURES };
        parts.set(key, p);
      }
    }
    p.credits += credits;
    p.requests += requests;
    p.inputTokens += i;
    p.outputTokens += o;
    p.cachedTokens += c;
  };
  const usages = dims.usages ?? [];
  if (usages.length === 0) {
    put(null, amount, 1);
    return;
  }
  let sum = 0;
  usages.forEach((u, n) => {
    sum += u.amount;
    put(u.model ?? null, u.amount, n === 0 ? 1 : 0, u.inputTokens ?? 0, u.outputTokens ?? 0, u.cachedTokens ?? 0);
  });
  if (sum !== amount) put(null, amount - sum, 0);
}

/**
 * A window's parts as its entry keeps them: the named ones, and what the charges that named
 * nothing used (`used` and `requests` less the named parts'), so they add up to the window.
 */
export function leaseWindowParts(parts: Map<string, LeasePart>, used: number, requests: number): LeasePart[] {
  const out = [...parts.values()];
  let credits = used;
  let count = requests;
  for (const p of out) {
    credits -= p.credits;
    count -= p.requests;
  }
  if (credits !== 0 || count !== 0) {
    out.push({ feature: null, spender: null, model: null, ...NO_MEASURES, credits, requests: count });
  }
  return out;
}

/** One line of the ledger file about a lease (`eventType: "lease"`). */
export type LeaseLine =
  | {
      eventType: "lease";
      action: "hold";
      userId: string;
      lease: string;
      window: number;
      reservationId: string;
      /** A named lease's spender and feature (docs/teams-and-limits.md, "Leases"). */
      spender?: string;
      feature?: string;
      /** The lease's unit, when not the default one (docs/units.md). */
      unit?: string;
    }
  | { eventType: "lease"; action: "charge"; userId: string; lease: string; window: number; amount: number }
  | { eventType: "lease"; action: "settled"; userId: string; lease: string; window: number; entryId: string | null };

/** A window as the ledger file tells it: its hold, its charges, whether it was settled. */
export interface FileWindow {
  userId: string;
  lease: string;
  window: number;
  reservationId: string | null;
  requests: number;
  total: number;
  settled: boolean;
  /** A named lease's spender and feature, from its hold lines: a recovered settle charges under them. */
  spender?: string | undefined;
  feature?: string | undefined;
  /** The lease's unit, from its hold lines (absent: the default unit): a recovered settle charges in it. */
  unit?: string | undefined;
}

/** Adds one lease line of the ledger file to `windows` (keyed by lease and window). */
export function addLeaseLine(windows: Map<string, FileWindow>, line: LeaseLine): void {
  const key = `${line.lease}:${line.window}`;
  let w = windows.get(key);
  if (w === undefined) {
    w = {
      userId: line.userId,
      lease: line.lease,
      window: line.window,
      reservationId: null,
      requests: 0,
      total: 0,
      settled: false,
    };
    windows.set(key, w);
  }
  if (line.action === "hold") {
    w.reservationId = line.reservationId;
    if (typeof line.spender === "string") w.spender = line.spender;
    if (typeof line.feature === "string") w.feature = line.feature;
    if (typeof line.unit === "string") w.unit = line.unit;
  } else if (line.action === "charge") {
    w.requests++;
    w.total += line.amount;
  } else w.settled = true;
}

/** A lease line of the ledger file, or null for any other line. */
export function leaseLineOf(event: unknown): LeaseLine | null {
  const e = event as Partial<Record<string, unknown>> | null;
  if (e === null || typeof e !== "object" || e.eventType !== "lease") return null;
  if (typeof e.userId !== "string" || typeof e.lease !== "string" || typeof e.window !== "number") return null;
  if (e.action === "charge" && typeof e.amount === "number") return e as LeaseLine;
  if (e.action === "hold" && typeof e.reservationId === "string") return e as LeaseLine;
  if (e.action === "settled") return e as LeaseLine;
  return null;
}

/**
 * What a window's journal entry and the file's lines disagree on (empty when they agree): the
 * number of requests and their total must be the same.
 */
export function compareWindow(entry: LeaseWindow, file: FileWindow | undefined): string | null {
  const requests = file?.requests ?? 0;
  const total = file?.total ?? 0;
  if (requests === entry.requests && total === entry.total) return null;
  return `lease ${entry.lease} window ${entry.window}: the journal settled ${entry.requests} requests for ${entry.total} credits, the ledger file has ${requests} for ${total}`;
}
