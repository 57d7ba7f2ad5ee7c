/**
 * Admission control of Retrieve calls. One JS thread does a call's work (the ANN search runs on
 * the thread pool), so calls past a few in flight do not finish sooner: they share the thread
 * and each one admitted makes all the others slower. So the limit on calls in flight adapts, as
 * Netflix's concurrency-limits does with AIMD, latency being the drop signal: once per window of
 * answered calls, a median latency over `latency_tolerance` times the no-load median (the median
 * of recent calls that ran alone: nothing else in flight from their admission to their answer)
 * multiplies the limit by 0.9, and a window that reached the limit with its median under that
 * adds 1. The limit stays in [min_limit, max_in_flight]; with `adaptive: false` it is
 * max_in_flight.
 *
 * A call that finds the adaptive limit reached may wait for a slot, newest first (LIFO, so that
 * under sustained overload the calls answered are fresh ones and the stale ones are refused), for
 * at most `queue_timeout_ms` and never past its deadline less the time calls take now. Waiting
 * absorbs bursts (a stalled client or event loop delivers calls in batches) that a small limit
 * alone would refuse; at most max_in_flight calls wait, the oldest refused to make room. Past
 * max_in_flight itself a call is refused at once.
 *
 * Decisions read counters only, before the request is decoded, so a refusal costs neither
 * decoding nor stage work. Time is passed in (milliseconds, any monotonic origin): tests drive it.
 */
import type { AdmissionConfig } from '../config/schema';

/** Why a call was refused: the label of `funnel_shed_requests_total`. */
export type ShedReason = 'max_in_flight' | 'concurrency_limit' | 'queue_timeout' | 'event_loop_lag' | 'deadline';

/** A refused call: answered RESOURCE_EXHAUSTED with `details`. */
export interface Refusal {
  kind: 'refused';
  reason: ShedReason;
  details: string;
}

/** An admitted call; hand it to release() exactly once, when it is answered. */
export interface Permit {
  kind: 'admitted';
  /** When it was admitted (the clock of admit()). */
  readonly startedMs: number;
  /** Whether nothing else was in flight when it was admitted. */
  readonly alone: boolean;
  /** Admissions counted up to and including this one (another admitted since: it did not run alone). */
  readonly seq: number;
}

/** A call waiting for a slot: the callback given to admit() hears, once, its permit or refusal. */
export interface Waiting {
  kind: 'waiting';
}

/** The limits admit() applies: `limits` of the config. */
export interface AdmissionLimits {
  max_in_flight: number;
  shed_event_loop_lag_ms: number;
  admission: AdmissionConfig;
}

/** What a call brings to admit(). */
export interface CallFacts {
  /** Time left until its deadline, ms (Infinity when it has none). */
  remainingMs: number;
  /** Sustained event-loop lag now, ms. */
  loopLagMs: number;
}

/** Multiplier of the limit after a window over the latency target. */
export const BACKOFF = 0.9;
/** Answered calls a window needs before it is judged. */
export const MIN_WINDOW_SAMPLES = 10;
/** No-load samples kept; their median is the no-load latency. */
export const BASELINE_SAMPLES = 64;
/** No-load samples needed before the latency target applies. */
export const MIN_BASELINE_SAMPLES = 5;

interface Waiter extends Waiting {
  readonly expiresMs: number;
  /** Whether the deadline (not queue_timeout_ms) bounds the wait. */
  readonly byDeadline: boolean;
  readonly done: (outcome: Permit | Refusal) => void;
}

