/**
 * Explanations of a traced funnel run: for an ad, where it left the funnel and why (CONTRACT
 * section 2, Explain). Read from what each stage handed on (FunnelTrace), with the stage's own
 * rule re-applied to name the reason, so the answer describes the run that produced the response.
 */
import type { PipelineConfig } from '../config/schema';
import type { Conjunction } from '../native/index';
import type { ServingState } from '../serving/state';
import { priorOf } from '../serving/prior-order';
import { predicateHolds } from '../store/targeting-eval';
import { applyCaps } from '../stages/diversification/diversifier';
import { dayFractionAt, scheduleAt } from '../stages/filtering/filters';
import { ecpm, features, pctr, prepareQuery, similarity } from '../stages/ranking/early-ranker';
import { fallbackScore, type FunnelResult } from './funnel';
import type { Candidate, RetrieveQuery } from './types';

/** Where one ad left the funnel (the fields of the proto's AdExplanation). */
export interface AdExplanation {
  ad_id: string;
  outcome: 'returned' | 'dropped' | 'not_eligible' | 'unknown_ad';
  stage: string;
  reason: string;
  detail: string;
  /** 1-based place in the response; 0 when not returned. */
  position: number;
  /** The EarlyRanker's score when it ranked the ad; 0 otherwise. */
  score: number;
}

/** Eligibility reasons, in the order the first that applies is named. */
export const NOT_ELIGIBLE_REASONS = ['paused', 'outside_flight', 'over_budget', 'targeting', 'excluded_ad', 'excluded_advertiser', 'blocked_category'] as const;

const fmt = (x: number): string => (Number.isInteger(x) ? String(x) : x.toPrecision(4));

function has(bits: Uint32Array, id: number): boolean {
  return id >>> 5 < bits.length && ((bits[id >>> 5] >>> (id & 31)) & 1) === 1;
}

/** The failing predicate of each conjunction of `targeting` for `attrs`, as `#1 country any_of [US] (request: [DE])`; empty when one holds. */
export function targetingDetail(targeting: readonly Conjunction[] | null | undefined, attrs: Readonly<Record<string, readonly string[]>>): string {
  if (!targeting) return '';
  const parts: string[] = [];
  for (let i = 0; i < targeting.length; i++) {
    const conj = targeting[i];
    let fails = false;
    for (const name of Object.keys(conj)) {
      const values = Object.prototype.hasOwnProperty.call(attrs, name) ? attrs[name] : undefined;
      const p = conj[name];
      if (predicateHolds(p, values)) continue;
      const req = values === undefined ? 'absent' : `[${values.join(',')}]`;
      const failing = p.any_of !== undefined && !predicateHolds({ any_of: p.any_of }, values) ? `any_of [${p.any_of.join(',')}]` : `none_of [${(p.none_of ?? []).join(',')}]`;
      parts.push(`#${i + 1} ${name} ${failing} (request: ${req})`);
      fails = true;
      break;
    }
    // Targeting is a disjunction: one conjunction that holds makes the ad match.
    if (!fails) return '';
  }
  return parts.join('; ');
}

/** Why `id` is outside the request's eligible set: the first reason that applies, in NOT_ELIGIBLE_REASONS order, with its detail. */
export function ineligibility(state: ServingState, query: RetrieveQuery, id: number, nowMs: number): { reason: string; detail: string } | null {
  const ads = state.ads;
  if (!ads.isActive(id)) return { reason: 'paused', detail: 'status is paused' };
  if (!ads.inFlight(id, nowMs)) {
    const start = ads.startMs(id);
    const end = ads.endMs(id);
    const w = (ms: number) => (Number.isFinite(ms) ? new Date(ms).toISOString() : 'open');
    return { reason: 'outside_flight', detail: `flight [${w(start)}, ${w(end)}) does not hold ${new Date(nowMs).toISOString()}` };
  }
  if (!ads.underBudget(id, nowMs)) return { reason: 'over_budget', detail: `spent ${ads.spendToday(id, nowMs)} of a daily budget of ${ads.budgetMicros(id)} micros` };
  const rec = state.store.getAdById(id);
  const failing = targetingDetail(rec?.targeting, query.attributes);
  if (failing !== '') return { reason: 'targeting', detail: failing };
  if (query.excludeAdIds.has(ads.adId(id))) return { reason: 'excluded_ad', detail: 'in exclude_ad_ids' };
  if (query.excludeAdvertiserIds.has(ads.advertiserId(id))) return { reason: 'excluded_advertiser', detail: `advertiser ${ads.advertiserId(id)} is in exclude_advertiser_ids` };
  if (query.blockedCategories.has(ads.category(id))) return { reason: 'blocked_category', detail: `category ${ads.category(id)} is in blocked_categories` };
  return null;
}

