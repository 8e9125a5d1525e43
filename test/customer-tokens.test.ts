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
import { createCreditHandler } from "../src/http/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { newKey } from "../src/serve/keys.js";
import { memoryKeyStore } from "./memory-key-store.js";
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

  async function serve(env: Record<string, string> = {}) {
    const settings = serveSettings({}, { CREDIT_CUSTOMER_TOKEN_SECRET: SECRET, ...env });
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

  it("a token naming a spender may name that spender, and is told so when it names another", async () => {
    const { m, call } = await serve();
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 60, spender: "key-1" });
    expect((await call("GET", "/credits/balance?spender=key-1", token)).status).toBe(200);
    const other = await call("GET", "/credits/balance?spender=key-2", token);
    expect(other.status).toBe(403);
    expect((other.body.error as { code: string; message?: string }).message).toBe(
      'Your customer token is for the spender "key-1": a query cannot name another.',
    );
    const none = (await m.credits.customerToken("alice", { ttlSeconds: 60 })).token;
    const named = await call("GET", "/credits/balance?spender=key-2", none);
    expect(named.status).toBe(403);
    expect((named.body.error as { code: string; message?: string }).message).toMatch(/customer token names no spender/);
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

describe("serve's customer token rate limit", () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve()))));

  it("applies CREDIT_CUSTOMER_RATE_LIMIT_* to the customer routes; admin keys are not limited", async () => {
    const settings = serveSettings(
      {},
      {
        CREDIT_CUSTOMER_TOKEN_SECRET: SECRET,
        CREDIT_CUSTOMER_RATE_LIMIT_BURST: "2",
        CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE: "3",
      },
    );
    const m = await createCreditManager(customerTokenOptions(settings));
    const keys = memoryKeyStore();
    const admin = newKey("admin", null, "ops");
    await keys.insert(admin.record);
    const app = serveApp(m, settings, await createAuthenticator(settings, keys, 0), pino({ level: "silent" }), null);
    server = createServer(app.listener);
    await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const get = (path: string, token: string) => fetch(base + path, { headers: { authorization: `Bearer ${token}` } });
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 60 });
    expect((await get("/credits/balance", token)).status).toBe(200);
    expect((await get("/credits/grants", token)).status).toBe(200);
    const refused = await get("/credits/balance", token);
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("20");
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("RATE_LIMITED");
    for (let i = 0; i < 5; i++) expect((await get("/admin/credits/users/alice/grants", admin.key)).status).toBe(200);
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

