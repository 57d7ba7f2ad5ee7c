import * as assert from 'node:assert/strict';
import { bucketOf, bucketRange, LatencyHistogram } from '../../bench/lib/histogram';

describe('bench latency histogram', () => {
  it('when a value is bucketed, then its bucket range holds it within 0.1%', () => {
    for (const v of [0, 1, 2047, 2048, 2049, 4095, 4096, 123_456, 2 ** 20 - 1, 2 ** 20, 2 ** 30 + 7, 5e9]) {
      const [lo, hi] = bucketRange(bucketOf(v));
      assert.ok(lo <= v && v <= hi, `${v} outside [${lo}, ${hi}]`);
      assert.ok(hi - lo <= Math.max(0, v / 1000), `bucket of ${v} is ${hi - lo + 1} wide`);
    }
  });

  it('when values increase, then buckets never decrease and ranges tile the line', () => {
    let prev = -1;
    for (let v = 0; v < 300_000; v += 7) {
      const b = bucketOf(v);
      assert.ok(b >= prev);
      prev = b;
    }
    for (let b = 2040; b < 5000; b++) assert.equal(bucketRange(b + 1)[0], bucketRange(b)[1] + 1);
  });

  it('when 1..1000 us are recorded, then quantiles are the nearest ranks', () => {
    const h = new LatencyHistogram();
    for (let v = 1000; v >= 1; v--) h.record(v);
    assert.equal(h.count, 1000);
    assert.equal(h.quantileUs(0.5), 500);
    assert.equal(h.quantileUs(0.99), 990);
    assert.equal(h.quantileUs(1), 1000);
    assert.equal(h.maxUs, 1000);
    assert.equal(h.meanUs, 500.5);
  });

  it('when values are large, then a quantile is within 0.1% above the exact one and never above the max', () => {
    const h = new LatencyHistogram();
    const values = Array.from({ length: 5000 }, (_, i) => 10_000 + i * 97);
    for (const v of values) h.record(v);
    const exact = values[Math.ceil(0.95 * values.length) - 1];
    const q = h.quantileUs(0.95);
    assert.ok(q >= exact && q <= exact * 1.001, `${q} vs ${exact}`);
    assert.ok(h.quantileUs(0.999999) <= h.maxUs);
  });

  it('when histograms are merged through snapshots, then counts, mean and extremes add up', () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    a.record(10);
    a.record(20);
    b.record(5000);
    const m = LatencyHistogram.from(a.snapshot());
    m.merge(b.snapshot());
    assert.equal(m.count, 3);
    assert.equal(m.maxUs, 5000);
    assert.equal(m.quantileUs(0), 10);
    assert.equal(m.meanUs, 5030 / 3);
  });

  it('when empty, then quantiles and mean are NaN and merging it changes nothing', () => {
    const h = new LatencyHistogram();
    assert.ok(Number.isNaN(h.quantileUs(0.5)));
    assert.ok(Number.isNaN(h.meanUs));
    const g = new LatencyHistogram();
    g.record(3);
    g.merge(h);
    assert.equal(g.count, 1);
    assert.equal(g.quantileUs(0.5), 3);
  });
});
