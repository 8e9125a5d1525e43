import type * as z from "zod/mini";
import type { ChargeRecord, DbTransaction } from "../db/types.js";
import type { AccountWork, EntryMeta } from "../domain/account-work.js";
import { fingerprint } from "../domain/hash.js";
import {
  type ChargeDraw,
  type ChargeReversals,
  PAYING_TYPES,
  PaidDebt,
  amountToGiveBack,
  chargeDraw,
  chargedAt,
  reversalShares,
  reversedOf,
} from "../domain/reversal.js";
import { reversalMetadata } from "../domain/usage.js";
import { ConfigurationError, NotFoundError, RuleViolationError } from "../errors.js";
import type { JournalEntry, ReverseChargeOptions } from "../models/index.js";
import type { CreditCore } from "./credit-core.js";
import { copy } from "./history.js";

/**
 * `CreditService.reverseCharge` of validated input: one unit of work on the account that reads the
 * charge and its reversals (`DbTransaction.getCharge`, inside the unit: a reversal another process
 * saved meanwhile is seen, or makes this one run again), checks what is left, and writes the
 * `reverse` entry (`AccountWork.reverse`).
 */
export function reverseCharge(
  core: CreditCore,
  user: string,
  entryId: string,
  o: z.output<typeof ReverseChargeOptions>,
): Promise<JournalEntry> {
  const key = o.idempotencyKey;
  const meta: EntryMeta = {
    description: o.reason,
    idempotencyKey: key,
    // What a retry must repeat: the charge, the amount asked (none: "the rest"), the reason, the metadata.
    fingerprint:
      key === undefined
        ? undefined
        : fingerprint("reverseCharge", {
            entryId,
            amount: o.amount ?? null,
            reason: o.reason,
            metadata: o.metadata ?? null,
          }),
    correlationId: o.correlationId,
  };
  return core.units.mutate("reverseCharge", user, meta, async (work, tx) => {
    const { entry: charge, reversals } = await readCharge(tx, entryId);
    const draw = drawOf(charge);
    const reversed = reversedOf(draw, reversals);
    const amount = amountToGiveBack(entryId, draw, reversed, o.amount);
    const shares = reversalShares(draw, reversed, amount);
    // The part of the charge's debt the account no longer owes was paid since: by whom.
    const paid = await paidDebt(
      core,
      tx,
      work,
      charge.seq,
      // The charge's unit's debt: only its entries paid it (docs/units.md).
      shares.debt - Math.min(shares.debt, work.figures(charge.unit ?? null).debt),
      charge.unit ?? null,
    );
    // Grants it drew, or that paid its debt, that are spent or closed are not loaded with the account's open ones.
    const ids = [...draw.draws, ...paid.portions].map((d) => d.grantId);
    const missing = [...new Set(ids)].filter((id) => work.getGrant(id) === undefined);
    if (missing.length > 0) work.include(await tx.getGrants(missing));
    return work.reverse(charge, draw, reversed, amount, paid, {
      ...meta,
      // The charge's dimensions and its usage parts scaled to this reversal (docs/usage.md, "Corrections").
      metadata: reversalMetadata(charge, amount, reversed.total, o.metadata),
      spender: charge.spender ?? undefined,
      feature: charge.feature ?? undefined,
      reverses: charge.id,
      occurredAt: chargedAt(charge),
    });
  });
}

/** `CoreCreditService.getReversals` of validated input: read in a unit of work of the account, which writes nothing of its own. */
export async function getReversals(core: CreditCore, user: string, entryId: string): Promise<ChargeReversals> {
  const found = await core.units.mutate("getReversals", user, {}, (_work, tx) => readCharge(tx, entryId));
  const draw = drawOf(found.entry);
  const reversed = reversedOf(draw, found.reversals).total;
  return {
    charge: copy(found.entry),
    reversals: found.reversals.map(copy),
    reversed,
    remaining: draw.amount - reversed,
  };
}

/**
 * Who paid `amount` credits of a charge's debt (`PaidDebt`, docs/concepts.md, "Giving a charge
 * back"): the account's entries after the charge (seq `chargeSeq`), read newest first until they
 * account for it — first those this unit of work wrote before the reversal (a grant's start, a
 * lapsed hold's release, settled as the unit began: not stored yet), then the stored ones, page by
 * page. Entries up to the seq the unit loaded are written and never change, so reading them beside
 * the unit is safe.
 */
async function paidDebt(
  core: CreditCore,
  tx: DbTransaction,
  work: AccountWork,
  chargeSeq: number,
  amount: number,
  unit: string | null,
): Promise<PaidDebt> {
  const paid = new PaidDebt(amount);
  const read = async (e: JournalEntry) => {
    if ((e.unit ?? null) !== unit || !(PAYING_TYPES as readonly string[]).includes(e.type)) return;
    const id = e.type === "release_reserved" ? (e.reservationId ?? null) : null;
    const hold = id === null ? null : (work.getHold(id) ?? (await tx.getReservation(id)));
    paid.read(e, hold?.allocations);
  };
  // This unit's own entries, newest first; `before`: the first of them (the stored ones end below it).
  const own = work.entries;
  for (let i = own.length - 1; i >= 0 && !paid.done; i--) await read(own[i] as JournalEntry);
  let before = own[0]?.seq ?? work.account.seq + 1;
  while (!paid.done && before > chargeSeq + 1) {
    const page = await core.db.listJournal(work.userId, {
      order: "desc",
      beforeSeq: before,
      afterSeq: chargeSeq,
      limit: PAGE,
      types: PAYING_TYPES,
    });
    for (const e of page) {
      if (paid.done) break;
      await read(e);
    }
    if (page.length < PAGE) break;
    before = (page[page.length - 1] as JournalEntry).seq;
  }
  return paid;
}

/** Journal entries read a page at a time by `paidDebt`. */
const PAGE = 200;

/** The charge `entryId` of the unit's account with its reversals; `NotFoundError` when the account has none of that id. */
async function readCharge(tx: DbTransaction, entryId: string): Promise<ChargeRecord> {
  if (tx.getCharge === undefined)
    throw new ConfigurationError(
      "[credit-management] this store cannot read a journal entry by its id (DbTransaction.getCharge): charges cannot be given back on it",
    );
  const found = await tx.getCharge(entryId);
  if (found === null) throw new NotFoundError(`Entry ${entryId} not found.`, { entryId });
  return found;
}

/** What `charge` drew, or a `RuleViolationError` when it is no charge (docs/concepts.md, "Giving a charge back"). */
function drawOf(charge: JournalEntry): ChargeDraw {
  const draw = chargeDraw(charge);
  if (typeof draw === "string") throw new RuleViolationError(draw, [{ path: "entryId", message: "not a charge" }]);
  return draw;
}
