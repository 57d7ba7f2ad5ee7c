/**
 * Everything a serving process holds in memory for one data directory: the ad table, the ANN
 * index, the targeting index, popularity, and the "servable" bitset (active, in flight, under
 * budget now). Admin writes go through here: validated input is written to LMDB first (one
 * transaction, committed and synced off the event loop), then applied in memory, then the call
 * returns, so an OK write is durable and seen by every later Retrieve. Writes are serialised;
 * reads never wait for them.
 */
import { checkpointSchema, type CheckpointConfig, type Config, type PopularityConfig } from '../config/schema';
import type { HnswIndex, TargetingIndex } from '../native/index';
import { HnswIndex as NativeHnswIndex, TargetingIndex as NativeTargetingIndex } from '../native/index';
import type { PopularityView, ServingView, VectorSource } from '../pipeline/types';
import { syncAnnIndex, annPath } from '../store/ann-sync';
import type { CatalogRow } from '../store/catalog-schema';
import { CatalogStore, utcDay, type AdRecord, type AnnSettings, type EngagementEvent } from '../store/catalog-store';
import { AdTable, epochDay } from './ad-table';
import { PopularityState, type PopularityRecord, type PopularityUpdate } from './popularity';
import { PriorOrder } from './prior-order';

/** Log sink of the state (pino-compatible subset). */
export interface StateLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

class Mutex {
  private tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

/** Min-heap of (time, id) flight boundaries. */
class TimeHeap {
  private t: number[] = [];
  private ids: number[] = [];
  push(time: number, id: number): void {
    let i = this.t.length;
    this.t.push(time);
    this.ids.push(id);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.t[p] <= this.t[i]) break;
      this.swap(i, p);
      i = p;
    }
  }
  /** Pops every id whose time is <= `now`. */
  popUntil(now: number): number[] {
    const out: number[] = [];
    while (this.t.length > 0 && this.t[0] <= now) {
      out.push(this.ids[0]);
      const lastT = this.t.pop()!;
      const lastId = this.ids.pop()!;
      if (this.t.length === 0) break;
      this.t[0] = lastT;
      this.ids[0] = lastId;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < this.t.length && this.t[l] < this.t[m]) m = l;
        if (r < this.t.length && this.t[r] < this.t[m]) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return out;
  }
  get size(): number {
    return this.t.length;
  }
  private swap(a: number, b: number): void {
    [this.t[a], this.t[b]] = [this.t[b], this.t[a]];
    [this.ids[a], this.ids[b]] = [this.ids[b], this.ids[a]];
  }
}

/** Result of an Admin write that may name unknown ads. */
export interface WriteOutcome {
  seq: number;
  count: number;
  unknown: string[];
}

/** Sizes reported by metrics and logs. */
export interface StateSizes {
  ads: number;
  servable: number;
  annVectors: number;
  annBytes: number;
  targetingBytes: number;
  /** Ads in the targeting index. */
  targeting: number;
  popularitySegments: number;
  /** ANN changes not yet in a checkpoint: what a restart would replay. */
  annUnsaved: number;
}

/** How a serving process shares its data directory with others (`funnel serve --workers N`). */
export interface StateOptions {
  /** This process writes ANN checkpoints and prunes the logs (one process per directory; default true). */
  checkpoints?: boolean;
  /** Journal entries up to this sequence number are applied by every process (default: this one's applied sequence). */
  journalFloor?: () => number;
}

/** Journal entries kept behind the floor, so a process that is still loading finds its way back. */
const JOURNAL_KEEP = 10_000;

