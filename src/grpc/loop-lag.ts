/**
 * Event-loop lag, sampled by a 10 ms timer. Calls that wait in grpc-js before their handler runs
 * are invisible to an in-flight counter, but they make the loop late on every turn, so shedding
 * on sustained lag bounds that hidden queue too. One long task (a synced LMDB commit, a GC
 * pause) makes one sample late, not several in a row, so it does not shed.
 */

/** A running lag sampler: `lagMs` is the smallest lag of the last `window` samples. */
export class LoopLag {
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  private readonly samples: Float64Array;
  private next = 0;

  constructor(
    private readonly intervalMs = 10,
    window = 4,
  ) {
    this.samples = new Float64Array(window);
  }

  /** Starts sampling (the timer does not keep the process alive). */
  start(): this {
    if (this.timer) return this;
    this.last = performance.now();
    this.samples.fill(0);
    this.timer = setInterval(() => {
      const now = performance.now();
      this.samples[this.next] = Math.max(0, now - this.last - this.intervalMs);
      this.next = (this.next + 1) % this.samples.length;
      this.last = now;
    }, this.intervalMs);
    this.timer.unref();
    return this;
  }

  /** Stops sampling. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.samples.fill(0);
  }

  /** Sustained lag in milliseconds: the least of the recent samples. */
  get lagMs(): number {
    let min = Infinity;
    for (const s of this.samples) if (s < min) min = s;
    return min;
  }
}
