/**
 * Prometheus metrics (prom-client): RPCs by method and status, per-stage latency, runs and
 * candidate counts (rate(out) / rate(runs) per stage draws the funnel), degraded answers and
 * stages, shed calls, in-flight calls, event-loop lag, index sizes, config version and data
 * sequence number, plus prom-client's process and Node.js defaults. Served as text on
 * http://HOST:PORT/metrics.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ShedReason } from '../grpc/admission';
import type { StageReport } from '../pipeline/types';
import { onShadowOutcome, type ShadowListener, type ShadowOutcome } from '../stages/ranking/shadow';

/** Every metric this service defines (without histogram suffixes); dashboards and alerts may use only these and the defaults. */
export const METRIC_NAMES = [
  'funnel_rpc_requests_total',
  'funnel_rpc_duration_seconds',
  'funnel_stage_duration_seconds',
  'funnel_stage_runs_total',
  'funnel_stage_candidates_in_total',
  'funnel_stage_candidates_out_total',
  'funnel_stage_dropped_total',
  'funnel_retrieve_total',
  'funnel_retrieve_degraded_total',
  'funnel_degraded_stages_total',
  'funnel_inflight_requests',
  'funnel_shed_requests_total',
  'funnel_concurrency_limit',
  'funnel_event_loop_lag_seconds',
  'funnel_index_size',
  'funnel_index_bytes',
  'funnel_ann_unsaved_changes',
  'funnel_config_info',
  'funnel_config_reloads_total',
  'funnel_data_seq',
  'funnel_trace_spans_total',
  'funnel_request_log_lines_total',
  'funnel_feature_log_lines_total',
  'funnel_ranker_shadow_runs_total',
  'funnel_ranker_shadow_rank_correlation',
  'funnel_ranker_shadow_pctr_drift',
  'funnel_replication_applied_seq',
  'funnel_replication_lag_messages',
  'funnel_replication_lag_seconds',
  'funnel_replication_applied_total',
  'funnel_replication_parked_total',
  'funnel_replication_snapshots_total',
  'funnel_replication_snapshot_seconds',
  'funnel_replication_connected',
  'funnel_root_shard_requests_total',
  'funnel_root_shard_duration_seconds',
  'funnel_root_hedges_total',
  'funnel_root_degraded_total',
  'funnel_root_live_replicas',
] as const;

/** Latency buckets, seconds: sub-millisecond stages up to multi-second outliers. */
const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** Buckets of Spearman's rho between the shadow and serving orders: fine near 1, where a candidate model should be. */
const RANK_CORRELATION_BUCKETS = [-0.5, 0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1];
/** Buckets of the mean |delta pCTR| between the shadow and serving models. */
const PCTR_DRIFT_BUCKETS = [0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5];

/** What the gauges read at scrape time. */
export interface MetricsSource {
  inFlight(): number;
  eventLoopLagMs(): number;
  sizes(): { ads: number; servable: number; annVectors: number; annBytes: number; targeting: number; targetingBytes: number; annUnsaved?: number } | null;
  configVersion(): string;
  dataSeq(): number | null;
  /** Spans the OTLP exporter sent, failed to send and dropped at its queue limit; null or absent without one. */
  traceSpans?(): { exported: number; failed: number; dropped: number } | null;
  /** A replica of a sharded cluster (`--nats`): where it stands in the stream; null or absent otherwise. */
  replication?(): { appliedSeq: number; lagMessages: number; lagSeconds: number; connected: boolean } | null;
  /** `funnel root`: live replicas per shard; null or absent otherwise. */
  liveReplicas?(): number[] | null;
}

