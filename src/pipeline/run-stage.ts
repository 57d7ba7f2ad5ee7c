/**
 * The stage executor: runs one stage with its time limit (min of the stage's `timeout_ms` and
 * what is left of the request's deadline), its fault injection, and the telemetry hooks, and
 * turns a throw or a timeout into a report instead of an RPC error. Stages never touch
 * telemetry themselves.
 */
import type { EligibleSet, Stage, StageContext, StageReport } from './types';

/** Telemetry hooks around a stage run (spans, metrics); the default does nothing. */
export interface StageObserver {
  /** Called when a stage starts; the returned function is called once with its report. */
  start(name: string, ctx: StageContext): (report: StageReport) => void;
}

/** An observer that records nothing. */
export const NO_OBSERVER: StageObserver = { start: () => () => undefined };

/** A stage's error when it ran out of time. */
export class StageTimeout extends Error {
  constructor(
    readonly stage: string,
    readonly limitMs: number,
  ) {
    super(`stage ${stage} timed out after ${limitMs} ms`);
  }
}

/** Knobs of one run. */
export interface RunOptions {
  /** Time limit in ms (already the min of stage timeout and deadline). */
  timeoutMs: number;
  /** Fault injection of the stage's config. */
  fault?: { delay_ms: number; error_rate: number };
  /** Counts candidates of the input and output for the report. */
  countIn?: number;
}

/** Outcome of one run: the value, or why there is none. `settled` resolves when the stage's own work is over (even after a timeout). */
export type RunResult<T> = { ok: true; value: T; report: StageReport; settled: Promise<void> } | { ok: false; report: StageReport; settled: Promise<void> };

function count(v: unknown): number {
  if (Array.isArray(v)) return v.length;
  if (v && typeof v === 'object' && 'count' in v && typeof (v as EligibleSet).count === 'number') return (v as EligibleSet).count;
  return 0;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Base of a stage context: everything but the per-stage signal, note and drop. */
export type ContextBase = Omit<StageContext, 'signal' | 'note' | 'drop'>;

/** A report for a stage that did not run. */
export function skippedReport(name: string, reason: string): StageReport {
  return { name, status: 'skipped', candidatesIn: 0, candidatesOut: 0, latencyMs: 0, detail: { reason }, dropped: {} };
}

const SETTLED: Promise<void> = Promise.resolve();

function isThenable<T>(v: T | PromiseLike<T>): v is PromiseLike<T> {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as PromiseLike<T>).then === 'function';
}

/**
 * A stage's context: one class, so every stage sees one object shape (an object literal with a
 * getter per run would give each run its own hidden class). The AbortSignal is made only when
 * the stage asks for it; an abort before that is kept and given to the signal when it is made.
 */
class RunContext implements StageContext {
  readonly query: StageContext['query'];
  readonly pipeline: StageContext['pipeline'];
  readonly state: StageContext['state'];
  readonly nowMs: number;
  readonly eligible: StageContext['eligible'];
  readonly sourced: StageContext['sourced'];
  readonly rankedFeatures: StageContext['rankedFeatures'];
  readonly detail: Record<string, string | number | boolean> = {};
  readonly dropped: Record<string, number> = {};
  readonly note: StageContext['note'];
  readonly drop: StageContext['drop'];
  private controller: AbortController | undefined = undefined;
  private abortedEarly = false;
  private earlyReason: unknown = undefined;
  private onParentAbort: (() => void) | undefined = undefined;

