/**
 * Span sinks: where a call's span rows go.
 *
 * - WorkerSpanSink posts rows to a worker thread that batches them and runs the standard OTLP
 *   exporter (serialisation, compression, transport, retries): the request thread only copies
 *   arrays. Rows are posted at most POST_MS after they end (or once POST_ROWS wait), so they die
 *   young in this thread's heap: spans held here for the whole schedule delay were promoted to
 *   the old generation and made its slow mark-compacts more frequent. Batching reads the
 *   BatchSpanProcessor's variables with its meaning: OTEL_BSP_MAX_QUEUE_SIZE (spans not yet
 *   exported, here or in the worker; past it new spans are dropped and counted),
 *   OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY and OTEL_BSP_EXPORT_TIMEOUT (both
 *   applied in the worker). The worker starts with the first spans.
 * - ProcessorSink turns rows into ReadableSpans for SDK span processors (the console exporter,
 *   tests' in-memory exporters), on the calling thread.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { diag } from '@opentelemetry/api';
import { getNumberFromEnv } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { OtlpProtocol } from './otlp-exporter';
import type { SpanSink } from './request-tracer';
import { timeOriginHr, toReadableSpan, type Scope, type SpanRow } from './span-row';
import type { ToMain, ToWorker, WorkerInit } from './span-export-worker';

/** Counts of spans since start: acknowledged by the exporter, refused or lost by it, dropped here at the queue limit. */
export interface SpanExportStats {
  exported: number;
  failed: number;
  dropped: number;
}

export interface WorkerSinkOptions {
  protocol: OtlpProtocol;
  resource: { attributes: Record<string, unknown>; schemaUrl?: string };
  scope: Scope;
  /** Environment of the worker (its exporter reads OTEL_EXPORTER_OTLP_*); default a copy of process.env taken now, as the SDK's exporters read it when constructed. */
  env?: NodeJS.ProcessEnv;
  maxQueueSize?: number;
  maxExportBatchSize?: number;
  scheduledDelayMillis?: number;
  exportTimeoutMillis?: number;
}

const WORKER_FILE = path.join(__dirname, 'span-export-worker.js');
/** Rows are posted to the worker this long after the first of them ended, at the latest. */
const POST_MS = 20;
/** ... or as soon as this many wait. */
const POST_ROWS = 128;

export class WorkerSpanSink implements SpanSink {
  private readonly maxQueueSize: number;
  private readonly maxBatch: number;
  private readonly delayMs: number;
  private readonly exportTimeoutMs: number;
  private readonly env: NodeJS.ProcessEnv;
  private buffer: SpanRow[] = [];
  /** Spans posted to the worker and not yet exported (or failed). */
  private inWorker = 0;
  private worker: Worker | null = null;
  private workerError: Error | null = null;
  private timer: NodeJS.Timeout | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, () => void>();
  private closing: Promise<void> | null = null;
  private readonly counts: SpanExportStats = { exported: 0, failed: 0, dropped: 0 };
  private warnedDrop = false;

  constructor(private readonly options: WorkerSinkOptions) {
    this.env = { ...(options.env ?? process.env) };
    this.maxQueueSize = options.maxQueueSize ?? getNumberFromEnv('OTEL_BSP_MAX_QUEUE_SIZE') ?? 2048;
    this.maxBatch = Math.min(options.maxExportBatchSize ?? getNumberFromEnv('OTEL_BSP_MAX_EXPORT_BATCH_SIZE') ?? 512, this.maxQueueSize);
    this.delayMs = options.scheduledDelayMillis ?? getNumberFromEnv('OTEL_BSP_SCHEDULE_DELAY') ?? 5000;
    this.exportTimeoutMs = options.exportTimeoutMillis ?? getNumberFromEnv('OTEL_BSP_EXPORT_TIMEOUT') ?? 30000;
  }

  /** Span counts so far (the funnel_trace_spans_total metric). */
  stats(): SpanExportStats {
    return { ...this.counts };
  }

