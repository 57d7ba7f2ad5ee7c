/**
 * train-ranker: the IRLS fit against reference fits computed outside this code (scipy, by
 * test/eval/reference/train_ranker_reference.py), recovery of known weights from simulated data,
 * exact AUC against the pair definition, calibration buckets, log-loss, the held-out split and
 * the example reader.
 */
import { strict as assert } from 'node:assert';
import {
  auc,
  calibration,
  cholesky,
  choleskySolve,
  Dataset,
  ExampleError,
  FEATURE_NAMES,
  fit,
  FitError,
  isHeldOut,
  logLoss,
  parseExample,
  predict,
  type FeatureName,
} from '../../src/eval/train-ranker';
import type { RankerFeatures, RankerWeights } from '../../src/stages/ranking/early-ranker';
import { drawFeatures, lcg } from '../fixtures/examples';

/** The reference script's dataset: same draws in the same order. */
function referenceDataset(n: number, seed: number): Dataset {
  const u = lcg(seed);
  const d = new Dataset();
  for (let i = 0; i < n; i++) {
    const f: RankerFeatures = {
      ann_similarity: 2 * u() - 1,
      ctr_prior_logit: -4 + 3 * u(),
      popularity_rate: 0.04 * u(),
      quality: u(),
      source_ann: u() < 0.5 ? 1 : 0,
      source_targeting: u() < 0.4 ? 1 : 0,
      source_popularity: u() < 0.3 ? 1 : 0,
    };
    const eta =
      -0.5 + 1.5 * f.ann_similarity + 0.6 * f.ctr_prior_logit + 12 * f.popularity_rate + 0.8 * f.quality + 0.4 * f.source_ann - 0.3 * f.source_targeting + 0.2 * f.source_popularity;
    const p = 1 / (1 + Math.exp(-eta));
    d.push(f, u() < p ? 1 : 0);
  }
  return d;
}

const zeros = { ann_similarity: 0, ctr_prior_logit: 0, popularity_rate: 0, quality: 0, source_ann: 0, source_targeting: 0, source_popularity: 0 };

/**
 * Printed by `python3 test/eval/reference/train_ranker_reference.py` (numpy 2.4.6, scipy 1.17.1;
 * L-BFGS-B and trust-exact agreeing within 1e-6; the one of smaller gradient printed, to 12 digits), pasted here. The penalty is on standardised
 * weights: (l2 / 2) x sum of (sd_j x w_j)^2, population sd over the rows.
 */
const REFERENCE = {
  checksums: { rows: 400, positives: 108, sumX: [12.451372027397156, -1028.6825777105987, 8.328237774670118, 208.97425884380937, 221.0, 175.0, 115.0] },
  allL2_1: {
    bias: -1.40485043559,
    ann_similarity: 1.38574526971,
    ctr_prior_logit: 0.429980999667,
    popularity_rate: 19.8442791098,
    quality: 1.10250324592,
    source_ann: 0.834198720613,
    source_targeting: -0.460790264705,
    source_popularity: 0.00101419189772,
  },
  allL2_1Measures: { logLoss: 0.496874280654, auc: 0.752441653983 },
  allL2_0: {
    bias: -1.41249458735,
    ann_similarity: 1.4164012545,
    ctr_prior_logit: 0.44154974123,
    popularity_rate: 20.4382172327,
    quality: 1.12310999102,
    source_ann: 0.850818828329,
    source_targeting: -0.471794719172,
    source_popularity: 0.00108744081929,
  },
  allL2_50: {
    bias: -1.22750105084,
    ann_similarity: 0.738606411817,
    ctr_prior_logit: 0.20561085487,
    popularity_rate: 8.70193111204,
    quality: 0.642528755411,
    source_ann: 0.468736890229,
    source_targeting: -0.239591956943,
    source_popularity: -0.00901123823972,
  },
  subsetL2_10: { ...zeros, bias: -2.05770647315, ann_similarity: 1.09132281692, quality: 0.931311685203, source_ann: 0.734710152997 },
};

function assertWeightsClose(got: RankerWeights, want: RankerWeights, tol: number): void {
  for (const k of ['bias', ...FEATURE_NAMES] as const) {
    assert.ok(Math.abs(got[k] - want[k]) <= tol * Math.max(1, Math.abs(want[k])), `${k}: got ${got[k]}, want ${want[k]} (tolerance ${tol})`);
  }
}

