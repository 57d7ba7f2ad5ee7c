/**
 * The serving copy of the catalog: one column per field, indexed by internal id, so the funnel
 * reads an ad's bid, budget or status without touching LMDB or allocating. Strings that repeat
 * (advertiser, campaign, category) are interned. Written only by ServingState (load, Admin
 * writes); read by every stage.
 */
import type { AdRecord } from '../store/catalog-store';

const DAY_MS = 86_400_000;
const EMPTY: ReadonlySet<number> = new Set();

/** Whole UTC days since the epoch of `ms`. */
export function epochDay(ms: number): number {
  return Math.floor(ms / DAY_MS);
}

class Interner {
  private readonly ids = new Map<string, number>();
  readonly values: string[] = [];
  intern(s: string): number {
    let i = this.ids.get(s);
    if (i === undefined) {
      i = this.values.length;
      this.values.push(s);
      this.ids.set(s, i);
    }
    return i;
  }
  /** The id of `s`, or -1 when it was never interned. */
  find(s: string): number {
    return this.ids.get(s) ?? -1;
  }
}

function grow<T extends Float64Array | Float32Array | Int32Array | Uint8Array>(a: T, n: number, fill: number): T {
  if (a.length >= n) return a;
  const b = new (a.constructor as new (n: number) => T)(Math.max(n, a.length * 2, 1024));
  b.set(a);
  b.fill(fill, a.length);
  return b;
}

/** Columnar ad table over internal ids. Missing ids read as absent (`has` false). */
export class AdTable {
  private present = new Uint8Array(0);
  private active = new Uint8Array(0);
  private bids = new Float64Array(0);
  /** Daily budget in micros; Infinity = unlimited. */
  private budgets = new Float64Array(0);
  private spend = new Float64Array(0);
  private spendDays = new Int32Array(0);
  private qualities = new Float32Array(0);
  private ctrs = new Float32Array(0);
  private starts = new Float64Array(0);
  private ends = new Float64Array(0);
  private advertisers = new Int32Array(0);
  private campaigns = new Int32Array(0);
  private categories = new Int32Array(0);
  private adIds: (string | undefined)[] = [];
  private readonly byAdId = new Map<string, number>();
  private readonly advertiserNames = new Interner();
  private readonly campaignNames = new Interner();
  private readonly categoryNames = new Interner();
  private readonly byAdvertiser = new Map<number, Set<number>>();
  private readonly byCategory = new Map<number, Set<number>>();
  private live = 0;
  /** Write epoch: bumped by every set() and remove(). */
  private epoch_ = 0;
  /** Epoch of the last set() or remove() of each id. */
  private changed = new Float64Array(0);

  private static link(map: Map<number, Set<number>>, key: number, id: number): void {
    let set = map.get(key);
    if (!set) map.set(key, (set = new Set()));
    set.add(id);
  }
  private static unlink(map: Map<number, Set<number>>, key: number, id: number): void {
    const set = map.get(key);
    if (!set) return;
    set.delete(id);
    if (set.size === 0) map.delete(key);
  }

  /** One more than the largest id ever set. */
  get capacity(): number {
    return this.adIds.length;
  }
  /** Number of ads. */
  get size(): number {
    return this.live;
  }

  private ensure(n: number): void {
    this.present = grow(this.present, n, 0);
    this.active = grow(this.active, n, 0);
    this.bids = grow(this.bids, n, 0);
    this.budgets = grow(this.budgets, n, Infinity);
    this.spend = grow(this.spend, n, 0);
    this.spendDays = grow(this.spendDays, n, -1);
    this.qualities = grow(this.qualities, n, 0);
    this.ctrs = grow(this.ctrs, n, 0);
    this.starts = grow(this.starts, n, -Infinity);
    this.ends = grow(this.ends, n, Infinity);
    this.advertisers = grow(this.advertisers, n, -1);
    this.campaigns = grow(this.campaigns, n, -1);
    this.categories = grow(this.categories, n, -1);
    this.changed = grow(this.changed, n, 0);
  }

  /** Sets (or replaces) the ad at `rec.id`; spend is kept when the ad already existed. */
  set(rec: AdRecord): void {
    const id = rec.id;
    this.ensure(id + 1);
    this.changed[id] = ++this.epoch_;
    while (this.adIds.length <= id) this.adIds.push(undefined);
    const old = this.adIds[id];
    if (old !== undefined && old !== rec.ad_id) this.byAdId.delete(old);
    if (!this.present[id]) this.live++;
    else {
      AdTable.unlink(this.byAdvertiser, this.advertisers[id], id);
      AdTable.unlink(this.byCategory, this.categories[id], id);
    }
    this.present[id] = 1;
    this.adIds[id] = rec.ad_id;
    this.byAdId.set(rec.ad_id, id);
    this.active[id] = rec.status === 'active' ? 1 : 0;
    this.bids[id] = rec.bid_micros;
    this.budgets[id] = rec.daily_budget_micros ?? Infinity;
    this.qualities[id] = rec.quality;
    this.ctrs[id] = rec.ctr_prior;
    this.starts[id] = rec.start_ms ?? -Infinity;
    this.ends[id] = rec.end_ms ?? Infinity;
    this.advertisers[id] = this.advertiserNames.intern(rec.advertiser_id);
    this.campaigns[id] = this.campaignNames.intern(rec.campaign_id);
    this.categories[id] = this.categoryNames.intern(rec.category);
    AdTable.link(this.byAdvertiser, this.advertisers[id], id);
    AdTable.link(this.byCategory, this.categories[id], id);
  }

