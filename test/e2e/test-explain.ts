/**
 * Explain end to end (CONTRACT section 2): a real server and a real gRPC client. Credentials and
 * validation; every not_eligible reason, unknown_ad, returned, and each stage's drop reason on a
 * hand-made catalog; per-stage `dropped` counts in debug responses and on /metrics; and, as a
 * property over random catalogs, configs and requests, that Explain's response is Retrieve's and
 * that its outcomes agree with that response and with an independent eligibility oracle.
 */
import { strict as assert } from 'node:assert';
import * as http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { row } from '../fixtures/catalog';
import { rng } from '../fixtures/vectors';
import { whyIneligible, type OracleRow, type ReportedSpend } from '../fixtures/eligibility-oracle';
import {
  adminMetadata,
  attrs,
  freePort,
  isoFromNow,
  rpcError,
  startE2eServer,
  type AdExplanationMsg,
  type E2eServer,
  type ExplainResponseMsg,
  type RetrieveRequestMsg,
  type StageStatsMsg,
} from '../fixtures/e2e-server';

const DAY = 86_400_000;
const DIM = 8;
const CATEGORIES = ['gaming', 'finance', 'travel'];
const POOL = 30;
const MAX_EXPLAIN = 40;
const CALL = { deadlineMs: 30_000 };

// Generous stage timeouts and no lag shedding: a slow CI machine must not turn a stage timeout
// into a different (degraded) answer than the one a test expects.
const RELAXED_STAGES = Object.fromEntries(['Eligibility', 'Ann', 'Targeting', 'Popularity', 'Filters', 'EarlyRanker', 'Diversifier'].map((s) => [s, { timeout_ms: 10_000 }]));
const RELAXED_LIMITS = { shed_event_loop_lag_ms: 0, default_deadline_ms: 30_000 };
const NO_CAPS = { max_per_advertiser: 1000, max_per_category: 1000 };

/** 30 untargeted ads `pool-N`: advertiser adv-(N % 5), category by N % 3, bid rising with N. */
function poolRows(): Record<string, unknown>[] {
  return Array.from({ length: POOL }, (_, n) =>
    row(n, DIM, { ad_id: `pool-${n}`, advertiser_id: `adv-${n % 5}`, category: CATEGORIES[n % 3], bid_micros: 100_000 + n * 10_000 }),
  );
}

/** Ads that are ineligible for every request without their probe attribute (one per reason), plus the `solo` and `pace` ads. */
function specialRows(): Record<string, unknown>[] {
  const r = (n: number, extra: Record<string, unknown>) => row(100 + n, DIM, { advertiser_id: `sp-${n}`, ...extra });
  return [
    r(0, { ad_id: 'paused-1', status: 'paused', targeting: [{ probe: { any_of: ['never'] } }] }),
    r(1, { ad_id: 'future-1', start_time: isoFromNow(DAY), end_time: isoFromNow(2 * DAY) }),
    r(2, { ad_id: 'ended-1', start_time: isoFromNow(-2 * DAY), end_time: isoFromNow(-DAY) }),
    r(3, { ad_id: 'budget-1', daily_budget_micros: 1000 }),
    r(4, {
      ad_id: 'tgt-1',
      targeting: [{ country: { any_of: ['US', 'CA'] } }, { platform: { any_of: ['ios'] }, community: { none_of: ['r/nsfw'] } }],
    }),
    r(5, { ad_id: 'pace-1', daily_budget_micros: 1_000_000, bid_micros: 9_000_000, targeting: [{ probe: { any_of: ['pace'] } }] }),
    ...Array.from({ length: 4 }, (_, i) =>
      r(10 + i, { ad_id: `solo-${i}`, advertiser_id: 'solo', bid_micros: 5_000_000 - i * 1000, targeting: [{ probe: { any_of: ['solo'] } }] }),
    ),
  ];
}

function embeddingOf(adId: string, rows: ReadonlyArray<Record<string, unknown>>): number[] {
  return rows.find((r) => r.ad_id === adId)!.embedding as number[];
}

const pool = (from = 0, to = POOL) => Array.from({ length: to - from }, (_, i) => `pool-${from + i}`);

/** The explanation of `adId` in `res`. */
function of(res: ExplainResponseMsg, adId: string): AdExplanationMsg {
  const a = res.ads.find((x) => x.ad_id === adId);
  assert.ok(a, `no explanation for ${adId}`);
  return a;
}

