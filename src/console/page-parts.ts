import { randomUUID } from "node:crypto";
import { type Grant, type LedgerEntry } from "../core/models/index.js";
import { ConfigurationError, ValidationError } from "../core/errors.js";
import { hiddenFields, type Ctx, type PageResult } from "./context.js";
import { enc, html, query, raw, when, type Html, type Part } from "./html.js";
import { shortId, table } from "./table.js";

// What the console's pages share (docs/console.md): paging, links to an account, the action form,
// figures and definition lists, metadata and ledger tables, a report's refused query.

export const PAGE = 50;

/** The ledger message the console's audit action records its verdict under. */
export const AUDIT_MESSAGE = "console: audit";

/**
 * Terms and their values as a definition list (`dl.meta`), a term a line; `[term, value, id]`
 * gives the value an element id, `id` the list.
 */
export function facts(pairs: readonly (readonly [Part, Part, string?])[], id?: string): Html {
  const list = pairs.map(
    ([term, value, ddId]) =>
      html`<dt>${term}</dt>
        <dd${ddId === undefined ? "" : html` id="${ddId}"`}>${value}</dd>`,
  );
  return id === undefined ? html`<dl class="meta">${list}</dl>` : html`<dl class="meta" id="${id}">${list}</dl>`;
}

/** Figures side by side (`.cards`), each a label over its value; `id` names the value's element. */
export function cards(figures: readonly { label: Part; value: Part; id?: string }[]): Html {
  return html`<div class="cards">
    ${figures.map(
      (f) =>
        html`<div class="card">
          <div class="k">${f.label}</div>
          ${f.id === undefined ? html`<div class="v">${f.value}</div>` : html`<div class="v" id="${f.id}">${f.value}</div>`}
        </div>`,
    )}
  </div>`;
}

/**
 * `key=value` pairs of a metadata object, every value escaped (JSON for nested ones): a list of
 * a pair a line, or `inline` — the pairs one after the other, wrapped where they must.
 */
export function metaList(meta: Record<string, unknown> | null | undefined, inline = false): Html {
  if (meta === null || meta === undefined) return raw("");
  const keys = Object.keys(meta);
  if (keys.length === 0) return raw("");
  const value = (k: string) => html`<code>${typeof meta[k] === "string" ? meta[k] : JSON.stringify(meta[k])}</code>`;
  if (inline)
    return html`<ul class="pairs">
      ${keys.map(
        (k) =>
          html`<li>
            <span class="muted">${k}</span>
            ${value(k)}
          </li>`,
      )}
    </ul>`;
  return facts(keys.map((k) => [k, value(k)]));
}

/** A hidden-field form posting an action (first to its confirmation page). */
export function actionForm(
  ctx: Ctx,
  action: string,
  label: string,
  fields: Record<string, string>,
  extra: Html = raw(""),
  cls = "inline",
): Html {
  if (ctx.role !== "admin") return raw("");
  return html`<form class="${cls}" method="post" action="${ctx.base}/actions/${action}">
    ${hiddenFields(ctx, { _key: randomUUID(), ...fields })}${extra}<button
      type="submit"
      class="${action === "audit" || action === "grant" ? "" : "secondary"}"
    >
      ${label}
    </button>
  </form>`;
}

export function accountLink(ctx: Ctx, userId: string | null): Html {
  return userId === null
    ? raw("—")
    : html`<a href="${ctx.base}/accounts/${enc(userId)}">${shortId(userId, "user")}</a>`;
}

export function pager(ctx: Ctx, path: string, params: Record<string, string | undefined>, next: string | null): Html {
  const first = html`<a href="${ctx.base}${path}${query({ ...params })}">First page</a>`;
  return html`<nav class="pager" aria-label="Pages">
    ${first}${
      next === null
        ? html`<span class="muted">No more</span>`
        : html`<a rel="next" href="${ctx.base}${path}${next}">Next page</a>`
    }
  </nav>`;
}

