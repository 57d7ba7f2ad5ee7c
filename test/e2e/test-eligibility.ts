/**
 * The eligibility invariant (CONTRACT section 2) as a property: random small catalogs (random
 * DNF targeting over a small attribute vocabulary, paused ads, flights in the past, future and
 * now, budgets exhausted through ReportSpend, popularity from RecordEvents), random stage
 * configs (failing stages, small k, pacing on or off) and random requests. Every returned ad is
 * checked against the direct targeting evaluator plus status, flight, budget and exclusions
 * computed from the catalog rows; no duplicates; at most num_results.
 */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import * as protobuf from 'protobufjs';
import { invariantViolations, type OracleRow, type ReportedSpend } from '../fixtures/eligibility-oracle';
import * as grpc from '@grpc/grpc-js';
import { tempDir } from '../fixtures/catalog';
import { adIds, attrs, ingestRows, rpcError, startE2eServer, type AdMsg, type E2eServer, type EventMsg, type RetrieveRequestMsg, type SpendEntryMsg } from '../fixtures/e2e-server';

const DIM = 4;
const HOUR = 3_600_000;
const VOCAB: Readonly<Record<string, readonly string[]>> = {
  country: ['US', 'CA', 'DE'],
  platform: ['ios', 'android', 'web'],
  community: ['r/a', 'r/b', 'r/c'],
};
const CATEGORIES = ['gaming', 'finance', 'travel', 'news'];
const ADVERTISERS = ['adv-0', 'adv-1', 'adv-2', 'adv-3'];
const DEFAULT_NUM_RESULTS = 50;

type PredicateSpec = { any_of?: string[]; none_of?: string[] };
type Flight = 'open' | 'past' | 'future' | 'now' | 'started' | 'ending' | 'ended';
type SpendKind = 'none' | 'below' | 'equal' | 'over';

interface AdSpec {
  targeting: Record<string, PredicateSpec>[] | undefined;
  paused: boolean;
  flight: Flight;
  budget: number | undefined;
  spend: SpendKind;
  advertiser: string;
  category: string;
  bid: number;
  quality: number;
  embedding: number[];
  clicks: number;
}

/** Subsets of a list in random order (empty allowed). */
const subset = <T>(list: readonly T[]) => fc.subarray([...list]);

const predicateArb = (name: string): fc.Arbitrary<PredicateSpec> =>
  fc
    .record({
      any_of: fc.option(subset([...VOCAB[name], 'ZZ']), { nil: undefined }),
      none_of: fc.option(subset([...VOCAB[name], 'ZZ']), { nil: undefined }),
    })
    .map((p) => {
      const out: PredicateSpec = {};
      if (p.any_of !== undefined) out.any_of = p.any_of;
      if (p.none_of !== undefined) out.none_of = p.none_of;
      if (out.any_of === undefined && out.none_of === undefined) out.none_of = [];
      return out;
    });

const conjunctionArb: fc.Arbitrary<Record<string, PredicateSpec>> = fc
  .record({ country: fc.option(predicateArb('country')), platform: fc.option(predicateArb('platform')), community: fc.option(predicateArb('community')) })
  .map((c) => {
    const out: Record<string, PredicateSpec> = {};
    for (const [k, v] of Object.entries(c)) if (v !== null) out[k] = v;
    return out;
  });

const adArb: fc.Arbitrary<AdSpec> = fc.record({
  targeting: fc.option(fc.array(conjunctionArb, { minLength: 1, maxLength: 3 }), { nil: undefined, freq: 2 }),
  paused: fc.integer({ min: 0, max: 3 }).map((x) => x === 0),
  flight: fc.constantFrom<Flight>('open', 'open', 'open', 'open', 'open', 'past', 'future', 'now', 'started', 'ending', 'ended'),
  budget: fc.option(fc.integer({ min: 0, max: 10_000 }), { nil: undefined, freq: 1 }),
  spend: fc.constantFrom<SpendKind>('none', 'none', 'below', 'equal', 'over'),
  advertiser: fc.constantFrom(...ADVERTISERS),
  category: fc.constantFrom(...CATEGORIES),
  bid: fc.integer({ min: 0, max: 5_000_000 }),
  quality: fc.double({ min: 0, max: 1, noNaN: true }),
  embedding: fc.array(fc.integer({ min: -10, max: 10 }), { minLength: DIM, maxLength: DIM }).map((v) => v.map((x) => x / 10)),
  clicks: fc.constantFrom(0, 0, 1, 3),
});

