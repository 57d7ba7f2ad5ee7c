/**
 * Training the EarlyRanker's linear pCTR model (CONTRACT sections 2 and 7) from labelled
 * examples: L2-regularised logistic regression fitted by IRLS (Newton steps, each a Cholesky
 * solve of a system of at most 8 x 8), and the measures `funnel train-ranker` prints and
 * `funnel eval` may reuse: log-loss, exact AUC and a calibration table.
 *
 * Objective (minimised): the sum over rows of the log-loss, plus (l2 / 2) x the sum over used
 * features of (sd_j x w_j)^2, sd_j the feature's standard deviation over the training rows (1 for
 * a constant feature); the bias is not penalised. So the penalty is that of plain L2 on
 * standardised features (as glmnet's default): a feature's unit (popularity_rate is about 0.01,
 * ctr_prior_logit about -5) does not change how hard it is shrunk. l2 is in units of rows, a
 * Normal(0, 1/l2) prior on each standardised weight, so its pull fades as the data grows.
 */
import { fnv1a32 } from '../config/experiments';
import { sigmoid, type RankerFeatures, type RankerWeights } from '../stages/ranking/early-ranker';

/** The model's features, in the order of the config's `weights` block (after `bias`). */
export const FEATURE_NAMES = [
  'ann_similarity',
  'ctr_prior_logit',
  'popularity_rate',
  'quality',
  'source_ann',
  'source_targeting',
  'source_popularity',
] as const satisfies readonly (keyof RankerFeatures)[];

/** One feature's name. */
export type FeatureName = (typeof FEATURE_NAMES)[number];

/** Number of features (7). */
export const FEATURE_COUNT = FEATURE_NAMES.length;

/** Whether `s` names a model feature. */
export function isFeatureName(s: string): s is FeatureName {
  return (FEATURE_NAMES as readonly string[]).includes(s);
}

/** A labelled example as the trainer uses it. */
export interface LabelledExample {
  requestId: string;
  features: RankerFeatures;
  label: 0 | 1;
}

/** Why an example line was refused; `message` is `field: reason`. */
export class ExampleError extends Error {
  readonly code = 'ERR_EXAMPLE';
}

/**
 * Reads one parsed JSON example (`funnel examples` format). Needed: `request_id` (non-empty
 * string), `label` (0 or 1) and `features` with a finite number for each of `used` (the others
 * may be absent and read as 0). Other fields are ignored. Throws ExampleError.
 */
export function parseExample(obj: unknown, used: readonly FeatureName[] = FEATURE_NAMES): LabelledExample {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new ExampleError('expected a JSON object');
  const o = obj as Record<string, unknown>;
  if (typeof o.request_id !== 'string' || o.request_id === '') throw new ExampleError('request_id: must be a non-empty string');
  if (o.label !== 0 && o.label !== 1) throw new ExampleError(`label: must be 0 or 1 (got ${JSON.stringify(o.label) ?? 'nothing'})`);
  const f = o.features;
  if (f === null || typeof f !== 'object' || Array.isArray(f)) throw new ExampleError('features: must be an object');
  const raw = f as Record<string, unknown>;
  const features = zeroFeatures();
  for (const name of used) {
    const v = raw[name];
    if (v === undefined) throw new ExampleError(`features.${name}: missing`);
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ExampleError(`features.${name}: must be a finite number`);
    features[name] = v;
  }
  return { requestId: o.request_id, features, label: o.label };
}

function zeroFeatures(): RankerFeatures {
  return { ann_similarity: 0, ctr_prior_logit: 0, popularity_rate: 0, quality: 0, source_ann: 0, source_targeting: 0, source_popularity: 0 };
}

/** MurmurHash3's 32-bit finaliser: FNV-1a alone mixes the last bytes of a string poorly into its high bits. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Whether a request's rows go to the held-out set: fmix32(FNV-1a 32 of UTF-8 `seed:request_id`) / 2^32 < `fraction`. */
export function isHeldOut(requestId: string, fraction: number, seed: number): boolean {
  return fmix32(fnv1a32(`${seed}:${requestId}`)) / 4294967296 < fraction;
}

