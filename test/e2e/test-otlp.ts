/**
 * OTLP/HTTP export end to end: the server, set up by OTEL_* variables, sends its spans to a
 * receiver this test runs on loopback, in protobuf and in JSON; stop() flushes them.
 *
 * The OTel exporters read OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) and the
 * BatchSpanProcessor reads OTEL_BSP_* from process.env when they are constructed, not from the
 * `env` given to initTracing, so these tests set process.env around start() and restore it.
 */
import { strict as assert } from 'node:assert';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { row } from '../fixtures/catalog';
import { startE2eServer, type E2eServer } from '../fixtures/e2e-server';

const DIM = 8;

/** One POST the receiver got. */
interface Received {
  path: string;
  contentType: string;
  body: Buffer;
}

/** A minimal OTLP/HTTP receiver: records every request and answers an empty success. */
async function startReceiver(): Promise<{ port: number; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const contentType = String(req.headers['content-type'] ?? '');
      received.push({ path: req.url ?? '', contentType, body: Buffer.concat(chunks) });
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
      } else if (contentType.startsWith('application/json')) {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } else {
        res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Runs `fn` with `vars` set in process.env, then puts the previous values back. */
async function withProcessEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

interface JsonSpan {
  name: string;
  spanId: string;
  traceId: string;
  parentSpanId?: string;
}
interface JsonExport {
  resourceSpans: { resource: { attributes: { key: string; value: { stringValue?: string } }[] }; scopeSpans: { spans: JsonSpan[] }[] }[];
}

describe('e2e: OTLP/HTTP trace export', function () {
  const rows = Array.from({ length: 30 }, (_, n) => row(n, DIM));
  let receiver: Awaited<ReturnType<typeof startReceiver>> | undefined;
  let s: E2eServer | undefined;
  afterEach(async () => {
    await s?.stop();
    await receiver?.close();
    s = undefined;
    receiver = undefined;
  });

  async function startTraced(protocol: string, endpoint: string, timeoutMs = 5000, scheduleDelayMs = 50): Promise<E2eServer> {
    const env = {
      OTEL_TRACES_EXPORTER: 'otlp',
      OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_TIMEOUT: String(timeoutMs),
      OTEL_BSP_SCHEDULE_DELAY: String(scheduleDelayMs),
      OTEL_TRACES_SAMPLER: 'always_on',
    };
    return withProcessEnv(env, () => startE2eServer({ rows, config: { limits: { shed_event_loop_lag_ms: 0 } }, tracing: { env } }));
  }

  const retrieveOnce = (server: E2eServer) =>
    server.retrieval.retrieve({ user_id: 'u-7', user_embedding: Array.from({ length: DIM }, (_, i) => Math.sin(i)), num_results: 5 });

  it('when the protocol is http/protobuf, then the receiver gets the Retrieve and stage spans as protobuf', async () => {
    receiver = await startReceiver();
    s = await startTraced('http/protobuf', `http://127.0.0.1:${receiver.port}`);
    assert.deepEqual(s.running.tracing.exporters, ['otlp/http-protobuf']);
    await retrieveOnce(s);
    await s.running.tracing.shutdown();
    // The server span and one span per stage, acknowledged by the receiver, counted on /metrics.
    const exported = s.running.tracing.spanStats()?.exported ?? 0;
    assert.ok(exported >= 9, `exported ${exported}`);
    const scrape = await s.running.metrics.registry.metrics();
    assert.match(scrape, new RegExp(`^funnel_trace_spans_total\\{outcome="exported"\\} ${exported}$`, 'm'));
    await s.stop();
    const posts = receiver.received.filter((r) => r.path === '/v1/traces');
    assert.ok(posts.length >= 1, `requests: ${JSON.stringify(receiver.received.map((r) => r.path))}`);
    for (const p of posts) assert.equal(p.contentType, 'application/x-protobuf');
    const all = Buffer.concat(posts.map((p) => p.body));
    for (const name of ['funnel.v1.Retrieval/Retrieve', 'funnel.stage Ann', 'funnel.stage Eligibility', 'funnel.stage Diversifier', 'funnel']) {
      assert.ok(all.includes(Buffer.from(name, 'utf8')), `no "${name}" in the exported bytes`);
    }
  });

  it('when the protocol is http/json, then the receiver gets one trace: the server span and its stage children', async () => {
    receiver = await startReceiver();
    s = await startTraced('http/json', `http://127.0.0.1:${receiver.port}`);
    assert.deepEqual(s.running.tracing.exporters, ['otlp/http-json']);
    await retrieveOnce(s);
    await s.stop();
    const posts = receiver.received.filter((r) => r.path === '/v1/traces');
    assert.ok(posts.length >= 1, `requests: ${JSON.stringify(receiver.received.map((r) => r.path))}`);
    const spans: JsonSpan[] = [];
    const serviceNames = new Set<string>();
    for (const p of posts) {
      assert.match(p.contentType, /^application\/json/);
      const body = JSON.parse(p.body.toString('utf8')) as JsonExport;
      for (const rs of body.resourceSpans) {
        for (const a of rs.resource.attributes) if (a.key === 'service.name') serviceNames.add(a.value.stringValue ?? '');
        for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      }
    }
    assert.deepEqual([...serviceNames], ['funnel']);
    const server = spans.filter((sp) => sp.name === 'funnel.v1.Retrieval/Retrieve');
    assert.equal(server.length, 1);
    const stages = spans.filter((sp) => sp.name.startsWith('funnel.stage '));
    assert.ok(stages.some((sp) => sp.name === 'funnel.stage Ann'));
    assert.equal(stages.length, spans.length - 1);
    for (const sp of stages) {
      assert.equal(sp.traceId, server[0].traceId, sp.name);
      assert.equal(sp.parentSpanId, server[0].spanId, sp.name);
    }
  });

  it('when the receiver is unreachable, then stop() still resolves (a failed flush is not a failed shutdown)', async () => {
    // Bind and close a port so nothing listens there.
    const probe = await startReceiver();
    const port = probe.port;
    await probe.close();
    // A long schedule delay leaves the spans queued, so stop() has them to flush.
    s = await startTraced('http/protobuf', `http://127.0.0.1:${port}`, 300, 600_000);
    await retrieveOnce(s);
    await s.stop();
  });
});
