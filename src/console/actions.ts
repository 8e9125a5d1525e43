import { CreditError, NotFoundError, ValidationError } from "../core/errors.js";
import { newId } from "../core/util/uuid.js";
import { errorPage, hiddenFields, type Ctx, type PageResult } from "./context.js";
import { amount, enc, html, money, query, type Html } from "./html.js";
import { AUDIT_MESSAGE, facts } from "./page-parts.js";
import { reasonProblem, recordedReason, reverseConfirmPage, reverseFormPage, type ReverseForm } from "./reverse.js";
import { billingStore } from "../modules/billing/store.js";

/** What each action asks before it acts, and the fields it takes (besides `user`). */
const ACTIONS = {
  grant: { fields: ["amount", "days", "description"], ask: "Grant credits to this account?" },
  void: { fields: ["grant", "description"], ask: "Void what is left of this grant? Its credits are taken back." },
  release: { fields: ["hold", "description"], ask: "Release this hold? Its credits become available again." },
  refund: {
    fields: ["payment", "amount"],
    ask: "Record a refund of all of this payment? Its credits are taken back. Refund it at the provider first.",
  },
  reverse: {
    fields: ["entry", "amount", "description"],
    ask: "Give back credits of this charge? They return to the grants it drew from.",
  },
  retry: { fields: ["notification"], ask: "Queue this failed notification for delivery again?" },
  audit: { fields: [], ask: "Run a full audit of this account (replays its whole journal)?" },
  "webhook-retry": {
    fields: ["endpoint", "event"],
    ask: "Deliver this failed webhook again (a new delivery, the same webhook-id)?",
  },
} as const;

export type ActionName = keyof typeof ACTIONS;
export const isAction = (name: string): name is ActionName => Object.hasOwn(ACTIONS, name);

/** Keys of actions that record nothing keyed in the store (audit): a repeat within the process is skipped. */
const doneKeys = new Set<string>();
function rememberKey(key: string): boolean {
  if (doneKeys.has(key)) return false;
  doneKeys.add(key);
  if (doneKeys.size > 10_000) doneKeys.delete(doneKeys.values().next().value as string);
  return true;
}

const KEY = /^[A-Za-z0-9-]{8,64}$/;

function field(form: FormData, name: string): string {
  const v = form.get(name);
  return typeof v === "string" ? v.trim() : "";
}

function wholeNumber(value: string, name: string, max = 1_000_000_000_000): number {
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1 || n > max)
    throw new ValidationError(`Invalid ${name}: a whole number from 1 to ${max} is needed`, [
      { path: name, message: "not a whole number in range" },
    ]);
  return n;
}

/**
 * The journal description of an action: the operator's reason (or what was done) and who did it
 * in the console, the same for a grant, a void and a release (docs/console.md, "Actions").
 */
function described(form: FormData, done: string, actor: string): string {
  const reason = field(form, "description");
  return `${reason === "" ? done : reason} (by ${actor} in the console)`;
}

/** Actions whose reason is asked on the confirmation page (a grant's is on the account page). */
const REASON_ON_CONFIRM: ReadonlySet<ActionName> = new Set(["void", "release"]);

/** What the confirmation page calls each field. */
const LABELS: Record<string, string> = {
  user: "Account",
  amount: "Amount",
  days: "Expires in",
  description: "Reason",
  grant: "Grant",
  hold: "Hold",
  payment: "Payment",
  notification: "Notification",
  endpoint: "Endpoint",
  event: "Event",
};

/** A field's value as the confirmation page shows it: credits with separators, a refund's money. */
async function shownValue(ctx: Ctx, name: ActionName, form: FormData, f: string): Promise<Html> {
  const v = field(form, f);
  if (name === "grant" && f === "amount" && /^[0-9]+$/.test(v)) return html`${amount(Number(v))} credits`;
  if (name === "grant" && f === "days" && /^[0-9]+$/.test(v)) return html`${amount(Number(v))} days`;
  if (name === "refund" && f === "payment") {
    const p = await billingStore(ctx.manager.db).getPayment(v, field(form, "user"));
    if (p !== null && p.userId === field(form, "user"))
      return html`<code>${v}</code> — ${money(p.amount, p.currency)} for ${amount(p.credits)}
        credits${p.refundedAmount > 0 ? html`, ${money(p.refundedAmount, p.currency)} refunded so far` : ""}`;
  }
  if (name === "refund" && f === "amount") {
    const p = await billingStore(ctx.manager.db).getPayment(field(form, "payment"), field(form, "user"));
    if (p !== null && /^[0-9]+$/.test(v)) return html`${money(Number(v), p.currency)} refunded in all`;
  }
  return html`<code>${v}</code>`;
}

