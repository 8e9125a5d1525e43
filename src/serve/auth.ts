import { createPublicKey, type KeyObject } from "node:crypto";
import { LRUCache } from "lru-cache";
import { HttpError, type Identity } from "../http/router.js";
import { TokenBuckets } from "../http/rate-limit.js";
import { keyIdOf, keyMatches, type ApiKeyRecord, type KeyStore } from "./keys.js";
import type { ServeSettings } from "./settings.js";
import { SpenderId } from "../core/models/limits.js";
import { CreditError, StorageError } from "../core/errors.js";

/**
 * Who is calling `serve` (docs/service.md, "Secure it"): `Authorization: Bearer <token>` with an
 * API key (`cmk_…`, `credit-management keys create`) or, when configured, a JWT verified by `jose`
 * (signature, expiry, issuer and audience). Failed attempts are rate-limited per client IP.
 */
export interface Authenticator {
  /**
   * The caller, or null (no or a bad credential: counted against `ip`); 429 while `ip` is blocked.
   * Answered at once (no promise) for an API key whose record is cached.
   */
  authenticate(request: Request, ip: string): Identity | null | Promise<Identity | null>;
  /**
   * Whether the admin key with id `id` is still there and not revoked, through the same cache as
   * `authenticate` (a console session made from a key ends with it: docs/console.md).
   */
  adminKeyLive(id: string): boolean | Promise<boolean>;
}

type Verify = (token: string) => Promise<Record<string, unknown>>;

/** The public-key algorithms a JWT may use with a PEM key or a JWKS (each key its own type's only). */
const ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"];

async function jwtVerifier(s: ServeSettings): Promise<Verify | null> {
  if (!s.jwt) return null;
  const jose = await import("jose");
  const options = { issuer: s.CREDIT_JWT_ISSUER, audience: s.CREDIT_JWT_AUDIENCE, clockTolerance: 5 };
  // The algorithms each key form allows (docs/service.md, "Secure it"): a token never chooses.
  if (s.CREDIT_JWT_JWKS_URL !== undefined) {
    const jwks = jose.createRemoteJWKSet(new URL(s.CREDIT_JWT_JWKS_URL));
    return async (token) => (await jose.jwtVerify(token, jwks, { ...options, algorithms: ASYMMETRIC })).payload;
  }
  const text = s.CREDIT_JWT_KEY as string;
  let key: KeyObject | Uint8Array;
  let algorithms: string[];
  if (text.includes("-----BEGIN")) {
    key = createPublicKey(text.replace(/\\n/g, "\n"));
    algorithms = ASYMMETRIC;
  } else {
    key = new TextEncoder().encode(text);
    algorithms = ["HS256", "HS384", "HS512"];
  }
  return async (token) => (await jose.jwtVerify(token, key, { ...options, algorithms })).payload;
}

/** Whether a role claim (a string, space-separated scopes, or an array) holds `value`. */
function claimHas(claim: unknown, value: string): boolean {
  if (typeof claim === "string") return claim === value || claim.split(" ").includes(value);
  return Array.isArray(claim) && claim.includes(value);
}

