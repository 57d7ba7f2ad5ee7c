/**
 * start()/stop() of a serving process: load the config, set up tracing and metrics, bind the
 * gRPC port (health answers NOT_SERVING while the data loads), load the data directory, serve,
 * and watch the config file for changes; stop() drains.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino, { type Logger } from 'pino';
import { defaultConfig, loadConfigFile, parseConfigText } from './config/load';
import type { Config } from './config/schema';
import { ConfigWatcher, type ReloadOutcome } from './config/watch';
import { FunnelServer, type ServerHooks, type TlsOptions } from './grpc/server';
import { ServingState, type StateOptions } from './serving/state';
import { Replica } from './cluster/replica';
import type { ShardSpec } from './cluster/shard';
import { Metrics, serveMetrics, type MetricsServer } from './telemetry/metrics';
import { RequestLog } from './telemetry/request-log';
import { FeatureLog } from './telemetry/feature-log';
import { initTracing, type Tracing, type TracingOptions } from './telemetry/tracing';

/** What start() needs. */
export interface StartOptions {
  dataDir: string;
  configFile?: string;
  /** A config object to use instead of a file (tests). */
  config?: Config;
  host?: string;
  port?: number;
  /** Port of the Prometheus /metrics endpoint; undefined or 0 = off. */
  metricsPort?: number;
  adminTokenFile?: string;
  tls?: TlsOptions;
  drainTimeoutMs?: number;
  logger?: Logger;
  hooks?: ServerHooks;
  /** Tracing set-up (default: from the OTEL_* environment). */
  tracing?: TracingOptions;
  /** Watch the config file for changes (default true when configFile is given). */
  watchConfig?: boolean;
  /** Log this share (0..1) of answered Retrieves to `dir` as JSON Lines (`--request-log`). */
  requestLog?: { dir: string; sample: number };
  /** Log the EarlyRanker features of sampled Retrieves to `dir` as JSON Lines (`--feature-log`; shares from config `feature_log`). */
  featureLog?: { dir: string; maxFileBytes?: number; maxFiles?: number; maxQueueBytes?: number };
  /** How the state shares its data directory with other processes (`--workers`). */
  stateOptions?: StateOptions;
  /**
   * Bind the port only once the data is loaded, and only once this resolves (to the port to
   * bind): a worker joining others that already serve must not take connections before then.
   */
  bindLate?: (state: ServingState) => Promise<number>;
  /**
   * A replica of shard `shard` of a sharded cluster (`--nats URL --shard I/N`): the data
   * directory (created when missing) is filled and kept current from the NATS JetStream stream.
   */
  cluster?: { nats: string; shard: ShardSpec };
}

/** A running server. */
export interface Running {
  server: FunnelServer;
  state: ServingState;
  host: string;
  port: number;
  /** Bound /metrics port, or null when metrics are off. */
  metricsPort: number | null;
  metrics: Metrics;
  tracing: Tracing;
  log: Logger;
  /** The request log, when `requestLog` was given. */
  requestLog?: RequestLog;
  /** The feature log, when `featureLog` was given. */
  featureLog?: FeatureLog;
  /** A replica of a sharded cluster: its link to the stream. */
  replica?: Replica;
  /** Re-reads the config file now (what SIGHUP does); resolves to what happened. */
  reloadConfig(): Promise<ReloadOutcome>;
  /** Drains in-flight calls, flushes the request and feature logs, checkpoints the ANN index, flushes traces, closes the store. */
  stop(): Promise<void>;
}

/** The package version (service.version of traces). */
export function packageVersion(): string {
  for (const p of [path.resolve(__dirname, '..', '..', 'package.json'), path.resolve(__dirname, '..', 'package.json')]) {
    try {
      return (JSON.parse(fs.readFileSync(p, 'utf8')) as { version: string }).version;
    } catch {
      /* try the next layout */
    }
  }
  return 'unknown';
}

/** The default logger: JSON lines on stderr (stdout is kept for the bound address). */
export function defaultLogger(): Logger {
  return pino({ name: 'funnel', level: process.env.FUNNEL_LOG_LEVEL ?? 'info' }, pino.destination(2));
}

function readToken(file: string): string {
  const token = fs.readFileSync(file, 'utf8').trim();
  if (token.length < 16) throw new Error(`${file}: the admin token must be at least 16 characters`);
  return token;
}

