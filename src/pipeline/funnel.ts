/**
 * The funnel, reading like its config: Eligibility, then the sourcing stages in parallel (Ann,
 * Targeting, Popularity), Merge, Filters, EarlyRanker, Diversifier. A sourcing stage that fails
 * or runs out of time is dropped and named in `degradedStages` (so is a stage that answered by
 * its fallback, FALLBACK_NOTE); Filters fail closed (no candidates), so no failure can break the
 * eligibility invariant.
 */
import { randomUUID } from 'node:crypto';
import type { Config, FeatureLogConfig, PipelineConfig } from '../config/schema';
import type { ServingState } from '../serving/state';
import { BitsetPool, Eligibility } from '../stages/eligibility';
import { Merge } from '../stages/merge';
import { Filters } from '../stages/filtering/filters';
import { EarlyRanker } from '../stages/ranking/early-ranker';
import { Diversifier } from '../stages/diversification/diversifier';
import { AnnSource } from '../stages/sourcing/ann-source';
import { rankerOrderKey, TargetingSource } from '../stages/sourcing/targeting-source';
import { BID_ORDER, priorKey } from '../serving/prior-order';
import { PopularitySource } from '../stages/sourcing/popularity-source';
import { captureFeatures, modelVersion, type FeatureRowSink } from './feature-capture';
import { NO_OBSERVER, runStage, skippedReport, type ContextBase, type RunResult, type StageObserver } from './run-stage';
import { FALLBACK_NOTE, type Candidate, type EligibleSet, type RetrieveQuery, type Stage, type StageContext, type StageReport } from './types';

/** What each stage handed on, kept when a run is traced (Explain, funnel eval). */
export interface FunnelTrace {
  /** A copy of the eligible set's bits (null when Eligibility failed). */
  eligible: EligibleSet | null;
  /** Each sourcing stage's list, for the stages that answered. */
  sourced: Partial<Record<(typeof SOURCE_STAGES)[number], Candidate[]>>;
  merged: Candidate[];
  /** What Filters kept: the EarlyRanker's input, each with the score it gave (NaN when it failed). */
  filtered: Candidate[];
}

/** The funnel's answer to one request. */
export interface FunnelResult {
  candidates: Candidate[];
  /** The EarlyRanker's kept list (before diversification), best first. */
  ranked: Candidate[];
  /** Request time the stages used (epoch ms). */
  nowMs: number;
  /** Set when the run was traced. */
  trace?: FunnelTrace;
  /** Stages that failed or ran out of time, in funnel order. */
  degradedStages: string[];
  /** One report per stage, in funnel order (skipped stages included). */
  reports: StageReport[];
  /** True when the request's deadline had passed by the end, or cut a stage short (its time limit came from the deadline and it ran out). */
  deadlineExceeded: boolean;
  /** Data sequence number at the start of the request. */
  seq: number;
  /** AdTable epoch of the eligible set (-1 when there is none): ads set or removed after it must not be answered. */
  epoch: number;
}

const SOURCE_STAGES = ['Ann', 'Targeting', 'Popularity'] as const;

/** Runs requests through the stages over one serving state. */
export class Funnel {
  private readonly pool = new BitsetPool();
  private readonly buffers = new WeakMap<object, Uint32Array[]>();
  private readonly eligibility: Eligibility;
  private readonly sources: Record<(typeof SOURCE_STAGES)[number], Stage<void, Candidate[]>>;
  private readonly merge = new Merge();
  private readonly filters = new Filters();
  private readonly ranker = new EarlyRanker();
  private readonly diversifier = new Diversifier();
  /** The prepared config's version and feature_log section (what a request starting now runs under). */
  private configVersion = 'builtin';
  private featureLogConfig: FeatureLogConfig = { sample: 0, cut_sample: 0 };

  /** `featureLog`: where the EarlyRanker features of sampled requests go (`--feature-log`); null = none. */
  constructor(
    private readonly state: ServingState,
    private readonly observer: StageObserver = NO_OBSERVER,
    private readonly featureLog: FeatureRowSink | null = null,
  ) {
    this.eligibility = new Eligibility(state, this.pool, (ctx, buf) => {
      const key = ctx.query as object;
      const list = this.buffers.get(key);
      if (list) list.push(buf);
      else this.buffers.set(key, [buf]);
    });
    this.sources = {
      Ann: new AnnSource(() => state.ann),
      Targeting: new TargetingSource(state.ads, state.priorOrder),
      Popularity: new PopularitySource(),
    };
  }