/** Examples stored by column: `x` is row-major, FEATURE_COUNT values per row in FEATURE_NAMES order. */
export class Dataset {
  private xs = new Float64Array(FEATURE_COUNT * 1024);
  private ys = new Uint8Array(1024);
  private n = 0;

  /** Builds a dataset from examples. */
  static of(examples: Iterable<Pick<LabelledExample, 'features' | 'label'>>): Dataset {
    const d = new Dataset();
    for (const e of examples) d.push(e.features, e.label);
    return d;
  }

  /** Rows held. */
  get size(): number {
    return this.n;
  }

  /** Feature values, row-major (a view of the first `size` rows). */
  get x(): Float64Array {
    return this.xs.subarray(0, this.n * FEATURE_COUNT);
  }

  /** Labels, 0 or 1 (a view of the first `size` rows). */
  get y(): Uint8Array {
    return this.ys.subarray(0, this.n);
  }

  /** Appends one row. */
  push(features: RankerFeatures, label: 0 | 1): void {
    if (this.n === this.ys.length) {
      const xs = new Float64Array(this.xs.length * 2);
      xs.set(this.xs);
      this.xs = xs;
      const ys = new Uint8Array(this.ys.length * 2);
      ys.set(this.ys);
      this.ys = ys;
    }
    const o = this.n * FEATURE_COUNT;
    for (let j = 0; j < FEATURE_COUNT; j++) this.xs[o + j] = features[FEATURE_NAMES[j]];
    this.ys[this.n] = label;
    this.n++;
  }

  /** Number of rows labelled 1. */
  positives(): number {
    let p = 0;
    for (let i = 0; i < this.n; i++) p += this.ys[i];
    return p;
  }
}

/** Options of fit(). */
export interface FitOptions {
  /** L2 strength on the standardised feature weights, in units of rows (default 1; 0 = none). */
  l2?: number;
  /** Features the model uses (default all); the others get weight 0. */
  features?: readonly FeatureName[];
  /** Newton iterations at most (default 100). */
  maxIterations?: number;
}

/** What fit() found. */
export interface FitResult {
  /** Every key of the config's weights block; features not used are 0. */
  weights: RankerWeights;
  /** Square roots of the diagonal of the inverse Hessian of the objective at the fit (Laplace standard errors), for `bias` and each used feature. */
  stdErrors: Partial<Record<'bias' | FeatureName, number>>;
  /** Newton iterations taken. */
  iterations: number;
  /** Whether the steps shrank below tolerance within maxIterations. */
  converged: boolean;
  /** The objective (summed log-loss plus penalty) at the fit. */
  objective: number;
}

/** A training set fit() cannot work with (no rows, or a single label). */
export class FitError extends Error {
  readonly code = 'ERR_FIT';
}

/** log(1 + e^z) without overflow. */
function softplus(z: number): number {
  return z > 0 ? z + Math.log1p(Math.exp(-z)) : Math.log1p(Math.exp(z));
}

/**
 * Cholesky factorisation of the symmetric `k` x `k` matrix `a` (row-major, lower triangle read):
 * returns L (row-major, lower) with L Lᵀ = a, or null when `a` is not positive definite.
 */
export function cholesky(a: Float64Array, k: number): Float64Array | null {
  const l = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * k + j];
      for (let m = 0; m < j; m++) s -= l[i * k + m] * l[j * k + m];
      if (i === j) {
        if (!(s > 0)) return null;
        l[i * k + i] = Math.sqrt(s);
      } else {
        l[i * k + j] = s / l[j * k + j];
      }
    }
  }
  return l;
}