describe('train-ranker fit', () => {
  const data = referenceDataset(400, 12345);

  it('when the dataset is rebuilt, then it is the one the reference script fitted (checksums)', () => {
    assert.equal(data.size, REFERENCE.checksums.rows);
    assert.equal(data.positives(), REFERENCE.checksums.positives);
    const sums = new Array(FEATURE_NAMES.length).fill(0);
    data.x.forEach((v, i) => (sums[i % FEATURE_NAMES.length] += v));
    sums.forEach((s, j) => assert.ok(Math.abs(s - REFERENCE.checksums.sumX[j]) < 1e-9, `sum of ${FEATURE_NAMES[j]}: ${s}`));
  });

  it('when fitted with every feature and l2 1, then the weights match the scipy reference within 1e-9', () => {
    const r = fit(data, { l2: 1 });
    assert.ok(r.converged);
    assert.ok(r.iterations < 15, `${r.iterations} iterations`);
    assertWeightsClose(r.weights, REFERENCE.allL2_1, 1e-9);
  });

  it('when fitted without regularisation, then the weights match the scipy reference within 1e-9', () => {
    const r = fit(data, { l2: 0 });
    assert.ok(r.converged);
    assertWeightsClose(r.weights, REFERENCE.allL2_0, 1e-9);
  });

  it('when fitted with a strong l2 (50), then the weights (each shrunk by its own feature scale) match the scipy reference within 1e-9', () => {
    const r = fit(data, { l2: 50 });
    assert.ok(r.converged);
    assertWeightsClose(r.weights, REFERENCE.allL2_50, 1e-9);
  });

  it('when fitted on a feature subset with l2 10, then those weights match the reference within 1e-9 and the others are exactly 0', () => {
    const features: FeatureName[] = ['ann_similarity', 'quality', 'source_ann'];
    const r = fit(data, { l2: 10, features });
    assertWeightsClose(r.weights, REFERENCE.subsetL2_10, 1e-9);
    for (const f of FEATURE_NAMES) if (!features.includes(f)) assert.equal(r.weights[f], 0);
    assert.deepEqual(Object.keys(r.stdErrors).sort(), ['ann_similarity', 'bias', 'quality', 'source_ann']);
  });

  it('when the fitted model is measured, then log-loss and AUC match the reference script', () => {
    const p = predict(fit(data, { l2: 1 }).weights, data);
    assert.ok(Math.abs(logLoss(data.y, p) - REFERENCE.allL2_1Measures.logLoss) < 1e-9);
    assert.ok(Math.abs(auc(data.y, p) - REFERENCE.allL2_1Measures.auc) < 1e-9);
  });

  it('when data are simulated from known weights (n = 200,000), then the fit recovers them within 4.5 standard errors, which are themselves small', () => {
    const truth: RankerWeights = {
      bias: -2,
      ann_similarity: 1.5,
      ctr_prior_logit: 0.8,
      popularity_rate: 10,
      quality: 0.6,
      source_ann: 0.3,
      source_targeting: -0.4,
      source_popularity: 0.2,
    };
    // Rough sizes of the standard errors at this n, so that "within 4.5 s.e." cannot pass vacuously.
    const maxSe: Record<keyof RankerWeights, number> = {
      bias: 0.06,
      ann_similarity: 0.03,
      ctr_prior_logit: 0.02,
      popularity_rate: 1.0,
      quality: 0.05,
      source_ann: 0.03,
      source_targeting: 0.03,
      source_popularity: 0.03,
    };
    const u = lcg(7);
    const d = new Dataset();
    for (let i = 0; i < 200_000; i++) {
      const f = drawFeatures(u);
      let eta = truth.bias;
      for (const k of FEATURE_NAMES) eta += truth[k] * f[k];
      d.push(f, u() < 1 / (1 + Math.exp(-eta)) ? 1 : 0);
    }
    const r = fit(d, { l2: 1 });
    assert.ok(r.converged);
    for (const k of ['bias', ...FEATURE_NAMES] as const) {
      const se = r.stdErrors[k]!;
      assert.ok(se > 0 && se < maxSe[k], `${k}: standard error ${se}`);
      assert.ok(Math.abs(r.weights[k] - truth[k]) < 4.5 * se, `${k}: got ${r.weights[k]} +- ${se}, truth ${truth[k]}`);
    }
  });

  it('when a feature is always 0 and l2 is 0, then the singular Hessian is ridged and that weight stays 0', () => {
    const u = lcg(3);
    const d = new Dataset();
    for (let i = 0; i < 500; i++) {
      const f = { ...zeros, quality: u() };
      d.push(f, u() < 0.2 + 0.5 * f.quality ? 1 : 0);
    }
    const r = fit(d, { l2: 0 });
    assert.ok(r.converged);
    assert.equal(r.weights.source_ann, 0);
    assert.ok(r.weights.quality > 1, `quality ${r.weights.quality}`);
  });

  it('when the data are separable, then l2 keeps the weights finite and the fit converges', () => {
    const d = Dataset.of(Array.from({ length: 40 }, (_, i) => ({ features: { ...zeros, quality: i / 40 }, label: (i >= 20 ? 1 : 0) as 0 | 1 })));
    const r = fit(d, { l2: 1 });
    assert.ok(r.converged);
    assert.ok(Number.isFinite(r.weights.quality) && r.weights.quality > 1, `quality ${r.weights.quality}`);
  });

  it('when there are no rows or a single label, then fit throws FitError', () => {
    assert.throws(() => fit(new Dataset()), FitError);
    const ones = Dataset.of([{ features: zeros, label: 1 }, { features: { ...zeros, quality: 1 }, label: 1 }]);
    assert.throws(() => fit(ones), /every training row has label 1/);
    assert.throws(() => fit(referenceDataset(10, 1), { l2: -1 }), RangeError);
  });

  it('when Cholesky meets a small SPD system, then it solves it; when the matrix is not positive definite, then it returns null', () => {
    const a = Float64Array.from([4, 2, 2, 3]);
    const l = cholesky(a, 2)!;
    assert.deepEqual(Array.from(l), [2, 0, 1, Math.sqrt(2)]);
    const x = choleskySolve(l, 2, [2, 1]);
    assert.ok(Math.abs(x[0] - 0.5) < 1e-15 && Math.abs(x[1]) < 1e-15, String(x));
    assert.equal(cholesky(Float64Array.from([1, 2, 2, 1]), 2), null);
  });
});