/** Starts a server on a data directory. */
export async function start(options: StartOptions): Promise<Running> {
  const log = options.logger ?? defaultLogger();
  let configText: string | undefined;
  let config: Config;
  if (options.config) config = options.config;
  else if (options.configFile) {
    configText = fs.existsSync(options.configFile) ? fs.readFileSync(options.configFile, 'utf8') : undefined;
    config = configText !== undefined ? parseConfigText(configText, options.configFile) : loadConfigFile(options.configFile);
  } else config = defaultConfig();
  const host = options.host ?? '127.0.0.1';
  const tracing = initTracing({ serviceVersion: packageVersion(), ...options.tracing });
  if (tracing.tracer) log.info({ exporters: tracing.exporters }, 'tracing on');
  const metrics = new Metrics();
  let requestLog: RequestLog | undefined;
  if (options.requestLog) {
    try {
      requestLog = new RequestLog({ ...options.requestLog, logger: log, onCount: (result, n) => metrics.requestLogLines(result, n) });
    } catch (err) {
      await tracing.shutdown().catch(() => undefined);
      throw new Error(`request log ${options.requestLog.dir}: ${(err as Error).message}`);
    }
  }
  let featureLog: FeatureLog | undefined;
  if (options.featureLog) {
    try {
      featureLog = new FeatureLog({ ...options.featureLog, logger: log, onCount: (result, n) => metrics.featureLogLines(result, n) });
    } catch (err) {
      await requestLog?.close();
      await tracing.shutdown().catch(() => undefined);
      throw new Error(`feature log ${options.featureLog.dir}: ${(err as Error).message}`);
    }
  }
  const server = new FunnelServer(
    config,
    {
      host,
      port: options.port ?? 50051,
      adminToken: options.adminTokenFile ? readToken(options.adminTokenFile) : undefined,
      tls: options.tls,
      drainTimeoutMs: options.drainTimeoutMs ?? 10_000,
    },
    log,
    options.hooks,
    { metrics, tracer: tracing.tracer, requestLog, featureLog },
  );
  metrics.attach({
    inFlight: () => server.inFlightCount,
    eventLoopLagMs: () => server.eventLoopLagMs,
    sizes: () => server.servingState?.sizes() ?? null,
    configVersion: () => server.config.version,
    dataSeq: () => server.servingState?.appliedSeq ?? null,
    traceSpans: () => tracing.spanStats(),
    replication: () => replica?.status() ?? null,
  });
  const replica = options.cluster
    ? new Replica(options.cluster.nats, options.cluster.shard, config, log, {
        applied: (kind) => metrics.replicationApplied(kind),
        parked: (reason) => metrics.replicationParked(reason),
        snapshot: (outcome, seconds) => metrics.replicationSnapshot(outcome, seconds),
      })
    : undefined;
  let metricsServer: MetricsServer | null = null;
  let port: number;
  let state: ServingState;
  try {
    if (options.metricsPort) metricsServer = await serveMetrics(metrics, host, options.metricsPort);
    if (options.bindLate) {
      state = await ServingState.open(options.dataDir, config, log, options.stateOptions);
      try {
        port = await server.listen(await options.bindLate(state));
      } catch (err) {
        await state.close();
        throw err;
      }
    } else {
      port = await server.listen();
      if (replica) {
        // Health says NOT_SERVING meanwhile: the shard's writes are applied before anything is served.
        const boot = await replica.bootstrap(options.dataDir);
        log.info({ shard: `${options.cluster!.shard.index}/${options.cluster!.shard.count}`, ...boot }, boot.snapshot ? 'replica bootstrapped from a snapshot and the stream' : 'replica bootstrapped from the stream');
      }
      state = await ServingState.open(options.dataDir, config, log, options.stateOptions);
    }
  } catch (err) {
    await replica?.close();
    server.forceStop();
    await metricsServer?.close();
    await requestLog?.close();
    await featureLog?.close();
    await tracing.shutdown().catch(() => undefined);
    throw err;
  }
  state.startUpkeep();
  if (replica) {
    await replica.serve(state);
    server.attachReplica(replica);
  }
  server.attach(state);
  const report = (o: ReloadOutcome) => {
    if (o.result === 'ok') {
      metrics.reload('ok');
      log.info({ file: options.configFile, version: o.config.version }, 'config reloaded');
    } else if (o.result === 'error') {
      metrics.reload('error');
      log.error({ file: options.configFile, issues: o.error.issues }, 'config refused; the previous config keeps serving');
    }
  };
  const watcher = options.configFile
    ? new ConfigWatcher(options.configFile, configText ?? '', (c) => {
        server.config = c;
      }, report)
    : undefined;
  if (watcher && options.watchConfig !== false) watcher.start();
  let stopping: Promise<void> | undefined;
  return {
    server,
    state,
    host,
    port,
    metricsPort: metricsServer?.port ?? null,
    metrics,
    tracing,
    log,
    requestLog,
    featureLog,
    replica,
    reloadConfig: () =>
      watcher
        ? watcher.reload()
        : Promise.resolve({ result: 'unchanged' } as ReloadOutcome),
    stop() {
      stopping ??= (async () => {
        watcher?.stop();
        await server.drain();
        // Every answered Retrieve has been recorded once the drain is over.
        await requestLog?.close();
        await featureLog?.close();
        await replica?.close();
        await state.close();
        await metricsServer?.close();
        // A collector that is down must not turn a clean drain into a failed exit.
        await tracing.shutdown().catch((err: Error) => log.warn({ err: err.message }, 'flushing traces at shutdown failed; the last spans are lost'));
      })();
      return stopping;
    },
  };
}
