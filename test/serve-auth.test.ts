import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { SignJWT } from "jose";
import pino from "pino";
import { describe, expect, it, vi } from "vitest";
import { HttpError } from "../src/http/router.js";
import { createCreditHandler } from "../src/http/index.js";
import { createCreditManager, StorageError } from "../src/index.js";
import { createAuthenticator } from "../src/serve/auth.js";
import { serveApp } from "../src/serve/server.js";
import { newKey, type ApiKeyRecord, type KeyStore } from "../src/serve/keys.js";
import { serveSettings } from "../src/serve/settings.js";

/** A key store in a Map, its `get` counted. */
function keyStore(records: ApiKeyRecord[]) {
  const rows = new Map(records.map((r) => [r.id, { ...r }]));
  const get = vi.fn(async (id: string) => rows.get(id) ?? null);
  const store: KeyStore = {
    init: async () => {},
    insert: async (r) => void rows.set(r.id, { ...r }),
    get,
    list: async () => [...rows.values()],
    revoke: async (id, at) => {
      const r = rows.get(id);
      if (r === undefined || r.revokedAt !== null) return false;
      r.revokedAt = at;
      return true;
    },
    close: async () => {},
  };
  return { store, get };
}

const request = (token: string) =>
  new Request("http://localhost/credits/balance", { headers: { authorization: `Bearer ${token}` } });
/** The key with its last character changed (a key's last character is random). */
const forge = (key: string) => key.slice(0, -1) + (key.endsWith("A") ? "B" : "A");

