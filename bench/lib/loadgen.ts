/**
 * The bench:e2e load generator. It runs in its own process (forked by bench/lib/loadgen-pool.ts;
 * this file is the child's entry point) so that it never shares an event loop with the server,
 * and does no protobuf work per call: requests are pre-serialized Buffers passed through an
 * identity serializer, answers come back as Buffers (a Retrieve answer is only scanned for its
 * candidate count and `degraded` flag). Calls are spread round robin over several channels, each
 * with its own subchannel pool, so each is its own HTTP/2 connection.
 *
 * Two kinds of phase: closed loop (keep N calls outstanding: maximum throughput) and open loop
 * (send at a fixed rate by ideal send times, latency measured from the ideal time so a stalled
 * server cannot hide behind a waiting client; a cap bounds the calls outstanding).
 */
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { HistogramSnapshot, LatencyHistogram } from './histogram';
import { dueCount, idealSendMs, openLoopPlan } from './schedule';
import { scanRetrieveResponse } from './wire';

/** Full method path of the standard health check (request: the empty message = an empty Buffer). */
export const HEALTH_CHECK_METHOD = '/grpc.health.v1.Health/Check';
/** Full method path of Retrieve. */
export const RETRIEVE_METHOD = '/funnel.v1.Retrieval/Retrieve';

/** How a generator connects and what it sends. */
export interface LoadGenInit {
  /** `host:port` of the server. */
  address: string;
  /** Channels (connections) of this generator. */
  channels: number;
  /** Serialized RetrieveRequests, sent round robin by Retrieve phases. */
  requests: Uint8Array[];
  /** Deadline of every call, milliseconds. */
  timeoutMs: number;
  /** Distinguishes the channels of different generators (channel option value). */
  generator: number;
}

/** One phase as one generator runs it. */
export interface PhaseSpec {
  /** {@link HEALTH_CHECK_METHOD} or {@link RETRIEVE_METHOD}. */
  method: string;
  mode: 'closed' | 'open';
  /** Closed loop: calls kept outstanding. Open loop: the cap on outstanding calls. */
  concurrency: number;
  /** Open loop: this generator's requests per second. */
  rate?: number;
  /** Open loop: this generator's index among `parts` sharing the rate (staggers their send times). */
  part: number;
  parts: number;
  warmupSeconds: number;
  seconds: number;
  /** Wall-clock time (Date.now()) all generators start the warm-up at. */
  startAtEpochMs: number;
  /** Report the start and end of the measured window (one generator does, for the server's CPU time). */
  reportMarks: boolean;
}

/** What one generator measured in a phase's window (warm-up excluded). */
export interface PhaseResult {
  /** Calls answered OK. */
  ok: number;
  /** Failed calls by status name (`DEADLINE_EXCEEDED`, ...). */
  errors: Record<string, number>;
  /** Open loop: requests due in the window that the outstanding cap held back until the window closed. */
  unsent: number;
  /** Open loop: times in the window a due request found the outstanding cap reached and had to wait. */
  capWaits: number;
  /**
   * Calls sent while the window was open, by the clock (not by the schedule): divided by the
   * window's seconds, the rate the generator really offered.
   */
  sentInWindow: number;
  /** Latency of OK calls, microseconds: from the ideal send time (open loop) or the send (closed loop). */
  latency: HistogramSnapshot;
  /** Open loop: actual minus ideal send time, microseconds (the generator's own lateness). */
  sendLag: HistogramSnapshot;
  /** Seconds the window lasted. */
  windowSeconds: number;
  /** CPU seconds this process used during the window. */
  cpuSeconds: number;
  /** Retrieve: candidates summed over OK answers, answers flagged `degraded`, answers that did not parse. */
  candidates: number;
  degraded: number;
  badResponses: number;
  /** Retrieve: how often each stage was named in `degraded_stages` of OK answers. */
  degradedStages: Record<string, number>;
  /** Status and details of the first failed call, if any. */
  firstError?: string;
}

