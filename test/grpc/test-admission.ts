/**
 * AdmissionControl on an injected clock: the hard cap, the adaptive limit (AIMD on window
 * medians against the no-load median), the deadline check and the loop-lag check, then a
 * simulated saturated server, with and without the adaptive limit.
 */
import { strict as assert } from 'node:assert';
import { AdmissionControl, BACKOFF, MIN_WINDOW_SAMPLES, type AdmissionLimits, type Permit, type Refusal, type Waiting } from '../../src/grpc/admission';
import { admissionSchema } from '../../src/config/schema';

function limits(o: { max_in_flight?: number; shed_event_loop_lag_ms?: number } & Record<string, unknown> = {}): AdmissionLimits {
  const { max_in_flight = 128, shed_event_loop_lag_ms = 0, ...admission } = o;
  return { max_in_flight, shed_event_loop_lag_ms, admission: admissionSchema.parse(admission) };
}

const open = { remainingMs: Infinity, loopLagMs: 0 };

function admitted(r: Permit | Refusal | Waiting | undefined): Permit {
  assert.equal(r?.kind, 'admitted', r?.kind === 'refused' ? `refused: ${r.reason}: ${r.details}` : String(r?.kind));
  return r as Permit;
}

function refused(r: Permit | Refusal | Waiting | undefined, reason: Refusal['reason']): Refusal {
  assert.equal(r?.kind, 'refused', `${r?.kind}, expected a refusal`);
  assert.equal((r as Refusal).reason, reason, (r as Refusal).details);
  return r as Refusal;
}

/** A waiting-call callback that keeps what it hears (at most once). */
function hearing(): { cb: (o: Permit | Refusal) => void; heard: () => Permit | Refusal | undefined } {
  let heard: Permit | Refusal | undefined;
  return {
    cb: (o) => {
      assert.equal(heard, undefined, 'a waiting call heard twice');
      heard = o;
    },
    heard: () => heard,
  };
}

/**
 * One judged window from `t`: MIN_WINDOW_SAMPLES calls, admitted window_ms / 9 apart and each
 * answered `latency` ms later. `alone`: nothing else in flight (no-load samples); otherwise one
 * other call is held in flight, or with `limited` enough of them that each call reaches the limit.
 * Returns the clock after the window.
 */
function window(a: AdmissionControl, l: AdmissionLimits, t: number, latency: number, opts: { alone?: boolean; limited?: boolean; dropped?: boolean } = {}): number {
  const n = MIN_WINDOW_SAMPLES;
  const hold = opts.alone ? 0 : opts.limited ? a.limit(l) - 1 : 1;
  const held = Array.from({ length: hold }, () => admitted(a.admit(t, l, open)));
  const step = l.admission.window_ms / (n - 1);
  let end = t;
  for (let i = 0; i < n; i++) {
    const p = admitted(a.admit(t + i * step, l, open));
    end = t + i * step + latency;
    // With `dropped`, one call of the window was refused downstream.
    a.release(p, end, l, true, opts.dropped === true && i === n >> 1);
  }
  for (const p of held) a.release(p, end, l, false);
  return end;
}

/** A window of calls that ran alone, `latency` ms each: the no-load median becomes `latency`. */
function learnBaseline(a: AdmissionControl, l: AdmissionLimits, t: number, latency: number): number {
  return window(a, l, t, latency, { alone: true });
}

