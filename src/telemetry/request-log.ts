/**
 * The Retrieve request log (`funnel serve --request-log DIR`): a sampled share of Retrieve
 * requests, one JSON line each (`{"time","pipeline","data_seq","request","ad_ids"}`, the request
 * in proto3 JSON), for `funnel eval` to replay. record() runs on the request path: it draws the
 * sample, serialises and queues, and never waits for the disk; one async writer drains the queue
 * through fs.promises (the libuv thread pool), a batch per write, rotating files by size and
 * deleting the oldest beyond a count. Anything that cannot be queued or written is dropped and
 * counted, never thrown.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { DecodedRetrieve } from '../grpc/codec';
import { retrieveFromJson, retrieveToJson } from '../grpc/request-json';

/** What the log warns through (a pino logger fits). */
export interface RequestLogLogger {
  warn(obj: object, msg: string): void;
}

/** Options of a request log. */
export interface RequestLogOptions {
  /** Directory of the log files; created if missing. */
  dir: string;
  /** Share of requests logged, 0..1. */
  sample: number;
  /** A file is rotated before a write would take it past this size, bytes (default 64 MiB). */
  maxFileBytes?: number;
  /** Log files kept in the directory; the oldest beyond it are deleted (default 20). */
  maxFiles?: number;
  /** Bytes of lines waiting for the disk past which new lines are dropped (default 4 MiB). */
  maxQueueBytes?: number;
  logger?: RequestLogLogger;
  /** Called with lines written or dropped (metrics). */
  onCount?(result: 'written' | 'dropped', n: number): void;
}

/** One Retrieve as record() takes it. */
export interface RequestLogEntry {
  /** When it was answered, epoch ms. */
  timeMs: number;
  /** The pipeline that served it. */
  pipeline: string;
  /** The data's change sequence number the answer was computed at. */
  dataSeq: number;
  request: DecodedRetrieve;
  /** The returned ads, in order. */
  adIds: string[];
}

/** Counters of a request log. */
export interface RequestLogStats {
  /** Lines on disk. */
  written: number;
  /** Sampled lines lost: queue full, write failed, or recorded after close(). */
  dropped: number;
  /** Files this log has created. */
  files: number;
  /** Bytes of lines queued or being written. */
  queuedBytes: number;
}

const MIB = 1024 * 1024;
const WARN_INTERVAL_MS = 60_000;
const FILE_PATTERN = /^requests-.*\.jsonl$/;

/** `requests-<yyyymmddThhmmss.sssZ>-<pid>-<n>.jsonl`: names sort by creation time. */
function fileName(timeMs: number, n: number): string {
  const stamp = new Date(timeMs).toISOString().replace(/[-:]/g, '');
  return `requests-${stamp}-${process.pid}-${String(n).padStart(6, '0')}.jsonl`;
}

/** A sampled log of Retrieve requests as JSON Lines, written off the request path. */
export class RequestLog {
  readonly dir: string;
  private readonly sample: number;
  private readonly maxFileBytes: number;
  private readonly maxFiles: number;
  private readonly maxQueueBytes: number;
  private readonly logger: RequestLogLogger | undefined;
  private readonly onCount: RequestLogOptions['onCount'];
  private lines: string[] = [];
  private sizes: number[] = [];
  /** Bytes queued plus bytes of the batch being written. */
  private pendingBytes = 0;
  private writer: Promise<void> | null = null;
  private handle: fs.promises.FileHandle | null = null;
  private fileBytes = 0;
  private fileCount = 0;
  private written = 0;
  private dropped = 0;
  private closed = false;
  private readonly lastWarn = { write: -Infinity, queue: -Infinity };

  constructor(options: RequestLogOptions) {
    if (!(options.sample >= 0 && options.sample <= 1)) throw new Error(`request log: sample must be a number in [0, 1], got ${options.sample}`);
    this.dir = options.dir;
    this.sample = options.sample;
    this.maxFileBytes = options.maxFileBytes ?? 64 * MIB;
    this.maxFiles = Math.max(1, options.maxFiles ?? 20);
    this.maxQueueBytes = options.maxQueueBytes ?? 4 * MIB;
    this.logger = options.logger;
    this.onCount = options.onCount;
    fs.mkdirSync(this.dir, { recursive: true });
  }