/** The serving state of one data directory. */
export class ServingState implements ServingView {
  readonly ads = new AdTable();
  readonly popularity: PopularityState;
  readonly priorOrder = new PriorOrder();
  private servableBits = new Uint32Array(0);
  private servableCount = 0;
  private readonly flights = new TimeHeap();
  private day: number;
  private readonly writes = new Mutex();
  private timer: NodeJS.Timeout | undefined;
  private annChanges = 0;
  /** When the oldest change not yet in a checkpoint was made (epoch ms; 0 = none). */
  private unsavedSince = 0;
  private checkpointConfig: CheckpointConfig = checkpointSchema.parse({});
  private checkpointing: Promise<boolean> | null = null;
  private vectorsOf: HnswIndex | undefined;
  private vectorsView: VectorSource | null = null;
  /** Largest vector length seen (load and upserts; never lowered, so it stays an upper bound). */
  private normMax = 0;
  private closed = false;
  /** Every write up to this sequence number is applied in memory (own writes and other processes'). */
  private applied = 0;
  /** Own writes already applied, above `applied` (skipped when the journal reaches them). */
  private readonly ownApplied = new Set<number>();
  private checkpoints = true;
  private journalFloor: () => number = () => this.applied;
  private journalPruned = 0;
  /** The store's `seq` of each ad's record as held here (internal id -> AdRecord.seq): a catch-up skips records it already holds. */
  private readonly heldSeq = new Map<number, number>();
  /**
   * Called after each Admin write is applied here, outside the write lock; the write's promise
   * resolves only once this does (a multi-process server waits for its other processes here).
   */
  onWrite: ((seq: number) => Promise<void>) | undefined;

  private constructor(
    readonly store: CatalogStore,
    private ann_: HnswIndex,
    readonly targeting: TargetingIndex,
    private popularityConfig_: PopularityConfig,
    private readonly log: StateLogger,
  ) {
    this.popularity = new PopularityState(popularityConfig_);
    this.day = epochDay(Date.now());
  }