describe('train-ranker auc', () => {
  it('when computed by hand on small cases, then it agrees (ties count one half)', () => {
    assert.equal(auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 0.75);
    // pos {0.5, 0.9} vs neg {0.5, 0.2}: tie 0.5 + 1 + 1 + 1 = 3.5 of 4 pairs
    assert.equal(auc([1, 0, 0, 1], [0.5, 0.5, 0.2, 0.9]), 0.875);
    assert.equal(auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]), 0.5);
    assert.equal(auc([0, 1], [0.9, 0.1]), 0);
    assert.ok(Number.isNaN(auc([1, 1, 1], [0.1, 0.2, 0.3])));
    assert.ok(Number.isNaN(auc([], [])));
  });

  it('when compared with the O(n^2) pair definition on random data with many ties, then it agrees', () => {
    const u = lcg(99);
    for (let trial = 0; trial < 20; trial++) {
      const n = 50 + Math.floor(u() * 250);
      const y = Array.from({ length: n }, () => (u() < 0.3 ? 1 : 0));
      const s = Array.from({ length: n }, () => Math.round(u() * 20) / 20);
      let num = 0;
      let pairs = 0;
      for (let i = 0; i < n; i++) {
        if (!y[i]) continue;
        for (let j = 0; j < n; j++) {
          if (y[j]) continue;
          pairs++;
          num += s[i] > s[j] ? 1 : s[i] === s[j] ? 0.5 : 0;
        }
      }
      const want = pairs === 0 ? NaN : num / pairs;
      const got = auc(y, s);
      assert.ok(Math.abs(got - want) < 1e-12 || (Number.isNaN(got) && Number.isNaN(want)), `trial ${trial}: ${got} vs ${want}`);
    }
  });
});

