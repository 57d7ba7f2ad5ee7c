/**
 * The gRPC server: funnel.v1.Retrieval and funnel.v1.Admin, the standard health service
 * (NOT_SERVING until the data is loaded and while draining) and server reflection. Handlers are
 * async and answer exactly once; a stage failure is never an RPC error; overload is answered
 * RESOURCE_EXHAUSTED at once.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from 'pino';
import { route } from '../config/experiments';
import type { Metrics } from '../telemetry/metrics';
import type { RequestLog } from '../telemetry/request-log';
import type { FeatureLog } from '../telemetry/feature-log';
import type { RequestTrace, RequestTracer } from '../telemetry/request-tracer';
import { extractContext } from '../telemetry/tracing';
import type { Config } from '../config/schema';
import type { PipelineConfig } from '../config/schema';
import { explainIds } from '../pipeline/explain';
import { Funnel, type FunnelResult } from '../pipeline/funnel';
import type { StageObserver } from '../pipeline/run-stage';
import { sourceNames, type RetrieveQuery, type StageReport } from '../pipeline/types';
import { AD_ID } from '../store/catalog-schema';
import type { ServingState } from '../serving/state';
import { ReplicationError, type ApplyResult, type Replica } from '../cluster/replica';
import type { StreamMessage } from '../cluster/messages';
import { shardOf } from '../cluster/shard';
import { AdmissionControl, ExpiryTimer, admitCall, callDeadline, deadlineOr, type Permit, type Refusal, type ShedReason, type Waiting } from './admission';
import { decodeRetrieveRequest, encodeRetrieveResponse, type DecodedRetrieve, type RetrieveResponseMessage } from './codec';
import { retrieveFromJson } from './request-json';
import { LoopLag } from './loop-lag';
import { packageDefinition, reflectedDefinition } from './proto';
import { RpcError, invalid, recordToAd, validateAdIds, validateAds, validateEvents, validateRetrieve, validateSeq, validateSpendEntries, validateStatus, type AdMessage, type EventMessage, type SpendEntryMessage } from './validate';

/** TLS files for both services; `clientCa` turns on mutual TLS (client certificates required). */
export interface TlsOptions {
  cert: string;
  key: string;
  clientCa?: string;
}

/** Options of a server. */
export interface ServerOptions {
  host: string;
  port: number;
  /** Bearer token Admin calls must present; undefined with no mTLS = Admin refuses every call. */
  adminToken?: string;
  tls?: TlsOptions;
  /** Longest a SIGTERM drain waits for in-flight calls before cancelling them. */
  drainTimeoutMs: number;
}

/** Telemetry of a server: metrics (prom-client), a tracer (null = tracing off) and the request log. */
export interface ServerTelemetry {
  metrics?: Metrics;
  tracer?: RequestTracer | null;
  /** Sampled log of answered Retrieves (`--request-log`). */
  requestLog?: RequestLog;
  /** EarlyRanker features of sampled Retrieves (`--feature-log`); the funnel samples (config `feature_log`). */
  featureLog?: FeatureLog;
}

/** Extra hooks (tests, benchmarks). */
export interface ServerHooks {
  observer?: StageObserver;
  /** Called once per RPC with its method, status code and duration. */
  onRpc?(method: string, code: grpc.status, ms: number): void;
  /** Called per Retrieve with the degraded stages (may be empty). */
  onRetrieve?(pipeline: string, degradedStages: string[]): void;
  /** Called when a Retrieve is shed for overload, with the reason (the label of funnel_shed_requests_total). */
  onShed?(reason: ShedReason): void;
}

/** Names the health service reports. */
export const HEALTH_SERVICES = ['', 'funnel.v1.Retrieval', 'funnel.v1.Admin'];

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => void;

/** A call answered before its handler runs: refused, with no Error built (refusals are the overload path). */
interface EarlyAnswer {
  kind: 'early';
  code: grpc.status;
  details: string;
}

function early(code: grpc.status, details: string): EarlyAnswer {
  return { kind: 'early', code, details };
}

function toStatus(err: unknown): { code: grpc.status; details: string } {
  if (err instanceof RpcError) return { code: err.code, details: err.details };
  return { code: grpc.status.INTERNAL, details: `internal error: ${(err as Error)?.message ?? String(err)}` };
}