/**
 * "Give back" (docs/console.md, "Actions"): the form with the charge's figures, then — once the
 * amount and the reason are good — the confirmation of exactly what will be recorded.
 */
async function reverseSteps(ctx: Ctx, form: FormData): Promise<PageResult> {
  const f: ReverseForm = {
    user: field(form, "user"),
    entry: field(form, "entry"),
    key: field(form, "_key"),
    amount: field(form, "amount"),
    reason: field(form, "description"),
  };
  const r = await ctx.manager.credits.getReversals(f.user, f.entry);
  if (field(form, "step") !== "review") return reverseFormPage(ctx, r, f, []);
  const errors: string[] = [];
  const credits = Number(f.amount);
  if (!/^[0-9]+$/.test(f.amount) || credits < 1 || credits > r.remaining)
    errors.push(`Credits to give back: a whole number from 1 to ${amount(r.remaining)} (what is left of the charge).`);
  const reasonError = reasonProblem(f.reason, ctx.actor);
  if (reasonError !== null) errors.push(reasonError);
  return errors.length > 0 || r.remaining === 0
    ? reverseFormPage(ctx, r, f, errors)
    : reverseConfirmPage(ctx, r, f, credits);
}

/** The confirmation page: the same fields again, with `confirmed`, behind one more button. */
async function confirmation(ctx: Ctx, name: ActionName, form: FormData): Promise<PageResult> {
  if (name === "reverse") return await reverseSteps(ctx, form);
  const user = field(form, "user");
  const ask = REASON_ON_CONFIRM.has(name);
  const shown = ["user", ...ACTIONS[name].fields].filter((f) => field(form, f) !== "" && !(ask && f === "description"));
  const values = await Promise.all(shown.map((f) => shownValue(ctx, name, form, f)));
  const body = html`<h1>Confirm</h1>
    <p>
      ${
        name === "refund" && field(form, "amount") !== ""
          ? "Record a refund of this payment, to the total below? Its credits are taken back."
          : ACTIONS[name].ask
      }
    </p>
    ${facts(shown.map((f, i) => [LABELS[f] ?? f, values[i]]))}
    <form method="post" action="${ctx.base}/actions/${name}">
      ${hiddenFields(ctx, {
        _key: field(form, "_key"),
        confirmed: "1",
        ...Object.fromEntries(shown.map((f) => [f, field(form, f)])),
      })}${
        ask
          ? html`<p>
              <label
                >Reason (optional, written into the journal)<input
                  name="description"
                  maxlength="500"
                  value="${field(form, "description")}"
              /></label>
            </p>`
          : ""
      }<button type="submit" class="danger" id="confirm">Confirm</button>
      <a href="${ctx.base}/accounts/${enc(user)}">Cancel</a>
    </form>`;
  return { title: "Confirm", body };
}

