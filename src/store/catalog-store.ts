/**
 * The data directory: an LMDB environment holding every ad (metadata, targeting, embedding),
 * today's spend, engagement counters, a change log and a change sequence number; plus the ANN
 * index file (see ann-sync.ts) tagged with the sequence number it reflects.
 *
 * Layout of DIR:
 *   funnel-data.json   format marker {"format": "funnel-data", "version": N}
 *   catalog.mdb        LMDB environment (and catalog.mdb-lock)
 *   ann.fidx           HNSW index file, tagged with the sequence number it reflects
 *
 * Every write is one LMDB transaction and bumps the sequence number by one; the change log
 * records which internal ids each sequence number touched, so an ANN file saved at an older
 * sequence catches up instead of being trusted. Internal ids are dense 32-bit integers, reused
 * after deletion, so bitsets over them stay small.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import type { CatalogRow, Conjunction } from './catalog-schema';

/** Decayed engagement of one (ad, segment) in the log2 domain at half-life `hl` seconds (see serving/popularity.ts). */
export interface PopularityRecord {
  li: number;
  lc: number;
  hl: number;
}

const POP_SEP = '\u0001';

/** Current data-directory format version (and the newest this build opens). */
export const DATA_FORMAT_VERSION = 1;
/** Name of the format marker file. */
export const MARKER_FILE = 'funnel-data.json';
/** Name of the LMDB environment file. */
export const LMDB_FILE = 'catalog.mdb';
/** Name of the ANN index file. */
export const ANN_FILE = 'ann.fidx';

/** A data-directory problem (missing, foreign, corrupt, newer format, dimension clash). */
export class DataDirError extends Error {
  readonly code = 'ERR_DATA_DIR';
}

/** An ad as stored: the catalog row with times in epoch milliseconds and its internal id. */
export interface AdRecord {
  id: number;
  ad_id: string;
  advertiser_id: string;
  campaign_id: string;
  category: string;
  status: 'active' | 'paused';
  bid_micros: number;
  /** null = unlimited */
  daily_budget_micros: number | null;
  quality: number;
  ctr_prior: number;
  /** null = everyone */
  targeting: Conjunction[] | null;
  start_ms: number | null;
  end_ms: number | null;
  /** Sequence number of the last change to this ad. */
  seq: number;
}

/** ANN settings kept with the data (fixed at first ingest, changed only by a replace). */
export interface AnnSettings {
  metric: 'ip' | 'cos' | 'l2';
  M: number;
  efConstruction: number;
}

/** One logged change: internal id upserted (with an embedding) or removed. */
export interface Change {
  op: 'upsert' | 'remove';
  id: number;
}

/**
 * One journal entry: the ads a write touched, so that other processes serving the same data
 * directory (`funnel serve --workers N`) re-read exactly those from the store. `vectors`: their
 * embeddings may have changed too (upserts, deletes, ingests); `all`: too many to list (an
 * ingest), every ad is re-read.
 */
export interface JournalEntry {
  ads: string[];
  vectors: boolean;
  all?: boolean;
  /** The stream sequence number this write applied (a replica of a sharded cluster). */
  stream?: number;
}

/** A stream message a replica could not apply: kept, with why, for an operator to read. */
export interface ParkedMessage {
  reason: string;
  detail: string;
  subject: string;
  time_ms: number;
  data: string;
}

/** An ingest arriving through the stream in chunks (staged until its commit). */
export interface StreamStaging {
  ingest: string;
  rows: number;
  replace: boolean;
  ann?: Partial<AnnSettings>;
  next_chunk: number;
  next_row: number;
}

/** What one write transaction did. */
export interface WriteResult {
  seq: number;
  inserted: number;
  updated: number;
  removed: number;
}

/** Today's cumulative spend of an ad (ReportSpend): `day` is the UTC date it applies to. */
export interface SpendRecord {
  day: string;
  micros: number;
}

/** Engagement counters of an ad: totals and the time of the last event. */
export interface EngagementRecord {
  impressions: number;
  clicks: number;
  last_ms: number;
}

/** One engagement event (RecordEvents). */
export interface EngagementEvent {
  ad_id: string;
  type: 'IMPRESSION' | 'CLICK';
  timestamp_ms: number;
}

