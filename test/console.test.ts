/** The console's handler without a browser: access, headers, escaping, CSRF and the bundled uPlot (docs/console.md). */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createConsoleHandler } from "../src/console/index.js";
import { amount, escapeHtml, html, jsonData } from "../src/console/html.js";
import { visible } from "../src/util/visible.js";
import { shortId, table } from "../src/console/table.js";
import { UPLOT_CSS, UPLOT_JS, UPLOT_VERSION } from "../src/console/vendor.js";
import { RECENT_ENTRIES } from "../src/console/usage-page.js";
import { calendarWindow } from "../src/core/domain/limits.js";
import { ConfigurationError } from "../src/core/errors.js";
import { createCreditManager, InMemoryDbManager } from "../src/index.js";

const root = join(import.meta.dirname, "..");

async function setup(role: "admin" | "viewer" | "deny" = "admin") {
  const m = await createCreditManager({
    payments: {
      stripe: {
        secretKey: "sk_live_never_shown",
        webhookSecret: "whsec_never_shown",
        successUrl: "https://app.example/ok",
        cancelUrl: "https://app.example/cancel",
      },
    },
  });
  await m.credits.addCredits(`a"'<b>`, 10, {
    description: "</script><script>alert(1)</script>",
    metadata: { u: "javascript:alert(1)" },
  });
  const h = createConsoleHandler(m, {
    authorize: () => (role === "deny" ? "deny" : { role, actor: "ops@example.com" }),
  });
  return { m, h };
}

