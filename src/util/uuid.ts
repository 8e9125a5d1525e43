import { randomFillSync } from "node:crypto";
import { madeBytes, madeIds, madeSlot } from "./made-ids.js";

/** Random bytes for the next ids (refilled from the system's CSPRNG when used up). */
const POOL = 4096;
const pool = Buffer.allocUnsafeSlow(POOL);
let taken = POOL;
/** The id being written, as ASCII. */
const text = Buffer.allocUnsafeSlow(36);
const HEX = Buffer.from("0123456789abcdef", "latin1");

/**
 * A random (version 4) UUID, like `crypto.randomUUID()` — 122 bits from the same CSPRNG, drawn in
 * batches as it does — but written as bytes and read back as one flat string. `randomUUID()` joins
 * twenty pieces into a string that V8 must flatten the first time it is scanned, which an id on the
 * write path always is (hashed, quoted, stored as bytes): together about twice the cost of this.
 */
export function newId(): string {
  if (taken + 16 > POOL) {
    randomFillSync(pool);
    taken = 0;
  }
  let at = 0;
  const slot = madeSlot();
  const into = slot * 16;
  for (let i = 0; i < 16; i++) {
    let b = pool[taken + i] as number;
    if (i === 6)
      b = (b & 0x0f) | 0x40; // version 4
    else if (i === 8) b = (b & 0x3f) | 0x80; // variant 10
    madeBytes[into + i] = b;
    text[at++] = HEX[b >> 4] as number;
    text[at++] = HEX[b & 15] as number;
    if (i === 3 || i === 5 || i === 7 || i === 9) text[at++] = 45; // "-"
  }
  taken += 16;
  const id = text.toString("latin1", 0, 36);
  madeIds[slot] = id;
  return id;
}
