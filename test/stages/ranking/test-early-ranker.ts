import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { SOURCE_BIT } from '../../../src/pipeline/types';
import {
  clampedLogit,
  EarlyRanker,
  ecpm,
  features,
  pctr,
  prepareQuery,
  sigmoid,
} from '../../../src/stages/ranking/early-ranker';
import { adTable, cand, defaultPipeline, FixedPopularity, GatherVectors, makeContext, MapVectors, type AdSpec } from '../../fixtures/stage-context';

const { Ann, Targeting, Popularity } = SOURCE_BIT;

function rankerPipeline(keep?: number) {
  const p = defaultPipeline();
  if (keep !== undefined) p.stages.EarlyRanker = { ...p.stages.EarlyRanker, keep };
  return p;
}

describe('EarlyRanker', () => {
  describe('helpers', () => {
    it('when the sigmoid gets large or tiny arguments, then it stays finite and in [0, 1]', () => {
      assert.equal(sigmoid(0), 0.5);
      assert.equal(sigmoid(1000), 1);
      assert.equal(sigmoid(-1000), 0);
      assert.ok(!Number.isNaN(sigmoid(Infinity)) && !Number.isNaN(sigmoid(-Infinity)));
      assert.ok(Math.abs(sigmoid(2) + sigmoid(-2) - 1) < 1e-15);
      assert.ok(Math.abs(sigmoid(-30) - Math.exp(-30) / (1 + Math.exp(-30))) < 1e-25);
    });

    it('when ctr_prior is 0, 1 or NaN, then its logit is clamped and finite', () => {
      assert.equal(clampedLogit(0), Math.log(1e-4 / (1 - 1e-4)));
      assert.ok(Math.abs(clampedLogit(1) - Math.log((1 - 1e-4) / 1e-4)) < 1e-9);
      assert.equal(clampedLogit(NaN), clampedLogit(0));
      assert.equal(clampedLogit(0.5), 0);
    });

    it('when the weights are the defaults, then pCTR and eCPM match a hand computation', () => {
      const ads = adTable([{ id: 4, ctr_prior: 0.25, quality: 0.75, bid_micros: 2_000_000 }]);
      const popularity = new FixedPopularity(new Map([[4, 0.02]]));
      const f = features(ads, popularity, null, null, 0, cand(4, Ann | Popularity, { annScore: 0.5 }));
      assert.deepEqual(f, {
        ann_similarity: 0.5,
        ctr_prior_logit: Math.log(1 / 3),
        popularity_rate: 0.02,
        quality: 0.75,
        source_ann: 1,
        source_targeting: 0,
        source_popularity: 1,
      });
      // z = -1 + 2*0.5 + ln(1/3) + 5*0.02 + 0.5*0.75 + 0*1 + 0*1 = -0.6236122886681098 (source weights default to 0)
      const p = pctr(defaultPipeline().stages.EarlyRanker.weights, f);
      assert.ok(Math.abs(p - 0.3489603392201232) < 1e-12, `pCTR ${p}`);
      assert.ok(Math.abs(ecpm(2_000_000, p) - 697.9206784402464) < 1e-9);
    });

    it('when the query is prepared for cos, then it is normalised once; an empty, zero or mismatched query gives none', () => {
      const vectors = new MapVectors(2, 'cos');
      const q = prepareQuery(Float32Array.from([3, 4]), vectors)!;
      assert.deepEqual([...q.values].map((x) => Math.round(x * 1e6) / 1e6), [0.6, 0.8]);
      assert.equal(prepareQuery(Float32Array.from([0, 0]), vectors), null);
      assert.equal(prepareQuery(Float32Array.from([1, 2, 3]), vectors), null);
      assert.equal(prepareQuery(null, vectors), null);
      assert.equal(prepareQuery(Float32Array.from([1, 2]), null), null);
    });
  });

  describe('run', () => {
    it('when the vector source offers a batch read, then one gather gives the same scores as per-id reads, for every metric', () => {
      fc.assert(
        fc.property(
          fc.constantFrom('ip' as const, 'cos' as const, 'l2' as const),
          fc.array(fc.array(fc.float({ min: -2, max: 2, noNaN: true }), { minLength: 3, maxLength: 3 }), { minLength: 1, maxLength: 20 }),
          fc.array(fc.float({ min: -2, max: 2, noNaN: true }), { minLength: 3, maxLength: 3 }),
          (metric, rows, q) => {
            const specs: AdSpec[] = rows.map((_, id) => ({ id }));
            const ads = adTable(specs);
            const entries = rows.map((r, id) => [id, r] as [number, number[]]);
            const a = rows.map((_, id) => cand(id, Targeting));
            const b = rows.map((_, id) => cand(id, Targeting));
            const embedding = Float32Array.from(q);
            new EarlyRanker().run(makeContext({ ads, vectors: new MapVectors(3, metric, entries), query: { embedding } }), a);
            const gv = new GatherVectors(3, metric, entries);
            new EarlyRanker().run(makeContext({ ads, vectors: gv, query: { embedding } }), b);
            assert.equal(gv.gathers, 1);
            for (let i = 0; i < a.length; i++) assert.ok(Object.is(a[i].score, b[i].score) || Math.abs(a[i].score - b[i].score) <= 1e-12 * Math.abs(a[i].score));
          },
        ),
        { numRuns: 100 },
      );
    });

    it('when the inputs are scored, then each score is bid/1e6 x pCTR x 1000 and the rank count is noted', async () => {
      const ads = adTable([{ id: 0, ctr_prior: 0.25, quality: 0.75, bid_micros: 2_000_000 }]);
      const ctx = makeContext({ ads, popularity: new FixedPopularity(new Map([[0, 0.02]])) });
      const [c] = await new EarlyRanker().run(ctx, [cand(0, Ann | Popularity, { annScore: 0.5 })]);
      assert.ok(Math.abs(c.score - 697.9206784402464) < 1e-9);
      assert.equal(ctx.notes.get('ranked'), 1);
    });

    it('when two ads differ only by bid, then the higher bid ranks first', async () => {
      const ads = adTable([
        { id: 0, bid_micros: 1_000_000 },
        { id: 1, bid_micros: 3_000_000 },
        { id: 2, bid_micros: 2_000_000 },
      ]);
      const out = await new EarlyRanker().run(makeContext({ ads }), [0, 1, 2].map((id) => cand(id, Targeting)));
      assert.deepEqual(
        out.map((c) => c.id),
        [1, 2, 0],
      );
      assert.ok(Math.abs(out[0].score / out[2].score - 3) < 1e-12, 'eCPM is linear in the bid');
    });

    it('when the popularity rate or quality is higher, other things equal, then the ad ranks higher', async () => {
      const ads = adTable([{ id: 0 }, { id: 1 }, { id: 2, quality: 0.9 }]);
      const popularity = new FixedPopularity(new Map([[1, 0.05]]));
      const out = await new EarlyRanker().run(makeContext({ ads, popularity }), [0, 1, 2].map((id) => cand(id, Targeting)));
      assert.deepEqual(
        out.map((c) => c.id),
        [1, 2, 0],
      );
    });

    it('when keep is smaller than the input, then the best keep are returned in order, ties by id ascending', async () => {
      const specs: AdSpec[] = [];
      for (let id = 0; id < 20; id++) specs.push({ id, bid_micros: (id % 4) * 1_000_000 });
      const ads = adTable(specs);
      const input = [7, 3, 19, 11, 15, 0, 2, 6, 10, 14, 18, 1, 5, 9, 13, 17, 4, 8, 12, 16].map((id) => cand(id, Targeting));
      const out = await new EarlyRanker().run(makeContext({ ads, pipeline: rankerPipeline(6) }), input);
      assert.deepEqual(
        out.map((c) => c.id),
        [3, 7, 11, 15, 19, 2],
      );
      assert.equal(input.length, 20, 'the input array is left as it was');
    });

    it('when scores are random with many ties, then any keep gives the prefix of the full order', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.uniqueArray(fc.nat(300), { minLength: 1, maxLength: 120 }),
          fc.array(fc.constantFrom(0, 1, 2, 3), { minLength: 120, maxLength: 120 }),
          fc.integer({ min: 1, max: 130 }),
          async (idList, bids, keep) => {
            const ads = adTable(idList.map((id, i) => ({ id, bid_micros: bids[i] * 500_000 })));
            const full = await new EarlyRanker().run(makeContext({ ads, pipeline: rankerPipeline(100_000) }), idList.map((id) => cand(id, Targeting)));
            for (let i = 1; i < full.length; i++) {
              const a = full[i - 1];
              const b = full[i];
              assert.ok(a.score > b.score || (a.score === b.score && a.id < b.id), 'descending, ties by id');
            }
            const top = await new EarlyRanker().run(makeContext({ ads, pipeline: rankerPipeline(keep) }), idList.map((id) => cand(id, Targeting)));
            assert.deepEqual(
              top.map((c) => c.id),
              full.slice(0, keep).map((c) => c.id),
            );
          },
        ),
        { numRuns: 300 },
      );
    });

    for (const [metric, want] of [
      ['ip', 3 * 1 + 4 * 2],
      ['cos', (3 * 1 + 4 * 2) / (5 * Math.sqrt(5))],
      ['l2', -((3 - 1) ** 2 + (4 - 2) ** 2)],
    ] as const) {
      it(`when a candidate has no Ann score and the metric is ${metric}, then its similarity is computed from the vectors`, () => {
        const ads = adTable([{ id: 0 }, { id: 1 }]);
        const vectors = new MapVectors(2, metric, [[0, [1, 2]]]);
        const ctx = makeContext({ ads, vectors, query: { embedding: Float32Array.from([3, 4]) } });
        const q = prepareQuery(ctx.query.embedding, vectors);
        const popularity = ctx.state.popularity;
        const got = features(ads, popularity, vectors, q, 0, cand(0, Targeting)).ann_similarity;
        assert.ok(Math.abs(got - want) < 1e-5, `${metric}: ${got} vs ${want}`);
        assert.equal(features(ads, popularity, vectors, q, 0, cand(0, Ann, { annScore: 0.125 })).ann_similarity, 0.125, 'the Ann score wins');
        assert.equal(features(ads, popularity, vectors, q, 0, cand(1, Targeting)).ann_similarity, 0, 'no vector: 0');
        assert.equal(features(ads, popularity, vectors, null, 0, cand(0, Targeting)).ann_similarity, 0, 'no query: 0');
      });
    }

    it('when a similar ad and an orthogonal one compete without Ann scores, then run() ranks the similar one first', async () => {
      const ads = adTable([{ id: 0 }, { id: 1 }]);
      const vectors = new MapVectors(2, 'cos', [
        [0, [0, 1]],
        [1, [1, 0]],
      ]);
      const ctx = makeContext({ ads, vectors, query: { embedding: Float32Array.from([10, 0.5]) } });
      const out = await new EarlyRanker().run(ctx, [cand(0, Targeting), cand(1, Targeting)]);
      assert.deepEqual(
        out.map((c) => c.id),
        [1, 0],
      );
    });

    it('when there is no embedding or no vectors, then the similarity is 0 and ranking still works', async () => {
      const ads = adTable([{ id: 0, bid_micros: 5 }, { id: 1, bid_micros: 7 }]);
      const out = await new EarlyRanker().run(makeContext({ ads, vectors: null, query: { embedding: Float32Array.from([1, 1]) } }), [cand(0, Popularity), cand(1, Popularity)]);
      assert.deepEqual(
        out.map((c) => c.id),
        [1, 0],
      );
      for (const c of out) assert.ok(Number.isFinite(c.score));
    });
  });
});