/** Solves L Lᵀ x = b for the factor of cholesky(); returns x. */
export function choleskySolve(l: Float64Array, k: number, b: ArrayLike<number>): Float64Array {
  const z = new Float64Array(k);
  for (let i = 0; i < k; i++) {
    let s = b[i];
    for (let m = 0; m < i; m++) s -= l[i * k + m] * z[m];
    z[i] = s / l[i * k + i];
  }
  const x = new Float64Array(k);
  for (let i = k - 1; i >= 0; i--) {
    let s = z[i];
    for (let m = i + 1; m < k; m++) s -= l[m * k + i] * x[m];
    x[i] = s / l[i * k + i];
  }
  return x;
}

/** Factorises `h`, adding a growing multiple of the identity while it is not positive definite (a singular Hessian: l2 = 0 with a constant or collinear feature). */
function factorRidged(h: Float64Array, k: number): Float64Array {
  let l = cholesky(h, k);
  if (l) return l;
  let scale = 0;
  for (let i = 0; i < k; i++) scale = Math.max(scale, Math.abs(h[i * k + i]));
  let ridge = Math.max(scale, 1) * 1e-12;
  for (;;) {
    const r = Float64Array.from(h);
    for (let i = 0; i < k; i++) r[i * k + i] += ridge;
    l = cholesky(r, k);
    if (l) return l;
    ridge *= 10;
  }
}

/**
 * Fits bias and the used features' weights to `data` by IRLS (Newton's method with a
 * backtracking line search), from all-zero feature weights and the bias at the logit of the
 * base rate. Throws FitError when `data` has no rows or a single label.
 */
export function fit(data: Dataset, opts: FitOptions = {}): FitResult {
  const l2 = opts.l2 ?? 1;
  if (!(l2 >= 0) || !Number.isFinite(l2)) throw new RangeError(`l2 must be a finite number >= 0 (got ${l2})`);
  const used = opts.features ?? FEATURE_NAMES;
  const maxIterations = opts.maxIterations ?? 100;
  const n = data.size;
  if (n === 0) throw new FitError('no training rows');
  const pos = data.positives();
  if (pos === 0 || pos === n) throw new FitError(`every training row has label ${pos === 0 ? 0 : 1}: a fit needs both`);

  const cols = used.map((name) => FEATURE_NAMES.indexOf(name));
  const k = cols.length + 1;
  const x = data.x;
  const y = data.y;
  // Design row i is [1, x[i, cols[0]], ...]; gathered once so the loops below read contiguously.
  const design = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    design[i * k] = 1;
    for (let j = 1; j < k; j++) design[i * k + j] = x[i * FEATURE_COUNT + cols[j - 1]];
  }

  // Penalty per design column: l2 x the column's variance over the rows (l2 for a constant one).
  const pen = new Float64Array(k);
  for (let j = 1; j < k; j++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += design[i * k + j];
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (design[i * k + j] - mean) ** 2;
    v /= n;
    pen[j] = l2 * (v > 0 ? v : 1);
  }

  const objective = (w: Float64Array): number => {
    let f = 0;
    for (let i = 0; i < n; i++) {
      let eta = 0;
      for (let j = 0; j < k; j++) eta += design[i * k + j] * w[j];
      f += softplus(eta) - (y[i] ? eta : 0);
    }
    for (let j = 1; j < k; j++) f += 0.5 * pen[j] * w[j] * w[j];
    return f;
  };

  const gradHess = (w: Float64Array): { g: Float64Array; h: Float64Array } => {
    const g = new Float64Array(k);
    const h = new Float64Array(k * k);
    for (let i = 0; i < n; i++) {
      const o = i * k;
      let eta = 0;
      for (let j = 0; j < k; j++) eta += design[o + j] * w[j];
      const p = sigmoid(eta);
      const r = p - y[i];
      const s = p * (1 - p);
      for (let a = 0; a < k; a++) {
        const xa = design[o + a];
        g[a] += r * xa;
        const sx = s * xa;
        for (let b = 0; b <= a; b++) h[a * k + b] += sx * design[o + b];
      }
    }
    for (let j = 1; j < k; j++) {
      g[j] += pen[j] * w[j];
      h[j * k + j] += pen[j];
    }
    for (let a = 0; a < k; a++) for (let b = 0; b < a; b++) h[b * k + a] = h[a * k + b];
    return { g, h };
  };

  let w = new Float64Array(k);
  w[0] = Math.log(pos / (n - pos));
  let f = objective(w);
  let iterations = 0;
  let converged = false;
  while (iterations < maxIterations) {
    iterations++;
    const { g, h } = gradHess(w);
    const l = factorRidged(h, k);
    const d = choleskySolve(l, k, g.map((v) => -v));
    let slope = 0;
    for (let j = 0; j < k; j++) slope += g[j] * d[j];
    // Newton decrement (-slope, about twice the gap to the optimum) this small: the full step
    // lands within rounding of the optimum, where a line search would only compare noise.
    if (-slope <= 1e-12 * Math.max(1, Math.abs(f))) {
      w = w.map((v, j) => v + d[j]);
      f = objective(w);
      converged = true;
      break;
    }
    let t = 1;
    let next = w;
    let fNext = f;
    let accepted = false;
    while (t >= 1e-12) {
      next = w.map((v, j) => v + t * d[j]);
      fNext = objective(next);
      if (fNext <= f + 1e-4 * t * slope + 1e-14 * Math.abs(f)) {
        accepted = true;
        break;
      }
      t /= 2;
    }
    if (!accepted) break;
    let step = 0;
    let size = 0;
    for (let j = 0; j < k; j++) {
      step = Math.max(step, Math.abs(next[j] - w[j]));
      size = Math.max(size, Math.abs(next[j]));
    }
    w = next;
    f = fNext;
    if (step <= 1e-10 * (1 + size)) {
      converged = true;
      break;
    }
  }

  const { h } = gradHess(w);
  const l = factorRidged(h, k);
  const stdErrors: FitResult['stdErrors'] = {};
  for (let j = 0; j < k; j++) {
    const e = new Float64Array(k);
    e[j] = 1;
    const col = choleskySolve(l, k, e);
    stdErrors[j === 0 ? 'bias' : used[j - 1]] = Math.sqrt(col[j]);
  }
  const weights: RankerWeights = { bias: w[0], ...zeroFeatures() };
  used.forEach((name, j) => (weights[name] = w[j + 1]));
  return { weights, stdErrors, iterations, converged, objective: f };
}

