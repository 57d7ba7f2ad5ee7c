/**
 * Offline funnel evaluation (CONTRACT section 3, `funnel eval`): runs requests through the funnel
 * in-process and through the exhaustive reference (the same pipeline's Filters and EarlyRanker
 * over every eligible ad, no sourcing cut, no diversification), and measures how much of the
 * reference's top N the funnel's ranked list holds, where the rest was lost, and what it cost.
 */
import { route } from '../config/experiments';
import type { Config, PipelineConfig } from '../config/schema';
import type { DecodedRetrieve } from '../grpc/codec';
import { RpcError, validateRetrieve } from '../grpc/validate';
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

/** A timed, traced funnel run of one request. */
export interface FunnelRun {
  query: RetrieveQuery;
  result: FunnelResult;
  latencyMs: number;
  cpuMs: number;
}

/** Reason used when the funnel kept a reference ad but ranked it below N (possible only through source weights or a quantised similarity). */
export const RANKED_BELOW_N = 'ranked_below_n';

/** Reference candidates scored per chunk: a few thousand short-lived objects at a time, so that their garbage dies young instead of loading the old generation (whose collection would run on into the next timed funnel run). */
const REFERENCE_CHUNK = 4096;

/** Calls `each` with the ids set in `e`, ascending, as reference candidates (no source, no similarity yet), REFERENCE_CHUNK at a time. */
function forEligibleChunks(e: EligibleSet, each: (chunk: Candidate[]) => void): void {
  let out: Candidate[] = [];
  const bits = e.bits;
  for (let w = 0; w < bits.length; w++) {
    let word = bits[w];
    while (word !== 0) {
      const t = word & -word;
      out.push({ id: (w << 5) + (31 - Math.clz32(t)), sources: 0, annScore: NaN, sourceRank: 0, score: NaN });
      word ^= t;
      if (out.length === REFERENCE_CHUNK) {
        each(out);
        out = [];
      }
    }
  }
  if (out.length > 0) each(out);
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
  async reference(query: RetrieveQuery, pipeline: PipelineConfig, result: FunnelResult, n: number): Promise<Candidate[]> {
    const eligible = result.trace?.eligible;
    if (!eligible) return [];
    // The reference is not served: its model (if any) gets all the time it needs, and no shadow runs.
    const stages = { ...pipeline.stages, EarlyRanker: { ...pipeline.stages.EarlyRanker, keep: Math.max(1, n), timeout_ms: 600_000, shadow_model: null } };
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
    if (n <= 0) return [];
    // The top N of the union is the top N of each chunk's top N.
    let best: Candidate[] = [];
    if (stages.EarlyRanker.model.kind === 'linear') {
      // The linear ranker answers synchronously (no shadow here).
      forEligibleChunks(eligible, (chunk) => {
        best = this.ranker.run(ctx, best.concat(this.filters.run(ctx, chunk))) as Candidate[];
      });
      return best;
    }
    // A model answers asynchronously: the chunks are ranked one after the other.
    const chunks: Candidate[][] = [];
    forEligibleChunks(eligible, (chunk) => chunks.push(this.filters.run(ctx, chunk)));
    for (const chunk of chunks) best = await this.ranker.run(ctx, best.concat(chunk));
    return best;
  }

  /** Evaluates one validated request. */
  async evaluate(query: RetrieveQuery): Promise<RequestEval> {
    return await this.score(await this.run(query));
  }

  /** Runs `query` through the funnel, traced, timing it (wall and the process's CPU over every thread). */
  async run(query: RetrieveQuery): Promise<FunnelRun> {
    const pipeline = this.config.pipelines[query.pipeline];
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const result = await this.funnel.run(query, pipeline, Date.now() + 600_000, new AbortController().signal, NO_OBSERVER, true);
    const latencyMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const cpu = process.cpuUsage(cpu0);
    return { query, result, latencyMs, cpuMs: (cpu.user + cpu.system) / 1000 };
  }

  /** Compares a run with the exhaustive reference: recall, eCPM share, and where each lost ad was lost. */
  async score(run: FunnelRun): Promise<RequestEval> {
    const { query, result, latencyMs, cpuMs } = run;
    const pipeline = this.config.pipelines[query.pipeline];
    const n = query.numResults;
    const ref = await this.reference(query, pipeline, result, n);
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

/** A full collection when the process exposes gc (node --expose-gc; funnel eval turns it on), else nothing. */
function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) gc();
}

/** One config's difference from another over the same requests and pipeline. */
export interface ConfigDiff {
  /** Labels of the baseline and the compared config. */
  a: string;
  b: string;
  pipeline: string;
  d: EvalDiff;
}