/** The service's metrics on their own registry. */
export class Metrics implements ShadowListener {
  readonly registry = new Registry();
  private readonly rpcRequests: Counter<'service' | 'method' | 'code'>;
  private readonly rpcDuration: Histogram<'service' | 'method' | 'code'>;
  private readonly stageDuration: Histogram<'stage' | 'pipeline' | 'status'>;
  private readonly stageRuns: Counter<'stage' | 'pipeline' | 'status'>;
  private readonly stageIn: Counter<'stage' | 'pipeline'>;
  private readonly stageOut: Counter<'stage' | 'pipeline'>;
  private readonly stageDropped: Counter<'stage' | 'reason'>;
  private readonly droppedChildren = new Map<string, ReturnType<Counter['labels']>>();
  private readonly retrieves: Counter<'pipeline' | 'arm'>;
  private readonly retrievesDegraded: Counter<'pipeline' | 'arm'>;
  private readonly degradedStages: Counter<'stage' | 'pipeline'>;
  private readonly shed: Counter<'reason'>;
  private readonly limit: Gauge;
  private readonly reloads: Counter<'result'>;
  private readonly requestLog: Record<'written' | 'dropped', ReturnType<Counter['labels']>>;
  private readonly featureLog: Record<'written' | 'dropped', ReturnType<Counter['labels']>>;
  private readonly shadowRuns: Counter<'pipeline' | 'result'>;
  private readonly shadowCorrelation: Histogram<'pipeline'>;
  private readonly shadowDrift: Histogram<'pipeline'>;
  private source: MetricsSource | undefined;
  private readonly rpcChildren = new Map<string, { requests: ReturnType<Counter['labels']>; duration: ReturnType<Histogram['labels']> }>();
  private readonly stageChildren = new Map<
    string,
    { runs: ReturnType<Counter['labels']>; duration: ReturnType<Histogram['labels']>; in: ReturnType<Counter['labels']>; out: ReturnType<Counter['labels']> }
  >();
  private lastVersion: string | undefined;
  private readonly replApplied: Counter<'kind'>;
  private readonly replParked: Counter<'reason'>;
  private readonly replSnapshots: Counter<'outcome'>;
  private readonly replSnapshotSeconds: Gauge<'outcome'>;
  private readonly shardRequests: Counter<'shard' | 'code'>;
  private readonly shardDuration: Histogram<'shard'>;
  private readonly hedges: Counter<'shard' | 'outcome'>;
  private readonly rootDegraded: Counter<'shard'>;

