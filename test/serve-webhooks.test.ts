import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
import { call, keys, startServe } from "./serve-process.js";

describe("serve with CREDIT_WEBHOOKS=on", () => {
  it("admin routes add, list, test and remove endpoints; --worker delivers what the API recorded, signed", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-serve-webhooks-"));
    const got: { headers: IncomingHttpHeaders; body: string }[] = [];
    const receiver: Server = createServer((req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString()));
      req.on("end", () => {
        got.push({ headers: req.headers, body });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
    const env = {
      CREDIT_SQLITE_PATH: join(dir, "store.sqlite"),
      CREDIT_WEBHOOKS: "on",
      CREDIT_WEBHOOK_ALLOW_NETWORKS: "127.0.0.0/8",
      CREDIT_WORKER_DISPATCH_EVERY: "50ms",
      CREDIT_KEY_CACHE_MS: "0",
    };
    const admin = (await keys(["create", "--role", "admin"], env)).stdout.trim();
    const user = (await keys(["create", "--role", "user:bob"], env)).stdout.trim();
    const s = await startServe(env, ["--worker", "--console"]);
    try {
      expect((await call(s, "GET", "/admin/webhooks")).status).toBe(401);
      expect((await call(s, "GET", "/admin/webhooks", user)).status).toBe(403);
      // @see issue 60: a text that is no URL threw in the model's check (500).
      const notUrl = await call(s, "POST", "/admin/webhooks", admin, { url: "not a url" });
      expect(notUrl.status).toBe(400);
      expect(JSON.stringify(notUrl.body)).toContain("url must be an http(s) URL");
      const plain = await call(s, "POST", "/admin/webhooks", admin, { url });
      expect(plain.status).toBe(400);
      expect(JSON.stringify(plain.body)).toMatch(/https:\/\//);
      // A type serve never publishes (a misspelling) is refused: the endpoint would wait for nothing.
      const misspelt = await call(s, "POST", "/admin/webhooks", admin, {
        url,
        development: true,
        types: ["credit_added"],
      });
      expect(misspelt.status).toBe(400);
      expect(JSON.stringify(misspelt.body)).toContain('\\"credit_added\\" is not an event type');
      expect((await call(s, "GET", "/admin/webhooks", admin)).body).toEqual({ endpoints: [] });
      const added = await call(s, "POST", "/admin/webhooks", admin, {
        url,
        development: true,
        types: ["credits_added"],
      });
      expect(added.status, JSON.stringify(added.body)).toBe(201);
      const { endpoint, secret } = added.body as { endpoint: { id: string }; secret: string };
      const list = await call(s, "GET", "/admin/webhooks", admin);
      expect(list.body).toMatchObject({ endpoints: [{ id: endpoint.id, url, enabled: true, secrets: 1 }] });
      expect(JSON.stringify(list.body)).not.toContain(secret);
      const openapi = await call(s, "GET", "/credits/openapi.json");
      expect(Object.keys((openapi.body as { paths: object }).paths)).toEqual(
        expect.arrayContaining(["/admin/webhooks", "/admin/webhooks/{id}/deliveries", "/admin/webhooks/{id}/retry"]),
      );

      const test = await call(s, "POST", `/admin/webhooks/${endpoint.id}/test`, admin, {});
      expect(test.body).toMatchObject({ ok: true, status: 204 });
      expect(new Webhook(secret).verify(got[0]!.body, got[0]!.headers as Record<string, string>)).toMatchObject({
        type: "webhook_test",
      });

      const add = await call(s, "POST", "/admin/credits/users/bob/add", admin, { amount: 10 });
      expect(add.status, JSON.stringify(add.body)).toBeLessThan(300);
      const end = Date.now() + 15_000;
      while (got.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      const event = new Webhook(secret).verify(got[1]!.body, got[1]!.headers as Record<string, string>) as {
        type: string;
        userId: string;
      };
      expect(event).toMatchObject({ type: "credits_added", userId: "bob" });
      const deliveries = await call(s, "GET", `/admin/webhooks/${endpoint.id}/deliveries?userId=bob`, admin);
      expect(deliveries.body).toMatchObject({ deliveries: [{ type: "credits_added", status: "sent", attempts: 1 }] });
      // The console's Webhooks page (docs/console.md, "Webhooks"): the same endpoint and delivery, no secret.
      const page = await fetch(`${s.base}/console/webhooks/${endpoint.id}?user=bob`, {
        headers: { authorization: `Bearer ${admin}` },
      });
      expect(page.status).toBe(200);
      const text = await page.text();
      expect(text).toContain(url);
      expect(text).toMatch(/<td class="short">sent<\/td>/);
      expect(text).not.toContain(secret);

      const retyped = await call(s, "PATCH", `/admin/webhooks/${endpoint.id}`, admin, { types: ["low_balanse"] });
      expect(retyped.status).toBe(400);
      expect((await call(s, "GET", `/admin/webhooks/${endpoint.id}`, admin)).body).toMatchObject({
        types: ["credits_added"],
      });
      expect((await call(s, "PATCH", `/admin/webhooks/${endpoint.id}`, admin, { enabled: false })).body).toMatchObject({
        enabled: false,
      });
      expect((await call(s, "DELETE", `/admin/webhooks/${endpoint.id}`, admin, {})).status).toBe(204);
      expect((await call(s, "GET", `/admin/webhooks/${endpoint.id}`, admin)).status).toBe(404);
    } finally {
      await s.stop();
      receiver.closeAllConnections();
      await new Promise((r) => receiver.close(r));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
