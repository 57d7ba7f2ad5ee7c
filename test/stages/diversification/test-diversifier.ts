import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import type { DiversifierStageConfig } from '../../../src/config/schema';
import { SOURCE_BIT, type Candidate } from '../../../src/pipeline/types';
import { availableSimdLevels, internals, mmrSelect, type SimdLevel } from '../../../src/native/index';
import { applyCaps, Diversifier, mmrOrder, mmrPackedJs } from '../../../src/stages/diversification/diversifier';
import { adTable, cand, defaultPipeline, makeContext, GatherVectors, MapVectors, type AdSpec } from '../../fixtures/stage-context';

function pipelineWith(d: Partial<DiversifierStageConfig>) {
  const p = defaultPipeline();
  p.stages.Diversifier = { ...p.stages.Diversifier, ...d };
  return p;
}

/** Candidates with the given ids and descending scores 100, 99, ... (ranked input). */
function ranked(ids: number[]): Candidate[] {
  return ids.map((id, i) => cand(id, SOURCE_BIT.Ann, { score: 100 - i, sourceRank: i }));
}

const idsOf = (cs: Candidate[]) => cs.map((c) => c.id);

/** MMR by its definition: every step recomputes each remaining candidate's max cosine to every pick. */
/** Largest shortfall of an MMR order from greedy: at each step, best value minus the chosen one (float64), given the order's own earlier picks. */
function mmrShortfall(pool: Candidate[], vectors: MapVectors, lambda: number, order: number[]): number {
  const unit = (id: number) => {
    const v = vectors.get(id);
    if (!v) return null;
    let ss = 0;
    for (const x of v) ss += x * x;
    return ss > 0 ? Array.from(v, (x) => x / Math.sqrt(ss)) : null;
  };
  const cos = (a: number, b: number) => {
    const x = unit(pool[a].id);
    const y = unit(pool[b].id);
    return x && y ? x.reduce((s, v, j) => s + v * y[j], 0) : 0;
  };
  const maxScore = Math.max(0, ...pool.map((c) => c.score));
  const value = (i: number, picked: number[]) =>
    lambda * (maxScore > 0 && pool[i].score > 0 ? pool[i].score / maxScore : 0) - (picked.length === 0 ? 0 : (1 - lambda) * Math.max(...picked.map((p) => cos(p, i))));
  let worst = 0;
  for (let k = 0; k < order.length; k++) {
    const picked = order.slice(0, k);
    let best = -Infinity;
    for (let i = 0; i < pool.length; i++) if (!picked.includes(i)) best = Math.max(best, value(i, picked));
    worst = Math.max(worst, best - value(order[k], picked));
  }
  return worst;
}

function bruteForceMmr(pool: Candidate[], vectors: MapVectors, lambda: number, picks: number): number[] {
  const inv = (v: Float32Array | undefined) => {
    if (!v) return 0;
    let ss = 0;
    for (const x of v) ss += x * x;
    return ss > 0 ? 1 / Math.sqrt(ss) : 0;
  };
  const cosine = (s: Candidate, c: Candidate) => {
    const a = vectors.get(s.id);
    const b = vectors.get(c.id);
    if (!a || !b || inv(a) === 0 || inv(b) === 0) return 0;
    let dot = 0;
    for (let j = 0; j < a.length; j++) dot += a[j] * b[j];
    return dot * inv(a) * inv(b);
  };
  const maxScore = Math.max(0, ...pool.map((c) => c.score));
  const picked: number[] = [];
  while (picked.length < Math.min(picks, pool.length)) {
    let best = -1;
    let bestValue = -Infinity;
    for (let i = 0; i < pool.length; i++) {
      if (picked.includes(i)) continue;
      const rel = maxScore > 0 && pool[i].score > 0 ? pool[i].score / maxScore : 0;
      const sim = picked.length === 0 ? 0 : Math.max(...picked.map((p) => cosine(pool[p], pool[i])));
      const value = lambda * rel - (picked.length === 0 ? 0 : (1 - lambda) * sim);
      if (value > bestValue || best < 0) {
        best = i;
        bestValue = value;
      }
    }
    picked.push(best);
  }
  return picked;
}