/** Asserts that the asked ads found in the response are `returned` at their place with their score, and returns the others. */
function checkReturned(res: ExplainResponseMsg, asked: readonly string[]): AdExplanationMsg[] {
  assert.deepEqual(
    res.ads.map((a) => a.ad_id),
    [...asked],
    'one explanation per asked ad, in the order asked',
  );
  const others: AdExplanationMsg[] = [];
  for (const a of res.ads) {
    const at = res.response.candidates.findIndex((c) => c.ad_id === a.ad_id);
    if (at >= 0) {
      assert.equal(a.outcome, 'returned', `${a.ad_id} is in the response: ${JSON.stringify(a)}`);
      assert.equal(a.position, at + 1, a.ad_id);
      assert.equal(a.score, res.response.candidates[at].score, a.ad_id);
    } else {
      assert.notEqual(a.outcome, 'returned', `${a.ad_id} is not in the response: ${JSON.stringify(a)}`);
      assert.ok(!a.position, `${a.ad_id} has a position but is not returned`);
      others.push(a);
    }
  }
  return others;
}

function stage(res: { stages: StageStatsMsg[] }, name: string): StageStatsMsg {
  const s = res.stages.find((x) => x.name === name);
  assert.ok(s, `no stage ${name} in ${res.stages.map((x) => x.name).join(',')}`);
  return s;
}


/** The body of GET http://127.0.0.1:`port`/metrics. */
function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`/metrics answered ${res.statusCode}`))));
      })
      .on('error', reject);
  });
}

/** The value of the sample `name{labels}` (0 when absent: a counter never incremented). */
function sample(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return 0;
}