describe('AdmissionControl', () => {
  it('when max_in_flight calls are in flight, then the next is refused as max_in_flight, and a release lets one in', () => {
    const a = new AdmissionControl();
    const l = limits({ max_in_flight: 3, adaptive: false });
    const held = [0, 1, 2].map(() => admitted(a.admit(0, l, open)));
    assert.equal(a.inFlight, 3);
    const r = refused(a.admit(0, l, open), 'max_in_flight');
    assert.match(r.details, /3 Retrieve calls in flight \(limits\.max_in_flight\)/);
    a.release(held[0], 1, l, true);
    admitted(a.admit(1, l, open));
    assert.equal(a.inFlight, 3);
  });

  it('when adaptive is off, then the limit is max_in_flight whatever the latency', () => {
    const a = new AdmissionControl();
    const l = limits({ max_in_flight: 50, adaptive: false });
    let t = learnBaseline(a, l, 0, 1);
    for (let i = 0; i < 10; i++) t = window(a, l, t, 100);
    assert.equal(a.limit(l), 50);
  });

  it('when the adaptive limit is under max_in_flight and reached, then the call is refused as concurrency_limit', () => {
    const a = new AdmissionControl();
    const l = limits({ max_in_flight: 128, initial_limit: 3, min_limit: 1 });
    assert.equal(a.limit(l), 3);
    for (let i = 0; i < 3; i++) admitted(a.admit(0, l, open));
    const r = refused(a.admit(0, l, open), 'concurrency_limit');
    assert.match(r.details, /the adaptive limit now \(limits\.admission\)/);
  });

  it('when initial_limit is outside [min_limit, max_in_flight], then the limit starts clamped', () => {
    assert.equal(new AdmissionControl().limit(limits({ max_in_flight: 5, initial_limit: 20 })), 5);
    assert.equal(new AdmissionControl().limit(limits({ max_in_flight: 100, initial_limit: 2, min_limit: 6 })), 6);
    assert.equal(new AdmissionControl().limit(limits({ max_in_flight: 3, initial_limit: 2, min_limit: 6 })), 3);
  });

  it('when windows answer over latency_tolerance times the no-load median, then the limit backs off by BACKOFF per window down to min_limit', () => {
    const changes: number[] = [];
    const a = new AdmissionControl((n) => changes.push(n));
    const l = limits({ initial_limit: 40, min_limit: 4, latency_tolerance: 2, window_ms: 100 });
    let t = learnBaseline(a, l, 0, 1);
    assert.equal(a.baselineMs, 1);
    let expected = 40;
    for (let i = 0; i < 5; i++) {
      t = window(a, l, t, 2.5);
      expected *= BACKOFF;
      assert.equal(a.limit(l), Math.floor(expected), `window ${i}`);
    }
    assert.equal(a.recentMs, 2.5);
    for (let i = 0; i < 40; i++) t = window(a, l, t, 2.5);
    assert.equal(a.limit(l), 4);
    assert.deepEqual(changes.slice(0, 3), [40, 36, 32]);
    assert.equal(changes.at(-1), 4);
  });

  it('when windows reach the limit with the latency under the target, then it grows by 1 a window up to max_in_flight; windows that never reach it leave it', () => {
    const a = new AdmissionControl();
    const l = limits({ max_in_flight: 12, initial_limit: 8, min_limit: 2 });
    let t = learnBaseline(a, l, 0, 1);
    t = window(a, l, t, 1.5);
    assert.equal(a.limit(l), 8, 'a window with two calls at a time does not grow the limit');
    for (let i = 1; i <= 3; i++) {
      t = window(a, l, t, 1.5, { limited: true });
      assert.equal(a.limit(l), 8 + i);
    }
    for (let i = 0; i < 5; i++) t = window(a, l, t, 1.5, { limited: true });
    assert.equal(a.limit(l), 12);
  });

  it('when a call of a window was dropped downstream, then the limit backs off by BACKOFF whatever the latency (and with the latency signal too)', () => {
    for (const latencySignal of [true, false]) {
      const a = new AdmissionControl(undefined, { latencySignal });
      const l = limits({ initial_limit: 20, min_limit: 2 });
      let t = learnBaseline(a, l, 0, 1);
      t = window(a, l, t, 1, { limited: true, dropped: true });
      assert.equal(a.limit(l), 18, `latencySignal ${latencySignal}`);
      t = window(a, l, t, 1, { limited: true, dropped: true });
      assert.equal(a.limit(l), Math.floor(20 * BACKOFF * BACKOFF));
    }
  });

  it('when the latency signal is off (funnel root), then slow windows do not back off, windows that reach the limit grow it to max_in_flight without a no-load latency, and drops back it off', () => {
    const a = new AdmissionControl(undefined, { latencySignal: false });
    const l = limits({ max_in_flight: 14, initial_limit: 8, min_limit: 2, latency_tolerance: 2 });
    let t = 0;
    // No call ever ran alone, and every window is 500x slower than any no-load figure could be.
    for (let i = 1; i <= 6; i++) {
      t = window(a, l, t, 500, { limited: true });
      assert.equal(a.limit(l), Math.min(14, 8 + i));
    }
    assert.ok(Number.isNaN(a.baselineMs));
    t = window(a, l, t, 500, { limited: true, dropped: true });
    assert.equal(a.limit(l), Math.floor(14 * BACKOFF));
    // A dropped call that was not measured (the caller's own error) is no signal.
    const p = admitted(a.admit(t, l, open));
    a.release(p, t + 1, l, false, true);
    t = window(a, l, t + 1, 500);
    assert.equal(a.limit(l), Math.floor(14 * BACKOFF));
  });

  it('when no call has run alone yet (no no-load latency), then the limit neither backs off nor grows past initial_limit', () => {
    const a = new AdmissionControl();
    const l = limits({ initial_limit: 6, min_limit: 2 });
    let t = 0;
    for (let i = 0; i < 5; i++) t = window(a, l, t, 500, { limited: true });
    assert.ok(Number.isNaN(a.baselineMs));
    assert.equal(a.limit(l), 6);
  });

  it('when fewer than MIN_WINDOW_SAMPLES calls were answered, or less than window_ms went by, then the window is not judged', () => {
    const l = limits({ initial_limit: 20, window_ms: 100 });
    const a = new AdmissionControl();
    const t = learnBaseline(a, l, 0, 1);
    const other = admitted(a.admit(t, l, open));
    // Nine slow calls over a whole second: too few.
    for (let i = 0; i < MIN_WINDOW_SAMPLES - 1; i++) {
      const p = admitted(a.admit(t + i * 100, l, open));
      a.release(p, t + i * 100 + 50, l, true);
    }
    assert.equal(a.limit(l), 20, 'judged with too few calls');
    // Ten more within 10 ms of each other, the window having begun at the last judgement: judged
    // once window_ms has passed since it.
    const b = new AdmissionControl();
    const u = learnBaseline(b, l, 0, 1);
    const other2 = admitted(b.admit(u, l, open));
    for (let i = 0; i < MIN_WINDOW_SAMPLES; i++) {
      const p = admitted(b.admit(u, l, open));
      b.release(p, u + 50 + i, l, true);
    }
    assert.equal(b.limit(l), 20, 'judged before window_ms');
    const p = admitted(b.admit(u, l, open));
    b.release(p, u + 100, l, true);
    assert.equal(b.limit(l), 18, 'window_ms after the last judgement, the window was not judged');
    a.release(other, t + 1000, l, false);
    b.release(other2, u + 100, l, false);
  });

  it('when a call admitted alone is joined by another before it ends, then it is no no-load sample', () => {
    const a = new AdmissionControl();
    const l = limits();
    for (let i = 0; i < 5; i++) {
      const first = admitted(a.admit(i * 100, l, open));
      const joined = admitted(a.admit(i * 100 + 1, l, open));
      a.release(first, i * 100 + 50, l, true);
      a.release(joined, i * 100 + 60, l, true);
    }
    assert.ok(Number.isNaN(a.baselineMs), `baseline ${a.baselineMs}`);
    learnBaseline(a, l, 1000, 2);
    assert.equal(a.baselineMs, 2);
  });

  it('when a call did not run the funnel (measured false), then its latency counts in no window and no baseline', () => {
    const a = new AdmissionControl();
    const l = limits({ initial_limit: 20 });
    let t = learnBaseline(a, l, 0, 1);
    for (let i = 0; i < 50; i++) {
      const p = admitted(a.admit(t, l, open));
      t += 1000;
      a.release(p, t, l, false);
    }
    assert.ok(Number.isNaN(a.recentMs) || a.recentMs === 1);
    assert.equal(a.limit(l), 20);
    assert.equal(a.baselineMs, 1);
    assert.equal(a.inFlight, 0);
  });

  it('when other calls are in flight and the deadline leaves less than the recent median latency, then the call is refused as deadline; alone it runs', () => {
    const a = new AdmissionControl();
    const l = limits({ initial_limit: 50, latency_tolerance: 10 });
    let t = learnBaseline(a, l, 0, 2);
    t = window(a, l, t, 8);
    assert.equal(a.recentMs, 8);
    const alone = admitted(a.admit(t, l, { remainingMs: 1, loopLagMs: 0 }));
    const r = refused(a.admit(t, l, { remainingMs: 5, loopLagMs: 0 }), 'deadline');
    assert.match(r.details, /the deadline leaves 5 ms and calls take about 8 ms now/);
    const ok = admitted(a.admit(t, l, { remainingMs: 9, loopLagMs: 0 }));
    const off = limits({ initial_limit: 50, latency_tolerance: 10, deadline_check: false });
    admitted(a.admit(t, off, { remainingMs: 1, loopLagMs: 0 }));
    a.release(alone, t + 1, l, true);
    a.release(ok, t + 1, l, true);
  });

  it('when no window has been judged yet, then the deadline check uses the no-load median, and with neither it admits', () => {
    const a = new AdmissionControl();
    const l = limits();
    const first = admitted(a.admit(0, l, open));
    admitted(a.admit(0, l, { remainingMs: 0.001, loopLagMs: 0 }));
    a.release(first, 1, l, false);
    // Five no-load samples set the baseline before a window is judged.
    const b = new AdmissionControl();
    for (let i = 0; i < 5; i++) b.release(admitted(b.admit(i * 4, l, open)), i * 4 + 4, l, true);
    assert.equal(b.baselineMs, 4);
    assert.ok(Number.isNaN(b.recentMs));
    const held = admitted(b.admit(100, l, open));
    refused(b.admit(100, l, { remainingMs: 3, loopLagMs: 0 }), 'deadline');
    b.release(held, 101, l, true);
  });

  it('when the event loop runs later than shed_event_loop_lag_ms, then the call is refused as event_loop_lag; 0 turns it off', () => {
    const a = new AdmissionControl();
    refused(a.admit(0, limits({ shed_event_loop_lag_ms: 40 }), { remainingMs: Infinity, loopLagMs: 41 }), 'event_loop_lag');
    admitted(a.admit(0, limits({ shed_event_loop_lag_ms: 0 }), { remainingMs: Infinity, loopLagMs: 1000 }));
    assert.equal(a.inFlight, 1);
  });

  it('when a reload lowers max_in_flight under the adaptive limit, then the lower one applies at once', () => {
    const a = new AdmissionControl();
    assert.equal(a.limit(limits({ initial_limit: 30 })), 30);
    assert.equal(a.limit(limits({ initial_limit: 30, max_in_flight: 10 })), 10);
    assert.equal(a.limit(limits({ initial_limit: 30, adaptive: false, max_in_flight: 77 })), 77);
  });

  describe('waiting for a slot (queue_timeout_ms)', () => {
    const l = limits({ initial_limit: 2, min_limit: 2, queue_timeout_ms: 20 });

    it('when the adaptive limit is reached, then a call with a callback waits; a release hands the slot to the newest waiter (LIFO)', () => {
      const a = new AdmissionControl();
      const running = [admitted(a.admit(0, l, open)), admitted(a.admit(0, l, open))];
      const older = hearing();
      const newer = hearing();
      assert.equal(a.admit(1, l, open, older.cb).kind, 'waiting');
      assert.equal(a.admit(2, l, open, newer.cb).kind, 'waiting');
      assert.equal(a.waiting, 2);
      a.release(running[0], 5, l, true);
      const p = admitted(newer.heard());
      assert.equal(p.startedMs, 5);
      assert.equal(older.heard(), undefined);
      assert.equal(a.inFlight, 2);
      assert.equal(a.waiting, 1);
      a.release(running[1], 6, l, true);
      admitted(older.heard());
    });

    it('when no slot frees within queue_timeout_ms, then expire() refuses the waiter as queue_timeout, at the time nextExpiryMs() said', () => {
      const a = new AdmissionControl();
      admitted(a.admit(0, l, open));
      admitted(a.admit(0, l, open));
      const w = hearing();
      a.admit(3, l, open, w.cb);
      assert.equal(a.nextExpiryMs(), 23);
      a.expire(22.9, l);
      assert.equal(w.heard(), undefined);
      a.expire(23, l);
      const r = refused(w.heard(), 'queue_timeout');
      assert.match(r.details, /no slot freed within 20 ms \(2 Retrieve calls in flight, limits\.admission\.queue_timeout_ms\)/);
      assert.equal(a.nextExpiryMs(), Infinity);
    });

    it('when the deadline less the recent latency comes before queue_timeout_ms, then the wait ends there as deadline; when it has already come, the call is refused at once', () => {
      const a = new AdmissionControl();
      const t = window(a, limits({ initial_limit: 2, min_limit: 2, latency_tolerance: 100 }), 0, 4);
      assert.equal(a.recentMs, 4);
      admitted(a.admit(t, l, open));
      admitted(a.admit(t, l, open));
      const w = hearing();
      a.admit(t, l, { remainingMs: 10, loopLagMs: 0 }, w.cb);
      assert.equal(a.nextExpiryMs(), t + 6);
      a.expire(t + 6, l);
      refused(w.heard(), 'deadline');
      refused(a.admit(t, l, { remainingMs: 3, loopLagMs: 0 }, hearing().cb), 'deadline');
    });

    it('when max_in_flight calls already wait, then the oldest is refused to make room for the new one', () => {
      const small = limits({ max_in_flight: 3, initial_limit: 1, min_limit: 1, queue_timeout_ms: 20 });
      const a = new AdmissionControl();
      admitted(a.admit(0, small, open));
      const w = [hearing(), hearing(), hearing(), hearing()];
      for (const h of w.slice(0, 3)) assert.equal(a.admit(0, small, open, h.cb).kind, 'waiting');
      assert.equal(a.admit(1, small, open, w[3].cb).kind, 'waiting');
      refused(w[0].heard(), 'concurrency_limit');
      assert.equal(a.waiting, 3);
    });

    it('when in flight reaches max_in_flight itself, or queue_timeout_ms is 0, or no callback is given, then the call is refused at once', () => {
      const a = new AdmissionControl();
      const capped = limits({ max_in_flight: 2, initial_limit: 2, queue_timeout_ms: 20 });
      admitted(a.admit(0, capped, open));
      admitted(a.admit(0, capped, open));
      refused(a.admit(0, capped, open, hearing().cb), 'max_in_flight');
      const b = new AdmissionControl();
      admitted(b.admit(0, l, open));
      admitted(b.admit(0, l, open));
      refused(b.admit(0, limits({ initial_limit: 2, min_limit: 2, queue_timeout_ms: 0 }), open, hearing().cb), 'concurrency_limit');
      refused(b.admit(0, l, open), 'concurrency_limit');
      assert.equal(b.waiting, 0);
    });

    it('when a waiting call is cancelled, then it leaves the queue and never hears', () => {
      const a = new AdmissionControl();
      const running = [admitted(a.admit(0, l, open)), admitted(a.admit(0, l, open))];
      const w = hearing();
      const waiting = a.admit(0, l, open, w.cb) as Waiting;
      assert.equal(a.cancel(waiting), true);
      assert.equal(a.cancel(waiting), false);
      a.release(running[0], 1, l, true);
      a.expire(100, l);
      assert.equal(w.heard(), undefined);
      assert.equal(a.inFlight, 1);
    });

    it('when a waiter admitted by a release releases at once (its request was invalid), then the next waiter gets the slot', () => {
      const a = new AdmissionControl();
      const running = [admitted(a.admit(0, l, open)), admitted(a.admit(0, l, open))];
      const second = hearing();
      a.admit(1, l, open, second.cb);
      a.admit(2, l, open, (o) => a.release(admitted(o), 5, l, false));
      a.release(running[0], 5, l, true);
      admitted(second.heard());
      assert.equal(a.inFlight, 2);
      assert.equal(a.waiting, 0);
    });
  });

  describe('on a simulated server that does 2 calls at once (processor sharing, 1 ms of work each)', () => {
    /**
     * Offered `load` x capacity after a second at 0.3x; arrivals evenly spaced, or delivered in
     * batches every `burstMs` (a stalled client or event loop); waiting calls are expired each
     * step. Goodput (share of capacity) and p99 latency from arrival, over the last 2 s.
     */
    function simulate(l: AdmissionLimits, load: number, burstMs = 0): { goodput: number; p99: number; limit: number } {
      const PARALLEL = 2;
      const WORK = 1;
      const DT = 0.02;
      const a = new AdmissionControl();
      const running: { permit: Permit; left: number; arrived: number }[] = [];
      const latencies: number[] = [];
      let answered = 0;
      let arrival = 0;
      for (let t = 0; t < 5000; t += DT) {
        const rate = t < 1000 ? 0.3 : load;
        const gap = 1 / ((rate * PARALLEL) / WORK);
        const due = burstMs > 0 ? Math.floor(t / burstMs) * burstMs : t;
        while (arrival <= due) {
          const arrived = arrival;
          arrival += gap;
          const r = a.admit(t, l, open, (o) => {
            if (o.kind === 'admitted') running.push({ permit: o, left: WORK, arrived });
          });
          if (r.kind === 'admitted') running.push({ permit: r, left: WORK, arrived });
        }
        a.expire(t, l);
        const share = Math.min(1, PARALLEL / Math.max(1, running.length));
        for (const c of [...running]) {
          c.left -= share * DT;
          if (c.left > 1e-9) continue;
          running.splice(running.indexOf(c), 1);
          a.release(c.permit, t + DT, l, true);
          if (t >= 3000) {
            answered++;
            latencies.push(t + DT - c.arrived);
          }
        }
      }
      latencies.sort((x, y) => x - y);
      return { goodput: answered / (2 * PARALLEL * 1000), p99: latencies[Math.floor(latencies.length * 0.99)] ?? NaN, limit: a.limit(l) };
    }

    it('when the limit adapts (latency_tolerance 3) at 3x capacity, then goodput stays over 90% and p99 under 4x the no-load latency', () => {
      const r = simulate(limits({ min_limit: 2, latency_tolerance: 3, queue_timeout_ms: 0 }), 3);
      assert.ok(r.goodput >= 0.9, `goodput ${r.goodput}`);
      assert.ok(r.p99 <= 4, `p99 ${r.p99} ms`);
      assert.ok(r.limit >= 2 && r.limit <= 10, `limit ${r.limit}`);
    });

    it('when the tolerance is tighter (2), then p99 is tighter too (under 3x), goodput still over 90%', () => {
      const r = simulate(limits({ min_limit: 2, latency_tolerance: 2, queue_timeout_ms: 0 }), 3);
      assert.ok(r.goodput >= 0.9, `goodput ${r.goodput}`);
      assert.ok(r.p99 <= 3, `p99 ${r.p99} ms`);
    });

    it('when the limit is a fixed 128 (adaptive false), then the same load queues: p99 is tens of times the no-load latency', () => {
      const r = simulate(limits({ adaptive: false }), 3);
      assert.ok(r.goodput >= 0.9, `goodput ${r.goodput}`);
      assert.ok(r.p99 > 30, `p99 ${r.p99} ms`);
    });

    it('when calls arrive in batches every 10 ms at 1.5x, then waiting up to 20 ms keeps goodput over 90% with p99 under 25 ms; refusing at once keeps under two thirds', () => {
      const waiting = simulate(limits({ min_limit: 2, queue_timeout_ms: 20 }), 1.5, 10);
      assert.ok(waiting.goodput >= 0.9, `goodput ${waiting.goodput}`);
      assert.ok(waiting.p99 <= 25, `p99 ${waiting.p99} ms`);
      const atOnce = simulate(limits({ min_limit: 2, queue_timeout_ms: 0 }), 1.5, 10);
      assert.ok(atOnce.goodput < 0.67, `goodput ${atOnce.goodput}`);
    });

    it('when arrivals are even at 3x and calls may wait, then the newest go first: p99 stays under 5x the no-load latency', () => {
      const r = simulate(limits({ min_limit: 2, queue_timeout_ms: 20 }), 3);
      assert.ok(r.goodput >= 0.95, `goodput ${r.goodput}`);
      assert.ok(r.p99 <= 5, `p99 ${r.p99} ms`);
    });
  });
});
