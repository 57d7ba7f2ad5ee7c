/**
 * Feature capture for the feature log: for a sampled Retrieve, the sink the EarlyRanker hands
 * what it ranked to (StageContext.rankedFeatures), which turns it into feature-log rows: every
 * kept candidate with its 1-based position, and a `cut_sample` share of the cut ones (position
 * 0). The rows are packed inside the ranker's synchronous run (ad ids resolved now: internal
 * ids are reused after deletes) into one FeatureBatch; formatting and writing are the log's, on
 * its own thread.
 */
import type { PipelineConfig } from '../config/schema';
import type { AdTable } from '../serving/ad-table';
import { BATCH_STRIDE, type FeatureBatch } from '../telemetry/feature-log';
import { writeFeatures } from '../stages/ranking/early-ranker';
import type { Candidate, RankedFeaturesSink } from './types';

/** Where captured rows go (FeatureLog). */
export interface FeatureRowSink {
  /** Takes the rows of one request; never throws. */
  record(batch: FeatureBatch): void;
  /** Counts `n` rows that could not be built; never throws. */
  lost(n: number, err: unknown): void;
}

/** What a captured row says of its request. */
export interface CaptureMeta {
  requestId: string;
  pipeline: string;
  /** `<config version>/<model kind>`. */
  modelVersion: string;
  /** Request time the features were computed at, epoch ms. */
  timeMs: number;
  /** Share of cut candidates logged, 0..1. */
  cutSample: number;
}

/** The model kind of an EarlyRanker config: `EarlyRanker.model.kind` where the config has one (CONTRACT section 7), else `linear`. */
export function modelKind(pipeline: PipelineConfig): string {
  const model = (pipeline.stages.EarlyRanker as { model?: { kind?: unknown } }).model;
  return typeof model?.kind === 'string' ? model.kind : 'linear';
}

/** `<config version>/<model kind>`: the model_version of a feature-log row. */
export function modelVersion(configVersion: string, pipeline: PipelineConfig): string {
  return `${configVersion}/${modelKind(pipeline)}`;
}

/** A sink for one sampled request that packs its feature-log rows and hands them to `log`; it never throws. `random` draws the cut sample. */
export function captureFeatures(log: FeatureRowSink, ads: AdTable, meta: CaptureMeta, random: () => number = Math.random): RankedFeaturesSink {
  return (kept, ranked, featuresOf) => {
    try {
      let chosen: readonly Candidate[] = kept;
      if (meta.cutSample > 0 && ranked.length > kept.length) {
        const keptSet = new Set<Candidate>(kept);
        const all = kept.slice();
        for (const c of ranked) if (!keptSet.has(c) && random() < meta.cutSample) all.push(c);
        chosen = all;
      }
      const n = chosen.length;
      const values = new Float64Array(n * BATCH_STRIDE);
      const adIds = new Array<string>(n);
      for (let i = 0; i < n; i++) {
        const c = chosen[i];
        const f = featuresOf(c);
        const o = i * BATCH_STRIDE;
        adIds[i] = ads.adId(c.id);
        values[o] = i < kept.length ? i + 1 : 0;
        values[o + 1] = c.score;
        writeFeatures(f, values, o + 2);
      }
      log.record({ timeMs: meta.timeMs, requestId: meta.requestId, modelVersion: meta.modelVersion, pipeline: meta.pipeline, adIds, values });
    } catch (err) {
      log.lost(kept.length, err);
    }
  };
}
