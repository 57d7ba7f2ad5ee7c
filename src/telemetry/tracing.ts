/**
 * OpenTelemetry tracing configured by the standard environment variables:
 * OTEL_TRACES_EXPORTER (otlp, console, none; comma-separated; unset = none, so tracing costs
 * nothing unless asked for), OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (grpc, http/protobuf,
 * http/json), OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT (read by the exporters), OTEL_SERVICE_NAME,
 * OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG) (default ParentBased(TraceIdRatio(1))),
 * OTEL_BSP_* (BatchSpanProcessor). No global registration: the server passes contexts
 * explicitly (W3C traceparent from gRPC metadata), so tests can run several providers.
 */
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span, type TextMapGetter, type Tracer } from '@opentelemetry/api';
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
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import type { Metadata } from '@grpc/grpc-js';
import type { StageObserver } from '../pipeline/run-stage';
import type { StageReport } from '../pipeline/types';

/** A tracing set-up problem (unknown exporter or protocol, bad sampler argument). */
export class TracingConfigError extends Error {
  readonly code = 'ERR_TRACING_CONFIG';
}

/**
 * Options of initTracing (tests inject exporters and samplers; production reads the environment).
 * `env` covers the exporter list, protocol, sampler and service name; the OTLP exporters
 * (endpoint, headers, timeout), the BatchSpanProcessor (OTEL_BSP_*) and OTEL_RESOURCE_ATTRIBUTES
 * always read process.env.
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
  readonly tracer: Tracer | null;
  /** Exporters in use, for the start-up log line. */
  readonly exporters: string[];
  /** Flushes and stops the exporters. */
  shutdown(): Promise<void>;
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

function otlpExporter(env: NodeJS.ProcessEnv): { exporter: SpanExporter; label: string } {
  const protocol = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf').trim();
  switch (protocol) {
    case 'grpc': {
      // Loaded on demand: each exporter pulls in its own transport.
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc') as typeof import('@opentelemetry/exporter-trace-otlp-grpc');
      return { exporter: new OTLPTraceExporter(), label: 'otlp/grpc' };
    }
    case 'http/protobuf': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto') as typeof import('@opentelemetry/exporter-trace-otlp-proto');
      return { exporter: new OTLPTraceExporter(), label: 'otlp/http-protobuf' };
    }
    case 'http/json': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http');
      return { exporter: new OTLPTraceExporter(), label: 'otlp/http-json' };
    }
    default:
      throw new TracingConfigError(`OTEL_EXPORTER_OTLP_PROTOCOL "${protocol}" is not supported (grpc, http/protobuf, http/json)`);
  }
}

/** Sets tracing up from the environment (or the injected processors). */
export function initTracing(options: TracingOptions = {}): Tracing {
  const env = options.env ?? process.env;
  // Checked first, so a bad sampler never leaves exporters behind.
  const sampler = options.sampler ?? samplerFromEnv(env);
  let processors = options.processors;
  const labels: string[] = [];
  if (!processors) {
    const names = (env.OTEL_TRACES_EXPORTER ?? 'none')
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter((s) => s !== '');
    processors = [];
    for (const name of names) {
      if (name === 'none') continue;
      if (name === 'otlp') {
        const { exporter, label } = otlpExporter(env);
        processors.push(new BatchSpanProcessor(exporter));
        labels.push(label);
      } else if (name === 'console') {
        processors.push(new BatchSpanProcessor(new ConsoleSpanExporter()));
        labels.push('console');
      } else {
        throw new TracingConfigError(`OTEL_TRACES_EXPORTER "${name}" is not supported (otlp, console, none)`);
      }
    }
  } else {
    labels.push('injected');
  }
  if (processors.length === 0) return { tracer: null, exporters: [], shutdown: async () => undefined };
  const detected = detectResources({ detectors: [envDetector] });
  const resource = resourceFromAttributes({
    'service.name': env.OTEL_SERVICE_NAME ?? 'funnel',
    'service.version': options.serviceVersion ?? 'unknown',
  }).merge(detected);
  const provider = new NodeTracerProvider({ resource, sampler, spanProcessors: processors });
  return {
    tracer: provider.getTracer('funnel', options.serviceVersion),
    exporters: labels,
    shutdown: () => provider.shutdown(),
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

/** Starts the server span of an RPC (OpenTelemetry RPC conventions), child of the caller's context. */
export function startRpcSpan(tracer: Tracer, service: string, method: string, metadata: Metadata, port: number): { span: Span; context: Context } {
  const parent = extractContext(metadata);
  const span = tracer.startSpan(
    `${service}/${method}`,
    {
      kind: SpanKind.SERVER,
      attributes: { 'rpc.system': 'grpc', 'rpc.service': service, 'rpc.method': method, 'server.port': port },
    },
    parent,
  );
  return { span, context: trace.setSpan(parent, span) };
}

/**
 * gRPC codes that make a SERVER span an error (OpenTelemetry RPC conventions): the server's own
 * failures, not the caller's mistakes or refusals (INVALID_ARGUMENT, UNAUTHENTICATED,
 * RESOURCE_EXHAUSTED, ... leave the status unset).
 */
const SERVER_ERROR_CODES = new Set([2 /* UNKNOWN */, 4 /* DEADLINE_EXCEEDED */, 12 /* UNIMPLEMENTED */, 13 /* INTERNAL */, 14 /* UNAVAILABLE */, 15 /* DATA_LOSS */]);

/** Ends an RPC span with its gRPC status code; the span is an error only for server-side failure codes. */
export function endRpcSpan(span: Span, code: number, codeName: string, details?: string): void {
  span.setAttribute('rpc.grpc.status_code', code);
  if (SERVER_ERROR_CODES.has(code)) span.setStatus({ code: SpanStatusCode.ERROR, message: details ? `${codeName}: ${details}` : codeName });
  span.end();
}

/** A stage observer that opens `funnel.stage <Name>` child spans of `parent`; `also` receives every report too (metrics). */
export function stageSpans(tracer: Tracer, parent: Context, also?: (r: StageReport) => void): StageObserver {
  return {
    start(name) {
      const span = tracer.startSpan(`funnel.stage ${name}`, { kind: SpanKind.INTERNAL }, parent);
      return (r) => {
        also?.(r);
        const prefix = `funnel.${r.name.toLowerCase()}.`;
        span.setAttributes({
          'funnel.stage': r.name,
          'funnel.candidates_in': r.candidatesIn,
          'funnel.candidates_out': r.candidatesOut,
          'funnel.stage.status': r.status,
        });
        if (r.limitMs !== undefined) span.setAttribute('funnel.stage.timeout_ms', r.limitMs);
        for (const [k, v] of Object.entries(r.detail)) span.setAttribute(prefix + k, v);
        if (r.status === 'timeout' || r.status === 'error') {
          span.setStatus({ code: SpanStatusCode.ERROR, message: r.status === 'timeout' ? `timed out: ${r.error ?? ''}` : (r.error ?? 'error') });
        }
        span.end();
      };
    },
  };
}
