/**
 * Customer tokens (docs/usage.md, "For your customers"): `credits.customerToken` signs a short-lived
 * token that reads one account's balance, grants and usage; `serve` (and any `createCreditHandler`)
 * takes it on those read routes only: refused for another account, after expiry, on every write.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { SignJWT } from "jose";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigurationError, createCreditManager, ValidationError } from "../src/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { memoryKeyStore, newKey } from "../src/serve/keys.js";
import { customerTokenOptions, serveApp } from "../src/serve/server.js";
import { serveSettings } from "../src/serve/settings.js";

const SECRET = "customer-token-secret-of-32-characters!";
const OTHER = "another-customer-secret-of-32-characters";

async function manager(secret: string | string[] = SECRET) {
  const clock = { t: Date.now() };
  const m = await createCreditManager({ clock: () => new Date(clock.t), customerTokens: { secret } });
  return { m, clock };
}

describe("credits.customerToken", () => {
  it("signs a token that only this manager's secret verifies, until it expires", async () => {
    const { m, clock } = await manager();
    const { token, expiresAt } = await m.credits.customerToken("alice", { ttlSeconds: 600, spender: "key-1" });
    expect(expiresAt.getTime()).toBe(Math.floor(clock.t / 1000) * 1000 + 600_000);
    expect(await m.credits.verifyCustomerToken(token)).toEqual({ account: "alice", spender: "key-1", expiresAt });
    // Another secret does not take it; a tampered subject is refused.
    const other = await manager(OTHER);
    expect(await other.m.credits.verifyCustomerToken(token)).toBeNull();
    const [h, p, sig] = token.split(".") as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, "base64url").toString()) as Record<string, unknown>;
    const bob = Buffer.from(JSON.stringify({ ...claims, sub: "bob" })).toString("base64url");
    expect(await m.credits.verifyCustomerToken(`${h}.${bob}.${sig}`)).toBeNull();
    // A JWT signed with the secret itself (not the key derived from it) is not a customer token.
    const raw = await new SignJWT({ scope: "credits:read" })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer("credit-management")
      .setAudience("credit-management:customer")
      .setSubject("alice")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode(SECRET));
    expect(await m.credits.verifyCustomerToken(raw)).toBeNull();
    // Past its expiry (and the 5 s of clock skew allowed), refused.
    clock.t += 600_000 + 6_000;
    expect(await m.credits.verifyCustomerToken(token)).toBeNull();
  });

  it("rotation: the first secret signs, every listed one verifies", async () => {
    const old = await manager(OTHER);
    const issued = await old.m.credits.customerToken("alice", { ttlSeconds: 60 });
    const rotated = await manager([SECRET, OTHER]);
    expect((await rotated.m.credits.verifyCustomerToken(issued.token))?.account).toBe("alice");
    const fresh = await rotated.m.credits.customerToken("alice", { ttlSeconds: 60 });
    expect(await old.m.credits.verifyCustomerToken(fresh.token)).toBeNull();
    expect((await (await manager()).m.credits.verifyCustomerToken(fresh.token))?.account).toBe("alice");
  });

  it("validates its input and needs a secret", async () => {
    const { m } = await manager();
    for (const o of [
      { ttlSeconds: 0 },
      { ttlSeconds: 86_401 },
      { ttlSeconds: 1.5 },
      { ttlSeconds: 60, spender: "" },
      {},
    ])
      await expect(m.credits.customerToken("alice", o as { ttlSeconds: number })).rejects.toBeInstanceOf(
        ValidationError,
      );
    await expect(m.credits.customerToken("", { ttlSeconds: 60 })).rejects.toBeInstanceOf(ValidationError);
    const off = await createCreditManager();
    await expect(off.credits.customerToken("alice", { ttlSeconds: 60 })).rejects.toBeInstanceOf(ConfigurationError);
    await expect(createCreditManager({ customerTokens: { secret: "short" } })).rejects.toThrow(/32 characters/);
  });
});

describe("serve takes customer tokens on the read routes only", () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve()))));

  async function serve() {
    const settings = serveSettings({}, { CREDIT_CUSTOMER_TOKEN_SECRET: SECRET });
    const options = customerTokenOptions(settings);
    expect(options).toEqual({ customerTokens: { secret: [SECRET] } });
    const clock = { t: Date.now() };
    const m = await createCreditManager({ clock: () => new Date(clock.t), ...options });
    await m.credits.addCredits("alice", 500);
    await m.credits.addCredits("bob", 700);
    const keys = memoryKeyStore();
    const admin = newKey("admin", null, "ops");
    await keys.insert(admin.record);
    const auth = await createAuthenticator(settings, keys, 0);
    // /metrics on (an exporter of its own: what it prints is not the point here).
    const metrics: Parameters<typeof serveApp>[4] = {
      handle: (_req, res) => void res.end("# metrics\n"),
      request: () => undefined,
      shutdown: async () => undefined,
    };
    const app = serveApp(m, settings, auth, pino({ level: "silent" }), metrics);
    server = createServer(app.listener);
    await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const call = async (method: string, path: string, token: string, body?: unknown) => {
      const r = await fetch(base + path, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return {
        status: r.status,
        body: ((r.headers.get("content-type") ?? "").startsWith("application/json")
          ? await r.json()
          : { text: await r.text() }) as Record<string, unknown> & { error: { code: string }; items: unknown[] },
      };
    };
    return { m, clock, app, call, admin: admin.key };
  }

  it("an admin issues one; it reads its account's balance and grants", async () => {
    const { call, admin } = await serve();
    const issued = await call("POST", "/admin/credits/users/alice/customer-token", admin, { ttlSeconds: 300 });
    expect(issued.status).toBe(201);
    expect(Date.parse(issued.body.expiresAt as string)).toBeGreaterThan(Date.now());
    const token = issued.body.token as string;
    const balance = await call("GET", "/credits/balance", token);
    expect(balance.status).toBe(200);
    expect(balance.body).toMatchObject({ userId: "alice", balance: 500 });
    const grants = await call("GET", "/credits/grants", token);
    expect(grants.status).toBe(200);
    expect(grants.body.items).toHaveLength(1);
    // The issuing route checks its input.
    expect(
      (await call("POST", "/admin/credits/users/alice/customer-token", admin, { ttlSeconds: 90_000 })).status,
    ).toBe(400);
  });

  it("refused for another account, after expiry, and when forged", async () => {
    const { m, clock, call } = await serve();
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 60 });
    // Another account is only reachable by the admin routes: 403, whatever the account.
    for (const who of ["bob", "alice"]) {
      const r = await call("GET", `/admin/credits/users/${who}/balance`, token);
      expect(r.status).toBe(403);
    }
    // A query naming another user is refused, not ignored; the answer is alice's only.
    expect((await call("GET", "/credits/balance?userId=bob", token)).status).toBe(400);
    const forged = (await manager(OTHER)).m.credits.customerToken("bob", { ttlSeconds: 60 });
    expect((await call("GET", "/credits/balance", (await forged).token)).status).toBe(401);
    clock.t += 66_000;
    const late = await call("GET", "/credits/balance", token);
    expect(late.status).toBe(401);
    expect(late.body.error.code).toBe("UNAUTHORIZED");
  });

  it("refused on every write route and on every read route but balance, grants and usage", async () => {
    const { m, app, call } = await serve();
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 60 });
    const hold = await m.credits.reserveCredits("alice", 10);
    const routes = app.handler.routes.filter((r) => r.access !== "public");
    let writes = 0;
    for (const r of routes) {
      const path = r.fullPath
        .replace(":userId", "alice")
        .replace(":id", hold.id)
        .replace(":grantId", "g")
        .replace(":planId", "p")
        .replace(":code", "c")
        .replace(/:[A-Za-z]+/g, "x");
      const body = r.method === "GET" ? undefined : {};
      const range = `?from=${new Date(Date.now() - 86_400_000).toISOString()}&to=${new Date().toISOString()}`;
      const res = await call(r.method, path + (r.path.startsWith("/usage") ? range : ""), token, body);
      if (r.customer === true) {
        expect(r.method, r.operationId).toBe("GET");
        expect(r.access, r.operationId).toBe("user");
        expect(res.status, `${r.operationId} ${JSON.stringify(res.body)}`).toBe(200);
      } else {
        expect(res.status, `${r.method} ${path} (${r.operationId})`).toBe(403);
        expect(res.body.error.code).toBe("FORBIDDEN");
        if (r.method !== "GET") writes++;
      }
    }
    expect(writes).toBeGreaterThan(10);
    // serve's own admin route too (issue 60): 403, not 401, as docs/service.md says.
    const metrics = await call("GET", "/metrics", token);
    expect(metrics.status, JSON.stringify(metrics.body)).toBe(403);
    expect(metrics.body.error.code).toBe("FORBIDDEN");
    // An expired or forged one is no caller: 401.
    const forged = await (await manager(OTHER)).m.credits.customerToken("alice", { ttlSeconds: 60 });
    expect((await call("GET", "/metrics", forged.token)).status).toBe(401);
    // Nothing changed: the hold is still active, the balance as it was.
    expect((await m.credits.getReservation(hold.id)).status).toBe("active");
    expect((await m.credits.getUserCreditsInfo("alice")).balance).toBe(500);
  });
});

describe("serve's customer token settings", () => {
  it("reads the secrets and the frame ancestors, and refuses bad ones", () => {
    const s = serveSettings(
      {},
      {
        CREDIT_CUSTOMER_TOKEN_SECRET: SECRET,
        CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET: OTHER,
        CREDIT_CUSTOMER_FRAME_ANCESTORS: "'self' https://app.example.com",
      },
    );
    expect(customerTokenOptions(s)).toEqual({ customerTokens: { secret: [SECRET, OTHER] } });
    expect(s.CREDIT_CUSTOMER_FRAME_ANCESTORS).toEqual(["'self'", "https://app.example.com"]);
    expect(serveSettings({}, {}).CREDIT_CUSTOMER_FRAME_ANCESTORS).toEqual(["'none'"]);
    expect(customerTokenOptions(serveSettings({}, {}))).toEqual({});
    expect(() => serveSettings({}, { CREDIT_CUSTOMER_TOKEN_SECRET: "short" })).toThrow(
      /CREDIT_CUSTOMER_TOKEN_SECRET must be 32 characters or more, not \(hidden\)/,
    );
    expect(() => serveSettings({}, { CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET: OTHER })).toThrow(/needs/);
    expect(() => serveSettings({}, { CREDIT_CUSTOMER_FRAME_ANCESTORS: "*; script-src *" })).toThrow(
      /CREDIT_CUSTOMER_FRAME_ANCESTORS/,
    );
    expect(() => serveSettings({}, { CREDIT_CUSTOMER_FRAME_ANCESTORS: "'none' 'self'" })).toThrow(/'none'/);
  });
});