  constructor() {
    const r = this.registry;
    collectDefaultMetrics({ register: r });
    this.rpcRequests = new Counter({ name: 'funnel_rpc_requests_total', help: 'RPCs answered, by service, method and gRPC status', labelNames: ['service', 'method', 'code'], registers: [r] });
    this.rpcDuration = new Histogram({ name: 'funnel_rpc_duration_seconds', help: 'RPC handling time, by service, method and gRPC status', labelNames: ['service', 'method', 'code'], buckets: BUCKETS, registers: [r] });
    this.stageDuration = new Histogram({ name: 'funnel_stage_duration_seconds', help: 'Funnel stage run time, by stage, pipeline and outcome', labelNames: ['stage', 'pipeline', 'status'], buckets: BUCKETS, registers: [r] });
    this.stageRuns = new Counter({ name: 'funnel_stage_runs_total', help: 'Funnel stage runs, by stage, pipeline and outcome (ok, timeout, error, skipped)', labelNames: ['stage', 'pipeline', 'status'], registers: [r] });
    this.stageIn = new Counter({ name: 'funnel_stage_candidates_in_total', help: 'Candidates entering each stage', labelNames: ['stage', 'pipeline'], registers: [r] });
    this.stageOut = new Counter({ name: 'funnel_stage_candidates_out_total', help: 'Candidates leaving each stage', labelNames: ['stage', 'pipeline'], registers: [r] });
    this.stageDropped = new Counter({ name: 'funnel_stage_dropped_total', help: 'Candidates (ads, for Eligibility and Merge) each stage removed, by reason code (README lists them)', labelNames: ['stage', 'reason'], registers: [r] });
    this.retrieves = new Counter({ name: 'funnel_retrieve_total', help: 'Retrieve answers, by pipeline and experiment arm', labelNames: ['pipeline', 'arm'], registers: [r] });
    this.retrievesDegraded = new Counter({ name: 'funnel_retrieve_degraded_total', help: 'Retrieve answers with at least one degraded stage', labelNames: ['pipeline', 'arm'], registers: [r] });
    this.degradedStages = new Counter({ name: 'funnel_degraded_stages_total', help: 'Stages dropped from an answer (failed or timed out)', labelNames: ['stage', 'pipeline'], registers: [r] });
    this.shed = new Counter({
      name: 'funnel_shed_requests_total',
      help: 'Retrieve calls refused with RESOURCE_EXHAUSTED, by reason: max_in_flight, concurrency_limit (the adaptive limit), queue_timeout, event_loop_lag, deadline',
      labelNames: ['reason'],
      registers: [r],
    });
    this.limit = new Gauge({ name: 'funnel_concurrency_limit', help: 'The adaptive limit on Retrieve calls in flight (limits.admission)', registers: [r] });
    this.reloads = new Counter({ name: 'funnel_config_reloads_total', help: 'Config reloads, by result', labelNames: ['result'], registers: [r] });
    // Both series exist from the start, so increase() sees the first failure.
    this.reloads.inc({ result: 'ok' }, 0);
    this.reloads.inc({ result: 'error' }, 0);
    const requestLogLines = new Counter({
      name: 'funnel_request_log_lines_total',
      help: 'Lines of the Retrieve request log (--request-log), by result: written, or dropped (queue full, write failed)',
      labelNames: ['result'],
      registers: [r],
    });
    this.requestLog = { written: requestLogLines.labels({ result: 'written' }), dropped: requestLogLines.labels({ result: 'dropped' }) };
    this.requestLog.written.inc(0);
    this.requestLog.dropped.inc(0);
    const featureLogLines = new Counter({
      name: 'funnel_feature_log_lines_total',
      help: 'Rows (lines) of the EarlyRanker feature log (--feature-log), by result: written, or dropped (queue full, write failed)',
      labelNames: ['result'],
      registers: [r],
    });
    this.featureLog = { written: featureLogLines.labels({ result: 'written' }), dropped: featureLogLines.labels({ result: 'dropped' }) };
    this.featureLog.written.inc(0);
    this.featureLog.dropped.inc(0);
    this.shadowRuns = new Counter({
      name: 'funnel_ranker_shadow_runs_total',
      help: "EarlyRanker shadow model runs (shadow_model), by pipeline and result: ok, error, timeout (past the stage's timeout_ms), skipped (its worker's queue was full, or the serving model fell back)",
      labelNames: ['pipeline', 'result'],
      registers: [r],
    });
    this.shadowCorrelation = new Histogram({
      name: 'funnel_ranker_shadow_rank_correlation',
      help: "Spearman's rank correlation of the shadow model's and the serving model's eCPM orders of one request's candidates",
      labelNames: ['pipeline'],
      buckets: RANK_CORRELATION_BUCKETS,
      registers: [r],
    });
    this.shadowDrift = new Histogram({
      name: 'funnel_ranker_shadow_pctr_drift',
      help: "Mean |shadow pCTR - serving pCTR| over one request's candidates",
      labelNames: ['pipeline'],
      buckets: PCTR_DRIFT_BUCKETS,
      registers: [r],
    });
    // Shadow runs end after their request: they report here rather than through a stage report.
    onShadowOutcome(this);
    const self = this;
    new Gauge({
      name: 'funnel_inflight_requests',
      help: 'Retrieve calls in flight',
      registers: [r],
      collect() {
        this.set(self.source?.inFlight() ?? 0);
      },
    });
    new Gauge({
      name: 'funnel_event_loop_lag_seconds',
      help: 'Sustained event-loop lag (the least of the last samples), seconds',
      // The worst worker's under `--workers N`.
      aggregator: 'max',
      registers: [r],
      collect() {
        this.set((self.source?.eventLoopLagMs() ?? 0) / 1000);
      },
    });
    new Gauge({
      name: 'funnel_index_size',
      help: 'Entries per index: ads, servable ads, ANN vectors, targeting entries',
      labelNames: ['index'],
      // Summed over the workers of `--workers N` otherwise; each holds the same data.
      aggregator: 'max',
      registers: [r],
      collect() {
        const s = self.source?.sizes();
        if (!s) return;
        this.set({ index: 'ads' }, s.ads);
        this.set({ index: 'servable' }, s.servable);
        this.set({ index: 'ann_vectors' }, s.annVectors);
        this.set({ index: 'targeting' }, s.targeting);
      },
    });
    new Gauge({
      name: 'funnel_ann_unsaved_changes',
      help: 'ANN index changes not yet in a checkpoint: what a restart would replay from the change log',
      registers: [r],
      collect() {
        const s = self.source?.sizes();
        if (s && s.annUnsaved !== undefined) this.set(s.annUnsaved);
      },
    });
    new Gauge({
      name: 'funnel_index_bytes',
      help: 'Approximate memory of the ANN and targeting indexes, bytes',
      labelNames: ['index'],
      registers: [r],
      collect() {
        const s = self.source?.sizes();
        if (!s) return;
        this.set({ index: 'ann' }, s.annBytes);
        this.set({ index: 'targeting' }, s.targetingBytes);
      },
    });
    new Gauge({
      name: 'funnel_config_info',
      help: 'The config version serving (value 1)',
      labelNames: ['version'],
      // Summed over the workers of `--workers N` otherwise; each holds the same data.
      aggregator: 'max',
      registers: [r],
      collect() {
        const v = self.source?.configVersion();
        if (v === undefined) return;
        if (self.lastVersion !== undefined && self.lastVersion !== v) this.remove({ version: self.lastVersion });
        self.lastVersion = v;
        this.set({ version: v }, 1);
      },
    });
    const spansSeen = { exported: 0, failed: 0, dropped: 0 };
    new Counter({
      name: 'funnel_trace_spans_total',
      help: 'Spans of the OTLP trace exporter, by outcome: exported, failed (the collector refused or was unreachable), dropped (queue full)',
      labelNames: ['outcome'],
      registers: [r],
      collect() {
        const now = self.source?.traceSpans?.();
        if (!now) return;
        for (const outcome of ['exported', 'failed', 'dropped'] as const) {
          this.inc({ outcome }, Math.max(0, now[outcome] - spansSeen[outcome]));
          spansSeen[outcome] = now[outcome];
        }
      },
    });
    this.replApplied = new Counter({ name: 'funnel_replication_applied_total', help: 'Stream messages applied by this replica, by kind (upsert, status, delete, spend, events, ingest_begin, ingest_chunk, ingest_commit)', labelNames: ['kind'], registers: [r] });
    this.replParked = new Counter({ name: 'funnel_replication_parked_total', help: 'Malformed stream messages logged and parked (skipped, never applied in part), by reason', labelNames: ['reason'], registers: [r] });
    this.replSnapshots = new Counter({ name: 'funnel_replication_snapshots_total', help: 'Shard snapshots uploaded (taken, failed) or restored into an empty data directory (restored, restore_failed)', labelNames: ['outcome'], registers: [r] });
    this.replSnapshotSeconds = new Gauge({ name: 'funnel_replication_snapshot_seconds', help: 'Seconds the last snapshot upload or restore took, by outcome', labelNames: ['outcome'], aggregator: 'max', registers: [r] });
    const repl = (pick: (x: { appliedSeq: number; lagMessages: number; lagSeconds: number; connected: boolean }) => number) =>
      function (this: Gauge) {
        const x = self.source?.replication?.();
        if (x) this.set(pick(x));
      };
    new Gauge({ name: 'funnel_replication_applied_seq', help: 'Last stream sequence number applied (and stored) by this replica', aggregator: 'min', registers: [r], collect: repl((x) => x.appliedSeq) });
    new Gauge({ name: 'funnel_replication_lag_messages', help: "Messages of this replica's shard in the stream not applied yet", aggregator: 'max', registers: [r], collect: repl((x) => x.lagMessages) });
    new Gauge({ name: 'funnel_replication_lag_seconds', help: 'Age of the oldest stream message not applied yet (0 when caught up)', aggregator: 'max', registers: [r], collect: repl((x) => x.lagSeconds) });
    new Gauge({ name: 'funnel_replication_connected', help: '1 while connected to NATS, else 0', aggregator: 'min', registers: [r], collect: repl((x) => (x.connected ? 1 : 0)) });
    this.shardRequests = new Counter({ name: 'funnel_root_shard_requests_total', help: 'Calls the root made to shard replicas, by shard and gRPC status (hedges included)', labelNames: ['shard', 'code'], registers: [r] });
    this.shardDuration = new Histogram({ name: 'funnel_root_shard_duration_seconds', help: "Time until a shard's answer reached the root (the first of a hedged pair)", labelNames: ['shard'], buckets: BUCKETS, registers: [r] });
    this.hedges = new Counter({ name: 'funnel_root_hedges_total', help: 'Second calls to another replica of a slow or failed shard, by shard and which answer was used (hedge, first, none)', labelNames: ['shard', 'outcome'], registers: [r] });
    this.rootDegraded = new Counter({ name: 'funnel_root_degraded_total', help: 'Root answers missing a shard (no live replica answered in time), by shard', labelNames: ['shard'], registers: [r] });
    new Gauge({
      name: 'funnel_root_live_replicas',
      help: 'Replicas of each shard in rotation at the root',
      labelNames: ['shard'],
      registers: [r],
      collect() {
        const live = self.source?.liveReplicas?.();
        if (live) live.forEach((n, i) => this.set({ shard: String(i) }, n));
      },
    });
    new Gauge({
      name: 'funnel_data_seq',
      help: 'Change sequence number of the data served (every write up to it applied; the least over the workers)',
      // Summed over the workers of `--workers N` otherwise; each holds the same data.
      aggregator: 'min',
      registers: [r],
      collect() {
        const s = self.source?.dataSeq();
        if (s !== null && s !== undefined) this.set(s);
      },
    });
  }