  /**
   * Opens the data directory and loads everything into memory: the ANN index is memory-mapped
   * from its file and caught up from the change log (rebuilt when it cannot be).
   */
  static async open(dataDir: string, config: Config, log: StateLogger, options: StateOptions = {}): Promise<ServingState> {
    const store = CatalogStore.open(dataDir);
    const checkpoints = options.checkpoints ?? true;
    try {
      const sync = await syncAnnIndex(store, { save: checkpoints, mmap: true });
      log.info({ how: sync.how, reason: sync.reason, applied: sync.applied, seconds: sync.seconds, vectors: sync.index.size }, 'ann index ready');
      const state = new ServingState(store, sync.index, new NativeTargetingIndex(), config.popularity, log);
      state.checkpointConfig = config.checkpoint;
      state.checkpoints = checkpoints;
      if (options.journalFloor) state.journalFloor = options.journalFloor;
      // The index reflects sync.seq; the tables are read later and may be newer: the journal
      // from sync.seq on brings both to one sequence number (re-reading is idempotent).
      state.applied = sync.seq;
      state.loadAll();
      if (store.seq > state.applied) await state.catchUp();
      return state;
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  private loadAll(): void {
    const started = Date.now();
    for (const ad of this.store.ads()) {
      this.ads.set(ad);
      this.heldSeq.set(ad.id, ad.seq);
      this.targeting.set(ad.id, ad.targeting ?? undefined);
      this.trackFlight(ad, started);
    }
    const today = utcDay(started);
    for (const s of this.store.spends()) {
      const id = this.ads.idOf(s.adId);
      if (id >= 0 && s.day === today) this.ads.setSpend(id, s.micros, started);
    }
    let records = 0;
    for (const p of this.store.popularity()) {
      const id = this.ads.idOf(p.adId);
      if (id < 0) continue;
      this.popularity.load(id, p.segment, p.record);
      records++;
    }
    // One sort per segment after the bulk load; later writes keep the orders current themselves.
    this.popularity.settle();
    this.priorOrder.rebuild(this.ads);
    this.noteNorms([...this.ads.ids()]);
    this.recomputeServable(started);
    this.log.info(
      { ads: this.ads.size, servable: this.servableCount, popularity_records: records, seconds: (Date.now() - started) / 1000 },
      'catalog loaded',
    );
  }

  /** Raises the vector length bound to cover the stored vectors of `ids` (read in batches). */
  private noteNorms(ids: readonly number[]): void {
    const ann = this.ann_;
    const dim = ann.dim;
    if (ann.size === 0 || dim === 0) return;
    const batch = 4096;
    const rows = new Float32Array(batch * dim);
    for (let at = 0; at < ids.length; at += batch) {
      const part = Uint32Array.from(ids.slice(at, at + batch));
      ann.gatherVectors(part, rows);
      for (let i = 0; i < part.length; i++) {
        let ss = 0;
        for (let j = i * dim, end = j + dim; j < end; j++) ss += rows[j] * rows[j];
        if (ss > this.normMax * this.normMax) this.normMax = Math.sqrt(ss);
      }
    }
  }

  /** Starts the once-a-second upkeep (flight windows opening and closing, UTC day rollover). */
  startUpkeep(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(Date.now()), 1000);
    this.timer.unref();
  }

  /** Applies time: flights that opened or closed, budgets reset at a new UTC day. */
  tick(nowMs: number): void {
    const day = epochDay(nowMs);
    if (day !== this.day) {
      this.day = day;
      this.recomputeServable(nowMs);
      return;
    }
    const due = this.flights.popUntil(nowMs);
    if (due.length > 0) this.updateServable(due, nowMs);
    this.maybeCheckpoint(nowMs);
    this.maybePruneJournal();
  }

  /** Drops journal entries every process has applied, keeping the last JOURNAL_KEEP (only the checkpointing process). */
  private maybePruneJournal(): void {
    if (!this.checkpoints || this.closed) return;
    const upTo = Math.min(this.journalFloor(), this.applied) - JOURNAL_KEEP;
    if (upTo <= this.journalPruned) return;
    const before = this.journalPruned;
    this.journalPruned = upTo;
    this.writes
      .run(() => (this.closed ? 0 : this.store.pruneJournal(upTo)))
      .catch((err: Error) => {
        this.journalPruned = before;
        this.log.warn({ err: err.message }, 'pruning the journal failed; retried at the next tick');
      });
  }

  /** Starts a background checkpoint when `checkpoint.changes` changes wait, or any have waited `checkpoint.interval_s`. */
  private maybeCheckpoint(nowMs: number): void {
    if (this.annChanges === 0 || this.checkpointing || this.closed || !this.checkpoints) return;
    const c = this.checkpointConfig;
    if (this.annChanges < c.changes && nowMs - this.unsavedSince < c.interval_s * 1000) return;
    this.checkpointing = this.checkpoint()
      .catch((err: Error) => {
        this.log.warn({ err: err.message }, 'background ann checkpoint failed; the change log is kept and replayed at the next start');
        return false;
      })
      .finally(() => {
        this.checkpointing = null;
      });
  }

  private trackFlight(ad: AdRecord, nowMs: number): void {
    if (ad.start_ms !== null && ad.start_ms > nowMs) this.flights.push(ad.start_ms, ad.id);
    if (ad.end_ms !== null && ad.end_ms > nowMs) this.flights.push(ad.end_ms, ad.id);
  }

  private recomputeServable(nowMs: number): void {
    const words = Math.ceil(Math.max(this.ads.capacity, this.targeting.capacity, 1) / 32);
    const bits = new Uint32Array(words);
    let count = 0;
    for (const id of this.ads.ids()) {
      if (this.ads.servable(id, nowMs)) {
        bits[id >>> 5] |= 1 << (id & 31);
        count++;
      }
    }
    this.servableBits = bits;
    this.servableCount = count;
  }

  // Copy-on-write: a targeting match on the thread pool may be reading the current array.
  private updateServable(ids: Iterable<number>, nowMs: number): void {
    const words = Math.ceil(Math.max(this.ads.capacity, this.targeting.capacity, 1) / 32);
    const bits = new Uint32Array(Math.max(words, this.servableBits.length));
    bits.set(this.servableBits);
    let count = this.servableCount;
    for (const id of ids) {
      const w = id >>> 5;
      const m = 1 << (id & 31);
      const was = (bits[w] & m) !== 0;
      const now = this.ads.servable(id, nowMs);
      if (now && !was) {
        bits[w] |= m;
        count++;
      } else if (!now && was) {
        bits[w] &= ~m;
        count--;
      }
    }
    this.servableBits = bits;
    this.servableCount = count;
  }

  /** The servable bitset (never modified in place: writers swap in a new array). */
  get servable(): { bits: Uint32Array; count: number } {
    return { bits: this.servableBits, count: this.servableCount };
  }

  /** The ANN index (replaced only when the first ads arrive in an empty directory). */
  get ann(): HnswIndex {
    return this.ann_;
  }

  get vectors(): VectorSource | null {
    const ann = this.ann_;
    if (ann.size === 0) return null;
    // Built once per index (stages read it on every request), not once per read.
    if (this.vectorsOf !== ann) {
      this.vectorsOf = ann;
      this.vectorsView = {
        dim: ann.dim,
        metric: ann.metric,
        get: (id: number) => (ann.has(id) ? ann.getVector(id) : undefined),
        gather: (ids: Uint32Array, out: Float32Array) => ann.gatherVectors(ids, out),
      };
      const self = this;
      // 1e-6 of headroom: the rows are float32, their lengths summed here in float64.
      Object.defineProperty(this.vectorsView, 'normBound', { get: () => (ann.metric === 'cos' ? 1 : self.normMax) * (1 + 1e-6), enumerable: true });
    }
    return this.vectorsView;
  }

  get popularityConfig(): PopularityConfig {
    return this.popularityConfig_;
  }
  /** Sequence number of the data served here: every write up to it is applied (no store read: every Retrieve asks). */
  get seq(): number {
    return this.applied;
  }
  /** Embedding dimension of the catalog (null before the first ad). */
  get dim(): number | null {
    return this.store.dim;
  }

  /** Applies a new config's state-wide parts (popularity decay and segments). */
  configure(config: Config): void {
    this.popularityConfig_ = config.popularity;
    this.popularity.configure(config.popularity);
    this.checkpointConfig = config.checkpoint;
  }

  /** Sizes for metrics. */
  sizes(): StateSizes {
    return {
      ads: this.ads.size,
      servable: this.servableCount,
      annVectors: this.ann.size,
      annBytes: this.ann.memoryBytes(),
      targetingBytes: this.targeting.memoryBytes(),
      targeting: this.targeting.size,
      popularitySegments: this.popularity.segmentCount,
      annUnsaved: this.annChanges,
    };
  }

  /**
   * Runs one Admin write under the write lock (`fn` commits to the store, applies the change
   * here and returns its sequence number), brings this process up to that sequence number
   * (writes of other processes in between), then waits for `onWrite`.
   */
  private async write<T extends { seq: number }>(fn: () => Promise<T> | T): Promise<T> {
    const result = await this.writes.run(async () => {
      const r = await fn();
      this.ownApplied.add(r.seq);
      await this.catchUpLocked();
      return r;
    });
    if (this.onWrite) await this.onWrite(result.seq);
    return result;
  }

  private ensureAnn(dim: number): void {
    if (this.ann_.dim !== dim && this.ann_.size === 0) {
      const { metric, M, efConstruction } = this.store.ann;
      this.ann_ = new NativeHnswIndex({ dim, metric, M, efConstruction, capacity: 1024 });
    }
  }

  /** Inserts or replaces ads (validated rows of the catalog's dimension). */
  upsertAds(rows: ReadonlyArray<CatalogRow>, stream?: number): Promise<{ seq: number; inserted: number; updated: number }> {
    return this.write(async () => {
      const result = await this.store.upsert(rows, stream);
      const now = Date.now();
      const ids = new Uint32Array(rows.length);
      const dim = this.store.dim!;
      this.ensureAnn(dim);
      const vectors = new Float32Array(rows.length * dim);
      const touched: number[] = [];
      rows.forEach((row, i) => {
        const rec = this.store.getAd(row.ad_id)!;
        this.ads.set(rec);
        this.heldSeq.set(rec.id, rec.seq);
        this.targeting.set(rec.id, rec.targeting ?? undefined);
        this.trackFlight(rec, now);
        ids[i] = rec.id;
        vectors.set(row.embedding, i * dim);
        touched.push(rec.id);
      });
      this.priorOrder.update(this.ads, touched);
      await this.ann.addBatchAsync(ids, vectors, 1);
      this.noteNorms(touched);
      this.updateServable(touched, now);
      this.annChanged(rows.length);
      return { seq: result.seq, inserted: result.inserted, updated: result.updated };
    });
  }

  /** Pauses or activates ads; unknown ids are reported, not an error. */
  setStatus(adIds: ReadonlyArray<string>, status: 'active' | 'paused', stream?: number): Promise<WriteOutcome> {
    return this.write(async () => {
      const r = await this.store.setStatus(adIds, status, stream);
      const touched: number[] = [];
      for (const rec of r.updated) {
        this.ads.setActive(rec.id, status === 'active');
        this.heldSeq.set(rec.id, rec.seq);
        touched.push(rec.id);
      }
      this.updateServable(touched, Date.now());
      return { seq: r.seq, count: r.updated.length, unknown: r.unknown };
    });
  }

  /** Deletes ads; unknown ids are reported, not an error. */
  deleteAds(adIds: ReadonlyArray<string>, stream?: number): Promise<WriteOutcome> {
    return this.write(async () => {
      const known: { adId: string; id: number }[] = [];
      const unknown: string[] = [];
      for (const adId of new Set(adIds)) {
        const id = this.ads.idOf(adId);
        if (id < 0) unknown.push(adId);
        else known.push({ adId, id });
      }
      const r = await this.store.remove(
        known.map((k) => k.adId),
        stream,
      );
      for (const { id } of known) this.removeLocal(id);
      this.popularity.remove(known.map((k) => k.id));
      this.priorOrder.remove(known.map((k) => k.id));
      this.updateServable(
        known.map((k) => k.id),
        Date.now(),
      );
      this.annChanged(known.length);
      return { seq: r.seq, count: r.removed, unknown };
    });
  }

  /** Drops `id` from the tables and indexes (popularity: the caller, once per batch). */
  private removeLocal(id: number): void {
    this.ads.remove(id);
    this.heldSeq.delete(id);
    if (this.targeting.has(id)) this.targeting.remove(id);
    if (this.ann.has(id)) this.ann.remove(id);
  }

  /** Records today's cumulative spend per ad; unknown ids are reported. */
  reportSpend(entries: ReadonlyArray<{ ad_id: string; spend_micros: number }>, options: { nowMs?: number; stream?: number } = {}): Promise<WriteOutcome> {
    return this.write(async () => {
      const now = options.nowMs ?? Date.now();
      const unknown = entries.filter((e) => this.ads.idOf(e.ad_id) < 0).map((e) => e.ad_id);
      const r = await this.store.reportSpend(
        entries.filter((e) => this.ads.idOf(e.ad_id) >= 0),
        now,
        options.stream,
      );
      const touched: number[] = [];
      for (const e of entries) {
        const id = this.ads.idOf(e.ad_id);
        if (id < 0) continue;
        this.ads.setSpend(id, e.spend_micros, now);
        touched.push(id);
      }
      this.updateServable(touched, now);
      return { seq: r.seq, count: r.applied, unknown };
    });
  }

  /** Records engagement events (counters and decayed popularity); unknown ids are reported. */
  recordEvents(
    events: ReadonlyArray<EngagementEvent & { attributes: Readonly<Record<string, readonly string[]>> }>,
    stream?: number,
  ): Promise<WriteOutcome> {
    return this.write(async () => {
      const { resolved, known, unknown } = this.popularity.resolve(events, (adId) => this.ads.idOf(adId));
      // Planned from the stored sums inside the transaction: another process may have added to them.
      let updates: PopularityUpdate[] = [];
      const r = await this.store.recordEvents(known, (stored) => (updates = this.popularity.plan(resolved, stored)), stream);
      this.popularity.apply(updates);
      return { seq: r.seq, count: r.applied, unknown };
    });
  }

  /**
   * A replica: applies the stream ingest staged in the store (every row in one transaction,
   * tagged with stream sequence number `stream`), then re-reads every ad from the store.
   */
  commitStreamIngest(options: { replace: boolean; ann?: Partial<AnnSettings> }, stream: number): Promise<{ seq: number; inserted: number; updated: number; removed: number }> {
    return this.writes.run(async () => {
      const r = this.store.commitStaging({ ...options, stream });
      await this.store.flushed();
      await this.catchUpLocked();
      return r;
    });
  }

  /** A replica: records a stream message consumed without a change (parked, or staged for an ingest). */
  markStream(run: () => Promise<void>): Promise<void> {
    return this.writes.run(run);
  }

  /** Applies every write committed to the store (by any process) that this one has not; resolves to the sequence number now applied. */
  catchUp(): Promise<number> {
    return this.writes.run(async () => {
      await this.catchUpLocked();
      return this.applied;
    });
  }

  /**
   * Resolves true once every write up to `seq` is applied here (catching up from the store, where
   * another process or replica may have written it), false if `untilMs` (epoch ms) passes first
   * or `signal` aborts. Polls the store every 5 ms meanwhile.
   */
  async waitForSeq(seq: number, untilMs: number, signal?: AbortSignal): Promise<boolean> {
    for (;;) {
      if (this.applied >= seq) return true;
      await this.catchUp();
      if (this.applied >= seq) return true;
      const left = untilMs - Date.now();
      if (left <= 0 || signal?.aborted || this.closed) return false;
      await new Promise((r) => setTimeout(r, Math.min(5, left)));
    }
  }

  /** Sequence number up to which every write is applied in this process. */
  get appliedSeq(): number {
    return this.applied;
  }

  private async catchUpLocked(): Promise<void> {
    if (this.closed) return;
    this.store.freshen();
    const target = this.store.seq;
    if (target <= this.applied) return;
    const entries = this.store.journalSince(this.applied);
    if (entries === null) {
      this.log.warn({ from: this.applied, to: target }, 'the journal does not cover the writes to catch up on; re-reading every ad');
      await this.refreshAds([...this.everyAdId(new Set())], true);
      this.applied = target;
      for (const s of this.ownApplied) if (s <= target) this.ownApplied.delete(s);
      return;
    }
    const ads = new Set<string>();
    let vectors = false;
    let all = false;
    let last = this.applied;
    for (const { seq, entry } of entries) {
      last = seq;
      if (this.ownApplied.delete(seq)) continue;
      if (entry.all) all = true;
      if (entry.vectors) vectors = true;
      for (const a of entry.ads) ads.add(a);
    }
    if (all) this.everyAdId(ads);
    if (ads.size > 0) await this.refreshAds([...ads], vectors);
    this.applied = last;
  }

  /** Adds to `into` every ad_id the store or this process holds (a write too big to list: re-read them all). */
  private everyAdId(into: Set<string>): Set<string> {
    for (const rec of this.store.ads()) into.add(rec.ad_id);
    for (const id of this.ads.ids()) into.add(this.ads.adId(id));
    return into;
  }

  /**
   * Makes these ads in memory what the store holds now (another process wrote them): removed
   * when gone, else record, targeting, flight, today's spend, popularity and (with `vectors`)
   * the embedding. Idempotent: re-reading an ad twice changes nothing.
   */
  private async refreshAds(adIds: readonly string[], vectors: boolean): Promise<void> {
    const now = Date.now();
    const today = utcDay(now);
    const recs = adIds.map((adId) => this.store.getAd(adId));
    const removed: number[] = [];
    // Removals first: a freed internal id may be reused by another ad of the same batch.
    adIds.forEach((adId, i) => {
      const local = this.ads.idOf(adId);
      const rec = recs[i];
      if (local >= 0 && (!rec || rec.id !== local)) {
        this.removeLocal(local);
        removed.push(local);
      }
    });
    if (removed.length > 0) this.popularity.remove(removed);
    const touched: number[] = [];
    const pop: { id: number; records: { segment: string; record: PopularityRecord }[] }[] = [];
    for (const rec of recs) {
      if (!rec) continue;
      // A spend or events write leaves the record as it is: setting it again would only move the
      // ad table's and targeting index's epochs (and drop every cached eligibility match).
      if (this.heldSeq.get(rec.id) !== rec.seq || this.ads.idOf(rec.ad_id) !== rec.id) {
        this.ads.set(rec);
        this.heldSeq.set(rec.id, rec.seq);
        this.targeting.set(rec.id, rec.targeting ?? undefined);
        this.trackFlight(rec, now);
      }
      const spend = this.store.spendOf(rec.ad_id);
      this.ads.setSpend(rec.id, spend && spend.day === today ? spend.micros : 0, now);
      pop.push({ id: rec.id, records: this.store.popularityOf(rec.ad_id) });
      touched.push(rec.id);
    }
    if (vectors && touched.length > 0) {
      const dim = this.store.dim!;
      this.ensureAnn(dim);
      const ids: number[] = [];
      const rows: Float32Array[] = [];
      for (const id of touched) {
        const v = this.store.getEmbedding(id);
        if (v && v.length === dim) {
          ids.push(id);
          rows.push(v);
        }
      }
      const flat = new Float32Array(ids.length * dim);
      rows.forEach((v, i) => flat.set(v, i * dim));
      if (ids.length > 0) await this.ann.addBatchAsync(Uint32Array.from(ids), flat, 1);
      this.noteNorms(ids);
    }
    this.popularity.replaceAds(pop);
    this.priorOrder.update(this.ads, [...removed, ...touched]);
    this.updateServable([...removed, ...touched], now);
    if (vectors) this.annChanged(removed.length + touched.length);
  }

  /** The stored ads of these ad_ids, in order; unknown ids are skipped. */
  getAds(adIds: ReadonlyArray<string>): { rec: AdRecord; embedding: Float32Array }[] {
    const out: { rec: AdRecord; embedding: Float32Array }[] = [];
    for (const adId of adIds) {
      const rec = this.store.getAd(adId);
      if (!rec) continue;
      out.push({ rec, embedding: this.store.getEmbedding(rec.id) ?? new Float32Array(0) });
    }
    return out;
  }

  private annChanged(n: number): void {
    // Only the checkpointing process counts: the others never save, so nothing waits on them.
    if (!this.checkpoints) return;
    if (this.annChanges === 0) this.unsavedSince = Date.now();
    this.annChanges += n;
    // Writes reach the threshold between ticks too: no need to wait for the next one.
    if (this.annChanges >= this.checkpointConfig.changes) this.maybeCheckpoint(Date.now());
  }

  /**
   * Saves the ANN index when Admin writes changed it, then drops the change log up to the saved
   * sequence, so the next start (even after kill -9) replays only what came after. The save runs
   * on the thread pool: Retrieves go on; Admin writes wait for it (they change the index).
   */
  async checkpoint(): Promise<boolean> {
    return this.writes.run(async () => {
      if (this.annChanges === 0 || !this.checkpoints) return false;
      // What this process has applied, not the store's number: another process's newer write
      // may not be in this index yet.
      const seq = this.applied;
      const changes = this.annChanges;
      const started = Date.now();
      await this.ann.saveAsync(annPath(this.store), { tag: seq });
      await this.store.pruneLog(seq);
      this.log.info({ seq, changes, seconds: (Date.now() - started) / 1000 }, 'ann index checkpointed');
      this.annChanges = 0;
      this.unsavedSince = 0;
      return true;
    });
  }

  /** Stops upkeep, checkpoints, closes the store. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    try {
      await this.checkpointing;
      await this.checkpoint();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'ann checkpoint failed at close; the next start replays the log');
    }
    await this.writes.run(() => this.store.close());
  }
}

export type { PopularityView };