describe("createConsoleHandler", () => {
  it("requires authorize and a well-formed base path and key", async () => {
    const m = await createCreditManager();
    expect(() => createConsoleHandler(m, {} as never)).toThrow(ConfigurationError);
    expect(() => createConsoleHandler(m, { authorize: () => "deny", basePath: "console" })).toThrow(ConfigurationError);
    expect(() => createConsoleHandler(m, { authorize: () => "deny", csrfSecret: "short" })).toThrow(ConfigurationError);
    expect(createConsoleHandler(m, { authorize: () => "deny", basePath: "/ops/console/" }).basePaths).toEqual([
      "/ops/console",
    ]);
  });

  it("answers 403 to whom authorize denies, and nothing outside its base path", async () => {
    const { h } = await setup("deny");
    expect((await h(new Request("http://x/console/"))).status).toBe(403);
    expect((await h(new Request("http://x/elsewhere"))).status).toBe(404);
  });

  it("serves pages with a strict CSP, no inline script, every hostile value escaped, no secret", async () => {
    const { h } = await setup();
    const user = encodeURIComponent(`a"'<b>`);
    for (const path of [
      "/console/",
      `/console/accounts/${user}`,
      "/console/outbox",
      "/console/payments?user=x",
      "/console/jobs",
    ]) {
      const r = await h(new Request(`http://x${path}`));
      expect(r.status, path).toBe(200);
      const csp = r.headers.get("content-security-policy") ?? "";
      expect(csp).toContain("script-src 'self'");
      expect(csp).not.toContain("unsafe-inline");
      expect(r.headers.get("set-cookie")).toMatch(
        /^cm_console_csrf=[\w-]{32}; Path=\/console; HttpOnly; SameSite=Strict$/,
      );
      const body = await r.text();
      // Every <script> element is a file of the console's own or a JSON data block.
      for (const tag of body.match(/<script[^>]*>/g) ?? [])
        expect(tag).toMatch(
          /^<script (src="\/console\/assets\/[a-z]+\.js"|type="application\/json" id="balance-data")>$/,
        );
      expect(body).not.toContain("<script>alert");
      expect(body).not.toContain(`a"'<b>`);
      expect(body).not.toMatch(/never_shown/);
    }
  });

  it("escapes text, attributes and JSON data blocks", () => {
    expect(escapeHtml(`<a href="x" onclick='y'>&\``)).toBe(
      "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&#96;",
    );
    expect(html`<td title="${`" onmouseover="x`}">${"<b>"}</td>`.text).toBe(
      '<td title="&quot; onmouseover=&quot;x">&lt;b&gt;</td>',
    );
    expect(jsonData({ s: "</script><!--" }).text).toBe('{"s":"\\u003c/script\\u003e\\u003c!--"}');
  });

  it("writes control and bidi characters out in text, and keeps attributes exact", () => {
    expect(visible("refund \u202E0001 stiderc")).toBe("refund \u27e8U+202E\u27e90001 stiderc");
    expect(visible("a\u0000b\u200Bc\u2066d\u2069\ufeff\u0085\n")).toBe(
      "a⟨U+0000⟩b⟨U+200B⟩c⟨U+2066⟩d⟨U+2069⟩⟨U+FEFF⟩⟨U+0085⟩⟨U+000A⟩",
    );
    expect(visible("plain, café, 日本, 👍🏽")).toBe("plain, café, 日本, 👍🏽");
    const v = "x\u202Ey";
    expect(
      html`<input value="${v}" />
        <td>${v}</td>
        <td>${[v]}</td>`.text.replace(/>\s+</g, "><"),
    ).toBe(`<input value="x\u202Ey" /><td>x⟨U+202E⟩y</td><td>x⟨U+202E⟩y</td>`);
    // An id: whole in the text (a copy takes it), written out on hover.
    expect(shortId(v).text).toBe(`<span class="id" title="x⟨U+202E⟩y">x⟨U+202E⟩y</span>`);
  });

  it("groups thousands in amounts", () => {
    expect(amount(1234567)).toBe("1,234,567");
    expect(amount(-1000)).toBe("-1,000");
    expect(amount(999)).toBe("999");
    expect(amount(1234.5)).toBe("1,234.5");
  });

  it("draws every table through one helper: header, numeric columns, an empty row or a paragraph", () => {
    const t = table({
      id: "t",
      columns: ["Name", { label: "Credits", num: true }, { label: "When", short: true }],
      rows: [["a<b", amount(1000), "now"], { id: "r2", cells: [{ cell: "spans", colspan: 3, cls: "muted" }] }],
    }).text.replace(/\s*(>|<)\s*/g, "$1");
    expect(t).toContain('<table id="t">');
    expect(t).toContain('<th scope="col">Name</th><th scope="col" class="num">Credits</th>');
    expect(t).toContain('<tr><td>a&lt;b</td><td class="num">1,000</td><td class="short">now</td></tr>');
    expect(t).toContain('<tr id="r2"><td class="muted" colspan="3">spans</td></tr>');
    expect(table({ columns: ["A", "B"], rows: [], empty: "Nothing." }).text).toMatch(
      /<td colspan="2" class="muted">Nothing\.<\/td>/,
    );
    expect(table({ columns: ["A"], rows: [], none: "None." }).text).toBe('<p class="muted">None.</p>');
  });

  it("refuses an action without the CSRF cookie and token, cross-site, or from a viewer", async () => {
    const { h, m } = await setup();
    const form = { "content-type": "application/x-www-form-urlencoded" };
    const body = `user=u1&amount=5&confirmed=1&_key=aaaaaaaa-0001`;
    const post = (headers: Record<string, string>, b = body) =>
      h(new Request("http://x/console/actions/grant", { method: "POST", headers: { ...form, ...headers }, body: b }));
    expect((await post({})).status).toBe(403);
    expect((await post({ cookie: "cm_console_csrf=" + "a".repeat(32) }, `${body}&_csrf=forged`)).status).toBe(403);
    expect((await post({ origin: "https://evil.example" })).status).toBe(403);
    expect((await post({ "sec-fetch-site": "cross-site" })).status).toBe(403);
    const viewer = (await setup("viewer")).h;
    const v = await viewer(new Request("http://x/console/actions/grant", { method: "POST", headers: form, body }));
    expect(v.status).toBe(403);
    expect(await m.db.getAccount("u1")).toBeNull();
  });

  it("grants after the confirmation with the token of the page, once per key, as the actor", async () => {
    const { h, m } = await setup();
    const page = await h(new Request("http://x/console/accounts/" + encodeURIComponent(`a"'<b>`)));
    const cookie = (page.headers.get("set-cookie") ?? "").split(";")[0] as string;
    const token = /name="_csrf" value="([^"]+)"/.exec(await page.text())?.[1] as string;
    const send = (extra: string) =>
      h(
        new Request("http://x/console/actions/grant", {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded", cookie },
          body: `user=u2&amount=7&_key=bbbbbbbb-0002&_csrf=${encodeURIComponent(token)}${extra}`,
        }),
      );
    const ask = await send("");
    expect(ask.status).toBe(200);
    expect(await ask.text()).toContain('id="confirm"');
    expect(await m.db.getAccount("u2")).toBeNull();
    const done = await Promise.all([send("&confirmed=1"), send("&confirmed=1")]);
    expect(done.map((r) => r.status)).toEqual([303, 303]);
    expect(done[0]?.headers.get("location")).toBe("/console/accounts/u2?notice=granted");
    expect((await m.credits.getUserCreditsInfo("u2")).balance).toBe(7);
    const [entry] = await m.db.listJournal("u2", { order: "desc", limit: 5 });
    expect(entry?.metadata).toEqual({ actor: "ops@example.com", via: "console" });
    expect((await m.db.listJournal("u2", { order: "desc", limit: 5 })).length).toBe(1);
  });

  it("records a void and a release as a grant is: the reason, or what was done, by whom, in the console", async () => {
    const { h, m } = await setup();
    const g1 = { id: (await m.credits.addCredits("u3", 10)).grants[0]?.grantId as string };
    const g2 = { id: (await m.credits.addCredits("u3", 10)).grants[0]?.grantId as string };
    const hold1 = await m.credits.reserveCredits("u3", 2);
    const hold2 = await m.credits.reserveCredits("u3", 2);
    const page = await h(new Request("http://x/console/accounts/u3"));
    const cookie = (page.headers.get("set-cookie") ?? "").split(";")[0] as string;
    const token = encodeURIComponent(/name="_csrf" value="([^"]+)"/.exec(await page.text())?.[1] as string);
    const send = (action: string, body: string) =>
      h(
        new Request(`http://x/console/actions/${action}`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded", cookie },
          body: `user=u3&_csrf=${token}&${body}`,
        }),
      );
    // The confirmation asks for the reason.
    const ask = await (await send("void", `grant=${g1.id}&_key=cccccccc-0001`)).text();
    expect(ask).toMatch(/<input\s+name="description"/);
    for (const [action, body] of [
      ["release", `hold=${hold1.id}&_key=cccccccc-0003&description=stuck+stream`],
      ["release", `hold=${hold2.id}&_key=cccccccc-0004`],
      ["void", `grant=${g1.id}&_key=cccccccc-0001&description=duplicate+top-up`],
      ["void", `grant=${g2.id}&_key=cccccccc-0002`],
    ] as const)
      expect((await send(action, `${body}&confirmed=1`)).status).toBe(303);
    const by = { actor: "ops@example.com", via: "console" };
    const entries = (await m.db.listJournal("u3", { order: "asc", limit: 20 })).filter(
      (e) => e.type === "void" || e.type === "release_reserved",
    );
    expect(entries.map((e) => [e.type, e.description, e.metadata])).toEqual([
      ["release_reserved", "stuck stream (by ops@example.com in the console)", by],
      ["release_reserved", "Released (by ops@example.com in the console)", by],
      ["void", "duplicate top-up (by ops@example.com in the console)", by],
      ["void", "Voided (by ops@example.com in the console)", by],
    ]);
  });

  it("bundles uPlot from node_modules/uplot as it is (scripts/console-vendor.mjs)", async () => {
    const pkg = JSON.parse(readFileSync(join(root, "node_modules/uplot/package.json"), "utf8")) as { version: string };
    expect(UPLOT_VERSION).toBe(pkg.version);
    expect(UPLOT_JS).toBe(readFileSync(join(root, "node_modules/uplot/dist/uPlot.iife.min.js"), "utf8"));
    expect(UPLOT_CSS).toBe(readFileSync(join(root, "node_modules/uplot/dist/uPlot.min.css"), "utf8"));
    const { h } = await setup();
    const js = await h(new Request("http://x/console/assets/uplot.js"));
    expect(js.headers.get("content-type")).toContain("javascript");
    expect((await js.text()).length).toBe(UPLOT_JS.length);
  });
});

