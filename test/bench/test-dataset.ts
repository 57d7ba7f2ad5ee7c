import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CLUSTER_SPREAD, generateMixture, loadOrGenerateMixture, mixtureCachePaths, SeededRandom } from '../../bench/lib/dataset';

describe('bench Gaussian-mixture generator', () => {
  const spec = { n: 500, queries: 20, dim: 8, clusters: 10, seed: 7 };

  it('when the same seed is used twice, then the same base and queries come out', () => {
    const a = generateMixture(spec);
    const b = generateMixture(spec);
    assert.deepEqual(a.base, b.base);
    assert.deepEqual(a.query, b.query);
    assert.equal(a.base.length, 500 * 8);
    assert.equal(a.query.length, 20 * 8);
  });

  it('when the seed changes, then the data changes', () => {
    const a = generateMixture(spec);
    const b = generateMixture({ ...spec, seed: 8 });
    assert.notDeepEqual(a.base, b.base);
  });

  it('when only n changes, then the queries stay the same and the base keeps its prefix', () => {
    const a = generateMixture(spec);
    const b = generateMixture({ ...spec, n: 800 });
    assert.deepEqual(a.query, b.query);
    assert.deepEqual(b.base.subarray(0, a.base.length), a.base);
  });

  it('when generated, then values are finite and the variance is the spread within a cluster plus the centers across', () => {
    const meanVariance = (clusters: number): number => {
      const dim = 16;
      const n = 4000;
      const { base } = generateMixture({ n, queries: 1, dim, clusters, seed: 11 });
      assert.ok(base.every(Number.isFinite));
      let total = 0;
      for (let j = 0; j < dim; j++) {
        let sum = 0;
        let sq = 0;
        for (let i = 0; i < n; i++) {
          sum += base[i * dim + j];
          sq += base[i * dim + j] ** 2;
        }
        total += sq / n - (sum / n) ** 2;
      }
      return total / dim;
    };
    const [lo, hi] = CLUSTER_SPREAD;
    const one = meanVariance(1);
    assert.ok(one > lo * lo * 0.9 && one < hi * hi * 1.1, `one cluster: variance ${one}`);
    const many = meanVariance(500);
    assert.ok(many > (1 + lo * lo) * 0.9 && many < (1 + hi * hi) * 1.1, `500 clusters: variance ${many}`);
  });

  it('when loaded twice from a cache dir, then the second load reads the cached files with equal data', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-test-gmm-'));
    try {
      const first = loadOrGenerateMixture(spec, dir);
      assert.equal(first.cached, false);
      const files = mixtureCachePaths(spec, dir);
      assert.ok(fs.existsSync(files.base) && fs.existsSync(files.query));
      const second = loadOrGenerateMixture(spec, dir);
      assert.equal(second.cached, true);
      assert.deepEqual(second.base, first.base);
      assert.deepEqual(second.query, first.query);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when SeededRandom draws, then it is reproducible and in range', () => {
    const a = new SeededRandom(123);
    const b = new SeededRandom(123);
    const c = new SeededRandom(123, 1);
    const xs = Array.from({ length: 1000 }, () => a.next());
    assert.deepEqual(xs, Array.from({ length: 1000 }, () => b.next()));
    assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, () => c.next()));
    assert.ok(xs.every((x) => x >= 0 && x < 1));
    const g = Array.from({ length: 20000 }, () => a.gaussian());
    const mean = g.reduce((s, x) => s + x, 0) / g.length;
    const variance = g.reduce((s, x) => s + (x - mean) ** 2, 0) / g.length;
    assert.ok(Math.abs(mean) < 0.05 && Math.abs(variance - 1) < 0.05);
  });

  it('when the spec is invalid, then it throws naming the field', () => {
    assert.throws(() => generateMixture({ ...spec, dim: 0 }), /mixture dim must be a positive integer/);
  });
});
