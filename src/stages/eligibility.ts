/**
 * Eligibility: the request's allowed set as a bitset over internal ids: the targeting index's
 * match of the request's attributes within the servable ads (active, in flight, under budget),
 * minus excluded ads, advertisers and blocked categories. Every sourcing stage works inside it;
 * the Filters stage checks it again per candidate.
 *
 * The targeting match depends only on the request's attributes and the targeting rules, so it
 * is cached by attribute signature for as long as the targeting epoch holds: the index's write
 * epoch and the ad table's (both move on upserts and deletes, and on nothing else). Status,
 * spend and flight changes (and the day's budget reset) only swap the servable bitset, which
 * is AND-ed in per request: one synchronous native call into the request's own pooled buffer
 * (about 5 us at 1M ads with AVX2) that also counts the result. So a hit makes no thread-pool hop and
 * survives every write but upserts and deletes. Exclusions are then cleared in that buffer.
 */
import { andCount, type RequestAttributes, type TargetingIndex } from '../native/index';
import type { AdTable } from '../serving/ad-table';
import type { EligibleSet, Stage, StageContext } from '../pipeline/types';

/**
 * A pool of bitset buffers, so a request allocates none in the steady state. A buffer may be
 * shared (the eligibility cache hands one cached answer to many requests): each holder takes a
 * lease (acquire or retain) and gives it back (release); the buffer is reused only once every
 * lease is back.
 */
export class BitsetPool {
  private readonly free: Uint32Array[] = [];
  // Outstanding leases of the buffers this pool handed out (weak: a holder that never releases leaks nothing).
  private readonly leases = new WeakMap<Uint32Array, number>();
  constructor(private readonly max = 256) {}
  /** A buffer of at least `words` words (contents undefined), with one lease. */
  acquire(words: number): Uint32Array {
    let buf: Uint32Array | undefined;
    for (let i = this.free.length - 1; i >= 0; i--) {
      if (this.free[i].length >= words) {
        buf = this.free[i];
        this.free[i] = this.free[this.free.length - 1];
        this.free.pop();
        break;
      }
    }
    buf ??= new Uint32Array(Math.max(words, 32));
    this.leases.set(buf, 1);
    return buf;
  }
  /** One more lease on a buffer this pool handed out (a shared reader). */
  retain(buf: Uint32Array): void {
    this.leases.set(buf, (this.leases.get(buf) ?? 0) + 1);
  }
  /** Gives back one lease once nothing (no native call either) reads the buffer for it any more; the last one returns it to the pool. */
  release(buf: Uint32Array): void {
    const n = this.leases.get(buf);
    if (n !== undefined && n > 1) {
      this.leases.set(buf, n - 1);
      return;
    }
    this.leases.delete(buf);
    if (this.free.length < this.max) this.free.push(buf);
  }
}

/** What the Eligibility stage reads from the serving state. */
export interface EligibilitySource {
  /** Its `epoch` (with the ad table's) is the cache's epoch. */
  readonly targeting: TargetingIndex;
  readonly ads: AdTable;
  /** The servable ads. `bits` is never modified in place: every change swaps in a new array (a running targeting match may read the old one). */
  readonly servable: { bits: Uint32Array; count: number };
}

/** Bounds of the eligibility cache. */
export interface EligibilityCacheOptions {
  /** Cached signatures at most (least recently used evicted first). Default 1024. */
  maxEntries?: number;
  /** Bytes of cached bitsets at most. Default 64 MiB (512 answers at 1M ads, 5,120 at 100k). */
  maxBytes?: number;
}

const DEFAULT_MAX_ENTRIES = 1024;
const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

/** One cached targeting match (not yet AND-ed with the servable ads, before exclusions). Its bits are read-only and leased from the pool. */
interface CachedMatch {
  bits: Uint32Array;
  /** AdTable epoch taken before the match. */
  epoch: number;
}

/** A native match under way and the requests waiting on it (each takes its own lease when it ends). */
interface PendingMatch {
  match: Promise<CachedMatch>;
  users: number;
}

/**
 * The request attributes as a cache key: names sorted, each one's values sorted and without
 * repeats (the index reads them as a set), undefined values left out as the index leaves them
 * out; `[]` stays distinct from absent. Null when a value is not an array of strings (the index
 * refuses it: no key, so the native call reports the error).
 */
