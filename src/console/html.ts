import { visible } from "../util/visible.js";

/**
 * HTML with every interpolated value escaped: `html\`<td>${userId}</td>\`` can never inject markup,
 * whatever the value holds. Only another `html` result (or `raw`, for the module's own constants)
 * is inserted as it is. docs/console.md, "Security".
 */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
  "`": "&#96;",
};

/** Text as HTML text or an attribute value (double- or single-quoted). */
export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"'`]/g, (c) => ESCAPES[c] as string);
}

export type Part = Html | string | number | boolean | null | undefined | readonly Part[];

/**
 * A value in text, or in an attribute when `attribute` (inside a tag: a form's hidden field must
 * send the exact value back). Text shows control and bidi characters visibly.
 */
function render(part: Part, attribute: boolean): string {
  if (part === null || part === undefined || part === false) return "";
  if (part instanceof Html) return part.text;
  if (Array.isArray(part)) return (part as readonly Part[]).map((p) => render(p, attribute)).join("");
  return escapeHtml(attribute || typeof part !== "string" ? part : visible(part));
}

/** Whether the end of `out` is inside a tag (an attribute's place); values never hold `<` or `>` unescaped. */
const insideTag = (out: string) => out.lastIndexOf("<") > out.lastIndexOf(">");

export function html(strings: TemplateStringsArray, ...values: Part[]): Html {
  let out = strings[0] as string;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as Part;
    out += (typeof v === "string" ? render(v, insideTag(out)) : render(v, false)) + (strings[i + 1] as string);
  }
  return new Html(out);
}

const GROUPED = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 });

/** An amount with thousands separators: 1,234,567 (docs/console.md). */
export function amount(value: number): string {
  return GROUPED.format(value);
}

/** An amount in its unit: the unit named when it is not the default one (docs/units.md). */
export function inUnit(value: number, unit: string | null | undefined): string {
  return unit == null ? amount(value) : `${amount(value)} ${unit}`;
}

const CURRENCIES = new Map<string, Intl.NumberFormat | null>();

/** The formatter of a currency (en-US, as every figure of the console); null: not a currency code. */
function currencyFormat(currency: string): Intl.NumberFormat | null {
  const code = currency.toUpperCase();
  let f = CURRENCIES.get(code);
  if (f === undefined) {
    try {
      f = /^[A-Z]{3}$/.test(code) ? new Intl.NumberFormat("en-US", { style: "currency", currency: code }) : null;
    } catch {
      f = null;
    }
    if (CURRENCIES.size < 1000) CURRENCIES.set(code, f);
  }
  return f;
}

/**
 * How many decimals a currency's smallest unit is (2 for USD and EUR: cents; 0 for JPY; 3 for
 * BHD), as ISO 4217 and `Intl.NumberFormat` say; null when `currency` is not a currency code.
 */
export function minorDigits(currency: string): number | null {
  return currencyFormat(currency)?.resolvedOptions().maximumFractionDigits ?? null;
}

/**
 * An amount stored in the smallest unit of its currency, written in that currency: 20 USD → "$0.20",
 * 2,500 EUR → "€25.00", 20 JPY → "¥20" (docs/console.md, "Money and dates"). A code that is no currency is
 * shown as stored, saying so: "20 XY (smallest unit)".
 */
export function money(minor: number, currency: string): string {
  const f = currencyFormat(currency);
  if (f === null) return `${amount(minor)} ${currency} (smallest unit)`;
  return f.format(minor / 10 ** (f.resolvedOptions().maximumFractionDigits ?? 2));
}

/** A constant of this module's own (never user data). */
export function raw(text: string): Html {
  return new Html(text);
}

/**
 * JSON for a `<script type="application/json">` data block: `<`, `>`, `&` and the line separators
 * as \u escapes, so no value can close the element.
 */
export function jsonData(value: unknown): Html {
  return new Html(
    JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`),
  );
}

/** A path segment or query value for a link. */
export const enc = encodeURIComponent;

/** A query string from defined values ("" when none). */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s === "" ? "" : `?${s}`;
}

/** "in 3 d 4 h", "5 min ago": a duration from now, for expiries and TTLs. */
export function relative(to: Date, now: Date): string {
  const ms = to.getTime() - now.getTime();
  const abs = Math.abs(ms);
  const units: [number, string][] = [
    [86_400_000, "d"],
    [3_600_000, "h"],
    [60_000, "min"],
    [1000, "s"],
  ];
  const parts: string[] = [];
  let rest = abs;
  for (const [size, name] of units) {
    if (rest >= size && parts.length < 2) {
      parts.push(`${Math.floor(rest / size)} ${name}`);
      rest %= size;
    }
  }
  const text = parts.length === 0 ? "0 s" : parts.join(" ");
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** An ISO time without milliseconds, in UTC. */
export function isoTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/**
 * An ISO time without milliseconds, in UTC, as a `<time>`: on one line where it fits, else the
 * day over the time (`2026-11-25` / `T09:30:00Z`), never broken inside either.
 */
export function when(d: Date | null | undefined): Html {
  if (d === null || d === undefined) return raw("—");
  const iso = isoTime(d);
  return html`<time datetime="${iso}"><span>${iso.slice(0, 10)}</span><wbr /><span>${iso.slice(10)}</span></time>`;
}