describe('train-ranker calibration and log-loss', () => {
  it('when 20 predictions fall in 10 quantile buckets, then each bucket holds 2 with its mean prediction and observed rate', () => {
    const p = Array.from({ length: 20 }, (_, i) => (20 - i) / 100); // 0.20 .. 0.01, descending on purpose
    const y = p.map((_, i) => (i % 2 === 0 ? 1 : 0)); // labels 1 at 0.20, 0.18, ...: one per bucket
    const b = calibration(y, p);
    assert.equal(b.length, 10);
    b.forEach((bucket, k) => {
      assert.equal(bucket.count, 2);
      assert.ok(Math.abs(bucket.lo! - (2 * k + 1) / 100) < 1e-15);
      assert.ok(Math.abs(bucket.hi! - (2 * k + 2) / 100) < 1e-15);
      assert.ok(Math.abs(bucket.meanPredicted! - (4 * k + 3) / 200) < 1e-15);
      assert.equal(bucket.observedRate, 0.5);
    });
  });

  it('when n is not a multiple of the buckets, then sizes differ by at most one and sum to n; with fewer rows than buckets, the empty ones are null', () => {
    const u = lcg(5);
    const p = Array.from({ length: 23 }, () => u());
    const y = p.map((q) => (q > 0.5 ? 1 : 0));
    const b = calibration(y, p);
    assert.equal(b.reduce((s, x) => s + x.count, 0), 23);
    assert.ok(b.every((x) => x.count === 2 || x.count === 3));
    for (let k = 1; k < b.length; k++) assert.ok(b[k].lo! >= b[k - 1].hi!);
    const few = calibration([1, 0, 1], [0.9, 0.1, 0.5]);
    assert.equal(few.filter((x) => x.count === 1).length, 3);
    assert.deepEqual(few.find((x) => x.count === 0), { lo: null, hi: null, count: 0, meanPredicted: null, observedRate: null });
  });

  it('when buckets are by width, then a prediction lands in [b/10, (b+1)/10) and 1 in the last', () => {
    const b = calibration([0, 1, 1, 0, 1], [0.05, 0.15, 0.19, 0.95, 1], { mode: 'width' });
    assert.deepEqual(b.map((x) => x.count), [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
    assert.equal(b[1].observedRate, 1);
    assert.ok(Math.abs(b[1].meanPredicted! - 0.17) < 1e-15);
    assert.equal(b[9].observedRate, 0.5);
    assert.deepEqual([b[2].lo, b[2].hi, b[2].meanPredicted, b[2].observedRate], [0.2, 0.3, null, null]);
  });

  it('when log-loss is computed, then it is the mean of -log p of the right label, with predictions of 0 and 1 clamped', () => {
    assert.ok(Math.abs(logLoss([1, 0], [0.8, 0.4]) - -(Math.log(0.8) + Math.log(0.6)) / 2) < 1e-15);
    assert.ok(Math.abs(logLoss([1], [0]) - -Math.log(1e-15)) < 1e-9);
    assert.ok(Number.isNaN(logLoss([], [])));
  });
});

describe('train-ranker examples and split', () => {
  const good = {
    request_id: 'r1',
    ad_id: 'a1',
    model_version: 'm',
    position: 1,
    kept: true,
    score: 1.2,
    features: { ...zeros, quality: 0.7 },
    impressions: 1,
    clicks: 0,
    label: 0,
  };

  it('when a line is valid, then its features and label are read; unused features may be absent', () => {
    assert.deepEqual(parseExample(good), { requestId: 'r1', features: { ...zeros, quality: 0.7 }, label: 0 });
    const e = parseExample({ request_id: 'r', label: 1, features: { quality: 0.3 } }, ['quality']);
    assert.deepEqual(e.features, { ...zeros, quality: 0.3 });
  });

  it('when a field is wrong, then ExampleError names it', () => {
    const bad = (o: unknown, re: RegExp) => assert.throws(() => parseExample(o), (err: unknown) => err instanceof ExampleError && re.test(err.message));
    bad([], /expected a JSON object/);
    bad({ ...good, request_id: '' }, /^request_id: /);
    bad({ ...good, label: 2 }, /^label: must be 0 or 1 \(got 2\)/);
    bad({ ...good, label: true }, /^label: /);
    bad({ ...good, label: undefined }, /^label: .*got nothing/);
    bad({ ...good, features: null }, /^features: must be an object/);
    bad({ ...good, features: { ...zeros, quality: undefined } }, /^features\.quality: missing/);
    bad({ ...good, features: { ...zeros, popularity_rate: '0.1' } }, /^features\.popularity_rate: must be a finite number/);
  });

  it('when requests are split, then the split is deterministic, near the fraction, and moves with the seed', () => {
    const ids = Array.from({ length: 20_000 }, (_, i) => `req-${i}`);
    const held = ids.filter((id) => isHeldOut(id, 0.2, 0));
    assert.ok(Math.abs(held.length / ids.length - 0.2) < 0.015, `${held.length}`);
    assert.deepEqual(ids.filter((id) => isHeldOut(id, 0.2, 0)), held);
    const other = ids.filter((id) => isHeldOut(id, 0.2, 1));
    assert.notDeepEqual(other, held);
    assert.equal(ids.filter((id) => isHeldOut(id, 0, 0)).length, 0);
  });
});
