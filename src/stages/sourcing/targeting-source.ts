/**
 * Targeting sourcing: the eligible ads the EarlyRanker would score best, found without scoring
 * every eligible ad.
 *
 * `order: ranker` (default) is a threshold walk (Fagin's TA) over two static orders of the
 * catalog: by bid, and by the static part of the ranker's log eCPM (log bid + w_ctr * logit
 * ctr_prior + w_quality * quality). Every eligible ad read from either order is scored exactly
 * as the EarlyRanker scores it, less the source indicators (they say how an ad was found, not
 * what it is worth: the reference `funnel eval` measures against leaves them out too). An ad
 * read from neither has bid <= b (the next bid) and static key <= K (the next key), and its
 * dynamic logit part (bias, similarity, click rate) is at most T, from bounds on the vectors'
 * lengths and the click rates; since
 * bid * sigmoid(key - log bid + T) grows with the bid, no unread ad scores above
 * b * sigmoid(K - log b + T). The walk stops once its k-th best score reaches that bound, so
 * its k are the eligible set's exact top k by the ranker's score; or at `max_steps` entries.
 *
 * `order: prior` keeps the best k eligible ads by a prior (bid^a * quality^b * ctr_prior^c):
 * walking the precomputed order (about k / selectivity steps) or, when few ads are eligible,
 * scanning the eligible bitset, whichever the eligible count says is cheaper.
 */
import type { EarlyRankerStageConfig, TargetingStageConfig } from '../../config/schema';
import { SOURCE_BIT, type Candidate, type EligibleSet, type Stage, type StageContext } from '../../pipeline/types';
import type { AdTable } from '../../serving/ad-table';
import { BID_ORDER, LOG_ZERO, priorOf, type PriorOrder } from '../../serving/prior-order';
import { ecpm, prepareQuery, sigmoid, similarity, type PreparedQuery } from '../ranking/early-ranker';

/** Eligible ids taken from each order per round of the walk (one vector gather per round). */
const ROUND = 16;

/** similarity() of `q` and the row at `offset` of `rows` (no view allocated per row). */
function similarityAt(q: PreparedQuery, rows: Float32Array, offset: number): number {
  const a = q.values;
  const n = a.length;
  let s = 0;
  if (q.metric === 'l2') {
    for (let i = 0; i < n; i++) {
      const d = a[i] - rows[offset + i];
      s += d * d;
    }
    return -s;
  }
  for (let i = 0; i < n; i++) s += a[i] * rows[offset + i];
  return s;
}

/** The ranker's static-key order of a pipeline's weights. */
export function rankerOrderKey(w: EarlyRankerStageConfig['weights']) {
  return { kind: 'ranker' as const, w: { ctr_prior_logit: w.ctr_prior_logit, quality: w.quality } };
}

/** The range [lo, hi] of similarity() of `query` with any stored vector no longer than `normBound` (unbounded when it is unknown). */
export function similarityRange(query: PreparedQuery, normBound: number | undefined): [number, number] {
  let qn = 0;
  for (let i = 0; i < query.values.length; i++) qn += query.values[i] * query.values[i];
  qn = Math.sqrt(qn);
  const nb = normBound ?? Infinity;
  if (query.metric === 'cos') return [-1, 1];
  if (query.metric === 'ip') return [-qn * nb, qn * nb];
  return [-((qn + nb) ** 2), 0];
}

/**
 * Upper bound of the dynamic part of the ranker's logit without source indicators (bias + w_sim
 * * similarity + w_pop * click rate) for an ad whose similarity lies in `sim` ([lo, hi]; null
 * when there is no query, so every similarity is 0): Infinity when a bound is unknown.
 */
export function dynamicBound(w: EarlyRankerStageConfig['weights'], sim: readonly [number, number] | null, rateBound: number | undefined): number {
  const s = sim === null || w.ann_similarity === 0 ? 0 : w.ann_similarity > 0 ? w.ann_similarity * sim[1] : w.ann_similarity * sim[0];
  const pop = w.popularity_rate > 0 ? w.popularity_rate * (rateBound ?? 1) : 0;
  const t = w.bias + s + pop;
  return Number.isNaN(t) ? Infinity : t;
}

/** The best k of (key, id, extra) triples by key descending, ties by id ascending: a binary min-heap (root = the worst kept) over parallel typed arrays, reusable (reset) so that a request allocates none. */
export class TopK {
  private keys: Float64Array;
  private ids: Int32Array;
  private extras: Float64Array;
  /** Entries held (at most k). */
  size = 0;
  private k_: number;

  constructor(k: number) {
    this.k_ = k;
    this.keys = new Float64Array(k);
    this.ids = new Int32Array(k);
    this.extras = new Float64Array(k);
  }

