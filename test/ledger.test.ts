import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, renameSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { createCreditManager, InMemoryCache, InMemoryDbManager, type Cache } from "../src/index.js";

const tmp = () => mkdtempSync(join(tmpdir(), "cm-ledger-"));

describe("ledger", () => {
  it("after close() the JSONL file holds one parseable line for every ledger entry in the store", async () => {
    const file = join(tmp(), "nested", "ledger.jsonl");
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, ledger: { filePath: file } });
    const users = ["a", "b", "c"];
    for (const u of users) {
      await m.credits.addCredits(u, 50, { correlationId: `corr-${u}` });
      const r = await m.credits.reserveCredits(u, 20);
      await m.credits.commitReservedCredits(r.id, { amount: 5 });
      await m.credits.deductCredits(u, 1);
    }
    await m.ledger.logSystem("job finished", { expired: 0 });
    await m.ledger.logError("payment failed", { reason: "card declined" }, { userId: "a" });
    await m.close();

    const lines = readFileSync(file, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const journal = (await Promise.all(users.map((u) => db.listJournal(u, { order: "asc", limit: 1000 })))).flat();
    const events = await db.listLedgerEntries({ limit: 1000 });
    expect(lines).toHaveLength(journal.length + events.length);
    const ids = new Set(lines.map((l) => l.id));
    for (const e of journal) expect(ids.has(e.id)).toBe(true);
    for (const e of events) expect(ids.has(e.id)).toBe(true);
    const first = lines.find((l) => l.id === journal[0]?.id);
    expect(first).toMatchObject({ eventType: "transaction", userId: "a", correlationId: "corr-a", message: "add 50" });
    expect(first.details.hash).toBe(journal[0]?.hash);
    expect(lines.find((l) => l.eventType === "error")).toMatchObject({ userId: "a", message: "payment failed" });
    expect((await m.ledger.getEntries({ eventType: "system" }))[0]?.message).toBe("job finished");
  });

  it("writes text outside ASCII byte-exactly (UTF-8), and each line's details are the stored entry", async () => {
    const file = join(tmp(), "ledger.jsonl");
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, ledger: { filePath: file } });
    await m.credits.addCredits("ü-ser ☕", 10, {
      description: "café 😀 \u2028",
      metadata: { note: "naïve ✓", pair: "x\ud83d\ude00y" },
    });
    await m.credits.deductCredits("ü-ser ☕", 3, { correlationId: "c-é", metadata: { emoji: "🚀" } });
    await m.close();
    const text = readFileSync(file, "utf8");
    expect(text).not.toContain("\ufffd"); // nothing was mis-encoded
    const lines = text
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { details: unknown });
    const journal = await db.listJournal("ü-ser ☕", { order: "asc", limit: 10 });
    // The line is the entry's hashed text: spender and feature are in it only when the entry names
    // them (docs/teams-and-limits.md), a cost basis and an addition's source only when it has one
    // (docs/revenue.md), and a reversal's charge, an entry's occurredAt, its take-back and payment, key id and grant
    // scope, a later grant's start and a unit only when set (docs/concepts.md, docs/units.md), as in the hash; the hash version is not in the hashed
    // text (the fields version 2 adds are), so not in the line.
    const stored = journal.map((e) => {
      const {
        spender,
        feature,
        costBasis,
        source,
        reverses,
        occurredAt,
        takeBack,
        paymentId,
        shortfall,
        hashVersion: _hashVersion,
        keyId,
        scope,
        effectiveAt,
        unit,
        ...rest
      } = JSON.parse(JSON.stringify(e)) as Record<string, unknown>;
      return {
        ...rest,
        ...(spender === null ? {} : { spender }),
        ...(feature === null ? {} : { feature }),
        ...(costBasis === null ? {} : { costBasis }),
        ...(source === null ? {} : { source }),
        ...(reverses === null ? {} : { reverses }),
        ...(occurredAt === null ? {} : { occurredAt }),
        ...(takeBack === null ? {} : { takeBack }),
        ...(paymentId === null ? {} : { paymentId }),
        ...(shortfall === null ? {} : { shortfall }),
        ...(keyId === null ? {} : { keyId }),
        ...(scope === null ? {} : { scope }),
        ...(effectiveAt === null ? {} : { effectiveAt }),
        ...(unit === null ? {} : { unit }),
      };
    });
    expect(lines.map((l) => l.details)).toEqual(stored);
  });

  it("a failing file never fails a credit operation; it is counted", async () => {
    // A path below a regular file can never be created.
    const blocker = join(tmp(), "file");
    const m0 = await createCreditManager({ ledger: { filePath: blocker } });
    await m0.credits.addCredits("x", 1);
    await m0.close();
    const m = await createCreditManager({ ledger: { filePath: join(blocker, "ledger.jsonl") } });
    await m.credits.addCredits("u", 10);
    await m.credits.deductCredits("u", 3);
    await new Promise((r) => setTimeout(r, 50));
    await m.ledger.flush();
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 7 });
    expect(m.ledger.stats.fileErrors).toBeGreaterThan(0);
    expect(m.ledger.stats.lastFileError).toEqual(expect.any(String));
    await m.close();
  });

  // reason: /proc exists only on Linux; elsewhere nothing to show
  it.skipIf(process.platform !== "linux")(
    "a folder that cannot be made (under /proc) is a counted file error, not a hang",
    async () => {
      // Node's mkdir { recursive: true } loops for ever on such a path (ENOENT, EEXIST, ENOENT …).
      const m = await createCreditManager({ ledger: { filePath: `/proc/no-such-${process.pid}/sub/ledger.jsonl` } });
      await m.credits.addCredits("u", 10);
      await m.ledger.flush();
      expect(m.ledger.stats.fileErrors).toBeGreaterThan(0);
      expect(m.ledger.stats.lastFileError).toMatch(/ENOENT/);
      expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 10 });
      await m.close();
    },
    10_000,
  );

  // The lines of the last turn are written on the process's "exit" event, however it leaves.
  it.each(["throw", "reject", "exit"])(
    "a process that leaves in the same turn (%s) still writes the lines of what it reported done",
    (how) => {
      const file = join(tmp(), "ledger.jsonl");
      const fixture = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "ledger-exit.ts");
      const child = spawnSync(process.execPath, ["--import", "tsx", fixture, file, how], { encoding: "utf8" });
      expect(child.status, child.stderr).toBe(how === "exit" ? 3 : 1);
      const ids = JSON.parse(child.stdout) as string[];
      const lines = readFileSync(file, "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      expect(lines.map((l) => [l.id, l.message])).toEqual([
        [ids[0], "add 10"],
        [ids[1], "deduct 3"],
      ]);
    },
  );

  it("a process with a ledger file it never closed, and no line to write, ends by itself", () => {
    const file = join(tmp(), "ledger.jsonl");
    const fixture = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "ledger-exit.ts");
    // The writer thread must not keep the process: before the fix its port did, for good.
    const child = spawnSync(process.execPath, ["--import", "tsx", fixture, file, "idle"], {
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(child.signal, "the process had to be killed: something kept it alive").toBeNull();
    expect(child.status, child.stderr).toBe(0);
    expect(JSON.parse(child.stdout)).toMatchObject({ userId: "u", balance: 0 });
  });

  it("reopen() continues in a new file after rotation", async () => {
    const dir = tmp();
    const file = join(dir, "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    await m.credits.addCredits("u", 1);
    await m.ledger.flush();
    renameSync(file, join(dir, "ledger.1.jsonl"));
    await m.ledger.reopen();
    await m.credits.addCredits("u", 2);
    await m.close();
    expect(readFileSync(join(dir, "ledger.1.jsonl"), "utf8").trim().split("\n")).toHaveLength(1);
    expect(existsSync(file)).toBe(true);
    expect(JSON.parse(readFileSync(file, "utf8").trim()).message).toBe("add 2");
  });
});

