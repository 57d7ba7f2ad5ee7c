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

/** Runs `stage` on `input`; never throws. */
export async function runStage<In, Out>(
  stage: Stage<In, Out>,
  base: ContextBase,
  input: In,
  options: RunOptions,
  observer: StageObserver,
  parentSignal: AbortSignal,
): Promise<RunResult<Out>> {
  const started = process.hrtime.bigint();
  const detail: Record<string, string | number | boolean> = {};
  const dropped: Record<string, number> = {};
  const controller = new AbortController();
  const onParentAbort = () => controller.abort(parentSignal.reason);
  if (parentSignal.aborted) controller.abort(parentSignal.reason);
  else parentSignal.addEventListener('abort', onParentAbort, { once: true });
  const ctx: StageContext = {
    ...base,
    signal: controller.signal,
    note: (k, v) => {
      detail[k] = v;
    },
    drop: (reason, n) => {
      if (n > 0) dropped[reason] = (dropped[reason] ?? 0) + n;
    },
  };
  const end = observer.start(stage.name, ctx);
  const report: StageReport = {
    name: stage.name,
    status: 'ok',
    candidatesIn: options.countIn ?? count(input),
    candidatesOut: 0,
    latencyMs: 0,
    detail,
    dropped,
  };
  const limit = Math.max(0, options.timeoutMs);
  report.limitMs = limit;
  let timer: NodeJS.Timeout | undefined;
  const work = (async () => {
    const fault = options.fault;
    if (fault && fault.delay_ms > 0) await sleep(fault.delay_ms, controller.signal);
    if (fault && fault.error_rate > 0 && Math.random() < fault.error_rate) throw new Error('injected fault');
    return stage.run(ctx, input);
  })();
  const settled = work.then(
    () => undefined,
    () => undefined,
  );
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StageTimeout(stage.name, limit)), limit);
  });
  let result: RunResult<Out>;
  try {
    const value = await Promise.race([work, timeout]);
    report.candidatesOut = count(value);
    result = { ok: true, value, report, settled };
  } catch (err) {
    report.status = err instanceof StageTimeout || controller.signal.aborted ? 'timeout' : 'error';
    report.error = (err as Error)?.message ?? String(err);
    controller.abort(err);
    result = { ok: false, report, settled };
  } finally {
    clearTimeout(timer);
    parentSignal.removeEventListener('abort', onParentAbort);
  }
  report.latencyMs = Number(process.hrtime.bigint() - started) / 1e6;
  end(report);
  return result;
}
