/**
 * The feature log (`funnel serve --feature-log DIR`): for a sampled share of Retrieves, the
 * features the EarlyRanker scored each candidate with, one JSON line per (request, ad), for
 * training a ranking model once joined with engagement events (`funnel examples`). Every kept
 * candidate of a sampled request is logged, and a sampled share of those it cut.
 *
 * The request thread only packs a request's rows (FeatureBatch: its numbers in one
 * Float64Array) and posts them to a worker thread (src/telemetry/feature-log-worker.ts), the
 * buffer transferred, not copied. The worker formats the JSON lines (the costly part: about 3 us
 * a row, nearly all of it turning doubles into text) and writes them with the request log's
 * machinery (RotatingLog: rotated files, bounded queue, writes on the libuv pool). The main
 * thread bounds what it has handed over and not yet seen written or dropped: a request that
 * does not fit is dropped whole (a request's kept rows are never half logged) and counted.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { Worker } from 'node:worker_threads';
import { RateLimitedWarner, type LogWarner } from './rotating-log';

/** The features of a row, by the names of the linear model's weights (CONTRACT section 2), in this order. */
export const FEATURE_NAMES = ['ann_similarity', 'ctr_prior_logit', 'popularity_rate', 'quality', 'source_ann', 'source_targeting', 'source_popularity'] as const;
export type FeatureName = (typeof FEATURE_NAMES)[number];

/** One line of the feature log: a candidate the EarlyRanker scored in one Retrieve. */
export interface FeatureLogRow {
  /** Request time the features were computed at, epoch ms. */
  time_ms: number;
  /** The Retrieve's request_id (the server's own when the request sent none; the response carries it). */
  request_id: string;
  ad_id: string;
  /** `<config version>/<model kind>`: which model scored it (`2026-11-23.1/linear`). */
  model_version: string;
  /** The pipeline that served the request (its weights are the model's). */
  pipeline: string;
  /** 1-based rank in the EarlyRanker's kept list; 0 for a candidate it cut. */
  position: number;
  kept: boolean;
  /** The EarlyRanker's score: eCPM, currency units per thousand impressions. */
  score: number;
  features: Record<FeatureName, number>;
}

/** Numbers per row in FeatureBatch.values: position, score, then FEATURE_NAMES in order. */
export const BATCH_STRIDE = 2 + FEATURE_NAMES.length;

/** The rows of one request, packed: what the request thread hands to the log. */
export interface FeatureBatch {
  timeMs: number;
  requestId: string;
  modelVersion: string;
  pipeline: string;
  /** One per row. */
  adIds: string[];
  /** adIds.length x BATCH_STRIDE numbers, row-major (kept = position > 0). */
  values: Float64Array;
}

/** Packs rows of one request (they share time, request, model version and pipeline) into a batch. */
export function packRows(rows: readonly FeatureLogRow[]): FeatureBatch {
  const first = rows[0];
  const values = new Float64Array(rows.length * BATCH_STRIDE);
  rows.forEach((r, i) => {
    const o = i * BATCH_STRIDE;
    values[o] = r.position;
    values[o + 1] = r.score;
    for (let j = 0; j < FEATURE_NAMES.length; j++) values[o + 2 + j] = r.features[FEATURE_NAMES[j]];
  });
  return {
    timeMs: first?.time_ms ?? 0,
    requestId: first?.request_id ?? '',
    modelVersion: first?.model_version ?? '',
    pipeline: first?.pipeline ?? '',
    adIds: rows.map((r) => r.ad_id),
    values,
  };
}

/** A number as JSON.stringify writes it (null when not finite). */
function num(x: number): string {
  return Number.isFinite(x) ? String(x) : 'null';
}

/** The JSON lines of a batch, each ending in a newline: exactly JSON.stringify of each FeatureLogRow, keys in its order. */
export function formatBatch(b: FeatureBatch): string {
  const head = `{"time_ms":${num(b.timeMs)},"request_id":${JSON.stringify(b.requestId)},"ad_id":`;
  const mid = `,"model_version":${JSON.stringify(b.modelVersion)},"pipeline":${JSON.stringify(b.pipeline)},"position":`;
  const v = b.values;
  let text = '';
  for (let i = 0; i < b.adIds.length; i++) {
    const o = i * BATCH_STRIDE;
    const position = v[o];
    text +=
      `${head}${JSON.stringify(b.adIds[i])}${mid}${num(position)},"kept":${position > 0},"score":${num(v[o + 1])},` +
      `"features":{"ann_similarity":${num(v[o + 2])},"ctr_prior_logit":${num(v[o + 3])},"popularity_rate":${num(v[o + 4])},"quality":${num(v[o + 5])},` +
      `"source_ann":${num(v[o + 6])},"source_targeting":${num(v[o + 7])},"source_popularity":${num(v[o + 8])}}}\n`;
  }
  return text;
}