/** Options of {@link evaluateAll}. */
export interface EvaluateAllOptions {
  /** Pipelines every request runs through (undefined: as each request routes). */
  pipelines?: readonly (string | undefined)[];
  /** N for every request (default: the request's num_results, else the config's default). */
  numResults?: number;
  /** Requests run once through every config, unrecorded, before measuring (default 20). */
  warmup?: number;
  onProgress?(done: number, total: number): void;
  /** A request that Retrieve would refuse (0-based index, details, how many so far). */
  onInvalid?(index: number, details: string, count: number): void;
}

/**
 * Evaluates every request under every config (and pipeline) over one serving state: an
 * unrecorded warm-up first (the first calls pay for JIT compilation and for faulting in the
 * pages of the memory-mapped index), then request by request with the configs taking turns in
 * alternating order, so that warm-up, caches and a noisy machine weigh on each alike. Returns
 * one summary per (config, pipeline), and with two configs the second's diff from the first.
 */
export async function evaluateAll(
  state: ServingState,
  configs: readonly { label: string; config: Config }[],
  requests: readonly DecodedRetrieve[],
  options: EvaluateAllOptions = {},
): Promise<{ summaries: EvalSummary[]; diffs: ConfigDiff[]; results: Map<string, RequestEval[]>; invalid: number }> {
  const evaluators = configs.map((c) => ({ ...c, ev: new FunnelEvaluator(state, c.config) }));
  const pipelines = options.pipelines && options.pipelines.length > 0 ? options.pipelines : [undefined];
  const total = requests.length * evaluators.length * pipelines.length;
  const queryOf = (ev: FunnelEvaluator, i: number, p: string | undefined): RetrieveQuery | null => {
    try {
      return ev.query(requests[i], p, options.numResults);
    } catch (e) {
      if (!(e instanceof RpcError)) throw e;
      return null;
    }
  };
  for (let i = 0; i < Math.min(options.warmup ?? 20, requests.length); i++) {
    for (const { ev } of evaluators) {
      for (const p of pipelines) {
        const q = queryOf(ev, i, p);
        if (q) await ev.evaluate(q);
      }
    }
  }
  const results = new Map<string, RequestEval[]>();
  const invalid = new Set<number>();
  let done = 0;
  // In batches: the funnel runs (timed) first, then the references, whose garbage (a candidate
  // per eligible ad) is collected between the two (when gc is exposed) rather than during a
  // timed run.
  const BATCH = 16;
  for (const p of pipelines) {
    for (let from = 0; from < requests.length; from += BATCH) {
      const runs: { label: string; ev: FunnelEvaluator; run: FunnelRun }[] = [];
      for (let i = from; i < Math.min(requests.length, from + BATCH); i++) {
        const turn = i % 2 === 0 ? evaluators : [...evaluators].reverse();
        for (const { label, ev } of turn) {
          let q: RetrieveQuery;
          try {
            q = ev.query(requests[i], p, options.numResults);
          } catch (e) {
            if (!(e instanceof RpcError)) throw e;
            if (!invalid.has(i)) {
              invalid.add(i);
              options.onInvalid?.(i, e.details, invalid.size);
            }
            continue;
          }
          runs.push({ label, ev, run: await ev.run(q) });
        }
      }
      for (const { label, ev, run } of runs) {
        const e = await ev.score(run);
        // Routing may send requests to several pipelines: one summary each.
        const key = `${label}\u0000${e.pipeline}`;
        let list = results.get(key);
        if (!list) results.set(key, (list = []));
        list.push(e);
        options.onProgress?.(++done, total);
      }
      collectGarbage();
    }
  }
  const summaries: EvalSummary[] = [];
  for (const [key, evals] of results) {
    const [label, pipeline] = key.split('\u0000');
    summaries.push(summarize(label, pipeline, evals));
  }
  const diffs: ConfigDiff[] = [];
  if (evaluators.length === 2) {
    const [a, b] = evaluators;
    for (const s of summaries.filter((x) => x.config === a.label)) {
      const ra = results.get(`${a.label}\u0000${s.pipeline}`) ?? [];
      const rb = results.get(`${b.label}\u0000${s.pipeline}`);
      if (!rb || rb.length !== ra.length) continue;
      diffs.push({ a: a.label, b: b.label, pipeline: s.pipeline, d: diff(ra, rb, (id) => state.ads.advertiserId(id)) });
    }
  }
  return { summaries, diffs, results, invalid: invalid.size };
}