  /** Samples, serialises and queues one Retrieve; never throws, never waits (an unsampled call returns at once). */
  record(entry: RequestLogEntry): void {
    if (!(Math.random() < this.sample)) return;
    try {
      if (this.closed) {
        this.drop(1);
        return;
      }
      const line =
        JSON.stringify({
          time: new Date(entry.timeMs).toISOString(),
          pipeline: entry.pipeline,
          data_seq: entry.dataSeq,
          request: retrieveToJson(entry.request),
          ad_ids: entry.adIds,
        }) + '\n';
      const bytes = Buffer.byteLength(line);
      if (this.pendingBytes + bytes > this.maxQueueBytes) {
        this.drop(1);
        this.warn('queue', { dir: this.dir, max_queue_bytes: this.maxQueueBytes, dropped: this.dropped }, 'request log: the disk is not keeping up; lines dropped');
        return;
      }
      this.lines.push(line);
      this.sizes.push(bytes);
      this.pendingBytes += bytes;
      this.writer ??= this.drain();
    } catch (err) {
      this.drop(1);
      this.warn('write', { dir: this.dir, err: (err as Error)?.message ?? String(err) }, 'request log: a request could not be serialised; line dropped');
    }
  }

  /** Counters so far. */
  stats(): RequestLogStats {
    return { written: this.written, dropped: this.dropped, files: this.fileCount, queuedBytes: this.pendingBytes };
  }

  /** Resolves once every line recorded so far is written or dropped. Never rejects. */
  async flush(): Promise<void> {
    while (this.writer) await this.writer;
  }

  /** Writes what is queued and closes the file; lines recorded afterwards are dropped. Never rejects. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
    const h = this.handle;
    this.handle = null;
    if (h) await h.close().catch(() => undefined);
  }

  private count(result: 'written' | 'dropped', n: number): void {
    if (n <= 0) return;
    if (result === 'written') this.written += n;
    else this.dropped += n;
    try {
      this.onCount?.(result, n);
    } catch {
      /* a metrics callback must not break the log */
    }
  }

  private drop(n: number): void {
    this.count('dropped', n);
  }

  private warn(kind: 'write' | 'queue', obj: object, msg: string): void {
    const now = Date.now();
    if (now - this.lastWarn[kind] < WARN_INTERVAL_MS) return;
    this.lastWarn[kind] = now;
    try {
      this.logger?.warn(obj, msg);
    } catch {
      /* a logger must not break the log */
    }
  }

  /** The single writer: takes every queued line as one batch until the queue is empty. */
  private async drain(): Promise<void> {
    try {
      // Yield first: `writer` is assigned before `finally` can clear it, and lines recorded in the
      // same tick join the first batch.
      await null;
      while (this.lines.length > 0) {
        const lines = this.lines;
        const sizes = this.sizes;
        this.lines = [];
        this.sizes = [];
        await this.writeBatch(lines, sizes);
      }
    } finally {
      this.writer = null;
    }
  }

  private async writeBatch(lines: string[], sizes: number[]): Promise<void> {
    let i = 0;
    try {
      while (i < lines.length) {
        await this.ensureFile();
        let take = 0;
        let bytes = 0;
        while (i + take < lines.length) {
          const b = sizes[i + take];
          // A line larger than a whole file still gets written, alone in a fresh file.
          if (this.fileBytes + bytes + b > this.maxFileBytes && this.fileBytes + bytes > 0) break;
          bytes += b;
          take++;
        }
        if (take === 0) {
          await this.closeFile();
          continue;
        }
        const buf = Buffer.from(take === lines.length ? lines.join('') : lines.slice(i, i + take).join(''));
        let off = 0;
        while (off < buf.length) {
          const { bytesWritten } = await this.handle!.write(buf, off, buf.length - off, null);
          off += bytesWritten;
        }
        this.fileBytes += bytes;
        this.pendingBytes -= bytes;
        this.count('written', take);
        i += take;
      }
    } catch (err) {
      let lost = 0;
      for (let j = i; j < sizes.length; j++) lost += sizes[j];
      this.pendingBytes -= lost;
      this.drop(lines.length - i);
      this.warn('write', { dir: this.dir, err: (err as Error)?.message ?? String(err), dropped: this.dropped }, 'request log: writing failed; lines dropped (later lines go to a new file)');
      await this.closeFile();
    }
  }

  /** Opens a new file when none is open, or when the open one was deleted (directory removed, pruned by another process). */
  private async ensureFile(): Promise<void> {
    if (this.handle) {
      const st = await this.handle.stat();
      if (st.nlink > 0) return;
      await this.closeFile();
    }
    await fs.promises.mkdir(this.dir, { recursive: true });
    const file = path.join(this.dir, fileName(Date.now(), this.fileCount));
    this.handle = await fs.promises.open(file, 'a');
    this.fileBytes = 0;
    this.fileCount++;
    await this.prune(path.basename(file));
  }

  private async closeFile(): Promise<void> {
    const h = this.handle;
    this.handle = null;
    this.fileBytes = 0;
    if (h) await h.close().catch(() => undefined);
  }

  /** Deletes the oldest log files beyond maxFiles (never `current`); a failure only leaves more files. */
  private async prune(current: string): Promise<void> {
    try {
      const names = (await fs.promises.readdir(this.dir)).filter((n) => FILE_PATTERN.test(n) && n !== current).sort();
      const excess = names.length + 1 - this.maxFiles;
      for (let k = 0; k < excess; k++) await fs.promises.unlink(path.join(this.dir, names[k])).catch(() => undefined);
    } catch {
      /* pruning is best effort */
    }
  }
}