function median(values: Float64Array): number {
  const sorted = values.slice().sort();
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function refuse(reason: ShedReason, details: string): Refusal {
  return { kind: 'refused', reason, details };
}

/** `v` in [lo, hi]; `hi` wins when lo > hi. */
function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

/** The in-flight count, the wait queue, the adaptive limit and the latency estimates of one server. */
export class AdmissionControl {
  private inFlight_ = 0;
  private admissions = 0;
  /** Waiting calls, oldest first. */
  private readonly waiters: Waiter[] = [];
  /** Fractional AIMD state; NaN until the first call sets it from initial_limit. */
  private limit_ = NaN;
  private readonly baselineRing = new Float64Array(BASELINE_SAMPLES);
  private baselineCount = 0;
  private baselineNext = 0;
  private baselineMs_ = NaN;
  private recentMs_ = NaN;
  private window = new Float64Array(64);
  private windowCount = 0;
  private windowStart = NaN;
  /** Whether the current window reached the limit (or refused or queued a call for it). */
  private windowLimited = false;
  /** Whether a call answered in the current window was dropped downstream (release()'s `dropped`). */
  private windowDropped = false;

  /**
   * `onLimit` hears every change of the integer adaptive limit (a gauge). `latencySignal: false`
   * adapts on drops alone (see release()): for a process whose calls mostly wait on others (funnel
   * root), where latency measures the others, not its own load.
   */
  constructor(
    private readonly onLimit?: (limit: number) => void,
    private readonly options: { latencySignal?: boolean } = {},
  ) {}

  /** Calls admitted and not yet released. */
  get inFlight(): number {
    return this.inFlight_;
  }

  /** Calls waiting for a slot. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** The no-load median latency, ms (NaN until MIN_BASELINE_SAMPLES calls ran alone). */
  get baselineMs(): number {
    return this.baselineMs_;
  }

  /** The median latency of the last judged window, ms (NaN before the first). */
  get recentMs(): number {
    return this.recentMs_;
  }

  /** The limit on calls in flight under `limits` now. */
  limit(limits: AdmissionLimits): number {
    const max = limits.max_in_flight;
    const a = limits.admission;
    if (!a.adaptive) return max;
    if (Number.isNaN(this.limit_)) this.setLimit(clamp(a.initial_limit, a.min_limit, max));
    return clamp(Math.floor(this.limit_), a.min_limit, max);
  }

  /** When the first waiter's time runs out (Infinity when none waits): call expire() then. */
  nextExpiryMs(): number {
    let next = Infinity;
    for (const w of this.waiters) if (w.expiresMs < next) next = w.expiresMs;
    return next;
  }

  /**
   * Admits a call (it counts in flight), refuses it, or, given `wait` and a queue_timeout_ms,
   * queues it: `wait` then hears its permit or refusal once, from release(), expire() or a later
   * admit() that evicts it. Never throws.
   */
  admit(nowMs: number, limits: AdmissionLimits, call: CallFacts): Permit | Refusal;
  admit(nowMs: number, limits: AdmissionLimits, call: CallFacts, wait: (outcome: Permit | Refusal) => void): Permit | Refusal | Waiting;
  admit(nowMs: number, limits: AdmissionLimits, call: CallFacts, wait?: (outcome: Permit | Refusal) => void): Permit | Refusal | Waiting {
    const n = this.inFlight_;
    const max = limits.max_in_flight;
    const limit = this.limit(limits);
    const lag = limits.shed_event_loop_lag_ms;
    if (lag > 0 && call.loopLagMs > lag) {
      return refuse('event_loop_lag', `over capacity: the event loop runs ${Math.round(call.loopLagMs)} ms late (limits.shed_event_loop_lag_ms)`);
    }
    if (n >= max) {
      this.windowLimited = true;
      return refuse('max_in_flight', `over capacity: ${n} Retrieve calls in flight (limits.max_in_flight)`);
    }
    if (n >= limit) {
      this.windowLimited = true;
      const full = refuse('concurrency_limit', `over capacity: ${n} Retrieve calls in flight, the adaptive limit now (limits.admission)`);
      const timeout = limits.admission.queue_timeout_ms;
      if (!wait || timeout <= 0) return full;
      const expected = limits.admission.deadline_check ? this.expectedMs() : 0;
      const byDeadline = call.remainingMs - expected < timeout;
      const expiresMs = nowMs + Math.min(timeout, call.remainingMs - expected);
      if (expiresMs <= nowMs) return this.tooLate(call.remainingMs, expected);
      if (this.waiters.length >= max) {
        const oldest = this.waiters.shift()!;
        oldest.done(full);
      }
      const w: Waiter = { kind: 'waiting', expiresMs, byDeadline, done: wait };
      this.waiters.push(w);
      return w;
    }
    // Alone, a call runs whatever its deadline: a short one ends degraded or DEADLINE_EXCEEDED,
    // as limits.on_deadline says. Among others it would take the time they take now.
    if (limits.admission.deadline_check && n > 0) {
      const expected = this.expectedMs();
      if (call.remainingMs < expected) return this.tooLate(call.remainingMs, expected);
    }
    return this.start(nowMs, limit);
  }

  /** Takes a waiting call out of the queue (its client went away): true if it was waiting. */
  cancel(waiting: Waiting): boolean {
    const i = this.waiters.indexOf(waiting as Waiter);
    if (i < 0) return false;
    this.waiters.splice(i, 1);
    return true;
  }

  /** Refuses the waiting calls whose time ran out by `nowMs`. */
  expire(nowMs: number, limits: AdmissionLimits): void {
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i];
      if (w.expiresMs > nowMs) {
        i++;
        continue;
      }
      this.waiters.splice(i, 1);
      w.done(this.expired(w, limits));
    }
  }

  /**
   * Ends an admitted call and hands its slot to the newest waiting call. `measured`: it ran the
   * funnel, so its latency says how loaded the server is (a call refused by validation does not).
   * `dropped`: something it called refused part of it for overload (a shard's
   * RESOURCE_EXHAUSTED at funnel root): the window it ends in backs the limit off, whatever
   * its latency.
   */
  release(permit: Permit, nowMs: number, limits: AdmissionLimits, measured: boolean, dropped = false): void {
    this.inFlight_ = Math.max(0, this.inFlight_ - 1);
    if (measured && dropped) this.windowDropped = true;
    if (measured) this.sample(permit, nowMs, limits);
    this.expire(nowMs, limits);
    // A waiter's callback may release synchronously (its request was invalid): state is re-read each turn.
    while (this.waiters.length > 0 && this.inFlight_ < this.limit(limits)) {
      const w = this.waiters.pop()!;
      w.done(this.start(nowMs, this.limit(limits)));
    }
  }

  private start(nowMs: number, limit: number): Permit {
    const n = this.inFlight_;
    this.inFlight_ = n + 1;
    if (this.inFlight_ >= limit) this.windowLimited = true;
    return { kind: 'admitted', startedMs: nowMs, alone: n === 0, seq: ++this.admissions };
  }

  /** The latency a call admitted now should expect: the last window's median, else the no-load one, else 0. */
  private expectedMs(): number {
    if (!Number.isNaN(this.recentMs_)) return this.recentMs_;
    return Number.isNaN(this.baselineMs_) ? 0 : this.baselineMs_;
  }

  private tooLate(remainingMs: number, expected: number): Refusal {
    return refuse(
      'deadline',
      `over capacity: the deadline leaves ${Math.max(0, Math.round(remainingMs))} ms and calls take about ${Math.round(expected)} ms now (limits.admission.deadline_check)`,
    );
  }

  private expired(w: Waiter, limits: AdmissionLimits): Refusal {
    if (w.byDeadline) {
      return refuse('deadline', `over capacity: no slot freed before the deadline less the ${Math.round(this.expectedMs())} ms calls take now (limits.admission.deadline_check)`);
    }
    return refuse(
      'queue_timeout',
      `over capacity: no slot freed within ${limits.admission.queue_timeout_ms} ms (${this.inFlight_} Retrieve calls in flight, limits.admission.queue_timeout_ms)`,
    );
  }

  private sample(permit: Permit, nowMs: number, limits: AdmissionLimits): void {
    const latency = Math.max(0, nowMs - permit.startedMs);
    // A call admitted alone but joined by others later shared the thread: not a no-load sample.
    if (permit.alone && permit.seq === this.admissions) this.addBaseline(latency);
    if (Number.isNaN(this.windowStart)) this.windowStart = nowMs;
    if (this.windowCount === this.window.length) {
      const grown = new Float64Array(this.window.length * 2);
      grown.set(this.window);
      this.window = grown;
    }
    this.window[this.windowCount++] = latency;
    if (nowMs - this.windowStart >= limits.admission.window_ms && this.windowCount >= MIN_WINDOW_SAMPLES) this.judge(nowMs, limits);
  }

  private addBaseline(latency: number): void {
    this.baselineRing[this.baselineNext] = latency;
    this.baselineNext = (this.baselineNext + 1) % BASELINE_SAMPLES;
    this.baselineCount = Math.min(BASELINE_SAMPLES, this.baselineCount + 1);
    if (this.baselineCount >= MIN_BASELINE_SAMPLES) this.baselineMs_ = median(this.baselineRing.subarray(0, this.baselineCount));
  }

  /** Closes the window: AIMD on its median latency against the no-load one. */
  private judge(nowMs: number, limits: AdmissionLimits): void {
    const a = limits.admission;
    const max = limits.max_in_flight;
    const recent = median(this.window.subarray(0, this.windowCount));
    this.recentMs_ = recent;
    if (a.adaptive) {
      const known = !Number.isNaN(this.baselineMs_);
      const current = clamp(Number.isNaN(this.limit_) ? a.initial_limit : this.limit_, a.min_limit, max);
      let next = current;
      const latencySignal = this.options.latencySignal ?? true;
      if (this.windowDropped || (latencySignal && known && recent > a.latency_tolerance * this.baselineMs_)) {
        next = current * BACKOFF;
      } else if (this.windowLimited) {
        // Without a no-load latency there is no target yet: grow no further than initial_limit.
        next = Math.min(current + 1, known || !latencySignal ? max : Math.max(a.initial_limit, current));
      }
      this.setLimit(clamp(next, a.min_limit, max));
    }
    this.windowCount = 0;
    this.windowStart = nowMs;
    this.windowLimited = false;
    this.windowDropped = false;
  }

  private setLimit(value: number): void {
    const before = Math.floor(this.limit_);
    this.limit_ = value;
    if (Math.floor(value) !== before) this.onLimit?.(Math.floor(value));
  }
}

