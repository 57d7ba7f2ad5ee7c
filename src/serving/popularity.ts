/**
 * Time-decayed engagement, overall and per segment (`attribute=value` of the configured segment
 * attributes), kept in a time-invariant log domain: an event at time t adds 2^(t/h) to a sum
 * (h = half-life), stored as L = log2(sum). The value at time `now` is 2^(L - now/h), so ranking
 * by L never needs a rescan as time passes and nothing overflows (L grows like t/h).
 */
import type { PopularityConfig } from '../config/schema';
import type { PopularityView } from '../pipeline/types';

/** Persisted counters of one (ad, segment): log2-domain decayed sums at half-life `hl` seconds. */
export interface PopularityRecord {
  li: number;
  lc: number;
  hl: number;
}

/** log2(2^a + 2^b), exact for -Infinity operands. */
export function logAddExp2(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log2(1 + 2 ** (Math.min(a, b) - m));
}

/** The segment key of an attribute value: `country=US`; '' is the overall segment. */
export function segmentKey(attribute: string, value: string): string {
  return `${attribute}=${value}`;
}

interface Counters {
  li: number;
  lc: number;
}

class Segment {
  readonly counters = new Map<number, Counters>();
  private order: number[] = [];
  private dirty = false;
  /** Ids were deleted since the last ranking: `order` may hold them (and, once re-added, twice). */
  private pruned = false;
  private ranked_: Uint32Array = new Uint32Array(0);

  update(id: number, c: Counters): void {
    if (!this.counters.has(id)) this.order.push(id);
    this.counters.set(id, c);
    this.dirty = true;
  }
  delete(id: number): void {
    // Dropped from `order` at the next ranking, once for a whole batch of deletes.
    if (this.counters.delete(id)) {
      this.pruned = true;
      this.dirty = true;
    }
  }
  ranked(score: (c: Counters) => number): Uint32Array {
    if (this.pruned) {
      const kept = new Set<number>();
      this.order = this.order.filter((id) => this.counters.has(id) && !kept.has(id) && kept.add(id) !== undefined);
      this.pruned = false;
    }
    if (this.dirty) {
      const keys = new Map<number, number>();
      for (const [id, c] of this.counters) keys.set(id, score(c));
      // The previous order is nearly sorted after a few events: TimSort makes this close to linear.
      this.order.sort((a, b) => keys.get(b)! - keys.get(a)! || a - b);
      this.ranked_ = Uint32Array.from(this.order);
      this.dirty = false;
    }
    return this.ranked_;
  }
}

/** One event as the state applies it (ad already resolved to its internal id). */
export interface ResolvedEvent {
  id: number;
  adId: string;
  click: boolean;
  timestampMs: number;
  /** Segment keys (`attribute=value`) the event counts in, besides overall. */
  segments: string[];
}

/** A counter change to persist and then apply: the new record of (ad, segment). */
export interface PopularityUpdate {
  id: number;
  adId: string;
  segment: string;
  record: PopularityRecord;
}

/** In-memory popularity of every ad; the store persists its records (see CatalogStore). */
export class PopularityState implements PopularityView {
  private readonly segments = new Map<string, Segment>();
  private config: PopularityConfig;
  /** Largest rate() seen right after a load or an update: rates only decay between events, so it bounds every later rate. */
  private rateMax = 0;

  constructor(config: PopularityConfig) {
    this.config = config;
    this.segments.set('', new Segment());
  }

  /** Changes the config; sums kept at another half-life are rescaled (exact for one event per sum). */
  configure(config: PopularityConfig): void {
    if (config.half_life_s !== this.config.half_life_s) {
      const f = this.config.half_life_s / config.half_life_s;
      for (const seg of this.segments.values()) {
        for (const [id, c] of seg.counters) seg.update(id, { li: c.li * f, lc: c.lc * f });
      }
    }
    const priorChanged = config.prior_impressions !== this.config.prior_impressions;
    this.config = config;
    if (priorChanged) {
      this.rateMax = 0;
      const now = Date.now();
      for (const id of this.segments.get('')!.counters.keys()) this.noteRate(id, now);
    }
  }

