/** The console's handler without a browser: access, headers, escaping, CSRF and the bundled uPlot (docs/console.md). */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createConsoleHandler } from "../src/console/index.js";
import { escapeHtml, html, jsonData } from "../src/console/html.js";
import { UPLOT_CSS, UPLOT_JS, UPLOT_VERSION } from "../src/console/vendor.js";
import { ConfigurationError } from "../src/errors.js";
import { createCreditManager } from "../src/index.js";

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
