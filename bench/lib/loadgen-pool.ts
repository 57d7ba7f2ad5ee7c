/** The parent's side of the load generator processes: fork them, run a phase on all at once, merge their results. */
import { ChildProcess, fork } from 'node:child_process';
import * as path from 'node:path';
import { LatencyHistogram } from './histogram';
import type { FromLoadGen, LoadGenInit, PhaseResult, PhaseSpec, ToLoadGen } from './loadgen';

/** A phase's results over every generator. */
export interface MergedResult {
  ok: number;
  errors: Record<string, number>;
  unsent: number;
  capWaits: number;
  /** Calls sent while the window was open, all generators. */
  sentInWindow: number;
  latency: LatencyHistogram;
  sendLag: LatencyHistogram;
  windowSeconds: number;
  /** CPU seconds of all generators in the window. */
  cpuSeconds: number;
  /** The busiest generator's CPU seconds / window seconds (near 1 = that generator was saturated). */
  maxGeneratorCpuShare: number;
  candidates: number;
  degraded: number;
  badResponses: number;
  degradedStages: Record<string, number>;
  firstError?: string;
}

/** Sums per-generator results (histograms merged, errors added by status). */
export function mergeResults(results: readonly PhaseResult[]): MergedResult {
  const latency = new LatencyHistogram();
  const sendLag = new LatencyHistogram();
  const errors: Record<string, number> = {};
  const out: MergedResult = {
    ok: 0,
    errors,
    unsent: 0,
    capWaits: 0,
    sentInWindow: 0,
    latency,
    sendLag,
    windowSeconds: 0,
    cpuSeconds: 0,
    maxGeneratorCpuShare: 0,
    candidates: 0,
    degraded: 0,
    badResponses: 0,
    degradedStages: {},
  };
  for (const r of results) {
    out.ok += r.ok;
    out.unsent += r.unsent;
    out.capWaits += r.capWaits;
    out.sentInWindow += r.sentInWindow;
    latency.merge(r.latency);
    sendLag.merge(r.sendLag);
    for (const [name, n] of Object.entries(r.errors)) errors[name] = (errors[name] ?? 0) + n;
    out.windowSeconds = Math.max(out.windowSeconds, r.windowSeconds);
    out.cpuSeconds += r.cpuSeconds;
    out.maxGeneratorCpuShare = Math.max(out.maxGeneratorCpuShare, r.windowSeconds > 0 ? r.cpuSeconds / r.windowSeconds : 0);
    out.candidates += r.candidates;
    out.degraded += r.degraded;
    out.badResponses += r.badResponses;
    for (const [stage, n] of Object.entries(r.degradedStages)) out.degradedStages[stage] = (out.degradedStages[stage] ?? 0) + n;
    out.firstError ??= r.firstError;
  }
  return out;
}

interface Worker {
  child: ChildProcess;
  /** Resolves with the next `ready`/`result` message; rejects on `failed` or exit. */
  waiting?: { resolve(msg: FromLoadGen): void; reject(err: Error): void };
  exited: boolean;
  stderrTail: string;
}

/** Load generator processes forked from the compiled bench/lib/loadgen.js. */
export class LoadGenPool {
  private onMark: (what: 'window-start' | 'window-end') => void = () => {};

  private constructor(private readonly workers: Worker[]) {}

  /** Forks `count` generators, connects each (`init(i)` says how) and resolves once all are ready. */
  static async start(count: number, init: (i: number) => LoadGenInit): Promise<LoadGenPool> {
    const script = path.join(__dirname, 'loadgen.js');
    const workers: Worker[] = [];
    const pool = new LoadGenPool(workers);
    for (let i = 0; i < count; i++) {
      const child = fork(script, [], {
        // Larger young generation: fewer scavenges per call in a process that allocates per call.
        execArgv: ['--max-semi-space-size=64'],
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'pipe', 'ipc'],
      });
      const w: Worker = { child, exited: false, stderrTail: '' };
      child.stderr?.on('data', (chunk: Buffer) => {
        w.stderrTail = (w.stderrTail + chunk.toString('utf8')).slice(-4000);
      });
      child.on('message', (msg: FromLoadGen) => {
        if (msg.type === 'mark') return pool.onMark(msg.what);
        const waiting = w.waiting;
        w.waiting = undefined;
        if (msg.type === 'failed') waiting?.reject(new Error(`load generator ${i} failed: ${msg.message}`));
        else waiting?.resolve(msg);
      });
      child.on('exit', (code, signal) => {
        w.exited = true;
        const waiting = w.waiting;
        w.waiting = undefined;
        waiting?.reject(new Error(`load generator ${i} exited (${signal ?? `code ${code}`})${w.stderrTail ? `: ${w.stderrTail.trim()}` : ''}`));
      });
      workers.push(w);
    }
    try {
      await Promise.all(workers.map((w, i) => pool.request(w, { type: 'init', init: init(i) })));
    } catch (err) {
      await pool.close();
      throw err;
    }
    return pool;
  }

  /** Generator processes. */
  get size(): number {
    return this.workers.length;
  }

  /** Process ids of the generators. */
  get pids(): number[] {
    return this.workers.map((w) => w.child.pid ?? -1);
  }

  private request(w: Worker, msg: ToLoadGen): Promise<FromLoadGen> {
    return new Promise<FromLoadGen>((resolve, reject) => {
      if (w.exited) return reject(new Error('load generator has exited'));
      w.waiting = { resolve, reject };
      w.child.send(msg);
    });
  }

  /** Runs `spec(i)` on generator i, all at once; `onMark` hears the window marks of the one that reports them. */
  async run(spec: (i: number) => PhaseSpec, onMark: (what: 'window-start' | 'window-end') => void): Promise<PhaseResult[]> {
    this.onMark = onMark;
    try {
      const answers = await Promise.all(this.workers.map((w, i) => this.request(w, { type: 'run', spec: spec(i) })));
      return answers.map((a) => {
        if (a.type !== 'result') throw new Error(`load generator answered "${a.type}" to run`);
        return a.result;
      });
    } finally {
      this.onMark = () => {};
    }
  }

  /** Asks every generator to exit; kills those still running after `graceMs`. */
  async close(graceMs = 2000): Promise<void> {
    await Promise.all(
      this.workers.map(async (w) => {
        if (w.exited) return;
        const exited = new Promise<void>((resolve) => w.child.once('exit', () => resolve()));
        try {
          w.child.send({ type: 'close' } satisfies ToLoadGen);
        } catch {
          // The IPC channel is already gone: the kill below ends it.
        }
        const timer = setTimeout(() => w.child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      }),
    );
  }

  /** Kills every generator at once (synchronous: for process exit handlers). */
  killNow(): void {
    for (const w of this.workers) if (!w.exited) w.child.kill('SIGKILL');
  }
}
