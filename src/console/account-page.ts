import { compareGrants } from "../core/domain/order.js";
import { CreditError } from "../core/errors.js";
import { hashEntry } from "../core/domain/hash.js";
import { calendarWindow, limitStatuses } from "../core/domain/limits.js";
import {
  type AutoTopUpState,
  EntryType,
  type Grant,
  type LimitPeriod,
  type SpendLimitStatus,
  type JournalEntry,
  type Payment,
} from "../models-entry.js";
import { notice, type Ctx, type PageResult } from "./context.js";
import { amount, enc, html, inUnit, jsonData, money, query, raw, relative, when, type Html } from "./html.js";
import { shortId, table } from "./table.js";
import { accountUsage, partialNote, recentEntries, recentUsage } from "./usage-page.js";
import { basisText } from "./cost-basis.js";
import type { UsageReport } from "../core/models/usage.js";
import { notificationTable } from "./outbox-page.js";
import {
  AUDIT_MESSAGE,
  PAGE,
  accountLink,
  actionForm,
  cards,
  dayField,
  dayParam,
  facts,
  metaList,
  pager,
  scopeText,
} from "./page-parts.js";
import { paymentTable } from "../modules/billing/page-payments.js";
import { billingStore } from "../modules/billing/store.js";
import { subscriptionTable } from "./subscriptions-page.js";
import { isCharge, reversedNotice } from "./reverse.js";
import type { CustomerState, FeatureState } from "../modules/customer-state/rules.js";
import { autoTopUpOf } from "../modules/billing/rules-auto-top-up.js";

// One account in the console (docs/console.md): its credits, chart, limits, spend, grants, holds,
// auto top-up, payments, subscriptions, outbox and journal; and one hold.

/** The newest entries the balance chart draws (of those `recentEntries` read). */
const CHART_POINTS = 500;

function parseTypes(values: string[]): EntryType[] | undefined {
  const types = values.filter((v): v is EntryType => EntryType.safeParse(v).success);
  return types.length === 0 ? undefined : types;
}

/**
 * A bound of the journal filter: a day `YYYY-MM-DD` (UTC) — "to" includes that day — or an exact
 * ISO time; an error naming the field for anything else (the filter then leaves it out).
 */
function journalBound(value: string | null, name: "From" | "To", end: boolean): { at?: Date; error?: string } {
  const day = dayParam(value);
  if (day === undefined) return {};
  if (day !== null) return { at: end ? new Date(day.getTime() + 86_400_000) : day };
  const v = (value ?? "").trim();
  const t = /^\d{4}-\d{2}-\d{2}T/.test(v) ? new Date(v) : null;
  if (t !== null && !Number.isNaN(t.getTime())) return { at: t };
  return { error: `${name}: "${v}" is not a day: write it as YYYY-MM-DD (UTC).` };
}

/** The page's own check of the hash chain: each entry's hash, and each link to the one before. */
function chainCheck(entries: readonly JournalEntry[]): { ok: boolean; text: string } {
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i] as JournalEntry;
    const { hash, ...rest } = e;
    // A keyed entry's HMAC needs its key, which the page has not: audit() checks it.
    if ((e.keyId ?? null) === null && hashEntry(rest) !== hash)
      return { ok: false, text: `entry #${e.seq} does not match its hash` };
    const older = entries[i + 1];
    if (older !== undefined && older.seq === e.seq - 1 && e.prevHash !== older.hash)
      return { ok: false, text: `entry #${e.seq} does not chain to #${older.seq}` };
  }
  return {
    ok: true,
    text:
      entries.length === 1
        ? "the entry shown matches its hash"
        : `the ${entries.length} entries shown match their hashes and chain`,
  };
}

/** What the page knows of each charge's reversals, and where each entry is on it (by id). */
interface PageReversals {
  /** Per charge id: the reverse entries of it on this page, newest first. */
  byCharge: Map<string, JournalEntry[]>;
  /** Entries on this page by id (a link to `#entry-<id>`). */
  seqOf: Map<string, number>;
}

