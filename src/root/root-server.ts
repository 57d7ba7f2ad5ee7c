/**
 * `funnel root` (CONTRACT section 6): serves funnel.v1.Retrieval and funnel.v1.Admin in front
 * of the shards, plus health and reflection. It holds no data.
 *
 * Retrieve: the request goes to one replica of every shard at once (hedged and retried as
 * shards.ts says), within the caller's deadline, each asked for
 * ceil(num_results x root.overfetch) candidates (at most limits.max_num_results). The answers
 * are merged by score, the pipeline's Diversifier caps (max_per_advertiser, max_per_category)
 * are applied across shards, and the best num_results returned. A shard that did not answer
 * is named `shard-I` in degraded_stages (and the answer is degraded); the shards' own degraded
 * stages are carried over. MMR runs on each shard (the root has no embeddings).
 *
 * Explain: each shard explains the asked ads it owns (the others run the request as a
 * Retrieve); the root merges as Retrieve does, and an ad a shard returned but the merge cut
 * is `dropped` at stage `Root` (`below_cutoff`, `advertiser_cap`, `category_cap`).
 *
 * Admin: each ad goes to its shard (fnv1a32(ad_id) mod N); a call touching several shards is
 * split, sent to every shard at once, and answered with the summed counts and the largest
 * `seq` (the consistency token covering all of them). A shard that fails fails the call
 * (UNAVAILABLE names the shards that did apply their part: writes are per shard, not atomic
 * across shards). Each call is first validated whole here with the shards' own checks (all but
 * the catalog's dimension, which only the shards know), so a bad field anywhere in a call that
 * spans shards is refused before any shard applies its part. The caller's authorization
 * metadata is passed on; the shards check it. GetAds is a read: hedged like Retrieve, and each shard is asked with `min_seq` at least the
 * largest `seq` this root has acknowledged for it, so a GetAds through a root sees every write
 * that root answered OK, whichever replica serves it.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from 'pino';
import type { Config } from '../config/schema';
import { packageDefinition, reflectedDefinition } from '../grpc/proto';
import { decodeRetrieveRequest, withNumResults } from '../grpc/codec';
import {
  RpcError,
  validateAdIds,
  validateAds,
  validateEvents,
  validateSeq,
  validateSpendEntries,
  validateStatus,
  type AdMessage,
  type EventMessage,
  type SpendEntryMessage,
} from '../grpc/validate';
import { checkBearer, rawRetrievalService, serverOptions } from '../grpc/server';
import { AdmissionControl, ExpiryTimer, admitCall, callDeadline, deadlineOr, type Cancelled, type Permit, type Refusal } from '../grpc/admission';
import { LoopLag } from '../grpc/loop-lag';
import type { Metrics } from '../telemetry/metrics';
import type { RequestTrace, RequestTracer } from '../telemetry/request-tracer';
import { extractContext } from '../telemetry/tracing';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connectNats, withTimeout, type NatsConnection } from '../cluster/replica';
import { shardOf, shardSubject } from '../cluster/shard';
import { ReplicaLink, ShardGroup, type ShardOutcome } from './shards';

const HEALTH_SERVICES = ['', 'funnel.v1.Retrieval', 'funnel.v1.Admin'];

export interface RootOptions {
  host: string;
  port: number;
  shards: string[][];
  drainTimeoutMs: number;
  /**
   * NATS URL(s) of the cluster's stream: a GetAds then asks each shard for every write in the
   * stream when it arrived (the shard subject's last sequence number), whoever made it.
   */
  nats?: string;
  /** Checked here too when given (the shards check it again): Admin and Explain need it. */
  adminToken?: string;
}

export interface CandidateMsg {
  ad_id: string;
  advertiser_id?: string;
  campaign_id?: string;
  category?: string;
  score?: number;
  sources?: string[];
}
export interface StageStatsMsg {
  name: string;
  candidates_in?: number;
  candidates_out?: number;
  latency_ms?: number;
  status?: string;
  detail?: string;
  dropped?: Record<string, number>;
}
export interface RetrieveResponseMsg {
  candidates?: CandidateMsg[];
  degraded?: boolean;
  degraded_stages?: string[];
  stages?: StageStatsMsg[];
  request_id?: string;
  pipeline?: string;
  data_seq?: string | number;
}
export interface RetrieveRequestMsg {
  request_id?: string;
  num_results?: number;
  pipeline?: string;
  debug?: boolean;
  [k: string]: unknown;
}
export interface AdExplanationMsg {
  ad_id: string;
  outcome?: string;
  stage?: string;
  reason?: string;
  detail?: string;
  position?: number;
  score?: number;
}

