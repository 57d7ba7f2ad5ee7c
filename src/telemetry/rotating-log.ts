/**
 * The writer under the request log and the feature log: JSON Lines appended to rotated files of
 * one directory, off the event loop. push() runs on the request path: it only queues text that
 * is already serialised, and never waits for the disk; one async writer drains the queue through
 * fs.promises (the libuv thread pool), a batch per write, rotating files by size and deleting the
 * oldest of its own files beyond a count. What cannot be queued or written is dropped and
 * counted, never thrown.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** What a log warns through (a pino logger fits). */
export interface LogWarner {
  warn(obj: object, msg: string): void;
}

/** A log's warnings: each `kind` at most once a minute (a full disk must not flood the logs); never throws. */
export class RateLimitedWarner {
  private readonly lastWarn: Record<string, number> = {};
  constructor(private readonly logger: LogWarner | undefined) {}
  warn(kind: string, obj: object, msg: string): void {
    const now = Date.now();
    if (now - (this.lastWarn[kind] ?? -Infinity) < WARN_INTERVAL_MS) return;
    this.lastWarn[kind] = now;
    try {
      this.logger?.warn(obj, msg);
    } catch {
      /* a logger must not break the log */
    }
  }
}

/** Options of a rotating log. */
export interface RotatingLogOptions {
  /** Directory of the log files; created if missing. */
  dir: string;
  /** Files are named `<prefix>-<yyyymmddThhmmss.sssZ>-<pid>-<n>.jsonl`; pruning only touches this prefix's files. */
  prefix: string;
  /** What warnings call this log (`request log`). */
  name: string;
  /** A file is rotated before a write would take it past this size, bytes (default 64 MiB). */
  maxFileBytes?: number;
  /** Log files kept in the directory; the oldest beyond it are deleted (default 20). */
  maxFiles?: number;
  /** Bytes of lines waiting for the disk past which new lines are dropped (default 4 MiB). */
  maxQueueBytes?: number;
  logger?: LogWarner;
  /** Called with lines written or dropped (metrics). */
  onCount?(result: 'written' | 'dropped', n: number): void;
}

/** Counters of a rotating log. */
export interface RotatingLogStats {
  /** Lines on disk. */
  written: number;
  /** Lines lost: queue full, write failed, not serialisable, or pushed after close(). */
  dropped: number;
  /** Files this log has created. */
  files: number;
  /** Bytes of lines queued or being written. */
  queuedBytes: number;
}

const MIB = 1024 * 1024;
const WARN_INTERVAL_MS = 60_000;

/** A unit of the queue: whole lines written together, or dropped together. */
interface Chunk {
  text: string;
  bytes: number;
  lines: number;
}

/** Appends JSON Lines to rotated files of one directory, off the event loop, with a bounded queue. */
export class RotatingLog {
  readonly dir: string;
  private readonly prefix: string;
  private readonly name: string;
  private readonly pattern: RegExp;
  private readonly maxFileBytes: number;
  private readonly maxFiles: number;
  private readonly maxQueueBytes: number;
  private readonly onCount: RotatingLogOptions['onCount'];
  private queue: Chunk[] = [];
  /** Bytes queued plus bytes of the batch being written. */
  private pendingBytes = 0;
  private writer: Promise<void> | null = null;
  private handle: fs.promises.FileHandle | null = null;
  private fileBytes = 0;
  private fileCount = 0;
  private written = 0;
  private dropped = 0;
  private closed_ = false;
  private readonly warner: RateLimitedWarner;

  constructor(options: RotatingLogOptions) {
    if (!/^[A-Za-z0-9_.]+$/.test(options.prefix)) throw new Error(`${options.name}: bad file prefix ${JSON.stringify(options.prefix)}`);
    this.dir = options.dir;
    this.prefix = options.prefix;
    this.name = options.name;
    this.pattern = new RegExp(`^${options.prefix.replace(/\./g, '\\.')}-.*\\.jsonl$`);
    this.maxFileBytes = options.maxFileBytes ?? 64 * MIB;
    this.maxFiles = Math.max(1, options.maxFiles ?? 20);
    this.maxQueueBytes = options.maxQueueBytes ?? 4 * MIB;
    this.warner = new RateLimitedWarner(options.logger);
    this.onCount = options.onCount;
    fs.mkdirSync(this.dir, { recursive: true });
  }

  /** Whether close() was called (later pushes are dropped). */
  get closed(): boolean {
    return this.closed_;
  }

