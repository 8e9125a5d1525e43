import { AsyncLocalStorage } from "node:async_hooks";
import type { Prng } from "./prng.js";

/**
 * What the scheduler answers a store call that waits on it: go on, fail (a storage error, or an
 * injected write conflict at a commit), or never answer (the process running the call died).
 */
export type Verdict = "ok" | "error" | "conflict" | "drop";

/**
 * Where a store call waits: `read` (a query), `load` (a unit of work's load), `commit` (a unit of
 * work about to be written), `ack` (written; the answer is on its way back), `write` (a guarded
 * write outside a unit of work: subscriptions, promos, payments).
 */
export type Point = "read" | "load" | "commit" | "ack" | "write";

/** The operation a store call runs for, found through `AsyncLocalStorage` (`inOp`). */
export interface OpContext {
  /** The logical operation: every attempt of one client request shares it. */
  readonly id: number;
  /** Its idempotency key (null: it has none, e.g. a read). */
  readonly key: string | null;
  readonly label: string;
  /** Faults may be injected into this attempt. */
  faults: boolean;
  /** Set once a verdict dropped it: none of its store calls answer again. */
  dropped: boolean;
  /** Set once any store call of it got a fault (an error or a conflict). */
  faulted: boolean;
}

const context = new AsyncLocalStorage<OpContext>();

export function inOp<T>(op: OpContext, run: () => Promise<T>): Promise<T> {
  return context.run(op, run);
}

export function currentOp(): OpContext | undefined {
  return context.getStore();
}

/** Probabilities of each fault at each point (0 for none). */
export interface FaultRates {
  /** A read, load or write fails before it happened. */
  storageError: number;
  /** A commit is refused as a write conflict (the store retries the unit of work). */
  conflict: number;
  /** The commit happened, but the caller gets an error ("commit outcome unknown"). */
  ambiguous: number;
  /** The process running the call dies: the call never answers (before or after the commit). */
  drop: number;
}

export const NO_FAULTS: FaultRates = { storageError: 0, conflict: 0, ambiguous: 0, drop: 0 };

interface Waiting {
  readonly point: Point;
  readonly op: OpContext | undefined;
  readonly resolve: (verdict: Verdict) => void;
}

/**
 * Decides when each pending store call resolves, and how: every call of the simulated store waits
 * on `point()`, and `run()` answers one waiting call at a time, chosen by the seeded PRNG, letting
 * the code that runs on it go as far as it can before answering the next. So several operations
 * run concurrently and interleave at every store call, in an order the seed alone decides.
 */
export class Scheduler {
  private waiting: Waiting[] = [];
  /** Store calls answered so far (a measure of the run's size). */
  answered = 0;

  constructor(
    private readonly rng: Prng,
    public rates: FaultRates,
  ) {}

  point(point: Point): Promise<Verdict> {
    const op = currentOp();
    return new Promise<Verdict>((resolve) => this.waiting.push({ point, op, resolve }));
  }

  /** Answers waiting calls in a seeded order until `done()` (checked whenever nothing can run). */
  async run(done: () => boolean): Promise<void> {
    for (;;) {
      await quiesce();
      this.waiting = this.waiting.filter((w) => w.op?.dropped !== true);
      if (this.waiting.length === 0) {
        if (done()) return;
        throw new Error("simulation stuck: operations are in flight but no store call is waiting");
      }
      const [w] = this.waiting.splice(this.rng.int(this.waiting.length), 1) as [Waiting];
      const verdict = this.verdict(w);
      this.answered++;
      if (verdict === "drop") (w.op as OpContext).dropped = true;
      else {
        if (verdict !== "ok") (w.op as OpContext).faulted = true;
        w.resolve(verdict);
      }
    }
  }

  private verdict(w: Waiting): Verdict {
    if (w.op === undefined || !w.op.faults) return "ok";
    const r = this.rates;
    if (this.rng.chance(r.drop)) return "drop";
    switch (w.point) {
      case "commit":
        if (this.rng.chance(r.conflict)) return "conflict";
        return this.rng.chance(r.storageError) ? "error" : "ok";
      case "ack":
        return this.rng.chance(r.ambiguous) ? "error" : "ok";
      default:
        return this.rng.chance(r.storageError) ? "error" : "ok";
    }
  }
}

/** Lets every promise chain that can move run to its next wait (microtasks and immediates). */
async function quiesce(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
