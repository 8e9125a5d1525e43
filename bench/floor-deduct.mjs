/**
 * The in-memory deduction's floor (docs/benchmarks.md, "In memory", against its
 * floor): a hand-written deduction that does only what a correct one must — find the
 * account in a `Map`, check its balance, burn down its grants in order, build the journal entry and
 * keep it, chain SHA-256 over the previous hash and the entry's canonical JSON, append the JSON line
 * to a buffered file (64 KiB `writeSync` chunks, on this thread). One implementation for both of its
 * benches: bench/floor.ts (ops/s beside `deductCredits`, the ledger file on) and the `floor` case
 * of bench/instructions-child.mjs (callgrind instructions, no file: `file` null, as the guard's
 * `deductCredits` runs without a ledger file). Plain JavaScript so the instruction child, which
 * runs without a transform, can import it; its types: floor-deduct.d.mts.
 */
import { createHash, randomUUID } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";

/** Lines gathered and written in 64 KiB chunks (what a buffered file stream does), on this thread. */
class BufferedFile {
  constructor(path) {
    this.fd = openSync(path, "a");
    this.parts = [];
    this.size = 0;
  }
  append(line) {
    this.parts.push(line);
    this.size += line.length;
    if (this.size >= 65_536) this.flush();
  }
  flush() {
    if (this.parts.length === 0) return;
    writeSync(this.fd, this.parts.join(""));
    this.parts = [];
    this.size = 0;
  }
  close() {
    this.flush();
    closeSync(this.fd);
  }
}

export class InsufficientFloor extends Error {}

/**
 * A floor over its own accounts. `file`: the JSONL file the lines are appended to, or null for
 * none (then the line is not built either: the entry is kept in the account's array only).
 */
export function createFloor(file) {
  const accounts = new Map();
  const out = file === null ? null : new BufferedFile(file);
  return {
    /** An account with one grant of `balance`. */
    open(userId, balance) {
      accounts.set(userId, {
        balance,
        grants: [{ id: randomUUID(), remaining: balance }],
        seq: 1,
        lastHash: "0".repeat(64),
        journal: [],
      });
    },
    async deduct(userId, amount) {
      const account = accounts.get(userId);
      if (account === undefined || account.balance < amount) throw new InsufficientFloor(userId);
      const grants = [];
      let left = amount;
      for (const g of account.grants) {
        if (left === 0) break;
        const take = Math.min(g.remaining, left);
        if (take === 0) continue;
        g.remaining -= take;
        left -= take;
        grants.push([g.id, take]);
      }
      account.balance -= amount;
      account.seq += 1;
      const body = {
        id: randomUUID(),
        userId,
        seq: account.seq,
        type: "deduct",
        amount,
        balanceAfter: account.balance,
        grants,
        createdAt: new Date().toISOString(),
        prevHash: account.lastHash,
      };
      const canonical = JSON.stringify(body);
      const hash = createHash("sha256").update(account.lastHash).update(canonical).digest("hex");
      const entry = { ...body, hash };
      account.lastHash = hash;
      account.journal.push(entry);
      if (out !== null) out.append(`${canonical.slice(0, -1)},"hash":"${hash}"}\n`);
      return entry;
    },
    flush() {
      out?.flush();
    },
    close() {
      out?.close();
    },
  };
}
