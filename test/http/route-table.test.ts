import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../../src/index.js";
import { createCreditHandler } from "../../src/http/index.js";

/** `METHOD /path` of every row of docs/http.md's route table, the query string dropped. */
function documentedRoutes(): string[] {
  const text = readFileSync(new URL("../../docs/http.md", import.meta.url), "utf8");
  const lines = text.split("\n");
  const start = lines.findIndex((l) => /^\| method \| path \| who \| what \|$/.test(l));
  expect(start, "docs/http.md has a route table").toBeGreaterThanOrEqual(0);
  const out: string[] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith("|")) break;
    const [, method, path] = line.split("|").map((c) => c.trim());
    // A row may list several routes under one prefix: `/prefix/` `a`, `b`, `c`.
    const several = /^`([^`?]+\/)` ((?:`[^`]+`(?:, )?)+)$/.exec(path ?? "");
    if (several) {
      for (const [, last] of (several[2] ?? "").matchAll(/`([^`]+)`/g)) out.push(`${method} ${several[1]}${last}`);
      continue;
    }
    const bare = /^`([^`?]+)(\?[^`]*)?`$/.exec(path ?? "");
    expect(bare, `a path in backticks: ${line}`).not.toBeNull();
    out.push(`${method} ${bare![1]}`);
  }
  return out;
}

describe("docs/http.md's route table", () => {
  it("lists every route the handler serves (default options, health on), once, and nothing else", async () => {
    const m = await createCreditManager();
    try {
      const handler = createCreditHandler(m, { authenticate: () => null, health: true });
      const served = handler.routes.map((r) => `${r.method} ${r.fullPath}`);
      const documented = documentedRoutes();
      expect(new Set(documented).size, "no route listed twice").toBe(documented.length);
      expect([...documented].sort()).toEqual([...served].sort());
      // The two the table once lacked.
      expect(documented).toContain("GET /credits/check");
      expect(documented).toContain("GET /admin/credits/users/:userId/check");
    } finally {
      await m.close();
    }
  });
});