describe("the account page's auto top-up (docs/console.md, Pages)", () => {
  it("shows the rule and each attempt (requested, charged and credited, failed) with amounts and provider ids", async () => {
    let answer: "succeeded" | "declined" = "succeeded";
    let n = 0;
    const m = await createCreditManager({
      payments: {
        providers: [
          {
            name: "cardpay",
            createCheckout: async (r) => ({ providerRef: `ref-${r.paymentId}`, url: "https://pay.example/x" }),
            verifyWebhook() {},
            parseEvent: () => null as never,
            chargeSaved: async () => {
              n++;
              return answer === "succeeded"
                ? { status: "succeeded", providerPaymentId: `pi_ok_${n}` }
                : { status: "declined", providerPaymentId: `pi_no_${n}`, code: "card_declined", message: "no" };
            },
          },
        ],
        creditsPerUnit: { USD: 1 },
      },
    });
    try {
      const hostile = `cus_<script>alert(1)</script>`;
      await m.credits.addCredits("erin", 150);
      await m.payments.setAutoTopUp("erin", {
        below: 100,
        amount: 500,
        provider: "cardpay",
        customer: hostile,
        paymentMethod: "pm_1",
        currency: "USD",
      });
      const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "v" }) });
      const page = async () => (await h(new Request("http://x/console/accounts/erin"))).text();
      await m.credits.deductCredits("erin", 60); // below 100: requested
      let text = await page();
      expect(text).toContain('id="auto-top-up-rule"');
      expect(text).toContain("a spend takes available credits below 100");
      // 500 in the smallest unit of USD: $5.00, written in its currency (docs/console.md, "Money and dates").
      expect(text).toContain("$5.00 each time");
      expect(text).not.toContain("<script>alert(1)");
      expect(text).toContain("cus_&lt;script&gt;");
      expect(text).toMatch(/In flight<\/dt>\s*<dd>\s*<span class="mono">/);
      await m.notifications.dispatchPending({ limit: 10 }); // charged and credited
      answer = "declined";
      await m.credits.deductCredits("erin", 500); // 590 → 90: a second attempt, declined
      await m.notifications.dispatchPending({ limit: 10 });
      text = await page();
      const attempts = text.slice(text.indexOf('id="auto-top-up-attempts"'));
      expect(attempts).toContain("charged and credited");
      expect(attempts).toContain("pi_ok_1");
      expect(attempts).toContain("failed");
      expect(attempts).toContain("pi_no_2");
      expect(attempts).toContain("$5.00");
      expect(attempts).not.toContain("500 USD");
      expect(text).toContain("card_declined");
    } finally {
      await m.close();
    }
  });
});

