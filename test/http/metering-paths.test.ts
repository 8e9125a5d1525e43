/**
 * Which paths the metering middlewares meter (src/modules/metering/routes-paths.ts), table by table: a
 * security boundary, so every odd spelling of a metered path must stay metered and a skip holds
 * only when every reading of the path is skipped (docs/metering.md, "Which paths are metered").
 */
import { describe, expect, it } from "vitest";
import { ANY_CASE, ANY_SLASH, nodePathOf, pathMatcher, pathnameOf } from "../../src/modules/metering/routes-paths.js";

const STRICT = 0; // a router that tells case and a trailing slash apart (node:http, Hono)
const LOOSE = ANY_CASE | ANY_SLASH; // Express's defaults

const { applies } = pathMatcher({ pathPrefix: "/api", skipPaths: ["/api/health", /^\/api\/public\//] });

describe("path matching: prefix /api, skip /api/health and /^\\/api\\/public\\//", () => {
  // [path as the router received it, what the router ignores, metered?, why]
  const table: [string, number, boolean, string][] = [
    ["/api/chat", STRICT, true, "plain path under the prefix"],
    ["/api", STRICT, true, "the prefix itself"],
    ["/api/", STRICT, true, "the prefix with a trailing slash"],
    ["/apix/chat", STRICT, false, "a sibling of the prefix is not under it"],
    ["/other", STRICT, false, "outside the prefix"],
    ["/", STRICT, false, "the root"],
    ["/API/chat", STRICT, true, "the prefix is compared without case"],
    ["/Api/Chat", LOOSE, true, "mixed case under the prefix"],
    ["/api/health", STRICT, false, "an exact skip path"],
    ["/api/health", LOOSE, false, "an exact skip path, loose router"],
    ["/api/health/", STRICT, true, "trailing slash on a strict router: another route, metered"],
    ["/api/health/", LOOSE, false, "trailing slash on a router that ignores it: skipped"],
    ["/api/health//", LOOSE, true, "only one trailing slash is ignored"],
    ["/api/HEALTH", STRICT, true, "case on a case-sensitive router: another route, metered"],
    ["/api/HEALTH", LOOSE, false, "case on a router that ignores it: skipped"],
    ["/API/PUBLIC/x", STRICT, true, "a RegExp skip is case-sensitive on a strict router"],
    ["/API/PUBLIC/x", LOOSE, false, "a RegExp skip is tried lower-cased on a loose router"],
    ["/api/public/x", STRICT, false, "a RegExp skip"],
    // dot segments
    ["/api/health/../chat", STRICT, true, ".. out of a skip path into a metered one"],
    ["/api/public/../chat", STRICT, true, ".. out of a skipped RegExp"],
    ["/public/../api/chat", STRICT, true, ".. into the prefix"],
    ["/x/../../api/chat", STRICT, true, ".. above the root into the prefix"],
    ["/api/./health", STRICT, true, "a . segment: as sent it is not the skip path"],
    ["/api/chat/../health", STRICT, true, "over-metered: as sent it is a metered path"],
    ["/api/public/%2e%2e/chat", STRICT, true, "encoded .. resolved after decoding"],
    ["/api/public/%2E%2E/chat", STRICT, true, "encoded .. in upper case"],
    // percent-encoding
    ["/%61pi/chat", STRICT, true, "an encoded letter of the prefix"],
    ["/%41PI/chat", STRICT, true, "an encoded upper-case letter of the prefix"],
    ["/api/%68ealth", STRICT, true, "an encoded letter of a skip path: as sent it is not skipped"],
    ["/%2561pi/chat", STRICT, true, "double encoding (%25) is decoded too"],
    ["/api%2Fchat", STRICT, true, "an encoded slash: decoded it is under the prefix"],
    ["/api%2fchat", STRICT, true, "an encoded slash in lower case"],
    ["/api%2Fhealth", STRICT, false, "every reading is outside the prefix or skipped"],
    ["%2Fapi%2Fchat", STRICT, true, "an encoded leading slash"],
    ["/api/%ZZ", STRICT, true, "an invalid escape stays as it is"],
    ["/api/%C3%A9", STRICT, true, "encoded UTF-8 under the prefix"],
    ["/%C3%A1pi/chat", STRICT, false, "encoded á is not a"],
    // slashes
    ["//api/chat", STRICT, true, "a doubled leading slash"],
    ["/api//chat", STRICT, true, "a doubled inner slash"],
    ["/api//health", STRICT, true, "a doubled slash in a skip path: not the skip path as sent"],
    ["/api\\chat", STRICT, true, "a backslash, read as / by Fetch hosts"],
    ["/api\\health", STRICT, false, "a backslash into a skip path: every reading is skipped or outside"],
    // absolute-form targets
    ["http://host/api/chat", STRICT, true, "an absolute-form request target"],
    ["http://host/other", STRICT, false, "an absolute-form target outside the prefix"],
    // unicode
    ["/api/ünïcödé", STRICT, true, "non-ASCII under the prefix"],
    ["/ápi/chat", STRICT, false, "á is not a"],
    ["/api/health\u0000", STRICT, true, "a control character makes another path"],
  ];
  it.each(table)("%j (router %i) metered: %s — %s", (path, router, metered) => {
    expect(applies(path, router)).toBe(metered);
  });

  it("a `g` RegExp answers the same on every call", () => {
    const m = pathMatcher({ pathPrefix: "/", skipPaths: [/^\/api\/health$/g] });
    for (let i = 0; i < 3; i++) expect(m.applies("/api/health", STRICT)).toBe(false);
  });
});

describe("path matching: the prefix option", () => {
  const table: [string | undefined, string, boolean][] = [
    [undefined, "/anything", true],
    ["/", "/anything/at/all", true],
    ["/API/", "/api/chat", true],
    ["api", "/api/chat", true],
    ["/%61pi", "/api/chat", true],
    ["/api", "/apichat", false],
    ["/v1/api", "/v1/api/x", true],
    ["/v1/api", "/v1/x", false],
    // Unicode case folding: the Kelvin sign folds to k, the long s to s.
    ["/k", "/\u212A/x", true],
    ["/s", "/\u017F/x", true],
  ];
  it.each(table)("prefix %j: %j metered %s", (pathPrefix, path, metered) => {
    expect(pathMatcher({ pathPrefix }).applies(path, STRICT)).toBe(metered);
  });
});

describe("path matching: a skip path folds ASCII letters only", () => {
  it("the Kelvin sign does not match k in a skip path, even ignoring case (never skips more than a router routes)", () => {
    const m = pathMatcher({ skipPaths: ["/api/k"] });
    expect(m.applies("/api/K", ANY_CASE)).toBe(false);
    expect(m.applies("/api/\u212A", ANY_CASE)).toBe(true);
  });
});

describe("path matching: what the router ignores (routerFor)", () => {
  const app = (caseSensitive: boolean, strict: boolean) => ({
    app: {
      enabled: (name: string) =>
        name === "case sensitive routing" ? caseSensitive : name === "strict routing" ? strict : false,
    },
  });
  it("nothing to skip: nothing matters", () => {
    expect(pathMatcher({}).routerFor(app(false, false))).toBe(0);
  });
  it("follows an Express app's settings, else strict", () => {
    const m = pathMatcher({ skipPaths: ["/x"] });
    expect(m.routerFor(app(false, false))).toBe(ANY_CASE | ANY_SLASH);
    expect(m.routerFor(app(true, false))).toBe(ANY_SLASH);
    expect(m.routerFor(app(false, true))).toBe(ANY_CASE);
    expect(m.routerFor({})).toBe(0);
    expect(m.routerFor(null)).toBe(0);
  });
  it("the options override the app", () => {
    expect(
      pathMatcher({ skipPaths: ["/x"], caseSensitive: true, ignoreTrailingSlash: false }).routerFor(app(false, false)),
    ).toBe(0);
    expect(pathMatcher({ skipPaths: ["/x"], caseSensitive: false, ignoreTrailingSlash: true }).routerFor({})).toBe(
      ANY_CASE | ANY_SLASH,
    );
  });
  it("rejects malformed options when made", () => {
    expect(() => pathMatcher({ skipPaths: "/x" as unknown as string[] })).toThrow(/skipPaths/);
    expect(() => pathMatcher({ skipPaths: [42 as unknown as string] })).toThrow(/skipPaths/);
    expect(() => pathMatcher({ caseSensitive: "no" as unknown as boolean })).toThrow(/caseSensitive/);
    expect(() => pathMatcher({ ignoreTrailingSlash: 1 as unknown as boolean })).toThrow(/ignoreTrailingSlash/);
  });
});

describe("the path of a request", () => {
  const fetchTable: [string, string][] = [
    ["http://h/api/chat", "/api/chat"],
    ["https://h:8443/api/chat?x=1", "/api/chat"],
    ["http://h/api/health?skip=1#f", "/api/health"],
    ["http://h/a#b?c", "/a"],
    ["http://h", "/"],
    ["http://h?x=1", "/"],
    ["http://h/api%2Fchat", "/api%2Fchat"],
    ["ws://h/api/x", "/api/x"],
  ];
  it.each(fetchTable)("Fetch %j → %j", (url, path) => {
    expect(pathnameOf(url)).toBe(path);
  });
  const nodeTable: [{ url?: string; originalUrl?: string }, string][] = [
    [{ url: "/api/chat?x=1" }, "/api/chat"],
    [{ url: "/api/health?" }, "/api/health"],
    [{ url: "/chat", originalUrl: "/api/chat?x" }, "/api/chat"],
    [{}, "/"],
    [{ url: "/a?b?c" }, "/a"],
  ];
  it.each(nodeTable)("node %j → %j", (req, path) => {
    expect(nodePathOf(req)).toBe(path);
  });
  it("a query never changes whether a path is metered", () => {
    expect(applies(nodePathOf({ url: "/api/health?x=/../chat" }), STRICT)).toBe(false);
    expect(applies(pathnameOf("http://h/api/health?x=/../chat"), STRICT)).toBe(false);
    expect(applies(nodePathOf({ url: "/api/chat?to=/api/health" }), STRICT)).toBe(true);
  });
});