interface ConfigSpec {
  eligibilityError: number;
  filtersError: number;
  rankerError: number;
  diversifierError: number;
  sourceError: number;
  pacing: boolean;
  maxPerAdvertiser: number;
  annK: number;
  targetingK: number;
  popularityK: number;
  keep: number;
}

const configArb: fc.Arbitrary<ConfigSpec> = fc.record({
  eligibilityError: fc.constantFrom(0, 0, 0, 0, 0, 0.3),
  filtersError: fc.constantFrom(0, 0, 0, 0, 0, 0.3),
  rankerError: fc.constantFrom(0, 0, 0.5, 1),
  diversifierError: fc.constantFrom(0, 0, 0.5, 1),
  sourceError: fc.constantFrom(0, 0, 0.5),
  pacing: fc.boolean(),
  maxPerAdvertiser: fc.integer({ min: 1, max: 10 }),
  annK: fc.integer({ min: 1, max: 60 }),
  targetingK: fc.integer({ min: 1, max: 60 }),
  popularityK: fc.integer({ min: 1, max: 60 }),
  keep: fc.integer({ min: 1, max: 100 }),
});

function configObject(c: ConfigSpec): unknown {
  const fault = (error_rate: number) => ({ error_rate });
  return {
    popularity: { segment_attributes: ['country', 'platform'] },
    pipelines: {
      default: {
        stages: {
          Eligibility: { fault: fault(c.eligibilityError) },
          Ann: { k: c.annK, fault: fault(c.sourceError) },
          Targeting: { k: c.targetingK, fault: fault(c.sourceError) },
          Popularity: { k: c.popularityK },
          Filters: { fault: fault(c.filtersError), pacing: { enabled: c.pacing } },
          EarlyRanker: { keep: c.keep, fault: fault(c.rankerError) },
          Diversifier: { max_per_advertiser: c.maxPerAdvertiser, fault: fault(c.diversifierError) },
        },
      },
    },
  };
}

const requestArb = (adCount: number): fc.Arbitrary<RetrieveRequestMsg> =>
  fc
    .record({
      country: fc.option(subset([...VOCAB.country, 'ZZ']), { freq: 8 }),
      platform: fc.option(subset([...VOCAB.platform, 'ZZ']), { freq: 8 }),
      community: fc.option(subset([...VOCAB.community, 'ZZ']), { freq: 8 }),
      other: fc.option(subset(['x', 'y'])),
      excludeAds: fc.array(fc.nat({ max: adCount + 2 }), { maxLength: 4 }),
      excludeAdvertisers: subset(ADVERTISERS).map((l) => l.slice(0, 1)),
      blocked: subset([...CATEGORIES, 'nope']).map((l) => l.slice(0, 1)),
      embedding: fc.option(fc.array(fc.integer({ min: -10, max: 10 }), { minLength: DIM, maxLength: DIM }), { freq: 2 }),
      numResults: fc.constantFrom(0, 1, 2, 3, 5, 8, 13, 20),
    })
    .map((r) => {
      const a: Record<string, string[]> = {};
      for (const name of ['country', 'platform', 'community', 'other'] as const) {
        const v = r[name];
        if (v !== null) a[name] = v;
      }
      return {
        attributes: attrs(a),
        exclude_ad_ids: r.excludeAds.map((n) => `ad-${n}`),
        exclude_advertiser_ids: r.excludeAdvertisers,
        blocked_categories: r.blocked,
        user_embedding: r.embedding === null ? [] : r.embedding.map((x) => x / 10),
        num_results: r.numResults,
      };
    });

type MutationKind = 'pause' | 'activate' | 'delete' | 'retarget' | 'spend';

/** An Admin write applied between the two halves of a scenario's requests. */
interface Mutation {
  kind: MutationKind;
  index: number;
  targeting: Record<string, PredicateSpec>[] | undefined;
  spend: number;
}

// Admin targeting has no empty lists: proto cannot tell an empty repeated field from an absent one.
const adminConjunctionArb = conjunctionArb.map((c) => {
  const out: Record<string, PredicateSpec> = {};
  for (const [k, p] of Object.entries(c)) {
    const q: PredicateSpec = {};
    if (p.any_of && p.any_of.length > 0) q.any_of = p.any_of;
    if (p.none_of && p.none_of.length > 0) q.none_of = p.none_of;
    if (q.any_of || q.none_of) out[k] = q;
  }
  return out;
});

const mutationArb = (adCount: number): fc.Arbitrary<Mutation> =>
  fc.record({
    kind: fc.constantFrom<MutationKind>('pause', 'activate', 'delete', 'retarget', 'spend'),
    index: fc.nat({ max: adCount - 1 }),
    targeting: fc.option(fc.array(adminConjunctionArb, { minLength: 1, maxLength: 2 }), { nil: undefined, freq: 3 }),
    spend: fc.integer({ min: 0, max: 12_000 }),
  });

