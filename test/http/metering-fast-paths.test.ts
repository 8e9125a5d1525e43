/**
 * The node middleware's per-request shortcuts (issue 62, target 5; docs/metering.md) decide as the
 * long way does: a path as sent under the prefix is metered without working out its other readings
 * when there are no skip paths, and the charged credits' header is written in lower case.
 */
import { createServer, request as httpRequest, type ServerResponse } from "node:http";
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../../src/index.js";
import { creditMeteringMiddleware } from "../../src/http/index.js";
import { pathMatcher } from "../../src/http/metering/paths.js";
import { listen } from "./servers.js";

describe("a metered path without skip paths", () => {
  // A skip path that matches nothing: the same meaning as none, but every reading is worked out.
  const never = /(?!)/;
  const paths = [
    "/api",
    "/api/",
    "/api/ping",
    "/API/Ping",
    "/Api/x/../y",
    "/api/%2e%2e/admin",
    "/api//x",
    "/api\\x",
    "/apix",
    "/ap",
    "/%61pi/ping",
    "/x/../api/ping",
    "//api/ping",
    "/a%70i",
    "/other",
    "/",
    "",
    "/api/é",
    "/ÀPI/x",
    "http://h/api/x",
    "/api?x=1",
  ];
  for (const pathPrefix of ["/api", "/API/", "/", "/ap%69", "/é"])
    it(`is decided as with every reading worked out (prefix ${pathPrefix})`, () => {
      const fast = pathMatcher({ pathPrefix });
      const full = pathMatcher({ pathPrefix, skipPaths: [never] });
      for (const path of paths)
        for (const router of [0, 1, 2, 3]) {
          expect([path, router, fast.applies(path, router)]).toEqual([path, router, full.applies(path, router)]);
        }
    });
});

describe("the charged credits' header on node", () => {
  it("is written in lower case, the default name and one set by the options", async () => {
    const manager = await createCreditManager();
    await manager.credits.addCredits("u", 100);
    const lease = manager.credits.leases({ size: 50 });
    const authenticate = () => ({ userId: "u" });
    const body = (res: ServerResponse) => res.end("{}");
    const leased = creditMeteringMiddleware({
      credits: manager.credits,
      pathPrefix: "/l",
      price: 3,
      lease,
      authenticate,
    });
    const named = creditMeteringMiddleware({
      credits: manager.credits,
      pathPrefix: "/n",
      price: 2,
      deductedHeader: "X-Charged",
      authenticate,
    });
    const server = await listen(
      createServer((req, res) => (req.url?.startsWith("/l") ? leased : named)(req, res, () => body(res))),
    );
    const raw = (path: string) =>
      new Promise<string[]>((resolve, reject) => {
        httpRequest(server.url + path, (res) => {
          res.resume();
          res.on("end", () => resolve(res.rawHeaders));
        })
          .on("error", reject)
          .end();
      });
    try {
      await lease.charge("u", 1); // opens the user's block, so the next charge is served from it
      const l = await raw("/l/x");
      expect(l[l.indexOf("x-credits-deducted") + 1]).toBe("3");
      expect(l).not.toContain("X-Credits-Deducted");
      const n = await raw("/n/x");
      expect(n[n.indexOf("x-charged") + 1]).toBe("2");
      expect(n).not.toContain("X-Charged");
      await lease.close();
      expect((await manager.credits.getUserCreditsInfo("u")).balance).toBe(100 - 1 - 3 - 2);
    } finally {
      await server.close();
      await manager.close();
    }
  });
});
