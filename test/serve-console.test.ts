/**
 * The console inside `serve`: signing in exchanges the admin credential for a console session
 * (docs/console.md, "In the service"; docs/service.md, "The console"). The cookie never holds the
 * credential, is useless on the API, and stops working after sign-out, expiry and key revocation.
 */
import { SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { consoleApp, SESSION_COOKIE, SESSION_TTL_MS } from "../src/serve/console.js";
import { newKey } from "../src/serve/keys.js";
import { memoryKeyStore } from "./memory-key-store.js";
import { serveSettings } from "../src/serve/settings.js";

const SECRET = "console-secret-of-at-least-32-characters";
const JWT_KEY = "a-jwt-secret-of-at-least-32-characters!!";
const BASE = "http://localhost";

async function setup(ttl?: number) {
  const manager = await createCreditManager();
  await manager.credits.addCredits("alice", 100);
  const keys = memoryKeyStore();
  const admin = newKey("admin", null, "ops");
  const alice = newKey("user", "alice", null);
  await keys.insert(admin.record);
  await keys.insert(alice.record);
  // The JWT key is the console secret itself: a session token must still not pass as a JWT.
  const s = serveSettings(
    {},
    { CREDIT_CONSOLE_SECRET: SECRET, CREDIT_JWT_KEY: SECRET, CREDIT_JWT_ISSUER: "i", CREDIT_JWT_AUDIENCE: "a" },
  );
  const auth = await createAuthenticator(s, keys, 0);
  const clock = { t: Date.now() };
  const app = await consoleApp(manager, s, auth, "/console", () => {}, {
    now: () => clock.t,
    ...(ttl === undefined ? {} : { sessionTtlMs: ttl }),
  });
  const send = (path: string, init: { cookie?: string; form?: Record<string, string>; token?: string } = {}) => {
    const headers: Record<string, string> = {};
    if (init.cookie !== undefined) headers.cookie = init.cookie;
    if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`;
    if (init.form !== undefined) headers["content-type"] = "application/x-www-form-urlencoded";
    return app(
      new Request(`${BASE}${path}`, {
        method: init.form === undefined ? "GET" : "POST",
        headers,
        ...(init.form === undefined ? {} : { body: new URLSearchParams(init.form).toString() }),
      }),
      "127.0.0.1",
    );
  };
  const signIn = async (key: string) => {
    const r = await send("/console/login", { form: { key } });
    expect(r.status).toBe(303);
    const set = r.headers.get("set-cookie") ?? "";
    return { set, cookie: set.split(";")[0] as string };
  };
  /** Whether the API's own authenticator lets `token` in on an admin route. */
  const onApi = async (token: string) =>
    auth.authenticate(
      new Request(`${BASE}/admin/credits/users/alice/balance`, { headers: { authorization: `Bearer ${token}` } }),
      "127.0.0.1",
    );
  return { app, send, signIn, onApi, keys, admin, alice, clock, s };
}

describe("serve's console sessions", () => {
  it("the cookie holds a session, not the key, and is no credential on the API", async () => {
    const { send, signIn, onApi, admin } = await setup();
    const { set, cookie } = await signIn(admin.key);
    expect(set).toMatch(
      new RegExp(
        `^${SESSION_COOKIE}=[^;]+; Path=/console; Max-Age=${SESSION_TTL_MS / 1000}; HttpOnly; SameSite=Strict$`,
      ),
    );
    expect(set).not.toContain(admin.key);
    expect(set).not.toContain(admin.key.slice(21)); // the key's secret part
    expect((await send("/console/", { cookie })).status).toBe(200);
    // Stolen: sent to the API as a bearer token it is refused (the API reads no cookie at all).
    const session = cookie.slice(SESSION_COOKIE.length + 1);
    expect(await onApi(session)).toBeNull();
    expect(await onApi(admin.key)).toMatchObject({ admin: true });
    // Nor does the console take it as a bearer token, nor the old cookie holding a key.
    expect((await send("/console/", { token: session })).status).toBe(401);
    expect((await send("/console/", { cookie: `${SESSION_COOKIE}=${admin.key}` })).status).toBe(303);
    expect((await send("/console/", { cookie: `cm_console_key=${admin.key}` })).status).toBe(303);
  });

  it("a forged or tampered session is refused", async () => {
    const { send, signIn, admin } = await setup();
    // An unknown key does not sign in.
    expect((await send("/console/login", { form: { key: newKey("admin", null, null).key } })).status).toBe(401);
    // A session signed by another process (another secret) is refused.
    const elsewhere = await setup();
    const theirs = await elsewhere.signIn(elsewhere.admin.key);
    expect((await send("/console/", { cookie: theirs.cookie })).status).toBe(303);
    // Tampered: the subject changed.
    const { cookie } = await signIn(admin.key);
    const [h, p, sig] = cookie.slice(SESSION_COOKIE.length + 1).split(".") as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, "base64url").toString()) as Record<string, unknown>;
    const changed = Buffer.from(JSON.stringify({ ...claims, sub: "admin:someone" })).toString("base64url");
    expect((await send("/console/", { cookie: `${SESSION_COOKIE}=${h}.${changed}.${sig}` })).status).toBe(303);
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("admin:x")
      .setAudience("credit-management:console-session")
      .setJti("x")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode(JWT_KEY));
    const r = await send("/console/", { cookie: `${SESSION_COOKIE}=${forged}` });
    expect(r.status).toBe(303);
    expect(r.headers.get("set-cookie")).toMatch(new RegExp(`^${SESSION_COOKIE}=; .*Max-Age=0`));
  });

  it("stops working after sign-out, for a copy of the cookie too", async () => {
    const { send, signIn, admin } = await setup();
    const { cookie } = await signIn(admin.key);
    const other = await signIn(admin.key); // a second browser
    expect((await send("/console/", { cookie })).status).toBe(200);
    const out = await send("/console/logout", { cookie, form: {} });
    expect(out.status).toBe(303);
    expect(out.headers.get("set-cookie")).toMatch(new RegExp(`^${SESSION_COOKIE}=; .*Max-Age=0`));
    const stolen = await send("/console/", { cookie });
    expect(stolen.status).toBe(303);
    expect(stolen.headers.get("location")).toBe("/console/login");
    expect((await send("/console/actions/grant", { cookie, form: { user: "alice" } })).status).toBe(401);
    expect((await send("/console/", { cookie: other.cookie })).status).toBe(200); // only that session ended
  });

  it("expires after its lifetime", async () => {
    const { send, signIn, admin, clock } = await setup(60_000);
    const { set, cookie } = await signIn(admin.key);
    expect(set).toContain("Max-Age=60;");
    clock.t += 59_000;
    expect((await send("/console/", { cookie })).status).toBe(200);
    clock.t += 2_000;
    expect((await send("/console/", { cookie })).status).toBe(303);
  });

  it("ends when its key is revoked", async () => {
    const { send, signIn, admin, keys } = await setup();
    const { cookie } = await signIn(admin.key);
    expect((await send("/console/", { cookie })).status).toBe(200);
    await keys.revoke(admin.record.id, new Date().toISOString());
    expect((await send("/console/", { cookie })).status).toBe(303);
  });

  it("a session from a JWT never outlives the JWT; a user's credential makes none", async () => {
    const manager = await createCreditManager();
    const s = serveSettings(
      {},
      { CREDIT_CONSOLE_SECRET: SECRET, CREDIT_JWT_KEY: JWT_KEY, CREDIT_JWT_ISSUER: "i", CREDIT_JWT_AUDIENCE: "a" },
    );
    const auth = await createAuthenticator(s, memoryKeyStore(), 0);
    const clock = { t: Date.now() };
    const app = await consoleApp(manager, s, auth, "/console", () => {}, { now: () => clock.t });
    const login = (key: string) =>
      app(
        new Request(`${BASE}/console/login`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: new URLSearchParams({ key }).toString(),
        }),
        "127.0.0.1",
      );
    const jwt = (scope: string) =>
      new SignJWT({ sub: "ops", scope })
        .setProtectedHeader({ alg: "HS256" })
        .setIssuer("i")
        .setAudience("a")
        .setIssuedAt()
        .setExpirationTime("10m")
        .sign(new TextEncoder().encode(JWT_KEY));
    expect((await login(await jwt("credits:user"))).status).toBe(403);
    const r = await login(await jwt("credits:admin"));
    expect(r.status).toBe(303);
    const maxAge = Number(/Max-Age=(\d+)/.exec(r.headers.get("set-cookie") ?? "")?.[1]);
    expect(maxAge).toBeGreaterThan(590);
    expect(maxAge).toBeLessThanOrEqual(602); // the JWT's own expiry, 10 minutes (not 8 hours)
    const cookie = (r.headers.get("set-cookie") ?? "").split(";")[0] as string;
    const get = () => app(new Request(`${BASE}/console/`, { headers: { cookie } }), "127.0.0.1");
    expect((await get()).status).toBe(200);
    clock.t += 601_000;
    expect((await get()).status).toBe(303);
  });
});