describe("audit", () => {
  it("detects an altered entry, a broken chain and a stored balance that the journal does not explain", async () => {
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db });
    await m.credits.addCredits("u", 10);
    await m.credits.deductCredits("u", 4);
    await m.credits.addCredits("u", 3);
    expect(await m.credits.audit("u")).toMatchObject({ ok: true, balance: 9, entries: 3 });

    // Reach into the store as an attacker with database access would.
    const internal = db.user("u");
    if (internal?.account == null) throw new Error("no user");
    const stored = internal.journal[1]!;
    internal.journal[1] = { ...stored, amount: 1 };
    const altered = await m.credits.audit("u");
    expect(altered.ok).toBe(false);
    expect(altered.problems.join("\n")).toMatch(/entry 2 was altered/);

    internal.journal[1] = stored;
    internal.account = { ...internal.account, balance: 1000 };
    const inflated = await m.credits.audit("u");
    expect(inflated.ok).toBe(false);
    expect(inflated.problems.join("\n")).toMatch(/stored balance 1000 != replayed 9/);
  });
});

describe("cache", () => {
  it("serves credit info from the cache, invalidates it on every write, and survives a failing cache", async () => {
    const cache = new InMemoryCache({ ttlSeconds: 60 });
    const m = await createCreditManager({ cache });
    await m.credits.addCredits("u", 10);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(10);
    expect(await cache.get("credits:info:u")).toMatchObject({ info: { balance: 10 } });
    await m.credits.deductCredits("u", 4);
    expect(await cache.get("credits:info:u")).toBeUndefined();
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(6);

    const broken: Cache = {
      get: async () => {
        throw new Error("cache down");
      },
      set: async () => {
        throw new Error("cache down");
      },
      delete: async () => {
        throw new Error("cache down");
      },
    };
    const warnings: unknown[] = [];
    const quiet = () => undefined;
    const logger = { warn: (...args: unknown[]) => void warnings.push(args), error: quiet, info: quiet, debug: quiet };
    const m2 = await createCreditManager({ cache: broken, logger });
    await m2.credits.addCredits("u", 10);
    await m2.credits.deductCredits("u", 1);
    expect((await m2.credits.getUserCreditsInfo("u")).balance).toBe(9);
    expect(warnings.length).toBeGreaterThan(0);
  });

  it("never caches past the next expiry", async () => {
    let now = Date.parse("2030-01-01T00:00:00Z");
    const cache = new InMemoryCache();
    const m = await createCreditManager({ cache, clock: () => new Date(now) });
    await m.credits.addCredits("u", 10, { expiresAt: new Date(now + 10_000) });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(10);
    now += 10_000;
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(0);
  });
});