/** The UTC calendar date of `ms` as YYYY-MM-DD. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

interface Meta {
  format: string;
  version: number;
  seq: number;
  dim: number | null;
  next_id: number;
  free_ids: number[];
  ann: AnnSettings;
  /**
   * The change log holds every ANN change after this sequence number (writes that change no
   * vector leave no entry). Absent in directories written before it existed: their log is
   * contiguous, so its first key minus one plays the part.
   */
  log_floor?: number;
  /** A replica of a sharded cluster: the last stream sequence number applied (or parked). */
  stream_seq?: number;
  /** A replica: the stream ingest being staged, if any. */
  stream_staging?: StreamStaging | null;
}

const DEFAULT_ANN: AnnSettings = { metric: 'ip', M: 16, efConstruction: 200 };

function toRecord(row: CatalogRow, id: number, seq: number): AdRecord {
  return {
    id,
    ad_id: row.ad_id,
    advertiser_id: row.advertiser_id,
    campaign_id: row.campaign_id,
    category: row.category,
    status: row.status,
    bid_micros: row.bid_micros,
    daily_budget_micros: row.daily_budget_micros ?? null,
    quality: row.quality,
    ctr_prior: row.ctr_prior,
    targeting: row.targeting ?? null,
    start_ms: row.start_time ? Date.parse(row.start_time) : null,
    end_ms: row.end_time ? Date.parse(row.end_time) : null,
    seq,
  };
}

function embeddingBytes(values: ArrayLike<number>): Buffer {
  const f = Float32Array.from(values as ArrayLike<number>);
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
}

