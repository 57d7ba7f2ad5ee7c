/**
 * `funnel serve`: serves both services on a data directory until SIGTERM/SIGINT, then drains and
 * exits 0. With `--workers N` (N > 1) this process is the primary of N worker processes
 * (src/cluster/); each worker runs this same command and lands in the worker branch.
 */
import cluster from 'node:cluster';
import * as os from 'node:os';
import * as path from 'node:path';
import { runPrimary } from '../cluster/primary';
import { joinPrimary, type WorkerLink } from '../cluster/worker';
import { defaultLogger, start, type Running } from '../main';
import { parseShardSpec, type ShardSpec } from '../cluster/shard';

/** Options as commander parses them. */
export interface ServeCommandOptions {
  data: string;
  config?: string;
  port: number;
  host: string;
  /** Prometheus /metrics port; 0 = off. */
  metricsPort: number;
  adminTokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  drainTimeoutMs: number;
  /** Directory of the Retrieve request log; absent = no log. */
  requestLog?: string;
  /** Share of Retrieves logged, 0..1 (default 0.01 with requestLog). */
  requestLogSample?: number;
  /** Directory of the EarlyRanker feature log; absent = no log (which Retrieves: config `feature_log`). */
  featureLog?: string;
  /** Serving processes on the port (default: the available cores; 1 = this process serves). */
  workers?: number;
  /** NATS server URL(s): this process is a replica of `--shard` in a sharded cluster. */
  nats?: string;
  /** `I/N`: the shard this replica serves (with --nats). */
  shard?: string;
}

/** `--workers` when not given: one per available core. */
export function defaultWorkers(): number {
  return Math.max(1, os.availableParallelism());
}

/** Share of Retrieves logged when --request-log is given without --request-log-sample. */
export const DEFAULT_REQUEST_LOG_SAMPLE = 0.01;

/** Starts serving; resolves to the exit code once a signal has drained the server (or start failed). */
export async function runServe(opts: ServeCommandOptions, extra: { banner?: (r: Running) => string } = {}): Promise<number> {
  if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) {
    process.stderr.write('funnel serve: --tls-cert and --tls-key go together\n');
    return 2;
  }
  if (opts.tlsClientCa && !opts.tlsCert) {
    process.stderr.write('funnel serve: --tls-client-ca needs --tls-cert and --tls-key\n');
    return 2;
  }
  if (opts.requestLogSample !== undefined && !opts.requestLog) {
    process.stderr.write('funnel serve: --request-log-sample needs --request-log\n');
    return 2;
  }
  if (opts.featureLog && opts.requestLog && path.resolve(opts.featureLog) === path.resolve(opts.requestLog)) {
    // funnel eval reads every .jsonl file of a request-log directory.
    process.stderr.write('funnel serve: --feature-log and --request-log need different directories\n');
    return 2;
  }
  let shard: ShardSpec | undefined;
  if (Boolean(opts.nats) !== Boolean(opts.shard)) {
    process.stderr.write('funnel serve: --nats and --shard go together (a replica of shard I of N)\n');
    return 2;
  }
  if (opts.shard) {
    try {
      shard = parseShardSpec(opts.shard);
    } catch (err) {
      process.stderr.write(`funnel serve: ${(err as Error).message}\n`);
      return 2;
    }
    if (opts.workers !== undefined && opts.workers > 1) {
      // One process applies the stream into the data directory; scale a shard with more replicas.
      process.stderr.write('funnel serve: --nats runs one serving process per replica (--workers 1); add replicas to the shard to scale it\n');
      return 2;
    }
  }
  const workers = shard ? 1 : (opts.workers ?? defaultWorkers());
  const admin = opts.tlsClientCa ? 'mTLS' : opts.adminTokenFile ? 'bearer token' : 'disabled';
  if (cluster.isPrimary && workers > 1) {
    return runPrimary({
      workers,
      host: opts.host,
      port: opts.port,
      metricsPort: opts.metricsPort,
      describe: `admin ${admin}; ${opts.tlsCert ? 'TLS' : 'plaintext'}`,
    });
  }
  const log = defaultLogger();
  const link: WorkerLink | undefined = cluster.isWorker ? joinPrimary(log) : undefined;
  let running: Running;
  try {
    running = await start({
      logger: link ? log.child({ worker: link.index }) : log,
      stateOptions: link?.stateOptions,
      bindLate: link?.bindLate,
      dataDir: opts.data,
      configFile: opts.config,
      host: opts.host,
      port: opts.port,
      // The primary serves /metrics for all workers.
      metricsPort: link ? 0 : opts.metricsPort,
      adminTokenFile: opts.adminTokenFile,
      tls: opts.tlsCert ? { cert: opts.tlsCert, key: opts.tlsKey!, clientCa: opts.tlsClientCa } : undefined,
      drainTimeoutMs: opts.drainTimeoutMs,
      requestLog: opts.requestLog ? { dir: opts.requestLog, sample: opts.requestLogSample ?? DEFAULT_REQUEST_LOG_SAMPLE } : undefined,
      featureLog: opts.featureLog ? { dir: opts.featureLog } : undefined,
      cluster: shard ? { nats: opts.nats!, shard } : undefined,
    });
  } catch (err) {
    // Bad data directory, bad config, port taken, index load failure: all exit 3 with the reason.
    process.stderr.write(`funnel serve: ${(err as Error).message}\n`);
    if (link) {
      process.exitCode = 3;
      link.leave();
    }
    return 3;
  }
  const { state } = running;
  return new Promise<number>((resolve) => {
    let signalled = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) return;
      signalled = true;
      running.log.info({ signal: sig, in_flight: running.server.inFlightCount }, 'draining');
      running.stop().then(
        () => {
          running.log.info({}, 'stopped');
          // A worker's IPC channel would keep it alive: leave the primary once drained.
          link?.leave();
          resolve(0);
        },
        (err) => {
          process.stderr.write(`funnel serve: shutdown failed: ${(err as Error).message}\n`);
          resolve(3);
        },
      );
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    const onHup = () => {
      void running.reloadConfig().then((o) => {
        if (o.result === 'unchanged') running.log.info({ file: opts.config ?? null }, 'SIGHUP: config unchanged');
      });
    };
    process.on('SIGHUP', onHup);
    // Announce readiness only once the signals are handled: a SIGHUP or SIGTERM sent on seeing the
    // serving line must never meet the default action (which kills the process).
    if (link) {
      // The primary prints the serving line once every worker serves.
      link.attach(running);
      return;
    }
    process.stdout.write(
      `funnel serving on ${running.host}:${running.port} (${state.ads.size} ads, dim ${state.dim ?? '-'}, seq ${state.seq}; ` +
        (running.replica ? `shard ${running.replica.shard.index}/${running.replica.shard.count}, stream seq ${running.replica.appliedSeq}; ` : '') +
        `metrics ${running.metricsPort ? `http://${running.host}:${running.metricsPort}/metrics` : 'off'}; ` +
        `tracing ${running.tracing.exporters.join('+') || 'off'}; ` +
        `admin ${admin}; ${opts.tlsCert ? 'TLS' : 'plaintext'})\n`,
    );
    if (extra.banner) process.stdout.write(extra.banner(running));
  });
}
