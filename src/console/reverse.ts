import { chargeDraw, type ChargeReversals } from "../core/domain/reversal.js";
import { ReverseChargeOptions, type JournalEntry } from "../core/models/index.js";
import { hiddenFields, type Ctx, type PageResult } from "./context.js";
import { amount, enc, html, raw, when, type Html } from "./html.js";
import { accountLink, facts } from "./page-parts.js";
import { shortId } from "./table.js";

// "Give back" on a charge of the account page's journal (docs/console.md, "Actions";
// docs/corrections.md): a form with the charge, what was given back of it and what is left, the
// amount (default: all that is left) and a required reason; then a confirmation of exactly that;
// then the result on the account page.

/**
 * The entries the console offers "Give back" on: charges with credits, as `reverseCharge` takes
 * them (docs/concepts.md, "Giving a charge back").
 */
export function isCharge(e: JournalEntry): boolean {
  return e.amount > 0 && typeof chargeDraw(e) !== "string";
}

/** The journal text of a give-back: the reason, and who gave it back from the console. */
export function recordedReason(reason: string, actor: string): string {
  return `${reason} (by ${actor} in the console)`;
}

/** The longest reason `actor` may type: the library's limit, less what the console adds. */
function reasonMax(actor: string): number {
  return REASON_MAX - recordedReason("", actor).length;
}

/** The longest reason `reverseCharge` takes: the least of its schema's `max_length` checks. */
const REASON_MAX = Math.min(
  ...(ReverseChargeOptions.shape.reason._zod.def.checks ?? []).map((c) => {
    const def = c._zod.def as { check: string; maximum?: number };
    return def.check === "max_length" && def.maximum !== undefined ? def.maximum : Infinity;
  }),
);

/**
 * What is wrong with a give-back's reason, or null: the one check both the review and the
 * confirmation make, the library's own rule for a reversal's reason (docs/corrections.md) applied
 * to the text the console records, so a reason the review accepts is never refused on confirming.
 */
export function reasonProblem(reason: string, actor: string): string | null {
  if (reason.trim() === "") return "Reason: say why the charge is given back; it is written into the journal.";
  const max = reasonMax(actor);
  if (reason.length > max) return `Reason: at most ${amount(max)} characters (the journal adds who gave it back).`;
  const checked = ReverseChargeOptions.shape.reason.safeParse(recordedReason(reason, actor));
  return checked.success ? null : `Reason: ${checked.error.issues[0]?.message ?? "not accepted"}.`;
}

/** What the form sent: the values as typed, each checked again when the action runs. */
export interface ReverseForm {
  user: string;
  entry: string;
  key: string;
  amount: string;
  reason: string;
}

/** The charge in one line: `#12 deduct of 100 credits at …, spender …, feature …`. */
function chargeLine(c: JournalEntry): Html {
  const who = [
    c.spender === null || c.spender === undefined ? null : html`spender <code>${c.spender}</code>`,
    c.feature === null || c.feature === undefined ? null : html`feature <code>${c.feature}</code>`,
  ].filter((x): x is Html => x !== null);
  return html`#${c.seq} <code>${c.type}</code> of ${amount(c.amount)} credits at
    ${when(c.createdAt)}${who.map(
      (w) => html`, ${w}`,
    )}${c.description === null || c.description === "" ? "" : html` — ${c.description}`}`;
}

/** The grants the charge drew from, and the part of it that became debt (given back first). */
function drawnFrom(c: JournalEntry): Html {
  const draw = chargeDraw(c);
  const drawn = typeof draw === "string" ? [] : draw.draws;
  const debt = typeof draw === "string" ? 0 : draw.debt;
  return html`${drawn.map(
    (g, i) => html`${i > 0 ? ", " : ""}grant ${shortId(g.grantId)} (${amount(g.amount)})`,
  )}${drawn.length === 0 ? "no grant" : ""}${debt > 0 ? html`; ${amount(debt)} became debt, reduced first` : ""}`;
}

