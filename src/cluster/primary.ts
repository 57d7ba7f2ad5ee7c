/**
 * The primary of `funnel serve --workers N`: forks N worker processes that serve one port over
 * one data directory (node:cluster hands the connections round robin), restarts any that dies,
 * holds each Admin call's answer until every worker serves its effect, forwards SIGHUP (config
 * reload) and SIGTERM/SIGINT (drain), and serves /metrics summed over the workers
 * (prom-client's AggregatorRegistry). It holds no data and serves no gRPC itself.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';
import { AggregatorRegistry, type PrometheusContentType } from 'prom-client';
import { defaultLogger } from '../main';
import { serveMetrics, type MetricsServer } from '../telemetry/metrics';
import { ENV, isFunnelMessage, type PrimaryMessage, type WorkerMessage } from './protocol';

/** What the primary needs from `funnel serve`'s options. */
export interface PrimaryOptions {
  workers: number;
  host: string;
  port: number;
  metricsPort: number;
  /** The banner's description of the rest of the set-up (admin, TLS, tracing). */
  describe: string;
  logger?: Logger;
  /** How long a worker may take to apply another's write before it is killed (and restarted). */
  applyTimeoutMs?: number;
}

interface Slot {
  index: number;
  worker: Worker | null;
  /** Writes up to this sequence number are applied in the worker (from `loaded` and `applied`). */
  applied: number;
  /** Takes part in write acknowledgements (loaded). */
  member: boolean;
  /** Serving (listening, caught up). */
  ready: boolean;
  /** Sequence number it must reach before it may listen; null once told to listen. */
  listenAt: number | null;
  /** When the last catch-up asked of it is still unanswered: since when (ms), else 0. */
  askedAt: number;
  starts: number[];
  /** First generation: the banner waits for it. */
  initial: boolean;
}

interface PendingWrite {
  writer: Slot;
  id: number;
  seq: number;
  waiting: Set<Slot>;
}

/** Restarts allowed in RESTART_WINDOW_MS before the delay grows. */
const RESTART_WINDOW_MS = 60_000;