// LMDB's meta page carries MDB_MAGIC right after the page header (16 bytes in LMDB 0.9, 24 in
// the 1.0 format lmdb-js ships). LMDB itself trusts
// its file and can crash on garbage, so the header is checked before the file is opened.
const LMDB_MAGIC = 0xbeefc0de;
function lmdbHeaderProblem(file: string): string | null {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(4096 + 24);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    if (n < head.length) return `${path.basename(file)} is truncated (${n} bytes)`;
    if (head.readUInt32LE(16) !== LMDB_MAGIC && head.readUInt32LE(24) !== LMDB_MAGIC) return `${path.basename(file)} is not an LMDB file (bad magic)`;
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/** True when `dir` holds nothing (or does not exist). */
export function isDirectoryEmpty(dir: string): boolean {
  try {
    return fs.readdirSync(dir).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

/** Writes the format marker that makes `dir` a data directory (atomically: temp file, rename). */
export function writeDataMarker(dir: string): void {
  const markerPath = path.join(dir, MARKER_FILE);
  const tmp = `${markerPath}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ format: 'funnel-data', version: DATA_FORMAT_VERSION }) + '\n');
  fs.renameSync(tmp, markerPath);
}

/**
 * The catalog store of one data directory. Admin writes are LMDB transactions whose body runs on
 * the calling thread and whose commit (the fsync) runs on lmdb-js's write thread: each resolves
 * once durable, without holding the event loop meanwhile. Ingest's commit is synchronous.
 */
export class CatalogStore {
  private constructor(
    /** Absolute path of the data directory. */
    readonly dir: string,
    private readonly env: RootDatabase,
    private readonly meta: Database<Meta, string>,
    private readonly adsDb: Database<AdRecord, string>,
    private readonly idsDb: Database<string, number>,
    private readonly embDb: Database<Buffer, number>,
    private readonly logDb: Database<Change[], number>,
    private readonly stagingDb: Database<CatalogRow, number>,
    private readonly spendDb: Database<SpendRecord, string>,
    private readonly engagementDb: Database<EngagementRecord, string>,
    private readonly popularityDb: Database<PopularityRecord, string>,
    private readonly journalDb: Database<JournalEntry, number>,
    private readonly parkedDb: Database<ParkedMessage, number>,
  ) {}

  /**
   * Opens (or with `create`, creates) the data directory. Throws DataDirError naming the path
   * when it is missing, not a funnel data directory, corrupt, or of a newer format.
   */
  static open(dir: string, options: { create?: boolean } = {}): CatalogStore {
    const abs = path.resolve(dir);
    if (!fs.existsSync(abs)) {
      if (!options.create) throw new DataDirError(`data directory ${abs} does not exist (create it with funnel ingest)`);
      fs.mkdirSync(abs, { recursive: true });
    }
    if (!fs.statSync(abs).isDirectory()) throw new DataDirError(`data directory ${abs} is not a directory`);
    const markerPath = path.join(abs, MARKER_FILE);
    let fresh = false;
    if (!fs.existsSync(markerPath)) {
      if (!options.create || !isDirectoryEmpty(abs)) {
        throw new DataDirError(`${abs} is not a funnel data directory (no ${MARKER_FILE})`);
      }
      fresh = true;
    } else {
      let marker: { format?: unknown; version?: unknown };
      try {
        marker = JSON.parse(fs.readFileSync(markerPath, 'utf8'));
      } catch (err) {
        throw new DataDirError(`${markerPath} is corrupt: ${(err as Error).message}`);
      }
      if (marker?.format !== 'funnel-data') throw new DataDirError(`${abs} is not a funnel data directory (foreign ${MARKER_FILE})`);
      if (typeof marker.version !== 'number' || marker.version > DATA_FORMAT_VERSION) {
        throw new DataDirError(
          `${abs} has data format version ${String(marker.version)}, newer than this build reads (${DATA_FORMAT_VERSION})`,
        );
      }
      if (!fs.existsSync(path.join(abs, LMDB_FILE))) throw new DataDirError(`${abs} is corrupt: ${LMDB_FILE} is missing`);
      const problem = lmdbHeaderProblem(path.join(abs, LMDB_FILE));
      if (problem) throw new DataDirError(`${abs} is corrupt: ${problem}`);
    }
    let env: RootDatabase;
    try {
      env = open({ path: path.join(abs, LMDB_FILE), maxDbs: 16, compression: false, mapSize: 2 ** 34 });
    } catch (err) {
      throw new DataDirError(`${abs} is corrupt: cannot open ${LMDB_FILE}: ${(err as Error).message}`);
    }
    const store = new CatalogStore(
      abs,
      env,
      env.openDB<Meta, string>({ name: 'meta' }),
      env.openDB<AdRecord, string>({ name: 'ads' }),
      env.openDB<string, number>({ name: 'ids', keyEncoding: 'uint32' }),
      env.openDB<Buffer, number>({ name: 'emb', keyEncoding: 'uint32', encoding: 'binary' }),
      env.openDB<Change[], number>({ name: 'log', keyEncoding: 'uint32' }),
      env.openDB<CatalogRow, number>({ name: 'staging', keyEncoding: 'uint32' }),
      env.openDB<SpendRecord, string>({ name: 'spend' }),
      env.openDB<EngagementRecord, string>({ name: 'engagement' }),
      env.openDB<PopularityRecord, string>({ name: 'popularity' }),
      env.openDB<JournalEntry, number>({ name: 'journal', keyEncoding: 'uint32' }),
      env.openDB<ParkedMessage, number>({ name: 'parked', keyEncoding: 'uint32' }),
    );
    if (fresh) {
      env.transactionSync(() => {
        store.meta.putSync('meta', {
          format: 'funnel-data',
          version: DATA_FORMAT_VERSION,
          seq: 0,
          log_floor: 0,
          dim: null,
          next_id: 0,
          free_ids: [],
          ann: DEFAULT_ANN,
        });
      });
      writeDataMarker(abs);
    } else {
      const m = store.meta.get('meta');
      if (!m || m.format !== 'funnel-data') {
        env.close();
        throw new DataDirError(`${abs} is corrupt: ${LMDB_FILE} has no funnel metadata`);
      }
    }
    return store;
  }

  private m(): Meta {
    const m = this.meta.get('meta');
    if (!m) throw new DataDirError(`${this.dir} is corrupt: metadata vanished`);
    return m;
  }

  /** Change sequence number: bumped by every write transaction. */
  get seq(): number {
    return this.m().seq;
  }

  /** A replica: the last stream sequence number applied or parked here (0: none). */
  get streamSeq(): number {
    return this.m().stream_seq ?? 0;
  }

  /** A replica: the stream ingest being staged, if any. */
  get streamStaging(): StreamStaging | null {
    return this.m().stream_staging ?? null;
  }

  /**
   * A replica: records that stream message `stream` was consumed without a change (parked as
   * malformed, with `parked`, or a no-op), in one transaction; no sequence number is bumped.
   */
  markStream(stream: number, parked?: ParkedMessage): Promise<void> {
    return this.env.transaction(() => {
      const m = this.m();
      if (parked) this.parkedDb.putSync(stream, parked);
      m.stream_seq = stream;
      this.meta.putSync('meta', m);
    });
  }

  /** Parked stream messages, oldest first (stream sequence number, message). */
  *parked(): IterableIterator<{ stream: number; message: ParkedMessage }> {
    for (const { key, value } of this.parkedDb.getRange()) yield { stream: key as number, message: value };
  }

  /** A replica: starts staging a stream ingest (dropping any unfinished one), in one transaction with `stream`. */
  beginStreamIngest(staging: Omit<StreamStaging, 'next_chunk' | 'next_row'>, stream: number): Promise<void> {
    return this.env.transaction(() => {
      const m = this.m();
      this.stagingDb.clearSync();
      m.stream_staging = { ...staging, next_chunk: 0, next_row: 0 };
      m.stream_seq = stream;
      this.meta.putSync('meta', m);
    });
  }

  /**
   * A replica: stages chunk `chunk` of stream ingest `ingest`, in one transaction with `stream`.
   * Throws DataDirError (nothing written) when it is not the chunk expected next.
   */
  stageStreamChunk(ingest: string, chunk: number, rows: ReadonlyArray<CatalogRow>, stream: number): Promise<void> {
    return this.env.transaction(() => {
      const m = this.m();
      const st = m.stream_staging;
      if (!st || st.ingest !== ingest) throw new DataDirError(`chunk ${chunk} of ingest ${ingest}, which was not begun (staging: ${st ? st.ingest : 'none'})`);
      if (chunk !== st.next_chunk) throw new DataDirError(`chunk ${chunk} of ingest ${ingest} arrived where chunk ${st.next_chunk} was expected`);
      for (const row of rows) this.stagingDb.putSync(st.next_row++, row);
      st.next_chunk++;
      m.stream_seq = stream;
      this.meta.putSync('meta', m);
    });
  }
  /** Embedding dimension, or null before the first ad. */
  get dim(): number | null {
    return this.m().dim;
  }
  /** One more than the largest internal id ever allocated. */
  get idLimit(): number {
    return this.m().next_id;
  }
  /** ANN settings of this data. */
  get ann(): AnnSettings {
    return this.m().ann;
  }
  /** Number of ads. */
  get count(): number {
    return this.adsDb.getCount();
  }

  /** The ad with this ad_id. */
  getAd(adId: string): AdRecord | undefined {
    return this.adsDb.get(adId);
  }
  /** The ad with this internal id. */
  getAdById(id: number): AdRecord | undefined {
    const adId = this.idsDb.get(id);
    return adId === undefined ? undefined : this.adsDb.get(adId);
  }
  /** The embedding of internal id `id`. */
  getEmbedding(id: number): Float32Array | undefined {
    const b = this.embDb.getBinary(id);
    if (!b) return undefined;
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  }
  /** Every ad, in ad_id order. */
  *ads(): IterableIterator<AdRecord> {
    for (const { value } of this.adsDb.getRange()) yield value;
  }
  /** Every embedding, in internal id order. */
  *embeddings(): IterableIterator<{ id: number; vector: Float32Array }> {
    for (const { key, value } of this.embDb.getRange()) {
      yield { id: key, vector: new Float32Array(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength)) };
    }
  }

  /** Changes after `seq` in order, or null when the log no longer covers them (pruned). */
  changesSince(seq: number): Change[] | null {
    const m = this.m();
    if (seq >= m.seq) return [];
    if (seq < this.logFloor(m)) return null;
    const out: Change[] = [];
    for (const { value } of this.logDb.getRange({ start: seq + 1 })) out.push(...value);
    return out;
  }

  private logFloor(m: Meta): number {
    if (m.log_floor !== undefined) return m.log_floor;
    for (const key of this.logDb.getKeys({ limit: 1 })) return (key as number) - 1;
    return m.seq;
  }

  /** Drops log entries up to and including `seq` (once an ANN file reflecting them is saved). */
  async pruneLog(seq: number): Promise<void> {
    const keys: number[] = [];
    for (const key of this.logDb.getKeys({ end: seq + 1 })) keys.push(key as number);
    await this.env.transaction(() => {
      const m = this.m();
      m.log_floor = Math.max(this.logFloor(m), Math.min(seq, m.seq));
      for (const k of keys) this.logDb.removeSync(k);
      this.meta.putSync('meta', m);
    });
  }

  /**
   * Journal entries after `seq` up to the current sequence number, in order; null when some are
   * missing (pruned, or written by a build without the journal): the caller re-reads everything.
   */
  journalSince(seq: number): { seq: number; entry: JournalEntry }[] | null {
    const current = this.seq;
    const out: { seq: number; entry: JournalEntry }[] = [];
    let expect = seq + 1;
    for (const { key, value } of this.journalDb.getRange({ start: seq + 1, end: current + 1 })) {
      if (key !== expect) return null;
      out.push({ seq: key, entry: value });
      expect++;
    }
    return expect === current + 1 ? out : null;
  }

  /** Drops journal entries up to and including `seq` (once every serving process applied them). */
  async pruneJournal(seq: number): Promise<number> {
    const keys: number[] = [];
    for (const key of this.journalDb.getKeys({ end: seq + 1 })) keys.push(key as number);
    if (keys.length === 0) return 0;
    await this.env.transaction(() => {
      for (const k of keys) this.journalDb.removeSync(k);
    });
    return keys.length;
  }

  /**
   * Drops this process's read snapshot, so the next read sees every commit so far, another
   * process's included (lmdb-js otherwise keeps a snapshot until its next macrotask).
   */
  freshen(): void {
    this.env.resetReadTxn();
  }

  /** Today's spend of an ad as stored (day and micros), if any. */
  spendOf(adId: string): SpendRecord | undefined {
    return this.spendDb.get(adId);
  }

  /** The stored popularity records of one ad, by segment. */
  popularityOf(adId: string): { segment: string; record: PopularityRecord }[] {
    const out: { segment: string; record: PopularityRecord }[] = [];
    for (const { key, value } of this.popularityDb.getRange({ start: adId + POP_SEP, end: adId + '\u0002' })) {
      out.push({ segment: (key as string).slice(adId.length + 1), record: value });
    }
    return out;
  }

  /** Bumps the sequence number and writes the log (only when vectors changed) and the journal; inside a write transaction. */
  private logWrite(m: Meta, changes: Change[], entry: JournalEntry, stream?: number): void {
    if (stream !== undefined) {
      m.stream_seq = stream;
      entry.stream = stream;
    }
    // First write of this build on an older directory: pin the floor before the log gains gaps.
    if (m.log_floor === undefined) {
      let first: number | undefined;
      for (const key of this.logDb.getKeys({ limit: 1 })) first = key as number;
      m.log_floor = first !== undefined ? first - 1 : m.seq - 1;
    }
    if (changes.length > 0) this.logDb.putSync(m.seq, changes);
    this.journalDb.putSync(m.seq, entry);
    this.meta.putSync('meta', m);
  }

  /** Resolves once every committed write is on disk. */
  async flushed(): Promise<void> {
    await this.env.flushed;
  }

  private allocate(m: Meta): number {
    return m.free_ids.length > 0 ? m.free_ids.pop()! : m.next_id++;
  }

  private putRow(m: Meta, row: CatalogRow, changes: Change[], result: WriteResult): void {
    const old = this.adsDb.get(row.ad_id);
    const id = old ? old.id : this.allocate(m);
    this.adsDb.putSync(row.ad_id, toRecord(row, id, m.seq));
    if (!old) this.idsDb.putSync(id, row.ad_id);
    this.embDb.putSync(id, embeddingBytes(row.embedding));
    changes.push({ op: 'upsert', id });
    if (old) result.updated++;
    else result.inserted++;
  }

  private removeAd(m: Meta, rec: AdRecord, changes: Change[], result: WriteResult): void {
    this.adsDb.removeSync(rec.ad_id);
    this.idsDb.removeSync(rec.id);
    this.embDb.removeSync(rec.id);
    this.spendDb.removeSync(rec.ad_id);
    this.engagementDb.removeSync(rec.ad_id);
    for (const key of this.popularityDb.getKeys({ start: rec.ad_id + POP_SEP, end: rec.ad_id + '\u0002' })) {
      this.popularityDb.removeSync(key as string);
    }
    m.free_ids.push(rec.id);
    changes.push({ op: 'remove', id: rec.id });
    result.removed++;
  }

  private checkDim(m: Meta, rows: ReadonlyArray<CatalogRow>): void {
    for (const row of rows) {
      if (m.dim === null) m.dim = row.embedding.length;
      if (row.embedding.length !== m.dim) {
        throw new DataDirError(`ad ${row.ad_id}: embedding has ${row.embedding.length} values, the catalog's dimension is ${m.dim}`);
      }
    }
  }

  /** Inserts or replaces ads (by ad_id) in one transaction. Throws DataDirError on a dimension clash, writing nothing. */
  upsert(rows: ReadonlyArray<CatalogRow>, stream?: number): Promise<WriteResult> {
    return this.env.transaction(() => {
      const m = this.m();
      this.checkDim(m, rows);
      m.seq++;
      const result: WriteResult = { seq: m.seq, inserted: 0, updated: 0, removed: 0 };
      const changes: Change[] = [];
      for (const row of rows) this.putRow(m, row, changes, result);
      this.logWrite(m, changes, { ads: rows.map((r) => r.ad_id), vectors: true }, stream);
      return result;
    });
  }

  /** Deletes ads by ad_id in one transaction; unknown ids are skipped. */
  remove(adIds: ReadonlyArray<string>, stream?: number): Promise<WriteResult> {
    return this.env.transaction(() => {
      const m = this.m();
      m.seq++;
      const result: WriteResult = { seq: m.seq, inserted: 0, updated: 0, removed: 0 };
      const changes: Change[] = [];
      const removed: string[] = [];
      for (const adId of adIds) {
        const rec = this.adsDb.get(adId);
        if (rec) {
          this.removeAd(m, rec, changes, result);
          removed.push(adId);
        }
      }
      this.logWrite(m, changes, { ads: removed, vectors: true }, stream);
      return result;
    });
  }

  /**
   * Records today's cumulative spend per ad in one transaction (a later report for the same
   * day replaces the earlier one; a new day starts over), bumping the sequence number. Unknown
   * ad_ids are skipped and counted.
   */
  reportSpend(entries: ReadonlyArray<{ ad_id: string; spend_micros: number }>, nowMs = Date.now(), stream?: number): Promise<{ seq: number; applied: number; unknown: number }> {
    const day = utcDay(nowMs);
    return this.env.transaction(() => {
      const m = this.m();
      m.seq++;
      let applied = 0;
      let unknown = 0;
      const touched: string[] = [];
      for (const e of entries) {
        if (!this.adsDb.doesExist(e.ad_id)) {
          unknown++;
          continue;
        }
        this.spendDb.putSync(e.ad_id, { day, micros: e.spend_micros });
        touched.push(e.ad_id);
        applied++;
      }
      this.logWrite(m, [], { ads: touched, vectors: false }, stream);
      return { seq: m.seq, applied, unknown };
    });
  }

  /** Every spend record: (ad_id, UTC day, cumulative micros that day). */
  *spends(): IterableIterator<{ adId: string } & SpendRecord> {
    for (const { key, value } of this.spendDb.getRange()) yield { adId: key as string, ...value };
  }

  /** Today's spend of an ad in micros (0 when nothing was reported today). */
  spendToday(adId: string, nowMs = Date.now()): number {
    const r = this.spendDb.get(adId);
    return r && r.day === utcDay(nowMs) ? r.micros : 0;
  }

  /**
   * Sets the status of ads in one transaction (bumping the sequence number); unknown ad_ids
   * are returned, not an error.
   */
  setStatus(adIds: ReadonlyArray<string>, status: 'active' | 'paused', stream?: number): Promise<{ seq: number; updated: AdRecord[]; unknown: string[] }> {
    return this.env.transaction(() => {
      const m = this.m();
      m.seq++;
      const updated: AdRecord[] = [];
      const unknown: string[] = [];
      for (const adId of adIds) {
        const rec = this.adsDb.get(adId);
        if (!rec) {
          unknown.push(adId);
          continue;
        }
        const next = { ...rec, status, seq: m.seq };
        this.adsDb.putSync(adId, next);
        updated.push(next);
      }
      this.logWrite(m, [], { ads: updated.map((r) => r.ad_id), vectors: false }, stream);
      return { seq: m.seq, updated, unknown };
    });
  }

  /** Every persisted popularity record: (ad_id, segment, record). */
  *popularity(): IterableIterator<{ adId: string; segment: string; record: PopularityRecord }> {
    for (const { key, value } of this.popularityDb.getRange()) {
      const k = key as string;
      const cut = k.indexOf(POP_SEP);
      yield { adId: k.slice(0, cut), segment: k.slice(cut + 1), record: value };
    }
  }

  /**
   * Adds engagement events to the per-ad counters and writes popularity records, in one
   * transaction bumping the sequence number; unknown ad_ids are skipped and counted.
   * `popularity` is either the records to write or a planner that computes them from the
   * stored ones (read inside this transaction, so processes sharing the store lose no events).
   */
  recordEvents(
    events: ReadonlyArray<EngagementEvent>,
    popularity:
      | ReadonlyArray<{ adId: string; segment: string; record: PopularityRecord }>
      | ((stored: (adId: string, segment: string) => PopularityRecord | undefined) => ReadonlyArray<{ adId: string; segment: string; record: PopularityRecord }>) = [],
    stream?: number,
  ): Promise<{ seq: number; applied: number; unknown: number; popularity: ReadonlyArray<{ adId: string; segment: string; record: PopularityRecord }> }> {
    return this.env.transaction(() => {
      const m = this.m();
      m.seq++;
      const records = typeof popularity === 'function' ? popularity((adId, segment) => this.popularityDb.get(adId + POP_SEP + segment)) : popularity;
      for (const p of records) {
        if (this.adsDb.doesExist(p.adId)) this.popularityDb.putSync(p.adId + POP_SEP + p.segment, p.record);
      }
      let applied = 0;
      let unknown = 0;
      const touched = new Set<string>();
      for (const e of events) {
        if (!this.adsDb.doesExist(e.ad_id)) {
          unknown++;
          continue;
        }
        const c = this.engagementDb.get(e.ad_id) ?? { impressions: 0, clicks: 0, last_ms: 0 };
        if (e.type === 'CLICK') c.clicks++;
        else c.impressions++;
        c.last_ms = Math.max(c.last_ms, e.timestamp_ms);
        this.engagementDb.putSync(e.ad_id, c);
        touched.add(e.ad_id);
        applied++;
      }
      this.logWrite(m, [], { ads: [...touched], vectors: false }, stream);
      return { seq: m.seq, applied, unknown, popularity: records };
    });
  }

  /** Engagement counters of an ad (zeros when none). */
  engagement(adId: string): EngagementRecord {
    return this.engagementDb.get(adId) ?? { impressions: 0, clicks: 0, last_ms: 0 };
  }

  /** Empties the staging area (a leftover of an interrupted ingest is discarded). */
  async clearStaging(): Promise<void> {
    await this.stagingDb.clearAsync();
  }

  /** Stages a validated row for a later commitStaging(); invisible to readers until then. */
  stage(key: number, row: CatalogRow): Promise<boolean> {
    return this.stagingDb.put(key, row);
  }

  /**
   * Applies every staged row in ONE transaction (all or nothing) and empties the staging area.
   * With `replace`, ads not staged are deleted, so the store holds exactly the staged rows.
   * `ann` (first ingest or replace only) sets the ANN settings.
   */
  commitStaging(options: { replace: boolean; ann?: Partial<AnnSettings>; stream?: number }): WriteResult {
    return this.env.transactionSync(() => {
      const m = this.m();
      const wasEmpty = this.adsDb.getCount() === 0;
      m.seq++;
      const result: WriteResult = { seq: m.seq, inserted: 0, updated: 0, removed: 0 };
      const changes: Change[] = [];
      const staged = new Set<string>();
      let first = true;
      for (const { value: row } of this.stagingDb.getRange()) {
        if (first && (options.replace || m.dim === null)) m.dim = row.embedding.length;
        first = false;
        if (row.embedding.length !== m.dim) {
          throw new DataDirError(`ad ${row.ad_id}: embedding has ${row.embedding.length} values, the catalog's dimension is ${m.dim}`);
        }
        staged.add(row.ad_id);
        this.putRow(m, row, changes, result);
      }
      if (options.replace) {
        for (const { value: rec } of this.adsDb.getRange()) {
          if (!staged.has(rec.ad_id)) this.removeAd(m, rec, changes, result);
        }
      }
      if (options.ann && (options.replace || wasEmpty)) {
        m.ann = { ...m.ann, ...options.ann };
      }
      m.stream_staging = null;
      this.logWrite(m, changes, { ads: [], vectors: true, all: true }, options.stream);
      this.stagingDb.clearSync();
      return result;
    });
  }

  /**
   * Writes a consistent copy of the LMDB file to `dest` (one read transaction, off the event
   * loop; writers go on meanwhile). The copy is not compacted: its size is the file's.
   */
  backup(dest: string): Promise<void> {
    return this.env.backup(dest, false);
  }

  /** Bytes of the LMDB file on disk. */
  lmdbBytes(): number {
    return fs.statSync(path.join(this.dir, LMDB_FILE)).size;
  }

  /** Closes the environment. */
  async close(): Promise<void> {
    await this.env.close();
  }
}
