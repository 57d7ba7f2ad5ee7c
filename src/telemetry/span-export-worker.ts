/**
 * The export worker of WorkerSpanSink: rebuilds ReadableSpans from span rows and hands them to
 * the OTLP exporter, which serialises and sends them here, off the request thread. `flush` and
 * `shutdown` are answered once every export posted before them has finished.
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
  exportTimeoutMs: number;
  resource: { attributes: Record<string, unknown>; schemaUrl?: string };
  scope: Scope;
  /** performance.timeOrigin of the thread that records the rows. */
  timeOrigin: HrTime;
}

/** Messages to the worker. */
export type ToWorker = { type: 'export'; id: number; rows: SpanRow[] } | { type: 'flush'; id: number } | { type: 'shutdown'; id: number };

/** Messages from the worker: an export's outcome, or that a flush or shutdown is done. */
export type ToMain = { type: 'exported'; id: number; ok: boolean; error?: string } | { type: 'flushed'; id: number };

function run(port: NonNullable<typeof parentPort>, init: WorkerInit): void {
  const exporter = createOtlpExporter(init.protocol);
  const resource = resourceFromAttributes(init.resource.attributes as Attributes, init.resource.schemaUrl ? { schemaUrl: init.resource.schemaUrl } : undefined);
  const scope = init.scope;
  const inFlight = new Set<Promise<void>>();

  function exportRows(id: number, rows: SpanRow[]): Promise<void> {
    return new Promise<void>((resolve) => {
      let settled = false;
      const finish = (ok: boolean, error?: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        port.postMessage({ type: 'exported', id, ok, error } satisfies ToMain);
        resolve();
      };
      const timer = setTimeout(() => finish(false, `export timed out after ${init.exportTimeoutMs} ms (OTEL_BSP_EXPORT_TIMEOUT)`), init.exportTimeoutMs);
      try {
        const spans = rows.map((r) => toReadableSpan(r, resource, scope, init.timeOrigin));
        exporter.export(spans, (result: ExportResult) => {
          const ok = result.code === ExportResultCode.SUCCESS;
          finish(ok, ok ? undefined : (result.error?.message ?? 'export failed'));
        });
      } catch (err) {
        finish(false, (err as Error).message);
      }
    });
  }

  port.on('message', (m: ToWorker) => {
    if (m.type === 'export') {
      const p = exportRows(m.id, m.rows);
      inFlight.add(p);
      void p.then(() => inFlight.delete(p));
      return;
    }
    void Promise.all([...inFlight])
      .then(() => (m.type === 'flush' ? exporter.forceFlush?.() : exporter.shutdown()))
      .catch(() => undefined)
      .then(() => port.postMessage({ type: 'flushed', id: m.id } satisfies ToMain));
  });
}

if (parentPort) run(parentPort, workerData as WorkerInit);
