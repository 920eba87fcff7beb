/**
 * Full-jitter exponential backoff: a uniformly random delay in [0, min(max, min * 2^attempt)).
 * Spreading reconnects over the whole window (rather than around its end) keeps a fleet of
 * clients that lost the same node from reconnecting in waves.
 */
export const backoffDelay = (
  attempt: number,
  minDelay: number,
  maxDelay: number,
  random: () => number = Math.random,
): number => random() * Math.min(maxDelay, minDelay * 2 ** attempt);
