/**
 * Offline funnel evaluation (CONTRACT section 3, `funnel eval`): runs requests through the funnel
 * in-process and through the exhaustive reference (the same pipeline's Filters and EarlyRanker
 * over every eligible ad, no sourcing cut, no diversification), and measures how much of the
 * reference's top N the funnel's ranked list holds, where the rest was lost, and what it cost.
 */
import { route } from '../config/experiments';
import type { Config, PipelineConfig } from '../config/schema';
import type { DecodedRetrieve } from '../grpc/codec';
import { validateRetrieve } from '../grpc/validate';
import { explainIds } from '../pipeline/explain';
import { Funnel, type FunnelResult } from '../pipeline/funnel';
import { NO_OBSERVER } from '../pipeline/run-stage';
import type { Candidate, EligibleSet, RetrieveQuery, StageContext } from '../pipeline/types';
import type { ServingState } from '../serving/state';
import { Filters } from '../stages/filtering/filters';
import { EarlyRanker } from '../stages/ranking/early-ranker';

/** Loss counts: stage -> reason code -> ads of the reference's top N the funnel's top N lacks. */
export type LossTable = Record<string, Record<string, number>>;

/** One request through the funnel and the reference. */
export interface RequestEval {
  pipeline: string;
  /** N: the request's num_results (or the override). */
  n: number;
  /** Share of the reference's top N that the funnel's ranked top N holds (1 when the reference is empty). */
  recall: number;
  /** The same share weighted by the reference's scores. */
  ecpmShare: number;
  /** Wall time of the funnel run, ms. */
  latencyMs: number;
  /** CPU time of the whole process (every thread) during the funnel run, ms. */
  cpuMs: number;
  /** Where each lost ad was lost. */
  loss: LossTable;
  /** The funnel's ranked top N (internal ids, best first) and their scores. */
  top: number[];
  topScores: number[];
  /** Size of the request's eligible set. */
  eligible: number;
}

/** Reason used when the funnel kept a reference ad but ranked it below N (possible only through source weights or a quantised similarity). */
export const RANKED_BELOW_N = 'ranked_below_n';

/** Every id set in `e`, ascending, as reference candidates (no source, no similarity yet). */
function eligibleCandidates(e: EligibleSet): Candidate[] {
  const out: Candidate[] = [];
  const bits = e.bits;
  for (let w = 0; w < bits.length; w++) {
    let word = bits[w];
    while (word !== 0) {
      const t = word & -word;
      out.push({ id: (w << 5) + (31 - Math.clz32(t)), sources: 0, annScore: NaN, sourceRank: 0, score: NaN });
      word ^= t;
    }
  }
  return out;
}

/** Runs requests through one config's funnel and the exhaustive reference over one serving state. */
export class FunnelEvaluator {
  private readonly funnel: Funnel;
  private readonly filters = new Filters();
  private readonly ranker = new EarlyRanker();

  constructor(
    private readonly state: ServingState,
    readonly config: Config,
  ) {
    this.funnel = new Funnel(state);
    this.funnel.prepare(config);
  }

  /** Validates `req` as Retrieve would (routing included; `pipeline` and `numResults` override the request's); throws the RpcError Retrieve would answer. */
  query(req: DecodedRetrieve, pipeline?: string, numResults?: number): RetrieveQuery {
    const r = { ...req, pipeline: pipeline ?? req.pipeline, num_results: numResults ?? req.num_results };
    const routed = route(this.config, r.user_id, r.pipeline);
    return validateRetrieve(r, this.config, this.state.dim, routed.pipeline);
  }

  /** The reference's top N for a traced run: Filters and the EarlyRanker (keep N) over every eligible ad, at the run's time. */
  reference(query: RetrieveQuery, pipeline: PipelineConfig, result: FunnelResult, n: number): Candidate[] {
    const eligible = result.trace?.eligible;
    if (!eligible) return [];
    const stages = { ...pipeline.stages, EarlyRanker: { ...pipeline.stages.EarlyRanker, keep: Math.max(1, n) } };
    const ctx: StageContext = {
      query,
      pipeline: { ...pipeline, stages },
      state: this.state,
      nowMs: result.nowMs,
      signal: new AbortController().signal,
      eligible,
      note: () => undefined,
      drop: () => undefined,
    };
    const kept = this.filters.run(ctx, eligibleCandidates(eligible));
    return n > 0 ? this.ranker.run(ctx, kept) : [];
  }

