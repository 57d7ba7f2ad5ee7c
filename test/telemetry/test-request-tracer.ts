/**
 * RequestTracer and its rows: sampling per call, ids, the parent of a continued trace, the stage
 * child spans, and the ReadableSpans the rows turn back into.
 */
import { strict as assert } from 'node:assert';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace } from '@opentelemetry/api';
import { TraceState, hrTimeToMilliseconds } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { AlwaysOffSampler, AlwaysOnSampler, ParentBasedSampler, TraceIdRatioBasedSampler } from '@opentelemetry/sdk-trace-base';
import type { StageReport } from '../../src/pipeline/types';
import { RequestTracer, type SpanSink } from '../../src/telemetry/request-tracer';
import { Col, timeOriginHr, toReadableSpan, type SpanRow } from '../../src/telemetry/span-row';

/** A sink that keeps every emit. */
class Collect implements SpanSink {
  readonly batches: SpanRow[][] = [];
  emit(rows: SpanRow[]): void {
    this.batches.push([...rows]);
  }
  async forceFlush(): Promise<void> {}
  async shutdown(): Promise<void> {}
  get rows(): SpanRow[] {
    return this.batches.flat();
  }
}

function report(name: string, over: Partial<StageReport> = {}): StageReport {
  return { name, status: 'ok', candidatesIn: 10, candidatesOut: 4, latencyMs: 1, limitMs: 20, detail: {}, dropped: {}, ...over };
}

const CALLER_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CALLER_SPAN = '00f067aa0ba902b7';

