/**
 * The Retrieve request log (`funnel serve --request-log DIR`): a sampled share of Retrieve
 * requests, one JSON line each (`{"time","pipeline","data_seq","request","ad_ids"}`, the request
 * in proto3 JSON), for `funnel eval` to replay. record() runs on the request path: it draws the
 * sample, serialises and queues; the writing, rotation and drop counting are RotatingLog's
 * (src/telemetry/rotating-log.ts): off the event loop, never waiting for the disk, never throwing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DecodedRetrieve } from '../grpc/codec';
import { retrieveFromJson, retrieveToJson } from '../grpc/request-json';
import { readJsonLines } from './feature-log';
import { RotatingLog, type LogWarner, type RotatingLogStats } from './rotating-log';

/** What the log warns through (a pino logger fits). */
export type RequestLogLogger = LogWarner;

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

/** Counters of a request log (`dropped`: sampled lines lost: queue full, write failed, or recorded after close()). */
export type RequestLogStats = RotatingLogStats;

/** A sampled log of Retrieve requests as JSON Lines, written off the request path. */
export class RequestLog {
  readonly dir: string;
  private readonly sample: number;
  private readonly out: RotatingLog;

  constructor(options: RequestLogOptions) {
    if (!(options.sample >= 0 && options.sample <= 1)) throw new Error(`request log: sample must be a number in [0, 1], got ${options.sample}`);
    this.dir = options.dir;
    this.sample = options.sample;
    this.out = new RotatingLog({ ...options, prefix: 'requests', name: 'request log' });
  }

  /** Samples, serialises and queues one Retrieve; never throws, never waits (an unsampled call returns at once). */
  record(entry: RequestLogEntry): void {
    if (!(Math.random() < this.sample)) return;
    if (this.out.closed) {
      this.out.drop(1);
      return;
    }
    let line: string;
    try {
      line =
        JSON.stringify({
          time: new Date(entry.timeMs).toISOString(),
          pipeline: entry.pipeline,
          data_seq: entry.dataSeq,
          request: retrieveToJson(entry.request),
          ad_ids: entry.adIds,
        }) + '\n';
    } catch (err) {
      this.out.drop(1);
      this.out.warn('serialise', { dir: this.dir, err: (err as Error)?.message ?? String(err) }, 'request log: a request could not be serialised; line dropped');
      return;
    }
    this.out.push(line, 1);
  }

  /** Counters so far. */
  stats(): RequestLogStats {
    return this.out.stats();
  }

  /** Resolves once every line recorded so far is written or dropped. Never rejects. */
  flush(): Promise<void> {
    return this.out.flush();
  }

  /** Writes what is queued and closes the file; lines recorded afterwards are dropped. Never rejects. */
  close(): Promise<void> {
    return this.out.close();
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
  // A file that vanished or cannot be read is one error line, not the end of the whole log.
  for await (const l of readJsonLines(names.map((name) => ({ file: path.join(dir, name) })))) {
    yield l.error !== undefined ? { file: l.file, line: l.line, error: l.error } : { file: l.file, line: l.line, ...readLoggedRequest(l.value) };
  }
}
