/**
 * A replica of one shard (`funnel serve --nats URL --shard I/N`, CONTRACT section 6).
 *
 * Writes are not applied where they arrive: an Admin call is validated, published to the
 * shard's subject of the JetStream stream, and answered once the stream has it AND this replica
 * has applied it (read-your-writes here; elsewhere through `min_seq`). Every replica of the
 * shard applies the subject in stream order, exactly once: the stream sequence number of each
 * message is stored in the same LMDB transaction as its change, and consumption resumes after
 * it on a restart. A malformed message is parked (logged, counted, kept in the store with the
 * reason) and skipped, never applied in part, never stopping the replica.
 *
 * Start-up: the replica applies what the stream holds for its shard straight into the store
 * (an empty directory is filled from the stream; no snapshot), and only then loads the serving
 * state (building the ANN index in one multi-threaded pass) and serves. Later messages are
 * applied to the serving state as they come.
 *
 * NATS down: Retrieve keeps serving what is applied; Admin answers UNAVAILABLE without
 * publishing; the client reconnects forever and consumption resumes where it stopped.
 */
import { connect } from '@nats-io/transport-node';
import {
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type MsgRequest,
} from '@nats-io/jetstream';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { ClusterConfig, Config } from '../config/schema';
import { CatalogStore, DataDirError, isDirectoryEmpty } from '../store/catalog-store';
import type { ServingState } from '../serving/state';
import { PopularityState } from '../serving/popularity';
import { BadMessage, decodeMessage, encodeMessage, type StreamMessage } from './messages';
import { shardSubject, type ShardSpec } from './shard';
import { ShardSnapshots, openSnapshotStore, readChunks, type SnapshotManifest } from './snapshot';

/** A NATS connection. */
export type NatsConnection = Awaited<ReturnType<typeof connect>>;

/** What applying one message did (what the Admin call that published it answers). */
export interface ApplyResult {
  kind: StreamMessage['kind'] | 'parked';
  count: number;
  inserted?: number;
  updated?: number;
  unknown: string[];
  /** Set when the message was parked: why. */
  parked?: string;
}

/** Where the replica stands, for metrics and health. */
export interface ReplicaStatus {
  appliedSeq: number;
  lagMessages: number;
  lagSeconds: number;
  connected: boolean;
  bootstrapping: boolean;
}

/** An Admin write that could not be published or applied in time. */
export class ReplicationError extends Error {
  constructor(
    readonly code: 'unavailable' | 'too_large' | 'parked',
    message: string,
  ) {
    super(message);
  }
}

/** Listener for applied and parked messages (metrics). */
export interface ReplicaObserver {
  applied?(kind: string): void;
  parked?(reason: string): void;
  /** A snapshot upload (`taken`, `failed`) or restore (`restored`, `restore_failed`), and how long it took. */
  snapshot?(outcome: 'taken' | 'failed' | 'restored' | 'restore_failed', seconds: number): void;
}

/** Connects to NATS URL(s) (comma-separated), retrying forever, then reconnecting by itself; a dead server is noticed in about 10 s. */
export function connectNats(url: string, name: string): Promise<NatsConnection> {
  return connect({
    servers: url.split(','),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    pingInterval: 5_000,
    maxPingOut: 2,
  });
}

/** Connects to NATS (retrying forever) and makes sure the stream exists. */
export async function connectStream(url: string, cluster: ClusterConfig, name: string, log: Logger): Promise<{ nc: NatsConnection; js: JetStreamClient; jsm: JetStreamManager }> {
  const nc = await connectNats(url, name);
  // A JetStream cluster that is still forming or electing its leader answers 503 / "temporarily
  // unavailable" (or nothing) for a while: every attempt is bounded, and retried for up to 2 minutes.
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    try {
      const jsm = await withTimeout(jetstreamManager(nc, { timeout: 5000 }), 10_000, 'reaching JetStream');
      await withTimeout(ensureStream(jsm, cluster, log), 15_000, `making sure stream ${cluster.stream} exists`);
      return { nc, js: jetstream(nc, { timeout: 5000 }), jsm };
    } catch (err) {
      const m = (err as Error).message;
      if (Date.now() - started > 120_000 || !/unavailable|no suitable|insufficient|timeout|timed out|no responders|503|not enabled/i.test(m)) {
        await nc.close().catch(() => undefined);
        throw err;
      }
      log.warn({ err: m, stream: cluster.stream, attempt }, 'JetStream not ready for the stream yet; retrying');
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** `p`, or a rejection naming `what` once `ms` have passed. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]);
}

