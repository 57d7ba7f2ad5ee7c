/**
 * The EarlyRanker's learned models (CONTRACT section 7): pCTR from an ONNX model, one batched
 * run per request over every candidate, on the serving model worker (onnx-host.ts). The linear
 * pCTR of every candidate is computed anyway: it is the answer when the model fails, is late
 * (past the stage's timeout_ms less a reserve for the rest of the stage) or gives a pCTR that is
 * not in [0, 1]; the stage then notes why under FALLBACK_NOTE and the funnel names it in
 * degraded_stages. A shadow model scores a sampled share of requests too, after the answer,
 * on a worker of its own, and its agreement with the serving model is published (shadow.ts).
 */
import { RANKER_FEATURES, type EarlyRankerStageConfig, type OnnxModelConfig, type ShadowModelConfig } from '../../config/schema';
import { FALLBACK_NOTE, type StageContext } from '../../pipeline/types';
import { ModelRunError, modelFor, queuedRuns, runModel, MAX_QUEUED_RUNS, type ModelRole } from './onnx-host';
import { meanAbsDiff, publishShadowOutcome, spearman, type ShadowOutcome } from './shadow';

/** Number of features (columns of FeatureTable.features). */
export const FEATURE_COUNT = RANKER_FEATURES.length;

/** The features of a request's candidates, and what every model needs besides. */
export interface FeatureTable {
  n: number;
  /** n rows of FEATURE_COUNT values, in RANKER_FEATURES order. */
  features: Float64Array;
  /** pCTR by the stage's linear weights (the fallback). */
  linear: Float64Array;
  /** bid_micros of each candidate (the shadow comparison ranks by eCPM). */
  bids: Float64Array;
}

/** An empty table for n candidates. */
export function featureTable(n: number): FeatureTable {
  return { n, features: new Float64Array(n * FEATURE_COUNT), linear: new Float64Array(n), bids: new Float64Array(n) };
}

/** Whether the stage config asks for more than the linear weights (an ONNX model or a shadow). */
export function usesModels(cfg: EarlyRankerStageConfig): boolean {
  return cfg.model.kind !== 'linear' || cfg.shadow_model !== null;
}

/**
 * Time the model may take: the stage's timeout less a reserve for the rest of the stage (the
 * linear fallback, keeping the best): 20% of it, at least 1 ms and at most 5 ms.
 */
export function modelBudgetMs(timeoutMs: number): number {
  return Math.max(0, timeoutMs - Math.min(5, Math.max(1, timeoutMs * 0.2)));
}

type Outcome = { ok: true; pctr: Float32Array } | { ok: false; reason: string; message: string };

const COLUMN = new Map<string, number>(RANKER_FEATURES.map((f, i) => [f, i]));