  /** How many entries are kept. */
  get k(): number {
    return this.k_;
  }

  /** Empties the heap and sets how many it keeps. */
  reset(k: number): void {
    if (this.keys.length < k) {
      const n = Math.max(k, this.keys.length * 2);
      this.keys = new Float64Array(n);
      this.ids = new Int32Array(n);
      this.extras = new Float64Array(n);
    }
    this.k_ = k;
    this.size = 0;
  }

  /** The worst key held (meaningful once size > 0). */
  get worstKey(): number {
    return this.keys[0];
  }

  private worse(i: number, j: number): boolean {
    return this.keys[i] < this.keys[j] || (this.keys[i] === this.keys[j] && this.ids[i] > this.ids[j]);
  }

  private swap(i: number, j: number): void {
    const k = this.keys;
    const d = this.ids;
    const e = this.extras;
    let x = k[i];
    k[i] = k[j];
    k[j] = x;
    x = d[i];
    d[i] = d[j];
    d[j] = x;
    x = e[i];
    e[i] = e[j];
    e[j] = x;
  }

  /** Offers a triple; kept when fewer than k are held or it beats the worst. */
  push(key: number, id: number, extra = 0): void {
    if (this.size < this.k_) {
      const at = this.size++;
      this.keys[at] = key;
      this.ids[at] = id;
      this.extras[at] = extra;
      for (let i = at; i > 0; ) {
        const p = (i - 1) >> 1;
        if (!this.worse(i, p)) break;
        this.swap(i, p);
        i = p;
      }
      return;
    }
    if (this.k_ === 0 || !(key > this.keys[0] || (key === this.keys[0] && id < this.ids[0]))) return;
    this.keys[0] = key;
    this.ids[0] = id;
    this.extras[0] = extra;
    for (let i = 0; ; ) {
      const l = 2 * i + 1;
      let m = i;
      if (l < this.size && this.worse(l, m)) m = l;
      if (l + 1 < this.size && this.worse(l + 1, m)) m = l + 1;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  /** Empties the heap into `ids` and `extras` (at least `size` long), best first; returns how many. */
  drain(ids: Int32Array, extras: Float64Array): number {
    const n = this.size;
    // Popping the root (the worst) fills the answer from its end.
    for (let at = n - 1; at >= 0; at--) {
      ids[at] = this.ids[0];
      extras[at] = this.extras[0];
      const last = --this.size;
      if (last === 0) break;
      this.keys[0] = this.keys[last];
      this.ids[0] = this.ids[last];
      this.extras[0] = this.extras[last];
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        let m = i;
        if (l < last && this.worse(l, m)) m = l;
        if (l + 1 < last && this.worse(l + 1, m)) m = l + 1;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    this.size = 0;
    return n;
  }

  /** The held entries, best first: ids and their extras. */
  sorted(): { ids: number[]; extras: number[] } {
    const order = Array.from({ length: this.size }, (_, i) => i).sort((a, b) => this.keys[b] - this.keys[a] || this.ids[a] - this.ids[b]);
    return { ids: order.map((i) => this.ids[i]), extras: order.map((i) => this.extras[i]) };
  }
}

/** Top-k ids set in `bits` by key descending, ties by id ascending. */
function topByScan(bits: Uint32Array, k: number, key: (id: number) => number): number[] {
  const top = new TopK(k);
  for (let w = 0; w < bits.length; w++) {
    let word = bits[w];
    while (word !== 0) {
      const t = word & -word;
      const id = (w << 5) + (31 - Math.clz32(t));
      word ^= t;
      top.push(key(id), id);
    }
  }
  return top.sorted().ids;
}

/** Targeting candidates, best first (by the ranker's score without source indicators for `order: ranker`, by prior otherwise). */
export class TargetingSource implements Stage<void, Candidate[]> {
  readonly name = 'Targeting';
  // Which ids the current walk has read: stamp[id] === walk number. Walks are synchronous, so
  // one array serves every request without clearing.
  private stamp = new Uint32Array(0);
  private walks = 0;
  // Scratch of the walk, reused by every request (a walk runs to its end without yielding): ids
  // and vector rows of a round, the heap, and its drained answer.
  private readonly batchIds = new Uint32Array(2 * ROUND);
  private rows = new Float32Array(0);
  private readonly top = new TopK(0);
  private bestIds = new Int32Array(0);
  private bestSims = new Float64Array(0);
  constructor(
    private readonly ads: AdTable,
    private readonly orders: PriorOrder,
  ) {}

  run(ctx: StageContext): Candidate[] | Promise<Candidate[]> {
    const cfg = ctx.pipeline.stages.Targeting;
    const eligible = ctx.eligible;
    if (!eligible || eligible.count === 0) return [];
    if (cfg.order === 'ranker') {
      const ann = ctx.sourced?.Ann;
      if (!ann) return this.walk(ctx, cfg, eligible, null);
      // Ann's list tightens the bound; past half of this stage's own time the walk goes on without it.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), cfg.timeout_ms / 2);
      });
      return Promise.race([ann, late]).then((list) => {
        clearTimeout(timer);
        if (list === null) ctx.note('ann_bound', false);
        return this.walk(ctx, cfg, eligible, list);
      });
    }
    const bits = eligible.bits;
    const order = this.orders.get(cfg.prior);
    const k = Math.min(cfg.k, eligible.count);
    // Expected walk: k * |order| / eligible; a scan costs |bits| words plus a heap push per eligible id.
    const walkCost = (k * order.length) / eligible.count;
    const scanCost = bits.length + eligible.count * 4;
    let ids: number[];
    if (walkCost <= scanCost) {
      ctx.note('method', 'walk');
      ids = [];
      let steps = 0;
      for (let i = 0; i < order.length && ids.length < k; i++) {
        const id = order[i];
        steps++;
        if ((bits[id >>> 5] >>> (id & 31)) & 1) ids.push(id);
      }
      ctx.note('steps', steps);
    } else {
      ctx.note('method', 'scan');
      ids = topByScan(bits, k, (id) => (this.ads.has(id) ? priorOf(this.ads, id, cfg.prior) : -1));
    }
    return ids.map((id, i) => ({ id, sources: SOURCE_BIT.Targeting, annScore: NaN, sourceRank: i, score: NaN }));
  }

  /**
   * The threshold walk of `order: ranker` (see the file's comment). `ann`: the Ann stage's list
   * (null when it did not answer). Its ads are scored first, and the similarity of every other
   * ad is bounded by its last one's: Ann is the third sorted list of the walk. (With an
   * approximate index an ad it missed may be more similar than that; without Ann the bound is
   * the vectors' lengths, exact but loose.)
   */
  private walk(ctx: StageContext, cfg: TargetingStageConfig, eligible: EligibleSet, ann: readonly Candidate[] | null): Candidate[] {
    const ads = this.ads;
    const w = ctx.pipeline.stages.EarlyRanker.weights;
    const bidOrder = this.orders.get(BID_ORDER);
    const { ids: keyOrder, keys } = this.orders.withKeys(rankerOrderKey(w));
    const bits = eligible.bits;
    const k = Math.min(cfg.k, eligible.count);
    const { vectors, popularity } = ctx.state;
    const query = prepareQuery(ctx.query.embedding, vectors);
    let simRange: [number, number] | null = null;
    // Ann's claim: no eligible ad outside its list is more similar than its last one.
    let annClaim = Infinity;
    let simFromNorms: [number, number] | null = null;
    if (query !== null) {
      simRange = similarityRange(query, vectors?.normBound);
      simFromNorms = [simRange[0], simRange[1]];
      if (ann !== null && ann.length > 0) {
        const wanted = Math.min(ctx.pipeline.stages.Ann.k, eligible.count);
        const last = ann[ann.length - 1].annScore;
        // A short list holds every eligible ad with a vector; the rest have none (similarity 0).
        if (!Number.isNaN(last)) {
          annClaim = ann.length < wanted ? Math.max(last, 0) : last;
          simRange[1] = Math.min(simRange[1], annClaim);
        }
      }
    }
    let t = dynamicBound(w, simRange, popularity.rateBound?.());
    let annRefuted = false;
    const dim = vectors?.dim ?? 0;
    const gather = query !== null && vectors !== null && vectors.gather ? vectors.gather.bind(vectors) : null;
    const batchIds = this.batchIds;
    if (gather && this.rows.length < 2 * ROUND * dim) this.rows = new Float32Array(2 * ROUND * dim);
    const rows = this.rows;
    const now = ctx.nowMs;
    // Top k by score, with each one's similarity.
    const top = this.top;
    top.reset(k);
    if (this.stamp.length < ads.capacity) this.stamp = new Uint32Array(Math.max(ads.capacity, this.stamp.length * 2));
    if (++this.walks === 0xffffffff) {
      this.stamp.fill(0);
      this.walks = 1;
    }
    const stamp = this.stamp;
    const walk = this.walks;
    // The static part of the logit is the order's key less log bid: read, not recomputed.
    const wt = w.bias;
    const wSim = w.ann_similarity;
    const wPop = w.popularity_rate;
    let pb = 0;
    let pk = 0;
    let steps = 0;
    let scored = 0;
    let stop = 'exhausted';
    // Takes up to ROUND unseen eligible ids from `order` starting at `at` into batchIds[from..];
    // returns the next position (the ids taken end at `taken`).
    let taken = 0;
    const take = (order: readonly number[], at: number, from: number, want: number): number => {
      let n = from;
      while (at < order.length && n - from < want && steps < cfg.max_steps) {
        const id = order[at++];
        steps++;
        if (id >>> 5 >= bits.length || ((bits[id >>> 5] >>> (id & 31)) & 1) === 0 || stamp[id] === walk) continue;
        stamp[id] = walk;
        batchIds[n++] = id;
      }
      taken = n;
      return at;
    };
    const score = (id: number, sim: number): number => {
      const bid = ads.bidMicros(id);
      const z = wt + (bid > 0 ? keys[id] - Math.log(bid) : 0) + wSim * sim + (wPop !== 0 ? wPop * popularity.rate(id, now) : 0);
      const s = ecpm(bid, sigmoid(z));
      return Number.isNaN(s) ? 0 : s;
    };
    if (ann !== null && query !== null) {
      for (const c of ann) {
        const id = c.id;
        if (id >>> 5 >= bits.length || ((bits[id >>> 5] >>> (id & 31)) & 1) === 0 || stamp[id] === walk || !ads.has(id) || Number.isNaN(c.annScore)) continue;
        stamp[id] = walk;
        top.push(score(id, c.annScore), id, c.annScore);
        scored++;
      }
    }
    // Each round reads 2 x ROUND eligible ads, split between the orders by how much each lowers
    // the bound: log bound = log b + log sigmoid(x), x = K - log b + T, moves by sigmoid(x) per unit
    // of log b and by 1 - sigmoid(x) per unit of K. A saturated pCTR makes it a walk by bid, a
    // small one a walk by key; either split keeps the bound valid.
    let share = 0.5;
    for (;;) {
      const fromBid = Math.round(2 * ROUND * share);
      pb = take(bidOrder, pb, 0, fromBid);
      pk = take(keyOrder, pk, taken, 2 * ROUND - fromBid);
      const n = taken;
      if (n > 0 && gather) gather(batchIds.subarray(0, n), rows.subarray(0, n * dim));
      for (let i = 0; i < n; i++) {
        const id = batchIds[i];
        let sim = 0;
        if (query !== null) {
          if (gather) sim = similarityAt(query, rows, i * dim);
          else {
            const v = vectors?.get(id);
            sim = v !== undefined ? similarity(query, v) : 0;
          }
        }
        top.push(score(id, sim), id, sim);
        // A walked ad more similar than Ann's last disproves Ann's answer (an approximate search
        // that missed): from here on, the bound takes the vectors' lengths instead.
        if (sim > annClaim && !annRefuted && simFromNorms !== null) {
          annRefuted = true;
          t = dynamicBound(w, simFromNorms, popularity.rateBound?.());
        }
      }
      scored += n;
      // Either order read to its end: every eligible ad has been scored.
      if (pb >= bidOrder.length || pk >= keyOrder.length) break;
      const b = ads.bidMicros(bidOrder[pb]);
      const x = keys[keyOrder[pk]] - Math.log(b) + t;
      const bound = b > 0 && keys[keyOrder[pk]] > LOG_ZERO ? ecpm(b, sigmoid(x)) : 0;
      if (top.size >= k && top.worstKey >= bound) {
        stop = 'bound';
        break;
      }
      // At least one of 2 x ROUND from each order, so that neither stalls.
      share = Number.isNaN(x) ? 0.5 : Math.min(1 - 0.5 / ROUND, Math.max(0.5 / ROUND, sigmoid(x)));
      if (steps >= cfg.max_steps) {
        stop = 'cap';
        break;
      }
    }
    ctx.note('method', 'threshold');
    ctx.note('steps', steps);
    ctx.note('scored', scored);
    ctx.note('stop', stop);
    if (annRefuted) ctx.note('ann_bound', 'refuted');
    if (pb < bidOrder.length) ctx.note('next_bid', ads.bidMicros(bidOrder[pb]));
    if (pk < keyOrder.length) ctx.note('next_key', Number(keys[keyOrder[pk]].toFixed(4)));
    if (this.bestIds.length < top.size) {
      this.bestIds = new Int32Array(Math.max(top.size, 2 * this.bestIds.length));
      this.bestSims = new Float64Array(this.bestIds.length);
    }
    const ids = this.bestIds;
    const sims = this.bestSims;
    const n = top.drain(ids, sims);
    const out: Candidate[] = new Array(n);
    // The walk's similarity goes on as annScore: the EarlyRanker need not read the vector again.
    for (let r = 0; r < n; r++) out[r] = { id: ids[r], sources: SOURCE_BIT.Targeting, annScore: query === null ? NaN : sims[r], sourceRank: r, score: NaN };
    return out;
  }
}