/** Why no source returned `id`: each source's cut against the ad (what would have kept it). */
function notSourcedDetail(state: ServingState, pipeline: PipelineConfig, query: RetrieveQuery, result: FunnelResult, id: number): string {
  const trace = result.trace!;
  const stages = pipeline.stages;
  const parts: string[] = [];
  const skipped = (name: string) => {
    const r = result.reports.find((x) => x.name === name);
    return r && r.status !== 'ok' ? `${name}: ${r.status}${r.detail.reason ? ` (${r.detail.reason})` : ''}` : null;
  };
  const ann = trace.sourced.Ann;
  if (ann) {
    const q = prepareQuery(query.embedding, state.vectors);
    const v = state.vectors?.get(id);
    const sim = q && v ? similarity(q, v) : NaN;
    const last = ann.length > 0 ? ann[ann.length - 1].annScore : NaN;
    parts.push(`Ann: similarity ${fmt(sim)} vs ${fmt(last)} of its last pick (k ${stages.Ann.k}, ${ann.length} returned)`);
  } else parts.push(skipped('Ann') ?? 'Ann: no answer');
  const tgt = trace.sourced.Targeting;
  if (tgt && stages.Targeting.order === 'ranker') {
    // The walk's score: the ranker's, without source indicators.
    const q = prepareQuery(query.embedding, state.vectors);
    const w = stages.EarlyRanker.weights;
    const walkScore = (x: number) =>
      ecpm(state.ads.bidMicros(x), pctr(w, features(state.ads, state.popularity, state.vectors, q, result.nowMs, { id: x, sources: 0, annScore: NaN, sourceRank: 0, score: NaN })));
    const report = result.reports.find((x) => x.name === 'Targeting');
    const last = tgt.length > 0 ? walkScore(tgt[tgt.length - 1].id) : NaN;
    parts.push(
      `Targeting: score ${fmt(walkScore(id))} vs ${fmt(last)} of its last pick (k ${stages.Targeting.k}, ${tgt.length} returned; walk stop=${report?.detail.stop ?? '?'} after ${report?.detail.steps ?? '?'} steps)`,
    );
  } else if (tgt) {
    const prior = stages.Targeting.prior;
    const mine = priorOf(state.ads, id, prior);
    const last = tgt.length > 0 ? priorOf(state.ads, tgt[tgt.length - 1].id, prior) : NaN;
    parts.push(`Targeting: prior ${fmt(mine)} vs ${fmt(last)} of its last pick (k ${stages.Targeting.k}, ${tgt.length} returned)`);
  } else parts.push(skipped('Targeting') ?? 'Targeting: no answer');
  const pop = trace.sourced.Popularity;
  if (pop) {
    const rate = state.popularity.rate(id, result.nowMs);
    parts.push(`Popularity: not among its ${pop.length} most engaged eligible ads (k ${stages.Popularity.k}; click rate ${fmt(rate)})`);
  } else parts.push(skipped('Popularity') ?? 'Popularity: no answer');
  return parts.join('; ');
}

/**
 * Explains each internal id for a traced run. `returnedIds` is the response's answer in order
 * (after the server's last re-check); `ids` holds -1 for an ad_id the catalog does not know.
 */