/** The model's input: the table's columns `features` lists, in its order, as float32. */
function modelRows(table: FeatureTable, features: readonly string[]): Float32Array {
  const w = features.length;
  const rows = new Float32Array(table.n * w);
  const cols = features.map((f) => COLUMN.get(f)!);
  const src = table.features;
  for (let i = 0; i < table.n; i++) {
    const o = i * FEATURE_COUNT;
    for (let j = 0; j < w; j++) rows[i * w + j] = src[o + cols[j]];
  }
  return rows;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `cfg`'s model on the table within `budgetMs` (and until `signal` aborts); never rejects. */
async function runWithin(cfg: OnnxModelConfig, role: ModelRole, table: FeatureTable, budgetMs: number, signal?: AbortSignal): Promise<Outcome> {
  const rows = modelRows(table, cfg.features);
  const n = table.n;
  const work = (async (): Promise<Outcome> => {
    const fault = cfg.fault;
    if (fault.delay_ms > 0) await sleep(fault.delay_ms);
    if (fault.error_rate > 0 && Math.random() < fault.error_rate) throw new ModelRunError('error', 'injected model fault');
    const m = modelFor(cfg, role);
    const model = m instanceof Promise ? await m : m;
    const p = await runModel(model, rows, n, budgetMs);
    if (p.length !== n) return { ok: false, reason: 'bad_output', message: `${p.length} pCTRs for ${n} candidates` };
    for (let i = 0; i < n; i++) {
      if (!(p[i] >= 0 && p[i] <= 1)) return { ok: false, reason: 'bad_output', message: `pCTR ${p[i]} at row ${i} is not in [0, 1]` };
    }
    return { ok: true, pctr: p };
  })().catch((err: unknown): Outcome => ({ ok: false, reason: err instanceof ModelRunError ? err.reason : 'error', message: (err as Error)?.message ?? String(err) }));
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const late = new Promise<Outcome>((resolve) => {
    timer = setTimeout(() => resolve({ ok: false, reason: 'timeout', message: `no answer within ${budgetMs} ms` }), budgetMs);
    if (signal) {
      onAbort = () => resolve({ ok: false, reason: 'aborted', message: 'the stage was cut short' });
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
    if (signal && onAbort) signal.removeEventListener('abort', onAbort);
  }
}

/**
 * pCTR per row of `table` by the stage's model: the linear pCTRs for `{kind: linear}` (at
 * once), else a promise of the ONNX model's, or of the linear ones when it failed or was late
 * (noted under FALLBACK_NOTE). Starts the shadow model on a sampled request.
 */
export function modelPctr(ctx: StageContext, table: FeatureTable): ArrayLike<number> | Promise<ArrayLike<number>> {
  const cfg = ctx.pipeline.stages.EarlyRanker;
  const shadow = cfg.shadow_model;
  const sampled = shadow !== null && shadow.sample > 0 && Math.random() < shadow.sample;
  const primary = cfg.model;
  if (primary.kind === 'linear') {
    if (sampled) startShadow(ctx.query.pipeline, shadow, table, table.linear, cfg.timeout_ms);
    return table.linear;
  }
  ctx.note('model', 'onnx');
  if (table.n === 0) return table.linear;
  const budget = modelBudgetMs(cfg.timeout_ms);
  const started = performance.now();
  return runWithin(primary, 'serve', table, budget, ctx.signal).then((r) => {
    ctx.note('model_ms', Math.round((performance.now() - started) * 1000) / 1000);
    if (!r.ok) {
      ctx.note(FALLBACK_NOTE, `linear weights (model ${r.reason}: ${r.message})`);
      if (sampled) publishShadowOutcome({ pipeline: ctx.query.pipeline, result: 'skipped', candidates: table.n });
      return table.linear;
    }
    if (sampled) startShadow(ctx.query.pipeline, shadow, table, r.pctr, cfg.timeout_ms);
    return r.pctr;
  });
}

/** Agreement of two pCTR vectors over the table's candidates: Spearman of their eCPM orders, mean |delta pCTR|. */
export function compareScores(table: FeatureTable, served: ArrayLike<number>, shadow: ArrayLike<number>): Pick<ShadowOutcome, 'rankCorrelation' | 'pctrDrift'> {
  const n = table.n;
  const a = new Float64Array(n);
  const b = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    a[i] = table.bids[i] * served[i];
    b[i] = table.bids[i] * shadow[i];
  }
  return { rankCorrelation: spearman(a, b), pctrDrift: meanAbsDiff(served, shadow) };
}

/** Scores the table with the shadow model off the answer path and publishes the comparison with `served`. */
function startShadow(pipeline: string, shadow: ShadowModelConfig, table: FeatureTable, served: ArrayLike<number>, timeoutMs: number): void {
  const n = table.n;
  if (shadow.kind === 'linear') {
    publishShadowOutcome({ pipeline, result: 'ok', candidates: n, ...compareScores(table, served, table.linear) });
    return;
  }
  if (queuedRuns('shadow') >= MAX_QUEUED_RUNS) {
    publishShadowOutcome({ pipeline, result: 'skipped', candidates: n });
    return;
  }
  const kept = Float64Array.from(served);
  void runWithin(shadow, 'shadow', table, timeoutMs).then((r) => {
    if (r.ok) publishShadowOutcome({ pipeline, result: 'ok', candidates: n, ...compareScores(table, kept, r.pctr) });
    else publishShadowOutcome({ pipeline, result: r.reason === 'timeout' ? 'timeout' : r.reason === 'queue_full' ? 'skipped' : 'error', candidates: n });
  });
}
