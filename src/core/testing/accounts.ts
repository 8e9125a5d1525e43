import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { AccountWork } from "../domain/account-work.js";
import {
  ConfigurationError,
  ConflictError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  NotFoundError,
  ReservationExpiredError,
  ReservationNotActiveError,
  StorageError,
} from "../errors.js";
import type { JournalEntry, LedgerEntry } from "../models/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { ExpirationService } from "../services/expiration-service.js";
import { SubscriptionService } from "../services/subscription-service.js";
import { scribble } from "./scribble.js";
import { scopedAccountCases } from "./scoped.js";
import { accountWithClock, DAY, lazy, serviceWithClock, T0, type PartOptions } from "./support.js";
import { creditCore } from "../services/credit-service.js";

/**
 * The accounts and journal part: the store's reads and units of work, checked directly and through
 * `CreditService` (burn-down, expiry, holds, debt, idempotency). `getDb`: an initialised store.
 * @beta
 */
export function runAccountsContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  describe("accounts", () => {
    const user = () => `u-${randomUUID()}`;

    scopedAccountCases(db);

    describe("store", () => {
      it("has no account, grants or journal for an unknown user", async () => {
        const u = user();
        expect(await db.getAccount(u)).toBeNull();
        expect(await db.listGrants(u)).toEqual([]);
        expect(await db.listJournal(u, { order: "desc", limit: 10 })).toEqual([]);
        expect(await db.getGrant(randomUUID())).toBeNull();
        expect(await db.getReservation(randomUUID())).toBeNull();
      });

      it("names the owner of a hold, active or settled: `reservationOwner`, else `getReservation`", async () => {
        // (`reservationOwner` is optional: without it the services read the hold whole to learn its owner.)
        const owner = async (id: string) =>
          db.reservationOwner === undefined
            ? ((await db.getReservation(id))?.userId ?? null)
            : await db.reservationOwner(id);
        const { u, credits } = accountWithClock(db, user);
        await credits.addCredits(u, 10);
        const active = await credits.reserveCredits(u, 3);
        const settled = await credits.reserveCredits(u, 2);
        await credits.commitReservedCredits(settled.id, { amount: 1 });
        expect(await owner(active.id)).toBe(u);
        expect(await owner(settled.id)).toBe(u);
        expect(await owner(randomUUID())).toBeNull();
        expect(await owner("not-a-uuid")).toBeNull();
      });

      it("saves a unit of work atomically and loads it back with the same shape", async () => {
        const { u, credits } = accountWithClock(db, user);
        const e = await credits.addCredits(u, 9_007_199_254_740_000, {
          expiresAt: new Date(T0 + DAY),
          priority: 3,
          source: "adjustment",
          sourceRef: "WELCOME",
          metadata: { nested: { b: 1, a: [1, "x", null] } },
          description: "big",
        });
        const account = await db.getAccount(u);
        expect(account).toMatchObject({ userId: u, balance: 9_007_199_254_740_000, reserved: 0, debt: 0, seq: 1 });
        expect(account?.lastHash).toBe(e.hash);
        expect(account?.nextExpiryAt?.getTime()).toBe(T0 + DAY);
        const [g] = await db.listGrants(u);
        expect(g).toEqual({
          id: e.grants[0]?.grantId,
          userId: u,
          amount: 9_007_199_254_740_000,
          remaining: 9_007_199_254_740_000,
          expiresAt: new Date(T0 + DAY),
          priority: 3,
          source: "adjustment",
          sourceRef: "WELCOME",
          description: "big",
          metadata: { nested: { b: 1, a: [1, "x", null] } },
          createdAt: new Date(T0),
          expiredAmount: 0,
          closedAt: null,
          closedReason: null,
          scope: null,
          costBasis: null,
          effectiveAt: null,
          upcoming: null,
          unit: null,
          drawnOutIn: null,
        });
        const [stored] = await db.listJournal(u, { order: "asc", limit: 10 });
        expect(stored).toEqual(e);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("keeps the key id of an account's latest entry: a manager without journal keys writes nothing after a keyed entry", async () => {
        // docs/concepts.md, "A keyed chain": the store keeps `lastKeyId` with the account, which is
        // all a manager without keys reads to refuse (ConfigurationError, nothing written).
        const u = user();
        const clock = () => new Date(T0);
        const key = { current: "contract-k1", keys: { "contract-k1": "k".repeat(32) } };
        const keyed = new CoreCreditService({ db, clock, journalKeys: key });
        const plain = new CoreCreditService({ db, clock });
        await plain.addCredits(u, 10);
        expect((await db.getAccount(u))?.lastKeyId ?? null).toBeNull();
        const signed = await keyed.deductCredits(u, 2);
        expect(signed.keyId).toBe("contract-k1");
        const account = await db.getAccount(u);
        expect(account?.lastKeyId).toBe("contract-k1");
        await expect(plain.deductCredits(u, 1)).rejects.toThrow(ConfigurationError);
        await expect(plain.addCredits(u, 1)).rejects.toThrow(/journal key "contract-k1"/);
        expect(await db.getAccount(u)).toEqual(account);
        expect((await db.listJournal(u, { order: "desc", limit: 10 })).map((e) => e.seq)).toEqual([2, 1]);
        await keyed.deductCredits(u, 1);
        expect((await keyed.audit(u, { from: "genesis" })).problems).toEqual([]);
      });

      it("keeps metadata keys named like Object.prototype's members (constructor, prototype, toString) as data, through the hash", async () => {
        const { u, credits } = accountWithClock(db, user);
        // "__proto__" is refused by validation: assigning it sets the prototype, so a copy would drop it.
        const metadata = JSON.parse(
          '{"constructor":{"name":"x"},"prototype":1,"toString":"s","hasOwnProperty":[1]}',
        ) as Record<string, never>;
        const e = await credits.addCredits(u, 5, { metadata });
        expect(e.metadata).toEqual(metadata);
        expect((await db.listGrants(u))[0]?.metadata).toEqual(metadata);
        expect((await db.listJournal(u, { order: "asc", limit: 1 }))[0]?.metadata).toEqual(metadata);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("refuses a save whose account moved (seq guard) with ConflictError and writes nothing", async () => {
        const { u, credits } = accountWithClock(db, user);
        await credits.addCredits(u, 10);
        await expect(
          db.transaction(u, async (tx) => {
            const state = await tx.load();
            const work = new AccountWork(
              u,
              { ...state, account: state.account && { ...state.account, seq: 99 } },
              new Date(T0),
              randomUUID,
            );
            work.add(
              5,
              { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
              {},
            );
            await tx.save(work.changes());
          }),
        ).rejects.toBeInstanceOf(ConflictError);
        expect((await db.getAccount(u))?.balance).toBe(10);
        expect(await db.listJournal(u, { order: "asc", limit: 10 })).toHaveLength(1);
      });

      it("never answers a unit of work with the entry of another key, even one the store cannot tell apart", async () => {
        const { u, credits } = accountWithClock(db, user);
        const first = await credits.addCredits(u, 100, { idempotencyKey: "top-up-\uFFFD" });
        // Below the service's validation (which refuses lone surrogates): node-pg and BSON send a
        // lone surrogate as U+FFFD, so the store may find the first key's entry for this one.
        const unit = (key: string) =>
          creditCore(credits).runUnitOfWork(
            u,
            { idempotencyKey: key, fingerprint: first.fingerprint ?? undefined },
            async () => "ran",
            async (entry) => entry.id,
          );
        expect(await unit("top-up-\uFFFD")).toBe(first.id);
        const other = await unit("top-up-\uD800").catch((e: unknown) => e);
        if (other !== "ran") {
          expect(other).toBeInstanceOf(StorageError);
          expect((other as Error).message).toMatch(/cannot tell them apart/);
        }
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100 });
      });

      it("rolls back everything when the unit of work throws", async () => {
        const { u, credits } = accountWithClock(db, user);
        await credits.addCredits(u, 10);
        await expect(
          db.transaction(u, async (tx) => {
            const state = await tx.load();
            const work = new AccountWork(u, state, new Date(T0), randomUUID);
            work.add(
              5,
              { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
              {},
            );
            await tx.save(work.changes());
            throw new Error("boom after save");
          }),
        ).rejects.toThrow("boom after save");
        expect((await db.getAccount(u))?.balance).toBe(10);
        expect(await db.listGrants(u)).toHaveLength(1);
      });

      it("pages the journal both ways with type and time filters", async () => {
        const { u, credits, clock } = accountWithClock(db, user);
        for (let i = 0; i < 5; i++) {
          await credits.addCredits(u, 10);
          clock.now += 1000;
          await credits.deductCredits(u, 1);
          clock.now += 1000;
        }
        const desc = await db.listJournal(u, { order: "desc", limit: 3 });
        expect(desc.map((e) => e.seq)).toEqual([10, 9, 8]);
        const before = await db.listJournal(u, { order: "desc", beforeSeq: 8, limit: 3 });
        expect(before.map((e) => e.seq)).toEqual([7, 6, 5]);
        const asc = await db.listJournal(u, { order: "asc", afterSeq: 8, limit: 10 });
        expect(asc.map((e) => e.seq)).toEqual([9, 10]);
        const deducts = await db.listJournal(u, { order: "desc", limit: 10, types: ["deduct"] });
        expect(deducts.map((e) => e.seq)).toEqual([10, 8, 6, 4, 2]);
        const window = await db.listJournal(u, {
          order: "asc",
          limit: 10,
          from: new Date(T0 + 2000),
          to: new Date(T0 + 5000),
        });
        expect(window.map((e) => e.seq)).toEqual([3, 4, 5]);
      });

      it("scans due grants and lapsed holds in (expiresAt, id) order with a cursor", async () => {
        const { credits } = serviceWithClock(db);
        const tag = randomUUID();
        const users = [0, 1, 2].map((i) => `scan-${tag}-${i}`);
        const far = T0 + 400 * DAY; // far from other tests' data in a shared store
        for (const [i, u] of users.entries()) {
          await credits.addCredits(u, 10, { expiresAt: new Date(far + i * 1000) });
          await credits.addCredits(u, 10, { expiresAt: new Date(far + 10 * DAY) });
          await credits.reserveCredits(u, 1, { ttlSeconds: 3600 });
        }
        const due = (await db.findDueGrants(new Date(far + 2000), 1000)).filter((g) => users.includes(g.userId));
        expect(due.map((g) => g.userId)).toEqual(users);
        const first = due[0];
        if (first?.expiresAt == null) throw new Error("expected a due grant");
        const rest = (
          await db.findDueGrants(new Date(far + 2000), 1000, { expiresAt: first.expiresAt, id: first.id })
        ).filter((g) => users.includes(g.userId));
        expect(rest.map((g) => g.userId)).toEqual(users.slice(1));
        const lapsed = (await db.findExpiredReservations(new Date(T0 + 3600_000), 10_000)).filter((r) =>
          users.includes(r.userId),
        );
        expect(lapsed).toHaveLength(3);
        expect(
          (await db.findExpiredReservations(new Date(T0 + 3599_000), 10_000)).filter((r) => users.includes(r.userId)),
        ).toHaveLength(0);
      });

      it("stores system and error ledger events and lists them newest first", async () => {
        const u = user();
        const base = { correlationId: null, details: { n: 1 } };
        await db.insertLedgerEntry({
          ...base,
          id: randomUUID(),
          eventType: "system",
          userId: u,
          message: "a",
          createdAt: new Date(T0),
        });
        await db.insertLedgerEntry({
          ...base,
          id: randomUUID(),
          eventType: "error",
          userId: u,
          message: "b",
          createdAt: new Date(T0 + 1),
        });
        const all = await db.listLedgerEntries({ userId: u, limit: 10 });
        expect(all.map((e) => e.message)).toEqual(["b", "a"]);
        expect(
          (await db.listLedgerEntries({ userId: u, eventType: "system", limit: 10 })).map((e) => e.message),
        ).toEqual(["a"]);
        expect(all[0]?.details).toEqual({ n: 1 });
      });

      it("hands out copies: mutating a returned row (or a row after inserting it) changes nothing stored", async () => {
        const { u, credits } = accountWithClock(db, user);
        const far = T0 + 500 * DAY; // a scan window of its own in a shared store
        await credits.addCredits(u, 100, { expiresAt: new Date(far), metadata: { tags: ["a"], n: { v: 1 } } });
        const settled = await credits.reserveCredits(u, 5, { metadata: { m: [1] } });
        await credits.commitReservedCredits(settled.id);
        const active = await credits.reserveCredits(u, 7, { ttlSeconds: 60, metadata: { m: [2] } });
        const event: LedgerEntry = {
          id: randomUUID(),
          eventType: "system",
          userId: u,
          message: "m",
          correlationId: null,
          details: { d: [1] },
          createdAt: new Date(T0),
        };
        await db.insertLedgerEntry(event);
        scribble(event);
        const reads = async () => ({
          account: await db.getAccount(u),
          grant: await db.getGrant(((await db.listGrants(u))[0] ?? { id: "" }).id),
          grants: await db.listGrants(u),
          allGrants: await db.listGrants(u, { includeInactive: true }),
          active: await db.getReservation(active.id),
          settled: await db.getReservation(settled.id),
          holds: await db.listReservations(u),
          activeHolds: await db.listReservations(u, { status: "active" }),
          committedHolds: await db.listReservations(u, { status: "committed" }),
          journal: await db.listJournal(u, { order: "asc", limit: 10 }),
          due: (await db.findDueGrants(new Date(far), 10_000)).filter((g) => g.userId === u),
          lapsed: (await db.findExpiredReservations(new Date(T0 + 60_000), 10_000)).filter((r) => r.userId === u),
          events: await db.listLedgerEntries({ userId: u, limit: 10 }),
        });
        const before = await reads();
        expect(before.due).toHaveLength(1);
        expect(before.lapsed).toHaveLength(1);
        // A status asked for lists the holds of that status only.
        expect(before.activeHolds.map((r) => r.id)).toEqual([active.id]);
        expect(before.committedHolds.map((r) => r.id)).toEqual([settled.id]);
        expect(before.holds.map((r) => r.id).sort()).toEqual([active.id, settled.id].sort());
        expect(before.events[0]).toMatchObject({ message: "m", details: { d: [1] }, createdAt: new Date(T0) });
        scribble(await reads());
        expect(await reads()).toEqual(before);
        expect((await credits.audit(u)).ok).toBe(true);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 95, reserved: 7, available: 88 });
      });

      it("pages ledger events with before/beforeId without skipping or repeating those of one millisecond", async () => {
        const u = user();
        const base = { correlationId: null, details: {}, eventType: "system" as const, userId: u };
        const instants = [T0, T0 + 5, T0 + 5, T0 + 5, T0 + 5, T0 + 5, T0 + 9, T0 + 9];
        for (const [k, t] of instants.entries())
          await db.insertLedgerEntry({ ...base, id: randomUUID(), message: `m${k}`, createdAt: new Date(t) });
        const seen: string[] = [];
        let page = await db.listLedgerEntries({ userId: u, limit: 2 });
        while (page.length > 0) {
          seen.push(...page.map((e) => e.message));
          const last = page[page.length - 1] as LedgerEntry;
          page = await db.listLedgerEntries({ userId: u, limit: 2, before: last.createdAt, beforeId: last.id });
        }
        expect([...seen].sort()).toEqual(instants.map((_, k) => `m${k}`).sort());
        expect(seen.slice(0, 2).sort()).toEqual(["m6", "m7"]);
        expect(seen[seen.length - 1]).toBe("m0");
        // Without beforeId, `before` alone still means "strictly older".
        expect(
          (await db.listLedgerEntries({ userId: u, limit: 10, before: new Date(T0 + 5) })).map((e) => e.message),
        ).toEqual(["m0"]);
      });
    });

    describe("credits", () => {
      it("a checkpoint entry is stored and read back as written: both audits agree, across expiry and holds", async () => {
        const { u, credits, clock } = accountWithClock(db, user);
        await credits.addCredits(u, 100, { expiresAt: new Date(T0 + DAY) });
        await credits.addCredits(u, 50);
        await credits.deductCredits(u, 60);
        const hold = await credits.reserveCredits(u, 30, { ttlSeconds: 3 * 86400 });
        const cp = await credits.checkpoint(u);
        expect(cp).toMatchObject({ type: "checkpoint", amount: 0, seq: 5, balanceAfter: 90, reservedAfter: 30 });
        expect(await credits.latestCheckpoint(u)).toEqual(cp);
        clock.now = T0 + DAY;
        await credits.commitReservedCredits(hold.id, { amount: 20 });
        await credits.deductCredits(u, 5);
        const fromCheckpoint = await credits.audit(u);
        const fromGenesis = await credits.audit(u, { from: "genesis" });
        expect(fromCheckpoint.problems).toEqual([]);
        expect(fromGenesis.problems).toEqual([]);
        expect([fromCheckpoint.fromSeq, fromGenesis.fromSeq]).toEqual([5, 1]);
        expect([fromCheckpoint.balance, fromCheckpoint.reserved]).toEqual([fromGenesis.balance, fromGenesis.reserved]);
        expect(fromCheckpoint.balance).toBe(45);
      });

      it("draws by priority, then soonest expiry, never-expiring last, then oldest", async () => {
        const { u, credits, clock } = accountWithClock(db, user);
        const never = await credits.addCredits(u, 10);
        clock.now += 1000;
        const late = await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 9 * DAY) });
        const soon = await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 2 * DAY) });
        const low = await credits.addCredits(u, 10, { priority: 5, expiresAt: new Date(T0 + DAY) });
        const older = await credits.addCredits(u, 10, { priority: 5 });
        const e = await credits.deductCredits(u, 45);
        const id = (x: JournalEntry) => x.grants[0]?.grantId;
        expect(e.grants).toEqual([
          { grantId: id(soon), amount: 10 },
          { grantId: id(late), amount: 10 },
          { grantId: id(never), amount: 10 },
          { grantId: id(low), amount: 10 },
          { grantId: id(older), amount: 5 },
        ]);
      });

      it("expires only what is unspent, and never what is held until the hold ends", async () => {
        const { u, credits, clock } = accountWithClock(db, user);
        await credits.addCredits(u, 100, { expiresAt: new Date(T0 + DAY) });
        await credits.addCredits(u, 50);
        await credits.deductCredits(u, 60);
        const hold = await credits.reserveCredits(u, 30, { ttlSeconds: 3 * 86400 });
        clock.now = T0 + DAY;
        // 100 − 60 − 30 held = 10 unspent expire now; the held 30 stay held.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 80, reserved: 30, available: 50 });
        const released = await credits.releaseReservedCredits(hold.id);
        expect(released.type).toBe("release_reserved");
        // The 30 returned to an expired grant expire at once.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 50, reserved: 0, available: 50 });
        const types = (await credits.getCreditHistory(u)).items.map((e) => e.type);
        expect(types.slice(0, 3)).toEqual(["expire", "release_reserved", "expire"]);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("commits less (the rest returns) and more (the excess is usage, into debt)", async () => {
        const { u, credits } = accountWithClock(db, user, "unlimited");
        await credits.addCredits(u, 100);
        const a = await credits.reserveCredits(u, 40);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 40, available: 60 });
        const c = await credits.commitReservedCredits(a.id, { amount: 25 });
        expect(c).toMatchObject({ type: "commit_reserved", amount: 25, reservationId: a.id });
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 75, reserved: 0, available: 75 });
        expect((await credits.getReservation(a.id)).status).toBe("committed");
        expect((await credits.getReservation(a.id)).committedAmount).toBe(25);
        const b = await credits.reserveCredits(u, 70);
        await credits.commitReservedCredits(b.id, { amount: 90 });
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -15,
          reserved: 0,
          available: -15,
          debt: 15,
        });
        await credits.addCredits(u, 20);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 5, debt: 0, available: 5 });
        const grants = await credits.getGrants(u);
        expect(grants.map((g) => g.remaining)).toEqual([5]);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("records a partial capture in one entry: spent, returned and debt-paid portions, stored as written", async () => {
        const { u, credits, clock } = accountWithClock(db, user, 50);
        const g1 = await credits.addCredits(u, 30, { expiresAt: new Date(T0 + DAY) });
        const g2 = await credits.addCredits(u, 70);
        const [first, second] = [g1.grants[0]?.grantId, g2.grants[0]?.grantId];
        const hold = await credits.reserveCredits(u, 50, { ttlSeconds: 3 * 86400 });
        // Usage delivered meanwhile takes the 50 unheld credits and 10 more as debt.
        await credits.deductCreditsAfterService(u, 60);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 40, reserved: 50, debt: 10 });
        const c = await credits.commitReservedCredits(hold.id, { amount: 25 });
        // 25 of the first grant spent; the held rest (5 of it, 20 of the second) pays the 10 of debt first.
        expect(c).toMatchObject({
          type: "commit_reserved",
          amount: 25,
          reservedAfter: 0,
          debtAfter: 0,
          balanceAfter: 15,
        });
        expect(c.grants).toEqual([
          { grantId: first, amount: 25 },
          { grantId: first, amount: 5, kind: "debt_paid" },
          { grantId: second, amount: 5, kind: "debt_paid" },
          { grantId: second, amount: 15, kind: "returned" },
        ]);
        const stored = (await credits.getCreditHistory(u, { types: ["commit_reserved"] })).items;
        expect(stored).toEqual([c]);
        expect((await credits.getCreditHistory(u)).items.map((e) => e.type)).toEqual([
          "commit_reserved",
          "deduct",
          "reserve",
          "add",
          "add",
        ]);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 15, reserved: 0, debt: 0, available: 15 });
        expect((await credits.audit(u)).ok).toBe(true);
        // A partial capture whose rest returns to a grant that expired meanwhile: the rest expires at once.
        await credits.addCredits(u, 20, { expiresAt: new Date(T0 + 2 * DAY) });
        const late = await credits.reserveCredits(u, 30, { ttlSeconds: 5 * 86400 });
        clock.now = T0 + 2 * DAY;
        const partial = await credits.commitReservedCredits(late.id, { amount: 10 });
        expect(partial.grants.filter((g) => g.kind === "returned").reduce((s, g) => s + g.amount, 0)).toBe(20);
        expect((await credits.getCreditHistory(u, { limit: 2 })).items.map((e) => e.type)).toEqual([
          "expire",
          "commit_reserved",
        ]);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("refuses deductions past available, allows after-service ones into debt within the limit", async () => {
        const { u, credits } = accountWithClock(db, user, 50);
        await credits.addCredits(u, 30);
        const hold = await credits.reserveCredits(u, 10);
        await expect(credits.deductCredits(u, 21)).rejects.toBeInstanceOf(InsufficientCreditsError);
        await credits.deductCreditsAfterService(u, 60);
        // Held credits are never taken: 20 from grants, 40 as debt.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -30,
          reserved: 10,
          available: -40,
          debt: 40,
        });
        await expect(credits.deductCreditsAfterService(u, 11)).rejects.toBeInstanceOf(InsufficientCreditsError);
        await credits.deductCreditsAfterService(u, 10);
        // Releasing the hold pays the debt from the returned credits first.
        await credits.releaseReservedCredits(hold.id);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -40,
          reserved: 0,
          available: -40,
          debt: 40,
        });
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("credits a hold returns to a voided or expired grant are removed, never pay debt", async () => {
        // Voided: a refund voids the grant while 60 of it are held; usage then runs into debt.
        const { u, credits, clock } = accountWithClock(db, user, 50);
        const g = await credits.addCredits(u, 100);
        const hold = await credits.reserveCredits(u, 60);
        await credits.voidGrant(g.grants[0]?.grantId as string);
        await credits.deductCreditsAfterService(u, 30);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 30, reserved: 60, debt: 30 });
        await credits.releaseReservedCredits(hold.id);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({
          balance: -30,
          reserved: 0,
          available: -30,
          debt: 30,
        });
        expect((await credits.audit(u)).ok).toBe(true);

        // Expired: the grant expires while 60 are held; debt run up after it does not eat them.
        const v = user();
        await credits.addCredits(v, 100, { expiresAt: new Date(clock.now + 10_000) });
        const held = await credits.reserveCredits(v, 60, { ttlSeconds: 3600 });
        clock.now += 11_000;
        await credits.deductCreditsAfterService(v, 30);
        expect(await credits.getUserCreditsInfo(v)).toMatchObject({ balance: 30, reserved: 60, debt: 30 });
        await credits.releaseReservedCredits(held.id);
        expect(await credits.getUserCreditsInfo(v)).toMatchObject({ balance: -30, reserved: 0, debt: 30 });
        expect((await credits.audit(v)).ok).toBe(true);
      });

      it("settles holds exactly once: expired, not active, lazily released", async () => {
        const { u, credits, clock } = accountWithClock(db, user);
        await credits.addCredits(u, 10);
        const a = await credits.reserveCredits(u, 4, { ttlSeconds: 60 });
        await credits.commitReservedCredits(a.id);
        await expect(credits.commitReservedCredits(a.id)).rejects.toBeInstanceOf(ReservationNotActiveError);
        await expect(credits.releaseReservedCredits(a.id)).rejects.toBeInstanceOf(ReservationNotActiveError);
        const b = await credits.reserveCredits(u, 5, { ttlSeconds: 60 });
        clock.now += 61_000;
        await expect(credits.commitReservedCredits(b.id)).rejects.toBeInstanceOf(ReservationExpiredError);
        // Touching the account released it lazily.
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 6, reserved: 0, available: 6 });
        expect((await credits.getReservation(b.id)).status).toBe("expired");
        await expect(credits.releaseReservedCredits(b.id)).rejects.toBeInstanceOf(ReservationExpiredError);
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("answers a repeated idempotency key with the first result and changes nothing", async () => {
        const { u, credits } = accountWithClock(db, user);
        const a1 = await credits.addCredits(u, 10, { idempotencyKey: "k-add" });
        const a2 = await credits.addCredits(u, 10, { idempotencyKey: "k-add" });
        expect(a2).toEqual(a1);
        await expect(credits.addCredits(u, 11, { idempotencyKey: "k-add" })).rejects.toBeInstanceOf(
          IdempotencyConflictError,
        );
        await expect(credits.deductCredits(u, 10, { idempotencyKey: "k-add" })).rejects.toBeInstanceOf(
          IdempotencyConflictError,
        );
        const r1 = await credits.reserveCredits(u, 3, { idempotencyKey: "k-res" });
        const r2 = await credits.reserveCredits(u, 3, { idempotencyKey: "k-res" });
        expect(r2.id).toBe(r1.id);
        const c1 = await credits.commitReservedCredits(r1.id, { amount: 2, idempotencyKey: "k-commit" });
        const c2 = await credits.commitReservedCredits(r1.id, { amount: 2, idempotencyKey: "k-commit" });
        expect(c2).toEqual(c1);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 8, reserved: 0 });
        // add, reserve, and the partial capture (with its returned part) in one entry.
        expect((await credits.getCreditHistory(u)).items).toHaveLength(3);
      });

      it("forgets idempotency keys past the retention window: a retry within it answers the first result; after the job the key is a new operation and the entry still audits", async () => {
        const u = user();
        // Long before the other cases' clocks (T0 on), so the job forgets none of their keys.
        const start = T0 - 400 * DAY;
        const { credits, clock } = serviceWithClock(db, start);
        // Unused by this job; on a credit service of its own, so that it hooks nothing into `credits`.
        const subscriptions = new SubscriptionService({
          db,
          credits: new CoreCreditService({ db, subscriptions: true }),
        });
        const expiration = new ExpirationService({ db, credits, subscriptions, idempotencyRetention: "1h" });
        await credits.addCredits(u, 100);
        // A key the library made itself (`cm:`, here a trial's), as old: never forgotten.
        const w = user();
        const trial = new CoreCreditService({ db, clock: () => new Date(clock.now), trial: { amount: 5 } });
        await trial.addCredits(w, 1);
        const systemKey = `cm:trial:${w}`;
        const first = await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" });
        clock.now += 30 * 60_000;
        expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(first.id);
        // Younger than the window: still remembered after the job. A store that cannot forget keys
        // (no forgetIdempotencyKeys, or a defineStore journal part without it) refuses the job
        // with ConfigurationError rather than ignore the window; it keeps every key.
        const early = await expiration.forgetIdempotencyKeys().catch((e: unknown) => e);
        if (db.forgetIdempotencyKeys === undefined || early instanceof ConfigurationError) {
          expect(early).toBeInstanceOf(ConfigurationError);
          expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(first.id);
          return;
        }
        expect(early).toMatchObject({ retentionMs: 3_600_000 });
        expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(first.id);
        expect((await credits.getUserCreditsInfo(u)).balance).toBe(90);
        clock.now += 31 * 60_000;
        const report = await expiration.forgetIdempotencyKeys();
        expect(report.keysForgotten).toBeGreaterThanOrEqual(1);
        const again = await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" });
        expect(again.id).not.toBe(first.id);
        expect((await credits.getUserCreditsInfo(u)).balance).toBe(80);
        // The new entry remembers the key for a window of its own.
        expect((await credits.deductCredits(u, 10, { idempotencyKey: "k-retained" })).id).toBe(again.id);
        // The forgotten entry reads back with its key (its hash covers it) and the chain verifies.
        const journal = await db.listJournal(u, { order: "asc", limit: 10 });
        expect(journal.filter((e) => e.idempotencyKey === "k-retained").map((e) => e.id)).toEqual([first.id, again.id]);
        const inside = await db.transaction(
          u,
          async (tx) => (await tx.load({ idempotencyKey: "k-retained" })).idempotent,
        );
        expect(inside?.id).toBe(again.id);
        const audit = await credits.audit(u);
        expect(audit.problems).toEqual([]);
        expect(audit.ok).toBe(true);
        const kept = await db.transaction(w, async (tx) => (await tx.load({ idempotencyKey: systemKey })).idempotent);
        expect(kept?.idempotencyKey, "the library's own keys are never forgotten").toBe(systemKey);
      });

      it("voids what is left of a grant, and its held part when the hold ends", async () => {
        const { u, credits } = accountWithClock(db, user);
        const g = await credits.addCredits(u, 100);
        await credits.addCredits(u, 5, { priority: 9 });
        await credits.deductCredits(u, 30);
        const hold = await credits.reserveCredits(u, 20);
        const v = await credits.voidGrant(g.grants[0]?.grantId ?? "");
        expect(v).toMatchObject({ type: "void", amount: 50 });
        await expect(credits.voidGrant(g.grants[0]?.grantId ?? "")).rejects.toBeInstanceOf(ConflictError);
        await credits.releaseReservedCredits(hold.id);
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 5, reserved: 0 });
        expect((await credits.audit(u)).ok).toBe(true);
      });

      it("commit, release and void routed by a given userId: the owner's succeed, another user's are not found and change nothing", async () => {
        const [owner, other] = [user(), user()];
        const { credits } = serviceWithClock(db);
        const g = await credits.addCredits(owner, 100);
        await credits.addCredits(other, 10);
        const grantId = g.grants[0]?.grantId ?? "";
        const [a, b, c] = [
          await credits.reserveCredits(owner, 10),
          await credits.reserveCredits(owner, 20),
          await credits.reserveCredits(owner, 30),
        ];
        const stateOf = async () => ({
          owner: await credits.getUserCreditsInfo(owner),
          other: await credits.getUserCreditsInfo(other),
          entries: (await credits.getCreditHistory(owner, { limit: 100 })).items.length,
          otherEntries: (await credits.getCreditHistory(other, { limit: 100 })).items.length,
          holds: [await credits.getReservation(a.id), await credits.getReservation(b.id)].map((r) => r.status),
        });
        const before = await stateOf();
        const strangers = [other, `never-seen-${randomUUID()}`];
        for (const stranger of strangers) {
          await expect(credits.commitReservedCredits(a.id, { userId: stranger })).rejects.toBeInstanceOf(NotFoundError);
          await expect(
            credits.commitReservedCredits(a.id, { userId: stranger, idempotencyKey: `k-${stranger}` }),
          ).rejects.toBeInstanceOf(NotFoundError);
          await expect(credits.releaseReservedCredits(b.id, { userId: stranger })).rejects.toBeInstanceOf(
            NotFoundError,
          );
          await expect(credits.voidGrant(grantId, { userId: stranger })).rejects.toBeInstanceOf(NotFoundError);
        }
        expect(await stateOf()).toEqual(before);
        expect(await db.getAccount(strangers[1] as string)).toBeNull();
        // Validated by the models: a malformed userId is a ValidationError before anything is read.
        await expect(credits.commitReservedCredits(a.id, { userId: "" })).rejects.toMatchObject({
          code: "VALIDATION_ERROR",
        });
        // The owner's own: as without userId (and the key's fingerprint does not include the routing).
        const first = await credits.commitReservedCredits(a.id, { userId: owner, amount: 4, idempotencyKey: "k-a" });
        expect(first).toMatchObject({ type: "commit_reserved", amount: 4 });
        const replay = await credits.commitReservedCredits(a.id, { amount: 4, idempotencyKey: "k-a" });
        expect(replay.id).toBe(first.id);
        expect(await credits.releaseReservedCredits(b.id, { userId: owner })).toMatchObject({
          type: "release_reserved",
        });
        expect(await credits.voidGrant(grantId, { userId: owner })).toMatchObject({ type: "void", amount: 66 });
        await credits.releaseReservedCredits(c.id, { userId: owner });
        expect(await credits.getUserCreditsInfo(owner)).toMatchObject({ balance: 0, reserved: 0 });
        expect((await credits.audit(owner)).ok).toBe(true);
        expect((await credits.audit(other)).ok).toBe(true);
      });

      it("lists history newest first with cursor paging and type filters; expiring credits in a window", async () => {
        const { u, credits } = accountWithClock(db, user);
        await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 2 * DAY) });
        await credits.addCredits(u, 10, { expiresAt: new Date(T0 + 10 * DAY) });
        for (let i = 0; i < 5; i++) await credits.deductCredits(u, 1);
        const p1 = await credits.getCreditHistory(u, { limit: 4 });
        expect(p1.items.map((e) => e.seq)).toEqual([7, 6, 5, 4]);
        const p2 = await credits.getCreditHistory(u, { limit: 4, cursor: p1.nextCursor ?? undefined });
        expect(p2.items.map((e) => e.seq)).toEqual([3, 2, 1]);
        expect(p2.nextCursor).toBeNull();
        const adds = await credits.getCreditHistory(u, { types: ["add"] });
        expect(adds.items.map((e) => e.type)).toEqual(["add", "add"]);
        const soon = await credits.getExpiringCredits(u, 3);
        expect(soon.total).toBe(5);
        expect((await credits.getExpiringCredits(u, 30)).total).toBe(15);
      });

      it("expireCredits(asOf) expires what was due at asOf and reports the amount", async () => {
        const { u, credits, clock } = accountWithClock(db, user);
        await credits.addCredits(u, 7, { expiresAt: new Date(T0 + DAY) });
        await credits.addCredits(u, 9, { expiresAt: new Date(T0 + 3 * DAY) });
        clock.now = T0 + 5 * DAY;
        expect(await credits.expireCredits(u, new Date(T0 + 2 * DAY))).toBe(7);
        expect(await credits.expireCredits(u)).toBe(9);
        expect(await credits.expireCredits(u)).toBe(0);
        expect((await credits.audit(u)).ok).toBe(true);
      });
    });
  });
}
