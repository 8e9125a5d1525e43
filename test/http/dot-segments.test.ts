/**
 * Account ids and request paths a URL parser would rewrite (docs/http.md, "Account ids in URLs"):
 * `.` and `..` are no account's id, and a request whose path holds a dot segment — literal or
 * percent-encoded — is refused with 400 instead of being read as the shorter path it would become,
 * and so is a path starting with two separators (`//host/…`), which would be read as a host.
 */
import { createServer, request as httpRequest } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditHandler, toNodeHandler, type Identity } from "../../src/http/index.js";
import { createCreditManager, ValidationError, type CreditManager } from "../../src/index.js";
import { listen, type Running } from "./servers.js";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

/** A GET sent with its path as written (fetch would remove the dot segments before sending). */
function rawGet(base: string, path: string, token: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(base);
    const options = { hostname, port, path, headers: { authorization: `Bearer ${token}` } };
    const r = httpRequest(options, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    r.on("error", reject);
    r.end();
  });
}

describe("dot segments: an account's URL never becomes the fleet's", () => {
  let m: CreditManager;
  let server: Running;
  const now = Date.now();
  const range = `from=${new Date(now - 86_400_000).toISOString()}&to=${new Date(now + 60_000).toISOString()}&groupBy=account`;

  beforeAll(async () => {
    m = await createCreditManager();
    await m.credits.addCredits("alice", 100);
    await m.credits.deductCredits("alice", 7);
    await m.credits.addCredits("a..b", 5);
    server = await listen(createServer(toNodeHandler(createCreditHandler(m, { authenticate }))));
  });
  afterAll(async () => {
    await server.close();
    await m.close();
  });

  it('refuses "." and ".." as account ids with a ValidationError, and changes nothing', async () => {
    for (const id of [".", ".."]) {
      const error = await m.credits.addCredits(id, 10).then(
        () => null,
        (e: unknown) => e,
      );
      expect(error, id).toBeInstanceOf(ValidationError);
      expect((error as Error).message).toMatch(/userId must not be "\." or "\.\."/);
    }
    // Ids that merely hold dots are ids like any other.
    expect((await m.credits.getUserCreditsInfo("a..b")).balance).toBe(5);
    expect((await m.credits.addCredits("...", 1)).amount).toBe(1);
  });

  it("answers 400 to a path with a dot segment, literal or percent-encoded, never the fleet's usage", async () => {
    // The admin path a host builds for an account from its id: with ".." it named the fleet.
    const fleet = await rawGet(server.url, `/admin/credits/usage?${range}`, "admin:ops");
    expect(fleet.status).toBe(200);
    expect(fleet.body).toContain("alice");
    for (const dots of ["%2E%2E", "%2e%2e", "..", ".%2E", "%2E.", "%2E", "."]) {
      for (const route of ["usage", "usage.csv"]) {
        const r = await rawGet(server.url, `/admin/credits/users/${dots}/${route}?${range}`, "admin:ops");
        expect(r.status, `${dots}/${route}`).toBe(400);
        expect(JSON.parse(r.body).error).toMatchObject({
          code: "VALIDATION_ERROR",
          message: expect.stringMatching(/dot segment/),
        });
        expect(r.body).not.toContain("alice");
      }
    }
    // A backslash is a path separator to a URL parser too.
    const slashed = await rawGet(server.url, `/admin/credits/users/alice/..\\..\\usage?${range}`, "admin:ops");
    expect(slashed.status).toBe(400);
    // An account whose id holds dots is still reached by its own path.
    const dotted = await rawGet(server.url, `/admin/credits/users/a..b/balance`, "admin:ops");
    expect(dotted.status).toBe(200);
  });

  it("answers 400 to a path starting with two separators, which a URL parser reads as a host", async () => {
    // `//x/admin/…` was answered as `/admin/…`: a proxy forwarding only `/credits/*` let it through.
    for (const start of ["//x", "/\\x"]) {
      const r = await rawGet(server.url, `${start}/admin/credits/usage?${range}`, "admin:ops");
      expect(r.status, start).toBe(400);
      expect(JSON.parse(r.body).error).toMatchObject({
        code: "VALIDATION_ERROR",
        message: expect.stringMatching(/two slashes/),
      });
    }
    // Node's parser refuses a target that does not start with "/" before the handler sees it.
    for (const start of ["\\\\x", "\\/x"]) {
      const r = await rawGet(server.url, `${start}/admin/credits/usage?${range}`, "admin:ops");
      expect(r.status, start).toBe(400);
      expect(r.body).not.toContain("alice");
    }
  });
});
