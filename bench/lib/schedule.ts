/**
 * Arithmetic of the load generator's schedules: ideal send times of an open-loop (fixed-rate)
 * run, and how a total is shared among processes and channels.
 */

/** An open-loop schedule: request i is ideally sent at `startMs + offsetMs + i * 1000 / rate`. */
export interface OpenLoopPlan {
  /** Requests per second (> 0). */
  rate: number;
  /** Milliseconds added to every ideal send time (staggers several generators sharing one rate). */
  offsetMs: number;
  /** Requests whose ideal time falls before this index belong to the warm-up. */
  firstMeasured: number;
  /** Requests in all (warm-up and measured). */
  total: number;
}

/**
 * The plan of a generator sending `rate`/s for `warmupSeconds` then `seconds`; `part`/`parts`
 * staggers `parts` generators so that together they send at `rate * parts`/s evenly.
 */
export function openLoopPlan(rate: number, warmupSeconds: number, seconds: number, part = 0, parts = 1): OpenLoopPlan {
  if (!(rate > 0)) throw new Error(`rate must be > 0, got ${rate}`);
  const offsetMs = (part / parts) * (1000 / rate);
  // Request i is in a window [a, b) seconds when a <= offset + i/rate < b.
  const firstAt = (sec: number): number => Math.max(0, Math.ceil(sec * rate - (offsetMs * rate) / 1000 - 1e-9));
  return { rate, offsetMs, firstMeasured: firstAt(warmupSeconds), total: firstAt(warmupSeconds + seconds) };
}

/** Ideal send time of request `i`, milliseconds after the schedule's start. */
export function idealSendMs(plan: OpenLoopPlan, i: number): number {
  return plan.offsetMs + (i * 1000) / plan.rate;
}

/** How many requests are due (ideal time <= `elapsedMs`) since the start, at most `plan.total`. */
export function dueCount(plan: OpenLoopPlan, elapsedMs: number): number {
  if (elapsedMs < plan.offsetMs) return 0;
  const due = Math.floor(((elapsedMs - plan.offsetMs) * plan.rate) / 1000 + 1e-9) + 1;
  return Math.min(plan.total, due);
}

/** `total` split into `parts` integers differing by at most one, larger first (e.g. 10 in 3: 4, 3, 3). */
export function splitEven(total: number, parts: number): number[] {
  if (!Number.isInteger(parts) || parts < 1) throw new Error(`parts must be a positive integer, got ${parts}`);
  const base = Math.floor(total / parts);
  const extra = total - base * parts;
  return Array.from({ length: parts }, (_, i) => base + (i < extra ? 1 : 0));
}