const scenarioArb = fc.array(adArb, { minLength: 1, maxLength: 60, size: 'max' }).chain((ads) =>
  fc.record({
    ads: fc.constant(ads),
    config: configArb,
    requests: fc.array(requestArb(ads.length), { minLength: 30, maxLength: 30 }),
    mutations: fc.array(mutationArb(ads.length), { maxLength: 12 }),
  }),
);

function flightFields(f: Flight, now: number): { start_time?: string; end_time?: string } {
  const t = (offset: number) => new Date(now + offset).toISOString();
  switch (f) {
    case 'open':
      return {};
    case 'past':
      return { start_time: t(-72 * HOUR), end_time: t(-24 * HOUR) };
    case 'future':
      return { start_time: t(24 * HOUR), end_time: t(72 * HOUR) };
    case 'now':
      return { start_time: t(-24 * HOUR), end_time: t(24 * HOUR) };
    case 'started':
      return { start_time: t(-HOUR) };
    case 'ending':
      return { end_time: t(HOUR) };
    case 'ended':
      return { end_time: t(-HOUR) };
  }
}

function catalogRow(ad: AdSpec, n: number, now: number): OracleRow & Record<string, unknown> {
  const out: OracleRow & Record<string, unknown> = {
    ad_id: `ad-${n}`,
    advertiser_id: ad.advertiser,
    campaign_id: `camp-${n % 5}`,
    category: ad.category,
    bid_micros: ad.bid,
    quality: ad.quality,
    embedding: ad.embedding,
    ...flightFields(ad.flight, now),
  };
  if (ad.paused) out.status = 'paused';
  if (ad.budget !== undefined) out.daily_budget_micros = ad.budget;
  if (ad.targeting !== undefined) out.targeting = ad.targeting;
  return out;
}

/** The Admin message of a catalog row. */
function adMessage(r: OracleRow & Record<string, unknown>): AdMsg {
  const ad: AdMsg = {
    ad_id: r.ad_id,
    advertiser_id: r.advertiser_id,
    campaign_id: r.campaign_id,
    category: r.category,
    status: r.status ?? 'active',
    bid_micros: r.bid_micros as number,
    quality: r.quality as number,
    embedding: r.embedding as number[],
  };
  if (r.daily_budget_micros !== undefined) ad.daily_budget_micros = r.daily_budget_micros;
  if (r.targeting !== undefined) ad.targeting = r.targeting.map((c) => ({ attributes: { ...c } }));
  if (r.start_time !== undefined) ad.start_time = r.start_time;
  if (r.end_time !== undefined) ad.end_time = r.end_time;
  return ad;
}

/** Applies `m` through Admin and to the oracle's rows and spends. */
async function applyMutation(
  s: E2eServer,
  m: Mutation,
  original: ReadonlyArray<OracleRow & Record<string, unknown>>,
  rows: Map<string, OracleRow & Record<string, unknown>>,
  spends: Map<string, ReportedSpend>,
): Promise<void> {
  const adId = original[m.index].ad_id;
  const current = rows.get(adId);
  switch (m.kind) {
    case 'pause':
    case 'activate': {
      const status = m.kind === 'pause' ? 'paused' : 'active';
      await s.admin.setAdStatus({ ad_ids: [adId], status });
      if (current) rows.set(adId, { ...current, status });
      return;
    }
    case 'delete':
      await s.admin.deleteAds({ ad_ids: [adId] });
      rows.delete(adId);
      spends.delete(adId);
      return;
    case 'retarget': {
      const next: OracleRow & Record<string, unknown> = { ...(current ?? original[m.index]) };
      if (m.targeting === undefined) delete next.targeting;
      else next.targeting = m.targeting;
      await s.admin.upsertAds({ ads: [adMessage(next)] });
      rows.set(adId, next);
      return;
    }
    case 'spend':
      await s.admin.reportSpend({ entries: [{ ad_id: adId, spend_micros: m.spend }] });
      if (current) spends.set(adId, { micros: m.spend, atMs: Date.now() });
      return;
  }
}

function spendFor(ad: AdSpec): number | undefined {
  const budget = ad.budget ?? 1_000;
  switch (ad.spend) {
    case 'none':
      return undefined;
    case 'below':
      return Math.floor(budget / 2);
    case 'equal':
      return budget;
    case 'over':
      return budget + 1 + Math.floor(budget / 3);
  }
}

