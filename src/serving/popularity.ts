/**
 * Time-decayed engagement, overall and per segment (`attribute=value` of the configured segment
 * attributes), kept in a time-invariant log domain: an event at time t adds 2^(t/h) to a sum
 * (h = half-life), stored as L = log2(sum). The value at time `now` is 2^(L - now/h), so ranking
 * by L never needs a rescan as time passes and nothing overflows (L grows like t/h).
 */
import type { PopularityConfig } from '../config/schema';
import type { PopularityView } from '../pipeline/types';
import type { EngagementEvent } from '../store/catalog-store';

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
  /** The ranking key of (li, lc) under the current weights (see PopularityState.key); never NaN. */
  key: number;
}

/** Whether (ka, ia) ranks before (kb, ib): keys descending, then ids ascending. */
function before(ka: number, ia: number, kb: number, ib: number): boolean {
  return ka > kb || (ka === kb && ia < ib);
}

/**
 * One segment's counters and its ranking, kept current by every write: `ids[0..n)` best first, with
 * `keys[i]` the key of `ids[i]`, so the order is repaired without a Map lookup per comparison.
 */
class Segment {
  readonly counters = new Map<number, Counters>();
  private ids = new Uint32Array(0);
  private keys = new Float64Array(0);
  private n = 0;
  private view = new Uint32Array(0);
  /** Counters were loaded without ordering them (bulk load): settle() sorts once. */
  dirty = false;

  /** Ids best first: a live view of the order, read it synchronously (the next write changes it in place). */
  ranked(): Uint32Array {
    // Fallback only: the state settles after its bulk load and every write keeps the order, so serving never sorts.
    if (this.dirty) this.settle();
    return this.view;
  }

  /** Sets counters without ordering (bulk load). */
  load(id: number, c: Counters): void {
    this.counters.set(id, c);
    this.dirty = true;
  }

  /** Rebuilds the order from the counters with one sort (after a bulk load, or new weights). */
  settle(): void {
    const n = this.counters.size;
    const ids = new Uint32Array(n);
    const keys = new Float64Array(n);
    let i = 0;
    for (const [id, c] of this.counters) {
      ids[i] = id;
      keys[i++] = c.key;
    }
    const perm = new Uint32Array(n);
    for (i = 0; i < n; i++) perm[i] = i;
    perm.sort((a, b) => (before(keys[a], ids[a], keys[b], ids[b]) ? -1 : 1));
    const cap = Math.max(n, 16);
    this.ids = new Uint32Array(cap);
    this.keys = new Float64Array(cap);
    for (i = 0; i < n; i++) {
      this.ids[i] = ids[perm[i]];
      this.keys[i] = keys[perm[i]];
    }
    this.n = n;
    this.view = this.ids.subarray(0, n);
    this.dirty = false;
  }

