/**
 * `funnel eval --root ADDR --data DIR --requests PATH`: recall of a sharded cluster, measured
 * through its root. Each request runs through the root over gRPC (the answer is after the
 * merge and the global caps), and through the exhaustive reference in-process over DIR, a full
 * copy of the same catalog: Filters and the EarlyRanker over every eligible ad, then the
 * pipeline's advertiser and category caps in score order, as the root applies them. So
 * `recall_at_n` here is the share of that capped reference top N the root returned; MMR, which
 * runs per shard, can move ads below N and counts as a loss. With `--admin-token-file`, every
 * lost ad is explained through the root's Explain (loss by stage and reason, `Root` for the
 * merge); without it, losses are counted as `unexplained`.
 *
 * The reference reads DIR at the moment of each request: DIR and the cluster must hold the same
 * data (the same catalog, no writes since) for the figures to mean anything.
 */
import * as grpc from '@grpc/grpc-js';
import type { Config } from '../config/schema';
import type { DecodedRetrieve } from '../grpc/codec';
import { packageDefinition } from '../grpc/proto';
import { RpcError } from '../grpc/validate';
import type { ServingState } from '../serving/state';
import type { Candidate } from '../pipeline/types';
import { FunnelEvaluator, summarize, type EvalSummary, type LossTable, type RequestEval } from './funnel-eval';

/** The proto message of a decoded request (for a gRPC client). */
export function requestMessage(r: DecodedRetrieve, numResults: number, pipeline: string): Record<string, unknown> {
  return {
    request_id: r.request_id,
    user_id: r.user_id,
    attributes: r.attributes,
    user_embedding: Array.from(r.user_embedding),
    num_results: numResults,
    exclude_ad_ids: r.exclude_ad_ids,
    exclude_advertiser_ids: r.exclude_advertiser_ids,
    blocked_categories: r.blocked_categories,
    pipeline,
  };
}

/** The reference's best `n` after the Diversifier's advertiser and category caps, in score order (as the root merges). */
export function capReference(ref: readonly Candidate[], n: number, maxPerAdvertiser: number, maxPerCategory: number, advertiserOf: (id: number) => string, categoryOf: (id: number) => string): Candidate[] {
  const perAdv = new Map<string, number>();
  const perCat = new Map<string, number>();
  const out: Candidate[] = [];
  const sorted = [...ref].sort((a, b) => b.score - a.score);
  for (const c of sorted) {
    if (out.length >= n) break;
    const a = advertiserOf(c.id);
    const k = categoryOf(c.id);
    if ((perAdv.get(a) ?? 0) >= maxPerAdvertiser || (perCat.get(k) ?? 0) >= maxPerCategory) continue;
    perAdv.set(a, (perAdv.get(a) ?? 0) + 1);
    perCat.set(k, (perCat.get(k) ?? 0) + 1);
    out.push(c);
  }
  return out;
}

type Callback = (err: grpc.ServiceError | null, value?: unknown) => void;
type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => void;

export interface RootEvalOptions {
  addr: string;
  /** Bearer token for Explain (loss accounting); none: losses are `unexplained`. */
  token?: string;
  pipelines?: readonly (string | undefined)[];
  numResults?: number;
  /** Deadline of each root call, ms (default 10 s). */
  timeoutMs?: number;
  onProgress?(done: number, total: number): void;
  onInvalid?(index: number, details: string, count: number): void;
}

