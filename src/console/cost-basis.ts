import type { CostBasis } from "../core/models/cost-basis.js";
import { html, minorDigits, type Html } from "./html.js";

/**
 * A grant's cost basis as the console shows it (docs/revenue.md, "The cost basis"): what one
 * credit was sold for, in its currency — `1/100` USD (a hundredth of a cent) is `$0.0001` per
 * credit — to 4 significant digits, `≈` when that is not exact (`1/3` USD: `≈$0.003333`); the
 * stored value on hover. "free" for a grant without one (no revenue).
 */
export function basisText(basis: CostBasis | null | undefined): Html {
  if (basis === null || basis === undefined) return html`<span class="muted">free</span>`;
  const title = `${basis.perCredit} of the smallest unit of ${basis.currency} per credit, as stored`;
  const digits = minorDigits(basis.currency);
  if (digits === null)
    return html`<span class="basis" title="${title}"><code>${basis.perCredit}</code> ${basis.currency}</span>`;
  const [n, d = "1"] = basis.perCredit.split("/");
  const value = Number(n) / (Number(d) * 10 ** digits);
  // Cents (the currency's own decimals) at least, 4 significant digits below them.
  const places = value === 0 ? digits : Math.min(20, Math.max(digits, 3 - Math.floor(Math.log10(value))));
  const exact = Number(value.toFixed(places)) === value;
  const text = new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: basis.currency,
    minimumFractionDigits: digits,
    maximumFractionDigits: places,
  }).format(value);
  return html`<span class="basis money" title="${title}">${exact ? "" : "≈"}${text}</span>`;
}
