import type { CostBasis } from "../models/revenue.js";
import { html, type Html } from "./html.js";

/**
 * A grant's cost basis as the console shows it (docs/revenue.md, "The cost basis"): what one
 * credit was sold for in the smallest unit of its currency (`1/3 USD` per credit: a third of a
 * cent), exactly as stored; "free" for a grant without one (no revenue).
 */
export function basisText(basis: CostBasis | null | undefined): Html {
  if (basis === null || basis === undefined) return html`<span class="muted">free</span>`;
  const title = `per credit, in the smallest unit of ${basis.currency}`;
  return html`<span class="basis" title="${title}"><code>${basis.perCredit}</code> ${basis.currency}</span>`;
}