  /** Removes the ad at `id` (a no-op when absent). */
  remove(id: number): void {
    if (id >= this.adIds.length || !this.present[id]) return;
    this.changed[id] = ++this.epoch_;
    this.byAdId.delete(this.adIds[id]!);
    AdTable.unlink(this.byAdvertiser, this.advertisers[id], id);
    AdTable.unlink(this.byCategory, this.categories[id], id);
    this.adIds[id] = undefined;
    this.present[id] = 0;
    this.active[id] = 0;
    this.spend[id] = 0;
    this.spendDays[id] = -1;
    this.live--;
  }

  /** The current write epoch (bumped by every set() and remove()). */
  get epoch(): number {
    return this.epoch_;
  }
  /**
   * Whether `id` was set (its targeting, category or advertiser may differ, or the id now
   * belongs to another ad) or removed after `epoch`. Status and spend changes do not count:
   * they are re-read live.
   */
  changedAfter(id: number, epoch: number): boolean {
    return id < this.changed.length && this.changed[id] > epoch;
  }

  /** Sets the status of `id`. */
  setActive(id: number, active: boolean): void {
    if (this.has(id)) this.active[id] = active ? 1 : 0;
  }
  /** Records today's cumulative spend of `id` for the UTC day of `nowMs`. */
  setSpend(id: number, micros: number, nowMs: number): void {
    if (!this.has(id)) return;
    this.spend[id] = micros;
    this.spendDays[id] = epochDay(nowMs);
  }

  has(id: number): boolean {
    return id >= 0 && id < this.adIds.length && this.present[id] === 1;
  }
  /** Internal id of an ad_id, or -1. */
  idOf(adId: string): number {
    return this.byAdId.get(adId) ?? -1;
  }
  adId(id: number): string {
    return this.adIds[id] ?? '';
  }
  advertiserId(id: number): string {
    return this.advertiserNames.values[this.advertisers[id]] ?? '';
  }
  campaignId(id: number): string {
    return this.campaignNames.values[this.campaigns[id]] ?? '';
  }
  category(id: number): string {
    return this.categoryNames.values[this.categories[id]] ?? '';
  }
  /** Interned advertiser number (equal numbers = same advertiser); -1 when absent. */
  advertiserKey(id: number): number {
    return id < this.capacity ? this.advertisers[id] : -1;
  }
  /** Interned category number; -1 when absent. */
  categoryKey(id: number): number {
    return id < this.capacity ? this.categories[id] : -1;
  }
  /** Interned number of an advertiser name, or -1 when no ad has it. */
  findAdvertiser(name: string): number {
    return this.advertiserNames.find(name);
  }
  /** Interned number of a category name, or -1 when no ad has it. */
  findCategory(name: string): number {
    return this.categoryNames.find(name);
  }
  isActive(id: number): boolean {
    return this.has(id) && this.active[id] === 1;
  }
  bidMicros(id: number): number {
    return this.bids[id];
  }
  /** Daily budget in micros, Infinity when unlimited. */
  budgetMicros(id: number): number {
    return this.budgets[id];
  }
  /** Spend reported for the UTC day of `nowMs` (0 when none was reported that day). */
  spendToday(id: number, nowMs: number): number {
    return this.spendDays[id] === epochDay(nowMs) ? this.spend[id] : 0;
  }
  quality(id: number): number {
    return this.qualities[id];
  }
  ctrPrior(id: number): number {
    return this.ctrs[id];
  }
  /** Flight start, epoch ms (-Infinity when open). */
  startMs(id: number): number {
    return this.starts[id];
  }
  /** Flight end, epoch ms, exclusive (Infinity when open). */
  endMs(id: number): number {
    return this.ends[id];
  }
  /** Whether `nowMs` is inside the flight window [start, end). */
  inFlight(id: number, nowMs: number): boolean {
    return nowMs >= this.starts[id] && nowMs < this.ends[id];
  }
  /** Whether spend today is below the daily budget. */
  underBudget(id: number, nowMs: number): boolean {
    return this.spendToday(id, nowMs) < this.budgets[id];
  }
  /** Active, in flight and under budget at `nowMs`: may be served to someone. */
  servable(id: number, nowMs: number): boolean {
    return this.isActive(id) && this.inFlight(id, nowMs) && this.underBudget(id, nowMs);
  }
  /** Ids of the ads of an advertiser name (empty when none). */
  idsOfAdvertiser(name: string): ReadonlySet<number> {
    return this.byAdvertiser.get(this.advertiserNames.find(name)) ?? EMPTY;
  }
  /** Ids of the ads of a category name (empty when none). */
  idsOfCategory(name: string): ReadonlySet<number> {
    return this.byCategory.get(this.categoryNames.find(name)) ?? EMPTY;
  }
  /** Every id present, ascending. */
  *ids(): IterableIterator<number> {
    for (let id = 0; id < this.adIds.length; id++) if (this.present[id]) yield id;
  }
}
