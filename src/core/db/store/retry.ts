/** How a store spaces the attempts of a unit of work that lost a race. */
export interface BackoffOptions {
  /** Delay cap of the first attempt, in ms. */
  base: number;
  /** Growth of the cap per attempt. */
  factor: number;
  /** Largest cap, in ms. */
  max: number;
  /** Share of the cap always waited (0: anywhere in [0, cap); 0.5: in [cap/2, cap)). */
  floor: number;
}

/** Jittered exponential backoff before attempt `attempt + 1`, in ms. */
export function backoff(attempt: number, o: BackoffOptions): number {
  const cap = Math.min(o.max, o.base * o.factor ** attempt);
  return cap * o.floor + Math.random() * cap * (1 - o.floor);
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
