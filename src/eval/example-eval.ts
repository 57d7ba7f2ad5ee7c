/**
 * `funnel eval --examples`: labelled examples (`funnel examples` output) scored with a config's
 * EarlyRanker pCTR model, through the serving code (model-ranker.ts modelPctr(): the linear
 * weights, or the ONNX model on the serving model worker), and measured: log-loss, AUC, mean
 * predicted pCTR against the observed click rate, and a calibration table.
 */
import { readJsonValues } from '../telemetry/feature-log';
import type { Config, PipelineConfig } from '../config/schema';
import { FALLBACK_NOTE, type StageContext } from '../pipeline/types';
import { pctr, writeFeatures, type RankerFeatures } from '../stages/ranking/early-ranker';
import { FEATURE_COUNT, featureTable, modelPctr } from '../stages/ranking/model-ranker';
import { auc, calibration, logLoss, parseExample, type CalibrationBucket } from './train-ranker';

/** One example as the scorer needs it. */
export interface ScoredExample {
  /** The pipeline the example was served by (its `pipeline` field; `default` when absent). */
  pipeline: string;
  features: RankerFeatures;
  label: 0 | 1;
}

/** An example line read, or why it could not be (`where` is FILE:LINE). */
export interface ExampleLine {
  where: string;
  example?: ScoredExample;
  error?: string;
}

/** Reads a JSON Lines file of examples; blank lines are skipped, bad ones yielded with their reason. */
export async function* readExampleLines(file: string): AsyncGenerator<ExampleLine> {
  for await (const { where, value: obj, error } of readJsonValues(file)) {
    if (error !== undefined) {
      yield { where, error };
      continue;
    }
    try {
      const e = parseExample(obj);
      const p = (obj as Record<string, unknown>).pipeline;
      if (p !== undefined && (typeof p !== 'string' || p === '')) throw new Error('pipeline: must be a non-empty string');
      yield { where, example: { pipeline: (p as string | undefined) ?? 'default', features: e.features, label: e.label } };
    } catch (err) {
      yield { where, error: (err as Error).message };
    }
  }
}

/** The model could not score (an ONNX model that failed to load or run); the message says why. */
export class ExampleScoringError extends Error {
  readonly code = 'ERR_EXAMPLE_SCORING';
}

/** Rows per model run: one feature table, as a request of this many candidates would be. */
export const SCORE_BATCH = 4096;

/** Time one batch may take on the model worker (offline: far above a request's budget). */
const OFFLINE_TIMEOUT_MS = 60_000;

/**
 * pCTR of each example (same order) by `pipeline`'s EarlyRanker model, through modelPctr(): the
 * linear weights, or its ONNX model. The shadow model is not run. Rejects with
 * ExampleScoringError when the model fails instead of answering with the linear fallback.
 */
export async function scoreExamples(pipeline: PipelineConfig, examples: readonly Pick<ScoredExample, 'features'>[]): Promise<Float64Array> {
  const stage = { ...pipeline.stages.EarlyRanker, shadow_model: null, timeout_ms: Math.max(pipeline.stages.EarlyRanker.timeout_ms, OFFLINE_TIMEOUT_MS) };
  const cfg: PipelineConfig = { ...pipeline, stages: { ...pipeline.stages, EarlyRanker: stage } };
  const out = new Float64Array(examples.length);
  for (let from = 0; from < examples.length; from += SCORE_BATCH) {
    const n = Math.min(SCORE_BATCH, examples.length - from);
    const table = featureTable(n);
    for (let i = 0; i < n; i++) {
      const f = examples[from + i].features;
      writeFeatures(f, table.features, i * FEATURE_COUNT);
      table.linear[i] = pctr(stage.weights, f);
    }
    let fallback: string | undefined;
    const ctx = {
      query: { pipeline: 'eval' },
      pipeline: cfg,
      signal: new AbortController().signal,
      note: (key: string, value: string | number | boolean) => {
        if (key === FALLBACK_NOTE) fallback = String(value);
      },
      drop: () => {},
    } as unknown as StageContext;
    const p = await modelPctr(ctx, table);
    if (fallback !== undefined) throw new ExampleScoringError(`the EarlyRanker model did not score: ${fallback}`);
    for (let i = 0; i < n; i++) out[from + i] = p[i];
  }
  return out;
}

/** The measures of one (config, pipeline) over its examples. */
export interface ExampleSummary {
  config: string;
  pipeline: string;
  /** `linear` or `onnx:<path>`. */
  model: string;
  examples: number;
  clicks: number;
  /** Mean log-loss, nats per example. */
  log_loss: number;
  /** Exact AUC (NaN with a single label). */
  auc: number;
  mean_pctr: number;
  /** Observed click rate: share of examples labelled 1. */
  base_rate: number;
  calibration: CalibrationBucket[];
}

/** Measures pCTRs `p` against labels `y` (same length). */
export function summarizeExamples(config: string, pipeline: string, model: string, y: ArrayLike<number>, p: ArrayLike<number>, buckets = 10): ExampleSummary {
  let clicks = 0;
  let sumP = 0;
  for (let i = 0; i < y.length; i++) {
    clicks += y[i];
    sumP += p[i];
  }
  return {
    config,
    pipeline,
    model,
    examples: y.length,
    clicks,
    log_loss: logLoss(y, p),
    auc: auc(y, p),
    mean_pctr: sumP / y.length,
    base_rate: clicks / y.length,
    calibration: calibration(y, p, { buckets: Math.max(1, Math.min(buckets, y.length)) }),
  };
}

/** Name of a stage's model for the report. */
export function modelName(pipeline: PipelineConfig): string {
  const m = pipeline.stages.EarlyRanker.model;
  return m.kind === 'linear' ? 'linear' : `${m.kind}:${m.path}`;
}

/**
 * Scores `examples` under every config: one summary per (config, pipeline), configs in order,
 * pipelines by first appearance. `pipelines` (when not empty) scores every example with each
 * of them instead of its own. Examples whose pipeline a config lacks are left out of that
 * config's summaries and listed in `missing`.
 */
export async function evaluateExamples(
  configs: readonly { label: string; config: Config }[],
  examples: readonly ScoredExample[],
  pipelines: readonly string[] = [],
): Promise<{ summaries: ExampleSummary[]; missing: { config: string; pipeline: string; examples: number }[] }> {
  const groups = new Map<string, ScoredExample[]>();
  if (pipelines.length > 0) for (const p of pipelines) groups.set(p, examples as ScoredExample[]);
  else {
    for (const e of examples) {
      let g = groups.get(e.pipeline);
      if (!g) groups.set(e.pipeline, (g = []));
      g.push(e);
    }
  }
  const summaries: ExampleSummary[] = [];
  const missing: { config: string; pipeline: string; examples: number }[] = [];
  for (const { label, config } of configs) {
    for (const [name, rows] of groups) {
      const pipeline = Object.prototype.hasOwnProperty.call(config.pipelines, name) ? config.pipelines[name] : undefined;
      if (!pipeline) {
        missing.push({ config: label, pipeline: name, examples: rows.length });
        continue;
      }
      const p = await scoreExamples(pipeline, rows);
      const y = Uint8Array.from(rows, (r) => r.label);
      summaries.push(summarizeExamples(label, name, modelName(pipeline), y, p));
    }
  }
  return { summaries, missing };
}
