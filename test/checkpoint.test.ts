import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { type JournalEntry } from "../src/models-public.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import type { DbManager } from "../src/core/db/types.js";
import { hashEntry } from "../src/core/domain/hash.js";
import { ValidationError } from "../src/core/errors.js";

const DAY = 86_400_000;

/** A store whose journal reads go through `edit` (as someone with database access would leave it). */
function edited(db: DbManager, edit: (entries: JournalEntry[]) => JournalEntry[]): DbManager {
  const out = Object.create(db) as DbManager;
  out.listJournal = async (userId, query) => {
    // Edit the whole journal, then answer the query from it.
    const all: JournalEntry[] = [];
    for (;;) {
      const page = await db.listJournal(userId, { order: "asc", afterSeq: all.length, limit: 1000 });
      all.push(...page);
      if (page.length < 1000) break;
    }
    let rows = edit(all.map((e) => structuredClone(e)));
    if (query.types !== undefined) rows = rows.filter((e) => query.types?.includes(e.type));
    if (query.order === "asc") rows = rows.filter((e) => e.seq > (query.afterSeq ?? 0));
    else rows = rows.filter((e) => e.seq < (query.beforeSeq ?? Infinity)).reverse();
    return rows.slice(0, query.limit);
  };
  return out;
}

/** Re-hashes the chain from `fromSeq` on, as a careful forger would (and the account's lastHash with it). */
function rechain(entries: JournalEntry[], fromSeq: number): JournalEntry[] {
  let prev: string | null = null;
  for (const e of entries) {
    if (e.seq >= fromSeq) {
      e.prevHash = prev;
      const { hash: _h, ...rest } = e;
      e.hash = hashEntry(rest);
    }
    prev = e.hash;
  }
  return entries;
}

/** An account with spent, held, expired and in-debt history around one checkpoint. */
async function busyAccount() {
  let now = Date.now();
  const db = new InMemoryDbManager();
  const m = await createCreditManager({ db, clock: () => new Date(now), overdraftLimit: "unlimited" });
  const c = m.credits;
  await c.addCredits("u", 100, { expiresAt: new Date(now + 2 * DAY) });
  await c.addCredits("u", 50);
  await c.deductCredits("u", 30);
  const held = await c.reserveCredits("u", 40, { ttlSeconds: 30 * 86_400 });
  const lapsing = await c.reserveCredits("u", 10, { ttlSeconds: 3 * 86_400 });
  const cp = await c.checkpoint("u");
  expect(cp).not.toBeNull();
  now += 4 * DAY; // the first grant expires; the second hold lapses
  await c.deductCredits("u", 5);
  await c.commitReservedCredits(held.id, { amount: 25 });
  await c.deductCreditsAfterService("u", 200);
  await c.addCredits("u", 200); // pays the debt first
  await c.reserveCredits("u", 5, { ttlSeconds: 60 });
  void lapsing;
  return { db, m, c, cp: cp as JournalEntry };
}

