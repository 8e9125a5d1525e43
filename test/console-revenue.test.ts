/** The console's revenue views without a browser (docs/console.md, "Revenue"; docs/revenue.md). */
import { describe, expect, it } from "vitest";
import { createConsoleHandler } from "../src/console/index.js";
import { createCreditManager } from "../src/index.js";

describe("the cost basis in the console (docs/revenue.md, 'Where finance reads it')", () => {
  it("shows each grant's basis on the account page, and the sale's on its add entry in the journal", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("acme", 3_000, {
      description: "Invoice INV-117",
      costBasis: { perCredit: "1999/3000", currency: "usd" },
    });
    await m.credits.addCredits("acme", 500, { source: "promo", description: "welcome" });
    const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "finance@example.com" }) });
    const body = await (await h(new Request("http://x/console/accounts/acme"))).text();
    const grants = body.slice(body.indexOf("Grants, in burn-down order"), body.indexOf('id="limits"'));
    expect(grants).toContain("Cost basis / credit");
    expect(grants).toMatch(/<code>1999\/3000<\/code> USD/);
    // The promo grant is free: no revenue.
    expect(grants).toMatch(/<span class="muted">free<\/span>/);
    const journal = body.slice(body.indexOf('id="journal-table"'));
    expect(journal).toMatch(/sold at <span class="basis"[^>]*><code>1999\/3000<\/code> USD<\/span>\s*per credit/);
    expect(journal.match(/sold at/g)).toHaveLength(1);
  });
});