/** System and error events of the ledger (not the accounts' journals), their details inline. */
export function ledgerTable(ctx: Ctx, rows: readonly LedgerEntry[], none = "Nothing recorded yet."): Html {
  return table({
    columns: [
      { label: "When", short: true },
      { label: "Kind", short: true },
      "User",
      { label: "What", wide: true },
      "Details",
    ],
    rows: rows.map((e) => [
      when(e.createdAt),
      e.eventType,
      accountLink(ctx, e.userId),
      e.message,
      metaList(e.details, true),
    ]),
    none,
  });
}

export function dateParam(value: string | null): Date | undefined {
  if (value === null || value === "") return undefined;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? undefined : d;
}

/** `YYYY-MM-DD` → that day's UTC midnight; undefined when empty; null when it is not such a day. */
export function dayParam(value: string | null): Date | null | undefined {
  const v = (value ?? "").trim();
  if (v === "") return undefined;
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(v);
  if (m === null) return null;
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  return new Date(t).toISOString().slice(0, 10) === v ? new Date(t) : null;
}

/**
 * A day (`YYYY-MM-DD`) or month (`YYYY-MM`) field of a filter form, in UTC like every date of the
 * console (docs/console.md): a text field, not the browser's date picker, which writes the
 * browser's locale (`11/25/2026`). The browser refuses to send another shape (`pattern`).
 */
function isoField(label: string, name: string, value: string, shape: "YYYY-MM-DD" | "YYYY-MM", what: string): Html {
  const pattern = shape.replace(/[YMD]+/g, (run) => `\\d{${run.length}}`);
  return html`<label
    >${label}<input
      name="${name}"
      value="${value}"
      placeholder="${shape}"
      pattern="${pattern}"
      title="${what} as ${shape} (UTC)"
      inputmode="numeric"
      autocomplete="off"
      size="${shape.length}"
      maxlength="${shape.length}"
  /></label>`;
}

/** A day field of a filter form, `YYYY-MM-DD` (UTC). */
export const dayField = (label: string, name: string, value: string): Html =>
  isoField(label, name, value, "YYYY-MM-DD", "A day");

/** A month field of a filter form, `YYYY-MM` (UTC). */
export const monthField = (label: string, name: string, value: string): Html =>
  isoField(label, name, value, "YYYY-MM", "A month");

/** A grant's scope in words (docs/teams-and-limits.md, "Scoped credits"): what it may pay for. */
export function scopeText(g: Pick<Grant, "scope">): Html {
  const scope = g.scope ?? null;
  if (scope === null) return html`<span class="muted phrase">any spend</span>`;
  const parts: Html[] = [];
  if (scope.features !== undefined)
    parts.push(html`features ${scope.features.map((f, i) => html`${i > 0 ? ", " : ""}<code>${f}</code>`)}`);
  if (scope.spenders !== undefined)
    parts.push(html`spenders ${scope.spenders.map((s, i) => html`${i > 0 ? ", " : ""}<code>${s}</code>`)}`);
  return html`${parts.map((p, i) => html`${i > 0 ? raw("<br>") : ""}${p}`)}`;
}

/**
 * A report page (usage, revenue) whose query the library refused, under its form: across every
 * account on a store that cannot sum across them (a `ConfigurationError`), `askAccount` says to
 * enter one; a `ValidationError`, its message (400). Anything else is thrown on.
 */
export function refusedReport(
  error: unknown,
  title: string,
  form: Html,
  everyAccount: boolean,
  askAccount: string,
): PageResult {
  if (error instanceof ConfigurationError && everyAccount)
    return {
      title,
      body: html`<h1>${title}</h1>
        ${form}
        <p class="muted">${askAccount}</p>`,
    };
  if (!(error instanceof ValidationError)) throw error;
  return {
    status: 400,
    title,
    body: html`<h1>${title}</h1>
      ${form}
      <p class="error" role="alert">${error.message}</p>`,
  };
}

/** A CSV download whose query the library refused (a `ValidationError`): its message as text, 400. */
export function refusedCsv(error: unknown): Response {
  if (!(error instanceof ValidationError)) throw error;
  return new Response(error.message, { status: 400, headers: { "content-type": "text/plain; charset=utf-8" } });
}