describe("the customer tokens' rate limit (a bucket per account)", () => {
  async function handler(customerRateLimit?: { burst?: number; perMinute?: number } | false) {
    const { m, clock } = await manager();
    await m.credits.addCredits("alice", 500);
    await m.credits.addCredits("bob", 700);
    const h = createCreditHandler(m, {
      authenticate: (r) =>
        r.headers.get("authorization") === "Bearer admin-key" ? { userId: "ops", admin: true } : null,
      ...(customerRateLimit === undefined ? {} : { customerRateLimit }),
    });
    const get = async (path: string, token: string) => {
      const r = await h(new Request(`http://localhost${path}`, { headers: { authorization: `Bearer ${token}` } }));
      return { status: r.status, retryAfter: r.headers.get("retry-after"), body: (await r.json()) as never };
    };
    return { m, clock, get };
  }

  it("trips past the burst with 429 RATE_LIMITED and Retry-After, and lets requests in again as it refills", async () => {
    const { m, clock, get } = await handler({ burst: 3, perMinute: 6 }); // 3 at once, then one every 10 s
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    for (const path of ["/credits/balance", "/credits/grants", "/credits/balance"])
      expect((await get(path, token)).status).toBe(200);
    const refused = await get("/credits/grants", token);
    expect(refused.status).toBe(429);
    expect(refused.retryAfter).toBe("10");
    expect(refused.body).toEqual({
      error: {
        code: "RATE_LIMITED",
        message: "Too many requests with this account's customer tokens: try again later.",
        details: { retryAfterSeconds: 10 },
      },
    });
    // A refused request takes nothing: 4 s later the wait is 6 s, and after it one request passes.
    clock.t += 4_000;
    expect((await get("/credits/balance", token)).retryAfter).toBe("6");
    clock.t += 6_000;
    expect((await get("/credits/balance", token)).status).toBe(200);
    expect((await get("/credits/balance", token)).status).toBe(429);
    // A minute refills the burst (and no more than it).
    clock.t += 60_000;
    for (let i = 0; i < 3; i++) expect((await get("/credits/balance", token)).status).toBe(200);
    expect((await get("/credits/balance", token)).status).toBe(429);
  });

  it("is per account: every token of the account shares it, another account's tokens do not", async () => {
    const { m, get } = await handler({ burst: 2, perMinute: 1 });
    const first = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    const second = await m.credits.customerToken("alice", { ttlSeconds: 900, spender: "key-1" });
    const bob = await m.credits.customerToken("bob", { ttlSeconds: 600 });
    expect((await get("/credits/balance", first.token)).status).toBe(200);
    expect((await get("/credits/balance", second.token)).status).toBe(200);
    // A fresh token of the same account does not start a fresh bucket.
    expect((await get("/credits/balance", first.token)).status).toBe(429);
    expect((await get("/credits/balance", second.token)).status).toBe(429);
    expect((await get("/credits/balance", bob.token)).status).toBe(200);
  });

  it("counts only the routes a customer token may call, and never an admin's or a user's requests", async () => {
    const { m, get } = await handler({ burst: 2, perMinute: 1 });
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    // Routes it may not call answer 403 and take nothing.
    for (let i = 0; i < 5; i++) expect((await get("/credits/history", token)).status).toBe(403);
    expect((await get("/credits/balance", token)).status).toBe(200);
    expect((await get("/credits/grants", token)).status).toBe(200);
    expect((await get("/credits/grants", token)).status).toBe(429);
    // Admins, on the same routes and on alice's, are not limited.
    for (let i = 0; i < 10; i++) {
      expect((await get("/credits/balance", "admin-key")).status).toBe(200);
      expect((await get("/admin/credits/users/alice/grants", "admin-key")).status).toBe(200);
    }
  });

  it("weighs a usage report above a plain read: ten reports run out of a bucket that ten balance reads do not", async () => {
    const { m, get } = await handler({ burst: 20, perMinute: 1 });
    const alice = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    const bob = await m.credits.customerToken("bob", { ttlSeconds: 600 });
    const passed = async (path: string, token: string) => {
      let n = 0;
      for (let i = 0; i < 10; i++) if ((await get(path, token)).status === 200) n++;
      return n;
    };
    expect(await passed("/credits/balance", alice.token)).toBe(10);
    const reports = await passed("/credits/usage", bob.token);
    expect(reports).toBeGreaterThan(0);
    expect(reports).toBeLessThan(10);
    // The wait is for a report's worth of tokens: longer than a balance read's would be.
    const reportWait = Number((await get("/credits/usage", bob.token)).retryAfter);
    const readWait = Number((await get("/credits/balance", bob.token)).retryAfter);
    expect(reportWait).toBeGreaterThan(readWait);
  });

  it("defaults to 60 at once; false turns it off; bad settings are a ConfigurationError", async () => {
    const limited = await handler();
    const { token } = await limited.m.credits.customerToken("alice", { ttlSeconds: 600 });
    for (let i = 0; i < 60; i++) expect((await limited.get("/credits/balance", token)).status).toBe(200);
    expect((await limited.get("/credits/balance", token)).status).toBe(429);
    const off = await handler(false);
    const t = await off.m.credits.customerToken("alice", { ttlSeconds: 600 });
    for (let i = 0; i < 80; i++) expect((await off.get("/credits/balance", t.token)).status).toBe(200);
    for (const bad of [{ burst: 0 }, { perMinute: 1.5 }, { burst: 2_000_000 }, "fast"])
      await expect(handler(bad as never)).rejects.toThrow(/customerRateLimit/);
  });
});

describe("serve's customer token rate limit settings", () => {
  it("reads the burst and the rate; a rate of 0 is off", () => {
    const s = serveSettings({}, {});
    expect([s.CREDIT_CUSTOMER_RATE_LIMIT_BURST, s.CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE]).toEqual([60, 60]);
    const t = serveSettings({}, { CREDIT_CUSTOMER_RATE_LIMIT_BURST: "5", CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE: "0" });
    expect([t.CREDIT_CUSTOMER_RATE_LIMIT_BURST, t.CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE]).toEqual([5, 0]);
    expect(() => serveSettings({}, { CREDIT_CUSTOMER_RATE_LIMIT_BURST: "0" })).toThrow(
      /CREDIT_CUSTOMER_RATE_LIMIT_BURST/,
    );
  });
});
