/**
 * The export worker of WorkerSpanSink. It receives span rows in small, frequent messages (so the
 * request thread never holds them long enough for its garbage collector to promote them), keeps
 * them in its own heap, and exports them in batches as the BatchSpanProcessor would: when
 * `maxBatch` are waiting, else `delayMs` after the first one arrived. Exports rebuild
 * ReadableSpans and use the standard OTLP exporter, which serialises and sends them here, off the
 * request thread. `flush` and `shutdown` export whatever waits and are answered once every export
 * before them has finished.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Attributes, HrTime } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { createOtlpExporter, type OtlpProtocol } from './otlp-exporter';
import { toReadableSpan, type Scope, type SpanRow } from './span-row';

/** What the worker is started with. */
export interface WorkerInit {
  protocol: OtlpProtocol;
  maxBatch: number;
  delayMs: number;
  exportTimeoutMs: number;
  resource: { attributes: Record<string, unknown>; schemaUrl?: string };
  scope: Scope;
  /** performance.timeOrigin of the thread that records the rows. */
  timeOrigin: HrTime;
}

/** Messages to the worker. */
export type ToWorker = { type: 'rows'; rows: SpanRow[] } | { type: 'flush'; id: number } | { type: 'shutdown'; id: number };

/** Messages from the worker: an export's outcome (for `count` spans), or that a flush or shutdown is done. */
export type ToMain = { type: 'exported'; count: number; ok: boolean; error?: string } | { type: 'flushed'; id: number };

function run(port: NonNullable<typeof parentPort>, init: WorkerInit): void {
  const exporter = createOtlpExporter(init.protocol);
  const resource = resourceFromAttributes(init.resource.attributes as Attributes, init.resource.schemaUrl ? { schemaUrl: init.resource.schemaUrl } : undefined);
  const inFlight = new Set<Promise<void>>();
  const waiting: SpanRow[] = [];
  let timer: NodeJS.Timeout | null = null;

  function exportRows(rows: SpanRow[]): void {
    const p = new Promise<void>((resolve) => {
      let settled = false;
      const finish = (ok: boolean, error?: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        port.postMessage({ type: 'exported', count: rows.length, ok, error } satisfies ToMain);
        resolve();
      };
      const deadline = setTimeout(() => finish(false, `export timed out after ${init.exportTimeoutMs} ms (OTEL_BSP_EXPORT_TIMEOUT)`), init.exportTimeoutMs);
      try {
        const spans = rows.map((r) => toReadableSpan(r, resource, init.scope, init.timeOrigin));
        exporter.export(spans, (result: ExportResult) => {
          const ok = result.code === ExportResultCode.SUCCESS;
          finish(ok, ok ? undefined : (result.error?.message ?? 'export failed'));
        });
      } catch (err) {
        finish(false, (err as Error).message);
      }
    });
    inFlight.add(p);
    void p.then(() => inFlight.delete(p));
  }

  /** Exports the full batches waiting, and with `all` the rest too; the schedule timer covers what is left. */
  function exportWaiting(all: boolean): void {
    while (waiting.length >= init.maxBatch || (all && waiting.length > 0)) exportRows(waiting.splice(0, init.maxBatch));
    if (waiting.length === 0) {
      if (timer) clearTimeout(timer);
      timer = null;
    } else {
      timer ??= setTimeout(() => {
        timer = null;
        exportWaiting(true);
      }, init.delayMs);
    }
  }

  port.on('message', (m: ToWorker) => {
    if (m.type === 'rows') {
      for (const row of m.rows) waiting.push(row);
      exportWaiting(false);
      return;
    }
    exportWaiting(true);
    void Promise.all([...inFlight])
      .then(() => (m.type === 'flush' ? exporter.forceFlush?.() : exporter.shutdown()))
      .catch(() => undefined)
      .then(() => port.postMessage({ type: 'flushed', id: m.id } satisfies ToMain));
  });
}

if (parentPort) run(parentPort, workerData as WorkerInit);
