/**
 * `funnel root --shards "H:P,H:P;H:P,H:P"` (CONTRACT section 6): the fan-out in front of a
 * sharded cluster (src/root/). Prints the bound address once listening; SIGHUP re-reads the
 * config (also watched); SIGTERM drains and exits 0.
 */
import * as fs from 'node:fs';
import { defaultConfig, parseConfigText } from '../config/load';
import type { Config } from '../config/schema';
import { ConfigWatcher, type ReloadOutcome } from '../config/watch';
import { defaultLogger, packageVersion } from '../main';
import { parseShardList } from '../root/shards';
import { RootServer } from '../root/root-server';
import { Metrics, serveMetrics, type MetricsServer } from '../telemetry/metrics';
import { initTracing } from '../telemetry/tracing';

/** Options as commander parses them. */
export interface RootCommandOptions {
  shards: string;
  nats?: string;
  port: number;
  host: string;
  metricsPort: number;
  adminTokenFile?: string;
  config?: string;
  drainTimeoutMs: number;
}

/** Runs the root until SIGTERM; resolves to the exit code. */
export async function runRoot(opts: RootCommandOptions): Promise<number> {
  let shards: string[][];
  try {
    shards = parseShardList(opts.shards);
  } catch (err) {
    process.stderr.write(`funnel root: ${(err as Error).message}\n`);
    return 2;
  }
  const log = defaultLogger().child({ role: 'root' });
  let config: Config;
  let configText = '';
  try {
    if (opts.config) {
      configText = fs.readFileSync(opts.config, 'utf8');
      config = parseConfigText(configText, opts.config);
    } else config = defaultConfig();
  } catch (err) {
    process.stderr.write(`funnel root: ${(err as Error).message}\n`);
    return 2;
  }
  const tracing = initTracing({ serviceVersion: packageVersion() });
  const metrics = new Metrics();
  let adminToken: string | undefined;
  if (opts.adminTokenFile) {
    try {
      adminToken = fs.readFileSync(opts.adminTokenFile, 'utf8').trim();
    } catch (err) {
      process.stderr.write(`funnel root: cannot read --admin-token-file ${opts.adminTokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}\n`);
      return 2;
    }
    if (adminToken.length < 16) {
      process.stderr.write(`funnel root: ${opts.adminTokenFile}: the admin token must be at least 16 characters\n`);
      return 2;
    }
  }
  const root = new RootServer(config, { host: opts.host, port: opts.port, shards, drainTimeoutMs: opts.drainTimeoutMs, adminToken, nats: opts.nats }, log, { metrics, tracer: tracing.tracer });
  metrics.attach({
    inFlight: () => root.inFlightCount,
    eventLoopLagMs: () => root.loopLagMs,
    sizes: () => null,
    configVersion: () => root.config.version,
    dataSeq: () => null,
    traceSpans: () => tracing.spanStats(),
    liveReplicas: () => root.liveReplicas(),
  });
  let metricsServer: MetricsServer | null = null;
  let port: number;
  try {
    if (opts.metricsPort) metricsServer = await serveMetrics(metrics, opts.host, opts.metricsPort);
    port = await root.listen();
  } catch (err) {
    root.forceStop();
    await metricsServer?.close();
    await tracing.shutdown().catch(() => undefined);
    process.stderr.write(`funnel root: ${(err as Error).message}\n`);
    return 3;
  }
  const report = (o: ReloadOutcome) => {
    if (o.result === 'ok') {
      metrics.reload('ok');
      log.info({ file: opts.config, version: o.config.version }, 'config reloaded');
    } else if (o.result === 'error') {
      metrics.reload('error');
      log.error({ file: opts.config, issues: o.error.issues }, 'config refused; the previous config keeps serving');
    }
  };
  const watcher = opts.config ? new ConfigWatcher(opts.config, configText, (c) => (root.config = c), report).start() : undefined;
  return new Promise<number>((resolve) => {
    let signalled = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) return;
      signalled = true;
      log.info({ signal: sig, in_flight: root.inFlightCount }, 'draining');
      watcher?.stop();
      void root
        .drain()
        .then(async () => {
          await metricsServer?.close();
          await tracing.shutdown().catch(() => undefined);
          log.info({}, 'stopped');
          resolve(0);
        })
        .catch((err: Error) => {
          process.stderr.write(`funnel root: shutdown failed: ${err.message}\n`);
          resolve(3);
        });
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    process.on('SIGHUP', () => void watcher?.reload());
    process.stdout.write(
      `funnel root serving on ${opts.host}:${port} (${shards.length} shards, ${shards.map((s) => s.length).join('+')} replicas; ` +
        `metrics ${metricsServer ? `http://${opts.host}:${metricsServer.port}/metrics` : 'off'}; tracing ${tracing.exporters.join('+') || 'off'})\n`,
    );
  });
}