/** Runs the primary; resolves to the exit code once a signal has drained every worker (or start-up failed). */
export function runPrimary(opts: PrimaryOptions): Promise<number> {
  const log = (opts.logger ?? defaultLogger()).child({ role: 'primary' });
  const applyTimeoutMs = opts.applyTimeoutMs ?? 10_000;
  const slots: Slot[] = Array.from({ length: opts.workers }, (_, index) => ({
    index,
    worker: null,
    applied: 0,
    member: false,
    ready: false,
    listenAt: null,
    askedAt: 0,
    starts: [],
    initial: true,
  }));
  const pending = new Set<PendingWrite>();
  /** The bound port (for the banner): workers bind `opts.port` itself, the key node:cluster shares one listening socket by. */
  let port = opts.port;
  let data = '';
  let maxAcked = 0;
  let stopping = false;
  let started = false;
  let metricsServer: MetricsServer | null = null;
  const aggregator = new AggregatorRegistry<PrometheusContentType>();

  return new Promise<number>((resolve) => {
    let finished = false;
    const finish = (code: number) => {
      if (finished) return;
      finished = true;
      clearInterval(sweeper);
      process.removeListener('SIGTERM', onStop);
      process.removeListener('SIGINT', onStop);
      process.removeListener('SIGHUP', onHup);
      const done = () => resolve(code);
      if (metricsServer) void metricsServer.close().then(done);
      else done();
    };

    const send = (slot: Slot, m: PrimaryMessage) => {
      const w = slot.worker;
      if (!w?.isConnected()) return;
      // A worker that is exiting can still look connected: without a callback, the EPIPE of that
      // send is an uncaught 'error' that kills the primary (exit 1) and every worker with it.
      w.send(m, (err: Error | null) => {
        if (err && !stopping) log.warn({ worker: slot.index, err: err.message, message: m.funnel }, 'could not send to a worker (it is exiting?)');
      });
    };

    const fork = (slot: Slot, early: boolean) => {
      const now = Date.now();
      slot.starts = slot.starts.filter((t) => now - t < RESTART_WINDOW_MS);
      slot.starts.push(now);
      slot.applied = 0;
      slot.member = false;
      slot.ready = false;
      slot.listenAt = null;
      slot.askedAt = 0;
      const w = cluster.fork({ [ENV.index]: String(slot.index), [ENV.bind]: early ? 'early' : 'late' });
      slot.worker = w;
      w.on('message', (m: unknown) => {
        if (isFunnelMessage(m)) onMessage(slot, m as WorkerMessage);
      });
      w.on('exit', (code, signal) => onExit(slot, w, code, signal));
      // IPC errors of a dying worker: its 'exit' follows and is handled there.
      w.on('error', (err) => log.warn({ worker: slot.index, err: err.message }, 'worker channel error'));
    };

    const tellListen = (slot: Slot) => {
      slot.listenAt = null;
      send(slot, { funnel: 'listen', port: opts.port });
    };

    const settle = () => {
      for (const p of pending) {
        for (const s of p.waiting) if (!s.member || s.applied >= p.seq) p.waiting.delete(s);
        if (p.waiting.size === 0) {
          pending.delete(p);
          maxAcked = Math.max(maxAcked, p.seq);
          send(p.writer, { funnel: 'caught', id: p.id });
        }
      }
      for (const s of slots) {
        if (s.member && s.listenAt !== null && s.applied >= s.listenAt) tellListen(s);
        if (s.askedAt && !needsCatchUp(s)) s.askedAt = 0;
      }
    };

    const needsCatchUp = (s: Slot) => {
      if (s.listenAt !== null && s.applied < s.listenAt) return true;
      for (const p of pending) if (p.waiting.has(s)) return true;
      return false;
    };

    const ask = (s: Slot, seq: number) => {
      if (!s.askedAt) s.askedAt = Date.now();
      send(s, { funnel: 'catchup', seq });
    };

    const onMessage = (slot: Slot, m: WorkerMessage) => {
      switch (m.funnel) {
        case 'loaded': {
          slot.applied = m.applied;
          slot.member = true;
          // Unanswered writes it has not applied wait for it too, and it listens only once it
          // holds every write already answered OK.
          for (const p of pending) if (p.seq > slot.applied && p.writer !== slot) p.waiting.add(slot);
          const need = Math.max(maxAcked, ...[...pending].filter((p) => p.waiting.has(slot)).map((p) => p.seq));
          if (maxAcked > slot.applied) slot.listenAt = maxAcked;
          else tellListen(slot);
          if (need > slot.applied) ask(slot, need);
          break;
        }
        case 'ready': {
          slot.ready = true;
          port = m.port;
          if (!data) data = `${m.ads} ads, dim ${m.dim ?? '-'}, seq ${m.seq}`;
          log.info({ worker: slot.index, worker_pid: slot.worker?.process.pid, port: m.port }, 'worker serving');
          const next = slots.find((s) => s.initial && !s.worker);
          if (!started && slot.index === 0 && next) {
            // The first worker is up (its start-up saved a current ANN file): the rest load in parallel from it.
            for (const s of slots) if (!s.worker) fork(s, false);
          }
          if (!started && slots.every((s) => s.ready)) {
            started = true;
            for (const s of slots) s.initial = false;
            void announce();
          }
          break;
        }
        case 'wrote': {
          const p: PendingWrite = { writer: slot, id: m.id, seq: m.seq, waiting: new Set() };
          for (const s of slots) if (s !== slot && s.member && s.applied < m.seq) p.waiting.add(s);
          pending.add(p);
          for (const s of p.waiting) ask(s, m.seq);
          settle();
          break;
        }
        case 'applied': {
          slot.applied = Math.max(slot.applied, m.seq);
          settle();
          break;
        }
        case 'failed':
          log.error({ worker: slot.index, err: m.error }, 'worker failed to start');
          break;
      }
    };

    const onExit = (slot: Slot, w: Worker, code: number | null, signal: string | null) => {
      if (slot.worker !== w) return;
      slot.worker = null;
      slot.member = false;
      slot.ready = false;
      for (const p of pending) if (p.writer === slot) pending.delete(p);
      settle();
      if (stopping) {
        if (slots.every((s) => !s.worker)) finish(exitCode);
        return;
      }
      if (!started && slot.initial) {
        // A worker that cannot start (bad data directory, bad config, port taken) is not retried: the others would fail alike.
        log.error({ worker: slot.index, code, signal }, 'worker exited during start-up; stopping');
        exitCode = 3;
        stopAll();
        return;
      }
      const recent = slot.starts.length;
      const delay = Math.min(30_000, recent <= 1 ? 0 : 250 * 2 ** (recent - 2));
      log.error({ worker: slot.index, worker_pid: w.process.pid, code, signal, restart_in_ms: delay }, 'worker died; restarting it');
      setTimeout(() => {
        if (!stopping) fork(slot, false);
      }, delay).unref();
    };

    let exitCode = 0;
    const stopAll = () => {
      stopping = true;
      if (slots.every((s) => !s.worker)) {
        finish(exitCode);
        return;
      }
      for (const s of slots) s.worker?.process.kill('SIGTERM');
    };

    const onStop = (sig: NodeJS.Signals) => {
      if (stopping) return;
      log.info({ signal: sig }, 'draining every worker');
      stopAll();
    };
    const onHup = () => {
      log.info({}, 'SIGHUP: every worker re-reads its config');
      for (const s of slots) send(s, { funnel: 'reload' });
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGHUP', onHup);

    const sweeper = setInterval(() => {
      const now = Date.now();
      for (const s of slots) {
        if (s.askedAt && now - s.askedAt > applyTimeoutMs && s.worker) {
          log.error({ worker: s.index, worker_pid: s.worker.process.pid, applied: s.applied }, 'worker did not apply a write in time; killing it (it restarts and reloads)');
          s.askedAt = 0;
          s.worker.process.kill('SIGKILL');
        }
      }
      const members = slots.filter((s) => s.member);
      if (members.length > 0) send(slots[0], { funnel: 'floor', seq: Math.min(...members.map((s) => s.applied)) });
    }, 1000);
    sweeper.unref();

    const announce = async () => {
      if (opts.metricsPort) {
        try {
          // Every worker's metrics, summed (gauges as each declares: sum, max or min).
          metricsServer = await serveMetrics({ text: () => aggregator.clusterMetrics(), contentType: aggregator.contentType }, opts.host, opts.metricsPort);
        } catch (err) {
          log.error({ err: (err as Error).message }, 'cannot serve /metrics; stopping');
          exitCode = 3;
          stopAll();
          return;
        }
      }
      const mport = metricsServer?.port ?? null;
      process.stdout.write(
        `funnel serving on ${opts.host}:${port} (${data}; ${opts.workers} workers, pids ${slots.map((s) => s.worker?.process.pid).join(',')}; ` +
          `metrics ${mport ? `http://${opts.host}:${mport}/metrics` : 'off'}; ${opts.describe})\n`,
      );
    };

    fork(slots[0], true);
  });
}
