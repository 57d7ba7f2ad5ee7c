/**
 * Shadow scoring outcomes: how a shadow model's ranking of a request's candidates compares with
 * the serving model's (Spearman's rank correlation of the two eCPM orders, mean |delta pCTR|).
 * A shadow run ends after its request was answered, so its outcome cannot ride on the stage's
 * report: it is published here, and the metrics registry subscribes (src/telemetry/metrics.ts).
 */

/** One sampled request's shadow run. */
export interface ShadowOutcome {
  pipeline: string;
  /** ok; error (the shadow model failed); timeout (no answer within the stage's timeout_ms); skipped (not run: its worker's queue was full, or the serving model fell back). */
  result: 'ok' | 'error' | 'timeout' | 'skipped';
  /** Spearman's rho of the two eCPM orders, in [-1, 1]; absent when undefined (fewer than 2 candidates, or one side all ties). */
  rankCorrelation?: number;
  /** Mean |serving pCTR - shadow pCTR| over the candidates. */
  pctrDrift?: number;
  candidates: number;
}

/** Receives shadow outcomes. */
export interface ShadowListener {
  shadowOutcome(o: ShadowOutcome): void;
}

// Weak references: a registry that is dropped (a test's server) stops receiving without unsubscribing.
const listeners = new Set<WeakRef<ShadowListener>>();

/** Subscribes `l` to every shadow outcome of this process (held weakly). */
export function onShadowOutcome(l: ShadowListener): void {
  listeners.add(new WeakRef(l));
}

/** Hands `o` to every live listener. */
export function publishShadowOutcome(o: ShadowOutcome): void {
  for (const ref of listeners) {
    const l = ref.deref();
    if (l === undefined) listeners.delete(ref);
    else l.shadowOutcome(o);
  }
}

/** 1-based ranks of `v` (ties get their average rank). */
function ranks(v: ArrayLike<number>): Float64Array {
  const n = v.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => v[a] - v[b]);
  const r = new Float64Array(n);
  for (let i = 0; i < n; ) {
    let j = i + 1;
    while (j < n && v[order[j]] === v[order[i]]) j++;
    const avg = (i + j + 1) / 2;
    for (let k = i; k < j; k++) r[order[k]] = avg;
    i = j;
  }
  return r;
}

/** Spearman's rank correlation of `a` and `b` (same length): Pearson's r of their tie-averaged ranks; undefined below 2 values or when either side is constant. */
export function spearman(a: ArrayLike<number>, b: ArrayLike<number>): number | undefined {
  const n = a.length;
  if (n < 2 || b.length !== n) return undefined;
  const ra = ranks(a);
  const rb = ranks(b);
  const mean = (n + 1) / 2;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const x = ra[i] - mean;
    const y = rb[i] - mean;
    sab += x * y;
    saa += x * x;
    sbb += y * y;
  }
  if (saa === 0 || sbb === 0) return undefined;
  return Math.max(-1, Math.min(1, sab / Math.sqrt(saa * sbb)));
}

/** Mean |a[i] - b[i]| (0 for no values). */
export function meanAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  if (n === 0) return 0;
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.abs(a[i] - b[i]);
  return s / n;
}