/** Options of a feature log. */
export interface FeatureLogOptions {
  /** Directory of the log files; created if missing. */
  dir: string;
  /** A file is rotated before a write would take it past this size, bytes (default 64 MiB). */
  maxFileBytes?: number;
  /** Log files kept in the directory; the oldest beyond it are deleted (default 20). */
  maxFiles?: number;
  /** Bytes of rows handed to the writer and not yet written past which a request's rows are dropped (default 8 MiB; a row counts as ROW_BYTES_ESTIMATE). */
  maxQueueBytes?: number;
  logger?: LogWarner;
  /** Called with rows written or dropped (metrics). */
  onCount?(result: 'written' | 'dropped', n: number): void;
}

/** Counters of a feature log (rows: one line each). */
export interface FeatureLogStats {
  /** Rows on disk. */
  written: number;
  /** Rows lost: queue full, write failed, capture failed, writer thread failed, or recorded after close(). */
  dropped: number;
  /** Files this log has created. */
  files: number;
  /** Rows handed to the writer and not yet written or dropped. */
  pendingRows: number;
}

const MIB = 1024 * 1024;
/** What a row is taken to weigh in the queue (a typical row is 330-380 bytes). */
export const ROW_BYTES_ESTIMATE = 400;
const WORKER_FILE = path.join(__dirname, 'feature-log-worker.js');

/** What the writer thread is started with. */
export interface FeatureWorkerInit {
  dir: string;
  maxFileBytes?: number;
  maxFiles?: number;
  maxQueueBytes: number;
}

/** Messages to the writer thread. */
export type ToFeatureWorker = { type: 'batch'; batch: FeatureBatch } | { type: 'flush' | 'close'; id: number };

/** Messages from the writer thread. */
export type FromFeatureWorker =
  | { type: 'count'; result: 'written' | 'dropped'; n: number; files: number }
  | { type: 'warn'; obj: object; msg: string }
  | { type: 'done'; id: number };

/** A log of the EarlyRanker's features as JSON Lines, formatted and written on a worker thread. */
export class FeatureLog {
  readonly dir: string;
  private readonly maxQueueBytes: number;
  private readonly onCount: FeatureLogOptions['onCount'];
  private readonly worker: Worker;
  private workerError: Error | null = null;
  /** Rows posted to the worker, not yet reported written or dropped. */
  private inWorker = 0;
  private readonly counts = { written: 0, dropped: 0, files: 0 };
  private nextId = 1;
  private readonly pending = new Map<number, () => void>();
  private closing: Promise<void> | null = null;
  private readonly warner: RateLimitedWarner;