function pageReversals(entries: readonly JournalEntry[]): PageReversals {
  const byCharge = new Map<string, JournalEntry[]>();
  const seqOf = new Map<string, number>();
  for (const e of entries) {
    seqOf.set(e.id, e.seq);
    if (e.type === "reverse" && e.reverses !== null && e.reverses !== undefined)
      byCharge.set(e.reverses, [...(byCharge.get(e.reverses) ?? []), e]);
  }
  return { byCharge, seqOf };
}

/** An entry of the journal by id: `#seq` linked to its row when it is on this page, else its short id. */
function entryRef(id: string, rev: PageReversals): Html {
  const seq = rev.seqOf.get(id);
  return seq === undefined
    ? html`entry <span class="mono">${shortId(id)}</span>`
    : html`<a href="#entry-${id}">#${seq}</a>`;
}

/**
 * A charge's reversals and a reversal's charge (docs/corrections.md): "gives back #12", and on the
 * charge "given back 40 (#15, #18)" — of the reversals on this page, which are all of them on the
 * newest page (a reversal is always newer than its charge).
 */
function reversalParts(e: JournalEntry, rev: PageReversals): Html[] {
  if (e.type === "reverse" && e.reverses !== null && e.reverses !== undefined)
    return [html`gives back ${entryRef(e.reverses, rev)}`];
  const given = rev.byCharge.get(e.id);
  if (given === undefined) return [];
  const total = given.reduce((s, r) => s + r.amount, 0);
  return [
    html`<span class="given-back"
      >given back ${amount(total)}${total >= e.amount ? " (all)" : ""} in
      ${given.map((r, i) => html`${i > 0 ? ", " : ""}${entryRef(r.id, rev)}`)}</span
    >`,
  ];
}

function causeOf(ctx: Ctx, e: JournalEntry, open: ReadonlySet<string>, rev: PageReversals): Html {
  const u = enc(e.userId);
  const parts: Html[] = [...reversalParts(e, rev)];
  if (e.spender !== null && e.spender !== undefined) parts.push(html`spender <code>${e.spender}</code>`);
  if (e.feature !== null && e.feature !== undefined) parts.push(html`feature <code>${e.feature}</code>`);
  if (e.reservationId !== null)
    parts.push(
      html`hold <a href="${ctx.base}/accounts/${u}/holds/${enc(e.reservationId)}">${shortId(e.reservationId)}</a>`,
    );
  const m = e.metadata ?? {};
  if (typeof m.paymentId === "string")
    parts.push(
      html`payment
        <a href="${ctx.base}/payments${query({ user: e.userId })}#pay-${m.paymentId}">${shortId(m.paymentId)}</a>`,
    );
  if (typeof m.promoCode === "string" || typeof m.code === "string")
    parts.push(
      html`promo <a href="${ctx.base}/promos${query({ user: e.userId })}">${String(m.promoCode ?? m.code)}</a>`,
    );
  if (typeof m.subscriptionId === "string")
    parts.push(
      html`subscription
        <a href="${ctx.base}/subscriptions${query({ user: e.userId })}">${shortId(m.subscriptionId)}</a>`,
    );
  // A sale's cost basis, as the add entry's hash covers it (docs/revenue.md, "The cost basis").
  if (e.type === "add" && e.costBasis !== null && e.costBasis !== undefined)
    parts.push(html`sold at ${basisText(e.costBasis)} per credit`);
  for (const g of e.grants.slice(0, 3))
    parts.push(
      open.has(g.grantId)
        ? html`grant <a href="#grant-${g.grantId}">${shortId(g.grantId)}</a> (${amount(g.amount)})`
        : html`grant <span class="mono">${shortId(g.grantId)}</span> (${amount(g.amount)})`,
    );
  if (e.correlationId !== null) parts.push(html`<span class="muted">corr.</span> <code>${e.correlationId}</code>`);
  return parts.length === 0 ? raw("—") : html`${parts.map((p, i) => html`${i > 0 ? raw("<br>") : ""}${p}`)}`;
}