  /** Sets what the gauges read. */
  attach(source: MetricsSource): void {
    this.source = source;
  }

  /** Records one answered RPC. */
  rpc(service: string, method: string, code: string, seconds: number): void {
    const key = `${service}\u0000${method}\u0000${code}`;
    let c = this.rpcChildren.get(key);
    if (!c) {
      const labels = { service, method, code };
      c = { requests: this.rpcRequests.labels(labels), duration: this.rpcDuration.labels(labels) };
      this.rpcChildren.set(key, c);
    }
    c.requests.inc();
    c.duration.observe(seconds);
  }

  /**
   * Records one stage run. Eight stages report per Retrieve: the label-bound children are kept,
   * since resolving labels on every call (prom-client hashes them) cost about 4% of the request
   * thread in a profile of funnel serve.
   */
  stage(pipeline: string, r: StageReport): void {
    const key = `${pipeline}\u0000${r.name}\u0000${r.status}`;
    let c = this.stageChildren.get(key);
    if (!c) {
      const labels = { stage: r.name, pipeline };
      const withStatus = { ...labels, status: r.status };
      c = {
        runs: this.stageRuns.labels(withStatus),
        duration: this.stageDuration.labels(withStatus),
        in: this.stageIn.labels(labels),
        out: this.stageOut.labels(labels),
      };
      this.stageChildren.set(key, c);
    }
    c.runs.inc();
    if (r.status === 'skipped') return;
    c.duration.observe(r.latencyMs / 1000);
    c.in.inc(r.candidatesIn);
    c.out.inc(r.candidatesOut);
    for (const reason in r.dropped) {
      const dkey = `${r.name}\u0000${reason}`;
      let d = this.droppedChildren.get(dkey);
      if (!d) this.droppedChildren.set(dkey, (d = this.stageDropped.labels({ stage: r.name, reason })));
      d.inc(r.dropped[reason]);
    }
  }