/** Messages the parent sends a generator process. */
export type ToLoadGen = { type: 'init'; init: LoadGenInit } | { type: 'run'; spec: PhaseSpec } | { type: 'close' };

/** Messages a generator process sends its parent. */
export type FromLoadGen =
  | { type: 'ready' }
  | { type: 'mark'; what: 'window-start' | 'window-end' }
  | { type: 'result'; result: PhaseResult }
  | { type: 'failed'; message: string };

const identity = (b: Buffer): Buffer => b;
const EMPTY: Buffer = Buffer.alloc(0);

function statusName(code: number | undefined): string {
  return code !== undefined && grpc.status[code] !== undefined ? grpc.status[code] : `code ${String(code)}`;
}

function sleepUntilPerf(t: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, t - performance.now())));
}

/** Mutable tallies of a phase; turned into a {@link PhaseResult} at its end. */
class Tally {
  ok = 0;
  unsent = 0;
  capWaits = 0;
  sentInWindow = 0;
  candidates = 0;
  degraded = 0;
  badResponses = 0;
  firstError: string | undefined;
  readonly errors: Record<string, number> = {};
  readonly degradedStages: Record<string, number> = {};
  readonly latency = new LatencyHistogram();
  readonly sendLag = new LatencyHistogram();

  fail(err: grpc.ServiceError): void {
    const name = statusName(err.code);
    this.errors[name] = (this.errors[name] ?? 0) + 1;
    this.firstError ??= `${name}: ${err.details}`;
  }

  inspect(res: Buffer): void {
    try {
      const gist = scanRetrieveResponse(res);
      this.candidates += gist.candidates;
      if (gist.degraded) this.degraded++;
      for (const stage of gist.degradedStages) this.degradedStages[stage] = (this.degradedStages[stage] ?? 0) + 1;
    } catch {
      this.badResponses++;
    }
  }

  result(windowSeconds: number, cpuSeconds: number): PhaseResult {
    return {
      ok: this.ok,
      errors: this.errors,
      unsent: this.unsent,
      capWaits: this.capWaits,
      sentInWindow: this.sentInWindow,
      latency: this.latency.snapshot(),
      sendLag: this.sendLag.snapshot(),
      windowSeconds,
      cpuSeconds,
      candidates: this.candidates,
      degraded: this.degraded,
      badResponses: this.badResponses,
      degradedStages: this.degradedStages,
      ...(this.firstError !== undefined && { firstError: this.firstError }),
    };
  }
}

/** A set of channels to one server that runs phases one at a time. */
export class LoadGenerator {
  private readonly clients: grpc.Client[];
  private readonly requests: Buffer[];
  private nextClient = 0;
  private nextRequest = 0;

  /** Opens `init.channels` channels (lazily connected; see {@link ready}). */
  constructor(private readonly init: LoadGenInit) {
    if (init.channels < 1) throw new Error('a load generator needs at least one channel');
    this.clients = Array.from(
      { length: init.channels },
      (_, i) =>
        new grpc.Client(init.address, grpc.credentials.createInsecure(), {
          // Without a local pool, channels with equal options share one connection.
          'grpc.use_local_subchannel_pool': 1,
          // A failed call is counted as failed, never transparently retried; channelz bookkeeping is of no use here.
          'grpc.enable_retries': 0,
          'grpc.enable_channelz': 0,
          'funnel.bench.channel': `${init.generator}.${i}`,
        }),
    );
    this.requests = init.requests.map((r) => (Buffer.isBuffer(r) ? r : Buffer.from(r.buffer, r.byteOffset, r.byteLength)));
    // Generators sharing a pool start at different places in it, not in lockstep.
    this.nextRequest = this.requests.length === 0 ? 0 : (init.generator * 1021) % this.requests.length;
  }

