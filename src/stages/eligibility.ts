/**
 * Eligibility: the request's allowed set as a bitset over internal ids: the targeting index's
 * match of the request's attributes within the servable ads (active, in flight, under budget),
 * minus excluded ads, advertisers and blocked categories. Every sourcing stage works inside it;
 * the Filters stage checks it again per candidate.
 */
import type { RequestAttributes, TargetingIndex } from '../native/index';
import type { AdTable } from '../serving/ad-table';
import type { EligibleSet, Stage, StageContext } from '../pipeline/types';

/** A pool of bitset buffers, so a request allocates none in the steady state. */
export class BitsetPool {
  private readonly free: Uint32Array[] = [];
  constructor(private readonly max = 256) {}
  /** A buffer of at least `words` words (contents undefined). */
  acquire(words: number): Uint32Array {
    for (let i = this.free.length - 1; i >= 0; i--) {
      if (this.free[i].length >= words) return this.free.splice(i, 1)[0];
    }
    return new Uint32Array(Math.max(words, 32));
  }
  /** Returns a buffer once nothing (no native call either) reads it any more. */
  release(buf: Uint32Array): void {
    if (this.free.length < this.max) this.free.push(buf);
  }
}

/** What the Eligibility stage reads from the serving state. */
export interface EligibilitySource {
  readonly targeting: TargetingIndex;
  readonly ads: AdTable;
  readonly servable: { bits: Uint32Array; count: number };
}

function clear(bits: Uint32Array, id: number): boolean {
  const w = id >>> 5;
  if (id < 0 || w >= bits.length) return false;
  const m = 1 << (id & 31);
  if ((bits[w] & m) === 0) return false;
  bits[w] &= ~m;
  return true;
}

/** Computes the request's eligible set. */
export class Eligibility implements Stage<void, EligibleSet> {
  readonly name = 'Eligibility';
  constructor(
    private readonly source: EligibilitySource,
    private readonly pool: BitsetPool,
    /** Receives each buffer handed out, to release it when the request is over. */
    private readonly onBuffer: (ctx: StageContext, buf: Uint32Array) => void,
  ) {}

  async run(ctx: StageContext): Promise<EligibleSet> {
    const { targeting, ads } = this.source;
    const servable = this.source.servable;
    const words = Math.ceil(Math.max(targeting.capacity, servable.bits.length * 32, 32) / 32);
    const out = this.pool.acquire(words);
    this.onBuffer(ctx, out);
    const attrs: RequestAttributes = ctx.query.attributes;
    // Taken before the match: an ad set or removed while it runs (an id reused by a new ad,
    // changed targeting) is later dropped by Filters instead of trusted with a stale bit.
    const epoch = ads.epoch;
    const m = await targeting.matchAsync(attrs, { within: servable.bits, out });
    const q = ctx.query;
    let excludedAds = 0;
    let excludedAdvertisers = 0;
    let blocked = 0;
    for (const adId of q.excludeAdIds) if (clear(m.bits, ads.idOf(adId))) excludedAds++;
    for (const adv of q.excludeAdvertiserIds) for (const id of ads.idsOfAdvertiser(adv)) if (clear(m.bits, id)) excludedAdvertisers++;
    for (const cat of q.blockedCategories) for (const id of ads.idsOfCategory(cat)) if (clear(m.bits, id)) blocked++;
    ctx.note('servable', servable.count);
    ctx.note('matched', m.count);
    // Removed from the catalog, in the order Explain names reasons: not servable (paused, out of
    // flight, over budget), then targeting, then each exclusion.
    ctx.drop('not_servable', Math.max(0, ads.size - servable.count));
    ctx.drop('targeting', Math.max(0, servable.count - m.count));
    ctx.drop('excluded_ad', excludedAds);
    ctx.drop('excluded_advertiser', excludedAdvertisers);
    ctx.drop('blocked_category', blocked);
    return { bits: m.bits, count: m.count - excludedAds - excludedAdvertisers - blocked, epoch };
  }
}