/** Constant-time comparison of a presented token with the configured one. */
/** Throws UNAUTHENTICATED unless `metadata` carries `authorization: Bearer <token>` with this token. */
export function checkBearer(metadata: grpc.Metadata, token: string): void {
  const header = metadata.get('authorization')[0];
  const value = typeof header === 'string' ? header : header?.toString('utf8');
  const m = value ? /^Bearer\s+(.+)$/i.exec(value.trim()) : null;
  if (!m) throw new RpcError(grpc.status.UNAUTHENTICATED, 'Admin calls need "authorization: Bearer <token>" metadata');
  if (!tokenMatches(m[1], token)) throw new RpcError(grpc.status.UNAUTHENTICATED, 'the bearer token does not match');
}

/** Constant-time comparison of a presented bearer token with the expected one. */
function tokenMatches(presented: string, expected: string): boolean {
  const a = crypto.createHash('sha256').update(presented).digest();
  const b = crypto.createHash('sha256').update(expected).digest();
  return crypto.timingSafeEqual(a, b);
}

/** The gRPC server options of a funnel server (the root's too), from the config's limits. */
export function serverOptions(config: Config): grpc.ServerOptions {
  return {
    'grpc.max_receive_message_length': config.limits.max_message_bytes,
    'grpc.max_send_message_length': Math.max(config.limits.max_message_bytes, 16 << 20),
    // Clients re-resolve (and find pods the autoscaler added) when a connection ages out.
    'grpc.max_connection_age_ms': 300_000,
    'grpc.max_connection_age_grace_ms': 30_000,
    // Not 'grpc.enable_channelz': 0 (it would save channelz's per-call bookkeeping): in grpc-js
    // 1.14.7 the server then loses track of its HTTP/2 sessions, forceShutdown leaves them open
    // and a drained process with a client's health Watch connected lives on for minutes.
    // One connection cannot flood the server with streams: past the cap its client holds them.
    ...(config.limits.max_concurrent_streams > 0 && { 'grpc.max_concurrent_streams': config.limits.max_concurrent_streams }),
  };
}

/** A Retrieval service definition whose Retrieve takes its request as bytes (for the codec) and encodes its answer directly. */
export function rawRetrievalService(): grpc.ServiceDefinition {
  const retrieval = { ...(packageDefinition()['funnel.v1.Retrieval'] as grpc.ServiceDefinition) };
  retrieval.Retrieve = {
    ...retrieval.Retrieve,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (m: RetrieveResponseMessage) => encodeRetrieveResponse(m),
  };
  return retrieval;
}

