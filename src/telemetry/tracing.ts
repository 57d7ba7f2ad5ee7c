/**
 * OpenTelemetry tracing configured by the standard environment variables:
 * OTEL_TRACES_EXPORTER (otlp, console, none; comma-separated; unset = none, so tracing costs
 * nothing unless asked for), OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (grpc, http/protobuf,
 * http/json), OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT and the rest of OTEL_EXPORTER_OTLP_* (read by
 * the exporters), OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG) (default
 * ParentBased(TraceIdRatio(1))), OTEL_BSP_* (batching).
 *
 * Spans are recorded by request-tracer.ts as flat rows and the OTLP exporter runs on a worker
 * thread (span-sinks.ts): the SDK's span objects and its on-thread serialisation cost about 20%
 * of the request thread at 100% sampling. No global registration: the server passes contexts
 * explicitly (W3C traceparent from gRPC metadata), so tests can run several tracers.
 */
import { ROOT_CONTEXT, type Context, type TextMapGetter } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  type Sampler,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import type { Metadata } from '@grpc/grpc-js';
import { otlpProtocol, TracingConfigError, type OtlpProtocol } from './otlp-exporter';
import { RequestTracer, type SpanSink } from './request-tracer';
import { ProcessorSink, WorkerSpanSink, type SpanExportStats } from './span-sinks';

/**
 * Options of initTracing (tests inject exporters and samplers; production reads the environment).
 * `env` covers the exporter list, protocol, sampler and service name; the OTLP exporters
 * (endpoint, headers, timeout), batching (OTEL_BSP_*) and OTEL_RESOURCE_ATTRIBUTES always read
 * process.env, when initTracing runs.
 */
export interface TracingOptions {
  env?: NodeJS.ProcessEnv;
  serviceVersion?: string;
  /** Use these processors instead of the ones OTEL_TRACES_EXPORTER names. */
  processors?: SpanProcessor[];
  sampler?: Sampler;
}

/** Tracing of the process: `tracer` is null when no exporter is configured. */
export interface Tracing {
  readonly tracer: RequestTracer | null;
  /** Exporters in use, for the start-up log line. */
  readonly exporters: string[];
  /** Spans exported, failed and dropped by the OTLP exporters so far; null without one. */
  spanStats(): SpanExportStats | null;
  /** Flushes and stops the exporters. */
  shutdown(): Promise<void>;
}

export { TracingConfigError };

function sumStats(all: SpanExportStats[]): SpanExportStats {
  return all.reduce((a, b) => ({ exported: a.exported + b.exported, failed: a.failed + b.failed, dropped: a.dropped + b.dropped }), { exported: 0, failed: 0, dropped: 0 });
}

function samplerFromEnv(env: NodeJS.ProcessEnv): Sampler {
  const name = (env.OTEL_TRACES_SAMPLER ?? 'parentbased_traceidratio').trim().toLowerCase();
  const argText = env.OTEL_TRACES_SAMPLER_ARG;
  const ratio = argText === undefined || argText === '' ? 1 : Number(argText);
  const needsRatio = name === 'traceidratio' || name === 'parentbased_traceidratio';
  if (needsRatio && !(ratio >= 0 && ratio <= 1)) throw new TracingConfigError(`OTEL_TRACES_SAMPLER_ARG must be a number in [0, 1], got "${argText}"`);
  switch (name) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(ratio);
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
    default:
      throw new TracingConfigError(`OTEL_TRACES_SAMPLER "${name}" is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)`);
  }
}

/** Fans spans out to several sinks. */
class MultiSink implements SpanSink {
  constructor(private readonly sinks: SpanSink[]) {}
  emit(rows: Parameters<SpanSink['emit']>[0]): void {
    for (const s of this.sinks) s.emit(rows);
  }
  async forceFlush(): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.forceFlush()));
  }
  async shutdown(): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.shutdown()));
  }
}

/** Sets tracing up from the environment (or the injected processors). */
export function initTracing(options: TracingOptions = {}): Tracing {
  const env = options.env ?? process.env;
  // Checked first, so a bad sampler never leaves exporters behind.
  const sampler = options.sampler ?? samplerFromEnv(env);
  const processors: SpanProcessor[] = [];
  const otlp: { protocol: OtlpProtocol; label: string }[] = [];
  const labels: string[] = [];
  if (options.processors) {
    processors.push(...options.processors);
    labels.push('injected');
  } else {
    const names = (env.OTEL_TRACES_EXPORTER ?? 'none')
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter((s) => s !== '');
    for (const name of names) {
      if (name === 'none') continue;
      if (name === 'otlp') {
        const o = otlpProtocol(env);
        otlp.push(o);
        labels.push(o.label);
      } else if (name === 'console') {
        processors.push(new BatchSpanProcessor(new ConsoleSpanExporter()));
        labels.push('console');
      } else {
        throw new TracingConfigError(`OTEL_TRACES_EXPORTER "${name}" is not supported (otlp, console, none)`);
      }
    }
  }
  if (processors.length === 0 && otlp.length === 0) return { tracer: null, exporters: [], spanStats: () => null, shutdown: async () => undefined };
  const detected = detectResources({ detectors: [envDetector] });
  const resource = resourceFromAttributes({
    'service.name': env.OTEL_SERVICE_NAME ?? 'funnel',
    'service.version': options.serviceVersion ?? 'unknown',
  }).merge(detected);
  const scope = { name: 'funnel', version: options.serviceVersion };
  // Serialisation and transport of OTLP run on a worker thread, not the request thread.
  const workers = otlp.map(({ protocol }) => new WorkerSpanSink({ protocol, resource: { attributes: { ...resource.attributes }, schemaUrl: resource.schemaUrl }, scope }));
  const sinks: SpanSink[] = [...workers];
  if (processors.length > 0) sinks.push(new ProcessorSink(processors, resource, scope));
  const sink = sinks.length === 1 ? sinks[0] : new MultiSink(sinks);
  return {
    tracer: new RequestTracer(sampler, sink),
    exporters: labels,
    spanStats: () => (workers.length === 0 ? null : sumStats(workers.map((w) => w.stats()))),
    shutdown: () => sink.shutdown(),
  };
}

const propagator = new W3CTraceContextPropagator();
const metadataGetter: TextMapGetter<Metadata> = {
  keys: (m) => Object.keys(m.getMap()),
  get: (m, key) => {
    const v = m.get(key);
    if (v.length === 0) return undefined;
    return v.map((x) => (typeof x === 'string' ? x : x.toString('utf8')));
  },
};

/** The caller's trace context from `traceparent`/`tracestate` metadata (root when absent or malformed). */
export function extractContext(metadata: Metadata): Context {
  return propagator.extract(ROOT_CONTEXT, metadata, metadataGetter);
}
