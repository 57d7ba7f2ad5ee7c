/**
 * Diversifier: advertiser and category caps over the ranked list, then maximal marginal
 * relevance (MMR) over its head so that near-duplicate ads do not crowd the answer.
 */
import type { Candidate, Stage, StageContext, VectorSource } from '../../pipeline/types';
import type { AdTable } from '../../serving/ad-table';
import { dotRows, mmrSelect } from '../../native/index';

/** Candidates applyCaps removed: by the advertiser cap (checked first), and by the category cap. */
export interface CapCounts {
  advertiser: number;
  category: number;
}

/** Largest interned key the array counters take (the ad table interns advertisers and categories densely from 0; -1 = absent). */
const MAX_DENSE_KEY = 1 << 24;

/**
 * Counts per interned key (-1 and up) for one applyCaps call at a time, reused from call to call
 * (applyCaps is synchronous): an entry counts only while its stamp is the current call's, so
 * nothing is cleared between calls. Two of these cost a few microseconds per 300 candidates,
 * where two Maps cost some 30.
 */
class KeyCounts {
  private stamps = new Int32Array(0);
  private counts = new Int32Array(0);
  private stamp = 0;
  /** Starts a call: every count reads 0. */
  reset(): void {
    if (++this.stamp === 0x7fffffff) {
      this.stamps.fill(0);
      this.stamp = 1;
    }
  }
  get(key: number): number {
    const i = key + 1;
    return i < this.stamps.length && this.stamps[i] === this.stamp ? this.counts[i] : 0;
  }
  set(key: number, n: number): void {
    const i = key + 1;
    if (i >= this.stamps.length) {
      const size = Math.max(i + 1, this.stamps.length * 2, 1024);
      const stamps = new Int32Array(size);
      stamps.set(this.stamps);
      const counts = new Int32Array(size);
      counts.set(this.counts);
      this.stamps = stamps;
      this.counts = counts;
    }
    this.stamps[i] = this.stamp;
    this.counts[i] = n;
  }
}
const perAdvertiserCounts = new KeyCounts();
const perCategoryCounts = new KeyCounts();

const denseKey = (k: number): boolean => (k | 0) === k && k >= -1 && k < MAX_DENSE_KEY;

/** Keeps candidates (ranked best first) in order while their advertiser has fewer than `maxPerAdvertiser` and their category fewer than `maxPerCategory` kept; returns the survivors and adds what each cap removed to `counts`. */
export function applyCaps(
  input: readonly Candidate[],
  ads: Pick<AdTable, 'advertiserKey' | 'categoryKey'>,
  maxPerAdvertiser: number,
  maxPerCategory: number,
  counts?: CapCounts,
): Candidate[] {
  const out: Candidate[] = [];
  const perAdvertiser = perAdvertiserCounts;
  const perCategory = perCategoryCounts;
  perAdvertiser.reset();
  perCategory.reset();
  let advertiserCapped = 0;
  let categoryCapped = 0;
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    const a = ads.advertiserKey(c.id);
    const k = ads.categoryKey(c.id);
    // Keys the arrays cannot index (a table that does not intern densely): the Map version.
    if (!denseKey(a) || !denseKey(k)) return applyCapsByMap(input, ads, maxPerAdvertiser, maxPerCategory, counts);
    const na = perAdvertiser.get(a);
    const nk = perCategory.get(k);
    if (na >= maxPerAdvertiser || nk >= maxPerCategory) {
      if (na >= maxPerAdvertiser) advertiserCapped++;
      else categoryCapped++;
      continue;
    }
    perAdvertiser.set(a, na + 1);
    perCategory.set(k, nk + 1);
    out.push(c);
  }
  if (counts) {
    counts.advertiser += advertiserCapped;
    counts.category += categoryCapped;
  }
  return out;
}