/** Refuses waiting calls when their time runs out: a timer armed for the first waiter's expiry. */
export class ExpiryTimer {
  private timer: NodeJS.Timeout | undefined;
  private atMs = Infinity;

  constructor(
    private readonly admission: AdmissionControl,
    private readonly limits: () => AdmissionLimits,
  ) {}

  /** Arms the timer for the first waiting call's expiry (earlier than the one armed, if any). */
  arm(): void {
    const next = this.admission.nextExpiryMs();
    if (next === Infinity || (this.timer && this.atMs <= next)) return;
    this.disarm();
    this.atMs = next;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.atMs = Infinity;
        this.admission.expire(performance.now(), this.limits());
        this.arm();
      },
      Math.max(0, Math.ceil(next - performance.now())),
    );
  }

  disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.atMs = Infinity;
  }
}

/** The deadline a gRPC call carries, epoch ms (Infinity when it has none). */
export function callDeadline(call: { getDeadline(): Date | number }): number {
  const d = call.getDeadline();
  return d instanceof Date ? d.getTime() : d;
}

/** A call's deadline, or `defaultMs` from now when the caller sent none (limits.default_deadline_ms). */
export function deadlineOr(call: { getDeadline(): Date | number }, defaultMs: number): number {
  const d = callDeadline(call);
  return Number.isFinite(d) ? d : Date.now() + defaultMs;
}

