/**
 * A log-linear latency histogram in the manner of HdrHistogram: whole microseconds, exact below
 * 2,048 us, above that 1,024 buckets per power of two (relative error under 0.1%). Fixed memory
 * whatever the rate or duration, and mergeable across load generator processes.
 */

/** Values below this are counted exactly, one bucket per microsecond. */
const LINEAR = 2048;
/** Buckets per power of two above {@link LINEAR}. */
const SUB = 1024;
/** Powers of two covered above {@link LINEAR}: up to 2^(11+27) us, about 76 hours. */
const OCTAVES = 27;
const BUCKETS = LINEAR + OCTAVES * SUB;

/** Bucket of a whole number of microseconds (clamped to the covered range). */
export function bucketOf(us: number): number {
  if (us < LINEAR) return us < 0 ? 0 : us;
  let e = Math.floor(Math.log2(us)) - 10;
  let m = Math.floor(us / 2 ** e);
  // log2 near a power of two may round either way: keep the mantissa in [SUB, 2*SUB).
  if (m < SUB) m = Math.floor(us / 2 ** --e);
  else if (m >= 2 * SUB) m = Math.floor(us / 2 ** ++e);
  return Math.min(BUCKETS - 1, LINEAR + (e - 1) * SUB + (m - SUB));
}

/** Smallest and largest microsecond value of bucket `b` (inclusive). */
export function bucketRange(b: number): [number, number] {
  if (b < LINEAR) return [b, b];
  const e = Math.floor((b - LINEAR) / SUB) + 1;
  const m = SUB + ((b - LINEAR) % SUB);
  const scale = 2 ** e;
  return [m * scale, (m + 1) * scale - 1];
}

/** A serializable histogram: sparse `[bucket, count]` pairs plus exact count, sum and extremes (microseconds). */
export interface HistogramSnapshot {
  buckets: [number, number][];
  count: number;
  sumUs: number;
  minUs: number;
  maxUs: number;
}

/** Latencies in microseconds; percentiles are reported as the upper end of their bucket, capped at the exact maximum. */
export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private n = 0;
  private sum = 0;
  private min = Infinity;
  private max = 0;

  /** Counts one value in microseconds (fractions are rounded to the nearest microsecond). */
  record(us: number): void {
    const v = Math.max(0, Math.round(us));
    this.counts[bucketOf(v)]++;
    this.n++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** Values recorded. */
  get count(): number {
    return this.n;
  }

  /** Largest value recorded, microseconds (0 when empty). */
  get maxUs(): number {
    return this.max;
  }

  /** Mean, microseconds (NaN when empty). */
  get meanUs(): number {
    return this.n === 0 ? NaN : this.sum / this.n;
  }

  /** The value at quantile `q` in [0, 1] (nearest rank), microseconds; NaN when empty. */
  quantileUs(q: number): number {
    if (this.n === 0) return NaN;
    if (q >= 1) return this.max;
    const rank = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.counts[b];
      if (seen >= rank) return Math.min(this.max, Math.max(this.min, bucketRange(b)[1]));
    }
    return this.max;
  }

  /** Adds every value of `other` to this one. */
  merge(other: LatencyHistogram | HistogramSnapshot): void {
    const s = other instanceof LatencyHistogram ? other.snapshot() : other;
    for (const [b, c] of s.buckets) this.counts[b] += c;
    this.n += s.count;
    this.sum += s.sumUs;
    if (s.count > 0) {
      this.min = Math.min(this.min, s.minUs);
      this.max = Math.max(this.max, s.maxUs);
    }
  }

  /** The non-empty buckets and totals, for sending to another process. */
  snapshot(): HistogramSnapshot {
    const buckets: [number, number][] = [];
    for (let b = 0; b < BUCKETS; b++) if (this.counts[b] > 0) buckets.push([b, this.counts[b]]);
    return { buckets, count: this.n, sumUs: this.sum, minUs: this.n === 0 ? 0 : this.min, maxUs: this.max };
  }

  /** A histogram holding the values of a snapshot. */
  static from(s: HistogramSnapshot): LatencyHistogram {
    const h = new LatencyHistogram();
    h.merge(s);
    return h;
  }
}
