/**
 * WorkerSpanSink: spans reach an OTLP/HTTP receiver through the worker, the queue limit drops
 * and counts, a refused export is counted as failed, and a sink that never got a span starts no
 * worker. ProcessorSink hands SDK processors ReadableSpans.
 */
import { strict as assert } from 'node:assert';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { SpanRow } from '../../src/telemetry/span-row';
import { ProcessorSink, WorkerSpanSink, type WorkerSinkOptions } from '../../src/telemetry/span-sinks';

function rows(n: number, name = 'funnel.stage Ann'): SpanRow[] {
  const now = performance.now();
  return Array.from({ length: n }, (_, i): SpanRow => [
    '4bf92f3577b34da6a3ce929d0e0e4736',
    (i + 1).toString(16).padStart(16, '0'),
    '',
    1,
    0,
    '',
    name,
    SpanKind.INTERNAL,
    now,
    now + 1,
    SpanStatusCode.UNSET,
    '',
    ['funnel.candidates_in', i],
  ]);
}

/** A receiver answering every POST with `status`; counts requests and keeps bodies. */
async function receiver(status = 200): Promise<{ url: string; bodies: Buffer[]; close(): Promise<void> }> {
  const bodies: Buffer[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      bodies.push(Buffer.concat(chunks));
      res.writeHead(status, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
    bodies,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const resource = { attributes: { 'service.name': 'funnel-test' } };
const scope = { name: 'funnel', version: '0.0.0' };

/**
 * Runs `fn` with a sink exporting OTLP/HTTP protobuf to a receiver answering `status`, then shuts
 * both down. The schedule delay is long, so only a full batch or a flush sends.
 */
async function withSink(
  status: number,
  options: Partial<Pick<WorkerSinkOptions, 'maxQueueSize' | 'maxExportBatchSize'>>,
  fn: (sink: WorkerSpanSink, r: Awaited<ReturnType<typeof receiver>>) => Promise<void>,
): Promise<void> {
  const r = await receiver(status);
  const sink = new WorkerSpanSink({ protocol: 'http/protobuf', resource, scope, env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: r.url }, scheduledDelayMillis: 60_000, ...options });
  try {
    await fn(sink, r);
  } finally {
    await sink.shutdown();
    await r.close();
  }
}

describe('WorkerSpanSink', () => {
  it('when rows are emitted and flushed, then the receiver gets them as OTLP protobuf from the worker and they count as exported', async () => {
    await withSink(200, {}, async (sink, r) => {
      sink.emit(rows(5, 'span-one'));
      sink.emit(rows(3, 'span-two'));
      await sink.forceFlush();
      assert.deepEqual(sink.stats(), { exported: 8, failed: 0, dropped: 0 });
      const all = Buffer.concat(r.bodies);
      for (const text of ['span-one', 'span-two', 'funnel-test']) assert.ok(all.includes(Buffer.from(text)), `no ${text} in the export`);
    });
  });

  it('when the batch size is reached, then the batch is sent without waiting for the schedule', async () => {
    await withSink(200, { maxExportBatchSize: 4 }, async (sink, r) => {
      sink.emit(rows(4));
      for (let i = 0; i < 200 && sink.stats().exported < 4; i++) await new Promise((resolve) => setTimeout(resolve, 25));
      assert.equal(sink.stats().exported, 4);
      assert.equal(r.bodies.length, 1);
    });
  });

  it('when more spans wait than the queue holds, then the excess is dropped and counted, the rest exported', async () => {
    await withSink(200, { maxQueueSize: 10 }, async (sink, r) => {
      sink.emit(rows(6));
      sink.emit(rows(6)); // would make 12 > 10: the whole call is dropped
      sink.emit(rows(4));
      await sink.forceFlush();
      assert.deepEqual(sink.stats(), { exported: 10, failed: 0, dropped: 6 });
    });
  });

  it('when the receiver refuses the export, then the spans count as failed and shutdown still resolves', async () => {
    await withSink(400, {}, async (sink, r) => {
      sink.emit(rows(3));
      await sink.forceFlush();
      assert.deepEqual(sink.stats(), { exported: 0, failed: 3, dropped: 0 });
    });
  });

  it('when no span was emitted, then shutdown resolves without a worker and later emits are ignored', async () => {
    const sink = new WorkerSpanSink({ protocol: 'http/protobuf', resource, scope, env: {} });
    await sink.forceFlush();
    await sink.shutdown();
    sink.emit(rows(2));
    assert.deepEqual(sink.stats(), { exported: 0, failed: 0, dropped: 0 });
  });
});

describe('ProcessorSink', () => {
  it('when rows are emitted, then each processor gets them as ended ReadableSpans with the resource and scope', async () => {
    const exporter = new InMemorySpanExporter();
    const sink = new ProcessorSink([new SimpleSpanProcessor(exporter)], resourceFromAttributes({ 'service.name': 'funnel-test' }), scope);
    sink.emit(rows(2, 'n'));
    await sink.forceFlush();
    const spans = exporter.getFinishedSpans();
    assert.equal(spans.length, 2);
    assert.equal(spans[0].name, 'n');
    assert.equal(spans[1].attributes['funnel.candidates_in'], 1);
    assert.equal(spans[0].resource.attributes['service.name'], 'funnel-test');
    assert.equal(spans[0].instrumentationScope.name, 'funnel');
    await sink.shutdown();
  });
});