/** pCTR of every row of `data` under `weights` (row order). */
export function predict(weights: RankerWeights, data: Dataset): Float64Array {
  const n = data.size;
  const x = data.x;
  const w = FEATURE_NAMES.map((name) => weights[name]);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let eta = weights.bias;
    for (let j = 0; j < FEATURE_COUNT; j++) eta += w[j] * x[i * FEATURE_COUNT + j];
    out[i] = sigmoid(eta);
  }
  return out;
}

/** Predictions are clamped to [1e-15, 1 - 1e-15] before their log, so a confident miss costs about 34.5 nats, not infinity. */
export const LOG_LOSS_CLAMP = 1e-15;

/** Mean log-loss (nats per row) of predictions `p` for labels `y` (same length); NaN when empty. */
export function logLoss(y: ArrayLike<number>, p: ArrayLike<number>): number {
  if (y.length !== p.length) throw new RangeError(`labels and predictions differ in length (${y.length} vs ${p.length})`);
  let s = 0;
  for (let i = 0; i < y.length; i++) {
    const q = Math.min(Math.max(p[i], LOG_LOSS_CLAMP), 1 - LOG_LOSS_CLAMP);
    s -= y[i] ? Math.log(q) : Math.log(1 - q);
  }
  return s / y.length;
}

/**
 * Exact ROC AUC: the share of (positive, negative) pairs the scores order correctly, a tie
 * counting one half. NaN when either label is absent. O(n log n).
 */