  /** Records one Retrieve answer. */
  retrieve(pipeline: string, arm: string, degradedStages: readonly string[]): void {
    this.retrieves.inc({ pipeline, arm });
    if (degradedStages.length === 0) return;
    this.retrievesDegraded.inc({ pipeline, arm });
    for (const stage of degradedStages) this.degradedStages.inc({ stage, pipeline });
  }

  /** Counts one stream message applied by this replica. */
  replicationApplied(kind: string): void {
    this.replApplied.inc({ kind });
  }

  /** Counts one malformed stream message parked. */
  replicationParked(reason: string): void {
    this.replParked.inc({ reason });
  }

  /** Counts one snapshot upload or restore and records how long it took. */
  replicationSnapshot(outcome: string, seconds: number): void {
    this.replSnapshots.inc({ outcome });
    this.replSnapshotSeconds.set({ outcome }, seconds);
  }

  /** Records one call of the root to a shard replica. */
  shardCall(shard: number, code: string): void {
    this.shardRequests.inc({ shard: String(shard), code });
  }

  /** Records the time until a shard's answer arrived at the root. */
  shardAnswered(shard: number, seconds: number): void {
    this.shardDuration.observe({ shard: String(shard) }, seconds);
  }

  /** Counts a hedged call and which answer the root used. */
  hedged(shard: number, outcome: 'hedge' | 'first' | 'none'): void {
    this.hedges.inc({ shard: String(shard), outcome });
  }

