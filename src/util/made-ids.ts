/**
 * The last `MADE` ids `newId` (./uuid.ts) made, with their 16 bytes (the id in slot k has its bytes
 * at `16 * k` of `madeBytes`): the in-memory store writes a new id as bytes (`writeUuid`) moments
 * after it was made — a hold's id, each entry's — and copies these instead of parsing 32 hex digits
 * again. (Apart from ./uuid.ts so that a test that replaces `newId` leaves the store's lookup here:
 * an id this did not see is parsed.)
 */
/** A power of two: the slots go round with a mask. */
const MADE = 4;

/** The ids, by slot (null: none yet). */
export const madeIds: (string | null)[] = new Array<string | null>(MADE).fill(null);
/** The bytes of the ids in `madeIds`, 16 each. */
export const madeBytes = new Uint8Array(16 * MADE);
let next = 0;

/** The slot the next id takes (the oldest one's). */
export function madeSlot(): number {
  const slot = next;
  next = (slot + 1) & (MADE - 1);
  return slot;
}

/** Where `id`'s bytes are in `madeBytes` when `newId` made it lately, else -1. */
export function madeAt(id: string): number {
  for (let k = 0; k < MADE; k++) if (madeIds[k] === id) return 16 * k;
  return -1;
}