  emit(rows: SpanRow[]): void {
    if (this.closing) return;
    if (this.workerError || this.buffer.length + this.inWorker + rows.length > this.maxQueueSize) {
      this.drop(rows.length);
      return;
    }
    for (const row of rows) this.buffer.push(row);
    if (this.buffer.length >= POST_ROWS) this.send();
    else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.send();
      }, POST_MS);
      this.timer.unref();
    }
  }

  async forceFlush(): Promise<void> {
    this.send();
    if (this.worker && !this.workerError) await this.request('flush');
  }

  shutdown(): Promise<void> {
    this.closing ??= (async () => {
      try {
        this.send();
        if (this.worker && !this.workerError) await this.request('shutdown');
      } finally {
        if (this.timer) clearTimeout(this.timer);
        this.timer = null;
        await this.worker?.terminate();
        this.worker = null;
      }
    })();
    return this.closing;
  }

  private drop(n: number): void {
    this.counts.dropped += n;
    if (this.warnedDrop) return;
    this.warnedDrop = true;
    diag.warn(this.workerError ? `span export worker failed (${this.workerError.message}); dropping spans` : 'span export queue full (OTEL_BSP_MAX_QUEUE_SIZE); dropping spans');
  }

  /** Posts the buffered rows to the worker. */
  private send(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.buffer.length === 0) return;
    const rows = this.buffer;
    this.buffer = [];
    if (this.workerError) {
      this.drop(rows.length);
      return;
    }
    this.ensureWorker().postMessage({ type: 'rows', rows } satisfies ToWorker);
    this.inWorker += rows.length;
  }

  /** An export's outcome, from the worker. */
  private exported(count: number, ok: boolean, error?: string): void {
    this.inWorker -= count;
    if (ok) this.counts.exported += count;
    else {
      this.counts.failed += count;
      diag.warn(`span export failed: ${error ?? 'unknown error'}`);
    }
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const init: WorkerInit = {
      protocol: this.options.protocol,
      maxBatch: this.maxBatch,
      delayMs: this.delayMs,
      exportTimeoutMs: this.exportTimeoutMs,
      resource: this.options.resource,
      scope: this.options.scope,
      timeOrigin: timeOriginHr(),
    };
    const worker = new Worker(WORKER_FILE, { workerData: init, env: this.env });
    worker.unref();
    worker.on('message', (reply: ToMain) => {
      if (reply.type === 'exported') {
        this.exported(reply.count, reply.ok, reply.error);
        return;
      }
      const done = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      done?.();
    });
    const fail = (err: Error) => {
      if (this.workerError) return;
      this.workerError = err;
      // Spans in the worker are lost with it.
      if (this.inWorker > 0) this.exported(this.inWorker, false, err.message);
      const waiting = [...this.pending.values()];
      this.pending.clear();
      for (const done of waiting) done();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (this.pending.size > 0 || this.inWorker > 0 || (!this.closing && code !== 0)) fail(new Error(`span export worker exited with code ${code}`));
    });
    this.worker = worker;
    return worker;
  }

  private request(type: 'flush' | 'shutdown'): Promise<void> {
    const worker = this.worker;
    if (!worker) return Promise.resolve();
    const id = this.nextId++;
    return new Promise<void>((resolve) => {
      this.pending.set(id, () => resolve());
      worker.postMessage({ type, id } satisfies ToWorker);
    });
  }
}

/** Hands each span to SDK span processors as a ReadableSpan (their onStart is not called: every span arrives ended). */
export class ProcessorSink implements SpanSink {
  private readonly timeOrigin = timeOriginHr();

  constructor(
    private readonly processors: SpanProcessor[],
    private readonly resource: Resource,
    private readonly scope: Scope,
  ) {}

  emit(rows: SpanRow[]): void {
    for (const row of rows) {
      const span = toReadableSpan(row, this.resource, this.scope, this.timeOrigin);
      for (const p of this.processors) p.onEnd(span);
    }
  }

  async forceFlush(): Promise<void> {
    await Promise.all(this.processors.map((p) => p.forceFlush()));
  }

  async shutdown(): Promise<void> {
    await Promise.all(this.processors.map((p) => p.shutdown()));
  }
}