  /**
   * Queues `text`, `lines` whole lines each ending in a newline, as one unit: all of it or none.
   * Returns false when it was dropped (queue full, or closed). Never throws, never waits.
   */
  push(text: string, lines: number): boolean {
    if (this.closed_) {
      this.drop(lines);
      return false;
    }
    const bytes = Buffer.byteLength(text);
    if (this.pendingBytes + bytes > this.maxQueueBytes) {
      this.drop(lines);
      this.warn('queue', { dir: this.dir, max_queue_bytes: this.maxQueueBytes, dropped: this.dropped }, `${this.name}: the disk is not keeping up; lines dropped`);
      return false;
    }
    this.queue.push({ text, bytes, lines });
    this.pendingBytes += bytes;
    this.writer ??= this.drain();
    return true;
  }

  /** Bytes queued or being written (what push() compares with maxQueueBytes). */
  get queuedBytes(): number {
    return this.pendingBytes;
  }

  /** Counts `n` lines lost before they reached push() (serialisation failed, ...). */
  drop(n: number): void {
    this.count('dropped', n);
  }

  /** Logs a warning of `kind` at most once a minute per kind; never throws. */
  warn(kind: string, obj: object, msg: string): void {
    this.warner.warn(kind, obj, msg);
  }

  /** Counters so far. */
  stats(): RotatingLogStats {
    return { written: this.written, dropped: this.dropped, files: this.fileCount, queuedBytes: this.pendingBytes };
  }

  /** Resolves once every line pushed so far is written or dropped. Never rejects. */
  async flush(): Promise<void> {
    while (this.writer) await this.writer;
  }

  /** Writes what is queued and closes the file; lines pushed afterwards are dropped. Never rejects. */
  async close(): Promise<void> {
    this.closed_ = true;
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

  /** The single writer: takes every queued chunk as one batch until the queue is empty. */
  private async drain(): Promise<void> {
    try {
      // Yield first: `writer` is assigned before `finally` can clear it, and lines pushed in the
      // same tick join the first batch.
      await null;
      while (this.queue.length > 0) {
        const batch = this.queue;
        this.queue = [];
        await this.writeBatch(batch);
      }
    } finally {
      this.writer = null;
    }
  }

  private async writeBatch(batch: Chunk[]): Promise<void> {
    let i = 0;
    try {
      while (i < batch.length) {
        await this.ensureFile();
        let take = 0;
        let bytes = 0;
        let lines = 0;
        while (i + take < batch.length) {
          const c = batch[i + take];
          // A chunk larger than a whole file still gets written, alone in a fresh file.
          if (this.fileBytes + bytes + c.bytes > this.maxFileBytes && this.fileBytes + bytes > 0) break;
          bytes += c.bytes;
          lines += c.lines;
          take++;
        }
        if (take === 0) {
          await this.closeFile();
          continue;
        }
        const buf = Buffer.from(take === 1 ? batch[i].text : batch.slice(i, i + take).map((c) => c.text).join(''));
        let off = 0;
        while (off < buf.length) {
          const { bytesWritten } = await this.handle!.write(buf, off, buf.length - off, null);
          off += bytesWritten;
        }
        this.fileBytes += bytes;
        this.pendingBytes -= bytes;
        this.count('written', lines);
        i += take;
      }
    } catch (err) {
      let lostBytes = 0;
      let lostLines = 0;
      for (let j = i; j < batch.length; j++) {
        lostBytes += batch[j].bytes;
        lostLines += batch[j].lines;
      }
      this.pendingBytes -= lostBytes;
      this.drop(lostLines);
      this.warn('write', { dir: this.dir, err: (err as Error)?.message ?? String(err), dropped: this.dropped }, `${this.name}: writing failed; lines dropped (later lines go to a new file)`);
      await this.closeFile();
    }
  }

  /** `<prefix>-<yyyymmddThhmmss.sssZ>-<pid>-<n>.jsonl`: names sort by creation time. */
  private fileName(timeMs: number, n: number): string {
    const stamp = new Date(timeMs).toISOString().replace(/[-:]/g, '');
    return `${this.prefix}-${stamp}-${process.pid}-${String(n).padStart(6, '0')}.jsonl`;
  }

  /** Opens a new file when none is open, or when the open one was deleted (directory removed, pruned by another process). */
  private async ensureFile(): Promise<void> {
    if (this.handle) {
      const st = await this.handle.stat();
      if (st.nlink > 0) return;
      await this.closeFile();
    }
    await fs.promises.mkdir(this.dir, { recursive: true });
    const file = path.join(this.dir, this.fileName(Date.now(), this.fileCount));
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

  /** Deletes the oldest of this prefix's files beyond maxFiles (never `current`); a failure only leaves more files. */
  private async prune(current: string): Promise<void> {
    try {
      const names = (await fs.promises.readdir(this.dir)).filter((n) => this.pattern.test(n) && n !== current).sort();
      const excess = names.length + 1 - this.maxFiles;
      for (let k = 0; k < excess; k++) await fs.promises.unlink(path.join(this.dir, names[k])).catch(() => undefined);
    } catch {
      /* pruning is best effort */
    }
  }
}
