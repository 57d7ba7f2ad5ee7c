import * as assert from 'node:assert/strict';
import type { Metric } from '../../src/native/index';
import { generateMixture } from '../../bench/lib/dataset';
import { HnswlibSubject, toRows, UsearchSubject } from '../../bench/lib/peers';
import { IdRows, recallAtK } from '../../bench/lib/recall';
import { measureSearcher } from '../../bench/lib/timing';

/** Exact top-k by brute force, scores higher-is-better as in our addon. */
function bruteForce(base: Float32Array, query: Float32Array, dim: number, k: number, metric: Metric): IdRows {
  const n = base.length / dim;
  const nq = query.length / dim;
  const norm = (v: Float32Array, off: number): number => {
    let s = 0;
    for (let j = 0; j < dim; j++) s += v[off + j] ** 2;
    return Math.sqrt(s);
  };
  const data = new Uint32Array(nq * k);
  for (let q = 0; q < nq; q++) {
    const scored: { id: number; score: number }[] = [];
    for (let i = 0; i < n; i++) {
      let dot = 0;
      let l2 = 0;
      for (let j = 0; j < dim; j++) {
        const a = query[q * dim + j];
        const b = base[i * dim + j];
        dot += a * b;
        l2 += (a - b) ** 2;
      }
      const score = metric === 'l2' ? -l2 : metric === 'ip' ? dot : dot / (norm(query, q * dim) * norm(base, i * dim));
      scored.push({ id: i, score });
    }
    scored.sort((a, b) => b.score - a.score);
    for (let i = 0; i < k; i++) data[q * k + i] = scored[i].id;
  }
  return { rows: nq, cols: k, data };
}

describe('bench peer adapters', () => {
  const dim = 16;
  const k = 10;
  const { base, query } = generateMixture({ n: 300, queries: 20, dim, clusters: 5, seed: 3 });
  const params = { M: 8, efConstruction: 100, seed: 1 };

  it('when queries are converted for hnswlib-node, then rows are plain arrays with the same values', () => {
    const rows = toRows(query, dim);
    assert.equal(rows.length, 20);
    assert.ok(Array.isArray(rows[3]));
    assert.deepEqual(rows[3], Array.from(query.subarray(3 * dim, 4 * dim)));
  });

  for (const metric of ['l2', 'ip', 'cos'] as const) {
    const truth = bruteForce(base, query, dim, k, metric);

    it(`when hnswlib-node searches ${metric} with ef >= n, then it matches brute force`, () => {
      const subject = new HnswlibSubject(dim, metric, params);
      const build = subject.build(base);
      assert.ok(build.indexBytes > 0);
      subject.setQueries(query);
      const m = measureSearcher(subject.searcher(300, k), 20, k, 0.01);
      assert.ok(recallAtK(m.found, truth, k) >= 0.99);
    });

    it(`when usearch searches ${metric} with ef >= n, then it matches brute force`, () => {
      const subject = new UsearchSubject(dim, metric, params);
      try {
        subject.build(base);
        subject.setQueries(query);
        const m = measureSearcher(subject.searcher(300, k), 20, k, 0.01);
        assert.ok(recallAtK(m.found, truth, k) >= 0.99);
      } finally {
        subject.dispose();
      }
    });
  }

  it('when hnswlib-node filters with a callback, then only allowed labels come back', () => {
    const subject = new HnswlibSubject(dim, 'l2', params);
    subject.build(base);
    subject.setQueries(query);
    const m = measureSearcher(subject.searcher(50, k, (label) => label % 3 === 0), 20, k, 0.01);
    assert.ok(Array.from(m.found.data).every((id) => id % 3 === 0));
  });
});