/** A waiting call whose client cancelled it. */
export interface Cancelled {
  kind: 'cancelled';
  details: string;
}

/**
 * Admits a gRPC call that may wait for a slot: returns its permit or refusal at once, or Waiting,
 * and then `decided` hears, once, its permit or refusal when a slot frees or its wait runs out
 * (`expiry` is armed for that), or Cancelled when its client cancels it while it waits.
 */
export function admitCall(
  admission: AdmissionControl,
  expiry: ExpiryTimer,
  limits: AdmissionLimits,
  call: { on(e: 'cancelled', f: () => void): unknown; removeListener(e: 'cancelled', f: () => void): unknown },
  facts: CallFacts,
  decided: (a: Permit | Refusal | Cancelled) => void,
): Permit | Refusal | Waiting {
  let waiting: Waiting | undefined;
  const onCancel = () => {
    if (waiting && admission.cancel(waiting)) decided({ kind: 'cancelled', details: 'cancelled by the client while waiting for a slot' });
  };
  const a = admission.admit(performance.now(), limits, facts, (outcome) => {
    call.removeListener('cancelled', onCancel);
    decided(outcome);
  });
  if (a.kind !== 'waiting') return a;
  waiting = a;
  call.on('cancelled', onCancel);
  expiry.arm();
  return a;
}