  /** Loads a persisted record (at startup). */
  load(id: number, segment: string, r: PopularityRecord): void {
    const f = r.hl / this.config.half_life_s;
    this.segment(segment).update(id, { li: r.li * f, lc: r.lc * f });
    if (segment === '') this.noteRate(id, Date.now());
  }

  private noteRate(id: number, nowMs: number): void {
    const r = this.rate(id, nowMs);
    if (r > this.rateMax) this.rateMax = r;
  }

  /** An upper bound of rate(id, t) for every id and every t from now on. */
  rateBound(): number {
    return this.rateMax;
  }

  private segment(key: string): Segment {
    let s = this.segments.get(key);
    if (!s) this.segments.set(key, (s = new Segment()));
    return s;
  }

  /** The segment keys of an event's attributes under the configured segment attributes. */
  segmentsOf(attributes: Readonly<Record<string, readonly string[]>>): string[] {
    const out: string[] = [];
    for (const a of this.config.segment_attributes) {
      if (!Object.prototype.hasOwnProperty.call(attributes, a)) continue;
      for (const v of new Set(attributes[a])) out.push(segmentKey(a, v));
    }
    return out;
  }

  /** The records `events` would produce, without applying them (persist first, then apply). */
  plan(events: ReadonlyArray<ResolvedEvent>): PopularityUpdate[] {
    const h = this.config.half_life_s * 1000;
    const pending = new Map<string, PopularityUpdate>();
    for (const e of events) {
      const x = e.timestampMs / h;
      for (const seg of ['', ...e.segments]) {
        const key = `${e.id}\u0001${seg}`;
        let u = pending.get(key);
        if (!u) {
          const c = this.segments.get(seg)?.counters.get(e.id);
          u = { id: e.id, adId: e.adId, segment: seg, record: { li: c?.li ?? -Infinity, lc: c?.lc ?? -Infinity, hl: this.config.half_life_s } };
          pending.set(key, u);
        }
        if (e.click) u.record.lc = logAddExp2(u.record.lc, x);
        else u.record.li = logAddExp2(u.record.li, x);
      }
    }
    return [...pending.values()];
  }

  /** Applies planned updates. */
  apply(updates: ReadonlyArray<PopularityUpdate>): void {
    for (const u of updates) {
      const f = u.record.hl / this.config.half_life_s;
      this.segment(u.segment).update(u.id, { li: u.record.li * f, lc: u.record.lc * f });
    }
    const now = Date.now();
    for (const u of updates) if (u.segment === '') this.noteRate(u.id, now);
  }

  /** Forgets an ad (deleted). */
  remove(id: number): void {
    for (const s of this.segments.values()) s.delete(id);
  }

  private score = (c: Counters): number => {
    const wc = this.config.click_weight;
    const wi = this.config.impression_weight;
    return logAddExp2(wc > 0 ? c.lc + Math.log2(wc) : -Infinity, wi > 0 ? c.li + Math.log2(wi) : -Infinity);
  };

  ranked(segment?: { attribute: string; value: string }): Uint32Array {
    const key = segment ? segmentKey(segment.attribute, segment.value) : '';
    const s = this.segments.get(key);
    return s ? s.ranked(this.score) : new Uint32Array(0);
  }

  rate(id: number, nowMs: number): number {
    const c = this.segments.get('')!.counters.get(id);
    if (!c) return 0;
    const t = nowMs / (this.config.half_life_s * 1000);
    const clicks = 2 ** (c.lc - t);
    const imps = 2 ** (c.li - t);
    return clicks / (Math.max(imps, clicks) + this.config.prior_impressions);
  }

  /** Decayed (impressions, clicks) of `id` at `nowMs` in a segment ('' = overall). */
  decayed(id: number, nowMs: number, segment = ''): { impressions: number; clicks: number } {
    const c = this.segments.get(segment)?.counters.get(id);
    if (!c) return { impressions: 0, clicks: 0 };
    const t = nowMs / (this.config.half_life_s * 1000);
    return { impressions: 2 ** (c.li - t), clicks: 2 ** (c.lc - t) };
  }

  /** Number of segments (overall included). */
  get segmentCount(): number {
    return this.segments.size;
  }
}