  /** Resolves once every channel is connected; rejects after `timeoutMs`. */
  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    await Promise.all(
      this.clients.map(
        (c) => new Promise<void>((resolve, reject) => c.waitForReady(deadline, (err) => (err ? reject(err) : resolve()))),
      ),
    );
  }

  /** Closes every channel. */
  close(): void {
    for (const c of this.clients) c.close();
  }

  private call(method: string, done: (err: grpc.ServiceError | null, res: Buffer | undefined) => void): void {
    const client = this.clients[this.nextClient];
    this.nextClient = (this.nextClient + 1) % this.clients.length;
    let request = EMPTY;
    if (method !== HEALTH_CHECK_METHOD) {
      if (this.requests.length === 0) throw new Error('no requests to send');
      request = this.requests[this.nextRequest];
      this.nextRequest = (this.nextRequest + 1) % this.requests.length;
    }
    client.makeUnaryRequest<Buffer, Buffer>(method, identity, identity, request, { deadline: Date.now() + this.init.timeoutMs }, done);
  }

  /** Runs one phase; `onMark` hears the window's start and end when `spec.reportMarks` is set. */
  run(spec: PhaseSpec, onMark: (what: 'window-start' | 'window-end') => void = () => {}): Promise<PhaseResult> {
    return spec.mode === 'closed' ? this.runClosed(spec, onMark) : this.runOpen(spec, onMark);
  }

  private async runClosed(spec: PhaseSpec, onMark: (what: 'window-start' | 'window-end') => void): Promise<PhaseResult> {
    const w = await PhaseWindow.open(spec, onMark);
    const { windowStart, windowEnd } = w;
    const tally = new Tally();
    const inspect = spec.method === RETRIEVE_METHOD;
    const markEnd = setTimeout(() => w.end(), windowEnd - performance.now());
    await new Promise<void>((resolve) => {
      let outstanding = 0;
      const issue = (): void => {
        const sentAt = performance.now();
        if (sentAt >= windowEnd) {
          if (outstanding === 0) resolve();
          return;
        }
        outstanding++;
        if (sentAt >= windowStart) tally.sentInWindow++;
        this.call(spec.method, (err, res) => {
          const now = performance.now();
          outstanding--;
          if (now >= windowStart && now < windowEnd) {
            if (err) tally.fail(err);
            else {
              tally.ok++;
              tally.latency.record((now - sentAt) * 1000);
              if (inspect && res) tally.inspect(res);
            }
          }
          issue();
        });
      };
      for (let i = 0; i < spec.concurrency; i++) issue();
    });
    // The end mark's timer may not have fired if the last answer came back just before it.
    await sleepUntilPerf(windowEnd + 1);
    w.close();
    clearTimeout(markEnd);
    return tally.result(spec.seconds, w.cpuSeconds);
  }

  private async runOpen(spec: PhaseSpec, onMark: (what: 'window-start' | 'window-end') => void): Promise<PhaseResult> {
    if (spec.rate === undefined) throw new Error('an open-loop phase needs a rate');
    const plan = openLoopPlan(spec.rate, spec.warmupSeconds, spec.seconds, spec.part, spec.parts);
    const w = await PhaseWindow.open(spec, onMark);
    const { start, windowStart, windowEnd } = w;
    const tally = new Tally();
    const inspect = spec.method === RETRIEVE_METHOD;
    await new Promise<void>((resolve) => {
      let next = 0;
      let outstanding = 0;
      let closed = false;
      let timer: NodeJS.Timeout | undefined;
      const send = (i: number): void => {
        const ideal = start + idealSendMs(plan, i);
        const measured = i >= plan.firstMeasured;
        const now = performance.now();
        if (measured) tally.sendLag.record((now - ideal) * 1000);
        if (now >= windowStart && now < windowEnd) tally.sentInWindow++;
        outstanding++;
        this.call(spec.method, (err, res) => {
          const now = performance.now();
          outstanding--;
          if (measured) {
            if (err) tally.fail(err);
            else {
              tally.ok++;
              tally.latency.record((now - ideal) * 1000);
              if (inspect && res) tally.inspect(res);
            }
          }
          if (closed) {
            if (outstanding === 0) resolve();
          } else if (next < plan.total && outstanding === spec.concurrency - 1) {
            // The cap had been holding back due requests: send them now.
            tick();
          }
        });
      };
      const close = (): void => {
        // Every request of the plan is due by now: send what the cap allows; the rest is unsent.
        const due = dueCount(plan, performance.now() - start);
        while (next < due && outstanding < spec.concurrency) send(next++);
        closed = true;
        if (timer !== undefined) clearTimeout(timer);
        w.end();
        tally.unsent = Math.max(0, plan.total - Math.max(next, plan.firstMeasured));
        if (outstanding === 0) resolve();
      };
      const tick = (): void => {
        if (closed) return;
        const now = performance.now();
        if (now >= windowEnd) return close();
        const due = dueCount(plan, now - start);
        while (next < due && outstanding < spec.concurrency) send(next++);
        if (next < due && next >= plan.firstMeasured) tally.capWaits++;
        if (timer !== undefined) clearTimeout(timer);
        timer = undefined;
        if (next >= plan.total) {
          timer = setTimeout(close, windowEnd - now);
        } else if (outstanding < spec.concurrency) {
          timer = setTimeout(tick, Math.max(0, start + idealSendMs(plan, next) - performance.now()));
        } else {
          // At the cap: an answer calls tick(); this timer only closes the window if none comes.
          timer = setTimeout(close, windowEnd - now);
        }
      };
      tick();
    });
    w.close();
    return tally.result(spec.seconds, w.cpuSeconds);
  }
}