describe('RequestTracer', () => {
  it('when a call is sampled, then each stage span is emitted as it ends and the server span at the end, the stages its children', () => {
    const sink = new Collect();
    const t = new RequestTracer(new AlwaysOnSampler(), sink).startRpc('funnel.v1.Retrieval', 'Retrieve', ROOT_CONTEXT, 50051)!;
    assert.ok(t);
    const obs = t.stageObserver();
    obs.start('Ann', undefined as never)(report('Ann', { detail: { plan: 'graph', allowed: 12 } }));
    obs.start('Merge', undefined as never)(report('Merge', { status: 'timeout', error: 'stage Merge took over 20 ms' }));
    assert.equal(sink.batches.length, 2, 'a stage span leaves as it ends');
    t.setAttributes({ 'funnel.pipeline': 'default' });
    t.end(0, 'OK');
    t.end(13, 'INTERNAL');
    assert.equal(sink.batches.length, 3, 'end() twice is a no-op');
    const [ann, merge, server] = sink.rows;
    assert.match(server[Col.TraceId], /^[0-9a-f]{32}$/);
    assert.match(server[Col.SpanId], /^[0-9a-f]{16}$/);
    assert.equal(server[Col.ParentSpanId], '');
    assert.equal(server[Col.Name], 'funnel.v1.Retrieval/Retrieve');
    assert.equal(server[Col.Kind], SpanKind.SERVER);
    assert.equal(server[Col.StatusCode], SpanStatusCode.UNSET);
    for (const child of [ann, merge]) {
      assert.equal(child[Col.TraceId], server[Col.TraceId]);
      assert.equal(child[Col.ParentSpanId], server[Col.SpanId]);
      assert.notEqual(child[Col.SpanId], server[Col.SpanId]);
      assert.equal(child[Col.Kind], SpanKind.INTERNAL);
      assert.ok(child[Col.Start] >= server[Col.Start] && child[Col.End] <= server[Col.End]);
    }
    assert.equal(ann[Col.Name], 'funnel.stage Ann');
    const span = toReadableSpan(ann, resourceFromAttributes({ 'service.name': 'x' }), { name: 'funnel' }, timeOriginHr());
    assert.deepEqual(span.attributes, {
      'funnel.stage': 'Ann',
      'funnel.candidates_in': 10,
      'funnel.candidates_out': 4,
      'funnel.stage.status': 'ok',
      'funnel.stage.timeout_ms': 20,
      'funnel.ann.plan': 'graph',
      'funnel.ann.allowed': 12,
    });
    assert.equal(merge[Col.StatusCode], SpanStatusCode.ERROR);
    assert.match(merge[Col.StatusMessage], /^timed out: stage Merge/);
    const serverSpan = toReadableSpan(server, resourceFromAttributes({}), { name: 'funnel' }, timeOriginHr());
    assert.equal(serverSpan.attributes['rpc.grpc.status_code'], 0);
    assert.equal(serverSpan.attributes['funnel.pipeline'], 'default');
    assert.equal(serverSpan.attributes['rpc.method'], 'Retrieve');
    assert.equal(serverSpan.attributes['server.port'], 50051);
  });

  it('when the server-side code is an error code, then the server span is an error; a caller error code is not', () => {
    const sink = new Collect();
    const tracer = new RequestTracer(new AlwaysOnSampler(), sink);
    tracer.startRpc('s', 'M', ROOT_CONTEXT, 1)!.end(13, 'INTERNAL', 'boom');
    tracer.startRpc('s', 'M', ROOT_CONTEXT, 1)!.end(3, 'INVALID_ARGUMENT', 'bad field');
    assert.equal(sink.rows[0][Col.StatusCode], SpanStatusCode.ERROR);
    assert.equal(sink.rows[0][Col.StatusMessage], 'INTERNAL: boom');
    assert.equal(sink.rows[1][Col.StatusCode], SpanStatusCode.UNSET);
    assert.equal(sink.rows[1][Col.StatusMessage], '');
  });

  it("when the caller's context is sampled, then the call continues its trace with a remote parent and its tracestate", () => {
    const sink = new Collect();
    const parent = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: CALLER_TRACE,
      spanId: CALLER_SPAN,
      traceFlags: TraceFlags.SAMPLED,
      isRemote: true,
      traceState: new TraceState('vendor=abc'),
    });
    new RequestTracer(new ParentBasedSampler({ root: new AlwaysOffSampler() }), sink).startRpc('s', 'M', parent, 1)!.end(0, 'OK');
    const [row] = sink.rows;
    assert.equal(row[Col.TraceId], CALLER_TRACE);
    assert.equal(row[Col.ParentSpanId], CALLER_SPAN);
    assert.equal(row[Col.ParentRemote], 1);
    const span = toReadableSpan(row, resourceFromAttributes({}), { name: 'funnel' }, timeOriginHr());
    assert.equal(span.parentSpanContext?.spanId, CALLER_SPAN);
    assert.equal(span.parentSpanContext?.isRemote, true);
    assert.equal(span.spanContext().traceState?.get('vendor'), 'abc');
  });

  it("when the sampler drops the call (or the caller's context is not sampled under ParentBased), then nothing is recorded", () => {
    const sink = new Collect();
    assert.equal(new RequestTracer(new AlwaysOffSampler(), sink).startRpc('s', 'M', ROOT_CONTEXT, 1), null);
    const unsampled = trace.setSpanContext(ROOT_CONTEXT, { traceId: CALLER_TRACE, spanId: CALLER_SPAN, traceFlags: TraceFlags.NONE, isRemote: true });
    assert.equal(new RequestTracer(new ParentBasedSampler({ root: new AlwaysOnSampler() }), sink).startRpc('s', 'M', unsampled, 1), null);
    assert.equal(sink.rows.length, 0);
  });

  it('when the ratio is 0.25, then about a quarter of new traces are sampled and every id is distinct', () => {
    const sink = new Collect();
    const tracer = new RequestTracer(new TraceIdRatioBasedSampler(0.25), sink);
    let sampled = 0;
    for (let i = 0; i < 4000; i++) {
      const t = tracer.startRpc('s', 'M', ROOT_CONTEXT, 1);
      if (t) {
        sampled++;
        t.end(0, 'OK');
      }
    }
    // Binomial(4000, 0.25): sd 27; 8 sd either side.
    assert.ok(sampled > 780 && sampled < 1220, `sampled ${sampled}`);
    const ids = new Set(sink.rows.map((r) => r[Col.SpanId]));
    assert.equal(ids.size, sink.rows.length);
  });

  it('when the sample ratio is set, then it replaces the configured sampler for new traces, and null restores it', () => {
    const sink = new Collect();
    const tracer = new RequestTracer(new AlwaysOffSampler(), sink);
    assert.equal(tracer.startRpc('s', 'M', ROOT_CONTEXT, 1), null);
    tracer.setSampleRatio(1);
    assert.ok(tracer.startRpc('s', 'M', ROOT_CONTEXT, 1));
    tracer.setSampleRatio(0);
    assert.equal(tracer.startRpc('s', 'M', ROOT_CONTEXT, 1), null);
    const sampledCaller = trace.setSpanContext(ROOT_CONTEXT, { traceId: CALLER_TRACE, spanId: CALLER_SPAN, traceFlags: TraceFlags.SAMPLED, isRemote: true });
    assert.ok(tracer.startRpc('s', 'M', sampledCaller, 1), 'ParentBased: the caller sampled it');
    tracer.setSampleRatio(null);
    assert.equal(tracer.startRpc('s', 'M', sampledCaller, 1), null, 'AlwaysOff again');
  });

  it('when a stage reports after its call ended, then its span is still emitted and names the server span as parent', () => {
    const sink = new Collect();
    const t = new RequestTracer(new AlwaysOnSampler(), sink).startRpc('s', 'M', ROOT_CONTEXT, 1)!;
    const late = t.stageObserver().start('Ann', undefined as never);
    t.end(0, 'OK');
    late(report('Ann'));
    assert.equal(sink.batches.length, 2);
    assert.equal(sink.batches[1][0][Col.ParentSpanId], sink.batches[0][0][Col.SpanId]);
  });

  it('when a row is read back, then its times are the performance.now() readings on the epoch clock', () => {
    const now = performance.now();
    const row: SpanRow = [CALLER_TRACE, CALLER_SPAN, '', 1, 0, '', 'n', SpanKind.INTERNAL, now, now + 2.5, SpanStatusCode.UNSET, '', []];
    const span = toReadableSpan(row, resourceFromAttributes({}), { name: 'funnel' }, timeOriginHr());
    assert.ok(Math.abs(hrTimeToMilliseconds(span.startTime) - (performance.timeOrigin + now)) < 0.01);
    assert.ok(Math.abs(hrTimeToMilliseconds(span.duration) - 2.5) < 0.001);
    assert.equal(span.parentSpanContext, undefined);
    assert.equal(span.spanContext().traceState, undefined);
  });
});
