import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { popularitySchema } from '../../../src/config/schema';
import { HnswIndex } from '../../../src/native/index';
import { SOURCE_BIT } from '../../../src/pipeline/types';
import { PopularityState } from '../../../src/serving/popularity';
import { PriorOrder, priorOf } from '../../../src/serving/prior-order';
import { AnnSource } from '../../../src/stages/sourcing/ann-source';
import { PopularitySource } from '../../../src/stages/sourcing/popularity-source';
import { TargetingSource } from '../../../src/stages/sourcing/targeting-source';
import { adTable, defaultPipeline, eligibleOf, makeContext } from '../../fixtures/stage-context';

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
          pipeline.stages.Targeting.k = k;
          const ctx = makeContext({ ads, pipeline, eligible: eligibleOf(ids, ads.capacity) });
          const got = new TargetingSource(ads, order).run(ctx).map((c) => c.id);
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
    const ctx = makeContext({ ads, eligible: eligibleOf([3, 7, 4000], ads.capacity) });
    const out = new TargetingSource(ads, order).run(ctx);
    assert.deepEqual(
      out.map((c) => c.id),
      [4000, 7, 3],
    );
    assert.equal(ctx.notes.get('method'), 'scan');
    assert.ok(out.every((c) => c.sources === SOURCE_BIT.Targeting));
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
