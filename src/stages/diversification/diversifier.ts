/**
 * Diversifier: advertiser and category caps over the ranked list, then maximal marginal
 * relevance (MMR) over its head so that near-duplicate ads do not crowd the answer.
 */
import type { Candidate, Stage, StageContext, VectorSource } from '../../pipeline/types';
import type { AdTable } from '../../serving/ad-table';
import { dotRows } from '../../native/index';

/** Candidates applyCaps removed: by the advertiser cap (checked first), and by the category cap. */
export interface CapCounts {
  advertiser: number;
  category: number;
}

/** Keeps candidates (ranked best first) in order while their advertiser has fewer than `maxPerAdvertiser` and their category fewer than `maxPerCategory` kept; returns the survivors and adds what each cap removed to `counts`. */
export function applyCaps(
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
let scratchRel = new Float64Array(0);
let scratchMaxSim = new Float64Array(0);
let scratchTaken = new Uint8Array(0);
// Views of scratchRows' rows (for `rowViewsDim` floats a row), made once instead of one per pick.
let rowViews: (Float32Array | undefined)[] = [];
let rowViewsOf: ArrayBufferLike | null = null;
let rowViewsDim = 0;

/** Row `i` of scratchRows (`dim` floats a row) as a view, cached while scratchRows and dim stay. */
function rowView(i: number, dim: number): Float32Array {
  if (rowViewsOf !== scratchRows.buffer || rowViewsDim !== dim) {
    rowViews = [];
    rowViewsOf = scratchRows.buffer;
    rowViewsDim = dim;
  }
  return (rowViews[i] ??= scratchRows.subarray(i * dim, (i + 1) * dim));
}

/**
 * Greedy MMR over rows packed in `packed` (m x dim, the head of scratchRows, normalised here; a
 * zero row has similarity 0 to everything): one SIMD call per pick for its similarities to the
 * whole pool. (A JavaScript loop is slower, even the lazy greedy's: about 2,000 dot products per
 * 80-ad pool at 64 dims, some 65-100 ns each, against 49 native calls of about 1.5 us.)
 */
function mmrPacked(pool: readonly Candidate[], m: number, want: number, lambda: number, packed: Float32Array, dim: number): number[] {
  const rel = scratchRel;
  let maxScore = 0;
  for (let i = 0; i < m; i++) if (pool[i].score > maxScore) maxScore = pool[i].score;
  for (let i = 0; i < m; i++) {
    const s = pool[i].score;
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
  while (order.length < want) {
    const last = order[order.length - 1];
    const sims = dotRows(rowView(last, dim), packed);
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
    if (scratchRel.length < m) {
      const n = Math.max(m, scratchRel.length * 2);
      scratchIds = new Uint32Array(n);
      scratchRel = new Float64Array(n);
      scratchMaxSim = new Float64Array(n);
      scratchTaken = new Uint8Array(n);
    }
    if (scratchRows.length < m * dim) scratchRows = new Float32Array(Math.max(m * dim, scratchRows.length * 2));
    const ids = scratchIds.subarray(0, m);
    for (let i = 0; i < m; i++) ids[i] = pool[i].id;
    const packed = scratchRows.subarray(0, m * dim);
    vectors.gather(ids, packed);
    return mmrPacked(pool, m, want, lambda, packed, dim);
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