  constructor(
    base: ContextBase,
    private readonly parent: AbortSignal,
  ) {
    this.query = base.query;
    this.pipeline = base.pipeline;
    this.state = base.state;
    this.nowMs = base.nowMs;
    this.eligible = base.eligible;
    this.sourced = base.sourced;
    this.rankedFeatures = base.rankedFeatures;
    const detail = this.detail;
    const dropped = this.dropped;
    this.note = (k, v) => {
      detail[k] = v;
    };
    this.drop = (reason, n) => {
      if (n > 0) dropped[reason] = (dropped[reason] ?? 0) + n;
    };
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      const c = (this.controller = new AbortController());
      const parent = this.parent;
      if (this.abortedEarly) c.abort(this.earlyReason);
      else if (parent.aborted) c.abort(parent.reason);
      else {
        this.onParentAbort = () => c.abort(parent.reason);
        parent.addEventListener('abort', this.onParentAbort, { once: true });
      }
    }
    return this.controller.signal;
  }

  /** Aborts the stage's signal (now, or when it is made). */
  abort(reason: unknown): void {
    if (this.controller !== undefined) this.controller.abort(reason);
    else if (!this.abortedEarly) {
      this.abortedEarly = true;
      this.earlyReason = reason;
    }
  }

  /** Whether the stage's signal is (or would be) aborted. */
  get aborted(): boolean {
    return this.parent.aborted || this.abortedEarly || (this.controller !== undefined && this.controller.signal.aborted);
  }

  /** Stops listening to the request's signal. */
  detach(): void {
    if (this.onParentAbort !== undefined) this.parent.removeEventListener('abort', this.onParentAbort);
  }
}

/**
 * Runs `stage` on `input`; never throws. A stage that answers synchronously (no injected fault)
 * cannot be cut short by its timer (the timer could only fire after it returned), so it runs
 * without one; the stage's AbortSignal is only made when the stage asks for it.
 */
export async function runStage<In, Out>(
  stage: Stage<In, Out>,
  base: ContextBase,
  input: In,
  options: RunOptions,
  observer: StageObserver,
  parentSignal: AbortSignal,
): Promise<RunResult<Out>> {
  const started = performance.now();
  const ctx = new RunContext(base, parentSignal);
  const end = observer.start(stage.name, ctx);
  const report: StageReport = {
    name: stage.name,
    status: 'ok',
    candidatesIn: options.countIn ?? count(input),
    candidatesOut: 0,
    latencyMs: 0,
    detail: ctx.detail,
    dropped: ctx.dropped,
  };
  const limit = Math.max(0, options.timeoutMs);
  report.limitMs = limit;
  const finish = (result: RunResult<Out>): RunResult<Out> => {
    ctx.detach();
    report.latencyMs = performance.now() - started;
    end(report);
    return result;
  };
  const failed = (err: unknown, settled: Promise<void>): RunResult<Out> => {
    report.status = err instanceof StageTimeout || ctx.aborted ? 'timeout' : 'error';
    report.error = (err as Error)?.message ?? String(err);
    ctx.abort(err);
    return { ok: false, report, settled };
  };
  const fault = options.fault;
  let work: PromiseLike<Out>;
  if (fault && (fault.delay_ms > 0 || fault.error_rate > 0)) {
    work = (async () => {
      if (fault.delay_ms > 0) await sleep(fault.delay_ms, ctx.signal);
      if (fault.error_rate > 0 && Math.random() < fault.error_rate) throw new Error('injected fault');
      return stage.run(ctx, input);
    })();
  } else {
    let value: Out | PromiseLike<Out>;
    try {
      value = stage.run(ctx, input);
    } catch (err) {
      return finish(failed(err, SETTLED));
    }
    if (!isThenable(value)) {
      report.candidatesOut = count(value);
      return finish({ ok: true, value, report, settled: SETTLED });
    }
    work = value;
  }
  const settled = Promise.resolve(work).then(
    () => undefined,
    () => undefined,
  );
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StageTimeout(stage.name, limit)), limit);
  });
  let result: RunResult<Out>;
  try {
    const value = await Promise.race([work, timeout]);
    report.candidatesOut = count(value);
    result = { ok: true, value, report, settled };
  } catch (err) {
    result = failed(err, settled);
  } finally {
    clearTimeout(timer);
  }
  return finish(result);
}
