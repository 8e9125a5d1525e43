import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { type JournalEntry } from "../src/models-public.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import type { DbManager } from "../src/core/db/types.js";
import { runCli } from "../src/cli/run.js";
import { ValidationError } from "../src/core/errors.js";
import { simProvider, webhook } from "./sim/payments.js";

const dir = mkdtempSync(join(tmpdir(), "cm-archive-"));
let files = 0;
const newFile = () => join(dir, `archive-${++files}.jsonl`);

async function cli(args: string[], db?: DbManager) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(
    args,
    { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
    db === undefined ? { env: {} } : { db },
  );
  return { code, stdout, stderr };
}

/** An account paid through a provider, used, checkpointed, used again; and a second account. */
async function setup() {
  const db = new InMemoryDbManager();
  const m = await createCreditManager({
    db,
    payments: { providers: [simProvider], creditsPerUnit: { USD: 1 }, checkoutWaitMs: 0 },
  });
  const link = await m.payments.createPaymentLink("u", { amount: 100, currency: "USD", provider: "sim" });
  const paymentId = link.id;
  expect((await m.payments.handleWebhook("sim", webhook("paid", paymentId, null), {})).outcome).toBe("credited");
  await m.credits.addCredits("u", 500);
  for (let i = 0; i < 5; i++) await m.credits.deductCredits("u", 10, { idempotencyKey: `old-${i}` });
  const hold = await m.credits.reserveCredits("u", 30);
  const cp = (await m.credits.checkpoint("u")) as JournalEntry;
  await m.credits.deductCredits("u", 7);
  await m.credits.commitReservedCredits(hold.id, { amount: 30 });
  await m.credits.addCredits("v", 5);
  await m.credits.checkpoint("v");
  await m.credits.deductCredits("v", 1);
  return { db, m, cp, paymentId };
}

