/** The types of bench/floor-deduct.mjs (the in-memory deduction's floor). */
export interface FloorEntry {
  id: string;
  userId: string;
  seq: number;
  type: "deduct";
  amount: number;
  balanceAfter: number;
  grants: [string, number][];
  createdAt: string;
  prevHash: string;
  hash: string;
}

export declare class InsufficientFloor extends Error {}

export interface Floor {
  /** An account with one grant of `balance`. */
  open(userId: string, balance: number): void;
  deduct(userId: string, amount: number): Promise<FloorEntry>;
  /** Writes the buffered lines (no-op without a file). */
  flush(): void;
  close(): void;
}

/** A floor over its own accounts; `file` null: no line built, no file written. */
export declare function createFloor(file: string | null): Floor;
