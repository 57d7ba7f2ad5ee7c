import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { popularitySchema } from '../../../src/config/schema';
import { HnswIndex } from '../../../src/native/index';
import { SOURCE_BIT, type Candidate } from '../../../src/pipeline/types';
import { PopularityState } from '../../../src/serving/popularity';
import { BID_ORDER, PriorOrder, priorOf } from '../../../src/serving/prior-order';
import { ecpm, features, pctr, prepareQuery, similarity } from '../../../src/stages/ranking/early-ranker';
import { AnnSource } from '../../../src/stages/sourcing/ann-source';
import { PopularitySource } from '../../../src/stages/sourcing/popularity-source';
import { rankerOrderKey, TargetingSource } from '../../../src/stages/sourcing/targeting-source';
import { adTable, defaultPipeline, eligibleOf, FixedPopularity, GatherVectors, makeContext } from '../../fixtures/stage-context';

const isEligible = (bits: Uint32Array, id: number) => ((bits[id >>> 5] >>> (id & 31)) & 1) === 1;

describe('TargetingSource', () => {
  it('when any eligible set is given, then it returns the eligible ads with the best prior, walk or scan alike', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 1000 }), { minLength: 1, maxLength: 300 }),
        fc.array(fc.boolean(), { minLength: 300, maxLength: 300 }),
        fc.integer({ min: 1, max: 50 }),
        (bids, allow, k) => {
          const ads = adTable(bids.map((b, id) => ({ id, bid_micros: b })));
          const order = new PriorOrder();
          order.rebuild(ads);
          const ids = bids.map((_, id) => id).filter((id) => allow[id]);
          const pipeline = defaultPipeline();
          pipeline.stages.Targeting.order = 'prior';
          pipeline.stages.Targeting.k = k;
          const ctx = makeContext({ ads, pipeline, eligible: eligibleOf(ids, ads.capacity) });
          const got = (new TargetingSource(ads, order).run(ctx) as Candidate[]).map((c) => c.id);
          const want = ids.sort((a, b) => priorOf(ads, b, pipeline.stages.Targeting.prior) - priorOf(ads, a, pipeline.stages.Targeting.prior) || a - b).slice(0, k);
          assert.deepEqual(got, want);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('when few ads are eligible in a large table, then it scans the bitset instead of walking', () => {
    const ads = adTable(Array.from({ length: 5000 }, (_, id) => ({ id, bid_micros: id })));
    const order = new PriorOrder();
    order.rebuild(ads);
    const pipeline = defaultPipeline();
    pipeline.stages.Targeting.order = 'prior';
    const ctx = makeContext({ ads, pipeline, eligible: eligibleOf([3, 7, 4000], ads.capacity) });
    const out = new TargetingSource(ads, order).run(ctx) as Candidate[];
    assert.deepEqual(
      out.map((c) => c.id),
      [4000, 7, 3],
    );
    assert.equal(ctx.notes.get('method'), 'scan');
    assert.ok(out.every((c) => c.sources === SOURCE_BIT.Targeting));
  });
});

