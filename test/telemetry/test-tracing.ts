/**
 * Tracing: the span tree of a Retrieve (one SERVER span, one `funnel.stage` child per stage that
 * ran, nothing per candidate), degraded and refused calls, W3C traceparent continuation, and the
 * OTEL_* parsing of initTracing.
 */
import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { AlwaysOnSampler, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { configSchema } from '../../src/config/schema';
import { packageVersion } from '../../src/main';
import { TracingConfigError, initTracing } from '../../src/telemetry/tracing';
import { row } from '../fixtures/catalog';
import { rpcError, startE2eServer, type E2eServer } from '../fixtures/e2e-server';

const DIM = 8;
const STAGES = ['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Merge', 'Filters', 'EarlyRanker', 'Diversifier'];

function embedding(seed: number): number[] {
  return Array.from({ length: DIM }, (_, i) => Math.cos(seed * 3.1 + i * 0.9));
}

/** The one server span of `spans`, and the rest. */
function split(spans: ReadableSpan[]): { server: ReadableSpan; children: ReadableSpan[] } {
  const servers = spans.filter((s) => s.kind === SpanKind.SERVER);
  assert.equal(servers.length, 1, `server spans: ${servers.map((s) => s.name).join(', ')}`);
  return { server: servers[0], children: spans.filter((s) => s !== servers[0]) };
}

function byName(spans: ReadableSpan[], name: string): ReadableSpan {
  const found = spans.filter((s) => s.name === name);
  assert.equal(found.length, 1, `spans named ${name}: ${found.length}`);
  return found[0];
}

describe('tracing', () => {
  describe('of a server with an in-memory exporter', () => {
    const exporter = new InMemorySpanExporter();
    const processor = new SimpleSpanProcessor(exporter);
    let s: E2eServer;
    /** Stage names the server's hooks.observer saw end, in order. */
    const hookSaw: string[] = [];

    before(async () => {
      s = await startE2eServer({
        rows: Array.from({ length: 60 }, (_, n) => row(n, DIM)),
        config: {
          limits: { shed_event_loop_lag_ms: 0 },
          pipelines: {
            default: {},
            ann_slow: { stages: { Ann: { fault: { delay_ms: 300 }, timeout_ms: 20 } } },
          },
        },
        tracing: { env: {}, processors: [processor], sampler: new AlwaysOnSampler() },
        hooks: { observer: { start: () => (r) => void hookSaw.push(r.name) } },
      });
    });
    after(async () => {
      await s?.stop();
    });
    beforeEach(() => {
      exporter.reset();
      hookSaw.length = 0;
    });

    /** The spans ended so far (the server span ends before the answer is sent). */
    async function spans(): Promise<ReadableSpan[]> {
      await processor.forceFlush();
      return exporter.getFinishedSpans();
    }

    it('when a Retrieve is answered, then it is one SERVER span with one funnel.stage child per stage and nothing per candidate', async () => {
      const res = await s.retrieval.retrieve({ user_id: 'u-1', user_embedding: embedding(1), num_results: 10 });
      assert.ok(res.candidates.length > 0);
      const all = await spans();
      const { server, children } = split(all);
      assert.equal(server.name, 'funnel.v1.Retrieval/Retrieve');
      assert.equal(server.status.code, SpanStatusCode.UNSET);
      assert.equal(server.parentSpanContext, undefined);
      assert.equal(server.attributes['rpc.system'], 'grpc');
      assert.equal(server.attributes['rpc.service'], 'funnel.v1.Retrieval');
      assert.equal(server.attributes['rpc.method'], 'Retrieve');
      assert.equal(server.attributes['rpc.grpc.status_code'], 0);
      assert.equal(server.attributes['funnel.pipeline'], 'default');
      assert.equal(server.attributes['funnel.experiment.arm'], 'none');
      assert.equal(server.attributes['funnel.degraded'], false);
      assert.equal(server.resource.attributes['service.name'], 'funnel');
      assert.equal(server.resource.attributes['service.version'], packageVersion());

      assert.deepEqual(children.map((c) => c.name).sort(), STAGES.map((n) => `funnel.stage ${n}`).sort());
      const { traceId, spanId } = server.spanContext();
      for (const c of children) {
        assert.equal(c.kind, SpanKind.INTERNAL, c.name);
        assert.equal(c.spanContext().traceId, traceId, c.name);
        assert.equal(c.parentSpanContext?.spanId, spanId, c.name);
        assert.notEqual(c.status.code, SpanStatusCode.ERROR, c.name);
        assert.equal(typeof c.attributes['funnel.candidates_in'], 'number', c.name);
        assert.equal(typeof c.attributes['funnel.candidates_out'], 'number', c.name);
      }
      const ann = byName(children, 'funnel.stage Ann');
      assert.equal(ann.attributes['funnel.ann.index_size'], 60);
      assert.ok(ann.attributes['funnel.ann.plan'] === 'scan' || ann.attributes['funnel.ann.plan'] === 'graph', String(ann.attributes['funnel.ann.plan']));
      assert.equal(ann.attributes['funnel.ann.allowed'], 60);
      assert.equal(byName(children, 'funnel.stage Eligibility').attributes['funnel.candidates_out'], 60);
      assert.equal(byName(children, 'funnel.stage Diversifier').attributes['funnel.candidates_out'], res.candidates.length);
      // The server's own stage hook still sees every stage next to the spans.
      assert.deepEqual([...hookSaw].sort(), [...STAGES].sort());
    });

    it('when the Ann stage times out, then its span is an error and the server span is OK with funnel.degraded', async () => {
      const res = await s.retrieval.retrieve({ user_embedding: embedding(2), pipeline: 'ann_slow' }, { deadlineMs: 5000 });
      assert.deepEqual(res.degraded_stages, ['Ann']);
      const { server, children } = split(await spans());
      assert.equal(server.status.code, SpanStatusCode.UNSET);
      assert.equal(server.attributes['rpc.grpc.status_code'], 0);
      assert.equal(server.attributes['funnel.degraded'], true);
      assert.deepEqual(server.attributes['funnel.degraded_stages'], ['Ann']);
      assert.equal(server.attributes['funnel.pipeline'], 'ann_slow');
      assert.equal(server.attributes['funnel.experiment.arm'], 'explicit');
      assert.equal(children.length, STAGES.length);
      const ann = byName(children, 'funnel.stage Ann');
      assert.equal(ann.status.code, SpanStatusCode.ERROR);
      assert.match(ann.status.message ?? '', /timed out/);
      assert.equal(ann.attributes['funnel.stage.status'], 'timeout');
      assert.equal(ann.attributes['funnel.stage.timeout_ms'], 20);
      for (const c of children.filter((c) => c !== ann)) assert.notEqual(c.status.code, SpanStatusCode.ERROR, c.name);
    });

    it("when the caller sends a traceparent, then the server span continues the caller's trace", async () => {
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const parentId = '00f067aa0ba902b7';
      const md = new grpc.Metadata();
      md.set('traceparent', `00-${traceId}-${parentId}-01`);
      await s.retrieval.retrieve({ user_embedding: embedding(3) }, { metadata: md });
      const { server, children } = split(await spans());
      assert.equal(server.spanContext().traceId, traceId);
      assert.equal(server.parentSpanContext?.spanId, parentId);
      assert.equal(server.parentSpanContext?.isRemote, true);
      assert.equal(children.length, STAGES.length);
      for (const c of children) assert.equal(c.spanContext().traceId, traceId, c.name);
    });

    it("when a reload sets tracing.sample_ratio to 0, then new traces stop (a caller's sampled traceparent is still followed) until it is 1 again", async () => {
      const before = s.running.server.config;
      try {
        s.running.server.config = configSchema.parse({ ...before, tracing: { sample_ratio: 0 } });
        await s.retrieval.retrieve({ user_embedding: embedding(4) });
        assert.equal((await spans()).length, 0);
        const md = new grpc.Metadata();
        md.set('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
        await s.retrieval.retrieve({ user_embedding: embedding(4) }, { metadata: md });
        assert.equal(split(await spans()).children.length, STAGES.length);
        exporter.reset();
        s.running.server.config = configSchema.parse({ ...before, tracing: { sample_ratio: 1 } });
        await s.retrieval.retrieve({ user_embedding: embedding(4) });
        assert.equal(split(await spans()).children.length, STAGES.length);
      } finally {
        s.running.server.config = before;
      }
    });

    it('when the traceparent is malformed, then the server span starts a new trace', async () => {
      const md = new grpc.Metadata();
      md.set('traceparent', '00-not-a-trace-01');
      await s.retrieval.retrieve({ user_embedding: embedding(4) }, { metadata: md });
      const { server } = split(await spans());
      assert.equal(server.parentSpanContext, undefined);
      assert.match(server.spanContext().traceId, /^[0-9a-f]{32}$/);
    });

    it('when a Retrieve is INVALID_ARGUMENT, then the server span carries status code 3, is not an error (the caller erred) and has no stage spans', async () => {
      const err = await rpcError(s.retrieval.retrieve({ pipeline: 'nope' }));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      const { server, children } = split(await spans());
      assert.equal(server.name, 'funnel.v1.Retrieval/Retrieve');
      // OpenTelemetry RPC conventions: a caller's mistake is not a server error (status unset).
      assert.equal(server.status.code, SpanStatusCode.UNSET);
      assert.equal(server.attributes['rpc.grpc.status_code'], 3);
      assert.deepEqual(children, []);
    });
  });

  describe('initTracing', () => {
    it('when OTEL_TRACES_EXPORTER is unset or none, then there is no tracer', async () => {
      for (const env of [{}, { OTEL_TRACES_EXPORTER: 'none' }, { OTEL_TRACES_EXPORTER: '' }]) {
        const t = initTracing({ env });
        assert.equal(t.tracer, null, JSON.stringify(env));
        assert.deepEqual(t.exporters, []);
        await t.shutdown();
      }
    });

    it('when the exporter, protocol or sampler is unknown, then it throws TracingConfigError naming the variable', () => {
      const cases: [NodeJS.ProcessEnv, RegExp][] = [
        [{ OTEL_TRACES_EXPORTER: 'zipkin' }, /OTEL_TRACES_EXPORTER "zipkin"/],
        [{ OTEL_TRACES_EXPORTER: 'console,jaeger' }, /OTEL_TRACES_EXPORTER "jaeger"/],
        [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'thrift' }, /OTEL_EXPORTER_OTLP_PROTOCOL "thrift"/],
        [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http' }, /"http"/],
        [{ OTEL_TRACES_EXPORTER: 'console', OTEL_TRACES_SAMPLER: 'sometimes' }, /OTEL_TRACES_SAMPLER "sometimes"/],
        [{ OTEL_TRACES_EXPORTER: 'console', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '1.5' }, /OTEL_TRACES_SAMPLER_ARG/],
        [{ OTEL_TRACES_EXPORTER: 'console', OTEL_TRACES_SAMPLER_ARG: 'half' }, /OTEL_TRACES_SAMPLER_ARG/],
      ];
      for (const [env, message] of cases) {
        assert.throws(
          () => initTracing({ env }),
          (err: unknown) => err instanceof TracingConfigError && err.code === 'ERR_TRACING_CONFIG' && message.test(err.message),
          JSON.stringify(env),
        );
      }
    });

    it('when otlp is named with each protocol (or console), then there is a tracer labelled by its exporter', async () => {
      const cases: [NodeJS.ProcessEnv, string[]][] = [
        [{ OTEL_TRACES_EXPORTER: 'otlp' }, ['otlp/http-protobuf']],
        [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, ['otlp/grpc']],
        [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }, ['otlp/http-protobuf']],
        [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, ['otlp/http-json']],
        [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json' }, ['otlp/http-json']],
        [{ OTEL_TRACES_EXPORTER: ' OTLP , none', OTEL_TRACES_SAMPLER: 'parentbased_always_off' }, ['otlp/http-protobuf']],
        [{ OTEL_TRACES_EXPORTER: 'console', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }, ['console']],
      ];
      for (const [env, exporters] of cases) {
        const t = initTracing({ env, serviceVersion: '9.9.9' });
        try {
          assert.notEqual(t.tracer, null, JSON.stringify(env));
          assert.deepEqual(t.exporters, exporters, JSON.stringify(env));
        } finally {
          // No span was started, so nothing is sent anywhere.
          await t.shutdown();
        }
      }
    });

    it('when processors are injected, then OTEL_TRACES_EXPORTER is not read and the resource carries the service name and version', async () => {
      const exporter = new InMemorySpanExporter();
      const t = initTracing({
        env: { OTEL_TRACES_EXPORTER: 'zipkin', OTEL_SERVICE_NAME: 'funnel-test' },
        serviceVersion: '1.2.3',
        processors: [new SimpleSpanProcessor(exporter)],
        sampler: new AlwaysOnSampler(),
      });
      try {
        assert.deepEqual(t.exporters, ['injected']);
        t.tracer!.startRpc('svc', 'M', ROOT_CONTEXT, 1)!.end(0, 'OK');
        const [span] = exporter.getFinishedSpans();
        assert.equal(span.name, 'svc/M');
        assert.equal(span.resource.attributes['service.name'], 'funnel-test');
        assert.equal(span.resource.attributes['service.version'], '1.2.3');
      } finally {
        await t.shutdown();
      }
    });
  });
});