describe("the subscriptions page's plans (docs/console.md, Pages)", () => {
  it("lists each plan's allowances: credits per period, what they pay for, their own rollover; none when it has none", async () => {
    const m = await createCreditManager();
    try {
      await m.subscriptions.createPlan({ id: "plain", name: "Plain", creditsPerPeriod: 10, billingPeriod: "monthly" });
      await m.subscriptions.createPlan({
        id: "studio",
        name: "Studio",
        creditsPerPeriod: 1000,
        billingPeriod: "monthly",
        rollover: { cap: 50 },
        allowances: [
          { scope: { features: ["images"] }, credits: 2500, rollover: { cap: 100 } },
          { scope: { spenders: ["alice"] }, credits: 7 },
        ],
      });
      const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "ops" }) });
      const text = await (await h(new Request("http://x/console/subscriptions"))).text();
      const row = (id: string) => text.slice(text.indexOf(`>${id}<`), text.indexOf("</tr>", text.indexOf(`>${id}<`)));
      expect(row("plain")).toContain('<span class="muted">none</span>');
      const studio = row("studio").replace(/\s+/g, " ");
      expect(studio).toContain("cap 50");
      expect(studio).toContain("2,500 for features <code>images</code> (rollover cap 100)");
      expect(studio).toContain("7 for spenders <code>alice</code>");
    } finally {
      await m.close();
    }
  });
});