/** Runs a confirmed action as `ctx.actor`, then sends the browser back (303) with a notice. */
export async function runAction(ctx: Ctx, name: ActionName, form: FormData): Promise<PageResult> {
  if (field(form, "confirmed") !== "1") return await confirmation(ctx, name, form);
  const key = field(form, "_key");
  if (!KEY.test(key))
    throw new ValidationError("Invalid form: its idempotency key is missing", [{ path: "_key", message: "missing" }]);
  const user = field(form, "user");
  if (user === "") throw new ValidationError("Invalid form: no user", [{ path: "user", message: "missing" }]);
  const { credits, payments, db, ledger } = ctx.manager;
  const idempotencyKey = `console:${name}:${key}`;
  const by = { actor: ctx.actor, via: "console" };
  // What a grant, a void and a release record: the form's key, its description (else `done` by the actor), who.
  const recorded = (done: string) => ({ idempotencyKey, description: described(form, done, ctx.actor), metadata: by });
  let back = `/accounts/${enc(user)}`;
  let noticeCode: string =
    name === "grant"
      ? "granted"
      : `${name === "void" ? "voided" : name === "release" ? "released" : name === "refund" ? "refunded" : name === "reverse" ? "reversed" : name === "retry" ? "retried" : name === "webhook-retry" ? "webhook-retried" : "audited"}`;
  switch (name) {
    case "grant": {
      const amount = wholeNumber(field(form, "amount"), "amount");
      const days = field(form, "days");
      await credits.addCredits(user, amount, {
        ...recorded("Granted"),
        source: "manual",
        ...(days === ""
          ? {}
          : { expiresAt: new Date(ctx.now.getTime() + wholeNumber(days, "days", 36_500) * 86_400_000) }),
      });
      break;
    }
    case "void": {
      const grantId = field(form, "grant");
      const g = await db.getGrant(grantId, user);
      if (g === null || g.userId !== user) throw new NotFoundError(`Grant ${grantId} not found.`, { grantId });
      await credits.voidGrant(grantId, recorded("Voided"));
      break;
    }
    case "release": {
      const holdId = field(form, "hold");
      const h = await db.getReservation(holdId, user);
      if (h === null || h.userId !== user)
        throw new NotFoundError(`Hold ${holdId} not found.`, { reservationId: holdId });
      await credits.releaseReservedCredits(holdId, recorded("Released"));
      break;
    }
    case "reverse": {
      // The reason is required here as in the library; the amount as confirmed (the library
      // refuses more than is left, should another give-back have come first).
      const reason = field(form, "description");
      const problem = reasonProblem(reason, ctx.actor);
      if (problem !== null)
        throw new ValidationError(`Invalid form: ${problem}`, [{ path: "description", message: problem }]);
      const chargeId = field(form, "entry");
      const entry = await credits.reverseCharge(user, chargeId, {
        amount: wholeNumber(field(form, "amount"), "amount"),
        reason: recordedReason(reason, ctx.actor),
        idempotencyKey,
        metadata: by,
      });
      back = `/accounts/${enc(user)}${query({ charge: chargeId, reversal: entry.id })}`;
      break;
    }
    case "refund": {
      const amount = field(form, "amount");
      const r = await payments.recordRefund(user, field(form, "payment"), {
        by: ctx.actor,
        ...(amount === "" ? {} : { refundedTotal: wholeNumber(amount, "amount") }),
      });
      if (r.outcome === "duplicate" || r.outcome === "unchanged") noticeCode = "duplicate";
      back = `/payments${query({ user })}`;
      break;
    }
    case "retry": {
      const id = field(form, "notification");
      const failed = (await db.listNotifications(user, { status: "failed", limit: 1000 })).find((n) => n.id === id);
      if (failed === undefined)
        throw new NotFoundError(`No failed notification ${id} of this user.`, { notificationId: id });
      // A new pending row with the same event; its dedupe key makes a second retry of the same row a no-op.
      const inserted = await db.insertNotifications([
        {
          ...failed,
          id: newId(),
          status: "pending",
          dedupeKey: `retry:${failed.id}`,
          attempts: 0,
          nextAttemptAt: ctx.now,
          claimedUntil: null,
          claimToken: null,
          lastError: null,
          createdAt: ctx.now,
          settledAt: null,
        },
      ]);
      if (inserted === 0) noticeCode = "duplicate";
      else await ledger.logSystem("console: notification retried", { notificationId: id, ...by }, { userId: user });
      back = `/outbox${query({ user })}`;
      break;
    }
    case "webhook-retry": {
      // The same path as `credit-management webhooks retry` and POST /admin/webhooks/:id/retry,
      // keyed by the form so a double submit writes one delivery (docs/console.md, "Webhooks").
      const endpointId = field(form, "endpoint");
      const eventId = field(form, "event");
      const endpoint = ctx.webhooks === undefined ? null : await ctx.webhooks.get(endpointId);
      if (endpoint === null) throw new NotFoundError(`No webhook endpoint ${endpointId}.`, { endpointId });
      if (eventId === "") throw new ValidationError("Invalid form: no event", [{ path: "event", message: "missing" }]);
      const { retryFailedWebhooks } = await import("../modules/webhooks/queue.js");
      const written = await retryFailedWebhooks(db, endpoint.id, user, eventId, { retryKey: key });
      if (written === 0) {
        // Nothing failed for this event any more, or this form was sent before.
        noticeCode = "duplicate";
      } else
        await ledger.logSystem(
          "console: webhook delivery retried",
          { endpointId: endpoint.id, eventId, ...by },
          { userId: user },
        );
      back = `/webhooks/${enc(endpoint.id)}${query({ user })}`;
      break;
    }
    case "audit": {
      if (!rememberKey(idempotencyKey)) {
        noticeCode = "duplicate";
        break;
      }
      const report = await credits.audit(user);
      await ledger.logSystem(
        AUDIT_MESSAGE,
        { ok: report.ok, entries: report.entries, problems: report.problems.slice(0, 20), ...by },
        { userId: user },
      );
      break;
    }
  }
  return new Response(null, {
    status: 303,
    headers: { location: `${ctx.base}${back}${back.includes("?") ? "&" : "?"}notice=${noticeCode}` },
  });
}

/** A refused action as a page: the error's message, escaped, with its status. */
export function actionError(error: unknown): PageResult | null {
  if (!(error instanceof CreditError)) return null;
  const status = error.status;
  return errorPage(status >= 400 && status < 600 ? status : 400, "Refused", error.message);
}
