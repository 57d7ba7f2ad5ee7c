/**
 * The spans of a Retrieve (or Admin) call: one SERVER span and one `funnel.stage <Name>` child
 * per stage, recorded as flat rows (span-row.ts) and handed to the span sink as each ends.
 *
 * Why not the SDK's Tracer: at 100% sampling a Retrieve makes nine spans, and the SDK's span
 * objects alone (a no-op processor) added 0.10 to 0.15 ms of request-thread time per call on
 * the 1M-ad data set, with the BatchSpanProcessor's serialisation on top: about 20% of the
 * request thread, where the target is 10%. Here a span is one array, its ids come from a pooled
 * random buffer, and serialisation happens on the export worker. The SDK still does everything
 * else: the sampler (OTEL_TRACES_SAMPLER), W3C propagation, and the OTLP exporters; injected
 * SpanProcessors (tests, the console exporter) receive ordinary ReadableSpans.
 */
import { randomFillSync } from 'node:crypto';
import { SamplingDecision, SpanKind, SpanStatusCode, trace, type Attributes, type AttributeValue, type Context } from '@opentelemetry/api';
import { ParentBasedSampler, TraceIdRatioBasedSampler, type Sampler } from '@opentelemetry/sdk-trace-base';
import type { StageObserver } from '../pipeline/run-stage';
import type { StageReport } from '../pipeline/types';
import { type FlatAttributes, type SpanRow } from './span-row';

/** Where finished spans go: the OTLP export worker, or SDK span processors. */
export interface SpanSink {
  /** Takes finished spans: a stage's as it ends, the server span's when its call ends. */
  emit(rows: SpanRow[]): void;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

/**
 * gRPC codes that make a SERVER span an error (OpenTelemetry RPC conventions): the server's own
 * failures, not the caller's mistakes or refusals (INVALID_ARGUMENT, UNAUTHENTICATED,
 * RESOURCE_EXHAUSTED, ... leave the status unset).
 */
const SERVER_ERROR_CODES = new Set([2 /* UNKNOWN */, 4 /* DEADLINE_EXCEEDED */, 12 /* UNIMPLEMENTED */, 13 /* INTERNAL */, 14 /* UNAVAILABLE */, 15 /* DATA_LOSS */]);

const POOL_BYTES = 8 * 1024;
const pool = new Uint8Array(POOL_BYTES);
let poolAt = POOL_BYTES;
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const ZERO_8 = '0'.repeat(16);
const ZERO_16 = '0'.repeat(32);

/**
 * `bytes` random bytes as lower-case hex, never all zeros (an invalid id). From a pooled
 * crypto-random buffer, written out through a byte-to-hex table: Buffer#toString('hex') per id
 * cost about 3 µs (a call into C++ each time).
 */
function randomId(bytes: 8 | 16): string {
  for (;;) {
    if (poolAt + bytes > POOL_BYTES) {
      randomFillSync(pool);
      poolAt = 0;
    }
    let id = '';
    for (let i = 0; i < bytes; i++) id += HEX[pool[poolAt + i]];
    poolAt += bytes;
    if (id !== (bytes === 8 ? ZERO_8 : ZERO_16)) return id;
  }
}

/** Per stage name: its span name and attribute prefix, built once. */
const stageNames = new Map<string, { span: string; prefix: string }>();
function namesOf(stage: string): { span: string; prefix: string } {
  let n = stageNames.get(stage);
  if (!n) {
    n = { span: `funnel.stage ${stage}`, prefix: `funnel.${stage.toLowerCase()}.` };
    stageNames.set(stage, n);
  }
  return n;
}

function flatten(attributes: Attributes, into: FlatAttributes): void {
  for (const key in attributes) {
    const v = attributes[key];
    if (v !== undefined && v !== null) into.push(key, v);
  }
}

/** Starts the spans of calls, sampling each with the configured sampler. */
export class RequestTracer {
  private sampler: Sampler;
  private ratio: number | null = null;

  constructor(
    private readonly configured: Sampler,
    private readonly sink: SpanSink,
  ) {
    this.sampler = configured;
  }

  /**
   * Samples new traces with probability `ratio` from now on, following the caller's decision
   * when it sends one (ParentBased(TraceIdRatio)); null goes back to the sampler the tracer was
   * made with (OTEL_TRACES_SAMPLER). Config `tracing.sample_ratio`, applied on reload.
   */
  setSampleRatio(ratio: number | null): void {
    if (ratio === this.ratio) return;
    this.ratio = ratio;
    this.sampler = ratio === null ? this.configured : new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
  }