describe('Diversifier', () => {
  it('when an advertiser has more ads than its cap, then only its best max_per_advertiser are kept and the rest are counted', async () => {
    const specs: AdSpec[] = [0, 1, 2, 3, 4, 5].map((id) => ({ id, advertiser_id: id < 4 ? 'big' : `solo${id}` }));
    const ctx = makeContext({ ads: adTable(specs), pipeline: pipelineWith({ max_per_advertiser: 2, mmr_depth: 0 }) });
    const out = await new Diversifier().run(ctx, ranked([0, 1, 4, 2, 3, 5]));
    assert.deepEqual(idsOf(out), [0, 1, 4, 5]);
    assert.equal(ctx.notes.get('capped'), 2);
  });

  it('when a category has more ads than its cap, then only its best max_per_category are kept', async () => {
    const specs: AdSpec[] = [0, 1, 2, 3, 4].map((id) => ({ id, category: id % 2 === 0 ? 'gaming' : 'finance' }));
    const ctx = makeContext({ ads: adTable(specs), pipeline: pipelineWith({ max_per_category: 1, mmr_depth: 0 }) });
    assert.deepEqual(idsOf(await new Diversifier().run(ctx, ranked([0, 1, 2, 3, 4]))), [0, 1]);
  });

  it('when an ad fails one cap, then it does not count towards the other', async () => {
    // 1 is dropped by its advertiser's cap; 2 shares its category and is still kept.
    const specs: AdSpec[] = [
      { id: 0, advertiser_id: 'a', category: 'x' },
      { id: 1, advertiser_id: 'a', category: 'y' },
      { id: 2, advertiser_id: 'b', category: 'y' },
    ];
    const ctx = makeContext({ ads: adTable(specs), pipeline: pipelineWith({ max_per_advertiser: 1, max_per_category: 1, mmr_depth: 0 }) });
    assert.deepEqual(idsOf(await new Diversifier().run(ctx, ranked([0, 1, 2]))), [0, 2]);
  });

  it('when a table gives keys the counter arrays cannot index (huge, negative, fractional), then applyCaps answers as with dense keys', () => {
    const dense = { advertiserKey: (id: number) => id % 3, categoryKey: (id: number) => id % 5 };
    const odd = { advertiserKey: (id: number) => [1e9, -5, 0.5][id % 3], categoryKey: (id: number) => [2 ** 40, -7, 1.25, 3, 4][id % 5] };
    const input = ranked([...Array(40).keys()]);
    for (const [ma, mc] of [[1, 1], [2, 3], [3, 100], [100, 2]]) {
      const a = { advertiser: 0, category: 0 };
      const b = { advertiser: 0, category: 0 };
      assert.deepEqual(idsOf(applyCaps(input, odd, ma, mc, b)), idsOf(applyCaps(input, dense, ma, mc, a)));
      assert.deepEqual(b, a);
    }
  });

  const NEAR: [number, number[]][] = [
    [0, [1, 0, 0]],
    [1, [0.999, 0.02, 0]],
    [2, [0.998, 0, 0.03]],
    [3, [0, 1, 0]],
    [4, [0, 0, 1]],
  ];

  it('when lambda is 1, then the score order is kept even with near-duplicate vectors', async () => {
    const ctx = makeContext({ ads: adTable(NEAR.map(([id]) => ({ id }))), vectors: new MapVectors(3, 'ip', NEAR), pipeline: pipelineWith({ mmr_lambda: 1 }) });
    assert.deepEqual(idsOf(await new Diversifier().run(ctx, ranked([0, 1, 2, 3, 4]))), [0, 1, 2, 3, 4]);
  });

  it('when near-duplicates lead and lambda is 0.5, then a diverse lower-scored ad moves up', async () => {
    const ctx = makeContext({ ads: adTable(NEAR.map(([id]) => ({ id }))), vectors: new MapVectors(3, 'ip', NEAR), pipeline: pipelineWith({ mmr_lambda: 0.5 }) });
    const input = ranked([0, 1, 2, 3, 4]);
    const scores = input.map((c) => c.score);
    const out = await new Diversifier().run(ctx, input);
    assert.deepEqual(idsOf(out), [0, 3, 4, 1, 2]);
    assert.deepEqual(
      input.map((c) => c.score),
      scores,
      'scores stay the eCPM',
    );
  });

  it('when vectors are not normalised (ip metric), then MMR still uses the cosine', async () => {
    const rows: [number, number[]][] = [
      [0, [10, 0]],
      [1, [0.1, 0]],
      [2, [0, 3]],
    ];
    const ctx = makeContext({ ads: adTable(rows.map(([id]) => ({ id }))), vectors: new MapVectors(2, 'ip', rows), pipeline: pipelineWith({ mmr_lambda: 0.5 }) });
    assert.deepEqual(idsOf(await new Diversifier().run(ctx, ranked([0, 1, 2]))), [0, 2, 1]);
  });

  it('when mmr_depth is smaller than the list, then only the head is re-ordered and the rest follow in order', async () => {
    const ctx = makeContext({ ads: adTable(NEAR.map(([id]) => ({ id }))), vectors: new MapVectors(3, 'ip', NEAR), pipeline: pipelineWith({ mmr_lambda: 0.5, mmr_depth: 3 }) });
    // The head [0, 1, 2] is all near-duplicates, so MMR keeps its order; 3 and 4 are beyond the depth.
    assert.deepEqual(idsOf(await new Diversifier().run(ctx, ranked([0, 1, 2, 3, 4]))), [0, 1, 2, 3, 4]);
    const ctx2 = makeContext({ ads: adTable(NEAR.map(([id]) => ({ id }))), vectors: new MapVectors(3, 'ip', NEAR), pipeline: pipelineWith({ mmr_lambda: 0.5, mmr_depth: 3 }) });
    assert.deepEqual(idsOf(await new Diversifier().run(ctx2, ranked([0, 1, 3, 2, 4]))), [0, 3, 1, 2, 4]);
  });

  it('when a vector is missing, then it counts as similarity 0', () => {
    const vectors = new MapVectors(3, 'ip', [
      [0, [1, 0, 0]],
      [1, [1, 0, 0]],
    ]);
    // 2 has no vector: with lambda 0.5 it beats the exact duplicate 1 despite a lower score.
    const order = mmrOrder(ranked([0, 1, 2]), 3, 3, 0.5, vectors);
    assert.deepEqual(order, [0, 2, 1]);
  });

  it('when MMR values tie, then the earlier candidate wins', () => {
    const vectors = new MapVectors(2, 'ip', []);
    const pool = [0, 1, 2].map((id) => cand(id, SOURCE_BIT.Ann, { score: 5 }));
    assert.deepEqual(mmrOrder(pool, 3, 3, 0.3, vectors), [0, 1, 2]);
    assert.deepEqual(mmrOrder(pool, 3, 3, 0, vectors), [0, 1, 2]);
  });

  it('when numResults is smaller than the list, then the answer is truncated to it', async () => {
    const ads = adTable(NEAR.map(([id]) => ({ id })));
    const vectors = new MapVectors(3, 'ip', NEAR);
    const withMmr = makeContext({ ads, vectors, query: { numResults: 2 }, pipeline: pipelineWith({ mmr_lambda: 0.5 }) });
    assert.deepEqual(idsOf(await new Diversifier().run(withMmr, ranked([0, 1, 2, 3, 4]))), [0, 3]);
    const without = makeContext({ ads, vectors: null, query: { numResults: 3 } });
    assert.deepEqual(idsOf(await new Diversifier().run(without, ranked([0, 1, 2, 3, 4]))), [0, 1, 2]);
  });

  it('when inputs are random, then the answer has no duplicates, honours both caps and numResults, and lambda 1 is the capped prefix, otherwise brute-force MMR', async () => {
    const world = fc.record({
      n: fc.integer({ min: 0, max: 60 }),
      advertisers: fc.array(fc.nat(5), { minLength: 60, maxLength: 60 }),
      categories: fc.array(fc.nat(4), { minLength: 60, maxLength: 60 }),
      vecs: fc.array(fc.array(fc.integer({ min: -3, max: 3 }), { minLength: 4, maxLength: 4 }), { minLength: 60, maxLength: 60 }),
      missing: fc.array(fc.boolean(), { minLength: 60, maxLength: 60 }),
      maxAdv: fc.integer({ min: 1, max: 6 }),
      maxCat: fc.integer({ min: 1, max: 12 }),
      lambda: fc.constantFrom(0, 0.3, 0.5, 0.7, 0.99, 1),
      depth: fc.integer({ min: 0, max: 70 }),
      numResults: fc.integer({ min: 1, max: 70 }),
    });
    await fc.assert(
      fc.asyncProperty(world, async (w) => {
        const specs: AdSpec[] = [];
        const rows: [number, number[]][] = [];
        for (let id = 0; id < w.n; id++) {
          specs.push({ id, advertiser_id: `a${w.advertisers[id]}`, category: `c${w.categories[id]}` });
          if (!w.missing[id]) rows.push([id, w.vecs[id]]);
        }
        const ads = adTable(specs);
        const input = ranked([...Array(w.n).keys()]);
        const pipeline = pipelineWith({ max_per_advertiser: w.maxAdv, max_per_category: w.maxCat, mmr_lambda: w.lambda, mmr_depth: w.depth });
        const vectors = new MapVectors(4, 'ip', rows);
        const ctx = makeContext({ ads, vectors, pipeline, query: { numResults: w.numResults } });
        const out = await new Diversifier().run(ctx, input);
        const batched = await new Diversifier().run(makeContext({ ads, vectors: new GatherVectors(4, 'ip', rows), pipeline, query: { numResults: w.numResults } }), input);
        assert.deepEqual(new Set(idsOf(batched)).size, batched.length, 'no duplicates on the batch (SIMD) path');
        assert.equal(batched.length, out.length);
        assert.equal(new Set(idsOf(out)).size, out.length, 'no duplicates');
        const perAdv = new Map<string, number>();
        const perCat = new Map<string, number>();
        for (const c of out) {
          assert.equal(c, input[c.id], 'input objects pass through');
          perAdv.set(ads.advertiserId(c.id), (perAdv.get(ads.advertiserId(c.id)) ?? 0) + 1);
          perCat.set(ads.category(c.id), (perCat.get(ads.category(c.id)) ?? 0) + 1);
        }
        for (const v of perAdv.values()) assert.ok(v <= w.maxAdv);
        for (const v of perCat.values()) assert.ok(v <= w.maxCat);
        // The capped list, as the spec defines it.
        const capped: number[] = [];
        const a = new Map<string, number>();
        const k = new Map<string, number>();
        for (const c of input) {
          const an = a.get(ads.advertiserId(c.id)) ?? 0;
          const kn = k.get(ads.category(c.id)) ?? 0;
          if (an >= w.maxAdv || kn >= w.maxCat) continue;
          a.set(ads.advertiserId(c.id), an + 1);
          k.set(ads.category(c.id), kn + 1);
          capped.push(c.id);
        }
        assert.equal(ctx.notes.get('capped'), w.n - capped.length);
        assert.equal(out.length, Math.min(w.numResults, capped.length));
        const outIds = idsOf(out);
        if (w.lambda === 1 || w.depth === 0) assert.deepEqual(outIds, capped.slice(0, w.numResults));
        else {
          const head = capped.slice(0, w.depth).map((id) => input[id]);
          const want = bruteForceMmr(head, vectors, w.lambda, w.numResults).map((i) => head[i].id);
          assert.deepEqual(outIds.slice(0, want.length), want, 'MMR equals its brute-force definition');
          // The batch path computes similarities in float32 SIMD: it may break near-ties differently, never by more than rounding.
          const at = new Map(head.map((c, i) => [c.id, i]));
          const batchedHead = idsOf(batched).slice(0, want.length).map((id) => at.get(id)!);
          assert.ok(mmrShortfall(head, vectors, w.lambda, batchedHead) <= 1e-5, 'the batch path is greedy MMR up to float32 rounding');
        }
        // MMR only permutes the head: each answer id is within the first `depth` of the capped list, or in its place after it.
        const head = new Set(capped.slice(0, w.depth));
        for (let i = 0; i < outIds.length; i++) {
          if (i < Math.min(w.depth, capped.length)) assert.ok(head.has(outIds[i]));
          else assert.equal(outIds[i], capped[i]);
        }
      }),
      { numRuns: 300 },
    );
  });

  describe('native MMR (one call) against the JavaScript loop', () => {
    /** Random MMR inputs: ties in scores (repeats, zeros, negatives), zero and duplicate rows, small-integer rows (exact dots, tied similarities) or random floats. */
    const mmrInput = fc
      .record({
        m: fc.integer({ min: 1, max: 300 }),
        dim: fc.integer({ min: 1, max: 96 }),
        wantFrac: fc.double({ min: 0, max: 1, noNaN: true }),
        lambda: fc.oneof(fc.constantFrom(0, 0.3, 0.5, 0.7, 0.99, 1), fc.double({ min: 0, max: 1, noNaN: true })),
        integer: fc.boolean(),
        odd: fc.boolean(),
        seed: fc.integer(),
        slack: fc.nat(3),
      })
      .map((w) => {
        let s = w.seed >>> 0 || 1;
        const next = () => {
          s ^= s << 13;
          s >>>= 0;
          s ^= s >>> 17;
          s ^= s << 5;
          s >>>= 0;
          return s / 4294967296;
        };
        // Rows for m + slack candidates (the packed scratch is often longer than the pool).
        const rows = new Float32Array((w.m + w.slack) * w.dim);
        const scores = new Float64Array(w.m + w.slack);
        for (let i = 0; i < w.m + w.slack; i++) {
          const r = next();
          scores[i] = r < 0.15 ? 0 : r < 0.2 ? -1 : Math.floor(next() * 6) * 0.25 + (w.integer ? 0 : next() * 1e-3);
          // Now and then a non-finite score or row element (NaN relevance or similarity): both sides must still agree.
          if (w.odd && r > 0.2 && r < 0.23) scores[i] = r < 0.22 ? Infinity : NaN;
          const o = i * w.dim;
          if (w.odd && r > 0.88 && r <= 0.9) rows[o + Math.floor(next() * w.dim)] = r < 0.89 ? NaN : Infinity;
          if (r > 0.9) continue; // a missing vector: zeros
          if (i > 0 && r > 0.8) {
            rows.copyWithin(o, o - w.dim, o);
            continue;
          }
          for (let j = 0; j < w.dim; j++) rows[o + j] = w.integer ? Math.floor(next() * 7) - 3 : next() * 2 - 1;
        }
        return { ...w, want: Math.max(1, Math.round(w.wantFrac * w.m)), rows, scores };
      });
    const levels = availableSimdLevels();

    it('when the addon is current, then it offers the one-call MMR', () => {
      assert.equal(typeof mmrSelect, 'function');
      assert.equal(typeof internals.mmr, 'function');
    });

    for (const level of levels) {
      it(`when inputs are random (${level} kernels), then the native call picks the same rows in the same order as the JavaScript loop, and leaves the rows normalised alike`, () => {
        const mmr = internals.mmr!;
        const rowsDot = (q: Float32Array, r: Float32Array) => internals.kernelRows(level as SimdLevel, 'dot', q, r);
        fc.assert(
          fc.property(mmrInput, (w) => {
            const jsRows = w.rows.slice();
            const nativeRows = w.rows.slice();
            const want = mmrPackedJs(w.scores, w.m, w.want, w.lambda, jsRows.subarray(0, w.m * w.dim), w.dim, rowsDot);
            const order = new Uint32Array(w.want + 1).fill(0xffffffff);
            const n = mmr(level as SimdLevel, nativeRows, w.dim, w.m, w.scores, w.lambda, w.want, order);
            assert.equal(n, w.want);
            assert.deepEqual(Array.from(order.subarray(0, n)), want);
            assert.equal(order[n], 0xffffffff, 'nothing written past the picks');
            assert.deepEqual(nativeRows, jsRows, 'rows normalised bit for bit as the JavaScript loop does, the slack untouched');
          }),
          { numRuns: 400 },
        );
      });
    }

    it('when mmrOrder takes the batch path, then its picks equal the JavaScript loop over the same gathered rows', () => {
      fc.assert(
        fc.property(mmrInput, fc.integer({ min: 1, max: 320 }), (w, depth) => {
          const rows: [number, number[]][] = [];
          for (let i = 0; i < w.m; i++) rows.push([i, Array.from(w.rows.subarray(i * w.dim, (i + 1) * w.dim))]);
          const vectors = new GatherVectors(w.dim, 'ip', rows);
          const pool = Array.from({ length: w.m }, (_, i) => cand(i, SOURCE_BIT.Ann, { score: w.scores[i] }));
          const got = mmrOrder(pool, depth, w.want, w.lambda, vectors);
          const m = Math.min(depth, w.m);
          const packed = new Float32Array(m * w.dim);
          vectors.gather(Uint32Array.from({ length: m }, (_, i) => i), packed);
          assert.deepEqual(got, mmrPackedJs(w.scores, m, Math.min(w.want, m), w.lambda, packed, w.dim));
        }),
        { numRuns: 200 },
      );
    });

    it('when the native call gets bad arguments, then it throws coded errors', () => {
      const mmr = internals.mmr!;
      const rows = new Float32Array(8);
      const scores = new Float64Array(4);
      const order = new Uint32Array(4);
      const code = (fn: () => unknown, want: string) => assert.throws(fn, (e: NodeJS.ErrnoException) => e.code === want);
      code(() => mmr(undefined, rows, 2, 5, scores, 0.5, 2, order), 'ERR_DIMENSION_MISMATCH');
      code(() => mmr(undefined, rows, 0, 1, scores, 0.5, 1, order), 'ERR_INVALID_ARG');
      code(() => mmr(undefined, rows, 2, 4, new Float64Array(3), 0.5, 2, order), 'ERR_INVALID_ARG');
      code(() => mmr(undefined, rows, 2, 4, scores, 0.5, 4, new Uint32Array(3)), 'ERR_INVALID_ARG');
      code(() => mmr(undefined, rows, 2, 4, Array.from(scores) as unknown as Float64Array, 0.5, 2, order), 'ERR_INVALID_ARG');
      code(() => mmr('bogus' as SimdLevel, rows, 2, 4, scores, 0.5, 2, order), 'ERR_INVALID_ARG');
      assert.equal(mmr(undefined, rows, 2, 4, scores, 0.5, 0, new Uint32Array(0)), 0);
    });
  });
});
