/** The console's pages over an account with another unit (docs/units.md): no figure adds two units. */
import { describe, expect, it } from "vitest";
import { createConsoleHandler } from "../src/console/index.js";
import { createCreditManager } from "../src/index.js";

describe("the console with units", () => {
  it("the usage page totals the default unit and names the other's rows; the account page names a feature's unit", async () => {
    const m = await createCreditManager({ features: { render: { minAvailable: 1, unit: "images" } } });
    try {
      await m.credits.addCredits("acme", 100);
      await m.credits.addCredits("acme", 50, { unit: "images" });
      await m.credits.deductCredits("acme", 7);
      await m.credits.deductCredits("acme", 30, { feature: "render" });
      const h = createConsoleHandler(m, { authorize: () => ({ role: "admin", actor: "ops@example.com" }) });
      const usage = await (await h(new Request("http://x/console/usage?account=acme&by=feature"))).text();
      expect(usage).toContain(`id="usage-total">7</div>`);
      expect(usage).toContain("30 images");
      const account = await (await h(new Request("http://x/console/accounts/acme"))).text();
      expect(account).toMatch(/render <span class="muted">\(images\)<\/span>/);
      // The other unit's figures on their own cards; its journal rows and grant in it, never added to the default unit's.
      expect(account).toContain("Available (images)");
      expect(account).toMatch(/<td[^>]*>30 images<\/td>\s*<td[^>]*>20 images<\/td>/);
      expect(account).toContain("/ 50 images");
      expect(account).toContain(`id="balance">93</div>`);
    } finally {
      await m.close();
    }
  });
});
