/**
 * Ads ordered by a prior (bid^a * quality^b * ctr_prior^c), best first, one order per exponent
 * triple a pipeline asks for. The Targeting source walks an order and keeps the eligible ids, so
 * a request costs about k / selectivity steps instead of a pass over every eligible ad. Orders
 * are kept up to date on writes: a few changed ads are moved by binary search; a large batch
 * re-sorts.
 */
import type { AdTable } from './ad-table';

/** Exponents of the prior. */
export interface PriorExponents {
  bid: number;
  quality: number;
  ctr_prior: number;
}

/** The prior of ad `id` under `e` (0 for an ad with a zero factor). */
export function priorOf(ads: AdTable, id: number, e: PriorExponents): number {
  return Math.pow(ads.bidMicros(id), e.bid) * Math.pow(ads.quality(id), e.quality) * Math.pow(ads.ctrPrior(id), e.ctr_prior);
}

class Order {
  ids: number[] = [];
  keys = new Float64Array(0);
  private inOrder = new Uint8Array(0);

  constructor(readonly e: PriorExponents) {}

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
      this.keys[id] = priorOf(ads, id, this.e);
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
      const key = priorOf(ads, id, this.e);
      this.keys[id] = key;
      this.ids.splice(this.position(key, id), 0, id);
      this.inOrder[id] = 1;
    }
  }
}

const keyOf = (e: PriorExponents) => `${e.bid}/${e.quality}/${e.ctr_prior}`;

/** Prior orders by exponent triple. */
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

  /** The order for `e`, built on first use (a full sort: call at config load to keep it off requests). */
  get(e: PriorExponents): readonly number[] {
    const key = keyOf(e);
    let o = this.orders.get(key);
    if (!o) {
      o = new Order({ ...e });
      if (this.ads) o.rebuild(this.ads);
      this.orders.set(key, o);
    }
    return o.ids;
  }

  /** Drops orders no pipeline uses any more. */
  retain(used: readonly PriorExponents[]): void {
    const keep = new Set(used.map(keyOf));
    for (const k of this.orders.keys()) if (!keep.has(k)) this.orders.delete(k);
  }
}
