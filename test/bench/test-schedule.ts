import * as assert from 'node:assert/strict';
import { dueCount, idealSendMs, openLoopPlan, splitEven } from '../../bench/lib/schedule';

describe('bench load schedules', () => {
  it('when one generator sends 500/s for 1 s warm-up and 2 s, then 500 are warm-up and 1500 in all', () => {
    const p = openLoopPlan(500, 1, 2);
    assert.equal(p.firstMeasured, 500);
    assert.equal(p.total, 1500);
    assert.equal(idealSendMs(p, 0), 0);
    assert.equal(idealSendMs(p, 500), 1000);
  });

  it('when time passes, then requests fall due at their ideal times, capped at the total', () => {
    const p = openLoopPlan(1000, 0, 1);
    assert.equal(dueCount(p, 0), 1);
    assert.equal(dueCount(p, 0.999), 1);
    assert.equal(dueCount(p, 1), 2);
    assert.equal(dueCount(p, 10.5), 11);
    assert.equal(dueCount(p, 5000), 1000);
  });

  it('when generators share a rate, then their staggered schedules interleave evenly and add up', () => {
    const parts = 3;
    const plans = Array.from({ length: parts }, (_, i) => openLoopPlan(100, 0.5, 1, i, parts));
    const times = plans.flatMap((p) => Array.from({ length: p.total }, (_, i) => idealSendMs(p, i))).sort((a, b) => a - b);
    assert.equal(times.length, 450);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    for (const g of gaps) assert.ok(Math.abs(g - 10 / 3) < 1e-6, `gap ${g}`);
    const warm = plans.reduce((a, p) => a + p.firstMeasured, 0);
    assert.equal(warm, 150);
    for (const p of plans) {
      assert.ok(idealSendMs(p, p.firstMeasured) >= 500);
      if (p.firstMeasured > 0) assert.ok(idealSendMs(p, p.firstMeasured - 1) < 500);
      assert.equal(dueCount(p, p.offsetMs - 0.01), 0);
    }
  });

  it('when the rate is not positive, then the plan is refused', () => {
    assert.throws(() => openLoopPlan(0, 1, 1), /rate must be > 0/);
  });

  it('when a total is split, then parts differ by at most one and sum to it', () => {
    assert.deepEqual(splitEven(10, 3), [4, 3, 3]);
    assert.deepEqual(splitEven(2, 4), [1, 1, 0, 0]);
    assert.deepEqual(splitEven(64, 1), [64]);
    assert.throws(() => splitEven(5, 0), /parts must be a positive integer/);
  });
});