/** The journal rows a store hands out and its usage aggregations, counted around the store. */
function counted<T extends object>(db: T): { db: T; rows: () => number; usage: () => number } {
  let rows = 0;
  let usage = 0;
  const proxy = new Proxy(db, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== "function") return value;
      const fn = (value as (...a: unknown[]) => unknown).bind(target);
      if (key === "usage") return (...args: unknown[]) => (usage++, fn(...args));
      if (key !== "listJournal") return fn;
      return async (...args: unknown[]) => {
        const out = (await fn(...args)) as unknown[];
        rows += out.length;
        return out;
      };
    },
  });
  return { db: proxy, rows: () => rows, usage: () => usage };
}

/** A table's rows as text, cell by cell (`|` between cells). */
function tableText(page: string, id: string): string[] {
  const start = page.indexOf(`id="${id}"`);
  if (start < 0) return [];
  const body = page.slice(start, page.indexOf("</table>", start));
  return [...body.matchAll(/<tr[^>]*>([\s\S]*?)<\/tr>/g)].map((m) =>
    [...(m[1] as string).matchAll(/<t[dh][^>]*>([\s\S]*?)<\/t[dh]>/g)]
      .map((c) =>
        (c[1] as string)
          .replace(/<[^>]+>/g, " ")
          .replace(/\s+/g, " ")
          .trim(),
      )
      .join(" | ")
      .trim(),
  );
}

describe("the account page after a month closed (docs/console.md, Pages; docs/usage.md, Closed months)", () => {
  it("sums what a close moved where getUsage books it: at the close, not at its time", async () => {
    const m = await createCreditManager();
    try {
      const DAY = 86_400_000;
      const through = new Date(Math.floor(Date.now() / DAY) * DAY); // the start of today (UTC)
      const hourBefore = (hours: number) => new Date(through.getTime() - hours * 3_600_000);
      const spend = (amount: number, model: string, occurredAt?: Date) =>
        m.credits.deductCredits("late", amount, {
          spender: `key-${model}`,
          metadata: { usages: [{ model, amount }] },
          ...(occurredAt === undefined ? {} : { occurredAt }),
        });
      await m.credits.addCredits("late", 1_000);
      await spend(7, "large", hourBefore(2)); // yesterday, recorded before the close: stays there
      await m.credits.closePeriod(through);
      await spend(5, "mini", hourBefore(1)); // yesterday, recorded after the close: booked today
      await spend(3, "mini"); // today
      const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "v" }) });
      const text = await (await h(new Request("http://x/console/accounts/late"))).text();

      const chart = JSON.parse(/id="account-usage-chart-data">([\s\S]*?)<\/script>/.exec(text)?.[1] ?? "null") as {
        x: number[];
        series: { label: string; values: number[] }[];
      };
      const byDay = await m.credits.getUsage({
        account: "late",
        from: new Date(through.getTime() - 29 * DAY),
        to: new Date(through.getTime() + DAY),
        interval: "day",
        groupBy: ["model"],
        kinds: ["spend"],
      });
      expect(byDay.rows.some((r) => r.catchUpThrough !== undefined)).toBe(true);
      const expected = new Map<string, number>();
      for (const r of byDay.rows) {
        const key = `${r.start.getTime() / 1000} ${r.model}`;
        expected.set(key, (expected.get(key) ?? 0) + r.credits);
      }
      const drawn = new Map<string, number>();
      for (const s of chart.series) s.values.forEach((v, i) => v !== 0 && drawn.set(`${chart.x[i]} ${s.label}`, v));
      expect(drawn).toEqual(expected);
      expect(drawn.get(`${through.getTime() / 1000} mini`)).toBe(8);
      expect(drawn.get(`${through.getTime() / 1000 - DAY / 1000} large`)).toBe(7);

      const month = calendarWindow("month", Date.now());
      const bySpender = await m.credits.getUsage({
        account: "late",
        from: new Date(month.start),
        to: new Date(month.end),
        interval: null,
        groupBy: ["spender"],
        kinds: ["spend"],
      });
      const perSpender = new Map<string, number>();
      for (const r of bySpender.rows)
        perSpender.set(String(r.spender), (perSpender.get(String(r.spender)) ?? 0) + r.credits);
      const table = new Map(
        tableText(text, "spender-table")
          .slice(1)
          .map((row) => row.split(" | "))
          .map(([spender, credits]) => [spender as string, Number(credits)]),
      );
      expect(table).toEqual(perSpender);
    } finally {
      await m.close();
    }
  });
});