/** applyCaps with a Map per cap: any key. */
function applyCapsByMap(
  input: readonly Candidate[],
  ads: Pick<AdTable, 'advertiserKey' | 'categoryKey'>,
  maxPerAdvertiser: number,
  maxPerCategory: number,
  counts?: CapCounts,
): Candidate[] {
  const out: Candidate[] = [];
  const perAdvertiser = new Map<number, number>();
  const perCategory = new Map<number, number>();
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    const a = ads.advertiserKey(c.id);
    const k = ads.categoryKey(c.id);
    const na = perAdvertiser.get(a) ?? 0;
    const nk = perCategory.get(k) ?? 0;
    if (na >= maxPerAdvertiser || nk >= maxPerCategory) {
      if (counts) {
        if (na >= maxPerAdvertiser) counts.advertiser++;
        else counts.category++;
      }
      continue;
    }
    perAdvertiser.set(a, na + 1);
    perCategory.set(k, nk + 1);
    out.push(c);
  }
  return out;
}

/** Whether heap entry `a` comes before `b`: higher value, or equal value and earlier rank. */
function before(value: Float64Array, a: number, b: number): boolean {
  return value[a] > value[b] || (value[a] === value[b] && a < b);
}

/** Moves heap[i] down the heap heap[0..size) (root = the best) to its place. */
function siftDown(heap: Int32Array, size: number, value: Float64Array, i: number): void {
  const x = heap[i];
  for (;;) {
    let c = 2 * i + 1;
    if (c >= size) break;
    if (c + 1 < size && before(value, heap[c + 1], heap[c])) c++;
    if (!before(value, heap[c], x)) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = x;
}

// Scratch of the batch path, grown as needed and reused: run() is synchronous, so one set serves
// every request, and a request allocates no vector rows (external memory that brings on collections).
let scratchIds = new Uint32Array(0);
let scratchRows = new Float32Array(0);
let scratchScores = new Float64Array(0);
let scratchOrder = new Uint32Array(0);
let scratchRel = new Float64Array(0);
let scratchMaxSim = new Float64Array(0);
let scratchTaken = new Uint8Array(0);
// Views of the packed rows (for `rowViewsDim` floats a row), made once instead of one per pick,
// kept while the rows start at the same place of the same buffer (scratchRows, request after request).
let rowViews: (Float32Array | undefined)[] = [];
let rowViewsOf: ArrayBufferLike | null = null;
let rowViewsAt = 0;
let rowViewsDim = 0;

/** Row `i` of `packed` (`dim` floats a row) as a view, cached while packed's buffer, offset and dim stay. */
function rowView(packed: Float32Array, i: number, dim: number): Float32Array {
  if (rowViewsOf !== packed.buffer || rowViewsAt !== packed.byteOffset || rowViewsDim !== dim) {
    rowViews = [];
    rowViewsOf = packed.buffer;
    rowViewsAt = packed.byteOffset;
    rowViewsDim = dim;
  }
  return (rowViews[i] ??= packed.subarray(i * dim, (i + 1) * dim));
}

/** Grows the per-candidate scratch arrays to `m` entries at least. */
function fitScratch(m: number): void {
  if (scratchRel.length >= m) return;
  const n = Math.max(m, scratchRel.length * 2);
  scratchIds = new Uint32Array(n);
  scratchScores = new Float64Array(n);
  scratchOrder = new Uint32Array(n);
  scratchRel = new Float64Array(n);
  scratchMaxSim = new Float64Array(n);
  scratchTaken = new Uint8Array(n);
}

/**
 * Greedy MMR in JavaScript over the `m` rows packed in `packed` (m x dim, normalised here in
 * place; a zero row has similarity 0 to everything) with relevance `scores[0..m)`, `want` picks
 * (1 <= want <= m): one `rowsDot` call per pick for its dots with the whole pool. The native
 * `mmrSelect` does the same arithmetic in one call (49 calls of about 1.5 us each here, for about
 * 0.2 us of arithmetic each); this loop is its fallback when the addon lacks it, and its
 * reference in the tests (`rowsDot` then runs the kernels of a given instruction set).
 */
export function mmrPackedJs(
  scores: ArrayLike<number>,
  m: number,
  want: number,
  lambda: number,
  packed: Float32Array,
  dim: number,
  rowsDot: (query: Float32Array, rows: Float32Array) => Float32Array = dotRows,
): number[] {
  fitScratch(m);
  const rel = scratchRel;
  let maxScore = 0;
  for (let i = 0; i < m; i++) if (scores[i] > maxScore) maxScore = scores[i];
  for (let i = 0; i < m; i++) {
    const s = scores[i];
    rel[i] = maxScore > 0 && s > 0 ? s / maxScore : 0;
    let ss = 0;
    const o = i * dim;
    for (let j = 0; j < dim; j++) ss += packed[o + j] * packed[o + j];
    const inv = ss > 0 && ss !== Infinity ? 1 / Math.sqrt(ss) : 0;
    for (let j = 0; j < dim; j++) packed[o + j] *= inv;
  }
  const order: number[] = [];
  let first = 0;
  for (let i = 1; i < m; i++) if (lambda * rel[i] > lambda * rel[first]) first = i;
  order.push(first);
  const taken = scratchTaken;
  taken.fill(0, 0, m);
  taken[first] = 1;
  const maxSim = scratchMaxSim;
  maxSim.fill(-Infinity, 0, m);
  const penalty = 1 - lambda;
  const rows = packed.length === m * dim ? packed : packed.subarray(0, m * dim);
  while (order.length < want) {
    const last = order[order.length - 1];
    const sims = rowsDot(rowView(rows, last, dim), rows);
    let best = -1;
    let bestValue = -Infinity;
    for (let i = 0; i < m; i++) {
      if (taken[i]) continue;
      if (sims[i] > maxSim[i]) maxSim[i] = sims[i];
      const v = lambda * rel[i] - penalty * maxSim[i];
      if (best < 0 || v > bestValue) {
        best = i;
        bestValue = v;
      }
    }
    order.push(best);
    taken[best] = 1;
  }
  return order;
}

/**
 * MMR order of `pool[0..depth)` (ranked best first), `picks` long at most: each step takes the
 * argmax of lambda * score/maxScore - (1 - lambda) * max cosine to those already taken (ties to
 * the earlier); a missing vector has similarity 0 to everything. Returns indices into `pool`.
 */
export function mmrOrder(pool: readonly Candidate[], depth: number, picks: number, lambda: number, vectors: VectorSource): number[] {
  const m = Math.min(depth, pool.length);
  const want = Math.min(picks, m);
  const order: number[] = [];
  if (want <= 0) return order;
  // One batch read of the pool's vectors when the source offers it; then each pick's
  // similarities to the whole pool are one SIMD call (exact greedy, no laziness needed).
  if (vectors.gather) {
    const dim = vectors.dim;
    fitScratch(m);
    if (scratchRows.length < m * dim) scratchRows = new Float32Array(Math.max(m * dim, scratchRows.length * 2));
    const ids = scratchIds.subarray(0, m);
    for (let i = 0; i < m; i++) ids[i] = pool[i].id;
    const packed = scratchRows.subarray(0, m * dim);
    vectors.gather(ids, packed);
    const scores = scratchScores;
    for (let i = 0; i < m; i++) scores[i] = pool[i].score;
    // One native call for the whole greedy loop; the same picks as mmrPackedJs (same kernel, same
    // double arithmetic in the same order), without a JS -> native transition per pick.
    if (mmrSelect !== undefined) {
      const n = mmrSelect(packed, dim, m, scores, lambda, want, scratchOrder);
      for (let i = 0; i < n; i++) order.push(scratchOrder[i]);
      return order;
    }
    return mmrPackedJs(scores, m, want, lambda, packed, dim);
  }
  const vecs: (Float32Array | undefined)[] = new Array(m);
  const invNorm = new Float64Array(m);
  const rel = new Float64Array(m);
  let maxScore = 0;
  for (let i = 0; i < m; i++) {
    const s = pool[i].score;
    if (s > maxScore) maxScore = s;
  }
  for (let i = 0; i < m; i++) {
    const s = pool[i].score;
    rel[i] = maxScore > 0 && s > 0 ? s / maxScore : 0;
    const v = vectors.get(pool[i].id);
    let ss = 0;
    if (v !== undefined) for (let j = 0; j < v.length; j++) ss += v[j] * v[j];
    if (v !== undefined && ss > 0 && ss !== Infinity) {
      vecs[i] = v;
      invNorm[i] = 1 / Math.sqrt(ss);
    }
  }
  const cosine = (p: number, i: number): number => {
    const b = vecs[p];
    const v = vecs[i];
    if (b === undefined || v === undefined || v.length !== b.length) return 0;
    let dot = 0;
    for (let j = 0; j < b.length; j++) dot += b[j] * v[j];
    return dot * invNorm[p] * invNorm[i];
  };
  // Step one: relevance alone (nothing is taken yet).
  let first = 0;
  for (let i = 1; i < m; i++) if (lambda * rel[i] > lambda * rel[first]) first = i;
  order.push(first);
  if (want === 1) return order;
  // Lazy greedy: after step one a candidate's max similarity only grows, so its value only
  // shrinks, and a value computed against fewer picks is an upper bound. Only a candidate that
  // reaches the top of the heap is brought up to date (against the picks it has not seen yet);
  // it is taken when it stays on top. Same picks and ties as recomputing everything each step,
  // with far fewer dot products in practice (at most depth x picks).
  const penalty = 1 - lambda;
  const maxSim = new Float64Array(m).fill(-Infinity);
  const seen = new Int32Array(m);
  const value = new Float64Array(m);
  const heap = new Int32Array(m - 1);
  let size = 0;
  for (let i = 0; i < m; i++) {
    if (i === first) continue;
    const sim = cosine(first, i);
    if (sim > maxSim[i]) maxSim[i] = sim;
    seen[i] = 1;
    value[i] = lambda * rel[i] - penalty * maxSim[i];
    heap[size++] = i;
  }
  for (let i = (size >>> 1) - 1; i >= 0; i--) siftDown(heap, size, value, i);
  while (order.length < want) {
    const top = heap[0];
    if (seen[top] < order.length) {
      for (let r = seen[top]; r < order.length; r++) {
        const sim = cosine(order[r], top);
        if (sim > maxSim[top]) maxSim[top] = sim;
      }
      seen[top] = order.length;
      value[top] = lambda * rel[top] - penalty * maxSim[top];
      siftDown(heap, size, value, 0);
      continue;
    }
    order.push(top);
    heap[0] = heap[--size];
    siftDown(heap, size, value, 0);
  }
  return order;
}

/** Applies the advertiser and category caps, re-orders the first mmr_depth survivors by MMR (when mmr_depth > 0, mmr_lambda < 1 and vectors exist) and returns the first query.numResults; scores are left as they are. */
export class Diversifier implements Stage<Candidate[], Candidate[]> {
  readonly name = 'Diversifier';

  run(ctx: StageContext, input: Candidate[]): Candidate[] {
    const cfg = ctx.pipeline.stages.Diversifier;
    const ads = ctx.state.ads;
    const vectors = ctx.state.vectors;
    const n = Math.max(0, ctx.query.numResults);
    const caps: CapCounts = { advertiser: 0, category: 0 };
    const survivors = applyCaps(input, ads, cfg.max_per_advertiser, cfg.max_per_category, caps);
    ctx.note('capped', input.length - survivors.length);
    ctx.drop('advertiser_cap', caps.advertiser);
    ctx.drop('category_cap', caps.category);
    ctx.drop('below_cutoff', Math.max(0, survivors.length - n));
    if (cfg.mmr_depth === 0 || !(cfg.mmr_lambda < 1) || vectors === null || survivors.length < 2 || n < 2) {
      return survivors.length > n ? survivors.slice(0, n) : survivors;
    }
    const depth = Math.min(cfg.mmr_depth, survivors.length);
    const order = mmrOrder(survivors, depth, n, cfg.mmr_lambda, vectors);
    const out: Candidate[] = new Array(order.length);
    for (let i = 0; i < order.length; i++) out[i] = survivors[order[i]];
    for (let i = depth; i < survivors.length && out.length < n; i++) out.push(survivors[i]);
    return out;
  }
}
