/**
 * The pause before a task's round, in ms: the first up to `jitter × every` (replicas started
 * together drift apart), each later one `every ± jitter/2 × every` (on average `every`).
 */
export function pauseBefore(
  everyMs: number,
  jitter: number,
  first: boolean,
  random: () => number = Math.random,
): number {
  return Math.round(first ? everyMs * jitter * random() : everyMs * (1 - jitter / 2 + jitter * random()));
}