describe("the account page on a big journal (docs/console.md, Pages)", () => {
  /** @see issue 60 */
  it("reads the newest entries by seq, never the whole account, and sums them as getUsage does", async () => {
    const c = counted(new InMemoryDbManager());
    const m = await createCreditManager({ db: c.db });
    try {
      await m.credits.addCredits("big", 1_000_000);
      await m.credits.addCredits("light", 1_000);
      const spend = (u: string, i: number) =>
        m.credits.deductCredits(u, 1 + (i % 3), {
          spender: `key-${i % 2}`,
          metadata: { usages: [{ model: i % 3 ? "mini" : "large", amount: 1 + (i % 3) }] },
        });
      for (let i = 0; i < 12; i++) await spend("light", i);
      for (let i = 0; i < RECENT_ENTRIES * 2; i++) await spend("big", i);
      const h = createConsoleHandler(m, { authorize: () => ({ role: "viewer", actor: "v" }) });
      const page = async (path: string) => {
        const before = { rows: c.rows(), usage: c.usage() };
        const text = await (await h(new Request(`http://x/console/accounts/${path}`))).text();
        return { text, rows: c.rows() - before.rows, usage: c.usage() - before.usage };
      };
      // A light account: every entry of the month read, the sums those of getUsage.
      const light = await page("light");
      expect(light.usage).toBe(0);
      const month = calendarWindow("month", Date.now());
      const bySpender = await m.credits.getUsage({
        account: "light",
        from: new Date(month.start),
        to: new Date(month.end),
        interval: null,
        groupBy: ["spender"],
        kinds: ["spend"],
      });
      expect(tableText(light.text, "spender-table").slice(1).sort()).toEqual(
        bySpender.rows.map((r) => `${r.spender} | ${r.credits} | ${r.requests} |`).sort(),
      );
      expect(light.text).not.toContain("Summed over the newest");
      const chart = JSON.parse(
        /id="account-usage-chart-data">([\s\S]*?)<\/script>/.exec(light.text)?.[1] ?? "null",
      ) as { series: { label: string; values: number[] }[] };
      const byModel = await m.credits.getUsage({
        account: "light",
        from: new Date(Date.now() - 29 * 86_400_000),
        to: new Date(Date.now() + 86_400_000),
        interval: null,
        groupBy: ["model"],
        kinds: ["spend"],
      });
      for (const r of byModel.rows)
        expect(chart.series.find((s) => s.label === r.model)?.values.reduce((a, b) => a + b, 0)).toBe(r.credits);
      // A big account: the page, a deep journal page and a filtered one read a bounded number of
      // rows (not the 4,001 entries), and say that the sums start at the newest entries read.
      for (const path of ["big", "big?before=100", "big?type=add"]) {
        const big = await page(path);
        expect(big.usage, path).toBe(0);
        expect(big.rows, path).toBeLessThanOrEqual(RECENT_ENTRIES + 1 + 51);
        expect(big.text, path).toContain(`Summed over the newest ${amount(RECENT_ENTRIES)} journal entries`);
      }
      const big = await page("big");
      const spent = tableText(big.text, "spender-table")
        .slice(1)
        .map((r) => Number((r.split(" | ")[1] as string).replace(/,/g, "")));
      // The newest 2,000 deductions of 1 + i % 3 for i from 2,000 to 3,999.
      let newest = 0;
      for (let i = RECENT_ENTRIES; i < RECENT_ENTRIES * 2; i++) newest += 1 + (i % 3);
      expect(spent.reduce((a, b) => a + b, 0)).toBe(newest);
    } finally {
      await m.close();
    }
  });
});