  /**
   * The trace of a call whose caller's context (from its traceparent) is `parent`; null when the
   * sampler drops it (then nothing of the call is recorded). Attributes are the SERVER span's
   * (OpenTelemetry RPC conventions).
   */
  startRpc(service: string, method: string, parent: Context, port: number): RequestTrace | null {
    const caller = trace.getSpanContext(parent);
    const callerValid = caller !== undefined && trace.isSpanContextValid(caller);
    const traceId = callerValid ? caller.traceId : randomId(16);
    const name = `${service}/${method}`;
    const attributes: Attributes = { 'rpc.system': 'grpc', 'rpc.service': service, 'rpc.method': method, 'server.port': port };
    const decision = this.sampler.shouldSample(parent, traceId, name, SpanKind.SERVER, attributes, []);
    // RECORD without SAMPLED would record spans that no exporter sends: treated as dropped.
    if (decision.decision !== SamplingDecision.RECORD_AND_SAMPLED) return null;
    if (decision.attributes) Object.assign(attributes, decision.attributes);
    const traceState = (decision.traceState ?? (callerValid ? caller.traceState : undefined))?.serialize() ?? '';
    return new RequestTrace(this.sink, traceId, name, callerValid ? caller.spanId : '', traceState, attributes);
  }
}

/** The recorded spans of one sampled call. */
export class RequestTrace {
  readonly spanId = randomId(8);
  private readonly attributes: FlatAttributes = [];
  private readonly started = performance.now();
  private ended = false;

  constructor(
    private readonly sink: SpanSink,
    readonly traceId: string,
    private readonly name: string,
    private readonly parentSpanId: string,
    private readonly traceState: string,
    attributes: Attributes,
  ) {
    flatten(attributes, this.attributes);
  }

  /** Adds attributes to the SERVER span. */
  setAttributes(attributes: Record<string, AttributeValue>): void {
    flatten(attributes, this.attributes);
  }

  /**
   * A stage observer that records a `funnel.stage <Name>` child span per stage: stage, candidates
   * in and out, status, time limit, the stage's own notes as `funnel.<stage>.<key>`, and an error
   * status when it timed out or failed. `also` receives every report too (metrics).
   */
  stageObserver(also?: (r: StageReport) => void): StageObserver {
    return {
      start: (name) => {
        const start = performance.now();
        return (r) => {
          also?.(r);
          const attrs: FlatAttributes = [
            'funnel.stage',
            r.name,
            'funnel.candidates_in',
            r.candidatesIn,
            'funnel.candidates_out',
            r.candidatesOut,
            'funnel.stage.status',
            r.status,
          ];
          if (r.limitMs !== undefined) attrs.push('funnel.stage.timeout_ms', r.limitMs);
          const names = namesOf(name);
          for (const k in r.detail) attrs.push(names.prefix + k, r.detail[k]);
          for (const k in r.dropped) attrs.push('funnel.dropped.' + k, r.dropped[k]);
          const failed = r.status === 'timeout' || r.status === 'error';
          const row: SpanRow = [
            this.traceId,
            randomId(8),
            this.spanId,
            1,
            0,
            this.traceState,
            names.span,
            SpanKind.INTERNAL,
            start,
            performance.now(),
            failed ? SpanStatusCode.ERROR : SpanStatusCode.UNSET,
            failed ? (r.status === 'timeout' ? `timed out: ${r.error ?? ''}` : (r.error ?? 'error')) : '',
            attrs,
          ];
          // Sent now rather than with the server span: under load a call lasts 100+ ms, long
          // enough for rows held to its end to be promoted to the old generation.
          this.sink.emit([row]);
        };
      },
    };
  }

  /**
   * A CLIENT child span for a call to another service (the root's call to a shard): its W3C
   * `traceparent`, to send with the call so the callee's span hangs under it, and `end`.
   */
  clientSpan(name: string): { traceparent: string; end(attributes: Record<string, AttributeValue>, error?: string): void } {
    const spanId = randomId(8);
    const start = performance.now();
    return {
      traceparent: `00-${this.traceId}-${spanId}-01`,
      end: (attributes, error) => {
        const attrs: FlatAttributes = [];
        flatten(attributes, attrs);
        this.sink.emit([
          [this.traceId, spanId, this.spanId, 1, 0, this.traceState, name, SpanKind.CLIENT, start, performance.now(), error ? SpanStatusCode.ERROR : SpanStatusCode.UNSET, error ?? '', attrs],
        ]);
      },
    };
  }

  /** Ends the SERVER span with the call's gRPC status (an error only for server-side codes) and hands it to the sink. */
  end(code: number, codeName: string, details?: string): void {
    if (this.ended) return;
    this.ended = true;
    this.attributes.push('rpc.grpc.status_code', code);
    const failed = SERVER_ERROR_CODES.has(code);
    this.sink.emit([[
      this.traceId,
      this.spanId,
      this.parentSpanId,
      1,
      this.parentSpanId === '' ? 0 : 1,
      this.traceState,
      this.name,
      SpanKind.SERVER,
      this.started,
      performance.now(),
      failed ? SpanStatusCode.ERROR : SpanStatusCode.UNSET,
      failed ? (details ? `${codeName}: ${details}` : codeName) : '',
      this.attributes,
    ]]);
  }
}