describe('TargetingSource, order: ranker (threshold walk)', () => {
  const DIM = 4;
  /** Vectors with the batch read and the length bound the serving state offers. */
  class BoundedVectors extends GatherVectors {
    get normBound(): number {
      let m = 0;
      for (let id = 0; id < 400; id++) {
        const v = this.get(id);
        if (v) m = Math.max(m, Math.hypot(...v));
      }
      return m * (1 + 1e-6);
    }
  }
  class BoundedPopularity extends FixedPopularity {
    rateBound(): number {
      return Math.max(0, ...this.rates.values());
    }
  }
  const weight = fc.double({ min: -3, max: 3, noNaN: true });

  it('when any catalog, weights and eligible set are given, with or without an (exact) Ann list, then it returns the exact top k by the EarlyRanker\'s own score (no source indicators)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            bid: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 50_000_000 })),
            ctr: fc.double({ min: 0, max: 0.6, noNaN: true }),
            quality: fc.double({ min: 0, max: 1, noNaN: true }),
            v: fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { minLength: DIM, maxLength: DIM }),
            rate: fc.double({ min: 0, max: 0.2, noNaN: true }),
            allowed: fc.boolean(),
          }),
          { minLength: 1, maxLength: 250 },
        ),
        fc.record({ bias: weight, ann_similarity: fc.oneof(weight, fc.constant(8)), ctr_prior_logit: weight, popularity_rate: weight, quality: weight, source_targeting: weight, source_ann: weight }),
        fc.constantFrom<'ip' | 'cos' | 'l2'>('ip', 'cos', 'l2'),
        fc.integer({ min: 1, max: 40 }),
        fc.boolean(),
        fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 30 })),
        async (rows, w, metric, k, withQuery, annK) => {
          const ads = adTable(rows.map((r, id) => ({ id, bid_micros: r.bid, ctr_prior: r.ctr, quality: r.quality })));
          const vectors = new BoundedVectors(DIM, metric, rows.map((r, id) => [id, r.v] as [number, number[]]));
          const popularity = new BoundedPopularity(new Map(rows.map((r, id) => [id, r.rate])));
          const pipeline = defaultPipeline();
          Object.assign(pipeline.stages.EarlyRanker.weights, w);
          pipeline.stages.Targeting.k = k;
          const order = new PriorOrder();
          order.rebuild(ads);
          order.get(BID_ORDER);
          order.get(rankerOrderKey(pipeline.stages.EarlyRanker.weights));
          const ids = rows.map((_, id) => id).filter((id) => rows[id].allowed);
          const embedding = withQuery ? Float32Array.from([0.5, -1, 1.5, 0.25]) : null;
          const base = makeContext({ ads, vectors, popularity, pipeline, query: { embedding }, eligible: eligibleOf(ids, ads.capacity), nowMs: 1 });
          const q = prepareQuery(embedding, vectors);
          // An exact Ann list: the annK eligible ads most similar to the query, best first.
          pipeline.stages.Ann.k = Math.max(1, annK);
          const annList =
            annK > 0 && q
              ? ids
                  .map((id) => ({ id, sources: SOURCE_BIT.Ann, annScore: similarity(q, vectors.get(id)!), sourceRank: 0, score: NaN }))
                  .sort((a, b) => b.annScore - a.annScore || a.id - b.id)
                  .slice(0, annK)
              : null;
          const ctx = { ...base, sourced: annList ? { Ann: Promise.resolve(annList) } : {} };
          const got = await new TargetingSource(ads, order).run(ctx);
          // The EarlyRanker's score of each eligible ad with no source indicator (as the reference scores it).
          const score = (id: number) => {
            const f = features(ads, popularity, vectors, q, 1, { id, sources: 0, annScore: NaN, sourceRank: 0, score: NaN });
            return ecpm(ads.bidMicros(id), pctr(pipeline.stages.EarlyRanker.weights, f));
          };
          const want = ids.map((id) => ({ id, s: score(id) })).sort((a, b) => b.s - a.s || a.id - b.id).slice(0, k);
          assert.equal(got.length, want.length);
          // Equal scores may come in either order; every returned score must match the wanted one at its rank.
          got.forEach((c, i) => {
            const s = score(c.id);
            assert.ok(Math.abs(s - want[i].s) <= 1e-9 * Math.max(1, Math.abs(want[i].s)), `rank ${i}: got ad ${c.id} (${s}), want ad ${want[i].id} (${want[i].s})`);
            assert.equal(c.sources, SOURCE_BIT.Targeting);
          });
          assert.notEqual(base.notes.get('stop'), 'cap');
        },
      ),
      { numRuns: 300 },
    );
  });

  it('when the bound proves the top k early, then it stops before reading every eligible ad', () => {
    // Bids fall steeply and nothing else varies: the first k by bid are the top k.
    const ads = adTable(Array.from({ length: 5000 }, (_, id) => ({ id, bid_micros: 10_000_000 - id * 1000 })));
    const order = new PriorOrder();
    order.rebuild(ads);
    const pipeline = defaultPipeline();
    pipeline.stages.Targeting.k = 10;
    const ctx = makeContext({ ads, pipeline, popularity: new BoundedPopularity(), eligible: eligibleOf(ads.ids(), ads.capacity) });
    const out = new TargetingSource(ads, order).run(ctx) as Candidate[];
    assert.deepEqual(
      out.map((c) => c.id),
      Array.from({ length: 10 }, (_, i) => i),
    );
    assert.equal(ctx.notes.get('stop'), 'bound');
    assert.ok((ctx.notes.get('scored') as number) < 200, `scored ${ctx.notes.get('scored')}`);
  });

  it('when a walked ad is more similar than Ann\'s last pick (an approximate search that missed), then the walk drops Ann\'s bound and still finds the top ad', async () => {
    // score = bid x sigmoid(-5 + sim): ad 100 (bid 500, sim 6) is the best by far, but last in bid order.
    const rows: [number, number[]][] = Array.from({ length: 101 }, (_, id) => [id, id === 100 ? [6, 0] : id === 1 ? [2, 0] : id === 0 ? [1, 0] : [0, 1]]);
    const ads = adTable(rows.map(([id]) => ({ id, bid_micros: id === 100 ? 500 : 1000 - id, ctr_prior: 0.01, quality: 0.5 })));
    const vectors = new BoundedVectors(2, 'ip', rows);
    const pipeline = defaultPipeline();
    Object.assign(pipeline.stages.EarlyRanker.weights, { bias: -5, ann_similarity: 1, ctr_prior_logit: 0, quality: 0, popularity_rate: 0 });
    pipeline.stages.Targeting.k = 1;
    pipeline.stages.Ann.k = 1;
    const order = new PriorOrder();
    order.rebuild(ads);
    // Ann (wrongly) claims ad 0, similarity 1, is the most similar eligible ad.
    const wrongAnn = [{ id: 0, sources: SOURCE_BIT.Ann, annScore: 1, sourceRank: 0, score: NaN }];
    const base = makeContext({ ads, vectors, popularity: new BoundedPopularity(), pipeline, query: { embedding: Float32Array.from([1, 0]) }, eligible: eligibleOf(ads.ids(), ads.capacity) });
    const out = await new TargetingSource(ads, order).run({ ...base, sourced: { Ann: Promise.resolve(wrongAnn) } });
    assert.deepEqual(
      out.map((c) => c.id),
      [100],
    );
    assert.equal(base.notes.get('ann_bound'), 'refuted');
  });

  it('when max_steps runs out first, then it answers what it read and notes stop=cap', () => {
    const ads = adTable(Array.from({ length: 1000 }, (_, id) => ({ id, bid_micros: 1_000_000, ctr_prior: 0.01 + (id % 7) / 1000 })));
    const order = new PriorOrder();
    order.rebuild(ads);
    const pipeline = defaultPipeline();
    pipeline.stages.Targeting.k = 50;
    pipeline.stages.Targeting.max_steps = 100;
    const ctx = makeContext({ ads, pipeline, eligible: eligibleOf(ads.ids(), ads.capacity) });
    const out = new TargetingSource(ads, order).run(ctx) as Candidate[];
    assert.equal(ctx.notes.get('stop'), 'cap');
    assert.ok((ctx.notes.get('steps') as number) <= 100);
    assert.equal(out.length, 50);
  });
});