export function attributeSignature(attrs: RequestAttributes): string | null {
  const names = Object.keys(attrs);
  if (names.length > 1) names.sort();
  let key = '';
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    const values = attrs[name];
    if (values === undefined) continue;
    if (!Array.isArray(values)) return null;
    let list: readonly string[] = values;
    if (list.length > 1) {
      const sorted = list.slice().sort();
      let w = 1;
      for (let r = 1; r < sorted.length; r++) if (sorted[r] !== sorted[w - 1]) sorted[w++] = sorted[r];
      sorted.length = w;
      list = sorted;
    }
    for (let j = 0; j < list.length; j++) if (typeof list[j] !== 'string') return null;
    // JSON strings cannot contain a raw control character, so \u0001 and \u0002 separate unambiguously.
    key += JSON.stringify(name) + '\u0001' + (list.length === 0 ? '' : JSON.stringify(list)) + '\u0002';
  }
  return key;
}

function clear(bits: Uint32Array, id: number): boolean {
  const w = id >>> 5;
  if (id < 0 || w >= bits.length) return false;
  const m = 1 << (id & 31);
  if ((bits[w] & m) === 0) return false;
  bits[w] &= ~m;
  return true;
}

/** Computes the request's eligible set, in a buffer of the request's own (given to `onBuffer`). */
export class Eligibility implements Stage<void, EligibleSet> {
  readonly name = 'Eligibility';
  /** Cached targeting matches of the current epoch, least recently used first (Map order). */
  private readonly cache = new Map<string, CachedMatch>();
  /** Matches under way, by signature (concurrent misses of one signature share one native call). */
  private readonly pending = new Map<string, PendingMatch>();
  private cacheBytes = 0;
  /** The epoch the cache holds: the targeting index's write epoch and the ad table's. */
  private epochTargeting = -1;
  private epochAds = -1;
  /** Words of a targeting answer in this epoch. */
  private epochWords = 1;
  private readonly maxEntries: number;
  private readonly maxBytes: number;
  /** Counters, for tests and diagnostics. */
  readonly stats = { hits: 0, misses: 0, shared: 0, evictions: 0 };

  constructor(
    private readonly source: EligibilitySource,
    private readonly pool: BitsetPool,
    /** Receives each buffer handed out, to release it (pool.release) when the request is over. */
    private readonly onBuffer: (ctx: StageContext, buf: Uint32Array) => void,
    options: EligibilityCacheOptions = {},
  ) {
    this.maxEntries = Math.max(0, options.maxEntries ?? DEFAULT_MAX_ENTRIES);
    this.maxBytes = Math.max(0, options.maxBytes ?? DEFAULT_MAX_BYTES);
  }

  /** Cached signatures (current epoch) and their bytes. */
  get cacheSize(): { entries: number; bytes: number } {
    return { entries: this.cache.size, bytes: this.cacheBytes };
  }

  run(ctx: StageContext): EligibleSet | Promise<EligibleSet> {
    const targetingEpoch = this.source.targeting.epoch;
    const adsEpoch = this.source.ads.epoch;
    if (targetingEpoch !== this.epochTargeting || adsEpoch !== this.epochAds) this.newEpoch(targetingEpoch, adsEpoch);
    const words = this.epochWords;
    const key = this.maxEntries > 0 && words * 4 <= this.maxBytes ? attributeSignature(ctx.query.attributes) : null;
    if (key === null) return this.matchUncached(ctx, words);
    const hit = this.cache.get(key);
    if (hit !== undefined) {
      this.stats.hits++;
      // Most recently used goes last.
      this.cache.delete(key);
      this.cache.set(key, hit);
      ctx.note('cache', 'hit');
      return this.finish(ctx, hit);
    }
    let group = this.pending.get(key);
    if (group !== undefined) {
      this.stats.shared++;
      ctx.note('cache', 'shared');
      group.users++;
    } else {
      this.stats.misses++;
      ctx.note('cache', 'miss');
      group = this.startMatch(key, ctx.query.attributes, words);
    }
    const g = group;
    return g.match.then((m) => {
      try {
        return this.finish(ctx, m);
      } finally {
        // The match's own lease goes back once every request that waited on it has its answer.
        if (--g.users === 0) this.pool.release(m.bits);
      }
    });
  }

