/**
 * The root's view of the shards (`funnel root --shards "H:P,H:P;H:P,H:P"`): gRPC clients per
 * replica, which replicas are in rotation, and one call to a shard with the request's deadline,
 * a hedge to a second replica when the first is slow, and a retry on another replica when one
 * fails fast.
 *
 * A replica leaves the rotation after config root.down_after_failures consecutive failed calls,
 * or when its health check (every second, `funnel.v1.Retrieval`) is not SERVING (bootstrapping,
 * lagging the stream past cluster.max_lag_*, draining); it is tried again after
 * root.retry_down_after_ms, or at once when its health check says SERVING. With no replica of
 * a shard in rotation, the least recently failed one is still tried.
 */
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import type { RootConfig } from '../config/schema';
import { decodeRetrieveResponse } from '../grpc/codec';
import { packageDefinition } from '../grpc/proto';

/** Parses `--shards`: `;` between shards, `,` between the replicas of a shard. */
export function parseShardList(text: string): string[][] {
  const shards = text.split(';').map((s) => s.split(',').map((r) => r.trim()).filter((r) => r.length > 0));
  if (shards.length === 0 || shards.some((s) => s.length === 0)) throw new Error(`--shards must be "H:P,H:P;H:P,H:P" (shards by ';', replicas by ','), got "${text}"`);
  for (const s of shards) {
    for (const r of s) {
      if (!/^[^\s:]+:\d{1,5}$/.test(r) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(r)) throw new Error(`--shards: "${r}" is not HOST:PORT`);
    }
  }
  return shards;
}

type Callback = (err: grpc.ServiceError | null, value?: unknown) => void;
type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => grpc.ClientUnaryCall;

/** One replica: its clients (one channel) and its standing in the rotation. */
export class ReplicaLink {
  readonly retrieval: grpc.Client;
  readonly admin: grpc.Client;
  readonly health: grpc.Client;
  failures = 0;
  downUntil = 0;
  /** From the health check: null until the first answer. */
  serving: boolean | null = null;
  lastFailureMs = 0;

  constructor(readonly addr: string) {
    const def = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
      funnel: { v1: { Retrieval: grpc.ServiceClientConstructor; Admin: grpc.ServiceClientConstructor } };
    };
    const options: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': 64 << 20,
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 2_000,
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2_000,
    };
    this.retrieval = new def.funnel.v1.Retrieval(addr, grpc.credentials.createInsecure(), options);
    const channelOverride = this.retrieval.getChannel();
    this.admin = new def.funnel.v1.Admin(addr, grpc.credentials.createInsecure(), { channelOverride });
    const Health = grpc.makeGenericClientConstructor(healthService as grpc.ServiceDefinition, 'Health');
    this.health = new Health(addr, grpc.credentials.createInsecure(), { channelOverride });
  }

  live(now: number): boolean {
    return this.serving !== false && now >= this.downUntil;
  }

  /**
   * Calls `method` of `client` ('retrieval' or 'admin'); resolves to the answer or the error, and
   * a cancel. Method 'RetrieveRaw' sends an encoded RetrieveRequest as it is and decodes the
   * answer straight into the codec's plain response (no proto-loader conversion either way).
   */
  call(client: 'retrieval' | 'admin', method: string, req: unknown, md: grpc.Metadata, deadlineMs: number): { done: Promise<{ value?: unknown; error?: grpc.ServiceError }>; cancel(): void } {
    let handle: grpc.ClientUnaryCall | undefined;
    const done = new Promise<{ value?: unknown; error?: grpc.ServiceError }>((resolve) => {
      const cb: Callback = (err, value) => resolve(err ? { error: err } : { value });
      if (method === 'RetrieveRaw') {
        handle = this.retrieval.makeUnaryRequest('/funnel.v1.Retrieval/Retrieve', (b: Buffer) => b, (b: Buffer) => decodeRetrieveResponse(b), req as Buffer, md, { deadline: deadlineMs }, cb);
        return;
      }
      const fn = (this[client] as unknown as Record<string, UnaryFn>)[method].bind(this[client]);
      handle = fn(req, md, { deadline: deadlineMs }, cb);
    });
    return { done, cancel: () => handle?.cancel() };
  }

  close(): void {
    this.retrieval.close();
  }
}

/** Errors that say this replica (not the request) is the problem: another replica may answer. */
export const RETRYABLE = new Set<number>([grpc.status.UNAVAILABLE, grpc.status.UNKNOWN, grpc.status.INTERNAL, grpc.status.CANCELLED, grpc.status.RESOURCE_EXHAUSTED, grpc.status.DEADLINE_EXCEEDED]);

/** What one shard answered (or why it did not). */
export interface ShardOutcome<T> {
  shard: number;
  value?: T;
  error?: grpc.ServiceError;
  /** The replica whose answer was used. */
  replica?: string;
  attempts: number;
  hedged: boolean;
  /** 'hedge' when the hedge's answer was used, 'first' when the first one still won. */
  hedgeWon?: 'hedge' | 'first';
  ms: number;
}