describe("checkpoints (docs/operations.md)", () => {
  it("a checkpoint changes nothing and records the open grants and active holds; both audits agree", async () => {
    const { db, c, cp } = await busyAccount();
    expect(cp).toMatchObject({ type: "checkpoint", amount: 0, seq: 6, grants: [] });
    const snapshot = (cp.metadata as { checkpoint: { grants: object; holds: object } }).checkpoint;
    expect(Object.keys(snapshot.holds)).toHaveLength(2);
    expect(Object.values(snapshot.grants).map((g: [number, number]) => g[0])).toEqual([20, 50]);

    const fromCheckpoint = await c.audit("u");
    const fromGenesis = await c.audit("u", { from: "genesis" });
    expect(fromCheckpoint.problems).toEqual([]);
    expect(fromGenesis.problems).toEqual([]);
    expect(fromCheckpoint).toMatchObject({ ok: true, from: "checkpoint", fromSeq: 6 });
    expect(fromGenesis).toMatchObject({ ok: true, from: "genesis", fromSeq: 1 });
    expect(fromCheckpoint.entries).toBeLessThan(fromGenesis.entries);
    const { entries: _a, from: _b, fromSeq: _c, ...state1 } = fromCheckpoint;
    const { entries: _d, from: _e, fromSeq: _f, ...state2 } = fromGenesis;
    expect(state1).toEqual(state2);
    expect(Object.keys(state1.activeReservations)).toHaveLength(1);
    const account = await db.getAccount("u");
    expect(state1.balance).toBe(account?.balance);
  });

  it("a tampered entry before the checkpoint is found from genesis only; one after it by both", async () => {
    const { db, m, cp } = await busyAccount();
    const before = edited(db, (es) => es.map((e) => (e.seq === 3 ? { ...e, amount: 29 } : e)));
    const mb = await createCreditManager({ db: before, init: false, ledger: false });
    expect((await mb.credits.audit("u")).ok).toBe(true);
    const g = await mb.credits.audit("u", { from: "genesis" });
    expect(g.ok).toBe(false);
    expect(g.problems.join("\n")).toMatch(/entry 3 was altered/);

    const after = edited(db, (es) => es.map((e) => (e.seq === cp.seq + 2 ? { ...e, amount: e.amount + 1 } : e)));
    const ma = await createCreditManager({ db: after, init: false, ledger: false });
    for (const from of ["checkpoint", "genesis"] as const) {
      const r = await ma.credits.audit("u", { from });
      expect(r.ok).toBe(false);
      expect(r.problems.join("\n")).toMatch(new RegExp(`entry ${cp.seq + 2} was altered`));
    }
    await m.close();
  });

  it("a checkpoint whose recorded state was forged (chain re-hashed) is found from genesis", async () => {
    const { db, cp } = await busyAccount();
    let lastHash = "";
    const forge = (es: JournalEntry[]) => {
      const e = es.find((x) => x.seq === cp.seq) as JournalEntry;
      const s = (e.metadata as { checkpoint: { grants: Record<string, [number, number]> } }).checkpoint;
      const [id, [left, gone]] = Object.entries(s.grants)[1] as [string, [number, number]];
      s.grants[id] = [left + 1000, gone];
      e.balanceAfter += 1000;
      const out = rechain(es, cp.seq);
      lastHash = (out[out.length - 1] as JournalEntry).hash;
      return out;
    };
    const forged = edited(db, forge);
    forged.getAccount = async (userId) => {
      const a = await db.getAccount(userId);
      return a && { ...a, lastHash };
    };
    const m = await createCreditManager({ db: forged, init: false, ledger: false });
    const g = await m.credits.audit("u", { from: "genesis" });
    expect(g.ok).toBe(false);
    expect(g.problems.join("\n")).toMatch(new RegExp(`checkpoint ${cp.seq} records grant .* with 1\\d\\d\\d left`));
    // From the checkpoint the forged state is taken as it is; the stored state then disagrees.
    expect((await m.credits.audit("u")).problems.join("\n")).toMatch(/stored balance/);
  });

  it("history pages and refunds of a grant work across a checkpoint; a checkpoint needs entries since the last", async () => {
    const { c } = await busyAccount();
    const types: string[] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await c.getCreditHistory("u", { limit: 3, ...(cursor === undefined ? {} : { cursor }) });
      types.push(...page.items.map((e) => e.type));
      if (page.nextCursor === null) break;
      cursor = page.nextCursor;
    }
    expect(types.filter((t) => t === "checkpoint")).toHaveLength(1);
    expect(types.length).toBe((await c.audit("u", { from: "genesis" })).entries);
    const cp2 = await c.checkpoint("u");
    expect(cp2?.type).toBe("checkpoint");
    expect(await c.checkpoint("u")).toBeNull(); // nothing since
    expect(await c.checkpoint("nobody")).toBeNull();
    expect(await c.checkpoint("u", { minEntries: 1 })).toBeNull();
    const grant = (await c.getGrants("u"))[0];
    if (grant === undefined) throw new Error("no grant");
    await c.voidGrant(grant.id);
    expect((await c.audit("u")).ok).toBe(true);
    expect((await c.audit("u", { from: "genesis" })).ok).toBe(true);
  });

  it("bad options are refused with a ValidationError", async () => {
    const m = await createCreditManager();
    await expect(m.credits.audit("u", { from: "middle" as "genesis" })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.credits.checkpoint("u", { minEntries: 0 })).rejects.toBeInstanceOf(ValidationError);
    await expect(createCreditManager({ checkpointEvery: 1 })).rejects.toThrow(/checkpointEvery/);
  });

  it("checkpointEvery writes one in the unit of work that passes each multiple; the job writes the rest", async () => {
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, checkpointEvery: 5 });
    await m.credits.addCredits("u", 100);
    const hold = await m.credits.reserveCredits("u", 10);
    for (let i = 0; i < 8; i++) await m.credits.deductCredits("u", 1);
    await m.credits.commitReservedCredits(hold.id, { amount: 4 });
    const history = (await m.credits.getCreditHistory("u", { limit: 100 })).items.reverse();
    const seqs = history.filter((e) => e.type === "checkpoint").map((e) => e.seq);
    expect(seqs).toEqual([6, 11]);
    expect((await m.credits.audit("u")).fromSeq).toBe(11);
    expect((await m.credits.audit("u", { from: "genesis" })).ok).toBe(true);

    await m.credits.addCredits("v", 5);
    await m.credits.addCredits("w", 5);
    for (let i = 0; i < 3; i++) await m.credits.deductCredits("w", 1);
    const r = await m.expiration.checkpointAccounts({ everyEntries: 2 });
    // u has 2 or more entries since its checkpoint at 11 (the capture's), w 4 since its start, v only 1.
    expect(r).toMatchObject({ job: "checkpointAccounts", accountsScanned: 3, checkpointsWritten: 2, errors: 0 });
    expect((await m.credits.latestCheckpoint("w"))?.seq).toBe(5);
    expect((await m.credits.latestCheckpoint("u"))?.seq).toBe((await db.getAccount("u"))?.seq);
    const aged = await m.expiration.checkpointAccounts({ everyEntries: 1000, olderThan: new Date(Date.now() + 1000) });
    expect(aged.checkpointsWritten).toBe(1); // v; u and w have no entry since theirs
    expect((await m.credits.latestCheckpoint("v"))?.seq).toBe(2);
    for (const u of ["u", "v", "w"]) {
      expect((await m.credits.audit(u)).ok).toBe(true);
      expect((await m.credits.audit(u, { from: "genesis" })).ok).toBe(true);
    }
  });
});