/** The funnel's gRPC server over one serving state. */
export class FunnelServer {
  private readonly server: grpc.Server;
  private readonly health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'NOT_SERVING' as const])));
  private funnel_: Funnel | undefined;
  private state_: ServingState | undefined;
  /** Retrieve (and Explain) calls in flight and the adaptive limit on them. */
  private readonly admission: AdmissionControl;
  /** Unary calls of both services in flight (the drain waits for these, not for health watches). */
  private calls = 0;
  private readonly loopLag = new LoopLag().start();
  private draining = false;
  private boundPort = 0;
  /** Fires when the first waiting Retrieve's time runs out (admission.nextExpiryMs()). */
  private readonly expiry: ExpiryTimer;
  private config_: Config;
  /** A replica of a sharded cluster: Admin writes go through its stream, tokens are stream sequence numbers. */
  private replica_: Replica | undefined;
  private replicaHealth: NodeJS.Timeout | undefined;
  private servingHealthy = false;

  constructor(
    config: Config,
    private readonly options: ServerOptions,
    private readonly log: Logger,
    private readonly hooks: ServerHooks = {},
    private readonly telemetry: ServerTelemetry = {},
  ) {
    this.config_ = config;
    this.admission = new AdmissionControl((limit) => telemetry.metrics?.concurrencyLimit(limit));
    this.expiry = new ExpiryTimer(this.admission, () => this.config_.limits);
    telemetry.tracer?.setSampleRatio(config.tracing.sample_ratio);
    this.server = new grpc.Server(serverOptions(config));
    const def = packageDefinition();
    // Retrieve's request reaches the handler as its bytes, decoded by our codec only once the call
    // is admitted (a refusal under overload costs no decoding); the embedding is copied once,
    // straight into a Float32Array. Its answer is encoded straight into bytes, without
    // protobufjs's fromObject pass.
    this.server.addService(rawRetrievalService(), {
      Retrieve: this.unary(
        'funnel.v1.Retrieval',
        'Retrieve',
        (call: grpc.ServerUnaryCall<Buffer, unknown>, t, permit) => this.retrieve(call, t, permit),
        (call, resume) => this.admit(call, resume),
      ),
      Explain: this.unary('funnel.v1.Retrieval', 'Explain', (call: grpc.ServerUnaryCall<ExplainMessage, unknown>, t) => this.explain(call, t)),
    });
    const admin = def['funnel.v1.Admin'] as grpc.ServiceDefinition;
    this.server.addService(admin, {
      UpsertAds: this.admin('UpsertAds', (req: { ads?: AdMessage[] }) => this.upsertAds(req)),
      SetAdStatus: this.admin('SetAdStatus', (req: { ad_ids?: string[]; status?: string }) => this.setAdStatus(req)),
      DeleteAds: this.admin('DeleteAds', (req: { ad_ids?: string[] }) => this.deleteAds(req)),
      GetAds: this.admin('GetAds', (req: { ad_ids?: string[]; min_seq?: string }, call) => this.getAds(req, call)),
      ReportSpend: this.admin('ReportSpend', (req: { entries?: SpendEntryMessage[] }) => this.reportSpend(req)),
      RecordEvents: this.admin('RecordEvents', (req: { events?: EventMessage[] }) => this.recordEvents(req)),
    });
    this.health.addToServer(this.server);
    new ReflectionService(reflectedDefinition()).addToServer(this.server);
  }

  /** The config requests start with (swapped atomically by reloads; a request keeps the one it began with). */
  get config(): Config {
    return this.config_;
  }
  set config(c: Config) {
    if (c.limits.max_message_bytes !== this.config_.limits.max_message_bytes) {
      this.log.warn(
        { was: this.config_.limits.max_message_bytes, now: c.limits.max_message_bytes },
        'limits.max_message_bytes is a gRPC server option: the new value applies after a restart',
      );
    }
    if (c.limits.max_concurrent_streams !== this.config_.limits.max_concurrent_streams) {
      this.log.warn(
        { was: this.config_.limits.max_concurrent_streams, now: c.limits.max_concurrent_streams },
        'limits.max_concurrent_streams is a gRPC server option: the new value applies after a restart',
      );
    }
    this.funnel_?.prepare(c);
    this.state_?.configure(c);
    this.replica_?.configure(c);
    this.telemetry.tracer?.setSampleRatio(c.tracing.sample_ratio);
    this.config_ = c;
  }

  /** Serves `state` from now on and marks the services SERVING. */
  attach(state: ServingState): void {
    state.configure(this.config_);
    const funnel = new Funnel(state, this.hooks.observer, this.telemetry.featureLog ?? null);
    funnel.prepare(this.config_);
    this.state_ = state;
    this.funnel_ = funnel;
    this.setHealth(true);
  }

  /**
   * Makes this server a replica of a shard: Admin writes are published to the shard's stream
   * and answered once applied here; `min_seq` and `data_seq` are stream sequence numbers; health
   * is NOT_SERVING while the replica lags past config cluster.max_lag_*.
   */
  attachReplica(replica: Replica): void {
    this.replica_ = replica;
    replica.configure(this.config_);
    this.replicaHealth = setInterval(() => this.setHealth(this.state_ !== undefined), 500);
    this.replicaHealth.unref();
  }

  private setHealth(loaded: boolean): void {
    const ok = loaded && !this.draining && !(this.replica_?.tooFarBehind() ?? false);
    if (ok === this.servingHealthy) return;
    this.servingHealthy = ok;
    if (!ok && loaded && !this.draining) this.log.warn({ status: this.replica_?.status() }, 'replica too far behind the stream: health NOT_SERVING');
    for (const s of HEALTH_SERVICES) this.health.setStatus(s, ok ? 'SERVING' : 'NOT_SERVING');
  }

  /** The data sequence number answers carry and `min_seq` compares with: the stream's for a replica. */
  private dataSeq(state: ServingState): number {
    return this.replica_ ? this.replica_.appliedSeq : state.seq;
  }

  private get state(): ServingState {
    if (!this.state_) throw new RpcError(grpc.status.UNAVAILABLE, 'the data is still loading');
    return this.state_;
  }
  private get funnel(): Funnel {
    if (!this.funnel_) throw new RpcError(grpc.status.UNAVAILABLE, 'the data is still loading');
    return this.funnel_;
  }

  /** Retrieve calls in flight. */
  get inFlightCount(): number {
    return this.admission.inFlight;
  }

  /** The limit on Retrieve calls in flight now (adaptive unless limits.admission.adaptive is false). */
  get concurrencyLimit(): number {
    return this.admission.limit(this.config_.limits);
  }

  /** Sustained event-loop lag, ms. */
  get eventLoopLagMs(): number {
    return this.loopLag.lagMs;
  }

  /** The serving state, once attached. */
  get servingState(): ServingState | undefined {
    return this.state_;
  }

  /** Binds the port; resolves to the bound port (useful with port 0). */
  /** Binds the port (`port` overrides the constructor's: a worker learns it from its primary). */
  async listen(port = this.options.port): Promise<number> {
    const creds = this.credentials();
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(`${this.options.host}:${port}`, creds, (err, port) => (err ? reject(err) : resolve(port)));
    });
    return this.boundPort;
  }

  /** Health NOT_SERVING, refuse new calls, wait for in-flight ones (up to the drain timeout), then stop. */
  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    clearInterval(this.replicaHealth);
    this.servingHealthy = false;
    for (const s of HEALTH_SERVICES) this.health.setStatus(s, 'NOT_SERVING');
    const started = Date.now();
    await new Promise<void>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearInterval(poll);
        resolve();
      };
      // tryShutdown also waits for open streams (health Watch): once every unary call has
      // answered (and its answer had 100 ms to be written), the rest are cancelled rather than
      // waited for until the drain timeout.
      let idleSince = 0;
      const poll = setInterval(() => {
        if (this.calls !== 0) {
          idleSince = 0;
        } else if (idleSince === 0) {
          idleSince = Date.now();
        } else if (Date.now() - idleSince >= 100) {
          this.server.forceShutdown();
          finish();
        } else if (Date.now() - started >= this.options.drainTimeoutMs) {
          this.log.warn({ in_flight: this.calls }, 'drain timeout: cancelling the calls still running');
          this.server.forceShutdown();
          finish();
        }
      }, 10);
      this.server.tryShutdown(finish);
    });
    this.loopLag.stop();
    this.expiry.disarm();
  }

  /** Stops at once (tests). */
  forceStop(): void {
    this.loopLag.stop();
    this.expiry.disarm();
    this.server.forceShutdown();
  }

  private credentials(): grpc.ServerCredentials {
    const tls = this.options.tls;
    if (!tls) return grpc.ServerCredentials.createInsecure();
    const ca = tls.clientCa ? fs.readFileSync(tls.clientCa) : null;
    return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: fs.readFileSync(tls.cert), private_key: fs.readFileSync(tls.key) }], Boolean(tls.clientCa));
  }

  /**
   * A handler that answers exactly once, with its RPC metric, hook and span. `admit`, when given,
   * runs first, synchronously: a refusal is answered at once, without running `fn`; a call told
   * to wait runs (or is answered) when `admit`'s `resume` is called.
   */
  private unary<Req, Res>(
    service: string,
    method: string,
    fn: (call: grpc.ServerUnaryCall<Req, Res>, trace: CallTrace, permit?: Permit) => Promise<Res>,
    admit?: (call: grpc.ServerUnaryCall<Req, Res>, resume: (a: Permit | EarlyAnswer) => void) => Permit | EarlyAnswer | Waiting,
  ): Unary<Req, Res> {
    return (call, callback) => {
      const started = process.hrtime.bigint();
      let answered = false;
      this.calls++;
      const tracer = this.telemetry.tracer;
      const t: CallTrace = tracer ? tracer.startRpc(service, method, extractContext(call.metadata), this.boundPort) : null;
      const answer = (err: { code: grpc.status; details: string } | null, res?: Res) => {
        if (answered) return;
        answered = true;
        this.calls--;
        const code = err ? err.code : grpc.status.OK;
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        this.hooks.onRpc?.(method, code, ms);
        this.telemetry.metrics?.rpc(service, method, grpc.status[code] ?? String(code), ms / 1000);
        t?.end(code, grpc.status[code] ?? String(code), err?.details);
        if (err) callback(err as grpc.ServiceError);
        else callback(null, res);
      };
      const run = (permit?: Permit) =>
        fn(call, t, permit).then(
          (res) => answer(null, res),
          (err) => {
            const s = toStatus(err);
            if (s.code === grpc.status.INTERNAL) this.log.error({ method, err: (err as Error)?.stack ?? String(err) }, 'handler failed');
            answer(s);
          },
        );
      if (!admit) {
        run();
        return;
      }
      const resume = (a: Permit | EarlyAnswer) => {
        if (a.kind === 'early') answer(a);
        else run(a);
      };
      const a = admit(call, resume);
      if (a.kind !== 'waiting') resume(a);
    };
  }

  private admin<Req, Res>(method: string, fn: (req: Req, call: grpc.ServerUnaryCall<Req, unknown>) => Promise<Res> | Res): Unary<Req, Res> {
    return this.unary('funnel.v1.Admin', method, async (call) => {
      this.authorize(call);
      if (this.draining) throw new RpcError(grpc.status.UNAVAILABLE, 'server is shutting down');
      return fn(call.request, call);
    });
  }

  /**
   * The consistency token: resolves true once the write with sequence number `minSeq` is
   * applied here (at once when it already is), false when `deadlineMs` comes first. The wait
   * stops short of the deadline: a quarter of the time left (at least 20 ms) stays for the
   * answer, so that the caller hears UNAVAILABLE or a degraded answer, not its own timeout.
   */
  private async reachSeq(state: ServingState, minSeq: number, deadlineMs: number, signal?: AbortSignal): Promise<boolean> {
    if (minSeq <= this.dataSeq(state)) return true;
    const waitUntil = deadlineMs - Math.max(20, (deadlineMs - Date.now()) / 4);
    const replica = this.replica_;
    return replica ? replica.waitFor(minSeq, waitUntil, signal) : state.waitForSeq(minSeq, waitUntil, signal);
  }

  private authorize(call: grpc.ServerUnaryCall<unknown, unknown>): void {
    // Under mutual TLS every connection presented a certificate signed by the client CA.
    if (this.options.tls?.clientCa) return;
    const token = this.options.adminToken;
    if (token === undefined) {
      throw new RpcError(grpc.status.UNAUTHENTICATED, 'Admin is disabled: the server has no --admin-token-file and no mutual TLS');
    }
    checkBearer(call.metadata, token);
  }

  private async retrieve(call: grpc.ServerUnaryCall<Buffer, unknown>, t: CallTrace, permit?: Permit): Promise<unknown> {
    const run = await this.execute(call, () => decodeRetrieveRequest(call.request), t, false, '', permit);
    this.telemetry.requestLog?.record({
      timeMs: Date.now(),
      pipeline: run.query.pipeline,
      dataSeq: run.result.seq,
      request: run.request,
      adIds: run.response.candidates.map((c) => c.ad_id),
    });
    return run.response;
  }

  /** Explain: the request run exactly as Retrieve runs it, traced, then each asked ad explained. Needs Admin's credentials. */
  private async explain(call: grpc.ServerUnaryCall<ExplainMessage, unknown>, t: CallTrace): Promise<unknown> {
    this.authorize(call);
    const req = call.request;
    const limit = this.config_.limits.max_explain_ads;
    const adIds = req.ad_ids ?? [];
    if (adIds.length === 0) throw invalid('ad_ids', 'must name at least one ad');
    if (adIds.length > limit) throw invalid('ad_ids', `has ${adIds.length} ids, more than the limit of ${limit} (limits.max_explain_ads)`);
    adIds.forEach((id, i) => {
      if (typeof id !== 'string' || !AD_ID.test(id)) throw invalid(`ad_ids[${i}]`, 'must be 1-128 characters of [A-Za-z0-9._:/-]');
    });
    let request: DecodedRetrieve;
    try {
      // proto-loader's object has the proto's field names: proto3 JSON's reader takes it as is.
      request = retrieveFromJson(req.request ?? {});
    } catch (err) {
      throw new RpcError(grpc.status.INVALID_ARGUMENT, `request.${(err as Error).message}`);
    }
    const run = await this.execute(call, request, t, true, 'request.');
    const state = this.state;
    const ads = explainIds(
      state,
      run.pipeline,
      run.query,
      run.result,
      run.returnedIds,
      adIds.map((adId) => ({ adId, id: state.ads.idOf(adId) })),
    );
    return { response: run.response, ads };
  }

  /**
   * Admission of a Retrieve or Explain, before its request is decoded: a permit (the call now
   * counts in flight), or the answer to give at once: UNAVAILABLE while loading or draining,
   * DEADLINE_EXCEEDED when the deadline has passed, RESOURCE_EXHAUSTED when shed (counted by
   * reason). Given `resume`, a call that finds the adaptive limit reached may wait for a slot
   * instead (limits.admission.queue_timeout_ms): `resume` then hears its permit or answer once.
   */
  private admit(call: grpc.ServerUnaryCall<unknown, unknown>): Permit | EarlyAnswer;
  private admit(call: grpc.ServerUnaryCall<unknown, unknown>, resume: (a: Permit | EarlyAnswer) => void): Permit | EarlyAnswer | Waiting;
  private admit(call: grpc.ServerUnaryCall<unknown, unknown>, resume?: (a: Permit | EarlyAnswer) => void): Permit | EarlyAnswer | Waiting {
    if (this.draining) return early(grpc.status.UNAVAILABLE, 'server is shutting down');
    if (!this.state_ || !this.funnel_) return early(grpc.status.UNAVAILABLE, 'the data is still loading');
    const remainingMs = callDeadline(call) - Date.now();
    if (remainingMs <= 0) return early(grpc.status.DEADLINE_EXCEEDED, 'the deadline had passed before the call was handled');
    const facts = { remainingMs, loopLagMs: this.loopLag.lagMs };
    if (!resume) return this.admitted(this.admission.admit(performance.now(), this.config_.limits, facts));
    const a = admitCall(this.admission, this.expiry, this.config_.limits, call, facts, (outcome) => {
      if (outcome.kind === 'cancelled') {
        resume(early(grpc.status.CANCELLED, outcome.details));
        return;
      }
      const answer = this.admitted(outcome);
      if (answer.kind === 'admitted' && this.draining) {
        this.admission.release(answer, performance.now(), this.config_.limits, false);
        resume(early(grpc.status.UNAVAILABLE, 'server is shutting down'));
      } else {
        resume(answer);
      }
    });
    return a.kind === 'waiting' ? a : this.admitted(a);
  }

  /** A permit as it is; a refusal counted (hook, metric) and turned into RESOURCE_EXHAUSTED. */
  private admitted(a: Permit | Refusal): Permit | EarlyAnswer {
    if (a.kind === 'admitted') return a;
    this.hooks.onShed?.(a.reason);
    this.telemetry.metrics?.shedRequest(a.reason);
    return early(grpc.status.RESOURCE_EXHAUSTED, a.details);
  }


  /**
   * Runs one Retrieve (decoding, validation, the funnel, the last re-check) under `admitted` (or
   * admits it first: Explain) and builds its response; `request` is decoded only once the call is
   * admitted; `traced` keeps what each stage handed on.
   */
  private async execute(
    call: grpc.ServerUnaryCall<unknown, unknown>,
    request: DecodedRetrieve | (() => DecodedRetrieve),
    t: CallTrace,
    traced: boolean,
    fieldPrefix = '',
    admitted?: Permit,
  ): Promise<{ request: DecodedRetrieve; query: RetrieveQuery; pipeline: PipelineConfig; result: FunnelResult; response: RetrieveResponseMessage; returnedIds: number[] }> {
    const permit = admitted ?? this.admit(call);
    if (permit.kind === 'early') throw new RpcError(permit.code, permit.details);
    let measured = false;
    const abort = new AbortController();
    const onCancel = () => abort.abort(new Error('cancelled by the client'));
    call.on('cancelled', onCancel);
    try {
      const state = this.state;
      const funnel = this.funnel;
      const config = this.config_;
      const req = typeof request === 'function' ? request() : request;
      const routed = route(config, typeof req.user_id === 'string' ? req.user_id : '', typeof req.pipeline === 'string' ? req.pipeline : '');
      const query = withFieldPrefix(fieldPrefix, () => validateRetrieve(req, config, state.dim, routed.pipeline));
      const deadlineMs = deadlineOr(call, config.limits.default_deadline_ms);
      const metrics = this.telemetry.metrics;
      const recordStage = metrics ? (r: StageReport) => metrics.stage(query.pipeline, r) : undefined;
      const telemetryObserver = t ? t.stageObserver(recordStage) : recordStage ? { start: () => recordStage } : undefined;
      // Passing an observer replaces the funnel's default (hooks.observer): keep both.
      const observer = telemetryObserver && this.hooks.observer ? bothObservers(this.hooks.observer, telemetryObserver) : telemetryObserver;
      if (t) {
        t.setAttributes({
          'funnel.request_id': query.requestId,
          'funnel.pipeline': query.pipeline,
          'funnel.experiment.arm': routed.arm,
          'funnel.experiment.bucket': routed.bucket,
          'funnel.num_results': query.numResults,
        });
      }
      const pipeline = config.pipelines[query.pipeline];
      measured = true;
      // The consistency token: wait (within the deadline) until the asked write is applied here.
      let stale = false;
      if (!(await this.reachSeq(state, req.min_seq, deadlineMs, abort.signal))) {
        if (config.limits.on_min_seq === 'unavailable') {
          throw new RpcError(grpc.status.UNAVAILABLE, `min_seq ${req.min_seq} is not applied here yet (data_seq ${this.dataSeq(state)}) and the deadline passed (limits.on_min_seq)`);
        }
        stale = true;
      }
      const result = await funnel.run(query, pipeline, deadlineMs, abort.signal, observer, traced);
      if (stale) result.degradedStages.push('Consistency');
      if (t) {
        t.setAttributes({ 'funnel.degraded': result.degradedStages.length > 0, 'funnel.data_seq': result.seq });
        if (result.degradedStages.length > 0) t.setAttributes({ 'funnel.degraded_stages': result.degradedStages });
      }
      if (result.deadlineExceeded && config.limits.on_deadline === 'error') {
        throw new RpcError(grpc.status.DEADLINE_EXCEEDED, `deadline passed (degraded stages: ${result.degradedStages.join(', ') || 'none'})`);
      }
      metrics?.retrieve(query.pipeline, routed.arm, result.degradedStages);
      this.hooks.onRetrieve?.(query.pipeline, result.degradedStages);
      const ads = state.ads;
      const now = Date.now();
      // An Admin write may have landed since Filters ran: re-check what can change live, and drop
      // ads set or removed since the eligible set was taken (an id reused, targeting changed).
      const answered = result.candidates.filter(
        (c) =>
          !ads.changedAfter(c.id, result.epoch) &&
          ads.servable(c.id, now) &&
          !query.excludeAdIds.has(ads.adId(c.id)) &&
          !query.excludeAdvertiserIds.has(ads.advertiserId(c.id)) &&
          !query.blockedCategories.has(ads.category(c.id)),
      );
      const response: RetrieveResponseMessage = {
        candidates: answered.map((c) => ({
          ad_id: ads.adId(c.id),
          advertiser_id: ads.advertiserId(c.id),
          campaign_id: ads.campaignId(c.id),
          category: ads.category(c.id),
          score: c.score,
          sources: sourceNames(c.sources),
        })),
        degraded: result.degradedStages.length > 0,
        degraded_stages: result.degradedStages,
        stages: query.debug
          ? result.reports.map((r) => ({
              name: r.name,
              candidates_in: r.candidatesIn,
              candidates_out: r.candidatesOut,
              latency_ms: r.latencyMs,
              status: r.status,
              detail: Object.entries(r.detail)
                .map(([k, v]) => `${k}=${v}`)
                .concat(r.error ? [`error=${r.error}`] : [])
                .join(' '),
              dropped: r.dropped,
            }))
          : [],
        request_id: query.requestId,
        pipeline: query.pipeline,
        data_seq: String(this.replica_ ? this.replica_.appliedSeq : result.seq),
      };
      return { request: req, query, pipeline, result, response, returnedIds: answered.map((c) => c.id) };
    } finally {
      call.removeListener('cancelled', onCancel);
      this.admission.release(permit, performance.now(), this.config_.limits, measured);
    }
  }

  /**
   * A replica: refuses ads of other shards (naming the field), publishes the write to this
   * shard's stream and answers once applied here.
   */
  private async replicate(m: StreamMessage, ids: ReadonlyArray<{ field: string; adId: string }>): Promise<{ seq: number; result: ApplyResult }> {
    const replica = this.replica_!;
    const { index, count } = replica.shard;
    for (const { field, adId } of ids) {
      const owner = shardOf(adId, count);
      if (owner !== index) throw invalid(field, `ad ${adId} belongs to shard ${owner} of ${count}, not this replica's shard ${index}; send it to that shard or through funnel root`);
    }
    try {
      return await replica.publish(m);
    } catch (err) {
      if (!(err instanceof ReplicationError)) throw err;
      if (err.code === 'too_large') throw new RpcError(grpc.status.INVALID_ARGUMENT, err.message);
      if (err.code === 'parked') throw new RpcError(grpc.status.FAILED_PRECONDITION, err.message);
      throw new RpcError(grpc.status.UNAVAILABLE, err.message);
    }
  }

  private async upsertAds(req: { ads?: AdMessage[] }) {
    const rows = validateAds(req.ads, this.config_, this.state.dim);
    if (this.replica_) {
      const { seq, result } = await this.replicate(
        { kind: 'upsert', ads: rows },
        rows.map((r, i) => ({ field: `ads[${i}].ad_id`, adId: r.ad_id })),
      );
      return { inserted: result.inserted ?? 0, updated: result.updated ?? 0, seq: String(seq) };
    }
    const r = await this.state.upsertAds(rows);
    return { inserted: r.inserted, updated: r.updated, seq: String(r.seq) };
  }

  private async setAdStatus(req: { ad_ids?: string[]; status?: string }) {
    const ids = validateAdIds('ad_ids', req.ad_ids, this.config_);
    const status = validateStatus(req.status);
    if (this.replica_) {
      const { seq, result } = await this.replicate({ kind: 'status', ad_ids: ids, status }, idFields('ad_ids', ids));
      return { updated: result.count, unknown_ad_ids: result.unknown, seq: String(seq) };
    }
    const r = await this.state.setStatus(ids, status);
    return { updated: r.count, unknown_ad_ids: r.unknown, seq: String(r.seq) };
  }

  private async deleteAds(req: { ad_ids?: string[] }) {
    const ids = validateAdIds('ad_ids', req.ad_ids, this.config_);
    if (this.replica_) {
      const { seq, result } = await this.replicate({ kind: 'delete', ad_ids: ids }, idFields('ad_ids', ids));
      return { deleted: result.count, unknown_ad_ids: result.unknown, seq: String(seq) };
    }
    const r = await this.state.deleteAds(ids);
    return { deleted: r.count, unknown_ad_ids: r.unknown, seq: String(r.seq) };
  }

  private async getAds(req: { ad_ids?: string[]; min_seq?: string }, call: grpc.ServerUnaryCall<unknown, unknown>) {
    const ids = validateAdIds('ad_ids', req.ad_ids, this.config_);
    const minSeq = validateSeq('min_seq', req.min_seq);
    const state = this.state;
    if (minSeq > 0) {
      const deadlineMs = deadlineOr(call, this.config_.limits.default_deadline_ms);
      const abort = new AbortController();
      const onCancel = () => abort.abort();
      call.once('cancelled', onCancel);
      try {
        if (!(await this.reachSeq(state, minSeq, deadlineMs, abort.signal))) {
          throw new RpcError(grpc.status.UNAVAILABLE, `min_seq ${minSeq} is not applied here yet (data_seq ${this.dataSeq(state)}) and the deadline passed`);
        }
      } finally {
        call.removeListener('cancelled', onCancel);
      }
    }
    return { ads: state.getAds(ids).map(({ rec, embedding }) => recordToAd(rec, embedding)) };
  }

  private async reportSpend(req: { entries?: SpendEntryMessage[] }) {
    const checked = validateSpendEntries(req.entries, this.config_);
    if (this.replica_) {
      const { seq, result } = await this.replicate(
        { kind: 'spend', entries: checked, time_ms: Date.now() },
        checked.map((e, i) => ({ field: `entries[${i}].ad_id`, adId: e.ad_id })),
      );
      return { applied: result.count, unknown_ad_ids: result.unknown, seq: String(seq) };
    }
    const r = await this.state.reportSpend(checked);
    return { applied: r.count, unknown_ad_ids: r.unknown, seq: String(r.seq) };
  }

  private async recordEvents(req: { events?: EventMessage[] }) {
    const checked = validateEvents(req.events, this.config_, Date.now());
    if (this.replica_) {
      const { seq, result } = await this.replicate(
        { kind: 'events', events: checked.map((e) => ({ ...e, attributes: Object.fromEntries(Object.entries(e.attributes).map(([k, v]) => [k, [...v]])) })) },
        checked.map((e, i) => ({ field: `events[${i}].ad_id`, adId: e.ad_id })),
      );
      return { applied: result.count, unknown_ad_ids: result.unknown, seq: String(seq) };
    }
    const r = await this.state.recordEvents(checked);
    return { applied: r.count, unknown_ad_ids: r.unknown, seq: String(r.seq) };
  }
}

/** `field[i]` with each id, for the replica's shard-ownership check. */
function idFields(field: string, ids: readonly string[]): { field: string; adId: string }[] {
  return ids.map((adId, i) => ({ field: `${field}[${i}]`, adId }));
}

/** An observer that reports every stage to `a`, then to `b`. */
function bothObservers(a: StageObserver, b: StageObserver): StageObserver {
  return {
    start(name, ctx) {
      const endA = a.start(name, ctx);
      const endB = b.start(name, ctx);
      return (r) => {
        endA(r);
        endB(r);
      };
    },
  };
}

/** The spans of a call: null when tracing is off or the call was not sampled. */
type CallTrace = RequestTrace | null;

/** Explain's request as proto-loader decodes it. */
interface ExplainMessage {
  request?: Partial<Omit<DecodedRetrieve, 'user_embedding'>> & { user_embedding?: number[] };
  ad_ids?: string[];
}

/** Runs `fn`; an INVALID_ARGUMENT it throws names its field under `prefix` (Explain's `request.`). */
function withFieldPrefix<T>(prefix: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (prefix !== '' && err instanceof RpcError && err.code === grpc.status.INVALID_ARGUMENT) throw new RpcError(err.code, prefix + err.details);
    throw err;
  }
}
