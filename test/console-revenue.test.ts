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
    // 1999/3000 of a cent per credit, in dollars (≈ $0.006663), the stored value on hover.
    expect(grants).toMatch(
      /<span class="basis money" title="1999\/3000 of the smallest unit of USD per credit, as stored">≈\$0\.006663<\/span>/,
    );
    // The promo grant is free: no revenue.
    expect(grants).toMatch(/<span class="muted">free<\/span>/);
    const journal = body.slice(body.indexOf('id="journal-table"'));
    expect(journal).toMatch(/sold at <span class="basis money"[^>]*>≈\$0\.006663<\/span>\s*per credit/);
    expect(journal.match(/sold at/g)).toHaveLength(1);
  });
});

describe("the console's journal: two times (docs/console.md; docs/concepts.md, 'Two times on every entry')", () => {
  it("dates an expiry settled late at its due instant, with when it was recorded under it", async () => {
    const DAY = 86_400_000;
    const clock = { t: Date.now() - 2 * DAY };
    const m = await createCreditManager({ clock: () => new Date(clock.t) });
    const due = new Date(clock.t + DAY);
    await m.credits.addCredits("acme", 100, { expiresAt: due });
    clock.t += 2 * DAY;
    await m.credits.addCredits("acme", 5);
    const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "ops@example.com" }) });
    const body = await (await h(new Request("http://x/console/accounts/acme"))).text();
    const journal = body.slice(body.indexOf('id="journal-table"'));
    // The expiry's row, from its start to its type cell.
    const expiry = journal.slice(journal.lastIndexOf("<tr", journal.indexOf(">expire<")), journal.indexOf(">expire<"));
    const iso = (d: Date) => d.toISOString().slice(0, 10);
    expect(expiry).toContain(`datetime="${due.toISOString().replace(/\.\d{3}Z$/, "Z")}"`);
    expect(expiry).toContain("recorded");
    expect(expiry).toMatch(new RegExp(`recorded <time datetime="${iso(new Date(clock.t))}`));
    await m.close();
  });
});

describe("the console's revenue page (docs/console.md, 'Revenue')", () => {
  it("is in the navigation; shows the library's figures per currency, month by month, and the CSV", async () => {
    const clock = { t: Date.now() };
    const m = await createCreditManager({ clock: () => new Date(clock.t), overdraftLimit: "unlimited" });
    const now = new Date();
    const lastMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 3);
    clock.t = lastMonth;
    await m.credits.addCredits("acme", 5_997, { costBasis: { perCredit: "1/3", currency: "USD" } });
    clock.t = lastMonth + 86_400_000;
    await m.credits.deductCredits("acme", 600);
    await m.credits.deductCreditsAfterService("initech", 40);
    clock.t = Date.now();
    const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "finance@example.com" }) });
    const r = await h(new Request("http://x/console/revenue"));
    expect(r.status).toBe(200);
    const body = await r.text();
    expect(body).toContain('<a href="/console/revenue">Revenue</a>');
    // Money in its currency: 1,799 cents are $17.99 (docs/console.md, "Money and dates").
    expect(body).toMatch(/<div class="k">Deferred now<\/div>\s*<div class="v">\$17\.99<\/div>/);
    expect(body).toMatch(/<div class="k">Recognized<\/div>\s*<div class="v">\$2\.00<\/div>/);
    expect(body).toMatch(/<td class="num">\$19\.99<\/td>/); // paid, in the table
    expect(body).toContain('"money":{"currency":"USD","digits":2}'); // the charts' axes and legends
    expect(body).toContain('data-usage-chart="deferred-USD-data"');
    expect(body).toContain('data-usage-chart="recognized-USD-data"');
    expect(body).toMatch(/Usage on credit \(debt\) in this range: <strong>40<\/strong> credits/);
    const month = new Date(lastMonth).toISOString().slice(0, 7);
    expect(body).toMatch(new RegExp(`<td[^>]*>${month}</td>\\s*<td[^>]*>USD</td>`));
    // The CSV of the range, by account.
    const csv = await (await h(new Request("http://x/console/revenue.csv"))).text();
    expect(csv).toContain(`,USD,acme,,0,1999,200,0,0,1799,0\r\n`);
    expect(csv).toContain(`,,initech,,0,0,0,0,0,0,40\r\n`);
    // A range in the past: its last month's end; a bad month falls back to the default range.
    const past = await (await h(new Request(`http://x/console/revenue?to=${month}&account=acme`))).text();
    expect(past).toContain(`Deferred at ${month}&#39;s end`);
    const bad = await h(new Request("http://x/console/revenue?from=2026-13&to=x"));
    expect(bad.status).toBe(200);
    // The months are text fields written YYYY-MM, never the browser's month picker; a bad one is named.
    const badText = await bad.text();
    expect(badText).toContain('placeholder="YYYY-MM"');
    expect(badText).not.toContain('type="month"');
    expect(badText).toContain("From: &quot;2026-13&quot; is not a month (YYYY-MM)");
  });
});