/** The charge and what was given back of it; `reason`: the one to be recorded (the confirmation). */
function chargeFacts(ctx: Ctx, r: ChargeReversals, reason?: Html): Html {
  const times = r.reversals.length === 1 ? "one reversal" : `${amount(r.reversals.length)} reversals`;
  return facts(
    [
      ["Account", accountLink(ctx, r.charge.userId)],
      ["Charge", chargeLine(r.charge)],
      ["Drawn from", drawnFrom(r.charge)],
      ["Given back", html`${amount(r.reversed)} credits${r.reversals.length === 0 ? "" : ` in ${times}`}`],
      ["Left to give back", `${amount(r.remaining)} credits`, "reverse-remaining"],
      ...(reason === undefined ? [] : [["Reason", reason, "reverse-reason"] as const]),
    ],
    "reverse-facts",
  );
}

/**
 * The first page: the charge, and the amount (default: what is left) and reason to fill in;
 * `errors` from a review that was refused. Nothing left to give back: no form.
 */
export function reverseFormPage(ctx: Ctx, r: ChargeReversals, f: ReverseForm, errors: readonly string[]): PageResult {
  const back = html`<a href="${ctx.base}/accounts/${enc(f.user)}#journal">Cancel</a>`;
  const body = html`<h1>Give back a charge</h1>
    ${errors.map((e) => html`<p class="error" role="alert">${e}</p>`)}
    <p>
      The credits go back to the grants the charge drew from, in the same proportions, with their own expiry, priority
      and cost basis; usage reports and spend limits net them out of the charge's window.
    </p>
    ${chargeFacts(ctx, r)}
    ${
      r.remaining === 0
        ? html`<p class="muted" id="reverse-none">All of this charge was given back: nothing is left.</p>
            <p>${back}</p>`
        : html`<form class="box" method="post" action="${ctx.base}/actions/reverse">
            ${hiddenFields(ctx, { _key: f.key, user: f.user, entry: f.entry, step: "review" })}<label
              >Credits to give back (1 to ${amount(r.remaining)})<input
                name="amount"
                type="number"
                min="1"
                max="${r.remaining}"
                step="1"
                required
                value="${f.amount === "" ? String(r.remaining) : f.amount}" /></label
            ><label class="grow"
              >Reason (required, written into the journal)<input
                name="description"
                maxlength="${reasonMax(ctx.actor)}"
                required
                value="${f.reason}"
            /></label>
            <button type="submit">Review…</button>
            ${back}
          </form>`
    }`;
  return { title: "Give back a charge", body };
}

/**
 * The confirmation: exactly what will be recorded, behind one more button; "Change" goes back to
 * the form with the values kept.
 */
export function reverseConfirmPage(ctx: Ctx, r: ChargeReversals, f: ReverseForm, credits: number): PageResult {
  const body = html`<h1>Confirm</h1>
    <p>
      Give back <strong id="reverse-amount">${amount(credits)} credits</strong> of charge #${r.charge.seq}? They return
      to the grants it drew
      from${credits < r.remaining ? html`; ${amount(r.remaining - credits)} credits will be left to give back` : ""}.
    </p>
    ${chargeFacts(ctx, r, html`${recordedReason(f.reason, ctx.actor)}`)}
    <form class="actions" method="post" action="${ctx.base}/actions/reverse">
      ${hiddenFields(ctx, {
        _key: f.key,
        user: f.user,
        entry: f.entry,
        amount: String(credits),
        description: f.reason,
      })}<button type="submit" class="danger" id="confirm" name="confirmed" value="1">
        Give back ${amount(credits)} credits</button
      ><button type="submit" class="secondary" id="change" name="step" value="edit">Change</button>
      <a href="${ctx.base}/accounts/${enc(f.user)}#journal">Cancel</a>
    </form>`;
  return { title: "Confirm", body };
}

/**
 * The result on the account page after a give-back (`?notice=reversed&charge=…&reversal=…`): the
 * figures read from the store, never from the query — the query only says which charge.
 */
export function reversedNotice(r: ChargeReversals, reversalId: string): Html {
  const done = r.reversals.find((e) => e.id === reversalId);
  if (done === undefined) return raw("");
  return html`<p class="notice" role="status" id="reverse-result">
    Gave back ${amount(done.amount)} credits of charge #${r.charge.seq} (entry #${done.seq}): ${amount(r.reversed)} of
    ${amount(r.charge.amount)} given back in all,
    ${r.remaining === 0 ? "nothing" : html`${amount(r.remaining)} credits`} left to give back.
  </p>`;
}
