/**
 * A metered handler that throws (issue 50, item 1): the middleware answers for it on every path and
 * host — 500, the hold released, nothing charged, the error logged once — and the process stays up.
 * @see docs/metering.md, "When the handler throws"
 */
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startChildUntil } from "../fixtures/child.js";

const VARIANTS = ["hold", "hold-lease", "price", "price-lease", "fetch"] as const;
const MODES = ["sync", "async", "sync", "async"] as const;

describe("a metered handler that throws, on plain node:http in a process with Node's defaults", () => {
  let child: ChildProcess | undefined;
  let output: () => string;
  let url = "";
  let stderr = "";
  beforeAll(async () => {
    // (The fixture's own path: a default Node process, where an unhandled rejection ends it.)
    ({ child, output } = await startChildUntil(
      join(import.meta.dirname, "..", "fixtures", "metering-throw-server.ts"),
      [],
      "listening",
    ));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    url = `http://127.0.0.1:${/listening (\d+)/.exec(output())?.[1]}`;
  });
  afterAll(() => {
    if (child !== undefined && child.exitCode === null) child.kill("SIGKILL");
  });

  it("answers 500 itself on every path (store or lease block, hold or fixed price, node or Fetch), releases the hold, charges nothing, logs each once", async () => {
    const payers = VARIANTS.map((v) => `${v}-payer`);
    await (await fetch(`${url}/setup`, { headers: { "x-payers": payers.join(",") } })).text();
    // A fixed-price lease opens its block with a charge: one request that succeeds (5 credits) first,
    // so the throws after it take both paths (the block open, and not).
    const ok = await fetch(`${url}/price-lease/api/chat`, {
      method: "POST",
      headers: { "x-payer": "price-lease-payer", "x-throw": "no" },
    });
    expect([ok.status, await ok.text(), ok.headers.get("x-credits-deducted")]).toEqual([200, "ok", "5"]);
    const answers: { variant: string; mode: string; status: number; code: unknown; deducted: string | null }[] = [];
    for (const variant of VARIANTS) {
      for (const mode of MODES) {
        let res: Response;
        try {
          res = await fetch(`${url}/${variant}/api/chat`, {
            method: "POST",
            headers: { "x-payer": `${variant}-payer`, "x-throw": mode },
          });
        } catch (error) {
          throw new Error(
            `${variant} (${mode}): no answer, the server process ${child?.exitCode === null ? "is up" : `exited (${child?.exitCode})`}: ${stderr}`,
            { cause: error },
          );
        }
        const body = (await res.json().catch(() => null)) as { error?: { code?: string } } | null;
        answers.push({
          variant,
          mode,
          status: res.status,
          code: body?.error?.code,
          deducted: res.headers.get("x-credits-deducted"),
        });
      }
    }
    expect(answers).toEqual(
      VARIANTS.flatMap((variant) =>
        MODES.map((mode) => ({ variant, mode, status: 500, code: "INTERNAL_ERROR", deducted: "0" })),
      ),
    );
    expect(child?.exitCode).toBeNull();
    const state = (await (await fetch(`${url}/state`, { headers: { "x-payers": payers.join(",") } })).json()) as {
      info: { userId: string; balance: number; reserved: number }[];
      errors: number;
    };
    // Nothing charged, nothing left held (the leases closed and settled their windows).
    expect(state.info.map((i) => [i.userId, i.balance, i.reserved])).toEqual(
      payers.map((p) => [p, p === "price-lease-payer" ? 995 : 1000, 0]),
    );
    // Logged once each, through the manager's logger.
    expect(state.errors).toBe(VARIANTS.length * MODES.length);
    expect(stderr).not.toMatch(/unhandled/i);
    expect(child?.exitCode).toBeNull();
  });
});