export function explainIds(
  state: ServingState,
  pipeline: PipelineConfig,
  query: RetrieveQuery,
  result: FunnelResult,
  returnedIds: readonly number[],
  ids: readonly { adId: string; id: number }[],
): AdExplanation[] {
  const trace = result.trace;
  if (!trace) throw new Error('explainIds needs a traced run');
  const nowMs = result.nowMs;
  const position = new Map<number, number>();
  returnedIds.forEach((id, i) => position.set(id, i + 1));
  const inList = (list: readonly Candidate[]) => new Map(list.map((c, i) => [c.id, i] as const));
  const merged = inList(trace.merged);
  const filtered = inList(trace.filtered);
  const ranked = inList(result.ranked);
  const byScore = trace.filtered.filter((c) => !Number.isNaN(c.score)).sort((a, b) => b.score - a.score || a.id - b.id);
  const scoreRank = new Map(byScore.map((c, i) => [c.id, i] as const));
  const keep = pipeline.stages.EarlyRanker.keep;
  const div = pipeline.stages.Diversifier;
  const returnedScores = returnedIds.map((id) => result.candidates.find((c) => c.id === id)?.score ?? NaN);
  const lastReturned = returnedScores.length > 0 ? returnedScores[returnedScores.length - 1] : NaN;

  return ids.map(({ adId, id }) => {
    const base = { ad_id: adId, stage: '', reason: '', detail: '', position: 0, score: 0 };
    if (id < 0 || !state.ads.has(id)) return { ...base, outcome: 'unknown_ad' };
    const at = position.get(id);
    const scored = trace.filtered[filtered.get(id) ?? -1];
    const score = scored && !Number.isNaN(scored.score) ? scored.score : 0;
    if (at !== undefined) return { ...base, outcome: 'returned', position: at, score: result.candidates.find((c) => c.id === id)?.score ?? score };
    const eligible = trace.eligible;
    if (!eligible) return { ...base, outcome: 'not_eligible', stage: 'Eligibility', reason: 'targeting', detail: 'the Eligibility stage failed: no ad was eligible' };
    if (!has(eligible.bits, id)) {
      const why = ineligibility(state, query, id, nowMs) ?? { reason: 'targeting', detail: 'the ad changed while the request ran' };
      return { ...base, outcome: 'not_eligible', stage: 'Eligibility', ...why };
    }
    const dropped = (stage: string, reason: string, detail: string) => ({ ...base, outcome: 'dropped' as const, stage, reason, detail, score });
    if (!merged.has(id)) return dropped('Merge', 'not_sourced', notSourcedDetail(state, pipeline, query, result, id));
    if (!filtered.has(id)) {
      const ads = state.ads;
      const budget = ads.budgetMicros(id);
      const pacing = pipeline.stages.Filters.pacing;
      if (ads.servable(id, nowMs) && !ads.changedAfter(id, eligible.epoch) && pacing.enabled && budget > 0 && budget !== Infinity) {
        const share = ads.spendToday(id, nowMs) / budget;
        const schedule = scheduleAt(pacing.curve, dayFractionAt(nowMs));
        if (share > schedule + pacing.tolerance) {
          return dropped('Filters', 'paced', `spent ${fmt(share * 100)}% of its daily budget; the schedule allows ${fmt(schedule * 100)}% + ${fmt(pacing.tolerance * 100)}% now`);
        }
      }
      return dropped('Filters', 'ineligible', 'no longer eligible when Filters re-checked it (changed while the request ran)');
    }
    if (!ranked.has(id)) {
      const last = result.ranked.length > 0 ? result.ranked[result.ranked.length - 1].score : NaN;
      const rankerReport = result.reports.find((x) => x.name === 'EarlyRanker');
      if (rankerReport && rankerReport.status !== 'ok') {
        // The funnel kept the best `keep` by bid x ctr_prior instead (its fallback order).
        const fallback = (x: number) => fallbackScore(state.ads, x);
        const mine = fallback(id);
        const above = trace.filtered.filter((c) => fallback(c.id) > mine || (fallback(c.id) === mine && c.id < id)).length;
        return {
          ...dropped('EarlyRanker', 'below_keep', `the EarlyRanker ${rankerReport.status === 'timeout' ? 'timed out' : 'failed'}; by bid x ctr_prior (${fmt(mine)}) it ranks ${above + 1} of ${trace.filtered.length}; keep ${keep}, last kept ${fmt(last)}`),
          score: 0,
        };
      }
      const r = scoreRank.get(id);
      return dropped('EarlyRanker', 'below_keep', `score ${fmt(score)} ranks ${r === undefined ? '?' : r + 1} of ${trace.filtered.length}; keep ${keep}, last kept score ${fmt(last)}`);
    }
    // Kept by the ranker, not answered: the Diversifier's caps or its cut.
    const rank = ranked.get(id)!;
    const divReport = result.reports.find((r) => r.name === 'Diversifier');
    if (divReport && divReport.status !== 'ok') {
      // Its fallback answers the top num_results of the ranked list: no caps were applied.
      return dropped(
        'Diversifier',
        'below_cutoff',
        `ranked ${rank + 1} of ${result.ranked.length} by score ${fmt(score)}; the Diversifier ${divReport.status === 'timeout' ? 'timed out' : divReport.status === 'skipped' ? 'was skipped' : 'failed'}, so the top ${query.numResults} of the ranked list were returned`,
      );
    }
    const ads = state.ads;
    const before = applyCaps(result.ranked.slice(0, rank), ads, div.max_per_advertiser, div.max_per_category);
    const sameAdvertiser = before.filter((c) => ads.advertiserKey(c.id) === ads.advertiserKey(id)).length;
    const sameCategory = before.filter((c) => ads.categoryKey(c.id) === ads.categoryKey(id)).length;
    if (sameAdvertiser >= div.max_per_advertiser || sameCategory >= div.max_per_category) {
      if (sameAdvertiser >= div.max_per_advertiser) {
        return dropped('Diversifier', 'advertiser_cap', `advertiser ${ads.advertiserId(id)} already has ${div.max_per_advertiser} better-ranked ads (max_per_advertiser)`);
      }
      return dropped('Diversifier', 'category_cap', `category ${ads.category(id)} already has ${div.max_per_category} better-ranked ads (max_per_category)`);
    }
    return dropped(
      'Diversifier',
      'below_cutoff',
      `ranked ${rank + 1} of ${result.ranked.length} by score ${fmt(score)}; ${returnedIds.length} returned (num_results ${query.numResults}), the last with score ${fmt(lastReturned)}`,
    );
  });
}