  /** Evaluates one validated request. */
  async evaluate(query: RetrieveQuery): Promise<RequestEval> {
    const pipeline = this.config.pipelines[query.pipeline];
    const n = query.numResults;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const result = await this.funnel.run(query, pipeline, Date.now() + 600_000, new AbortController().signal, NO_OBSERVER, true);
    const latencyMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const cpu = process.cpuUsage(cpu0);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    const ref = this.reference(query, pipeline, result, n);
    const topList = result.ranked.slice(0, n);
    const top = new Set(topList.map((c) => c.id));
    let held = 0;
    let heldScore = 0;
    let totalScore = 0;
    const lost: { adId: string; id: number }[] = [];
    for (const c of ref) {
      totalScore += c.score;
      if (top.has(c.id)) {
        held++;
        heldScore += c.score;
      } else lost.push({ adId: this.state.ads.adId(c.id), id: c.id });
    }
    const loss: LossTable = {};
    const add = (stage: string, reason: string) => {
      const s = (loss[stage] ??= {});
      s[reason] = (s[reason] ?? 0) + 1;
    };
    const rankedIds = new Set(result.ranked.map((c) => c.id));
    const toExplain = lost.filter((l) => {
      if (!rankedIds.has(l.id)) return true;
      add('EarlyRanker', RANKED_BELOW_N);
      return false;
    });
    if (toExplain.length > 0) {
      for (const x of explainIds(this.state, pipeline, query, result, result.candidates.map((c) => c.id), toExplain)) add(x.stage || x.outcome, x.reason || x.outcome);
    }
    return {
      pipeline: query.pipeline,
      n,
      recall: ref.length === 0 ? 1 : held / ref.length,
      ecpmShare: totalScore > 0 ? heldScore / totalScore : ref.length === 0 ? 1 : held / ref.length,
      latencyMs,
      cpuMs,
      loss,
      top: topList.map((c) => c.id),
      topScores: topList.map((c) => c.score),
      eligible: result.trace?.eligible?.count ?? 0,
    };
  }
}

/** The q-quantile (0..1) of `xs` by the nearest-rank method; NaN when empty. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

/** Totals of one (config, pipeline) over many requests: the CONTRACT's `--json` line. */
export interface EvalSummary {
  config: string;
  pipeline: string;
  requests: number;
  /** N when every request had the same, else null. */
  n: number | null;
  recall_at_n: number;
  recall_p10: number;
  recall_min: number;
  ecpm_share: number;
  /** Mean over requests of the mean score of the funnel's ranked top N. */
  mean_ecpm_top_n: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  cpu_ms_per_request: number;
  /** Mean size of the requests' eligible sets. */
  eligible_mean: number;
  loss: LossTable;
}

/** Sums per-request evaluations into a summary. */
export function summarize(config: string, pipeline: string, evals: readonly RequestEval[]): EvalSummary {
  const mean = (xs: readonly number[]) => (xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length);
  const recalls = evals.map((e) => e.recall);
  const loss: LossTable = {};
  for (const e of evals) {
    for (const [stage, reasons] of Object.entries(e.loss)) {
      const s = (loss[stage] ??= {});
      for (const [r, k] of Object.entries(reasons)) s[r] = (s[r] ?? 0) + k;
    }
  }
  const ns = new Set(evals.map((e) => e.n));
  return {
    config,
    pipeline,
    requests: evals.length,
    n: ns.size === 1 ? [...ns][0] : null,
    recall_at_n: mean(recalls),
    recall_p10: quantile(recalls, 0.1),
    recall_min: recalls.length ? Math.min(...recalls) : NaN,
    ecpm_share: mean(evals.map((e) => e.ecpmShare)),
    mean_ecpm_top_n: mean(evals.map((e) => mean(e.topScores) || 0)),
    latency_p50_ms: quantile(evals.map((e) => e.latencyMs), 0.5),
    latency_p99_ms: quantile(evals.map((e) => e.latencyMs), 0.99),
    cpu_ms_per_request: mean(evals.map((e) => e.cpuMs)),
    eligible_mean: mean(evals.map((e) => e.eligible)),
    loss,
  };
}

/** How a second config's answers differ from the first's over the same requests. */
export interface EvalDiff {
  /** Mean share of A's ranked top N that B's holds. */
  overlap_at_n: number;
  /** Advertisers whose share of top-N slots moved most, B minus A, largest moves first. */
  advertiser_share_moves: { advertiser_id: string; share_a: number; share_b: number }[];
}

/** Compares per-request evaluations of two configs (same requests, same order); `advertiserOf` names an internal id's advertiser. */
export function diff(a: readonly RequestEval[], b: readonly RequestEval[], advertiserOf: (id: number) => string, moves = 5): EvalDiff {
  let overlap = 0;
  const slotsA = new Map<string, number>();
  const slotsB = new Map<string, number>();
  let totalA = 0;
  let totalB = 0;
  for (let i = 0; i < a.length; i++) {
    const sa = new Set(a[i].top);
    const inB = b[i].top.filter((id) => sa.has(id)).length;
    overlap += sa.size === 0 ? 1 : inB / sa.size;
    for (const id of a[i].top) slotsA.set(advertiserOf(id), (slotsA.get(advertiserOf(id)) ?? 0) + 1);
    for (const id of b[i].top) slotsB.set(advertiserOf(id), (slotsB.get(advertiserOf(id)) ?? 0) + 1);
    totalA += a[i].top.length;
    totalB += b[i].top.length;
  }
  const names = new Set([...slotsA.keys(), ...slotsB.keys()]);
  const rows = [...names].map((adv) => ({
    advertiser_id: adv,
    share_a: totalA ? (slotsA.get(adv) ?? 0) / totalA : 0,
    share_b: totalB ? (slotsB.get(adv) ?? 0) / totalB : 0,
  }));
  rows.sort((x, y) => Math.abs(y.share_b - y.share_a) - Math.abs(x.share_b - x.share_a) || (x.advertiser_id < y.advertiser_id ? -1 : 1));
  return { overlap_at_n: a.length ? overlap / a.length : NaN, advertiser_share_moves: rows.slice(0, moves) };
}