export async function createAuthenticator(s: ServeSettings, keys: KeyStore, keyCacheMs = 5000): Promise<Authenticator> {
  const verifyJwt = await jwtVerifier(s);
  // A token bucket per IP for failed authentications: an IP whose bucket is empty gets 429 for
  // every credential it sends (a good one too: it must not learn which guess was right) until a
  // token is back.
  const limiter = new TokenBuckets(s.CREDIT_AUTH_FAILURES_BURST, s.CREDIT_AUTH_FAILURES_PER_MINUTE);
  // Records by key id, for a few seconds: a request does not wait on the store to know its caller.
  // A revoked key stops working within `keyCacheMs` (docs/service.md). Kept: its hash as bytes and
  // the identity it grants, so a cached key is checked without a promise or a hex decode.
  const cache = keyCacheMs > 0 ? new LRUCache<string, CachedKey | "none">({ max: 10_000, ttl: keyCacheMs }) : null;
  /** A key's identity from the cache, or null; undefined when its id is not cached. */
  const cachedKey = (id: string, token: string): Identity | null | undefined => {
    const hit = cache?.get(id);
    return hit === undefined ? undefined : granted(hit, token);
  };
  /**
   * A key's identity from the store (the record then cached), or null. The store failing is a
   * `StorageError` (503, which clients retry: docs/http.md, "Errors"), as the credit store's
   * failures are: the key store speaks its driver's errors.
   */
  const load = async (id: string): Promise<CachedKey | "none"> => {
    let r: ApiKeyRecord | null;
    try {
      r = await keys.get(id);
    } catch (error) {
      if (error instanceof CreditError) throw error;
      throw new StorageError("[credit-management] serve: the API key store could not be read", error);
    }
    const entry = r === null || r.revokedAt !== null ? "none" : cachedEntry(r);
    cache?.set(id, entry);
    return entry;
  };
  const storedKey = async (id: string, token: string): Promise<Identity | null> => granted(await load(id), token);
  const verifiedJwt = async (token: string): Promise<Identity | null> => {
    if (verifyJwt === null) return null;
    let claims: Record<string, unknown>;
    try {
      claims = await verifyJwt(token);
    } catch {
      return null; // bad signature, expired, wrong issuer or audience, malformed
    }
    const userId = claims[s.CREDIT_JWT_USER_CLAIM];
    if (typeof userId !== "string" || userId === "" || userId.length > 256) return null;
    const identity: Identity = { userId, admin: claimHas(claims[s.CREDIT_JWT_ROLE_CLAIM], s.CREDIT_JWT_ADMIN_VALUE) };
    // The spender claim (docs/service.md, "Secure it"): a token that has one spends as it; one that
    // is not a spender id is refused, not read as none (its holder would spend under no cap).
    const spender = claims[s.CREDIT_JWT_SPENDER_CLAIM];
    if (spender !== undefined) {
      if (!SpenderId.safeParse(spender).success) return null;
      identity.spender = spender as string;
    }
    return identity;
  };
  const counted = (identity: Identity | null, ip: string) => {
    if (identity === null) limiter.take(ip);
    return identity;
  };
  const live = (entry: CachedKey | "none") => entry !== "none" && entry.identity.admin === true;
  return {
    adminKeyLive(id) {
      const hit = cache?.get(id);
      if (hit !== undefined) return live(hit);
      return load(id).then(live);
    },
    authenticate(request, ip) {
      const header = request.headers.get("authorization");
      const wait = limiter.waitFor(ip);
      if (wait > 0 && header !== null) {
        throw new HttpError(429, "TOO_MANY_FAILED_AUTHENTICATIONS", "Too many failed authentications.", undefined, {
          "retry-after": String(wait),
        });
      }
      if (header === null) return null;
      const m = /^Bearer ([!-~]{1,8192})$/i.exec(header.trim());
      if (m === null) return counted(null, ip);
      const token = m[1] as string;
      if (!token.startsWith("cmk_")) return verifiedJwt(token).then((identity) => counted(identity, ip));
      const id = keyIdOf(token);
      if (id === null) return counted(null, ip);
      const known = cachedKey(id, token);
      if (known !== undefined) return counted(known, ip);
      return storedKey(id, token).then((identity) => counted(identity, ip));
    },
  };
}

/** A cached API key: its hash as bytes and the identity it grants (one object, reused). */
interface CachedKey {
  digest: Buffer;
  identity: Identity;
}

/** The identity `token` proves against a key's entry: its own if the secret hashes to the entry's. */
const granted = (entry: CachedKey | "none", token: string): Identity | null =>
  entry !== "none" && keyMatches(entry.digest, token) ? entry.identity : null;

function cachedEntry(r: ApiKeyRecord): CachedKey {
  const identity: Identity =
    r.role === "admin"
      ? { userId: `admin:${r.id}`, admin: true }
      : r.spender === null
        ? { userId: r.userId as string }
        : { userId: r.userId as string, spender: r.spender };
  return { digest: Buffer.from(r.hash, "hex"), identity: Object.freeze(identity) };
}