/**
 * A phase's timeline in performance.now() milliseconds (start, then the measured window after
 * the warm-up) and the generator's CPU seconds inside the window; reports the window's start
 * and end marks when the spec asks for them.
 */
class PhaseWindow {
  private cpuAtStart = process.cpuUsage();
  private markStart: NodeJS.Timeout | undefined;
  /** CPU the generator used from the window's start to end() (0 before end()). */
  cpuSeconds = 0;

  private constructor(
    readonly start: number,
    readonly windowStart: number,
    readonly windowEnd: number,
    private readonly spec: PhaseSpec,
    private readonly onMark: (what: 'window-start' | 'window-end') => void,
  ) {}

  /** Waits until the phase starts, then arms the window-start mark. */
  static async open(spec: PhaseSpec, onMark: (what: 'window-start' | 'window-end') => void): Promise<PhaseWindow> {
    const start = performance.now() + (spec.startAtEpochMs - Date.now());
    const windowStart = start + spec.warmupSeconds * 1000;
    const w = new PhaseWindow(start, windowStart, windowStart + spec.seconds * 1000, spec, onMark);
    await sleepUntilPerf(start);
    w.markStart = setTimeout(() => {
      w.cpuAtStart = process.cpuUsage();
      if (spec.reportMarks) onMark('window-start');
    }, windowStart - performance.now());
    return w;
  }

  /** The window's end: takes the CPU reading and reports the end mark. */
  end(): void {
    const u = process.cpuUsage(this.cpuAtStart);
    this.cpuSeconds = (u.user + u.system) / 1e6;
    if (this.spec.reportMarks) this.onMark('window-end');
  }

  /** Drops a start mark that has not fired. */
  close(): void {
    clearTimeout(this.markStart);
  }
}

function send(msg: FromLoadGen): void {
  process.send?.(msg);
}

/** The child process: one generator, driven by {@link ToLoadGen} messages. */
function childMain(): void {
  let gen: LoadGenerator | undefined;
  process.on('disconnect', () => process.exit(0));
  process.on('message', (msg: ToLoadGen) => {
    const fail = (err: unknown): void => send({ type: 'failed', message: (err as Error)?.stack ?? String(err) });
    try {
      if (msg.type === 'init') {
        gen = new LoadGenerator(msg.init);
        gen.ready(Math.max(10_000, msg.init.timeoutMs)).then(() => send({ type: 'ready' }), fail);
      } else if (msg.type === 'run') {
        if (!gen) throw new Error('run before init');
        gen.run(msg.spec, (what) => send({ type: 'mark', what })).then((result) => send({ type: 'result', result }), fail);
      } else {
        gen?.close();
        process.disconnect?.();
        process.exit(0);
      }
    } catch (err) {
      fail(err);
    }
  });
}

if (require.main === module) childMain();