// The service tests run with the key cache off (CREDIT_KEY_CACHE_MS=0, to see revocations at once);
// here the cache is on, as in production, where a known key is checked without a promise.
describe("serve: API keys through the key cache (docs/service.md, Secure it)", () => {
  it("answers a cached key at once, and only its own secret passes", async () => {
    const admin = newKey("admin", null, "ops");
    const alice = newKey("user", "alice", null);
    const { store, get } = keyStore([admin.record, alice.record]);
    const auth = await createAuthenticator(serveSettings({}, {}), store, 60_000);

    const first = auth.authenticate(request(alice.key), "10.0.0.1");
    expect(first).toBeInstanceOf(Promise); // not cached yet: the store is asked
    expect(await first).toEqual({ userId: "alice" });
    expect(auth.authenticate(request(alice.key), "10.0.0.1")).toEqual({ userId: "alice" });
    expect(get).toHaveBeenCalledTimes(1);

    // The same id with another secret: known to the cache, refused all the same.
    expect(auth.authenticate(request(forge(alice.key)), "10.0.0.2")).toBeNull();
    expect(await auth.authenticate(request(forge(admin.key)), "10.0.0.2")).toBeNull(); // not cached: asked
    expect(auth.authenticate(request(forge(admin.key)), "10.0.0.2")).toBeNull();
    expect(auth.authenticate(request(admin.key), "10.0.0.1")).toEqual({
      userId: `admin:${admin.record.id}`,
      admin: true,
    });
    expect(get).toHaveBeenCalledTimes(2);

    // An unknown id is asked for once, then refused from the cache.
    const stranger = newKey("admin", null, null);
    expect(await auth.authenticate(request(stranger.key), "10.0.0.3")).toBeNull();
    expect(auth.authenticate(request(stranger.key), "10.0.0.3")).toBeNull();
    expect(get).toHaveBeenCalledTimes(3);
    // Not a key's shape: refused without asking.
    expect(auth.authenticate(request("cmk_nothex_x"), "10.0.0.3")).toBeNull();
    expect(get).toHaveBeenCalledTimes(3);
  });

  it("counts refusals from the cache against the IP: 429 once its burst is spent, for a good key too", async () => {
    const alice = newKey("user", "alice", null);
    const { store } = keyStore([alice.record]);
    const settings = serveSettings({}, { CREDIT_AUTH_FAILURES_BURST: "2" });
    const auth = await createAuthenticator(settings, store, 60_000);
    expect(await auth.authenticate(request(alice.key), "10.0.0.9")).toEqual({ userId: "alice" });
    expect(auth.authenticate(request(forge(alice.key)), "10.0.0.9")).toBeNull();
    expect(auth.authenticate(request(forge(alice.key)), "10.0.0.9")).toBeNull();
    let refused: unknown;
    try {
      auth.authenticate(request(alice.key), "10.0.0.9");
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(HttpError);
    expect((refused as HttpError).status).toBe(429);
    expect(auth.authenticate(request(alice.key), "10.0.0.10")).toEqual({ userId: "alice" }); // another IP
  });

  it("a revoked key works until its cached record is older than the cache time, then never", async () => {
    const alice = newKey("user", "alice", null);
    const { store } = keyStore([alice.record]);
    const auth = await createAuthenticator(serveSettings({}, { CREDIT_AUTH_FAILURES_BURST: "100" }), store, 50);
    expect(await auth.authenticate(request(alice.key), "10.0.0.1")).toEqual({ userId: "alice" });
    expect(await store.revoke(alice.record.id, new Date().toISOString())).toBe(true);
    expect(auth.authenticate(request(alice.key), "10.0.0.1")).toEqual({ userId: "alice" }); // cached
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(await auth.authenticate(request(alice.key), "10.0.0.1")).toBeNull();
    expect(auth.authenticate(request(alice.key), "10.0.0.1")).toBeNull(); // cached as refused
  });
});

describe("serve: the spender of a caller (docs/teams-and-limits.md, API keys per member)", () => {
  it("a member's key spends as its spender; a key created before spenders spends as none", async () => {
    const alice = newKey("user", "acme", null, "alice");
    const old = newKey("user", "acme", null);
    const { store } = keyStore([alice.record, old.record]);
    const auth = await createAuthenticator(serveSettings({}, {}), store, 60_000);
    expect(await auth.authenticate(request(alice.key), "10.0.0.1")).toEqual({ userId: "acme", spender: "alice" });
    expect(auth.authenticate(request(alice.key), "10.0.0.1")).toEqual({ userId: "acme", spender: "alice" }); // cached
    expect(await auth.authenticate(request(old.key), "10.0.0.1")).toEqual({ userId: "acme" });
  });

  it("a JWT's spender claim (CREDIT_JWT_SPENDER_CLAIM, default spender); a malformed one is refused", async () => {
    const KEY = "jwt-secret-of-at-least-32-characters!!";
    const env = { CREDIT_JWT_KEY: KEY, CREDIT_JWT_ISSUER: "i", CREDIT_JWT_AUDIENCE: "a" };
    const jwt = (claims: Record<string, unknown>) =>
      new SignJWT({ sub: "acme", ...claims })
        .setProtectedHeader({ alg: "HS256" })
        .setIssuer("i")
        .setAudience("a")
        .setExpirationTime("10m")
        .sign(new TextEncoder().encode(KEY));
    const { store } = keyStore([]);
    const auth = await createAuthenticator(serveSettings({}, env), store, 0);
    expect(await auth.authenticate(request(await jwt({ spender: "bob" })), "10.0.0.1")).toEqual({
      userId: "acme",
      admin: false,
      spender: "bob",
    });
    expect(await auth.authenticate(request(await jwt({})), "10.0.0.1")).toEqual({ userId: "acme", admin: false });
    for (const bad of ["", 42, "a\nb", "x".repeat(256)]) {
      expect(await auth.authenticate(request(await jwt({ spender: bad })), "10.0.0.2")).toBeNull();
    }
    const member = await createAuthenticator(
      serveSettings({}, { ...env, CREDIT_JWT_SPENDER_CLAIM: "member" }),
      store,
      0,
    );
    expect(await member.authenticate(request(await jwt({ member: "carol", spender: "bob" })), "10.0.0.3")).toEqual({
      userId: "acme",
      admin: false,
      spender: "carol",
    });
  });
});

describe("serve: the key store down (docs/http.md, Errors)", () => {
  it.each([
    ["the driver's own error", () => new Error("Connection terminated unexpectedly")],
    ["a StorageError", () => new StorageError("the store is down")],
  ])("answers 503 STORAGE_ERROR, which clients retry, when the key lookup throws %s", async (_name, error) => {
    const alice = newKey("user", "alice", null);
    const { store, get } = keyStore([alice.record]);
    get.mockImplementation(async () => {
      throw error();
    });
    const settings = serveSettings({}, { CREDIT_METRICS: "off" });
    const auth = await createAuthenticator(settings, store, 0);
    const m = await createCreditManager();
    const server = createServer(serveApp(m, settings, auth, pino({ level: "silent" }), null).listener);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      // Through serve, and through createCreditHandler with the same authenticate hook.
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/credits/balance`;
      const handler = createCreditHandler(m, { authenticate: (r) => auth.authenticate(r, "10.0.0.1") });
      for (const res of [
        await fetch(url, { headers: { authorization: `Bearer ${alice.key}` } }),
        await handler(request(alice.key)),
      ]) {
        expect(res.status).toBe(503);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe("STORAGE_ERROR");
      }
      expect(get).toHaveBeenCalledTimes(2);
    } finally {
      await new Promise((resolve) => server.close(resolve));
      await m.close();
    }
  });
});