  constructor(options: FeatureLogOptions) {
    this.dir = options.dir;
    this.maxQueueBytes = options.maxQueueBytes ?? 8 * MIB;
    this.warner = new RateLimitedWarner(options.logger);
    this.onCount = options.onCount;
    // Here, so that a directory that cannot be made fails the server's start.
    fs.mkdirSync(this.dir, { recursive: true });
    const init: FeatureWorkerInit = { dir: this.dir, maxFileBytes: options.maxFileBytes, maxFiles: options.maxFiles, maxQueueBytes: this.maxQueueBytes };
    const worker = new Worker(WORKER_FILE, { workerData: init });
    // It keeps the process alive only while a flush or close waits for it.
    worker.unref();
    worker.on('message', (m: FromFeatureWorker) => this.onMessage(m));
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => {
      if (!this.closing || this.inWorker > 0 || this.pending.size > 0) this.fail(new Error(`feature log writer thread exited with code ${code}`));
    });
    this.worker = worker;
  }

  /** Hands the rows of one request to the writer, all or none; never throws, never waits. */
  record(batch: FeatureBatch): void {
    const n = batch.adIds.length;
    if (n === 0) return;
    if (this.closing || this.workerError) {
      this.count('dropped', n);
      return;
    }
    if ((this.inWorker + n) * ROW_BYTES_ESTIMATE > this.maxQueueBytes) {
      this.count('dropped', n);
      this.warn('queue', { dir: this.dir, max_queue_bytes: this.maxQueueBytes, dropped: this.counts.dropped }, 'feature log: the disk is not keeping up; rows dropped');
      return;
    }
    try {
      this.worker.postMessage({ type: 'batch', batch } satisfies ToFeatureWorker, [batch.values.buffer as ArrayBuffer]);
      this.inWorker += n;
    } catch (err) {
      this.lost(n, err);
    }
  }

  /** Counts `n` rows that could not be built or handed over and warns; never throws. */
  lost(n: number, err: unknown): void {
    this.count('dropped', n);
    this.warn('capture', { dir: this.dir, err: (err as Error)?.message ?? String(err) }, 'feature log: the features of a request could not be captured; rows dropped');
  }

  /** Counters so far. */
  stats(): FeatureLogStats {
    return { ...this.counts, pendingRows: this.inWorker };
  }

  /** Resolves once every row recorded so far is written or dropped. Never rejects. */
  flush(): Promise<void> {
    return this.request('flush');
  }

  /** Writes what was recorded, closes the file and stops the writer thread; rows recorded afterwards are dropped. Never rejects. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.request('close');
      await this.worker.terminate().catch(() => undefined);
    })();
    return this.closing;
  }

  private onMessage(m: FromFeatureWorker): void {
    if (m.type === 'count') {
      this.inWorker -= m.n;
      this.counts.files = m.files;
      this.count(m.result, m.n);
    } else if (m.type === 'warn') {
      this.warn(m.msg, m.obj, m.msg);
    } else {
      const done = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (this.pending.size === 0) this.worker.unref();
      done?.();
    }
  }

  private request(type: 'flush' | 'close'): Promise<void> {
    if (this.workerError) return Promise.resolve();
    const id = this.nextId++;
    return new Promise<void>((resolve) => {
      this.pending.set(id, resolve);
      this.worker.ref();
      try {
        this.worker.postMessage({ type, id } satisfies ToFeatureWorker);
      } catch (err) {
        this.fail(err as Error);
      }
    });
  }

  /** The writer thread is gone: what it held is lost, waiters are released, later rows are dropped. */
  private fail(err: Error): void {
    if (this.workerError) return;
    this.workerError = err;
    if (this.inWorker > 0) {
      const n = this.inWorker;
      this.inWorker = 0;
      this.count('dropped', n);
    }
    this.warn('worker', { dir: this.dir, err: err.message }, 'feature log: the writer thread failed; rows are dropped from now on');
    const waiting = [...this.pending.values()];
    this.pending.clear();
    this.worker.unref();
    for (const done of waiting) done();
  }

  private count(result: 'written' | 'dropped', n: number): void {
    if (n <= 0) return;
    this.counts[result] += n;
    try {
      this.onCount?.(result, n);
    } catch {
      /* a metrics callback must not break the log */
    }
  }

  private warn(kind: string, obj: object, msg: string): void {
    this.warner.warn(kind, obj, msg);
  }
}