  /** Index of (key, id) in the order, or where it would go: the first entry that does not rank before it. */
  private lowerBound(key: number, id: number): number {
    const ids = this.ids;
    const keys = this.keys;
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const m = (lo + hi) >>> 1;
      if (before(keys[m], ids[m], key, id)) lo = m + 1;
      else hi = m;
    }
    return lo;
  }

  /**
   * Sets (or, for null, deletes) the counters of the changed ids and repairs the order with one
   * batch merge: the k moved ids are found by binary search on their old keys, their new entries
   * sorted (k log k) and placed by binary search, and the runs of unmoved entries between those
   * points shifted in place (one memmove each; entries outside every shift stay untouched).
   */
  change(changes: ReadonlyMap<number, Counters | null>): void {
    if (this.dirty) {
      this.set(changes);
      this.settle();
      return;
    }
    const removed: number[] = [];
    const added: { id: number; key: number }[] = [];
    for (const [id, c] of changes) {
      const old = this.counters.get(id);
      if (old && c && old.key === c.key) continue;
      if (old) {
        const at = this.lowerBound(old.key, id);
        if (at === this.n || this.ids[at] !== id) {
          // Unreachable while the order matches the counters; rebuilding keeps the result right if it ever does not.
          this.set(changes);
          this.settle();
          return;
        }
        removed.push(at);
      }
      if (c) added.push({ id, key: c.key });
    }
    this.set(changes);
    if (removed.length === 0 && added.length === 0) return;
    removed.sort((a, b) => a - b);
    added.sort((a, b) => (before(a.key, a.id, b.key, b.id) ? -1 : 1));
    // Insertion points in the old order (removed entries included: no added entry equals one, since equal keys did not move).
    const at = added.map((a) => this.lowerBound(a.key, a.id));
    const n = this.n;
    // Runs of kept entries [start, end) with their shift, and the new index of each added entry.
    const runs: number[] = [];
    const dest = new Array<number>(added.length);
    let i = 0;
    let ri = 0;
    let ai = 0;
    let shift = 0;
    while (ri < removed.length || ai < added.length) {
      // At one index, the added entry goes first: the removed one there is dropped either way.
      if (ai < added.length && (ri === removed.length || at[ai] <= removed[ri])) {
        const p = at[ai];
        if (p > i) runs.push(i, p, shift);
        i = p;
        dest[ai++] = p + shift++;
      } else {
        const r = removed[ri++];
        if (r > i) runs.push(i, r, shift);
        i = r + 1;
        shift--;
      }
    }
    if (n > i) runs.push(i, n, shift);
    const n2 = n + shift;
    if (n2 > this.ids.length) {
      const cap = Math.max(n2, Math.ceil(this.ids.length * 1.5), 16);
      const ids = new Uint32Array(cap);
      const keys = new Float64Array(cap);
      for (let j = 0; j < runs.length; j += 3) {
        ids.set(this.ids.subarray(runs[j], runs[j + 1]), runs[j] + runs[j + 2]);
        keys.set(this.keys.subarray(runs[j], runs[j + 1]), runs[j] + runs[j + 2]);
      }
      this.ids = ids;
      this.keys = keys;
    } else {
      // In place: a run moving left only overwrites slots of earlier left-moving runs (already moved) or
      // of removed entries, and symmetrically for runs moving right, so left ones go first-to-last and
      // right ones last-to-first. Added entries land in the slots no run claims, written last.
      for (let j = 0; j < runs.length; j += 3) {
        if (runs[j + 2] < 0) this.move(runs[j], runs[j + 1], runs[j + 2]);
      }
      for (let j = runs.length - 3; j >= 0; j -= 3) {
        if (runs[j + 2] > 0) this.move(runs[j], runs[j + 1], runs[j + 2]);
      }
    }
    for (let j = 0; j < added.length; j++) {
      this.ids[dest[j]] = added[j].id;
      this.keys[dest[j]] = added[j].key;
    }
    if (n2 !== n || this.view.buffer !== this.ids.buffer) this.view = this.ids.subarray(0, n2);
    this.n = n2;
  }

  private move(start: number, end: number, shift: number): void {
    this.ids.copyWithin(start + shift, start, end);
    this.keys.copyWithin(start + shift, start, end);
  }

  private set(changes: ReadonlyMap<number, Counters | null>): void {
    for (const [id, c] of changes) {
      if (c) this.counters.set(id, c);
      else this.counters.delete(id);
    }
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

/** The records of one ad as the store holds them (see PopularityState.replaceAds). */
export interface PopularityAdRecords {
  id: number;
  records: ReadonlyArray<{ segment: string; record: PopularityRecord }>;
}

const EMPTY = new Uint32Array(0);

/**
 * In-memory popularity of every ad; the store persists its records (see CatalogStore). Every
 * write (apply, remove, replaceAds, configure, settle) leaves each segment's order current, so
 * ranked() never sorts; only load() defers its ordering to settle().
 */
export class PopularityState implements PopularityView {
  private readonly segments = new Map<string, Segment>();
  private config: PopularityConfig;
  /** log2 of the click and impression weights (-Infinity for a weight of 0). */
  private logWc: number;
  private logWi: number;
  /** Largest rate() seen right after a load or an update: rates only decay between events, so it bounds every later rate. */
  private rateMax = 0;

  constructor(config: PopularityConfig) {
    this.config = config;
    this.logWc = Math.log2(config.click_weight);
    this.logWi = Math.log2(config.impression_weight);
    this.segments.set('', new Segment());
  }

  /**
   * Changes the config; sums kept at another half-life are rescaled (exact for one event per sum).
   * A new half-life or new weights change the keys: every segment is re-sorted here, once.
   */
  configure(config: PopularityConfig): void {
    const old = this.config;
    const hlChanged = config.half_life_s !== old.half_life_s;
    const keysChanged = hlChanged || config.click_weight !== old.click_weight || config.impression_weight !== old.impression_weight;
    this.config = config;
    this.logWc = Math.log2(config.click_weight);
    this.logWi = Math.log2(config.impression_weight);
    if (keysChanged) {
      const f = old.half_life_s / config.half_life_s;
      for (const seg of this.segments.values()) {
        for (const c of seg.counters.values()) {
          if (hlChanged) {
            c.li *= f;
            c.lc *= f;
          }
          c.key = this.key(c.li, c.lc);
        }
        seg.settle();
      }
    }
    // A rescaled sum of several events is only close to its old value, so the bound is recomputed too.
    if (hlChanged || config.prior_impressions !== old.prior_impressions) {
      this.rateMax = 0;
      const now = Date.now();
      for (const id of this.segments.get('')!.counters.keys()) this.noteRate(id, now);
    }
  }

  /** The ranking key of log2 sums (li, lc): log2(wc * clicks + wi * impressions), time-invariant; NaN becomes -Infinity. */
  private key(li: number, lc: number): number {
    const k = logAddExp2(lc + this.logWc, li + this.logWi);
    return Number.isNaN(k) ? -Infinity : k;
  }

  /** Counters of a record, rescaled from its half-life to the configured one. */
  private fromRecord(r: PopularityRecord): Counters {
    const f = r.hl / this.config.half_life_s;
    const li = r.li * f;
    const lc = r.lc * f;
    return { li, lc, key: this.key(li, lc) };
  }

  /** Loads a persisted record (bulk load at startup): the segment is ordered by the next settle(), not here. */
  load(id: number, segment: string, r: PopularityRecord): void {
    this.segment(segment).load(id, this.fromRecord(r));
    if (segment === '') this.noteRate(id, Date.now());
  }

  /** Orders every segment loaded since the last settle() (one sort each); call it once after the bulk load. */
  settle(): void {
    for (const s of this.segments.values()) if (s.dirty) s.settle();
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

  /**
   * Splits engagement events into those of known ads (`idOf` >= 0), resolved for plan(), and the
   * ad_ids of unknown ones.
   */
  resolve<E extends EngagementEvent & { attributes: Readonly<Record<string, readonly string[]>> }>(
    events: ReadonlyArray<E>,
    idOf: (adId: string) => number,
  ): { resolved: ResolvedEvent[]; known: E[]; unknown: string[] } {
    const resolved: ResolvedEvent[] = [];
    const known: E[] = [];
    const unknown: string[] = [];
    for (const e of events) {
      const id = idOf(e.ad_id);
      if (id < 0) {
        unknown.push(e.ad_id);
        continue;
      }
      known.push(e);
      resolved.push({ id, adId: e.ad_id, click: e.type === 'CLICK', timestampMs: e.timestamp_ms, segments: this.segmentsOf(e.attributes) });
    }
    return { resolved, known, unknown };
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

  /**
   * The records `events` would produce, without applying them (persist first, then apply): one per
   * (ad, segment), at the configured half-life. Each sum starts from `base(adId, segment)` when
   * `base` is given (the stored record, rescaled; none: from zero), else from the in-memory
   * counters. Writers sharing a store pass the record read inside their write transaction, so that
   * no process overwrites another's events.
   */
  plan(events: ReadonlyArray<ResolvedEvent>, base?: (adId: string, segment: string) => PopularityRecord | undefined): PopularityUpdate[] {
    const h = this.config.half_life_s * 1000;
    const pending = new Map<string, PopularityUpdate>();
    for (const e of events) {
      const x = e.timestampMs / h;
      for (const seg of ['', ...e.segments]) {
        const key = `${e.id}\u0001${seg}`;
        let u = pending.get(key);
        if (!u) {
          let c: { li: number; lc: number } | undefined;
          if (base) {
            const r = base(e.adId, seg);
            c = r && this.fromRecord(r);
          } else {
            c = this.segments.get(seg)?.counters.get(e.id);
          }
          u = { id: e.id, adId: e.adId, segment: seg, record: { li: c?.li ?? -Infinity, lc: c?.lc ?? -Infinity, hl: this.config.half_life_s } };
          pending.set(key, u);
        }
        if (e.click) u.record.lc = logAddExp2(u.record.lc, x);
        else u.record.li = logAddExp2(u.record.li, x);
      }
    }
    return [...pending.values()];
  }

  /** Applies planned updates (the last one wins per (id, segment)); each touched segment is re-ordered by one merge. */
  apply(updates: ReadonlyArray<PopularityUpdate>): void {
    const changes = new Map<Segment, Map<number, Counters | null>>();
    for (const u of updates) changesOf(changes, this.segment(u.segment)).set(u.id, this.fromRecord(u.record));
    for (const [s, c] of changes) s.change(c);
    const now = Date.now();
    for (const u of updates) if (u.segment === '') this.noteRate(u.id, now);
  }

  /** Forgets ads (deleted): one id, or a batch (one merge per segment for the whole batch). */
  remove(ids: number | ReadonlyArray<number>): void {
    const list = typeof ids === 'number' ? [ids] : ids;
    for (const s of this.segments.values()) {
      let c: Map<number, Counters | null> | undefined;
      for (const id of list) if (s.counters.has(id)) (c ??= new Map()).set(id, null);
      if (c) s.change(c);
    }
  }

  /**
   * Makes each listed ad's counters exactly its given records (rescaled; the last entry of an id
   * wins) and removes it from every segment it has no record in: how a process applies records
   * another process wrote to the shared store. One merge per touched segment; costs O(segments)
   * per ad.
   */
  replaceAds(entries: ReadonlyArray<PopularityAdRecords>): void {
    const latest = new Map<number, PopularityAdRecords['records']>();
    for (const e of entries) latest.set(e.id, e.records);
    const changes = new Map<Segment, Map<number, Counters | null>>();
    for (const [id, records] of latest) {
      const listed = new Set<string>();
      for (const { segment, record } of records) {
        listed.add(segment);
        changesOf(changes, this.segment(segment)).set(id, this.fromRecord(record));
      }
      for (const [key, s] of this.segments) if (!listed.has(key) && s.counters.has(id)) changesOf(changes, s).set(id, null);
    }
    for (const [s, c] of changes) s.change(c);
    const now = Date.now();
    for (const [id, records] of latest) if (records.some((r) => r.segment === '')) this.noteRate(id, now);
  }

  /** Ids by decayed engagement, best first (keys desc, ids asc), without sorting: a live view, read it synchronously. */
  ranked(segment?: { attribute: string; value: string }): Uint32Array {
    const key = segment ? segmentKey(segment.attribute, segment.value) : '';
    const s = this.segments.get(key);
    return s ? s.ranked() : EMPTY;
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

function changesOf(all: Map<Segment, Map<number, Counters | null>>, s: Segment): Map<number, Counters | null> {
  let c = all.get(s);
  if (!c) all.set(s, (c = new Map()));
  return c;
}
