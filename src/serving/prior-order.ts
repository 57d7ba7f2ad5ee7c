/**
 * Ads ordered by a static key, best first, one order per key a pipeline asks for: a prior
 * (bid^a * quality^b * ctr_prior^c), or the static part of the EarlyRanker's log eCPM
 * (log bid + w_ctr * logit(ctr_prior) + w_quality * quality). The Targeting source walks orders
 * and keeps the eligible ids, so a request costs about k / selectivity steps instead of a pass
 * over every eligible ad. Orders are kept up to date on writes: a few changed ads are moved by
 * binary search; a large batch re-sorts.
 */
import { clampedLogit } from '../stages/ranking/early-ranker';
import type { AdTable } from './ad-table';

/** Exponents of the prior. */
export interface PriorExponents {
  bid: number;
  quality: number;
  ctr_prior: number;
}

/** Weights of the static part of the EarlyRanker's logit. */
export interface StaticWeights {
  ctr_prior_logit: number;
  quality: number;
}

/** What an order sorts by: a prior, or the ranker's static key. */
export type OrderKey = { kind: 'prior'; e: PriorExponents } | { kind: 'ranker'; w: StaticWeights };

/** The prior of ad `id` under `e` (0 for an ad with a zero factor). */
export function priorOf(ads: AdTable, id: number, e: PriorExponents): number {
  return Math.pow(ads.bidMicros(id), e.bid) * Math.pow(ads.quality(id), e.quality) * Math.pow(ads.ctrPrior(id), e.ctr_prior);
}

/** Stands for log(0) in keys: finite, so key differences never make NaN. */
export const LOG_ZERO = -1e300;

/** The ranker's static key of `id`: log(bid_micros) + w.ctr_prior_logit * logit(ctr_prior) + w.quality * quality (LOG_ZERO for a zero bid). */
export function rankerKeyOf(ads: AdTable, id: number, w: StaticWeights): number {
  const bid = ads.bidMicros(id);
  if (!(bid > 0)) return LOG_ZERO;
  return Math.log(bid) + w.ctr_prior_logit * clampedLogit(ads.ctrPrior(id)) + w.quality * ads.quality(id);
}

/** The key of `id` under `k`. */
export function keyOf(ads: AdTable, id: number, k: OrderKey): number {
  return k.kind === 'prior' ? priorOf(ads, id, k.e) : rankerKeyOf(ads, id, k.w);
}

class Order {
  ids: number[] = [];
  keys = new Float64Array(0);
  private inOrder = new Uint8Array(0);

  constructor(readonly k: OrderKey) {}

  // Descending key, ties by ascending id: `a` comes before `b`.
  private before(ka: number, a: number, kb: number, b: number): boolean {
    return ka > kb || (ka === kb && a < b);
  }

  private ensure(n: number): void {
    if (this.keys.length >= n) return;
    const size = Math.max(n, this.keys.length * 2, 1024);
    const k = new Float64Array(size);
    k.set(this.keys);
    this.keys = k;
    const f = new Uint8Array(size);
    f.set(this.inOrder);
    this.inOrder = f;
  }

  rebuild(ads: AdTable): void {
    this.ensure(ads.capacity);
    this.inOrder.fill(0);
    const ids: number[] = [];
    for (const id of ads.ids()) {
      this.keys[id] = keyOf(ads, id, this.k);
      this.inOrder[id] = 1;
      ids.push(id);
    }
    const k = this.keys;
    ids.sort((a, b) => k[b] - k[a] || a - b);
    this.ids = ids;
  }

  private position(key: number, id: number): number {
    let lo = 0;
    let hi = this.ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = this.ids[mid];
      if (this.before(this.keys[m], m, key, id)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private take(id: number): void {
    if (!this.inOrder[id]) return;
    const at = this.position(this.keys[id], id);
    if (this.ids[at] === id) this.ids.splice(at, 1);
    else this.ids = this.ids.filter((x) => x !== id);
    this.inOrder[id] = 0;
  }

  update(ads: AdTable, ids: readonly number[]): void {
    if (ids.length > 64 && ids.length * 16 > this.ids.length) {
      this.rebuild(ads);
      return;
    }
    this.ensure(ads.capacity);
    for (const id of ids) {
      this.take(id);
      if (!ads.has(id)) continue;
      const key = keyOf(ads, id, this.k);
      this.keys[id] = key;
      this.ids.splice(this.position(key, id), 0, id);
      this.inOrder[id] = 1;
    }
  }
}

const nameOf = (k: OrderKey) => (k.kind === 'prior' ? `p/${k.e.bid}/${k.e.quality}/${k.e.ctr_prior}` : `r/${k.w.ctr_prior_logit}/${k.w.quality}`);

/** The order key of a prior's exponents. */
export const priorKey = (e: PriorExponents): OrderKey => ({ kind: 'prior', e: { bid: e.bid, quality: e.quality, ctr_prior: e.ctr_prior } });

/** The order of ads by bid alone. */
export const BID_ORDER: OrderKey = priorKey({ bid: 1, quality: 0, ctr_prior: 0 });

/** Static orders by key. */
export class PriorOrder {
  private readonly orders = new Map<string, Order>();
  private ads: AdTable | undefined;

  /** (Re)builds every order from the table. */
  rebuild(ads: AdTable): void {
    this.ads = ads;
    for (const o of this.orders.values()) o.rebuild(ads);
  }

  /** Moves changed (or removed) ads to their place in every order. */
  update(ads: AdTable, ids: readonly number[]): void {
    this.ads = ads;
    for (const o of this.orders.values()) o.update(ads, ids);
  }

  /** Removes deleted ads from every order (call after they left the table). */
  remove(ids: readonly number[]): void {
    if (this.ads) this.update(this.ads, ids);
  }

  /** The order for `k` (a prior's exponents, or an OrderKey), built on first use (a full sort: call at config load to keep it off requests). */
  get(k: PriorExponents | OrderKey): readonly number[] {
    return this.order(k).ids;
  }

  /** The order for `k` with each id's key (`keys[id]`), built on first use. */
  withKeys(k: OrderKey): { ids: readonly number[]; keys: Float64Array } {
    const o = this.order(k);
    return { ids: o.ids, keys: o.keys };
  }

  private order(k0: PriorExponents | OrderKey): Order {
    const k = 'kind' in k0 ? k0 : priorKey(k0);
    const key = nameOf(k);
    let o = this.orders.get(key);
    if (!o) {
      o = new Order(k);
      if (this.ads) o.rebuild(this.ads);
      this.orders.set(key, o);
    }
    return o;
  }

  /** Drops orders no pipeline uses any more. */
  retain(used: readonly (PriorExponents | OrderKey)[]): void {
    const keep = new Set(used.map((k) => nameOf('kind' in k ? k : priorKey(k))));
    for (const k of this.orders.keys()) if (!keep.has(k)) this.orders.delete(k);
  }
}
