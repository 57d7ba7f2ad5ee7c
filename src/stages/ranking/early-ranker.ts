/**
 * EarlyRanker: a logistic pCTR model over a handful of features, and eCPM = bid x pCTR, the
 * score every later stage and the response use. Keeps the best `keep`.
 */
import type { EarlyRankerStageConfig } from '../../config/schema';
import type { Metric } from '../../native/index';
import type { AdTable } from '../../serving/ad-table';
import { SOURCE_BIT, type Candidate, type PopularityView, type Stage, type StageContext, type VectorSource } from '../../pipeline/types';
import { FEATURE_COUNT, featureTable, modelPctr, usesModels, type FeatureTable } from './model-ranker';

/** Weights of the pCTR model: `bias` plus one per feature. */
export type RankerWeights = EarlyRankerStageConfig['weights'];

/** The model's features of one candidate (names are the weight keys). */
export interface RankerFeatures {
  ann_similarity: number;
  ctr_prior_logit: number;
  popularity_rate: number;
  quality: number;
  source_ann: number;
  source_targeting: number;
  source_popularity: number;
}

/** Lower and upper clamp of ctr_prior before its logit. */
export const CTR_PRIOR_CLAMP = 1e-4;

/** The logistic function 1 / (1 + e^-x), without overflow for any x (0 and 1 at the infinities). */
export function sigmoid(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

/** log(p / (1 - p)) of `p` clamped to [1e-4, 1 - 1e-4] (NaN reads as the lower clamp). */
export function clampedLogit(p: number): number {
  const q = p >= CTR_PRIOR_CLAMP ? (p <= 1 - CTR_PRIOR_CLAMP ? p : 1 - CTR_PRIOR_CLAMP) : CTR_PRIOR_CLAMP;
  return Math.log(q / (1 - q));
}

/** The user embedding prepared once per request for similarity(): the query, unit length for `cos`; null when no similarity can be computed. */
export interface PreparedQuery {
  metric: Metric;
  values: Float32Array;
}

/** Prepares `embedding` for `vectors` (normalised for `cos`); null when either is missing, the dimensions differ, or a `cos` query has zero length. */
export function prepareQuery(embedding: Float32Array | null, vectors: VectorSource | null): PreparedQuery | null {
  if (embedding === null || vectors === null || embedding.length !== vectors.dim || embedding.length === 0) return null;
  if (vectors.metric !== 'cos') return { metric: vectors.metric, values: embedding };
  let ss = 0;
  for (let i = 0; i < embedding.length; i++) ss += embedding[i] * embedding[i];
  if (!(ss > 0) || ss === Infinity) return null;
  const inv = 1 / Math.sqrt(ss);
  const values = new Float32Array(embedding.length);
  for (let i = 0; i < embedding.length; i++) values[i] = embedding[i] * inv;
  return { metric: 'cos', values };
}

/** Similarity of a prepared query and a stored vector, higher is better: dot (`ip`, and `cos` on unit vectors) or minus the squared distance (`l2`); 0 when the lengths differ. */
export function similarity(q: PreparedQuery, v: Float32Array): number {
  const a = q.values;
  const n = a.length;
  if (v.length !== n) return 0;
  let s = 0;
  if (q.metric === 'l2') {
    for (let i = 0; i < n; i++) {
      const d = a[i] - v[i];
      s += d * d;
    }
    return -s;
  }
  for (let i = 0; i < n; i++) s += a[i] * v[i];
  return s;
}

/** A features object with every feature 0. */
export function emptyFeatures(): RankerFeatures {
  return { ann_similarity: 0, ctr_prior_logit: 0, popularity_rate: 0, quality: 0, source_ann: 0, source_targeting: 0, source_popularity: 0 };
}

/** ann_similarity of `c`: its annScore when not NaN, else the similarity of `query` and the ad's vector, else 0. */
function candidateSimilarity(c: Candidate, query: PreparedQuery | null, vectors: VectorSource | null): number {
  const sim = c.annScore;
  if (!Number.isNaN(sim)) return sim;
  if (query !== null && vectors !== null) {
    const v = vectors.get(c.id);
    if (v !== undefined) return similarity(query, v);
  }
  return 0;
}

/** Writes the 7 features of `f` at `out[at..at+7)` in RANKER_FEATURES order (the model's columns, the feature log's). */
export function writeFeatures(f: RankerFeatures, out: Float32Array | Float64Array, at: number): void {
  out[at] = f.ann_similarity;
  out[at + 1] = f.ctr_prior_logit;
  out[at + 2] = f.popularity_rate;
  out[at + 3] = f.quality;
  out[at + 4] = f.source_ann;
  out[at + 5] = f.source_targeting;
  out[at + 6] = f.source_popularity;
}

/** Fills `out` (a new object when omitted) with the features of `c`: ann_similarity is c.annScore when not NaN, else the similarity of `query` and the ad's vector, else 0. */
export function features(
  ads: AdTable,
  popularity: PopularityView,
  vectors: VectorSource | null,
  query: PreparedQuery | null,
  nowMs: number,
  c: Candidate,
  out?: RankerFeatures,
): RankerFeatures {
  const f = out ?? emptyFeatures();
  const id = c.id;
  f.ann_similarity = candidateSimilarity(c, query, vectors);
  f.ctr_prior_logit = clampedLogit(ads.ctrPrior(id));
  f.popularity_rate = popularity.rate(id, nowMs);
  f.quality = ads.quality(id);
  f.source_ann = (c.sources & SOURCE_BIT.Ann) !== 0 ? 1 : 0;
  f.source_targeting = (c.sources & SOURCE_BIT.Targeting) !== 0 ? 1 : 0;
  f.source_popularity = (c.sources & SOURCE_BIT.Popularity) !== 0 ? 1 : 0;
  return f;
}

/** pCTR in [0, 1]: sigmoid(bias + sum of weight x feature). */
export function pctr(w: RankerWeights, f: RankerFeatures): number {
  return sigmoid(
    w.bias +
      w.ann_similarity * f.ann_similarity +
      w.ctr_prior_logit * f.ctr_prior_logit +
      w.popularity_rate * f.popularity_rate +
      w.quality * f.quality +
      w.source_ann * f.source_ann +
      w.source_targeting * f.source_targeting +
      w.source_popularity * f.source_popularity,
  );
}

/** eCPM in currency units per thousand impressions: bid (micros) / 1e6 x pCTR x 1000. */
export function ecpm(bidMicros: number, p: number): number {
  return (bidMicros / 1e6) * p * 1000;
}

/** Whether `a` ranks after `b`: lower score, or equal score and larger id. */
function after(a: Candidate, b: Candidate): boolean {
  return a.score < b.score || (a.score === b.score && a.id > b.id);
}

/** Moves heap[i] down the heap heap[0..k) (root = the worst) to its place. */
function siftDown(heap: Candidate[], k: number, i: number): void {
  const x = heap[i];
  for (;;) {
    let c = 2 * i + 1;
    if (c >= k) break;
    if (c + 1 < k && after(heap[c + 1], heap[c])) c++;
    if (!after(heap[c], x)) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = x;
}

/** The best `k` of `items` (0 < k <= items.length), unordered: a heap whose root is the worst kept. */
function selectTop(items: Candidate[], k: number): Candidate[] {
  const heap = items.slice(0, k);
  for (let i = (k >>> 1) - 1; i >= 0; i--) siftDown(heap, k, i);
  for (let i = k; i < items.length; i++) {
    if (after(heap[0], items[i])) {
      heap[0] = items[i];
      siftDown(heap, k, 0);
    }
  }
  return heap;
}

/** The best `k` of `items` (0 < k <= items.length), best first: a heap selection then heapsort, so no comparator calls through Array.prototype.sort. */
function topSorted(items: Candidate[], k: number): Candidate[] {
  const heap = selectTop(items, k);
  const out = new Array<Candidate>(k);
  for (let size = k; size > 0; size--) {
    out[size - 1] = heap[0];
    heap[0] = heap[size - 1];
    siftDown(heap, size - 1, 0);
  }
  return out;
}

// Scratch for fillSimilarities, grown as needed and reused: run() is synchronous, so one buffer
// serves every request, and a request allocates no vector rows (a fresh array per call was
// external memory that brought on full collections).
let scratchIds = new Uint32Array(0);
let scratchAt = new Int32Array(0);
let scratchRows = new Float32Array(0);

/** Computes annScore for candidates without one with one batch read of their vectors (the per-id path is one native call per candidate). */
function fillSimilarities(input: Candidate[], query: PreparedQuery, vectors: VectorSource): void {
  let n = 0;
  for (let i = 0; i < input.length; i++) if (Number.isNaN(input[i].annScore)) n++;
  if (n === 0) return;
  if (scratchIds.length < n) {
    scratchIds = new Uint32Array(Math.max(n, scratchIds.length * 2));
    scratchAt = new Int32Array(scratchIds.length);
  }
  const ids = scratchIds.subarray(0, n);
  const at = scratchAt;
  for (let i = 0, j = 0; i < input.length; i++) {
    if (Number.isNaN(input[i].annScore)) {
      ids[j] = input[i].id;
      at[j++] = i;
    }
  }
  const dim = vectors.dim;
  if (scratchRows.length < n * dim) scratchRows = new Float32Array(Math.max(n * dim, scratchRows.length * 2));
  const rows = scratchRows;
  vectors.gather!(ids, rows.subarray(0, n * dim));
  const a = query.values;
  for (let j = 0; j < n; j++) {
    const c = input[at[j]];
    const o = j * dim;
    // A missing vector (all zeros) is no evidence either way: similarity 0, as in the per-id path.
    let nonzero = false;
    for (let x = 0; x < dim; x++) {
      if (rows[o + x] !== 0) {
        nonzero = true;
        break;
      }
    }
    if (!nonzero || a.length !== dim) {
      c.annScore = 0;
      continue;
    }
    let s = 0;
    if (query.metric === 'l2') {
      for (let x = 0; x < dim; x++) {
        const d = a[x] - rows[o + x];
        s += d * d;
      }
      s = -s;
    } else for (let x = 0; x < dim; x++) s += a[x] * rows[o + x];
    c.annScore = s;
  }
}

/** Sets each candidate's score to its eCPM and returns the best `keep`, by score descending, ties by id ascending. */
export class EarlyRanker implements Stage<Candidate[], Candidate[]> {
  readonly name = 'EarlyRanker';

  run(ctx: StageContext, input: Candidate[]): Candidate[] | Promise<Candidate[]> {
    const { keep, weights } = ctx.pipeline.stages.EarlyRanker;
    const { ads, popularity, vectors } = ctx.state;
    const now = ctx.nowMs;
    const query = prepareQuery(ctx.query.embedding, vectors);
    if (query !== null && vectors !== null && vectors.gather) fillSimilarities(input, query, vectors);
    // ---- learned models (model-ranker.ts): an ONNX model or a shadow takes the path below ----
    if (usesModels(ctx.pipeline.stages.EarlyRanker)) {
      const table = fillFeatureTable(ctx, input, query);
      const p = modelPctr(ctx, table);
      // Feature logging sees the features the model was fed (features(), as the table holds them).
      const logged = (kept: Candidate[]) => {
        if (ctx.rankedFeatures) ctx.rankedFeatures(kept, input, (c) => features(ads, popularity, vectors, query, now, c));
        return kept;
      };
      return p instanceof Promise ? p.then((q) => logged(scoreAndKeep(ctx, input, table, q, keep))) : logged(scoreAndKeep(ctx, input, table, p, keep));
    }
    // ---- end of learned models ----
    // pctr(weights, features(...)) unrolled, term for term in the same order (the same doubles),
    // without a features object and two calls per candidate.
    const w = weights;
    for (let i = 0; i < input.length; i++) {
      const c = input[i];
      const id = c.id;
      const sim = candidateSimilarity(c, query, vectors);
      const sources = c.sources;
      const z =
        w.bias +
        w.ann_similarity * sim +
        w.ctr_prior_logit * clampedLogit(ads.ctrPrior(id)) +
        w.popularity_rate * popularity.rate(id, now) +
        w.quality * ads.quality(id) +
        w.source_ann * ((sources & SOURCE_BIT.Ann) !== 0 ? 1 : 0) +
        w.source_targeting * ((sources & SOURCE_BIT.Targeting) !== 0 ? 1 : 0) +
        w.source_popularity * ((sources & SOURCE_BIT.Popularity) !== 0 ? 1 : 0);
      const score = ecpm(ads.bidMicros(id), sigmoid(z));
      // NaN would break the ordering (a garbage feature); such a candidate ranks as worthless.
      c.score = Number.isNaN(score) ? 0 : score;
    }
    const k = Math.min(keep, input.length);
    ctx.note('ranked', input.length);
    ctx.drop('below_keep', input.length - k);
    const kept = k > 0 ? topSorted(input, k) : [];
    // Feature logging (--feature-log; sampled requests only): the features this run scored with, same inputs, same doubles.
    if (ctx.rankedFeatures) ctx.rankedFeatures(kept, input, (c) => features(ads, popularity, vectors, query, now, c));
    return kept;
  }
}

// ---- learned models (model-ranker.ts) ----------------------------------------------------------

/** Every candidate's features (RANKER_FEATURES order), linear pCTR (pctr(), the linear path's doubles) and bid. */
function fillFeatureTable(ctx: StageContext, input: Candidate[], query: PreparedQuery | null): FeatureTable {
  const { ads, popularity, vectors } = ctx.state;
  const w = ctx.pipeline.stages.EarlyRanker.weights;
  const t = featureTable(input.length);
  const f = emptyFeatures();
  const x = t.features;
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    features(ads, popularity, vectors, query, ctx.nowMs, c, f);
    writeFeatures(f, x, i * FEATURE_COUNT);
    t.linear[i] = pctr(w, f);
    t.bids[i] = ads.bidMicros(c.id);
  }
  return t;
}

/** Sets each candidate's score to eCPM with pCTR `p[i]` and returns the best `keep`, as the linear path does. */
function scoreAndKeep(ctx: StageContext, input: Candidate[], table: FeatureTable, p: ArrayLike<number>, keep: number): Candidate[] {
  for (let i = 0; i < input.length; i++) {
    const score = ecpm(table.bids[i], p[i]);
    input[i].score = Number.isNaN(score) ? 0 : score;
  }
  const k = Math.min(keep, input.length);
  ctx.note('ranked', input.length);
  ctx.drop('below_keep', input.length - k);
  return k > 0 ? topSorted(input, k) : [];
}