  /** Prepares per-config state (the static orders every pipeline's Targeting walks), off the request path. */
  prepare(config: Config): void {
    const used = Object.values(config.pipelines).flatMap((p) =>
      p.stages.Targeting.order === 'ranker' ? [BID_ORDER, rankerOrderKey(p.stages.EarlyRanker.weights)] : [priorKey(p.stages.Targeting.prior)],
    );
    for (const e of used) this.state.priorOrder.get(e);
    this.state.priorOrder.retain(used);
    this.configVersion = config.version;
    this.featureLogConfig = config.feature_log;
  }

  /**
   * Runs one request. `deadlineMs` is an absolute epoch-ms deadline bounding every stage.
   * Never throws for a stage failure; the caller decides what a passed deadline means.
   * A query without a requestId gets one here (a UUID), so its response and its feature-log rows
   * name the same request.
   */
  async run(
    query: RetrieveQuery,
    pipeline: PipelineConfig,
    deadlineMs: number,
    signal: AbortSignal,
    observer: StageObserver = this.observer,
    traced = false,
  ): Promise<FunnelResult> {
    const nowMs = Date.now();
    if (query.requestId === '') query.requestId = randomUUID();
    // Drawn at the start: the sample and the model version are those of the config the request
    // began with. Traced runs (Explain, funnel eval) show nobody anything: never logged.
    const flog = this.featureLog;
    const flc = this.featureLogConfig;
    const capture =
      flog !== null && !traced && flc.sample > 0 && Math.random() < flc.sample
        ? captureFeatures(flog, this.state.ads, {
            requestId: query.requestId,
            pipeline: query.pipeline,
            modelVersion: modelVersion(this.configVersion, pipeline),
            timeMs: nowMs,
            cutSample: flc.cut_sample,
          })
        : undefined;
    const reports: StageReport[] = [];
    const degraded: string[] = [];
    const pending: Promise<void>[] = [];
    const seq = this.state.seq;
    // Time kept back from the stages for Merge, Filters, ranking and sending the answer, so a
    // degraded answer reaches the caller before its deadline: 10% of the budget, 2..20 ms.
    const reserve = Math.min(20, Math.max(2, (deadlineMs - nowMs) * 0.1));
    const left = () => Math.max(0, deadlineMs - reserve - Date.now());
    let base: ContextBase = { query, pipeline, state: this.state, nowMs, eligible: null };
    const stages = pipeline.stages;
    let deadlineCut = false;
    // A stage's limit: its own timeout, or what the deadline leaves when that is less.
    const limitFor = (timeoutMs: number) => {
      const l = left();
      if (l < timeoutMs) return { timeoutMs: l, byDeadline: true };
      return { timeoutMs, byDeadline: false };
    };
    const record = <T>(r: RunResult<T>, byDeadline = false): RunResult<T> => {
      if (byDeadline && r.report.status === 'timeout') deadlineCut = true;
      reports.push(r.report);
      pending.push(r.settled);
      if (!r.ok || r.report.detail[FALLBACK_NOTE] !== undefined) degraded.push(r.report.name);
      return r;
    };
    try {
      const eligLimit = limitFor(stages.Eligibility.timeout_ms);
      const elig = record(
        await runStage<void, EligibleSet>(this.eligibility, base, undefined, {
          timeoutMs: eligLimit.timeoutMs,
          fault: stages.Eligibility.fault,
          countIn: this.state.ads.size,
        }, observer, signal),
        eligLimit.byDeadline,
      );
      const eligible = elig.ok ? elig.value : null;
      base = { ...base, eligible };
      const trace: FunnelTrace | undefined = traced
        ? { eligible: eligible && { ...eligible, bits: eligible.bits.slice() }, sourced: {}, merged: [], filtered: [] }
        : undefined;

      // Each source sees the lists of those started before it, as promises (they run in parallel).
      const started: Partial<Record<(typeof SOURCE_STAGES)[number], Promise<Candidate[] | null>>> = {};
      const runs = SOURCE_STAGES.map(async (name) => {
        const cfg = stages[name];
        if (!cfg.enabled) return { name, report: skippedReport(name, 'disabled') };
        if (!eligible) return { name, report: skippedReport(name, 'no eligible set') };
        if (name === 'Ann' && !query.embedding) return { name, report: skippedReport(name, 'no user_embedding') };
        const limit = limitFor(cfg.timeout_ms);
        const pending = runStage(this.sources[name], { ...base, sourced: { ...started } }, undefined, {
          timeoutMs: limit.timeoutMs,
          fault: cfg.fault,
          countIn: eligible.count,
        }, observer, signal);
        started[name] = pending.then((r) => (r.ok ? r.value : null));
        const r = await pending;
        return { name, report: r.report, result: r, byDeadline: limit.byDeadline };
      });
      const sourced: Candidate[][] = [];
      for (const s of await Promise.all(runs)) {
        if ('result' in s && s.result) {
          record(s.result, s.byDeadline);
          if (s.result.ok) {
            sourced.push(s.result.value);
            if (trace) trace.sourced[s.name] = s.result.value;
          }
        } else {
          reports.push(s.report);
        }
      }

      const sourcedCount = sourced.reduce((n, l) => n + l.length, 0);
      const merged = record(
        await runStage(this.merge, base, sourced, { timeoutMs: Math.max(left(), stages.Filters.timeout_ms), countIn: sourcedCount }, observer, signal),
      );
      // Filters guard the invariant: never skipped for time, and a failure returns nothing.
      const filtered = record(
        await runStage(this.filters, base, merged.ok ? merged.value : [], { timeoutMs: stages.Filters.timeout_ms, fault: stages.Filters.fault }, observer, signal),
      );
      const kept = filtered.ok ? filtered.value : [];
      if (trace) {
        trace.merged = merged.ok ? merged.value : [];
        trace.filtered = kept;
      }
      const ranked = record(
        await runStage(this.ranker, capture ? { ...base, rankedFeatures: capture } : base, kept, { timeoutMs: stages.EarlyRanker.timeout_ms, fault: stages.EarlyRanker.fault }, observer, signal),
      );
      const rankedList = ranked.ok ? ranked.value : fallbackRank(this.state, kept, stages.EarlyRanker.keep);
      const diversified = record(
        await runStage(this.diversifier, base, rankedList, { timeoutMs: stages.Diversifier.timeout_ms, fault: stages.Diversifier.fault }, observer, signal),
      );
      const candidates = diversified.ok ? diversified.value : rankedList.slice(0, query.numResults);
      return {
        candidates,
        ranked: rankedList,
        nowMs,
        trace,
        degradedStages: degraded,
        reports,
        deadlineExceeded: deadlineCut || Date.now() > deadlineMs,
        seq,
        epoch: eligible ? eligible.epoch : -1,
      };
    } finally {
      // Bitsets go back to the pool once no stage (and no native call of a timed-out stage) reads
      // them; a stage that ends after the request (a timed-out Eligibility) still adds its buffer
      // to this request's list before its run settles.
      const key = query as object;
      const release = () => {
        const bufs = this.buffers.get(key);
        if (!bufs) return;
        this.buffers.delete(key);
        for (const b of bufs) this.pool.release(b);
      };
      if (pending.length === 0) release();
      else void Promise.all(pending).then(release);
    }
  }
}

/** eCPM of `id` with ctr_prior as pCTR: the score the funnel ranks by when the EarlyRanker failed. */
export function fallbackScore(ads: ServingState['ads'], id: number): number {
  return (ads.bidMicros(id) / 1e6) * ads.ctrPrior(id) * 1000;
}

/** The best `keep` by fallbackScore (the order used when the EarlyRanker failed). */
function fallbackRank(state: ServingState, candidates: Candidate[], keep: number): Candidate[] {
  const ads = state.ads;
  const out = candidates.map((c) => ({ ...c, score: fallbackScore(ads, c.id) }));
  out.sort((a, b) => b.score - a.score || a.id - b.id);
  return out.slice(0, keep);
}

export type { StageContext };
