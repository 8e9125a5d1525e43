import type { GrantSource, JournalEntry, Notification, Reservation } from "../models/index.js";
import type { DomainEventType } from "../models/notifications.js";
import { newNotification } from "./notifications.js";

/**
 * Domain events (docs/events.md): one outbox row per journal entry of a unit of work, written with
 * it (so none is lost on a crash, and a rolled-back change records none). Pure: reads the change's
 * entries, the grants it created and the holds it created or settled.
 */

/** The source of an `add` entry that created no grant (it only paid debt), kept by the unit of work that made it. */
const addSources = new WeakMap<JournalEntry, { source: GrantSource; sourceRef: string | null }>();

/** Called by `AccountWork.add` for an addition that only paid debt: the source of its credits. */
export function noteAddSource(entry: JournalEntry, source: GrantSource, sourceRef: string | null): void {
  addSources.set(entry, { source, sourceRef });
}

/** What the events of one change read besides its entries. */
export interface EventContext {
  /** Holds the change created (for `hold_placed`'s expiry and reason). */
  insertReservations: readonly Reservation[];
  /** Holds the change settled (committed, released or expired). */
  updateReservations: readonly Reservation[];
  /** Grants the change created, by id (an `add` entry's source and expiry). */
  insertGrants: readonly { id: string; source: GrantSource; sourceRef: string | null; expiresAt: Date | null }[];
  /** Grants the change updated (a `start` entry's grant: its source and expiry). Absent: none read. */
  updateGrants?: readonly { id: string; source: GrantSource; sourceRef: string | null; expiresAt: Date | null }[];
}

/** The domain event rows of a change's `entries` (in seq order), or none when the change made no entry. */
export function domainEvents(
  userId: string,
  entries: readonly JournalEntry[],
  context: EventContext,
  now: Date,
): readonly Notification[] {
  const out: Notification[] = [];
  for (const entry of entries) {
    const event = eventOf(entry, context);
    if (event === null) continue;
    const [type, payload] = event;
    out.push(newNotification(userId, type, payload, now, null));
  }
  return out;
}

/** What every entry's event says: the entry, and the account after it. */
function base(e: JournalEntry): Record<string, unknown> {
  return {
    entryId: e.id,
    seq: e.seq,
    amount: e.amount,
    balanceAfter: e.balanceAfter,
    reservedAfter: e.reservedAfter,
    debtAfter: e.debtAfter,
    availableAfter: e.balanceAfter - e.reservedAfter,
    // Another unit than the default one: named (docs/units.md).
    ...(e.unit == null ? {} : { unit: e.unit }),
    grants: e.grants.map((g) =>
      g.kind === undefined
        ? { grantId: g.grantId, amount: g.amount }
        : { grantId: g.grantId, amount: g.amount, kind: g.kind },
    ),
    idempotencyKey: e.idempotencyKey,
    correlationId: e.correlationId,
    description: e.description,
    metadata: e.metadata,
  };
}

/**
 * A payment's take-back (refund or lost dispute): an entry the library recorded as one (`takeBack`,
 * never its metadata's say); the payment service's entries name the payment in their metadata
 * (`paymentId` and `refundedAmount`, src/modules/billing/service-payments.ts).
 */
function refundOf(e: JournalEntry): { paymentId: string | null; refundedAmount: number | null } | null {
  if (e.takeBack == null) return null;
  const m = e.metadata;
  return {
    paymentId: typeof m?.paymentId === "string" ? m.paymentId : null,
    refundedAmount: typeof m?.refundedAmount === "number" ? m.refundedAmount : null,
  };
}

/** The event of one entry; none for a checkpoint, which changes nothing (docs/operations.md). */
function eventOf(e: JournalEntry, c: EventContext): [DomainEventType, Record<string, unknown>] | null {
  switch (e.type) {
    case "checkpoint":
    case "limits":
      return null;
    case "add": {
      const grantId = e.grants[0]?.grantId ?? null;
      const grant = grantId === null ? undefined : c.insertGrants.find((g) => g.id === grantId);
      const noted = addSources.get(e);
      const source: GrantSource = grant?.source ?? noted?.source ?? "other";
      const granted = e.grants.reduce((s, g) => s + g.amount, 0);
      return [
        source === "adjustment" ? "credits_adjusted" : "credits_added",
        {
          ...base(e),
          source,
          sourceRef: grant?.sourceRef ?? noted?.sourceRef ?? null,
          grantId,
          expiresAt: grant?.expiresAt?.toISOString() ?? null,
          debtPaid: e.amount - granted,
          ...(e.effectiveAt == null ? {} : { effectiveAt: e.effectiveAt.toISOString() }),
        },
      ];
    }
    case "start": {
      // A grant added to start later started (docs/units.md, "Grants that start later").
      const grantId = e.grants[0]?.grantId ?? null;
      const grant = grantId === null ? undefined : c.updateGrants?.find((g) => g.id === grantId);
      const noted = addSources.get(e);
      const source: GrantSource = grant?.source ?? noted?.source ?? "other";
      let debtPaid = 0;
      for (const g of e.grants) if (g.kind === "debt_paid") debtPaid += g.amount;
      return [
        source === "adjustment" ? "credits_adjusted" : "credits_added",
        {
          ...base(e),
          source,
          sourceRef: grant?.sourceRef ?? noted?.sourceRef ?? null,
          grantId,
          expiresAt: grant?.expiresAt?.toISOString() ?? null,
          debtPaid,
          started: true,
        },
      ];
    }
    case "deduct":
    case "void": {
      const refund = refundOf(e);
      if (refund !== null) return ["credits_refunded", { ...base(e), via: e.type, ...refund }];
      return [
        e.type === "deduct" ? "credits_deducted" : "credits_voided",
        { ...base(e), reservationId: e.reservationId },
      ];
    }
    case "expire":
      return ["credits_expired", { ...base(e), reservationId: e.reservationId }];
    case "reserve": {
      const hold = c.insertReservations.find((r) => r.id === e.reservationId);
      return [
        "hold_placed",
        {
          ...base(e),
          reservationId: e.reservationId,
          expiresAt: hold?.expiresAt.toISOString() ?? null,
          reason: hold?.reason ?? null,
        },
      ];
    }
    case "commit_reserved": {
      // A partial capture lists what went back (to grants or to debt) in the same entry.
      let returned = 0;
      for (const g of e.grants) if (g.kind !== undefined) returned += g.amount;
      return [
        "hold_settled",
        {
          ...base(e),
          reservationId: e.reservationId,
          outcome: "committed",
          heldAmount: e.amount + returned,
          capturedAmount: e.amount,
          returnedAmount: returned,
        },
      ];
    }
    case "reverse":
      return [
        "credits_reversed",
        {
          ...base(e),
          reverses: e.reverses,
          chargedAt: (e.occurredAt ?? e.createdAt).toISOString(),
          spender: e.spender ?? null,
          feature: e.feature ?? null,
        },
      ];
    case "release_reserved": {
      const hold = c.updateReservations.find((r) => r.id === e.reservationId);
      return [
        "hold_settled",
        {
          ...base(e),
          reservationId: e.reservationId,
          outcome: hold?.status === "expired" ? "expired" : "released",
          heldAmount: e.amount,
          capturedAmount: 0,
          returnedAmount: e.amount,
        },
      ];
    }
  }
}