type Unary = grpc.handleUnaryCall<unknown, unknown>;

/** One shard's answer to a fan-out (none when it failed). */
export interface ShardAnswer {
  shard: number;
  response?: RetrieveResponseMsg;
  outcome: Pick<ShardOutcome<unknown>, 'ms' | 'error' | 'replica' | 'attempts' | 'hedged' | 'hedgeWon'>;
}

/** The merged answer of the shards. */
export interface Merged {
  response: RetrieveResponseMsg;
  /** ad_id -> why the merge cut it (ads a shard returned). */
  cut: Map<string, { reason: 'below_cutoff' | 'advertiser_cap' | 'category_cap'; detail: string }>;
}

export class RootServer {
  private readonly server: grpc.Server;
  private readonly health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'NOT_SERVING' as const])));
  readonly groups: ShardGroup[];
  private healthTimer: NodeJS.Timeout | undefined;
  private draining = false;
  private calls = 0;
  private config_: Config;
  private readonly admission: AdmissionControl;
  private readonly expiry: ExpiryTimer;
  private readonly loopLag = new LoopLag().start();
  /** Calls in which a shard refused RESOURCE_EXHAUSTED: the drop signal of the admission limit. */
  private readonly shedByShard = new WeakSet<grpc.ServerUnaryCall<unknown, unknown>>();
  /** Per shard: the largest stream sequence number of a write this root answered OK. */
  private readonly ackedSeq: number[];
  /** With --nats: the stream, once connected (reconnects by itself). */
  private stream: { nc: NatsConnection; jsm: JetStreamManager } | null = null;
  private closed = false;

  constructor(
    config: Config,
    private readonly options: RootOptions,
    private readonly log: Logger,
    private readonly telemetry: { metrics?: Metrics; tracer?: RequestTracer | null } = {},
  ) {
    this.config_ = config;
    this.groups = options.shards.map((replicas, i) => new ShardGroup(i, replicas.map((a) => new ReplicaLink(a))));
    this.ackedSeq = this.groups.map(() => 0);
    this.admission = new AdmissionControl((limit) => telemetry.metrics?.concurrencyLimit(limit), { latencySignal: false });
    this.expiry = new ExpiryTimer(this.admission, () => this.config_.limits);
    this.server = new grpc.Server(serverOptions(config));
    const def = packageDefinition();
    // Retrieve: its request bytes are decoded by the codec (and passed to the shards as they
    // are, with num_results appended), its answer encoded straight to bytes.
    this.server.addService(rawRetrievalService(), {
      Retrieve: this.unary('funnel.v1.Retrieval', 'Retrieve', (call, t) => this.retrieve(call, t), true),
      Explain: this.unary('funnel.v1.Retrieval', 'Explain', (call, t) => this.explain(call, t), true),
    });
    this.server.addService(def['funnel.v1.Admin'] as grpc.ServiceDefinition, {
      // Each call is validated whole here before any shard is asked: a bad field anywhere in a
      // write that spans shards is refused with nothing applied (the shards check it again).
      UpsertAds: this.unary('funnel.v1.Admin', 'UpsertAds', (call) =>
        this.route(call, 'UpsertAds', 'ads', (a: { ad_id?: string }) => a.ad_id, sumUpsert, (r: { ads?: AdMessage[] }) => validateAds(r.ads, this.config_, null)),
      ),
      SetAdStatus: this.unary('funnel.v1.Admin', 'SetAdStatus', (call) =>
        this.route(call, 'SetAdStatus', 'ad_ids', (id: string) => id, sumCounted('updated'), (r: { ad_ids?: string[]; status?: string }) => {
          validateAdIds('ad_ids', r.ad_ids, this.config_);
          validateStatus(r.status);
        }),
      ),
      DeleteAds: this.unary('funnel.v1.Admin', 'DeleteAds', (call) =>
        this.route(call, 'DeleteAds', 'ad_ids', (id: string) => id, sumCounted('deleted'), (r: { ad_ids?: string[] }) => validateAdIds('ad_ids', r.ad_ids, this.config_)),
      ),
      GetAds: this.unary('funnel.v1.Admin', 'GetAds', (call) =>
        this.route(call, 'GetAds', 'ad_ids', (id: string) => id, concatAds, (r: { ad_ids?: string[] }) => validateAdIds('ad_ids', r.ad_ids, this.config_)),
      ),
      ReportSpend: this.unary('funnel.v1.Admin', 'ReportSpend', (call) =>
        this.route(call, 'ReportSpend', 'entries', (e: { ad_id?: string }) => e.ad_id, sumCounted('applied'), (r: { entries?: SpendEntryMessage[] }) =>
          validateSpendEntries(r.entries, this.config_),
        ),
      ),
      RecordEvents: this.unary('funnel.v1.Admin', 'RecordEvents', (call) =>
        this.route(call, 'RecordEvents', 'events', (e: { ad_id?: string }) => e.ad_id, sumCounted('applied'), (r: { events?: EventMessage[] }) =>
          validateEvents(r.events, this.config_, Date.now()),
        ),
      ),
    });
    this.health.addToServer(this.server);
    new ReflectionService(reflectedDefinition()).addToServer(this.server);
  }

  get config(): Config {
    return this.config_;
  }
  set config(c: Config) {
    this.config_ = c;
  }

  /** Live replicas per shard (metrics). */
  liveReplicas(): number[] {
    const now = Date.now();
    return this.groups.map((g) => g.liveCount(now));
  }

  get inFlightCount(): number {
    return this.calls;
  }

  /** Connects to NATS in the background (retrying until it can); GetAds falls back to the root's own watermark meanwhile. */
  private connectStream(url: string): void {
    void (async () => {
      try {
        const nc = await connectNats(url, 'funnel-root');
        if (this.closed) {
          await nc.close();
          return;
        }
        this.stream = { nc, jsm: await jetstreamManager(nc, { timeout: 2000 }) };
        this.log.info({ nats: url, stream: this.config_.cluster.stream }, 'connected to NATS: GetAds sees every write in the stream');
      } catch (err) {
        this.log.error({ err: (err as Error).message, nats: url }, 'cannot use NATS: GetAds sees the writes this root acknowledged');
      }
    })();
  }

  /**
   * The last stream sequence number of shard `s`'s subject (0: none), or null when NATS is not
   * connected or does not answer within `ms`.
   */
  private async streamWatermark(s: number, ms: number): Promise<number | null> {
    const st = this.stream;
    if (!st || st.nc.isClosed()) return null;
    const c = this.config_.cluster;
    const subject = shardSubject(c.subject_prefix, { index: s, count: this.groups.length });
    try {
      const m = await withTimeout(st.jsm.streams.getMessage(c.stream, { last_by_subj: subject }), ms, `the last message of ${subject}`);
      return m ? m.seq : 0;
    } catch (err) {
      this.log.debug({ err: (err as Error).message, subject }, 'reading the stream watermark failed; using the root\'s own');
      return null;
    }
  }

  /** Sustained event-loop lag now, ms (admission sheds past limits.shed_event_loop_lag_ms). */
  get loopLagMs(): number {
    return this.loopLag.lagMs;
  }

  async listen(): Promise<number> {
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`${this.options.host}:${this.options.port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    if (this.options.nats) this.connectStream(this.options.nats);
    const check = () => Promise.all(this.groups.map((g) => g.checkHealth(800))).catch(() => undefined);
    await check();
    this.healthTimer = setInterval(() => void check(), 1000);
    this.healthTimer.unref();
    for (const s of HEALTH_SERVICES) this.health.setStatus(s, 'SERVING');
    return port;
  }

  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    clearInterval(this.healthTimer);
    for (const s of HEALTH_SERVICES) this.health.setStatus(s, 'NOT_SERVING');
    const started = Date.now();
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (this.calls === 0 || Date.now() - started >= this.options.drainTimeoutMs) {
          clearInterval(poll);
          this.server.forceShutdown();
          resolve();
        }
      }, 10);
      this.server.tryShutdown(() => {
        clearInterval(poll);
        resolve();
      });
    });
    this.expiry.disarm();
    this.loopLag.stop();
    this.closeStream();
    for (const g of this.groups) for (const r of g.replicas) r.close();
  }

  private closeStream(): void {
    this.closed = true;
    const st = this.stream;
    this.stream = null;
    void st?.nc.close().catch(() => undefined);
  }

  forceStop(): void {
    clearInterval(this.healthTimer);
    this.loopLag.stop();
    this.expiry.disarm();
    this.closeStream();
    this.server.forceShutdown();
    for (const g of this.groups) for (const r of g.replicas) r.close();
  }

  /**
   * A handler that answers exactly once, with its RPC metric and span. With `admitted`, the call
   * first passes the root's own admission control: limits.max_in_flight, the adaptive limit of
   * limits.admission (with its short wait for a slot and its deadline check), and
   * limits.shed_event_loop_lag_ms. The limit adapts on drops, not latency (a root's calls wait on
   * the shards): a window in which a shard refused a call RESOURCE_EXHAUSTED backs it off, one
   * that reached it without that raises it. A root past what it or its shards can take refuses
   * RESOURCE_EXHAUSTED at once, rather than sending shards calls they refuse (answers degraded)
   * or answering every call late; the caller can retry on another root.
   */
  private unary(service: string, method: string, fn: (call: grpc.ServerUnaryCall<unknown, unknown>, t: RequestTrace | null) => Promise<unknown>, admitted = false): Unary {
    return (call, callback) => {
      const started = process.hrtime.bigint();
      const refuse = (code: grpc.status, details: string) => {
        this.telemetry.metrics?.rpc(service, method, grpc.status[code], Number(process.hrtime.bigint() - started) / 1e9);
        callback({ code, details, metadata: new grpc.Metadata() });
      };
      if (!admitted || this.draining) {
        this.run(service, method, fn, call, callback, started);
        return;
      }
      const remainingMs = callDeadline(call) - Date.now();
      if (remainingMs <= 0) {
        this.telemetry.metrics?.shedRequest('deadline');
        refuse(grpc.status.DEADLINE_EXCEEDED, 'the deadline had passed before the call was handled');
        return;
      }
      const decided = (a: Permit | Refusal | Cancelled) => {
        if (a.kind === 'admitted') {
          this.run(service, method, fn, call, callback, started, a);
        } else if (a.kind === 'cancelled') {
          refuse(grpc.status.CANCELLED, a.details);
        } else {
          this.telemetry.metrics?.shedRequest(a.reason);
          refuse(grpc.status.RESOURCE_EXHAUSTED, a.details);
        }
      };
      const a = admitCall(this.admission, this.expiry, this.config_.limits, call, { remainingMs, loopLagMs: this.loopLag.lagMs }, decided);
      if (a.kind !== 'waiting') decided(a);
    };
  }

  /** Runs an admitted (or unadmitted) call's handler and answers it once; releases its permit. */
  private run(
    service: string,
    method: string,
    fn: (call: grpc.ServerUnaryCall<unknown, unknown>, t: RequestTrace | null) => Promise<unknown>,
    call: grpc.ServerUnaryCall<unknown, unknown>,
    callback: grpc.sendUnaryData<unknown>,
    started: bigint,
    permit?: Permit,
  ): void {
    this.calls++;
    const tracer = this.telemetry.tracer;
    const t = tracer ? tracer.startRpc(service, method, extractContext(call.metadata), 0) : null;
    const answer = (err: { code: grpc.status; details: string } | null, value?: unknown) => {
      this.calls--;
      const code = err ? err.code : grpc.status.OK;
      // The caller's own mistakes say nothing about the root's load; a shard's refusal does.
      if (permit) {
        const measured = code !== grpc.status.INVALID_ARGUMENT && code !== grpc.status.UNAUTHENTICATED;
        this.admission.release(permit, performance.now(), this.config_.limits, measured, this.shedByShard.has(call));
      }
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      this.telemetry.metrics?.rpc(service, method, grpc.status[code], seconds);
      t?.end(code, grpc.status[code], err?.details);
      if (err) callback({ code: err.code, details: err.details, metadata: new grpc.Metadata() });
      else callback(null, value);
    };
    if (this.draining) {
      answer({ code: grpc.status.UNAVAILABLE, details: 'root is shutting down' });
      return;
    }
    fn(call, t).then(
      (v) => answer(null, v),
      (err: unknown) => {
        if (err instanceof RpcError) answer({ code: err.code, details: err.message });
        else if (isServiceError(err)) answer({ code: err.code, details: err.details });
        else {
          this.log.error({ err: (err as Error).message, method }, 'root call failed');
          answer({ code: grpc.status.INTERNAL, details: (err as Error).message });
        }
      },
    );
  }

  /** Admin and Explain: the bearer token, when the root was given one. */
  private authorize(call: grpc.ServerUnaryCall<unknown, unknown>): void {
    if (this.options.adminToken !== undefined) checkBearer(call.metadata, this.options.adminToken);
  }

  /** The call's deadline; with none from the caller, the shards get the config's default request budget. */
  private deadlineOf(call: grpc.ServerUnaryCall<unknown, unknown>): number {
    return deadlineOr(call, this.config_.limits.default_deadline_ms);
  }

  /** Metadata passed to a shard: the caller's authorization, and the trace context. */
  private forwardMetadata(call: grpc.ServerUnaryCall<unknown, unknown>, traceparent?: string): grpc.Metadata {
    const md = new grpc.Metadata();
    const auth = call.metadata.get('authorization')[0];
    if (auth !== undefined) md.set('authorization', auth);
    if (traceparent) md.set('traceparent', traceparent);
    else {
      const tp = call.metadata.get('traceparent')[0];
      if (tp !== undefined) md.set('traceparent', tp);
    }
    return md;
  }

  /** The request each shard gets: more candidates than asked, so that global caps still fill N. */
  private shardRequest(req: RetrieveRequestMsg): { n: number; forShard: RetrieveRequestMsg } {
    const limits = this.config_.limits;
    const asked = req.num_results ?? 0;
    if (asked > limits.max_num_results) throw new RpcError(grpc.status.INVALID_ARGUMENT, `num_results: ${asked} is more than the limit of ${limits.max_num_results}`);
    const n = asked === 0 ? limits.default_num_results : asked;
    const fetch = Math.min(limits.max_num_results, Math.ceil(n * this.config_.root.overfetch));
    return { n, forShard: { ...req, num_results: fetch } };
  }

  /** Calls every shard (Retrieve, or Explain for shards with asked ads); one span per shard. */
  private async fanOut(
    call: grpc.ServerUnaryCall<unknown, unknown>,
    t: RequestTrace | null,
    perShard: (g: ShardGroup) => { method: 'Retrieve' | 'RetrieveRaw' | 'Explain'; req: unknown },
  ): Promise<ShardOutcome<unknown>[]> {
    const deadline = this.deadlineOf(call);
    const metrics = this.telemetry.metrics;
    return Promise.all(
      this.groups.map(async (g) => {
        const span = t?.clientSpan(`funnel.shard shard-${g.index}`);
        const { method, req } = perShard(g);
        const o = await g.call<unknown>('retrieval', method, req, this.forwardMetadata(call, span?.traceparent), deadline, this.config_.root);
        metrics?.shardCall(g.index, o.error ? grpc.status[o.error.code] : 'OK');
        if (o.error?.code === grpc.status.RESOURCE_EXHAUSTED) this.shedByShard.add(call);
        if (!o.error) metrics?.shardAnswered(g.index, o.ms / 1000);
        if (o.hedged) metrics?.hedged(g.index, o.error ? 'none' : (o.hedgeWon ?? 'none'));
        span?.end(
          { 'funnel.shard': g.index, 'funnel.shard.replica': o.replica ?? '', 'funnel.shard.attempts': o.attempts, 'funnel.shard.hedged': o.hedged, 'rpc.method': method },
          o.error ? `${grpc.status[o.error.code]}: ${o.error.details}` : undefined,
        );
        return o;
      }),
    );
  }

  /** A client error from a shard (the request's fault) is the root's answer too. */
  private requestError(outcomes: ShardOutcome<unknown>[]): void {
    for (const o of outcomes) {
      if (o.error && (o.error.code === grpc.status.INVALID_ARGUMENT || o.error.code === grpc.status.UNAUTHENTICATED || o.error.code === grpc.status.PERMISSION_DENIED)) {
        throw new RpcError(o.error.code, o.error.details);
      }
    }
  }

  private merge(req: RetrieveRequestMsg, n: number, responses: ShardAnswer[], explain = false): Merged {
    const merged = mergeAnswers(this.config_, req, n, responses, explain);
    for (const r of responses) if (!r.response) this.telemetry.metrics?.shardDegraded(r.shard);
    return merged;
  }

  private async retrieve(call: grpc.ServerUnaryCall<unknown, unknown>, t: RequestTrace | null): Promise<unknown> {
    const raw = call.request as Buffer;
    const decoded = decodeRetrieveRequest(raw);
    if (decoded.decodeError) throw new RpcError(grpc.status.INVALID_ARGUMENT, decoded.decodeError);
    const req: RetrieveRequestMsg = { request_id: decoded.request_id, num_results: decoded.num_results, pipeline: decoded.pipeline, debug: decoded.debug };
    const { n, forShard } = this.shardRequest(req);
    const bytes = withNumResults(raw, forShard.num_results!);
    const outcomes = await this.fanOut(call, t, () => ({ method: 'RetrieveRaw', req: bytes }));
    this.requestError(outcomes);
    const merged = this.merge(
      req,
      n,
      outcomes.map((o) => ({ shard: o.shard, response: o.value as RetrieveResponseMsg | undefined, outcome: o })),
    );
    if (t) t.setAttributes({ 'funnel.degraded': merged.response.degraded ?? false, 'funnel.degraded_stages': merged.response.degraded_stages ?? [] });
    return merged.response;
  }

  private async explain(call: grpc.ServerUnaryCall<unknown, unknown>, t: RequestTrace | null): Promise<unknown> {
    this.authorize(call);
    const ereq = (call.request ?? {}) as { request?: RetrieveRequestMsg; ad_ids?: string[] };
    const adIds = ereq.ad_ids ?? [];
    if (adIds.length === 0) throw new RpcError(grpc.status.INVALID_ARGUMENT, 'ad_ids: must name at least one ad');
    const req = ereq.request ?? {};
    const { n, forShard } = this.shardRequest(req);
    const count = this.groups.length;
    const owned = this.groups.map(() => [] as string[]);
    for (const id of adIds) owned[shardOf(id, count)].push(id);
    const outcomes = await this.fanOut(call, t, (g) =>
      owned[g.index].length > 0 ? { method: 'Explain', req: { request: forShard, ad_ids: owned[g.index] } } : { method: 'Retrieve', req: forShard },
    );
    this.requestError(outcomes);
    const merged = this.merge(
      req,
      n,
      outcomes.map((o) => ({
        shard: o.shard,
        response: (o.value ? (owned[o.shard].length > 0 ? (o.value as { response?: RetrieveResponseMsg }).response : (o.value as RetrieveResponseMsg)) : undefined) ?? undefined,
        outcome: o,
      })),
      true,
    );
    const position = new Map<string, number>();
    (merged.response.candidates ?? []).forEach((c, i) => position.set(c.ad_id, i + 1));
    const byId = new Map<string, AdExplanationMsg>();
    for (const o of outcomes) {
      if (owned[o.shard].length === 0) continue;
      if (!o.value) {
        for (const id of owned[o.shard]) {
          byId.set(id, { ad_id: id, outcome: 'dropped', stage: `shard-${o.shard}`, reason: 'shard_unavailable', detail: o.error ? `${grpc.status[o.error.code]}: ${o.error.details}` : 'no answer' });
        }
        continue;
      }
      for (const a of (o.value as { ads?: AdExplanationMsg[] }).ads ?? []) byId.set(a.ad_id, a);
    }
    const ads = adIds.map((id): AdExplanationMsg => {
      const a = byId.get(id) ?? { ad_id: id, outcome: 'unknown_ad' };
      if (a.outcome !== 'returned') return a;
      const p = position.get(id);
      if (p !== undefined) return { ...a, position: p };
      const c = merged.cut.get(id);
      return { ad_id: id, outcome: 'dropped', stage: 'Root', reason: c?.reason ?? 'below_cutoff', detail: c?.detail ?? 'cut when the shards\' answers were merged', position: 0, score: a.score };
    });
    return { response: merged.response, ads };
  }

  /**
   * An Admin call routed by ad: the list field split by shard (keeping each item's index for
   * error messages), one call per shard at once, the answers combined.
   */
  private async route<T>(
    call: grpc.ServerUnaryCall<unknown, unknown>,
    method: string,
    field: string,
    idOf: (item: T) => string | undefined,
    combine: (answers: unknown[]) => unknown,
    validate: (req: never) => unknown,
  ): Promise<unknown> {
    this.authorize(call);
    const req = (call.request ?? {}) as Record<string, unknown>;
    // The validator refuses an empty list and an item without an ad_id, naming the field.
    validate(req as never);
    const read = method === 'GetAds';
    const minSeq = read ? validateSeq('min_seq', req.min_seq as string | undefined) : 0;
    const count = this.groups.length;
    const parts = this.groups.map(() => ({ items: [] as T[], index: [] as number[] }));
    ((req[field] as T[] | undefined) ?? []).forEach((item, i) => {
      const p = parts[shardOf(idOf(item)!, count)];
      p.items.push(item);
      p.index.push(i);
    });
    const deadline = this.deadlineOf(call);
    const md = this.forwardMetadata(call);
    const asked = parts.map((p, s) => ({ s, p })).filter((x) => x.p.items.length > 0);
    const outcomes = await Promise.all(
      asked.map(async ({ s, p }) => {
        const part: Record<string, unknown> = { ...req, [field]: p.items };
        // A read sees every write this root acknowledged for the shard, on whichever replica
        // serves it; with --nats, every write in the stream when it arrived.
        if (read) {
          const inStream = await this.streamWatermark(s, Math.max(50, Math.min(1000, (deadline - Date.now()) / 4)));
          part.min_seq = String(Math.max(minSeq, this.ackedSeq[s], inStream ?? 0));
        }
        // Writes are not hedged (a duplicate would be a second write); a replica that fails fast is replaced.
        const o = await this.groups[s].call<unknown>('admin', method, part, md, deadline, this.config_.root, read);
        this.telemetry.metrics?.shardCall(s, o.error ? grpc.status[o.error.code] : 'OK');
        if (!read && !o.error) {
          const seq = Number((o.value as { seq?: string }).seq ?? 0);
          if (seq > this.ackedSeq[s]) this.ackedSeq[s] = seq;
        }
        return { s, p, o };
      }),
    );
    const failed = outcomes.filter((x) => x.o.error);
    if (failed.length > 0) {
      const first = failed[0];
      const err = first.o.error!;
      // Field positions in the shard's part -> positions in the caller's request.
      const details = err.details.replace(new RegExp(`^${field}\\[(\\d+)\\]`), (_m, k: string) => `${field}[${first.p.index[Number(k)] ?? k}]`);
      const applied = outcomes.filter((x) => !x.o.error).map((x) => `shard-${x.s}`);
      const note = applied.length > 0 && method !== 'GetAds' ? ` (shard-${first.s} failed; ${applied.join(', ')} applied their part)` : ` (shard-${first.s})`;
      throw new RpcError(err.code, details + note);
    }
    return combine(outcomes.map((x) => x.o.value));
  }
}

/**
 * Merges the shards' answers (CONTRACT section 6): candidates by score (ties by ad_id), the
 * pipeline's advertiser and category caps across shards, the best `n`; a shard without an
 * answer is `shard-I` in degraded_stages; with `debug`, a stage row per shard (and the
 * shard's own rows as `shard-I/<Stage>`) and one for the merge. `cut` says why each ad a
 * shard returned was left out.
 */
export function mergeAnswers(config: Config, req: RetrieveRequestMsg, n: number, responses: ShardAnswer[], explain = false): Merged {
  const started = performance.now();
  const pipelineName = responses.find((r) => r.response?.pipeline)?.response?.pipeline || req.pipeline || config.default_pipeline;
  const pipeline = config.pipelines[pipelineName] ?? config.pipelines[config.default_pipeline];
  const div = pipeline.stages.Diversifier;
  const all: CandidateMsg[] = [];
  const degraded = new Set<string>();
  const stages: StageStatsMsg[] = [];
  let dataSeq: number | null = null;
  for (const r of responses) {
    const o = r.outcome;
    if (!r.response) {
      degraded.add(`shard-${r.shard}`);
      if (req.debug) stages.push(stageRow({ name: `shard-${r.shard}`, latency_ms: o.ms, status: o.error?.code === grpc.status.DEADLINE_EXCEEDED ? 'timeout' : 'error', detail: o.error ? `${grpc.status[o.error.code]}: ${o.error.details}` : 'no answer' }));
      continue;
    }
    const resp = r.response;
    for (const c of resp.candidates ?? []) all.push(c);
    for (const s of resp.degraded_stages ?? []) degraded.add(s);
    const seq = Number(resp.data_seq ?? 0);
    dataSeq = dataSeq === null ? seq : Math.min(dataSeq, seq);
    if (req.debug) {
      stages.push(stageRow({
        name: `shard-${r.shard}`,
        candidates_out: resp.candidates?.length ?? 0,
        latency_ms: o.ms,
        status: 'ok',
        detail: `replica=${o.replica} attempts=${o.attempts}${o.hedged ? ` hedged=${o.hedgeWon}` : ''} data_seq=${seq}`,
      }));
      for (const s of resp.stages ?? []) stages.push(stageRow({ ...s, name: `shard-${r.shard}/${s.name}` }));
    }
  }
  all.sort((a, b) => (b.score ?? 0) - (a.score ?? 0) || (a.ad_id < b.ad_id ? -1 : a.ad_id > b.ad_id ? 1 : 0));
  const perAdvertiser = new Map<string, number>();
  const perCategory = new Map<string, number>();
  const out: CandidateMsg[] = [];
  const cut = new Map<string, { reason: 'below_cutoff' | 'advertiser_cap' | 'category_cap'; detail: string }>();
  const seen = new Set<string>();
  let lastKept: number | undefined;
  for (const c of all) {
    if (seen.has(c.ad_id)) continue;
    seen.add(c.ad_id);
    const adv = c.advertiser_id ?? '';
    const cat = c.category ?? '';
    if (out.length >= n) {
      // Only Explain reads why an ad was cut: a Retrieve skips the strings (and their garbage).
      if (!explain) break;
      cut.set(c.ad_id, { reason: 'below_cutoff', detail: `score ${fmt(c.score)} below the last of the ${n} kept across shards (${fmt(lastKept)})` });
      continue;
    }
    if ((perAdvertiser.get(adv) ?? 0) >= div.max_per_advertiser) {
      if (explain) cut.set(c.ad_id, { reason: 'advertiser_cap', detail: `advertiser ${adv} already has ${div.max_per_advertiser} better-scored ads across shards (max_per_advertiser)` });
      continue;
    }
    if ((perCategory.get(cat) ?? 0) >= div.max_per_category) {
      if (explain) cut.set(c.ad_id, { reason: 'category_cap', detail: `category ${cat} already has ${div.max_per_category} better-scored ads across shards (max_per_category)` });
      continue;
    }
    perAdvertiser.set(adv, (perAdvertiser.get(adv) ?? 0) + 1);
    perCategory.set(cat, (perCategory.get(cat) ?? 0) + 1);
    out.push({ ad_id: c.ad_id, advertiser_id: adv, campaign_id: c.campaign_id ?? '', category: cat, score: c.score ?? 0, sources: c.sources ?? [] });
    lastKept = c.score;
  }
  if (req.debug) stages.push(stageRow({ name: 'RootMerge', candidates_in: all.length, candidates_out: out.length, latency_ms: performance.now() - started, status: 'ok', detail: `shards=${responses.length} answered=${responses.filter((r) => r.response).length}` }));
  return {
    response: {
      candidates: out,
      degraded: degraded.size > 0,
      degraded_stages: [...degraded],
      stages,
      request_id: req.request_id ?? '',
      pipeline: pipelineName,
      data_seq: String(dataSeq ?? 0),
    },
    cut,
  };
}


/** A stage row with every field set (the response encoder writes them all). */
function stageRow(s: Partial<StageStatsMsg> & { name: string }): Required<StageStatsMsg> {
  return { candidates_in: 0, candidates_out: 0, latency_ms: 0, status: 'ok', detail: '', ...s, dropped: { ...(s.dropped ?? {}) } };
}

function sumUpsert(answers: unknown[]): unknown {
  let inserted = 0;
  let updated = 0;
  let seq = 0;
  for (const a of answers as Array<{ inserted?: number; updated?: number; seq?: string }>) {
    inserted += a.inserted ?? 0;
    updated += a.updated ?? 0;
    seq = Math.max(seq, Number(a.seq ?? 0));
  }
  return { inserted, updated, seq: String(seq) };
}

function sumCounted(key: string): (answers: unknown[]) => unknown {
  return (answers) => {
    let n = 0;
    let seq = 0;
    const unknown: string[] = [];
    for (const a of answers as Array<Record<string, unknown>>) {
      n += Number(a[key] ?? 0);
      seq = Math.max(seq, Number(a.seq ?? 0));
      unknown.push(...((a.unknown_ad_ids as string[] | undefined) ?? []));
    }
    return { [key]: n, unknown_ad_ids: unknown, seq: String(seq) };
  };
}

function concatAds(answers: unknown[]): unknown {
  return { ads: (answers as Array<{ ads?: unknown[] }>).flatMap((a) => a.ads ?? []) };
}

function fmt(x: number | undefined): string {
  return x === undefined ? '-' : x.toPrecision(6);
}

function isServiceError(e: unknown): e is grpc.ServiceError {
  return typeof e === 'object' && e !== null && 'code' in e && 'details' in e;
}