export class ShardGroup {
  private rr = 0;
  constructor(
    readonly index: number,
    readonly replicas: ReplicaLink[],
  ) {}

  liveCount(now = Date.now()): number {
    let n = 0;
    for (const r of this.replicas) if (r.live(now)) n++;
    return n;
  }

  /** The next replica in rotation not in `tried`; with none live, the least recently failed untried one. */
  pick(tried: ReadonlySet<ReplicaLink>, now = Date.now()): ReplicaLink | null {
    const n = this.replicas.length;
    for (let k = 0; k < n; k++) {
      const r = this.replicas[(this.rr + k) % n];
      if (!tried.has(r) && r.live(now)) {
        this.rr = (this.rr + k + 1) % n;
        return r;
      }
    }
    let best: ReplicaLink | null = null;
    for (const r of this.replicas) if (!tried.has(r) && (!best || r.lastFailureMs < best.lastFailureMs)) best = r;
    return best;
  }

  succeeded(r: ReplicaLink): void {
    r.failures = 0;
    r.downUntil = 0;
  }

  failed(r: ReplicaLink, config: RootConfig, now = Date.now()): void {
    r.failures++;
    r.lastFailureMs = now;
    if (r.failures >= config.down_after_failures) r.downUntil = now + config.retry_down_after_ms;
  }

  /**
   * One call to this shard within `deadlineMs`: to a replica in rotation; after
   * root.hedge_after_ms without an answer, also to a second one (the first answer wins, the
   * other is cancelled); a replica that fails with a retryable code is replaced by another
   * while time is left. A non-retryable error (INVALID_ARGUMENT, ...) is the answer.
   */
  call<T>(client: 'retrieval' | 'admin', method: string, req: unknown, md: grpc.Metadata, deadlineMs: number, config: RootConfig, hedge = true): Promise<ShardOutcome<T>> {
    const started = Date.now();
    const tried = new Set<ReplicaLink>();
    return new Promise<ShardOutcome<T>>((resolve) => {
      const running = new Map<ReplicaLink, () => void>();
      let finished = false;
      let hedged = false;
      let firstReplica: ReplicaLink | null = null;
      let lastError: grpc.ServiceError | undefined;
      let hedgeTimer: NodeJS.Timeout | undefined;
      const finish = (o: Omit<ShardOutcome<T>, 'shard' | 'attempts' | 'hedged' | 'ms'>) => {
        if (finished) return;
        finished = true;
        clearTimeout(hedgeTimer);
        for (const cancel of running.values()) cancel();
        running.clear();
        resolve({ shard: this.index, attempts: tried.size, hedged, ms: Date.now() - started, ...o });
      };
      const launch = (): boolean => {
        if (Date.now() >= deadlineMs) return false;
        const r = this.pick(tried);
        if (!r) return false;
        tried.add(r);
        firstReplica ??= r;
        const c = r.call(client, method, req, md, deadlineMs);
        running.set(r, c.cancel);
        void c.done.then(({ value, error }) => {
          running.delete(r);
          if (finished) return;
          if (!error) {
            this.succeeded(r);
            finish({ value: value as T, replica: r.addr, hedgeWon: hedged ? (r === firstReplica ? 'first' : 'hedge') : undefined });
            return;
          }
          lastError = error;
          if (!RETRYABLE.has(error.code)) {
            finish({ error, replica: r.addr });
            return;
          }
          if (error.code !== grpc.status.RESOURCE_EXHAUSTED) this.failed(r, config);
          // Another replica, while there is time; else wait for one still running, else give up.
          if (!launch() && running.size === 0) finish({ error: lastError });
        });
        return true;
      };
      if (!launch()) {
        finish({ error: { code: grpc.status.UNAVAILABLE, details: `no replica of shard ${this.index} to call`, message: 'no replica', metadata: new grpc.Metadata(), name: 'Error' } as grpc.ServiceError });
        return;
      }
      if (hedge && config.hedge_after_ms > 0 && this.replicas.length > 1) {
        hedgeTimer = setTimeout(() => {
          if (finished || running.size === 0) return;
          if (launch()) hedged = true;
        }, config.hedge_after_ms);
      }
    });
  }

  /** Asks every replica's health once (at most `timeoutMs`); updates `serving`. */
  checkHealth(timeoutMs: number): Promise<void> {
    return Promise.all(
      this.replicas.map(
        (r) =>
          new Promise<void>((resolve) => {
            (r.health as unknown as Record<string, UnaryFn>).Check.call(r.health, { service: 'funnel.v1.Retrieval' }, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, value) => {
              const was = r.serving;
              const status = err ? undefined : (value as { status?: string | number }).status;
              r.serving = status === 'SERVING' || status === 1;
              // Back in service by its own word: no need to wait out the failure back-off.
              if (r.serving && was === false) {
                r.failures = 0;
                r.downUntil = 0;
              }
              resolve();
            });
          }),
      ),
    ).then(() => undefined);
  }
}