/** Evaluates every request through the root against the capped reference over `state`. */
export async function evaluateThroughRoot(
  state: ServingState,
  config: Config,
  requests: readonly DecodedRetrieve[],
  options: RootEvalOptions,
): Promise<{ summaries: EvalSummary[]; invalid: number; failed: number }> {
  const def = grpc.loadPackageDefinition(packageDefinition()) as unknown as { funnel: { v1: { Retrieval: grpc.ServiceClientConstructor } } };
  const client = new def.funnel.v1.Retrieval(options.addr, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 << 20 });
  const call = (method: 'Retrieve' | 'Explain', req: unknown, md = new grpc.Metadata()) =>
    new Promise<unknown>((resolve, reject) =>
      ((client as unknown as Record<string, UnaryFn>)[method]).call(client, req, md, { deadline: Date.now() + (options.timeoutMs ?? 10_000) }, (err, v) => (err ? reject(err) : resolve(v))),
    );
  const ev = new FunnelEvaluator(state, config);
  const pipelines = options.pipelines && options.pipelines.length > 0 ? options.pipelines : [undefined];
  const results = new Map<string, RequestEval[]>();
  let invalid = 0;
  let failed = 0;
  let done = 0;
  const total = requests.length * pipelines.length;
  try {
    for (const p of pipelines) {
      for (let i = 0; i < requests.length; i++) {
        let q;
        try {
          q = ev.query(requests[i], p, options.numResults);
        } catch (e) {
          if (!(e instanceof RpcError)) throw e;
          options.onInvalid?.(i, e.details, ++invalid);
          continue;
        }
        const pipeline = config.pipelines[q.pipeline];
        const n = q.numResults;
        const t0 = process.hrtime.bigint();
        let answer: { candidates?: { ad_id: string; score?: number }[] };
        try {
          answer = (await call('Retrieve', requestMessage(requests[i], n, q.pipeline))) as typeof answer;
        } catch (e) {
          failed++;
          options.onInvalid?.(i, `through the root: ${(e as grpc.ServiceError).details ?? (e as Error).message}`, invalid + failed);
          continue;
        }
        const latencyMs = Number(process.hrtime.bigint() - t0) / 1e6;
        // The reference at this moment, over a full copy of the catalog; deep enough for the caps to still fill N.
        const run = await ev.run(q);
        const div = pipeline.stages.Diversifier;
        const deep = await ev.reference(q, pipeline, run.result, Math.max(n, n * 4));
        const ref = capReference(deep, n, div.max_per_advertiser, div.max_per_category, (id) => state.ads.advertiserId(id), (id) => state.ads.category(id));
        const got = (answer.candidates ?? []).slice(0, n);
        const gotIds = new Set(got.map((c) => c.ad_id));
        let held = 0;
        let heldScore = 0;
        let totalScore = 0;
        const lost: string[] = [];
        for (const c of ref) {
          const adId = state.ads.adId(c.id);
          totalScore += c.score;
          if (gotIds.has(adId)) {
            held++;
            heldScore += c.score;
          } else lost.push(adId);
        }
        const loss: LossTable = {};
        const add = (stage: string, reason: string, k = 1) => {
          const s = (loss[stage] ??= {});
          s[reason] = (s[reason] ?? 0) + k;
        };
        if (lost.length > 0 && options.token) {
          const md = new grpc.Metadata();
          md.set('authorization', `Bearer ${options.token}`);
          try {
            const ex = (await call('Explain', { request: requestMessage(requests[i], n, q.pipeline), ad_ids: lost.slice(0, config.limits.max_explain_ads) }, md)) as {
              ads?: { outcome?: string; stage?: string; reason?: string }[];
            };
            for (const a of ex.ads ?? []) {
              if (a.outcome === 'returned') add('Root', 'returned_on_explain');
              else add(a.stage || a.outcome || 'unknown', a.reason || a.outcome || 'unknown');
            }
            if (lost.length > config.limits.max_explain_ads) add('unexplained', 'over_max_explain_ads', lost.length - config.limits.max_explain_ads);
          } catch (e) {
            add('unexplained', `explain_${grpc.status[(e as grpc.ServiceError).code] ?? 'error'}`, lost.length);
          }
        } else if (lost.length > 0) add('unexplained', 'no_admin_token', lost.length);
        const e: RequestEval = {
          pipeline: q.pipeline,
          n,
          recall: ref.length === 0 ? 1 : held / ref.length,
          ecpmShare: totalScore > 0 ? heldScore / totalScore : ref.length === 0 ? 1 : held / ref.length,
          latencyMs,
          // The root's and shards' CPU is not seen from here.
          cpuMs: NaN,
          loss,
          top: got.map((c) => state.ads.idOf(c.ad_id)),
          topScores: got.map((c) => c.score ?? 0),
          eligible: run.result.trace?.eligible?.count ?? 0,
        };
        let list = results.get(q.pipeline);
        if (!list) results.set(q.pipeline, (list = []));
        list.push(e);
        options.onProgress?.(++done, total);
      }
    }
  } finally {
    client.close();
  }
  const summaries = [...results].map(([pipeline, evals]) => summarize(`root ${options.addr}`, pipeline, evals));
  return { summaries, invalid, failed };
}