  /** Starts the native targeting match of `key` on the thread pool; caches its answer when the epoch still holds. */
  private startMatch(key: string, attrs: RequestAttributes, words: number): PendingMatch {
    const epochTargeting = this.epochTargeting;
    const epochAds = this.epochAds;
    const out = this.pool.acquire(words);
    // Taken before the match: an ad set or removed while it runs (an id reused by a new ad,
    // changed targeting) is later dropped by Filters instead of trusted with a stale bit.
    const epoch = this.source.ads.epoch;
    const group: PendingMatch = { users: 1, match: undefined as unknown as Promise<CachedMatch> };
    group.match = this.source.targeting.matchAsync(attrs, { out }).then(
      (r) => {
        if (this.pending.get(key) === group) this.pending.delete(key);
        const m: CachedMatch = { bits: r.bits, epoch };
        // Cached only when no upsert or delete came meanwhile (and no newer epoch replaced the cache).
        const live = this.source.targeting.epoch === epochTargeting && this.source.ads.epoch === epochAds;
        if (live && this.epochTargeting === epochTargeting && this.epochAds === epochAds && !this.cache.has(key)) this.insert(key, m);
        return m;
      },
      (err: unknown) => {
        if (this.pending.get(key) === group) this.pending.delete(key);
        this.pool.release(out);
        throw err;
      },
    );
    this.pending.set(key, group);
    return group;
  }

  /** The uncached path (cache off, a signature the index would refuse, or one answer larger than the whole cache): one match within the servable ads, into the request's buffer. */
  private async matchUncached(ctx: StageContext, words: number): Promise<EligibleSet> {
    const servable = this.source.servable;
    const out = this.pool.acquire(Math.max(words, servable.bits.length));
    this.onBuffer(ctx, out);
    const epoch = this.source.ads.epoch;
    const m = await this.source.targeting.matchAsync(ctx.query.attributes, { within: servable.bits, out });
    return this.exclude(ctx, m.bits, m.count, epoch, servable.count);
  }

  /** The request's set from a (shared, read-only) targeting match: AND-ed with the servable ads as they are now into a buffer of its own, less the exclusions. */
  private finish(ctx: StageContext, m: CachedMatch): EligibleSet {
    const servable = this.source.servable;
    const own = this.pool.acquire(Math.max(m.bits.length, servable.bits.length));
    this.onBuffer(ctx, own);
    const matched = andCount(m.bits, servable.bits, own);
    return this.exclude(ctx, own, matched, m.epoch, servable.count);
  }

  /** Clears the request's exclusions in `bits` (the request's own buffer), notes and counts. */
  private exclude(ctx: StageContext, bits: Uint32Array, matched: number, epoch: number, servableCount: number): EligibleSet {
    const ads = this.source.ads;
    const q = ctx.query;
    let excludedAds = 0;
    let excludedAdvertisers = 0;
    let blocked = 0;
    for (const adId of q.excludeAdIds) if (clear(bits, ads.idOf(adId))) excludedAds++;
    for (const adv of q.excludeAdvertiserIds) for (const id of ads.idsOfAdvertiser(adv)) if (clear(bits, id)) excludedAdvertisers++;
    for (const cat of q.blockedCategories) for (const id of ads.idsOfCategory(cat)) if (clear(bits, id)) blocked++;
    ctx.note('servable', servableCount);
    ctx.note('matched', matched);
    // Removed from the catalog, in the order Explain names reasons: not servable (paused, out of
    // flight, over budget), then targeting, then each exclusion.
    ctx.drop('not_servable', Math.max(0, ads.size - servableCount));
    ctx.drop('targeting', Math.max(0, servableCount - matched));
    ctx.drop('excluded_ad', excludedAds);
    ctx.drop('excluded_advertiser', excludedAdvertisers);
    ctx.drop('blocked_category', blocked);
    return { bits, count: matched - excludedAds - excludedAdvertisers - blocked, epoch };
  }

  /** Drops every cached match: targeting (or the ad table) changed. */
  private newEpoch(targetingEpoch: number, adsEpoch: number): void {
    for (const m of this.cache.values()) this.pool.release(m.bits);
    this.cache.clear();
    this.pending.clear();
    this.cacheBytes = 0;
    this.epochTargeting = targetingEpoch;
    this.epochAds = adsEpoch;
    // The index grows only by set(), which moves its epoch: one read per epoch.
    this.epochWords = Math.ceil(Math.max(this.source.targeting.capacity, 32) / 32);
  }

  private insert(key: string, m: CachedMatch): void {
    const bytes = m.bits.byteLength;
    while (this.cache.size > 0 && (this.cache.size >= this.maxEntries || this.cacheBytes + bytes > this.maxBytes)) {
      const [oldKey, old] = this.cache.entries().next().value as [string, CachedMatch];
      this.cache.delete(oldKey);
      this.cacheBytes -= old.bits.byteLength;
      this.pool.release(old.bits);
      this.stats.evictions++;
    }
    this.pool.retain(m.bits);
    this.cache.set(key, m);
    this.cacheBytes += bytes;
  }
}