/** One line of a feature log as readFeatureLog yields it: the row, or why it cannot be read. */
export interface FeatureLogLine {
  /** Path of the file. */
  file: string;
  /** 1-based line number in the file. */
  line: number;
  row?: FeatureLogRow;
  error?: string;
  /** Set when `error` is the file failing to read (an I/O problem, not a bad line). */
  io?: boolean;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** One parsed feature-log line (a JSON value) checked: the row (its known fields, and any extra numeric features), or why it cannot be read. */
export function readFeatureLogRow(obj: unknown): { row?: FeatureLogRow; error?: string } {
  if (!isObject(obj)) return { error: 'a line must be a JSON object' };
  for (const k of ['request_id', 'ad_id'] as const) {
    const v = obj[k];
    if (typeof v !== 'string' || v === '') return { error: `${k}: must be a non-empty string` };
  }
  const modelVersion = obj.model_version ?? '';
  const pipeline = obj.pipeline ?? '';
  if (typeof modelVersion !== 'string') return { error: 'model_version: must be a string' };
  if (typeof pipeline !== 'string') return { error: 'pipeline: must be a string' };
  const time = obj.time_ms;
  if (typeof time !== 'number' || !Number.isSafeInteger(time) || time < 0) return { error: 'time_ms: must be epoch milliseconds (an integer >= 0)' };
  const position = obj.position;
  if (typeof position !== 'number' || !Number.isSafeInteger(position) || position < 0) return { error: 'position: must be an integer >= 0' };
  if (typeof obj.kept !== 'boolean') return { error: 'kept: must be true or false' };
  if ((position > 0) !== obj.kept) return { error: `position: ${position} with kept ${obj.kept} (a kept row has a position >= 1, a cut one 0)` };
  if (typeof obj.score !== 'number' || !Number.isFinite(obj.score)) return { error: 'score: must be a finite number' };
  const f = obj.features;
  if (!isObject(f)) return { error: 'features: must be an object' };
  const features = {} as Record<FeatureName, number>;
  for (const name of FEATURE_NAMES) {
    const v = f[name];
    if (typeof v !== 'number' || !Number.isFinite(v)) return { error: `features.${name}: must be a finite number` };
    features[name] = v;
  }
  // Features beyond the linear model's (a model's own, documented with it) pass through when numeric.
  for (const [name, v] of Object.entries(f)) {
    if (!(name in features) && typeof v === 'number' && Number.isFinite(v)) (features as Record<string, number>)[name] = v;
  }
  return {
    row: {
      time_ms: time,
      request_id: obj.request_id as string,
      ad_id: obj.ad_id as string,
      model_version: modelVersion,
      pipeline,
      position,
      kept: obj.kept,
      score: obj.score,
      features,
    },
  };
}

/** A file to read, and how many of its bytes (what it held when listed; undefined = all). */
export interface FileRange {
  file: string;
  size?: number;
}

/**
 * The files a feature log `from` names, each with its size now: the file itself, or a directory's
 * `features-*.jsonl` in name order (time order). Reading only those bytes later gives the same
 * rows however many times it is read, even while a server appends to the log.
 */
export async function featureLogFiles(from: string): Promise<FileRange[]> {
  const st = await fs.promises.stat(from);
  if (!st.isDirectory()) return [{ file: from, size: st.size }];
  const names = (await fs.promises.readdir(from)).filter((n) => /^features-.*\.jsonl$/.test(n)).sort();
  const out: FileRange[] = [];
  for (const n of names) {
    const file = path.join(from, n);
    out.push({ file, size: (await fs.promises.stat(file)).size });
  }
  return out;
}

/** One line of a JSON Lines file: the parsed value, or why it cannot be read. */
export interface JsonLine {
  file: string;
  /** 1-based line number in the file. */
  line: number;
  value?: unknown;
  error?: string;
  /** Set when `error` is the file failing to read (an I/O problem, not a bad line). */
  io?: boolean;
}

/**
 * Reads the JSON lines of `files` in order (up to each one's `size`), blank lines skipped; a line
 * that is not JSON comes back with `error`, and a file that cannot be read as one error line
 * with `io`, never as a throw. `onBytes` is told the bytes read of the current file now and then.
 */
export async function* readJsonLines(files: readonly FileRange[], onBytes?: (file: string, bytes: number) => void): AsyncGenerator<JsonLine> {
  for (const { file, size } of files) {
    if (size === 0) continue;
    const stream = fs.createReadStream(file, size === undefined ? { encoding: 'utf8' } : { encoding: 'utf8', start: 0, end: size - 1 });
    const rl = readline.createInterface({ input: stream, crlfDelay: Infinity });
    let line = 0;
    let failure: Error | undefined;
    try {
      for await (const text of rl) {
        line++;
        if ((line & 0x3ff) === 0) onBytes?.(file, stream.bytesRead);
        if (text.trim() === '') continue;
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch (err) {
          yield { file, line, error: `bad JSON: ${(err as Error).message}` };
          continue;
        }
        yield { file, line, value };
      }
    } catch (err) {
      failure = err as Error;
    } finally {
      rl.close();
      stream.destroy();
    }
    onBytes?.(file, stream.bytesRead);
    if (failure) yield { file, line: line + 1, error: `read failed: ${failure.message}`, io: true };
  }
}

/**
 * The JSON values of one file, each with its `FILE:LINE`: a line that is not JSON comes with its
 * error; a file that cannot be read throws (an I/O failure of the run, not a bad line).
 */
export async function* readJsonValues(file: string): AsyncGenerator<{ where: string; value?: unknown; error?: string }> {
  for await (const line of readJsonLines([{ file }])) {
    if (line.io) throw new Error(line.error);
    yield { where: `${line.file}:${line.line}`, value: line.value, error: line.error };
  }
}

/** Reads feature-log rows from `files` (featureLogFiles), each checked by readFeatureLogRow; never throws. */
export async function* readFeatureLog(files: readonly FileRange[], onBytes?: (file: string, bytes: number) => void): AsyncGenerator<FeatureLogLine> {
  for await (const l of readJsonLines(files, onBytes)) {
    if (l.error !== undefined) yield { file: l.file, line: l.line, error: l.error, io: l.io };
    else yield { file: l.file, line: l.line, ...readFeatureLogRow(l.value) };
  }
}