describe('e2e: the eligibility invariant', function () {
  const live = new Set<E2eServer>();
  after(async () => {
    for (const s of live) await s.stop();
  });

  it('when random catalogs get random requests under random configs and Admin writes, then every returned ad is eligible, once, within num_results', async () => {
    let requests = 0;
    let returned = 0;
    await fc.assert(
      fc.asyncProperty(scenarioArb, async ({ ads, config, requests: reqs, mutations }) => {
        const now = Date.now();
        const original = ads.map((ad, n) => catalogRow(ad, n, now));
        const s = await startE2eServer({ rows: original, config: configObject(config) });
        live.add(s);
        try {
          const rows = new Map(original.map((r) => [r.ad_id, r]));
          const spends = new Map<string, ReportedSpend>();
          const entries: SpendEntryMsg[] = [];
          ads.forEach((ad, n) => {
            const micros = spendFor(ad);
            if (micros !== undefined) entries.push({ ad_id: `ad-${n}`, spend_micros: micros });
          });
          if (entries.length > 0) {
            await s.admin.reportSpend({ entries });
            const at = Date.now();
            for (const e of entries) spends.set(e.ad_id, { micros: Number(e.spend_micros), atMs: at });
          }
          const events: EventMsg[] = [];
          ads.forEach((ad, n) => {
            for (let i = 0; i < ad.clicks; i++) {
              events.push({ ad_id: `ad-${n}`, type: 'CLICK', attributes: attrs({ country: [VOCAB.country[(n + i) % 3]] }) });
              events.push({ ad_id: `ad-${n}`, type: 'IMPRESSION' });
            }
          });
          if (events.length > 0) await s.admin.recordEvents({ events });
          const check = async (req: RetrieveRequestMsg, phase: string) => {
            const res = await s.retrieval.retrieve(req);
            const limit = req.num_results || DEFAULT_NUM_RESULTS;
            const problems = invariantViolations(res, req, rows, spends, limit);
            assert.deepEqual(problems, [], `${phase}: request ${JSON.stringify(req)}\nconfig ${JSON.stringify(config)}\nmutations ${JSON.stringify(mutations)}\n${problems.join('\n')}`);
            requests++;
            returned += res.candidates.length;
          };
          const half = reqs.length / 2;
          for (const req of reqs.slice(0, half)) await check(req, 'before the Admin writes');
          for (const m of mutations) await applyMutation(s, m, original, rows, spends);
          for (const req of reqs.slice(half)) await check(req, 'after the Admin writes');
        } finally {
          live.delete(s);
          await s.stop();
        }
      }),
      { numRuns: 30, endOnFailure: true },
    );
    assert.ok(returned > requests / 4, `the property was checked on too few candidates (${returned} over ${requests} requests)`);
  });

  it('when targeting or a request names attributes like Object.prototype members, then constructor and toString match like any other name and __proto__ is refused everywhere', async () => {
    // JSON.parse keeps "__proto__" as an own key, as a catalog file line does; objects rebuilt
    // from it would turn it into a prototype and drop it, widening the targeting. It is refused.
    const t = (json: string) => JSON.parse(json) as OracleRow['targeting'];
    const base = { campaign_id: 'c', category: 'g', bid_micros: 1000, embedding: [0.1, 0.2, 0.3, 0.4] };
    const rows: (OracleRow & Record<string, unknown>)[] = [
      { ...base, ad_id: 'ctor-any', advertiser_id: 'a3', targeting: t('[{"constructor": {"any_of": ["x"]}}]') },
      { ...base, ad_id: 'tostring-none', advertiser_id: 'a4', targeting: t('[{"toString": {"none_of": ["x"]}}]') },
      { ...base, ad_id: 'plain', advertiser_id: 'a5' },
    ];
    await assert.rejects(
      ingestRows(tempDir('proto-key'), [...rows, { ...base, ad_id: 'proto-any', advertiser_id: 'a1', targeting: t('[{"__proto__": {"any_of": ["x"]}}]') }]),
      /bad row/,
    );
    const s = await startE2eServer({ rows });
    live.add(s);
    try {
      const byId = new Map(rows.map((r) => [r.ad_id, r]));
      /** A request with these attributes, hand-encoded so "__proto__" survives as a map key on the wire. */
      const encode = (a: Record<string, string[]>): Buffer => {
        const w = protobuf.Writer.create();
        for (const [k, values] of Object.entries(a)) {
          w.uint32((3 << 3) | 2).fork();
          w.uint32((1 << 3) | 2).string(k);
          w.uint32((2 << 3) | 2).fork();
          for (const v of values) w.uint32((1 << 3) | 2).string(v);
          w.ldelim();
          w.ldelim();
        }
        w.uint32((5 << 3) | 0).uint32(10);
        return Buffer.from(w.finish());
      };
      const problems: string[] = [];
      for (const json of ['{}', '{"constructor": ["x"]}', '{"toString": ["x"]}', '{"constructor": ["y"], "toString": ["y"]}']) {
        const a = JSON.parse(json) as Record<string, string[]>;
        const req: RetrieveRequestMsg = { attributes: Object.fromEntries(Object.entries(a).map(([k, v]) => [k, { values: v }])), num_results: 10 };
        const res = await s.retrieval.retrieveRaw(encode(a));
        for (const p of invariantViolations(res, req, byId, new Map(), 10)) problems.push(`request ${json} got ${adIds(res).join(',')}: ${p}`);
      }
      assert.deepEqual(problems, [], problems.join('\n'));
      const err = await rpcError(s.retrieval.retrieveRaw(encode(JSON.parse('{"__proto__": ["x"]}') as Record<string, string[]>)));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /attributes.*__proto__/);
    } finally {
      live.delete(s);
      await s.stop();
    }
  });

  describe('Admin writes that land while a Retrieve is in flight', () => {
    let s: E2eServer;
    const race = (probe: string, category: string): OracleRow & Record<string, unknown> => ({
      ad_id: `race-${probe}`,
      advertiser_id: `adv-${probe}`,
      campaign_id: 'c',
      category,
      bid_micros: 1_000_000,
      embedding: [0.1, 0.2, 0.3, 0.4],
      targeting: [{ probe: { any_of: [probe] } }],
    });
    const rows = [race('p1', 'ok'), race('p2', 'ok'), race('p3', 'ok'), race('filler', 'ok')];
    before(async () => {
      // Writes land while a stage holds the request for 800 ms: the Diversifier (after Filters) in
      // the default pipeline, the Targeting source (as a slow ANN search would) in slow_sourcing.
      const hold = { timeout_ms: 10_000, fault: { delay_ms: 800 } };
      s = await startE2eServer({ rows, config: { pipelines: { default: { stages: { Diversifier: hold } }, slow_sourcing: { stages: { Targeting: hold } } } } });
      live.add(s);
    });
    after(async () => {
      live.delete(s);
      await s?.stop();
    });

    /** Sends `req`, lets it get past Filters, runs `write`, and returns the answer. */
    const during = async (req: RetrieveRequestMsg, write: () => Promise<void>) => {
      const pending = s.retrieval.retrieve(req, { deadlineMs: 30_000 });
      await new Promise((r) => setTimeout(r, 300));
      await write();
      return pending;
    };

    for (const [stage, pipeline, probe] of [
      ['Filters', 'default', 'p1'],
      ['sourcing', 'slow_sourcing', 'p3'],
    ] as const) {
      it(`when an ad is deleted and a new ad reuses its slot while a Retrieve is ${stage === 'Filters' ? 'past Filters' : 'in its sourcing stages'}, then the unrelated new ad is not answered`, async () => {
        const req: RetrieveRequestMsg = { pipeline, attributes: attrs({ probe: [probe] }), blocked_categories: ['blocked'], num_results: 10 };
        const newcomer = { ...race('elsewhere', 'ok'), ad_id: `newcomer-${probe}`, advertiser_id: 'adv-newcomer' };
        const res = await during(req, async () => {
          await s.admin.deleteAds({ ad_ids: [`race-${probe}`] });
          await s.admin.upsertAds({ ads: [{ ...newcomer, targeting: [{ attributes: { probe: { any_of: ['elsewhere'] } } }] }] });
        });
        const now = new Map([...rows.filter((r) => r.ad_id !== `race-${probe}`), newcomer].map((r) => [r.ad_id, r]));
        const problems = invariantViolations(res, req, now, new Map(), 10);
        assert.deepEqual(problems, [], `answer ${JSON.stringify(res.candidates)}\n${problems.join('\n')}`);
      });
    }

    it('when an ad moves into a blocked category while a Retrieve is past Filters, then it is not answered with that category', async () => {
      const req: RetrieveRequestMsg = { attributes: attrs({ probe: ['p2'] }), blocked_categories: ['blocked'], num_results: 10 };
      const moved = race('p2', 'blocked');
      const res = await during(req, async () => {
        await s.admin.upsertAds({ ads: [{ ...moved, targeting: [{ attributes: { probe: { any_of: ['p2'] } } }] }] });
      });
      for (const c of res.candidates) assert.notEqual(c.category, 'blocked', `${c.ad_id} answered in the blocked category ${String(c.category)}`);
    });
  });
});