describe('PopularitySource', () => {
  it('when the request has a segment, then segment picks come first up to the share, then overall, all eligible', () => {
    const ads = adTable(Array.from({ length: 10 }, (_, id) => ({ id })));
    const cfg = popularitySchema.parse({ segment_attributes: ['country'] });
    const pop = new PopularityState(cfg);
    const t = Date.UTC(2026, 0, 1);
    const events = [];
    for (let id = 0; id < 10; id++) for (let n = 0; n <= id; n++) events.push({ id, adId: `ad${id}`, click: true, timestampMs: t, segments: id < 3 ? ['country=US'] : [] });
    pop.apply(pop.plan(events));
    const pipeline = defaultPipeline();
    pipeline.stages.Popularity.k = 4;
    pipeline.stages.Popularity.segment_share = 0.5;
    const ctx = makeContext({ ads, pipeline, popularity: pop, query: { attributes: { country: ['US'] } }, eligible: eligibleOf([0, 1, 2, 3, 5, 8], 10), nowMs: t });
    (ctx.state as { popularityConfig: typeof cfg }).popularityConfig = cfg;
    const out = new PopularitySource().run(ctx).map((c) => c.id);
    assert.deepEqual(out, [2, 1, 8, 5]);
    assert.equal(ctx.notes.get('from_segments'), 2);
  });
});

describe('AnnSource', () => {
  it('when the eligible set is small, then it returns only eligible ids with their similarity', async () => {
    const dim = 8;
    const ix = new HnswIndex({ dim, metric: 'ip', capacity: 256 });
    const n = 200;
    const vectors = new Float32Array(n * dim).map((_, i) => Math.sin(i * 0.37));
    ix.addBatch(Uint32Array.from({ length: n }, (_, i) => i), vectors);
    const ads = adTable(Array.from({ length: n }, (_, id) => ({ id })));
    const allowed = [5, 17, 99, 150];
    const ctx = makeContext({ ads, eligible: eligibleOf(allowed, n), query: { embedding: vectors.slice(17 * dim, 18 * dim) } });
    const out = await new AnnSource(() => ix).run(ctx);
    assert.equal(out.length, allowed.length);
    assert.ok(out.every((c) => isEligible(ctx.eligible!.bits, c.id) && Number.isFinite(c.annScore) && c.sources === SOURCE_BIT.Ann));
    assert.ok(out.every((c, i) => i === 0 || out[i - 1].annScore >= c.annScore));
    assert.equal(ctx.notes.get('plan'), 'scan');
  });

  it('when there is no embedding or nothing is eligible, then it returns nothing', async () => {
    const ix = new HnswIndex({ dim: 4, metric: 'ip' });
    ix.add(0, Float32Array.of(1, 0, 0, 0));
    const ads = adTable([{ id: 0 }]);
    assert.deepEqual(await new AnnSource(() => ix).run(makeContext({ ads })), []);
    assert.deepEqual(await new AnnSource(() => ix).run(makeContext({ ads, eligible: eligibleOf([], 1), query: { embedding: Float32Array.of(1, 0, 0, 0) } })), []);
  });
});