/** Creates the stream when it is missing (subjects `<prefix>.>`, file storage, R from the config). */
export async function ensureStream(jsm: JetStreamManager, cluster: ClusterConfig, log: Logger): Promise<void> {
  try {
    await jsm.streams.info(cluster.stream);
    return;
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || !/not found/i.test(err.message)) throw err;
  }
  try {
    await jsm.streams.add({
      name: cluster.stream,
      subjects: [`${cluster.subject_prefix}.>`],
      num_replicas: cluster.stream_replicas,
      // Every write is kept: a new replica fills itself from the stream.
      max_msgs: -1,
      max_bytes: -1,
      max_age: 0,
      duplicate_window: 120_000_000_000,
    } as Parameters<JetStreamManager['streams']['add']>[0]);
    log.info({ stream: cluster.stream, subjects: `${cluster.subject_prefix}.>`, replicas: cluster.stream_replicas }, 'created the write stream');
  } catch (err) {
    // Another replica created it first.
    if (!/already in use|exists/i.test((err as Error).message)) throw err;
  }
}

/** A stream message in flight: its sequence number, publish time and payload. */
interface Incoming {
  seq: number;
  timestampMs: number;
  pending: number;
  data: Uint8Array;
  subject: string;
}

const RESULT_KEEP = 4096;
/** A consumer that delivers nothing for this long while the stream holds more for the shard is recreated. */
const STALL_MS = 3000;

export class Replica {
  readonly subject: string;
  private nc: NatsConnection | null = null;
  private js: JetStreamClient | null = null;
  private jsm: JetStreamManager | null = null;
  private store: CatalogStore | null = null;
  private state: ServingState | null = null;
  private applied_ = 0;
  /** Highest sequence number known to hold nothing more of this shard (checked with the stream). */
  private covered = 0;
  private lagMessages = 0;
  private oldestUnappliedMs = 0;
  private connected_ = false;
  private bootstrapping = true;
  private closed = false;
  private messages: ConsumerMessages | null = null;
  /** True from startConsuming() until stopConsuming(). */
  private consuming = false;
  private loop: Promise<void> | null = null;
  private readonly results = new Map<number, ApplyResult>();
  private readonly waiters = new Map<number, Array<(ok: boolean) => void>>();
  /** Admin writes published here, waiting to be applied (a covered token is not enough for them). */
  private readonly ownWaiters = new Map<number, Array<(ok: boolean) => void>>();
  private readonly origin = randomUUID();
  private nextMsgId = 0;
  private popularityPlanner: PopularityState | null = null;
  private watermarkTimer: NodeJS.Timeout | undefined;
  private lastDeliveryMs = Date.now();
  private applying = false;
  private watermarking = false;
  private snapshots_: ShardSnapshots | null = null;
  private snapshotTimer: NodeJS.Timeout | undefined;
  private snapshotting = false;
  private snapshotRun: Promise<unknown> | null = null;
  /** The stream sequence number of the last snapshot this replica uploaded (0: none). */
  private snapshotSeq = 0;

  constructor(
    private readonly url: string,
    readonly shard: ShardSpec,
    private config: Config,
    private readonly log: Logger,
    private readonly observer: ReplicaObserver = {},
  ) {
    this.subject = shardSubject(config.cluster.subject_prefix, shard);
  }

  /** Takes a reloaded config (lag limits, timeouts). */
  configure(config: Config): void {
    this.config = config;
  }

  /** The last stream sequence number applied here. */
  get appliedSeq(): number {
    return this.applied_;
  }