describe("archiveJournal (docs/operations.md, Checkpoints and archival)", () => {
  it("moves the entries before the latest checkpoint to a JSONL file; audit, history and the CLI still check out", async () => {
    const { db, m, cp } = await setup();
    const before = await m.credits.audit("u", { from: "genesis" });
    expect(before.ok).toBe(true);
    const file = newFile();
    const r = await m.credits.archiveJournal({ file });
    // u: entries 1..cp.seq-1 go (the checkpoint is written too and stays); v: its add.
    expect(r).toEqual({ file, accounts: 2, entriesArchived: cp.seq - 1 + 1, linesWritten: cp.seq + 2 });
    const lines = readFileSync(file, "utf8").trim().split("\n");
    expect(lines).toHaveLength(cp.seq + 2);
    const first = JSON.parse(lines[0] as string) as JournalEntry;
    expect(first).toMatchObject({ userId: "u", seq: 1 });

    // The store keeps the checkpoint and what follows it.
    const kept = await db.listJournal("u", { order: "asc", limit: 100 });
    expect(kept.map((e) => e.seq)).toEqual([cp.seq, cp.seq + 1, cp.seq + 2]);
    expect(kept[0]?.hash).toBe(cp.hash);
    const after = await m.credits.audit("u");
    expect(after.problems).toEqual([]);
    expect(after).toMatchObject({ ok: true, from: "checkpoint", balance: before.balance, reserved: before.reserved });
    const genesis = await m.credits.audit("u", { from: "genesis" });
    expect(genesis.ok).toBe(false);
    expect(genesis.problems[0]).toMatch(/^entries 1 to \d+ are archived/);
    // History pages down to the checkpoint.
    const page1 = await m.credits.getCreditHistory("u", { limit: 2 });
    const page2 = await m.credits.getCreditHistory("u", { limit: 2, cursor: page1.nextCursor as string });
    expect([...page1.items, ...page2.items].map((e) => e.seq)).toEqual([cp.seq + 2, cp.seq + 1, cp.seq]);
    expect(page2.nextCursor).toBeNull();
    // Nothing left to archive: an empty second file.
    const again = newFile();
    expect(await m.credits.archiveJournal({ file: again })).toMatchObject({ accounts: 0, entriesArchived: 0 });
    await expect(m.credits.archiveJournal({ file })).rejects.toThrow(/EEXIST/); // never overwritten

    // The archive verifies alone, and against the store.
    const alone = await cli(["audit", "--archive", file]);
    expect(alone.stdout).toContain("2 accounts in the archive, 2 verified (no store to compare with)");
    expect(alone.code).toBe(0);
    const withStore = await cli(["audit", "--archive", file], db);
    expect(withStore.code).toBe(0);
    expect(withStore.stdout).toContain("2 verified against the store");
    expect((await cli(["audit", "--all", "--archive", file], db)).code).toBe(0);
  });

  it("the CLI finds an edited line, a dropped line, and an archive that ends without its checkpoint", async () => {
    const { m, cp } = await setup();
    const file = newFile();
    await m.credits.archiveJournal({ file, userId: "u" });
    const lines = readFileSync(file, "utf8").trim().split("\n");
    const edit = (name: string, change: (ls: string[]) => string[]) => {
      const f = join(dir, name);
      writeFileSync(f, `${change([...lines]).join("\n")}\n`);
      return f;
    };
    const altered = edit("altered.jsonl", (ls) =>
      ls.map((l, i) => (i === 2 ? l.replace('"amount":10,', '"amount":9,') : l)),
    );
    const r1 = await cli(["audit", "--archive", altered]);
    expect(r1.code).toBe(1);
    expect(r1.stdout).toMatch(/entry 3 was altered/);
    const dropped = edit("dropped.jsonl", (ls) => ls.filter((_, i) => i !== 3));
    const r2 = await cli(["audit", "--archive", dropped]);
    expect(r2.code).toBe(1);
    expect(r2.stdout).toMatch(/out of sequence|does not chain/);
    const open = edit("open.jsonl", (ls) => ls.slice(0, -1));
    const r3 = await cli(["audit", "--archive", open]);
    expect(r3.code).toBe(1);
    expect(r3.stdout).toContain(`the archive ends at seq ${cp.seq - 1}, which is not the checkpoint that covers it`);
    expect((await cli(["audit", "--archive", ""])).code).toBe(2);
    expect((await cli(["audit", "--user", "u", "--from", "middle"])).code).toBe(2);
  });

  it("a second archive starts at the checkpoint that ended the first, and verifies from it", async () => {
    const { m } = await setup();
    await m.credits.archiveJournal({ file: newFile(), userId: "u" });
    for (let i = 0; i < 4; i++) await m.credits.deductCredits("u", 1);
    const cp2 = (await m.credits.checkpoint("u")) as JournalEntry;
    await m.credits.deductCredits("u", 1);
    const second = newFile();
    await m.credits.archiveJournal({ file: second, userId: "u" });
    const lines = readFileSync(second, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as JournalEntry);
    expect(lines[0]?.type).toBe("checkpoint");
    expect(lines.at(-1)?.seq).toBe(cp2.seq);
    expect((await cli(["audit", "--archive", second])).code).toBe(0);
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("a payment whose add entry was archived is still refunded; an old idempotency key is let go with it", async () => {
    const { m, paymentId } = await setup();
    await m.credits.archiveJournal({ file: newFile(), userId: "u" });
    const before = await m.credits.getUserCreditsInfo("u");
    await m.payments.handleWebhook("sim", webhook("refund", paymentId, 100), {});
    const after = await m.credits.getUserCreditsInfo("u");
    expect(before.balance - after.balance).toBe(100);
    expect((await m.credits.audit("u")).ok).toBe(true);
    // docs/operations.md: archive only entries older than any retry of their requests.
    await m.credits.deductCredits("u", 10, { idempotencyKey: "old-0" });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(after.balance - 10);
  });

  it("bad options are refused with a ValidationError and nothing is written", async () => {
    const m = await createCreditManager();
    await expect(m.credits.archiveJournal({ file: "" })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.credits.archiveJournal({ file: newFile(), userId: "" })).rejects.toBeInstanceOf(ValidationError);
    await expect(
      m.credits.archiveJournal({ file: newFile(), before: "yesterday" as unknown as Date }),
    ).rejects.toBeInstanceOf(ValidationError);
  });
});