/**
 * The notice after an action; after a give-back, its result: the figures read from the store
 * for the charge the redirect names (nothing of the query is shown).
 */
async function reverseResult(ctx: Ctx, userId: string): Promise<Html> {
  const sp = ctx.url.searchParams;
  const charge = sp.get("charge");
  const reversal = sp.get("reversal");
  if (sp.get("notice") !== "reversed" || charge === null || reversal === null) return notice(ctx);
  try {
    const shown = reversedNotice(await ctx.manager.credits.getReversals(userId, charge), reversal);
    return shown.text === "" ? notice(ctx) : shown;
  } catch (error) {
    if (error instanceof CreditError) return notice(ctx);
    throw error;
  }
}

export async function accountPage(ctx: Ctx, userId: string): Promise<PageResult> {
  const { db } = ctx.manager;
  const sp = ctx.url.searchParams;
  const account = await db.getAccount(userId);
  if (account === null) return { status: 404, title: "No such account", body: html`<h1>No account ${userId}</h1>` };
  const before = Number(sp.get("before") ?? "");
  const types = parseTypes(sp.getAll("type"));
  const fromBound = journalBound(sp.get("from"), "From", false);
  const toBound = journalBound(sp.get("to"), "To", true);
  const { at: from } = fromBound;
  const { at: to } = toBound;
  const filterErrors = [fromBound.error, toBound.error].filter((e): e is string => e !== undefined);
  // This calendar month (UTC), for the spend per spender. It, the usage by day and the balance
  // chart are of the newest entries: one bounded read, whatever the journal's size (docs/console.md).
  const month = calendarWindow("month", ctx.now.getTime());
  const [grants, holds, page, recent, payments, audits, subs, claims, notifications] = await Promise.all([
    db.listGrants(userId),
    db.listReservations(userId, { status: "active" }),
    db.listJournal(userId, {
      order: "desc",
      limit: PAGE + 1,
      ...(Number.isSafeInteger(before) && before > 0 ? { beforeSeq: before } : {}),
      ...(types === undefined ? {} : { types }),
      ...(from === undefined ? {} : { from }),
      ...(to === undefined ? {} : { to }),
    }),
    recentEntries(ctx, account),
    billingStore(db).listPayments(userId, { limit: 10 }),
    db.listLedgerEntries({ userId, eventType: "system", limit: 20 }),
    db.listSubscriptions(userId),
    billingStore(db).listPromoClaims(userId),
    db.listNotifications(userId, { limit: 10 }),
  ]);
  const spends = recentUsage(recent, {
    account: userId,
    from: new Date(month.start),
    to: new Date(month.end),
    interval: null,
    groupBy: ["spender"],
    kinds: ["spend"],
  });
  const topUps = autoTopUpOf(account) === null ? [] : await topUpAttempts(ctx, userId);
  const limits = limitStatuses(account.limits ?? [], ctx.now.getTime());
  const entries = page.slice(0, PAGE);
  const last = entries[entries.length - 1];
  const filters = { type: undefined, from: sp.get("from") ?? undefined, to: sp.get("to") ?? undefined };
  const typeQuery = (types ?? []).map((t) => `&type=${enc(t)}`).join("");
  const next =
    page.length > PAGE && last !== undefined ? `${query({ ...filters, before: last.seq })}${typeQuery}` : null;
  const open = grants.slice().sort(compareGrants);
  const openIds = new Set(open.map((g) => g.id));
  const check = chainCheck(entries);
  const rev = pageReversals(entries);
  const admin = ctx.role === "admin";
  const audit = audits.find((a) => a.message === AUDIT_MESSAGE);
  // The default unit's balance: an entry of another unit has its own unit's `balanceAfter` (docs/units.md).
  const chart = recent.entries.filter((e) => e.unit == null).slice(-CHART_POINTS);
  const series = [chart.map((e) => e.createdAt.getTime() / 1000), chart.map((e) => e.balanceAfter)];
  const u = { user: userId };
  const usage = accountUsage(ctx, userId, recent);
  const body = html`<h1>Account <span class="mono">${userId}</span></h1>
    ${await reverseResult(ctx, userId)}
    ${cards([
      { label: "Balance", value: amount(account.balance), id: "balance" },
      { label: "Reserved", value: amount(account.reserved) },
      { label: "Available", value: amount(account.balance - account.reserved) },
      { label: "Debt", value: amount(account.debt) },
      { label: "Journal entries", value: amount(account.seq) },
    ])}
    ${Object.entries(account.units ?? {}).map(([unit, f]) =>
      // Each other unit's figures on their own row: nothing adds two units (docs/units.md).
      cards([
        { label: `Balance (${unit})`, value: inUnit(f.balance, unit) },
        { label: `Reserved (${unit})`, value: inUnit(f.reserved, unit) },
        { label: `Available (${unit})`, value: inUnit(f.balance - f.reserved, unit) },
        { label: `Debt (${unit})`, value: inUnit(f.debt, unit) },
      ]),
    )}
    <div id="balance-chart" role="img" aria-label="Balance over the last ${chart.length} journal entries"></div>
    <script type="application/json" id="balance-data">
      ${jsonData(series)}
    </script>
    ${usage}
    <h2>Audit</h2>
    <p>
      Hash chain on this page: <span class="${check.ok ? "ok" : "bad"}">${check.ok ? "intact" : "BROKEN"}</span> —
      ${check.text}.
    </p>
    <p id="audit-verdict">
      Last full audit:
      ${
        audit === undefined
          ? html`<span class="muted">none run from the console yet</span>`
          : html`<span class="${audit.details.ok === true ? "ok" : "bad"}"
                >${audit.details.ok === true ? "ok" : "problems found"}</span
              >
              — ${String(audit.details.entries ?? "?")} entries, ${when(audit.createdAt)} by
              ${String(audit.details.actor ?? "?")}${
                Array.isArray(audit.details.problems) && audit.details.problems.length > 0
                  ? html`<ul>
                      ${(audit.details.problems as unknown[]).map((p) => html`<li>${String(p)}</li>`)}
                    </ul>`
                  : raw("")
              }`
      }
    </p>
    ${actionForm(ctx, "audit", "Run a full audit", { user: userId })}
    ${
      ctx.role === "admin"
        ? html`<h2>Grant credits</h2>
            ${actionForm(
              ctx,
              "grant",
              "Grant…",
              { user: userId },
              html`<label>Credits<input name="amount" type="number" min="1" step="1" required /></label
                ><label>Expires in days (empty: never)<input name="days" type="number" min="1" step="1" /></label
                ><label>Reason<input name="description" maxlength="500" /></label>`,
              "box",
            )}`
        : raw("")
    }
    <h2 id="state">What the customer may do now</h2>
    ${stateSection(ctx, await ctx.manager.credits.getCustomerState(userId))}
    <h2>Grants, in burn-down order</h2>
    ${grantTable(ctx, userId, open)}
    <h2 id="limits">Spend limits</h2>
    ${limitTable(ctx, limits)}
    <h2 id="spenders">Spend per spender, this month (UTC)</h2>
    ${spenderTable(spends.report, limits)}${partialNote(ctx, userId, spends.partialSince)}
    <h2>Active holds</h2>
    ${table({
      columns: [
        { label: "Hold", short: true },
        { label: "Credits", num: true },
        { label: "Expires (TTL)", short: true },
        "Reason",
        "Metadata",
        { label: "Action", short: true, quiet: true },
      ],
      rows: holds.map((h) => [
        html`<a href="${ctx.base}/accounts/${enc(userId)}/holds/${enc(h.id)}" class="mono">${shortId(h.id)}</a>`,
        inUnit(h.amount, h.unit),
        html`${when(h.expiresAt)} (${relative(h.expiresAt, ctx.now)})`,
        h.reason ?? "",
        metaList(h.metadata),
        actionForm(ctx, "release", "Release", { user: userId, hold: h.id }),
      ]),
      none: "No active hold.",
    })}
    <h2 id="journal">Journal</h2>
    <form class="box" method="get" action="${ctx.base}/accounts/${enc(userId)}#journal">
      <fieldset class="types">
        <legend>Entry types (none checked: all)</legend>
        ${EntryType.options.map(
          (t) =>
            html`<label
              ><input type="checkbox" name="type" value="${t}" ${types?.includes(t) ? raw(" checked") : ""} />
              ${t}</label
            >`,
        )}
      </fieldset>
      ${dayField("From (UTC)", "from", sp.get("from") ?? "")}${dayField("To (UTC, included)", "to", sp.get("to") ?? "")}<button
        type="submit"
      >
        Filter
      </button>
    </form>
    ${filterErrors.map((e) => html`<p class="error" role="alert">${e}</p>`)}
    ${table({
      id: "journal-table",
      columns: [
        { label: "#", num: true },
        { label: "When", short: true },
        { label: "Type", short: true },
        { label: "Credits", num: true },
        { label: "Balance after", num: true },
        "Description",
        { label: "Caused by", wide: true },
        "Metadata",
      ],
      rows: entries.map((e) => ({
        id: `entry-${e.id}`,
        cells: [
          e.seq,
          // When its money moved (docs/concepts.md, "Two times on every entry"), and when it was
          // recorded where that is later (an expiry the job settled after midnight, late usage).
          e.occurredAt == null
            ? when(e.createdAt)
            : html`${when(e.occurredAt)}
                <div class="muted">recorded ${when(e.createdAt)}</div>`,
          // A charge's "Give back…" under its type: the journal has no room for a column of its own at 800 px.
          admin && isCharge(e)
            ? html`${e.type}
                <div class="row-action">
                  ${actionForm(ctx, "reverse", "Give back…", { user: userId, entry: e.id })}
                </div>`
            : e.type,
          inUnit(e.amount, e.unit),
          inUnit(e.balanceAfter, e.unit),
          e.description ?? "",
          causeOf(ctx, e, openIds, rev),
          metaList(e.metadata),
        ],
      })),
      empty: "No entry.",
    })}
    ${pager(ctx, `/accounts/${enc(userId)}`, {}, next)} ${autoTopUpSection(ctx, autoTopUpOf(account), topUps)}
    <h2>Payments</h2>
    ${paymentTable(ctx, payments)}
    <p><a href="${ctx.base}/payments${query(u)}">All payments of this account</a></p>
    <h2>Subscriptions</h2>
    ${subscriptionTable(ctx, subs)}
    <h2>Promo claims</h2>
    ${table({
      columns: ["Code", { label: "Credits", num: true }, { label: "When", short: true }],
      rows: claims.map((c) => [c.code, amount(c.credits), when(c.createdAt)]),
      none: "None.",
    })}
    <h2>Notifications</h2>
    ${notificationTable(ctx, notifications)}`;
  return { title: `Account ${userId}`, body };
}