  status(): ReplicaStatus {
    const lagSeconds = this.lagMessages > 0 && this.oldestUnappliedMs > 0 ? Math.max(0, (Date.now() - this.oldestUnappliedMs) / 1000) : 0;
    return { appliedSeq: this.applied_, lagMessages: this.lagMessages, lagSeconds, connected: this.connected_, bootstrapping: this.bootstrapping };
  }

  /** True when the replica is too far behind the stream to serve (config cluster.max_lag_*). */
  tooFarBehind(): boolean {
    const s = this.status();
    const c = this.config.cluster;
    if (s.bootstrapping) return true;
    if (c.max_lag_messages > 0 && s.lagMessages > c.max_lag_messages) return true;
    if (c.max_lag_seconds > 0 && s.lagSeconds > c.max_lag_seconds) return true;
    return false;
  }

  /**
   * Connects, then applies what the stream holds for this shard into the data directory
   * (created when missing), before anything serves it. Resolves once caught up with the
   * stream as it stood when this started; with a directory that already holds data, gives up
   * waiting for NATS after `connectWaitMs` (and serves what it has; consumption goes on later).
   */
  async bootstrap(
    dataDir: string,
    connectWaitMs = 10_000,
  ): Promise<{ applied: number; seconds: number; from: number; to: number; snapshot: { stream_seq: number; ads: number; bytes: number; seconds: number } | null }> {
    const started = Date.now();
    // An empty directory: from the shard's newest snapshot when there is one, then the stream after it.
    let snapshot: { stream_seq: number; ads: number; bytes: number; seconds: number } | null = null;
    if (this.config.cluster.snapshot.restore && isDirectoryEmpty(dataDir)) {
      await this.connect();
      snapshot = await this.restoreSnapshot(dataDir);
    }
    const store = CatalogStore.open(dataDir, { create: true });
    this.store = store;
    this.applied_ = store.streamSeq;
    this.covered = this.applied_;
    const from = this.applied_;
    const hasData = store.seq > 0;
    const connecting = this.connect();
    const connectedInTime = hasData
      ? await Promise.race([connecting.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), connectWaitMs).unref())])
      : await connecting.then(() => true);
    if (!connectedInTime) {
      this.log.warn({ url: this.url, waited_ms: connectWaitMs }, 'NATS is not reachable: serving the data held here; writes resume once it is');
      connecting.catch((err: Error) => this.log.error({ err: err.message }, 'connecting to NATS failed'));
      store.freshen();
      await store.close();
      this.store = null;
      this.bootstrapping = false;
      return { applied: 0, seconds: (Date.now() - started) / 1000, from, to: this.applied_, snapshot };
    }
    const last = await this.lastOfShard();
    this.log.info({ subject: this.subject, applied: this.applied_, stream_last: last }, 'replica catching up from the stream before serving');
    let applied = 0;
    if (last > this.applied_) {
      await new Promise<void>((resolve, reject) => {
        this.startConsuming((n) => {
          applied = n;
          if (this.applied_ >= last) resolve();
        }).catch(reject);
        if (this.applied_ >= last) resolve();
      });
      await this.stopConsuming();
    }
    await store.flushed();
    await store.close();
    this.store = null;
    const seconds = (Date.now() - started) / 1000;
    this.log.info({ applied, seconds, stream_seq: this.applied_ }, 'replica caught up with the stream');
    return { applied, seconds, from, to: this.applied_, snapshot };
  }

  /** The shard's snapshots (the bucket is created when missing). */
  private async snapshots(): Promise<ShardSnapshots> {
    if (!this.snapshots_) {
      const c = this.config.cluster;
      const os = await openSnapshotStore(this.nc!, c.snapshot.bucket, c.stream_replicas);
      const js = this.js!;
      this.snapshots_ = new ShardSnapshots(os, `${this.shard.count}.${this.shard.index}`, (info) => readChunks(js, info));
    }
    return this.snapshots_;
  }

  /** Fills the empty `dataDir` from the shard's newest snapshot of this stream; null (and the directory still empty) when there is none or it fails. */
  private async restoreSnapshot(dataDir: string): Promise<{ stream_seq: number; ads: number; bytes: number; seconds: number } | null> {
    const started = Date.now();
    try {
      const c = this.config.cluster;
      const info = await this.jsm!.streams.info(c.stream);
      const m = await (await this.snapshots()).restore(dataDir, { name: c.stream, created: info.created });
      if (!m) {
        this.log.info({ bucket: c.snapshot.bucket }, 'no snapshot of this shard for this stream: filling the directory from the whole stream');
        return null;
      }
      const seconds = (Date.now() - started) / 1000;
      const bytes = m.lmdb_bytes + m.ann_bytes;
      this.observer.snapshot?.('restored', seconds);
      this.log.info({ stream_seq: m.stream_seq, ads: m.ads, bytes, seconds, taken: new Date(m.created_ms).toISOString() }, 'restored the shard from its snapshot; applying the stream after it');
      return { stream_seq: m.stream_seq, ads: m.ads, bytes, seconds };
    } catch (err) {
      this.observer.snapshot?.('restore_failed', (Date.now() - started) / 1000);
      this.log.warn({ err: (err as Error).message }, 'restoring from a snapshot failed: filling the directory from the whole stream');
      return null;
    }
  }

  private scheduleSnapshot(): void {
    const every = this.config.cluster.snapshot.interval_s;
    if (this.closed) return;
    // 0 (never) is checked again each minute, so a reload can turn snapshots on. The first wait is
    // jittered so that the replicas of a shard do not all upload at once.
    const ms = every > 0 ? every * 1000 * (this.snapshotTimer === undefined ? 0.5 + Math.random() * 0.5 : 1) : 60_000;
    this.snapshotTimer = setTimeout(() => {
      this.snapshotRun = this.snapshotOnce().finally(() => this.scheduleSnapshot());
    }, ms);
    this.snapshotTimer.unref();
  }

  /**
   * Uploads a snapshot of this replica's data directory when it has applied at least
   * cluster.snapshot.min_messages past the shard's newest one. Resolves to the manifest
   * uploaded, or null when none was due (or it failed: logged, counted, tried again next time).
   */
  async snapshotOnce(): Promise<SnapshotManifest | null> {
    const c = this.config.cluster;
    if (this.snapshotting || !this.state || !this.jsm || !this.connected_ || this.closed) return null;
    if (c.snapshot.interval_s === 0) return null;
    this.snapshotting = true;
    const started = Date.now();
    const work = path.join(this.state.store.dir, '.snapshot');
    try {
      const snaps = await this.snapshots();
      const info = await this.jsm.streams.info(c.stream);
      const newest = await snaps.manifest();
      const base = newest && newest.stream === c.stream && newest.stream_created === info.created ? newest.stream_seq : 0;
      if (this.applied_ - Math.max(base, this.snapshotSeq) < c.snapshot.min_messages) return null;
      fs.rmSync(work, { recursive: true, force: true });
      const m = await snaps.take(this.state.store, work, `${this.shard.index}/${this.shard.count}`, { name: c.stream, created: info.created });
      this.snapshotSeq = m.stream_seq;
      const seconds = (Date.now() - started) / 1000;
      this.observer.snapshot?.('taken', seconds);
      this.log.info({ stream_seq: m.stream_seq, ads: m.ads, bytes: m.lmdb_bytes + m.ann_bytes, seconds, bucket: c.snapshot.bucket }, 'uploaded a snapshot of the shard');
      return m;
    } catch (err) {
      this.observer.snapshot?.('failed', (Date.now() - started) / 1000);
      this.log.warn({ err: (err as Error).message }, 'uploading a snapshot of the shard failed; trying again at the next interval');
      return null;
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
      this.snapshotting = false;
    }
  }

  /** Serves `state` from now on: later messages are applied to it as they come. */
  async serve(state: ServingState): Promise<void> {
    this.state = state;
    this.bootstrapping = false;
    this.watermarkTimer = setInterval(() => void this.watermark(), 1000);
    this.watermarkTimer.unref();
    this.scheduleSnapshot();
    // The state read the store after bootstrap: nothing in between was applied elsewhere.
    if (this.js) void this.startConsuming();
    else
      void this.connect().then(() => {
        if (!this.closed) void this.startConsuming();
      });
  }

  private connecting: Promise<void> | null = null;
  private connect(): Promise<void> {
    this.connecting ??= (async () => {
      const { nc, js, jsm } = await connectStream(this.url, this.config.cluster, `funnel-replica-${this.shard.index}of${this.shard.count}`, this.log);
      if (this.closed) {
        await nc.close();
        return;
      }
      this.nc = nc;
      this.js = js;
      this.jsm = jsm;
      this.connected_ = true;
      void (async () => {
        for await (const s of nc.status()) {
          if (s.type === 'disconnect') {
            if (this.connected_) this.log.warn({ server: (s as { server?: string }).server }, 'NATS disconnected: Admin writes are refused until it is back; Retrieve keeps serving');
            this.connected_ = false;
          } else if (s.type === 'reconnect') {
            this.connected_ = true;
            this.log.info({}, 'NATS reconnected');
          }
        }
      })();
    })();
    return this.connecting;
  }

  /**
   * Once a second while connected: the stream's last sequence number, then whether this shard
   * has a message after the one applied here. None: every token up to that last sequence number
   * is covered here (so `min_seq` of another shard's write is answered at once, even while NATS
   * is down later); one: its age is the replication lag in seconds.
   */
  private async watermark(): Promise<void> {
    if (this.watermarking || !this.jsm || !this.connected_ || this.closed) return;
    this.watermarking = true;
    try {
      const info = await this.jsm.streams.info(this.config.cluster.stream);
      const last = info.state.last_seq;
      const next = await this.jsm.streams.getMessage(this.config.cluster.stream, { seq: this.applied_ + 1, next_by_subj: this.subject } as unknown as MsgRequest);
      if (!next) {
        if (this.covered < last) this.covered = last;
        this.lagMessages = 0;
        this.oldestUnappliedMs = 0;
        this.wake();
      } else if (next.seq > this.applied_) {
        this.oldestUnappliedMs = next.time.getTime();
        if (this.lagMessages === 0) this.lagMessages = 1;
        // The stream has a message for this shard that the consumer has not delivered for a while
        // (its server died, a leader moved): recreate it from the last applied message.
        const waited = Date.now() - Math.max(this.lastDeliveryMs, this.oldestUnappliedMs);
        if (this.messages && this.consuming && !this.applying && waited > STALL_MS) {
          this.log.warn({ applied: this.applied_, next: next.seq, waited_ms: waited }, 'the stream consumer delivers nothing while the stream holds more for this shard; recreating it');
          this.messages.stop();
        }
      }
    } catch {
      // NATS away or slow: the consumer's own view stands until the next round.
    } finally {
      this.watermarking = false;
    }
  }

  /** The stream sequence number of the last message on this shard's subject (0: none). */
  private async lastOfShard(): Promise<number> {
    const m = await this.jsm!.streams.getMessage(this.config.cluster.stream, { last_by_subj: this.subject });
    return m ? m.seq : 0;
  }

  /** Consumes the subject from after the applied sequence number, until stopped; restarts the consumer on errors. */
  private startConsuming(progress?: (applied: number) => void): Promise<void> {
    let applied = 0;
    this.consuming = true;
    this.loop = (async () => {
      while (!this.closed && this.consuming) {
        try {
          const consumer = await this.js!.consumers.get(this.config.cluster.stream, {
            filter_subjects: this.subject,
            deliver_policy: DeliverPolicy.StartSequence,
            opt_start_seq: this.applied_ + 1,
          });
          if (!this.consuming) return;
          // Heartbeats every second (expires / 2): a consumer lost with a NATS node is noticed in seconds, not the default 30.
          const messages = await consumer.consume({ max_messages: 256, expires: 2000 });
          this.messages = messages;
          void (async () => {
            for await (const st of messages.status()) {
              if (st.type === 'reset' || st.type === 'heartbeats_missed') this.log.info({ event: st.type, applied: this.applied_ }, 'the stream consumer is being recreated');
            }
          })().catch(() => undefined);
          for await (const m of messages) {
            await this.onMessage(toIncoming(m));
            applied++;
            progress?.(applied);
          }
          if (!this.consuming) return;
          this.log.warn({ applied: this.applied_ }, 'the stream consumer ended; starting it again');
        } catch (err) {
          if (this.closed || !this.consuming) return;
          // A JetStream cluster electing a new stream leader times out consumer creation for several seconds.
          this.log.warn({ err: (err as Error).message, applied: this.applied_ }, 'the stream consumer stopped; starting it again');
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    })();
    return this.loop;
  }

  private async stopConsuming(): Promise<void> {
    this.consuming = false;
    const m = this.messages;
    this.messages = null;
    m?.stop();
    await this.loop?.catch(() => undefined);
    this.loop = null;
  }

  private async onMessage(msg: Incoming): Promise<void> {
    this.lastDeliveryMs = Date.now();
    if (msg.seq <= this.applied_) return; // exactly once: already applied (or parked) here
    this.applying = true;
    try {
      await this.applyIncoming(msg);
    } finally {
      this.applying = false;
      this.lastDeliveryMs = Date.now();
    }
  }

  private async applyIncoming(msg: Incoming): Promise<void> {
    this.lagMessages = msg.pending;
    this.oldestUnappliedMs = msg.pending > 0 ? msg.timestampMs : 0;
    let result: ApplyResult;
    try {
      const decoded = decodeMessage(msg.data, this.dim());
      result = await this.apply(decoded, msg.seq);
      this.observer.applied?.(decoded.kind);
    } catch (err) {
      if (!(err instanceof BadMessage) && !(err instanceof DataDirError)) {
        // Not the message's fault (the disk, LMDB): nothing was applied; stop, and let the supervisor restart us.
        this.log.fatal({ err: (err as Error).message, stream_seq: msg.seq }, 'applying a stream message failed; exiting to resume from the last applied one');
        process.exit(1);
      }
      const reason = err instanceof BadMessage ? err.reason : 'rejected';
      const detail = (err as Error).message;
      this.log.error({ stream_seq: msg.seq, subject: msg.subject, reason, detail }, 'malformed stream message parked (not applied)');
      await this.markStream(msg.seq, {
        reason,
        detail,
        subject: msg.subject,
        time_ms: msg.timestampMs,
        data: Buffer.from(msg.data).toString('base64'),
      });
      this.observer.parked?.(reason);
      result = { kind: 'parked', count: 0, unknown: [], parked: `${reason}: ${detail}` };
    }
    this.applied_ = msg.seq;
    if (this.covered < msg.seq) this.covered = msg.seq;
    if (msg.pending === 0) {
      this.lagMessages = 0;
      this.oldestUnappliedMs = 0;
    }
    this.results.set(msg.seq, result);
    if (this.results.size > RESULT_KEEP) this.results.delete(this.results.keys().next().value as number);
    this.wake();
  }

  private wake(): void {
    for (const [seq, list] of this.ownWaiters) {
      if (seq <= this.applied_) {
        this.ownWaiters.delete(seq);
        for (const w of list) w(true);
      }
    }
    for (const [seq, list] of this.waiters) {
      if (seq <= this.applied_ || seq <= this.covered) {
        this.waiters.delete(seq);
        for (const w of list) w(true);
      }
    }
  }

  private dim(): number | null {
    if (this.state) return this.state.dim ?? null;
    return this.store?.dim ?? null;
  }

  private markStream(seq: number, parked?: Parameters<CatalogStore['markStream']>[1]): Promise<void> {
    const store = this.state ? this.state.store : this.store!;
    return this.markStreamWith(() => store.markStream(seq, parked));
  }

  /** Applies one validated message, tagged with its stream sequence number, to the state or (before serving) the store. */
  private async apply(m: StreamMessage, seq: number): Promise<ApplyResult> {
    const st = this.state;
    const store = st ? st.store : this.store!;
    switch (m.kind) {
      case 'upsert': {
        const r = st ? await st.upsertAds(m.ads, seq) : await store.upsert(m.ads, seq);
        return { kind: m.kind, count: r.inserted + r.updated, inserted: r.inserted, updated: r.updated, unknown: [] };
      }
      case 'status': {
        if (st) {
          const r = await st.setStatus(m.ad_ids, m.status, seq);
          return { kind: m.kind, count: r.count, unknown: r.unknown };
        }
        const r = await store.setStatus(m.ad_ids, m.status, seq);
        return { kind: m.kind, count: r.updated.length, unknown: r.unknown };
      }
      case 'delete': {
        if (st) {
          const r = await st.deleteAds(m.ad_ids, seq);
          return { kind: m.kind, count: r.count, unknown: r.unknown };
        }
        const unknown = m.ad_ids.filter((id) => !store.getAd(id));
        const r = await store.remove(m.ad_ids, seq);
        return { kind: m.kind, count: r.removed, unknown };
      }
      case 'spend': {
        if (st) {
          const r = await st.reportSpend(m.entries, { nowMs: m.time_ms, stream: seq });
          return { kind: m.kind, count: r.count, unknown: r.unknown };
        }
        const known: typeof m.entries = [];
        const unknown: string[] = [];
        for (const e of m.entries) {
          if (store.getAd(e.ad_id)) known.push(e);
          else unknown.push(e.ad_id);
        }
        const r = await store.reportSpend(known, m.time_ms, seq);
        return { kind: m.kind, count: r.applied, unknown };
      }
      case 'events': {
        if (st) {
          const r = await st.recordEvents(m.events, seq);
          return { kind: m.kind, count: r.count, unknown: r.unknown };
        }
        // Before serving: the same popularity plan the serving state makes, from the stored sums.
        this.popularityPlanner ??= new PopularityState(this.config.popularity);
        const planner = this.popularityPlanner;
        const { resolved, known, unknown } = planner.resolve(m.events, (adId) => store.getAd(adId)?.id ?? -1);
        const r = await store.recordEvents(known, (stored) => planner.plan(resolved, stored), seq);
        return { kind: m.kind, count: r.applied, unknown };
      }
      case 'ingest_begin':
        await this.markStreamWith(() => store.beginStreamIngest({ ingest: m.ingest, rows: m.rows, replace: m.replace, ann: m.ann }, seq));
        return { kind: m.kind, count: 0, unknown: [] };
      case 'ingest_chunk': {
        const d = this.dim();
        const staging = store.streamStaging;
        // The file's dimension: the catalog's, unless the ingest replaces the catalog.
        const want = staging && !staging.replace ? (d ?? undefined) : undefined;
        if (want !== undefined) {
          const bad = m.ads.findIndex((r) => r.embedding.length !== want);
          if (bad >= 0) throw new BadMessage('dimension', `ads[${bad}].embedding: has ${m.ads[bad].embedding.length} values, the catalog's dimension is ${want}`);
        }
        await this.markStreamWith(() => store.stageStreamChunk(m.ingest, m.chunk, m.ads, seq));
        return { kind: m.kind, count: m.ads.length, unknown: [] };
      }
      case 'ingest_commit': {
        const staging = store.streamStaging;
        if (!staging || staging.ingest !== m.ingest) throw new BadMessage('sequence', `commit of ingest ${m.ingest}, which is not the one staged (${staging ? staging.ingest : 'none'})`);
        if (staging.next_chunk !== m.chunks || staging.next_row !== m.rows) {
          throw new BadMessage('sequence', `commit of ingest ${m.ingest} after ${staging.next_chunk}/${m.chunks} chunks and ${staging.next_row}/${m.rows} rows`);
        }
        if (st) {
          const r = await st.commitStreamIngest({ replace: staging.replace, ann: staging.ann }, seq);
          return { kind: m.kind, count: r.inserted + r.updated, inserted: r.inserted, updated: r.updated, unknown: [] };
        }
        const r = store.commitStaging({ replace: staging.replace, ann: staging.ann, stream: seq });
        await store.flushed();
        return { kind: m.kind, count: r.inserted + r.updated, inserted: r.inserted, updated: r.updated, unknown: [] };
      }
    }
  }

  /** Runs a store write that changes no served data: under the serving state's write lock once serving. */
  private markStreamWith(run: () => Promise<void>): Promise<void> {
    return this.state ? this.state.markStream(run) : run();
  }

  /**
   * Publishes a validated write to this shard's subject and resolves, once this replica has
   * applied it, to its stream sequence number and what it did. Throws ReplicationError
   * (unavailable) when NATS is not connected or the stream does not acknowledge in time.
   */
  async publish(m: StreamMessage): Promise<{ seq: number; result: ApplyResult }> {
    if (!this.js || !this.connected_) throw new ReplicationError('unavailable', 'the write stream (NATS) is not reachable from this replica; nothing was written');
    const data = encodeMessage(m);
    const max = this.nc!.info?.max_payload ?? 1 << 20;
    if (data.length > max) throw new ReplicationError('too_large', `the write encodes to ${data.length} bytes, more than the stream's message limit of ${max}; send smaller batches`);
    const c = this.config.cluster;
    let seq: number;
    try {
      const ack = await this.js.publish(this.subject, data, { msgID: `${this.origin}-${this.nextMsgId++}`, timeout: c.publish_timeout_ms });
      seq = ack.seq;
    } catch (err) {
      // Not acknowledged is not "not written": a publish NATS already had, or one the client held
      // while it reconnected, may still land (and be applied) after this answer.
      throw new ReplicationError('unavailable', `the write stream did not acknowledge the write (${(err as Error).message}); it may still be applied once the stream has it`);
    }
    const applied = await this.waitApplied(seq, Date.now() + c.apply_timeout_ms, undefined, true);
    if (!applied) throw new ReplicationError('unavailable', `the write is in the stream at ${seq} but was not applied here within ${c.apply_timeout_ms} ms; it will be`);
    const result = this.results.get(seq);
    if (!result) return { seq, result: { kind: m.kind, count: 0, unknown: [] } };
    if (result.parked) throw new ReplicationError('parked', `the write was refused when applied: ${result.parked}`);
    return { seq, result };
  }

  /** Resolves true once `seq` is applied here (or, unless `own`, known to hold nothing of this shard); false at `untilMs` or on abort. */
  private waitApplied(seq: number, untilMs: number, signal?: AbortSignal, own = false): Promise<boolean> {
    if (this.applied_ >= seq) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      let done = false;
      const finish = (v: boolean) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(v);
      };
      const onAbort = () => finish(false);
      const timer = setTimeout(() => finish(this.applied_ >= seq || (!own && this.covered >= seq)), Math.max(0, untilMs - Date.now()));
      signal?.addEventListener('abort', onAbort);
      const waiters = own ? this.ownWaiters : this.waiters;
      let list = waiters.get(seq);
      if (!list) waiters.set(seq, (list = []));
      list.push(finish);
    });
  }

  /**
   * The consistency token: resolves true once every write of this shard up to stream sequence
   * number `seq` is applied here, false if `untilMs` passes or `signal` aborts first. The token
   * may name another shard's write: the stream says whether this shard has one at or below it.
   */
  async waitFor(seq: number, untilMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this.applied_ >= seq || this.covered >= seq) return true;
    if (this.jsm && this.connected_) {
      try {
        const next = await this.jsm.streams.getMessage(this.config.cluster.stream, { seq: this.applied_ + 1, next_by_subj: this.subject } as unknown as MsgRequest);
        if (!next || next.seq > seq) {
          // Nothing of this shard in (applied, seq]: the token is covered.
          if (this.covered < seq) this.covered = seq;
          this.wake();
          return true;
        }
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'asking the stream about a consistency token failed; waiting for the consumer');
      }
    }
    return this.waitApplied(seq, untilMs, signal);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.watermarkTimer);
    clearTimeout(this.snapshotTimer);
    await this.stopConsuming();
    for (const list of [...this.waiters.values(), ...this.ownWaiters.values()]) for (const w of list) w(false);
    this.waiters.clear();
    this.ownWaiters.clear();
    const nc = this.nc;
    this.nc = null;
    this.js = null;
    this.jsm = null;
    await nc?.drain().catch(() => undefined);
    // An upload in progress fails with the connection; its copy of the store is done before the store closes.
    await this.snapshotRun?.catch(() => undefined);
  }
}

function toIncoming(m: JsMsg): Incoming {
  return { seq: m.seq, timestampMs: m.info.timestampNanos / 1e6, pending: m.info.pending, data: m.data, subject: m.subject };
}
