import { createHmac } from "node:crypto";
import {
  CustomerTokenOptions,
  CustomerTokenSettings,
  parse,
  UserId,
  type CustomerTokenOptions as CustomerTokenInput,
} from "../../models-entry.js";
import { parseConfig } from "../../core/models/parse.js";

/** What `credits.customerToken` returns. @public */
export interface CustomerToken {
  /** The signed token (a JWT): send it as `Authorization: Bearer <token>`, or in the customer page's link. */
  token: string;
  /** When it stops working. */
  expiresAt: Date;
}

/** What a valid customer token grants: read access to one account (docs/usage.md, "For your customers"). @public */
export interface CustomerGrant {
  /** The account the token reads. */
  account: string;
  /** Set: only this spender's usage is readable. */
  spender?: string;
  /** When the token stops working. */
  expiresAt: Date;
}

/** The audience and issuer of customer tokens: a customer token and nothing else. */
export const CUSTOMER_AUDIENCE = "credit-management:customer";
const ISSUER = "credit-management";
/** The scope claim every customer token carries (documentation for whoever decodes one). */
const SCOPE = "credits:read";

/**
 * The signing key of a secret: derived, never the secret itself, so a secret also used elsewhere
 * (serve's `CREDIT_JWT_KEY`, the console's) cannot make a customer token pass there, nor theirs here.
 */
const keyOf = (secret: string) =>
  new Uint8Array(createHmac("sha256", secret).update("credit-management customer token v1").digest());

/**
 * Issues and checks customer tokens (docs/usage.md, "For your customers"): HS256 JWTs signed with
 * a key derived from the configured secret, audience `credit-management:customer`, subject the
 * account, lifetime at most a day.
 */
export class CustomerTokens {
  private readonly keys: Uint8Array[];
  constructor(
    settings: CustomerTokenSettings,
    private readonly clock: () => Date,
  ) {
    const s = parseConfig(CustomerTokenSettings, settings, "customerTokens");
    this.keys = (typeof s.secret === "string" ? [s.secret] : s.secret).map(keyOf);
  }

  async issue(account: string, options: CustomerTokenInput): Promise<CustomerToken> {
    const user = parse(UserId, account, "account");
    const o = parse(CustomerTokenOptions, options, "options");
    const { SignJWT } = await import("jose");
    const now = Math.floor(this.clock().getTime() / 1000);
    const exp = now + o.ttlSeconds;
    const token = await new SignJWT({ scope: SCOPE, ...(o.spender === undefined ? {} : { spender: o.spender }) })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .setIssuer(ISSUER)
      .setAudience(CUSTOMER_AUDIENCE)
      .setSubject(user)
      .setIssuedAt(now)
      .setExpirationTime(exp)
      .sign(this.keys[0] as Uint8Array);
    return { token, expiresAt: new Date(exp * 1000) };
  }

  /** The grant of a valid token; null for anything else (bad signature, expired, another kind of token). */
  async verify(token: string): Promise<CustomerGrant | null> {
    if (typeof token !== "string" || token.length > 8192) return null;
    const { jwtVerify } = await import("jose");
    for (const key of this.keys) {
      try {
        const { payload } = await jwtVerify(token, key, {
          algorithms: ["HS256"],
          issuer: ISSUER,
          audience: CUSTOMER_AUDIENCE,
          currentDate: this.clock(),
          clockTolerance: 5,
          requiredClaims: ["sub", "exp"],
        });
        const account = UserId.safeParse(payload.sub);
        if (!account.success || typeof payload.exp !== "number") return null;
        const spender = payload.spender;
        if (spender !== undefined && (typeof spender !== "string" || spender === "" || spender.length > 255))
          return null;
        return {
          account: account.data,
          ...(spender === undefined ? {} : { spender }),
          expiresAt: new Date(payload.exp * 1000),
        };
      } catch {
        // the next key (rotation), or not ours
      }
    }
    return null;
  }
}

/**
 * Whether `token` claims to be a customer token (its audience, read without checking anything):
 * only such a token is checked as one, and one that claims it but fails is refused, never tried as
 * another kind of credential.
 */
export function claimsCustomerAudience(token: string): boolean {
  const dot = token.indexOf(".");
  const end = token.indexOf(".", dot + 1);
  if (dot < 0 || end < 0 || end - dot > 4096) return false;
  try {
    const payload = JSON.parse(Buffer.from(token.slice(dot + 1, end), "base64url").toString("utf8")) as {
      aud?: unknown;
    };
    return payload.aud === CUSTOMER_AUDIENCE || (Array.isArray(payload.aud) && payload.aud.includes(CUSTOMER_AUDIENCE));
  } catch {
    return false;
  }
}