/** `month`, `day`, `3 weeks`: a limit's window in words. */
/** Why a feature is not allowed, in words (docs/customer-state.md). */
const REASONS: Record<FeatureState["reason"], string> = {
  ok: "allowed",
  feature_off: "off",
  insufficient_credits: "not enough credits",
  limit: "spend limit reached",
};

/**
 * The customer's state (docs/customer-state.md): each feature's decision, as `check()` answers it,
 * with what its grants were given, what was used and is left, and when it resets; the
 * subscription and the alerts, all from one read of the account.
 */
function stateSection(ctx: Ctx, state: CustomerState): Html {
  const sub = state.subscription;
  return html`${facts([
    [
      "Subscription",
      sub === null
        ? html`<span class="muted">none</span>`
        : html`${sub.planName ?? sub.planId}, ${sub.status}, period ${when(sub.currentPeriodStart)} –
          ${when(sub.currentPeriodEnd)}${sub.renews ? "" : html` <span class="muted">(does not renew)</span>`}`,
    ],
    [
      "Alerts",
      state.alerts.length === 0
        ? html`<span class="muted">none</span>`
        : html`${state.alerts.map(
            (a, i) =>
              html`${i === 0 ? "" : ", "}${a.threshold.id}
              ${a.state === "in_alarm" ? html`<strong>in alarm</strong>` : html`<span class="muted">ok</span>`}`,
          )}`,
    ],
    ["Read at", html`journal entry #${amount(state.seq)}`],
  ])}
  ${table({
    id: "feature-table",
    columns: [
      "Feature",
      { label: "Now", short: true },
      { label: "Granted", num: true },
      { label: "Used", num: true },
      { label: "Left", num: true },
      { label: "Resets", short: true },
      { label: "Grants", num: true },
    ],
    rows: state.features.map((f) => [
      // A feature in another unit names it: its figures are in that unit (docs/units.md).
      f.unit === undefined ? f.feature : html`${f.feature} <span class="muted">(${f.unit})</span>`,
      f.allowed
        ? html`<span class="ok">allowed</span>`
        : html`<span class="bad">${REASONS[f.reason]}</span>${
              f.reason === "insufficient_credits" ? html` <span class="muted">(needs ${amount(f.required)})</span>` : ""
            }`,
      amount(f.granted),
      amount(f.used),
      f.left < 0 ? html`<span class="bad">${amount(f.left)}</span>` : amount(f.left),
      f.resetsAt === null
        ? html`<span class="muted">never</span>`
        : html`${when(f.resetsAt)} (${relative(f.resetsAt, ctx.now)})`,
      amount(f.grants.length),
    ]),
    none: "No feature: no rule, plan allowance, scoped grant or limit names one.",
  })}`;
}

function periodText(l: { period: LimitPeriod | null; resetsWith: string | null }): string {
  if (l.period === null) return "subscription period";
  if (typeof l.period === "string") return l.period;
  return l.period.every === 1 ? l.period.unit : `${l.period.every} ${l.period.unit}s`;
}

/** The account's spend limits, each with what its window counted and when it resets (docs/teams-and-limits.md). */
function limitTable(ctx: Ctx, limits: readonly SpendLimitStatus[]): Html {
  return table({
    id: "limit-table",
    columns: [
      "Spender",
      "Feature",
      { label: "Window", short: true },
      { label: "Spent / limit", num: true },
      { label: "Left", num: true },
      { label: "Resets", short: true },
    ],
    rows: limits.map((l) => [
      l.spender ?? html`<span class="muted phrase">every spender</span>`,
      l.feature ?? html`<span class="muted phrase">every feature</span>`,
      periodText(l),
      html`<meter min="0" max="${Math.max(l.amount, 1)}" value="${Math.min(l.used, l.amount)}">${amount(l.used)}</meter>
        <span class="pair">${amount(l.used)} / ${amount(l.amount)}</span>`,
      l.remaining === 0 ? html`<span class="bad">0</span>` : amount(l.remaining),
      html`${when(l.resetsAt)} (${relative(l.resetsAt, ctx.now)})`,
    ]),
    none: "No spend limit.",
  });
}

/**
 * What each spender (a member, an API key) spent this month — `getUsage` by spender, kind spend:
 * deductions, captured holds and lease windows, with their requests — with its own limits beside
 * it. Spends that named no spender are one row.
 */
function spenderTable(usage: UsageReport, limits: readonly SpendLimitStatus[]): Html {
  const rows = new Map<string | null, { credits: number; count: number }>();
  for (const r of usage.rows) {
    if (r.unit !== undefined) continue; // the default unit's, as the limits beside it (docs/units.md)
    const key = r.spender ?? null;
    const row = rows.get(key) ?? { credits: 0, count: 0 };
    row.credits += r.credits;
    row.count += r.requests;
    rows.set(key, row);
  }
  for (const l of limits) if (l.spender !== null && !rows.has(l.spender)) rows.set(l.spender, { credits: 0, count: 0 });
  const sorted = [...rows.entries()].sort((a, b) => b[1].credits - a[1].credits);
  return html`${table({
    id: "spender-table",
    columns: ["Spender", { label: "Credits spent", num: true }, { label: "Spends", num: true }, "Own limits"],
    rows: sorted.map(([spender, r]) => [
      spender ?? html`<span class="muted phrase">no spender</span>`,
      amount(r.credits),
      amount(r.count),
      spender === null
        ? ""
        : limits
            .filter((l) => l.spender === spender)
            .map(
              (l) =>
                html`<div>
                  <span class="pair">${amount(l.used)} / ${amount(l.amount)}</span> per
                  ${periodText(l)}${l.feature === null ? "" : ` on ${l.feature}`}
                </div>`,
            ),
    ]),
    none: "No spend this month.",
  })}${usage.truncated ? html`<p class="muted">The ${amount(usage.rows.length)} spenders with the most spend.</p>` : ""}`;
}

function grantTable(ctx: Ctx, userId: string, grants: readonly Grant[]): Html {
  return table({
    columns: [
      { label: "#", num: true },
      { label: "Grant", short: true },
      { label: "Source", short: true },
      { label: "Remaining / granted", num: true },
      { label: "Expires", short: true },
      { label: "Priority", num: true },
      { label: "Cost basis / credit", short: true },
      "Pays for",
      "Description",
      { label: "Action", short: true, quiet: true },
    ],
    rows: grants.map((g, i) => ({
      id: `grant-${g.id}`,
      cells: [
        i + 1,
        { cell: shortId(g.id), cls: "mono" },
        html`${g.source}${g.sourceRef === null ? "" : html` <code>${g.sourceRef}</code>`}`,
        html`<meter min="0" max="${g.amount}" value="${g.remaining}" aria-label="Remaining of grant ${i + 1}">
            ${amount(g.remaining)}
          </meter>
          <span class="pair">${amount(g.remaining)} / ${inUnit(g.amount, g.unit)}</span>`,
        g.expiresAt === null ? "never" : html`${when(g.expiresAt)} (${relative(g.expiresAt, ctx.now)})`,
        g.priority,
        basisText(g.costBasis),
        scopeText(g),
        g.description ?? "",
        actionForm(ctx, "void", "Void", { user: userId, grant: g.id }),
      ],
    })),
    none: "No open grant.",
  });
}

/** The account's auto top-up attempts: its payments marked `autoTopUp`, among the newest 200. */
async function topUpAttempts(ctx: Ctx, userId: string): Promise<Payment[]> {
  const rows = await billingStore(ctx.manager.db).listPayments(userId, { limit: 200 });
  return rows.filter((p) => (p.metadata as { autoTopUp?: unknown } | null)?.autoTopUp === true).slice(0, 20);
}

/** Where an attempt stands, in the words of docs/promos-and-payments.md ("Auto top-up"). */
function attemptState(p: Payment): string {
  if (p.status === "failed") return "failed";
  if (p.status === "created") return p.providerRef === null ? "requested" : "charged, waiting for the provider";
  if (p.status === "paid" || p.status === "partially_refunded" || p.status === "refunded")
    return p.status === "paid" ? "charged and credited" : `credited, then ${p.status.replace("_", " ")}`;
  return p.status;
}

/**
 * The account's auto top-up (docs/console.md, "Pages"): the rule, its state (enabled, the attempt
 * in flight, failures, the provider's last code) and the attempts with amounts and provider ids.
 */
function autoTopUpSection(ctx: Ctx, s: AutoTopUpState | null, attempts: readonly Payment[]): Html {
  if (s === null) return raw("");
  const r = s.rule;
  const charge =
    r.amount !== null
      ? `${money(r.amount, r.currency)} each time`
      : `up to a balance of ${amount(r.toBalance ?? 0)} credits`;
  const caps = [
    r.minAmount === null ? null : `at least ${money(r.minAmount, r.currency)}`,
    r.maxAmount === null ? null : `at most ${money(r.maxAmount, r.currency)}`,
    r.maxPerMonth === null ? null : `${r.maxPerMonth} a month (${s.monthCount} in ${s.month ?? "this month"})`,
    `disabled after ${r.maxFailures} declines in a row`,
  ].filter((c): c is string => c !== null);
  return html`<h2 id="auto-top-up">Auto top-up</h2>
    ${facts(
      [
        ["State", s.enabled ? "enabled" : `disabled (${s.disabledReason ?? "by hand"})`],
        ["When", html`a spend takes available credits below ${amount(r.below)}`],
        ["Charge", charge],
        [
          "Card",
          html`<code>${r.provider}</code> customer <code>${r.customer}</code>, method <code>${r.paymentMethod}</code>`,
        ],
        ["Limits", caps.join("; ")],
        [
          "In flight",
          s.pending === null
            ? "none"
            : html`<span class="mono">${shortId(s.pending.id)}</span>, asked for at
                ${when(new Date(s.pending.requestedAt))} (available ${amount(s.pending.available)})`,
        ],
        [
          "Declines in a row",
          html`${s.failures}${s.lastError === null ? "" : html` (last: <code>${s.lastError}</code>)`}`,
        ],
      ],
      "auto-top-up-rule",
    )}
    ${table({
      id: "auto-top-up-attempts",
      caption: "Auto top-up attempts",
      columns: [
        { label: "Attempt", short: true },
        { label: "State", short: true },
        { label: "Amount", num: true },
        { label: "Credits", num: true },
        "Provider ids",
        { label: "Asked for", short: true },
        { label: "Last change", short: true },
      ],
      rows: attempts.map((p) => [
        { cell: shortId(p.id), cls: "mono" },
        attemptState(p),
        money(p.amount, p.currency),
        amount(p.credits),
        html`${p.providerPaymentId ?? p.providerRef ?? "—"}`,
        when(p.createdAt),
        when(p.updatedAt),
      ]),
      none: "No attempt yet.",
    })}`;
}

export async function holdPage(ctx: Ctx, userId: string, holdId: string): Promise<PageResult> {
  const h = await ctx.manager.db.getReservation(holdId, userId);
  if (h === null || h.userId !== userId)
    return { status: 404, title: "No such hold", body: html`<h1>No hold ${holdId}</h1>` };
  const body = html`<h1>Hold <span class="mono">${h.id}</span></h1>
    <p>Account ${accountLink(ctx, userId)}</p>
    ${facts([
      ["Status", h.status],
      ["Credits", inUnit(h.amount, h.unit)],
      ["Committed", h.committedAmount === null || h.committedAmount === undefined ? "—" : amount(h.committedAmount)],
      ["Created", when(h.createdAt)],
      ["Expires", html`${when(h.expiresAt)} (${relative(h.expiresAt, ctx.now)})`],
      ["Settled", when(h.settledAt)],
      ["Reason", h.reason ?? ""],
    ])}
    <h2>Drawn from</h2>
    <ul>
      ${h.allocations.map((a) => html`<li><span class="mono">${a.grantId}</span>: ${amount(a.amount)}</li>`)}
    </ul>
    <h2>Metadata</h2>
    ${metaList(h.metadata)}
    ${h.status === "active" ? actionForm(ctx, "release", "Release this hold", { user: userId, hold: h.id }) : raw("")}`;
  return { title: `Hold ${h.id}`, body };
}