/** One line of a request log as readRequestLog yields it: the request and its context, or why it could not be read. */
export interface RequestLogLine {
  /** Path of the file. */
  file: string;
  /** 1-based line number in the file. */
  line: number;
  request?: DecodedRetrieve;
  error?: string;
  entry?: { time: string; pipeline: string; data_seq: number; ad_ids: string[] };
}

function parseLine(text: string): Pick<RequestLogLine, 'request' | 'error' | 'entry'> {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (err) {
    return { error: `bad JSON: ${(err as Error).message}` };
  }
  return readLoggedRequest(obj);
}

/** One parsed request-log line (a JSON value) checked: the request and its context, or why it cannot be read. */
export function readLoggedRequest(obj: unknown): Pick<RequestLogLine, 'request' | 'error' | 'entry'> {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) return { error: 'a line must be a JSON object' };
  const o = obj as Record<string, unknown>;
  if (o.request === undefined || o.request === null) return { error: 'request: missing' };
  let request: DecodedRetrieve;
  try {
    request = retrieveFromJson(o.request);
  } catch (err) {
    return { error: `request.${(err as Error).message}` };
  }
  const time = o.time ?? '';
  const pipeline = o.pipeline ?? '';
  const dataSeq = o.data_seq ?? 0;
  const adIds = o.ad_ids ?? [];
  if (typeof time !== 'string') return { error: 'time: must be a string' };
  if (typeof pipeline !== 'string') return { error: 'pipeline: must be a string' };
  if (typeof dataSeq !== 'number' || !Number.isSafeInteger(dataSeq) || dataSeq < 0) return { error: 'data_seq: must be a non-negative integer' };
  if (!Array.isArray(adIds) || adIds.some((a) => typeof a !== 'string')) return { error: 'ad_ids: must be a list of strings' };
  return { request, entry: { time, pipeline, data_seq: dataSeq, ad_ids: adIds as string[] } };
}

/**
 * Reads every `*.jsonl` file of `dir` in name order (time order for a request log), line by line,
 * blank lines skipped; a line that cannot be read comes back with `error`, never as a throw.
 */
export async function* readRequestLog(dir: string): AsyncGenerator<RequestLogLine> {
  const names = (await fs.promises.readdir(dir)).filter((n) => n.endsWith('.jsonl')).sort();
  for (const name of names) {
    const file = path.join(dir, name);
    const stream = fs.createReadStream(file, { encoding: 'utf8' });
    const rl = readline.createInterface({ input: stream, crlfDelay: Infinity });
    let line = 0;
    let failure: Error | undefined;
    try {
      for await (const text of rl) {
        line++;
        if (text.trim() === '') continue;
        yield { file, line, ...parseLine(text) };
      }
    } catch (err) {
      failure = err as Error;
    } finally {
      rl.close();
      stream.destroy();
    }
    // A file that vanished or cannot be read is one error line, not the end of the whole log.
    if (failure) yield { file, line: line + 1, error: `read failed: ${failure.message}` };
  }
}