  /** Counts a root answer missing a shard. */
  shardDegraded(shard: number): void {
    this.rootDegraded.inc({ shard: String(shard) });
  }

  /** Records a shed call. */
  shedRequest(reason: ShedReason): void {
    this.shed.inc({ reason });
  }

  /** Records the adaptive concurrency limit after a change. */
  concurrencyLimit(limit: number): void {
    this.limit.set(limit);
  }

  /** Counts `n` request-log lines written or dropped. */
  requestLogLines(result: 'written' | 'dropped', n: number): void {
    this.requestLog[result].inc(n);
  }

  /** Counts `n` feature-log rows written or dropped. */
  featureLogLines(result: 'written' | 'dropped', n: number): void {
    this.featureLog[result].inc(n);
  }

  /** Records one shadow model run (ShadowListener). */
  shadowOutcome(o: ShadowOutcome): void {
    this.shadowRuns.inc({ pipeline: o.pipeline, result: o.result });
    if (o.rankCorrelation !== undefined) this.shadowCorrelation.observe({ pipeline: o.pipeline }, o.rankCorrelation);
    if (o.pctrDrift !== undefined) this.shadowDrift.observe({ pipeline: o.pipeline }, o.pctrDrift);
  }

  /** Records a config reload. */
  reload(result: 'ok' | 'error'): void {
    this.reloads.inc({ result });
  }

  /** The exposition text. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Content type of text(). */
  get contentType(): string {
    return this.registry.contentType;
  }
}

/** A /metrics HTTP server. */
export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** What /metrics serves: a process's Metrics, or a `--workers` primary's cluster aggregate. */
export interface MetricsText {
  text(): Promise<string>;
  readonly contentType: string;
}

/** Serves `metrics` at http://host:port/metrics (port 0 = any free port). */
export async function serveMetrics(metrics: MetricsText, host: string, port: number): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' || (url !== '/metrics' && url !== '/')) {
      res.writeHead(url === '/metrics' ? 405 : 404, { 'content-type': 'text/plain' }).end(url === '/metrics' ? 'use GET\n' : 'see /metrics\n');
      return;
    }
    metrics.text().then(
      (body) => res.writeHead(200, { 'content-type': metrics.contentType }).end(body),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
