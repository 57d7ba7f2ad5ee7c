/**
 * The OTLP span exporter OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names. Shared by the main thread,
 * which checks the protocol, and the export worker, which builds and runs the exporter.
 */
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';

/** A tracing set-up problem (unknown exporter or protocol, bad sampler argument). */
export class TracingConfigError extends Error {
  readonly code = 'ERR_TRACING_CONFIG';
}

/** OTLP transports, as OTEL_EXPORTER_OTLP_PROTOCOL spells them. */
export type OtlpProtocol = 'grpc' | 'http/protobuf' | 'http/json';

const LABELS: Record<OtlpProtocol, string> = { grpc: 'otlp/grpc', 'http/protobuf': 'otlp/http-protobuf', 'http/json': 'otlp/http-json' };

/** The protocol `env` asks for (default http/protobuf, as the specification says), and its log label. */
export function otlpProtocol(env: NodeJS.ProcessEnv): { protocol: OtlpProtocol; label: string } {
  const protocol = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf').trim();
  if (!(protocol in LABELS)) {
    throw new TracingConfigError(`OTEL_EXPORTER_OTLP_PROTOCOL "${protocol}" is not supported (grpc, http/protobuf, http/json)`);
  }
  return { protocol: protocol as OtlpProtocol, label: LABELS[protocol as OtlpProtocol] };
}

/**
 * A new exporter of `protocol`. It reads its endpoint, headers, timeout and compression from
 * process.env (OTEL_EXPORTER_OTLP_*). Each package is loaded on demand: each pulls in its own
 * transport.
 */
export function createOtlpExporter(protocol: OtlpProtocol): SpanExporter {
  switch (protocol) {
    case 'grpc': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc') as typeof import('@opentelemetry/exporter-trace-otlp-grpc');
      return new OTLPTraceExporter();
    }
    case 'http/protobuf': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto') as typeof import('@opentelemetry/exporter-trace-otlp-proto');
      return new OTLPTraceExporter();
    }
    case 'http/json': {
      const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http');
      return new OTLPTraceExporter();
    }
  }
}