export function auc(y: ArrayLike<number>, scores: ArrayLike<number>): number {
  const n = y.length;
  if (scores.length !== n) throw new RangeError(`labels and scores differ in length (${n} vs ${scores.length})`);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  let negBelow = 0;
  let correct = 0;
  let positives = 0;
  for (let i = 0; i < n; ) {
    let j = i;
    let pos = 0;
    let neg = 0;
    while (j < n && scores[order[j]] === scores[order[i]]) {
      if (y[order[j]]) pos++;
      else neg++;
      j++;
    }
    correct += pos * negBelow + 0.5 * pos * neg;
    negBelow += neg;
    positives += pos;
    i = j;
  }
  const negatives = n - positives;
  return positives === 0 || negatives === 0 ? NaN : correct / (positives * negatives);
}

/** One calibration bucket: its range of predictions, rows, mean prediction and observed positive rate (null when empty). */
export interface CalibrationBucket {
  /** Quantile buckets: the least and greatest prediction in the bucket; width buckets: the bucket's bounds. */
  lo: number | null;
  hi: number | null;
  count: number;
  meanPredicted: number | null;
  observedRate: number | null;
}

/** Options of calibration(). */
export interface CalibrationOptions {
  /** Buckets (default 10). */
  buckets?: number;
  /** `quantile` (default): equal counts by predicted order, ties split at the borders; `width`: [b/B, (b+1)/B), the last closed. */
  mode?: 'quantile' | 'width';
}

/** Calibration table of predictions `p` against labels `y`: `buckets` rows, lowest predictions first. */
export function calibration(y: ArrayLike<number>, p: ArrayLike<number>, opts: CalibrationOptions = {}): CalibrationBucket[] {
  const buckets = opts.buckets ?? 10;
  const mode = opts.mode ?? 'quantile';
  const n = y.length;
  if (p.length !== n) throw new RangeError(`labels and predictions differ in length (${n} vs ${p.length})`);
  if (!Number.isInteger(buckets) || buckets < 1) throw new RangeError(`buckets must be an integer >= 1 (got ${buckets})`);
  const members: number[][] = Array.from({ length: buckets }, () => []);
  if (mode === 'quantile') {
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => p[a] - p[b] || a - b);
    for (let b = 0; b < buckets; b++) {
      for (let r = Math.floor((b * n) / buckets); r < Math.floor(((b + 1) * n) / buckets); r++) members[b].push(order[r]);
    }
  } else {
    for (let i = 0; i < n; i++) members[Math.min(buckets - 1, Math.max(0, Math.floor(p[i] * buckets)))].push(i);
  }
  return members.map((rows, b) => {
    let sumP = 0;
    let sumY = 0;
    let lo = Infinity;
    let hi = -Infinity;
    for (const i of rows) {
      sumP += p[i];
      sumY += y[i];
      lo = Math.min(lo, p[i]);
      hi = Math.max(hi, p[i]);
    }
    const count = rows.length;
    const range = mode === 'width' ? { lo: b / buckets, hi: (b + 1) / buckets } : { lo: count ? lo : null, hi: count ? hi : null };
    return { ...range, count, meanPredicted: count ? sumP / count : null, observedRate: count ? sumY / count : null };
  });
}

/** The measures of one set of rows under a model. */
export interface SplitMetrics {
  rows: number;
  positives: number;
  /** Mean log-loss, nats per row. */
  logLoss: number;
  /** Exact AUC (NaN with a single label). */
  auc: number;
  /** Share of rows labelled 1. */
  baseRate: number;
  /** Mean predicted pCTR. */
  meanPredicted: number;
  calibration: CalibrationBucket[];
}

/** Log-loss, AUC, base rate, mean prediction and a calibration table of `data` under `weights`; NaN measures when `data` is empty. */
export function evaluate(weights: RankerWeights, data: Dataset, opts: CalibrationOptions = {}): SplitMetrics {
  const p = predict(weights, data);
  const y = data.y;
  const positives = data.positives();
  let sumP = 0;
  for (let i = 0; i < p.length; i++) sumP += p[i];
  return {
    rows: data.size,
    positives,
    logLoss: logLoss(y, p),
    auc: auc(y, p),
    baseRate: positives / data.size,
    meanPredicted: sumP / data.size,
    calibration: calibration(y, p, opts),
  };
}