describe('e2e: Explain', function () {
  describe('on a hand-made catalog', () => {
    const rows = [...poolRows(), ...specialRows()];
    let s: E2eServer;
    let metricsPort: number;
    const explain = (request: RetrieveRequestMsg, ad_ids: string[]) => s.retrieval.explain({ request, ad_ids }, { ...CALL, metadata: adminMetadata() });

    before(async () => {
      metricsPort = await freePort();
      s = await startE2eServer({
        rows,
        metricsPort,
        config: {
          limits: { ...RELAXED_LIMITS, max_num_results: 50, max_explain_ads: MAX_EXPLAIN },
          pipelines: {
            default: { stages: RELAXED_STAGES },
            uncapped: { inherits: 'default', stages: { Diversifier: NO_CAPS } },
            advertiser_capped: { inherits: 'default', stages: { Diversifier: { max_per_advertiser: 1, max_per_category: 1000 } } },
            advertiser_capped_broken: { inherits: 'advertiser_capped', stages: { Diversifier: { fault: { error_rate: 1 } } } },
            category_capped: { inherits: 'default', stages: { Diversifier: { max_per_advertiser: 1000, max_per_category: 2 } } },
            keep3: { inherits: 'uncapped', stages: { EarlyRanker: { keep: 3 } } },
            keep3_broken: { inherits: 'keep3', stages: { EarlyRanker: { fault: { error_rate: 1 } } } },
            narrow: { inherits: 'uncapped', stages: { Ann: { k: 1 }, Targeting: { k: 1 }, Popularity: { k: 1 } } },
            // A flat schedule: the same at every time of day, so the test does not depend on the clock.
            paced: { inherits: 'uncapped', stages: { Filters: { pacing: { enabled: true, curve: [[0, 0], [1, 0]], tolerance: 0 } } } },
          },
        },
      });
      await s.admin.reportSpend({
        entries: [
          { ad_id: 'budget-1', spend_micros: 5000 },
          { ad_id: 'pace-1', spend_micros: 990_000 },
        ],
      });
    });
    after(async () => {
      await s?.stop();
    });

    describe('credentials and validation', () => {
      it('when Explain is called without credentials, then it answers UNAUTHENTICATED', async () => {
        const err = await rpcError(s.retrieval.explain({ request: {}, ad_ids: ['pool-1'] }, CALL));
        assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.message);
      });

      it('when Explain is called with a wrong bearer token, then it answers UNAUTHENTICATED', async () => {
        const err = await rpcError(s.retrieval.explain({ request: {}, ad_ids: ['pool-1'] }, { ...CALL, metadata: adminMetadata('not-the-token-0123456789') }));
        assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.message);
      });

      it('when a bad request comes without credentials, then it answers UNAUTHENTICATED, not the validation error', async () => {
        const err = await rpcError(s.retrieval.explain({ request: { num_results: 1000 }, ad_ids: [] }, CALL));
        assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.message);
      });

      const invalidCases: { name: string; req: () => { request?: RetrieveRequestMsg; ad_ids?: string[] }; field: string }[] = [
        { name: 'ad_ids is empty', req: () => ({ request: {}, ad_ids: [] }), field: 'ad_ids' },
        { name: 'an ad id holds a space', req: () => ({ request: {}, ad_ids: ['pool-1', 'pool 2'] }), field: 'ad_ids[1]' },
        { name: 'an ad id is empty', req: () => ({ request: {}, ad_ids: [''] }), field: 'ad_ids[0]' },
        { name: 'there are more ad ids than max_explain_ads', req: () => ({ request: {}, ad_ids: Array.from({ length: MAX_EXPLAIN + 1 }, (_, i) => `a-${i}`) }), field: 'ad_ids' },
        { name: 'the request asks num_results above the max', req: () => ({ request: { num_results: 51 }, ad_ids: ['pool-1'] }), field: 'request.num_results' },
        { name: 'the request names an unknown pipeline', req: () => ({ request: { pipeline: 'nope' }, ad_ids: ['pool-1'] }), field: 'request.pipeline' },
        { name: 'the request embedding has the wrong length', req: () => ({ request: { user_embedding: [1, 2, 3] }, ad_ids: ['pool-1'] }), field: 'request.user_embedding' },
      ];
      for (const c of invalidCases) {
        it(`when ${c.name}, then Explain answers INVALID_ARGUMENT naming ${c.field}`, async () => {
          const err = await rpcError(s.retrieval.explain(c.req(), { ...CALL, metadata: adminMetadata() }));
          assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.message);
          assert.ok(err.details.includes(c.field), `details ${JSON.stringify(err.details)} do not name ${c.field}`);
        });
      }

      it('when exactly max_explain_ads ids are asked, then every one is explained in the order asked', async () => {
        const asked = [...pool(), ...Array.from({ length: MAX_EXPLAIN - POOL }, (_, i) => `nope-${i}`)].reverse();
        const res = await explain({}, asked);
        checkReturned(res, asked);
      });
    });

    describe('not_eligible and unknown_ad', () => {
      const cases: { why: string; reason: string; adId: string; req: RetrieveRequestMsg; detail: RegExp }[] = [
        { why: 'an ad is paused', reason: 'paused', adId: 'paused-1', req: {}, detail: /paused/ },
        { why: "an ad's flight window is in the future", reason: 'outside_flight', adId: 'future-1', req: {}, detail: /flight/ },
        { why: "an ad's flight window has ended", reason: 'outside_flight', adId: 'ended-1', req: {}, detail: /flight/ },
        { why: 'an ad has spent more than its daily budget (ReportSpend)', reason: 'over_budget', adId: 'budget-1', req: {}, detail: /5000 .*1000/ },
        {
          why: "the request's attributes fail a predicate of each conjunction",
          reason: 'targeting',
          adId: 'tgt-1',
          req: { attributes: attrs({ country: ['DE'], platform: ['ios'], community: ['r/nsfw'] }) },
          detail: /^#1 country any_of \[US,CA\] \(request: \[DE\]\); #2 community none_of \[r\/nsfw\] \(request: \[r\/nsfw\]\)$/,
        },
        { why: 'the request lacks the attributes each conjunction needs', reason: 'targeting', adId: 'tgt-1', req: {}, detail: /^#1 country any_of \[US,CA\] \(request: absent\); #2 platform any_of \[ios\] \(request: absent\)$/ },
        { why: 'the request excludes the ad', reason: 'excluded_ad', adId: 'pool-1', req: { exclude_ad_ids: ['pool-1'] }, detail: /exclude_ad_ids/ },
        { why: "the request excludes the ad's advertiser", reason: 'excluded_advertiser', adId: 'pool-7', req: { exclude_advertiser_ids: ['adv-2'] }, detail: /adv-2/ },
        { why: "the request blocks the ad's category", reason: 'blocked_category', adId: 'pool-5', req: { blocked_categories: ['travel'] }, detail: /travel/ },
      ];
      for (const c of cases) {
        it(`when ${c.why}, then it is not_eligible at Eligibility with reason ${c.reason}${c.reason === 'targeting' ? ' and the failing predicates in detail' : ''}`, async () => {
          const res = await explain({ ...c.req, num_results: 50 }, [c.adId, 'pool-0']);
          const [a] = checkReturned(res, [c.adId, 'pool-0']);
          assert.equal(a.outcome, 'not_eligible', JSON.stringify(a));
          assert.equal(a.stage, 'Eligibility');
          assert.equal(a.reason, c.reason);
          assert.match(a.detail ?? '', c.detail);
          assert.ok(!a.position && !a.score, JSON.stringify(a));
        });
      }

      it('when several reasons apply, then the first in the documented order is named', async () => {
        const res = await explain({ exclude_ad_ids: ['paused-1', 'pool-5'], blocked_categories: ['travel'], exclude_advertiser_ids: ['adv-0'] }, ['paused-1', 'pool-5']);
        assert.equal(of(res, 'paused-1').reason, 'paused');
        assert.equal(of(res, 'pool-5').reason, 'excluded_ad');
      });

      it('when one conjunction of an ad holds and another fails, then its targeting matches and a later reason is named', async () => {
        const res = await explain({ attributes: attrs({ country: ['US'] }), exclude_ad_ids: ['tgt-1'] }, ['tgt-1']);
        const a = of(res, 'tgt-1');
        assert.deepEqual([a.outcome, a.reason, a.detail], ['not_eligible', 'excluded_ad', 'in exclude_ad_ids']);
      });

      it('when an ad id is not in the catalog, then it is unknown_ad with no stage, reason or position', async () => {
        const res = await explain({}, ['nope-1', 'pool-0']);
        const a = of(res, 'nope-1');
        assert.equal(a.outcome, 'unknown_ad');
        assert.ok(!a.stage && !a.reason && !a.position && !a.score, JSON.stringify(a));
      });
    });

    describe('returned and dropped', () => {
      it('when an ad is returned, then its outcome is returned with the position and score the response gives it', async () => {
        const req = { user_embedding: embeddingOf('pool-3', rows), num_results: 10 };
        const res = await explain(req, pool());
        assert.equal(res.response.candidates.length, 10);
        const others = checkReturned(res, pool());
        assert.equal(others.length, POOL - 10);
        const retrieved = await s.retrieval.retrieve(req, CALL);
        assert.deepEqual(res.response.candidates, retrieved.candidates);
      });

      it('when an advertiser has several ranked ads and max_per_advertiser is 1, then all but one are dropped at Diversifier by advertiser_cap', async () => {
        const solos = ['solo-0', 'solo-1', 'solo-2', 'solo-3'];
        const res = await explain({ pipeline: 'advertiser_capped', attributes: attrs({ probe: ['solo'] }), num_results: 50 }, solos);
        const others = checkReturned(res, solos);
        assert.equal(others.length, 3, JSON.stringify(res.ads));
        for (const a of others) {
          assert.equal(a.outcome, 'dropped');
          assert.equal(a.stage, 'Diversifier');
          assert.equal(a.reason, 'advertiser_cap');
          assert.match(a.detail ?? '', /advertiser solo .*max_per_advertiser/);
          assert.ok((a.score ?? 0) > 0, 'a ranked ad keeps its score');
        }
      });

      it('when the Diversifier fails, then the top num_results of the ranked list are returned and the rest are below_cutoff, not capped', async () => {
        const res = await explain({ pipeline: 'advertiser_capped_broken', num_results: 6 }, pool());
        assert.deepEqual(res.response.degraded_stages, ['Diversifier']);
        assert.equal(res.response.candidates.length, 6);
        const advertisers = new Set(res.response.candidates.map((c) => c.advertiser_id));
        assert.ok(advertisers.size < 6, 'the fallback applies no advertiser cap');
        for (const a of checkReturned(res, pool())) {
          assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'Diversifier', 'below_cutoff'], JSON.stringify(a));
          assert.match(a.detail ?? '', /the Diversifier failed/);
        }
      });

      it('when a category has more ranked ads than max_per_category, then the rest are dropped at Diversifier by category_cap', async () => {
        const res = await explain({ pipeline: 'category_capped', num_results: 50 }, pool());
        assert.equal(res.response.candidates.length, CATEGORIES.length * 2);
        const others = checkReturned(res, pool());
        for (const a of others) assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'Diversifier', 'category_cap'], JSON.stringify(a));
      });

      it('when the ranked list is longer than num_results, then the ads past the cut are dropped at Diversifier by below_cutoff', async () => {
        const res = await explain({ pipeline: 'uncapped', num_results: 3 }, pool());
        assert.equal(res.response.candidates.length, 3);
        const others = checkReturned(res, pool());
        assert.equal(others.length, POOL - 3);
        for (const a of others) {
          assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'Diversifier', 'below_cutoff'], JSON.stringify(a));
          assert.match(a.detail ?? '', /num_results 3/);
        }
      });

      it('when the EarlyRanker keeps 3, then the other scored ads are dropped there by below_keep, none scoring above a kept one', async () => {
        const res = await explain({ pipeline: 'keep3', num_results: 50 }, pool());
        assert.equal(res.response.candidates.length, 3);
        const lowestKept = Math.min(...res.response.candidates.map((c) => c.score ?? 0));
        const others = checkReturned(res, pool());
        assert.equal(others.length, POOL - 3);
        for (const a of others) {
          assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'EarlyRanker', 'below_keep'], JSON.stringify(a));
          assert.match(a.detail ?? '', /keep 3/);
          assert.ok((a.score ?? 0) <= lowestKept, `${a.ad_id} scored ${a.score}, above the lowest kept ${lowestKept}`);
        }
      });

      it('when the EarlyRanker fails and keeps 3 by its fallback order, then the others are below_keep by bid x ctr_prior, with no NaN in the detail', async () => {
        const res = await explain({ pipeline: 'keep3_broken', num_results: 50 }, pool());
        assert.ok(res.response.degraded_stages?.includes('EarlyRanker'));
        assert.equal(res.response.candidates.length, 3);
        const others = checkReturned(res, pool());
        assert.equal(others.length, POOL - 3);
        for (const a of others) {
          assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'EarlyRanker', 'below_keep'], JSON.stringify(a));
          assert.match(a.detail ?? '', /the EarlyRanker failed; by bid x ctr_prior \(\S+\) it ranks \d+ of \d+; keep 3/);
          assert.doesNotMatch(a.detail ?? '', /NaN|\?/);
        }
      });

      it('when every source has k 1 and there is no embedding, then the unsourced eligible ads are dropped at Merge by not_sourced', async () => {
        const res = await explain({ pipeline: 'narrow', num_results: 50 }, pool());
        assert.equal(res.response.candidates.length, 1);
        const others = checkReturned(res, pool());
        assert.equal(others.length, POOL - 1);
        for (const a of others) {
          assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'Merge', 'not_sourced'], JSON.stringify(a));
          assert.match(a.detail ?? '', /Targeting: score .* of its last pick \(k 1, 1 returned; walk stop=\w+ after \d+ steps\)/);
        }
      });

      it('when the embedding is far from an ad and every source has k 1, then that ad is dropped at Merge by not_sourced with its similarity against the last pick', async () => {
        const far = embeddingOf('pool-7', rows).map((x) => -x);
        const res = await explain({ pipeline: 'narrow', user_embedding: far, num_results: 50 }, ['pool-7']);
        const a = of(res, 'pool-7');
        assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'Merge', 'not_sourced'], JSON.stringify(a));
        assert.match(a.detail ?? '', /Ann: similarity -?[0-9.e+-]+ vs -?[0-9.e+-]+ of its last pick \(k 1, 1 returned\)/);
      });

      it('when an ad has spent just under its budget, far above the schedule, then it is dropped at Filters by paced', async () => {
        const res = await explain({ pipeline: 'paced', attributes: attrs({ probe: ['pace'] }), num_results: 50 }, ['pace-1', 'pool-0']);
        checkReturned(res, ['pace-1', 'pool-0']);
        const a = of(res, 'pace-1');
        assert.deepEqual([a.outcome, a.stage, a.reason], ['dropped', 'Filters', 'paced'], JSON.stringify(a));
        assert.match(a.detail ?? '', /spent 99(\.0+)?% of its daily budget/);
        assert.equal(of(res, 'pool-0').outcome, 'returned', 'an ad without a budget is never paced');
      });
    });

    describe('dropped counts', () => {
      it('when debug is set, then each stage reports what it dropped by reason, matching its counts in and out', async () => {
        const res = await explain({ pipeline: 'uncapped', num_results: 3, debug: true }, ['pool-0']);
        const div = stage(res.response, 'Diversifier');
        assert.equal(div.dropped?.below_cutoff, (div.candidates_in ?? 0) - 3, JSON.stringify(div));
        assert.ok((div.dropped?.below_cutoff ?? 0) > 0);
        const keep = await explain({ pipeline: 'keep3', num_results: 50, debug: true }, ['pool-0']);
        const ranker = stage(keep.response, 'EarlyRanker');
        assert.equal(ranker.dropped?.below_keep, (ranker.candidates_in ?? 0) - 3, JSON.stringify(ranker));
        const narrow = await s.retrieval.retrieve({ pipeline: 'narrow', num_results: 50, debug: true }, CALL);
        assert.equal(stage(narrow, 'Merge').dropped?.not_sourced, POOL - 1, JSON.stringify(stage(narrow, 'Merge')));
        const capped = await s.retrieval.retrieve({ pipeline: 'advertiser_capped', attributes: attrs({ probe: ['solo'] }), num_results: 50, debug: true }, CALL);
        // 5 pool advertisers with 6 ads each and `solo` with 4: one ad of each is kept.
        assert.equal(stage(capped, 'Diversifier').dropped?.advertiser_cap, 5 * 5 + 3);
        const plain = await s.retrieval.retrieve({ num_results: 3 }, CALL);
        assert.deepEqual(plain.stages, [], 'no stage detail without debug');
      });

      it('when a Retrieve cuts the ranked list, then /metrics counts funnel_stage_dropped_total{stage="Diversifier",reason="below_cutoff"} up by what it dropped', async () => {
        const labels = { stage: 'Diversifier', reason: 'below_cutoff' };
        const before = sample(await scrape(metricsPort), 'funnel_stage_dropped_total', labels);
        const res = await s.retrieval.retrieve({ pipeline: 'uncapped', num_results: 3, debug: true }, CALL);
        const dropped = stage(res, 'Diversifier').dropped?.below_cutoff ?? 0;
        assert.ok(dropped > 0);
        const after = sample(await scrape(metricsPort), 'funnel_stage_dropped_total', labels);
        assert.equal(after - before, dropped);
        assert.ok(after > 0);
      });
    });
  });

  describe('as a property over random catalogs, configs and requests', () => {
    // The catalogs are fixed per seed (rng: mulberry32), the requests come from fast-check.

    const VOCAB: Readonly<Record<string, readonly string[]>> = { country: ['US', 'CA', 'DE'], platform: ['ios', 'android', 'web'] };
    const BUDGET = 1_000_000;
    const SPENDS = [0, 100_000, 500_000, 990_000, 2_000_000];
    // A flat schedule at 0.3 (tolerance 0): whether an ad is paced never depends on the time of day.
    const PACING = { enabled: true, curve: [[0, 0.3], [1, 0.3]], tolerance: 0 };
    const PIPELINES = ['default', 'narrow', 'keep_small', 'caps', 'mmr_off', 'mmr_strong', 'no_pacing'];
    const CODES: Record<string, readonly string[]> = {
      Merge: ['not_sourced'],
      Filters: ['paced', 'ineligible'],
      EarlyRanker: ['below_keep'],
      Diversifier: ['advertiser_cap', 'category_cap', 'below_cutoff'],
    };

    interface Shape {
      seed: number;
      ads: number;
      dim: number;
      advertisers: number;
      categories: number;
      targetedShare: number;
    }
    interface World {
      shape: Shape;
      server: E2eServer;
      rows: Map<string, OracleRow>;
      spends: Map<string, ReportedSpend>;
      adIds: string[];
      advertisers: string[];
      categories: string[];
    }

    const SHAPES: Shape[] = [
      { seed: 11, ads: 80, dim: 8, advertisers: 6, categories: 4, targetedShare: 0.4 },
      { seed: 22, ads: 150, dim: 16, advertisers: 30, categories: 8, targetedShare: 0.7 },
      { seed: 33, ads: 40, dim: 4, advertisers: 2, categories: 2, targetedShare: 0.1 },
    ];

    function catalog(shape: Shape): { rows: Record<string, unknown>[]; spends: { ad_id: string; spend_micros: number }[]; clicked: string[] } {
      const rnd = rng(shape.seed);
      const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)];
      const someOf = (list: readonly string[]): string[] => {
        const out = list.filter(() => rnd() < 0.5);
        return out.length > 0 ? out : [pick(list)];
      };
      const rows: Record<string, unknown>[] = [];
      const spends: { ad_id: string; spend_micros: number }[] = [];
      const clicked: string[] = [];
      for (let i = 0; i < shape.ads; i++) {
        const adId = `s${shape.seed}-${i}`;
        const r: Record<string, unknown> = {
          ad_id: adId,
          advertiser_id: `adv-${Math.floor(rnd() * shape.advertisers)}`,
          campaign_id: `c-${i % 7}`,
          category: `cat-${Math.floor(rnd() * shape.categories)}`,
          bid_micros: 1000 + Math.floor(rnd() * 2_000_000),
          quality: Math.round(rnd() * 100) / 100,
          ctr_prior: Math.round(rnd() * 1000) / 10_000 + 0.001,
          embedding: Array.from({ length: shape.dim }, () => Math.round((rnd() * 2 - 1) * 100) / 100),
        };
        if (rnd() < 0.1) r.status = 'paused';
        const flight = rnd();
        if (flight < 0.06) Object.assign(r, { start_time: isoFromNow(-2 * DAY), end_time: isoFromNow(-DAY) });
        else if (flight < 0.12) Object.assign(r, { start_time: isoFromNow(DAY), end_time: isoFromNow(2 * DAY) });
        else if (flight < 0.2) Object.assign(r, { start_time: isoFromNow(-DAY), end_time: isoFromNow(DAY) });
        if (rnd() < 0.3) {
          r.daily_budget_micros = BUDGET;
          const spend = pick(SPENDS);
          if (spend > 0) spends.push({ ad_id: adId, spend_micros: spend });
        }
        if (rnd() < shape.targetedShare) {
          const conjunctions = 1 + Math.floor(rnd() * 2);
          r.targeting = Array.from({ length: conjunctions }, () => {
            const c: Record<string, { any_of?: string[]; none_of?: string[] }> = {};
            for (const name of Object.keys(VOCAB)) {
              const p = rnd();
              if (p < 0.35) c[name] = { any_of: someOf(VOCAB[name]) };
              else if (p < 0.55) c[name] = { none_of: someOf(VOCAB[name]) };
            }
            return c;
          });
        }
        if (rnd() < 0.25) clicked.push(adId);
        rows.push(r);
      }
      return { rows, spends, clicked };
    }

    const base = {
      stages: {
        ...RELAXED_STAGES,
        Filters: { timeout_ms: 10_000, pacing: PACING },
        // The popularity rate decays with time, so it would make two runs a few ms apart score
        // differently; Popularity still sources (by its time-invariant order).
        EarlyRanker: { timeout_ms: 10_000, weights: { popularity_rate: 0 } },
      },
    };
    const config = {
      limits: { ...RELAXED_LIMITS, max_explain_ads: 200 },
      popularity: { segment_attributes: ['country'] },
      pipelines: {
        default: base,
        narrow: { inherits: 'default', stages: { Ann: { k: 3 }, Targeting: { k: 4 }, Popularity: { k: 3 } } },
        keep_small: { inherits: 'default', stages: { EarlyRanker: { keep: 5 } } },
        caps: { inherits: 'default', stages: { Diversifier: { max_per_advertiser: 1, max_per_category: 2 } } },
        mmr_off: { inherits: 'default', stages: { Diversifier: { mmr_lambda: 1 } } },
        mmr_strong: { inherits: 'default', stages: { Diversifier: { mmr_lambda: 0.3, mmr_depth: 10 } } },
        no_pacing: { inherits: 'default', stages: { Filters: { pacing: { enabled: false } } } },
      },
    };

    const worlds: World[] = [];
    before(async () => {
      for (const shape of SHAPES) {
        const { rows, spends, clicked } = catalog(shape);
        const server = await startE2eServer({ rows, config });
        const reportedAt = Date.now();
        worlds.push({
          shape,
          server,
          rows: new Map(rows.map((r) => [r.ad_id as string, r as unknown as OracleRow])),
          spends: new Map(spends.map((x) => [x.ad_id, { micros: x.spend_micros, atMs: reportedAt }])),
          adIds: rows.map((r) => r.ad_id as string),
          advertisers: [...new Set(rows.map((r) => r.advertiser_id as string))].sort(),
          categories: [...new Set(rows.map((r) => r.category as string))].sort(),
        });
        if (spends.length > 0) await server.admin.reportSpend({ entries: spends });
        await server.admin.recordEvents({
          events: clicked.flatMap((ad_id, i) => [
            { ad_id, type: 'IMPRESSION' as const, attributes: attrs({ country: [VOCAB.country[i % 3]] }) },
            ...(i % 2 === 0 ? [{ ad_id, type: 'CLICK' as const, attributes: attrs({ country: [VOCAB.country[i % 3]] }) }] : []),
          ]),
        });
      }
    });
    after(async () => {
      await Promise.all(worlds.map((w) => w.server.stop()));
    });

    const REASON_OF_ORACLE: [RegExp, string][] = [
      [/^paused$/, 'paused'],
      [/^flight /, 'outside_flight'],
      [/^spend /, 'over_budget'],
      [/^targeting /, 'targeting'],
      [/^ad excluded$/, 'excluded_ad'],
      [/^advertiser excluded$/, 'excluded_advertiser'],
      [/^category blocked$/, 'blocked_category'],
    ];

    const caseArb = fc.nat({ max: SHAPES.length - 1 }).chain((w) => {
      const shape = SHAPES[w];
      const ids = Array.from({ length: shape.ads }, (_, i) => `s${shape.seed}-${i}`);
      const advertisers = Array.from({ length: shape.advertisers }, (_, i) => `adv-${i}`);
      const categories = Array.from({ length: shape.categories }, (_, i) => `cat-${i}`);
      return fc.record({
        world: fc.constant(w),
        pipeline: fc.constantFrom(...PIPELINES),
        country: fc.option(fc.subarray([...VOCAB.country, 'ZZ'], { minLength: 1 }), { freq: 3 }),
        platform: fc.option(fc.subarray([...VOCAB.platform], { minLength: 1 }), { freq: 3 }),
        embedding: fc.option(fc.array(fc.integer({ min: -10, max: 10 }), { minLength: shape.dim, maxLength: shape.dim }), { freq: 4 }),
        numResults: fc.constantFrom(0, 1, 3, 5, 10, 20),
        excludeAds: fc.subarray(ids, { maxLength: 4 }),
        excludeAdvertisers: fc.subarray(advertisers, { maxLength: 2 }),
        blocked: fc.subarray(categories, { maxLength: 1 }),
        asked: fc.subarray(ids, { minLength: 1, maxLength: Math.min(60, ids.length) }),
        unknown: fc.boolean(),
      });
    });

    it('when Explain and Retrieve run the same request on the same data and config, then the candidates are equal, and every outcome agrees with the response and the eligibility oracle', async () => {
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          const w = worlds[c.world];
          const a: Record<string, string[]> = {};
          if (c.country) a.country = c.country;
          if (c.platform) a.platform = c.platform;
          const req: RetrieveRequestMsg = {
            pipeline: c.pipeline,
            attributes: attrs(a),
            user_embedding: c.embedding ? c.embedding.map((x) => x / 10) : [],
            num_results: c.numResults,
            exclude_ad_ids: c.excludeAds,
            exclude_advertiser_ids: c.excludeAdvertisers,
            blocked_categories: c.blocked,
          };
          const asked = c.unknown ? [...c.asked, 'zz-unknown'] : c.asked;
          const retrieved = await w.server.retrieval.retrieve(req, CALL);
          const explained = await w.server.retrieval.explain({ request: req, ad_ids: asked }, { ...CALL, metadata: adminMetadata() });
          const nowMs = Date.now();
          assert.ok(!retrieved.degraded && !explained.response.degraded, `degraded: ${retrieved.degraded_stages} / ${explained.response.degraded_stages}`);
          assert.deepEqual(explained.response.candidates, retrieved.candidates, 'Explain answers what Retrieve answers');
          checkReturned(explained, asked);
          for (const x of explained.ads) {
            const row = w.rows.get(x.ad_id);
            if (!row) {
              assert.equal(x.outcome, 'unknown_ad', JSON.stringify(x));
              continue;
            }
            const why = whyIneligible(row, req, nowMs, w.spends.get(x.ad_id));
            if (why !== null) {
              const reason = REASON_OF_ORACLE.find(([re]) => re.test(why))?.[1];
              assert.deepEqual([x.outcome, x.stage, x.reason], ['not_eligible', 'Eligibility', reason], `${x.ad_id}: oracle says ${why}; ${JSON.stringify(x)}`);
              continue;
            }
            assert.ok(x.outcome === 'returned' || x.outcome === 'dropped', `${x.ad_id} is eligible: ${JSON.stringify(x)}`);
            if (x.outcome === 'dropped') assert.ok(CODES[x.stage ?? '']?.includes(x.reason ?? ''), `${x.ad_id}: ${JSON.stringify(x)}`);
            const spend = w.spends.get(x.ad_id)?.micros ?? 0;
            const paced = c.pipeline !== 'no_pacing' && row.daily_budget_micros !== undefined && spend / row.daily_budget_micros > PACING.curve[0][1];
            if (paced) assert.ok(x.outcome !== 'returned' && !(x.stage === 'Filters' && x.reason !== 'paced'), `${x.ad_id} is over its schedule: ${JSON.stringify(x)}`);
            if (x.stage === 'Filters') assert.ok(paced, `${x.ad_id} is not over its schedule: ${JSON.stringify(x)}`);
          }
        }),
        { numRuns: 60 },
      );
    });
  });
});
