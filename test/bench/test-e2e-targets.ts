import * as assert from 'node:assert/strict';
import {
  cpuTargets,
  extraWorkerRatios,
  halfLoadPoint,
  memoryTargetApplies,
  OverloadPoint,
  overloadTargets,
  statusCounts,
  targetRow,
} from '../../bench/lib/e2e-targets';

function point(over: Partial<OverloadPoint> & { multiple: number }): OverloadPoint {
  return { offeredQps: over.multiple * 1000, goodputQps: 0, p99Ms: null, errors: {}, unsent: 0, ...over };
}

describe('bench:e2e targets', () => {
  it('when the catalog size is given, then the nearer of the 100k and 1M statements applies', () => {
    assert.deepEqual(cpuTargets(100_000), { size: '100k', allThreadsMs: 0.5 });
    assert.deepEqual(cpuTargets(20_000), { size: '100k', allThreadsMs: 0.5 });
    assert.deepEqual(cpuTargets(1_000_000), { size: '1M', allThreadsMs: 1.0, jsThreadMs: 0.25 });
    assert.equal(cpuTargets(300_000).size, '100k');
    assert.equal(cpuTargets(400_000).size, '1M');
    assert.equal(memoryTargetApplies(100_000), false);
    assert.equal(memoryTargetApplies(1_000_000), true);
  });

  it('when a figure is compared, then PASS or MISS follows the direction, info has no limit and nothing measured is a MISS', () => {
    assert.equal(targetRow('a', 0.4, '<=', 0.5, '0.4 ms').verdict, 'PASS');
    assert.equal(targetRow('a', 0.6, '<=', 0.5, '0.6 ms').verdict, 'MISS');
    assert.equal(targetRow('a', 0.95, '>=', 0.9, '').verdict, 'PASS');
    const info = targetRow('a', 0.3, '<=', undefined, '0.3', 'at 1M only');
    assert.deepEqual([info.verdict, info.target, info.limit], ['info', 'at 1M only', null]);
    const none = targetRow('a', null, '<=', 0.5, 'no phase');
    assert.deepEqual([none.verdict, none.measured, none.value], ['MISS', 'not measured (no phase)', null]);
    assert.equal(targetRow('a', NaN, '<=', 0.5, '').verdict, 'MISS');
  });

  it('when errors are grouped, then RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED stand apart from the rest', () => {
    assert.deepEqual(statusCounts({ RESOURCE_EXHAUSTED: 5, DEADLINE_EXCEEDED: 2, UNAVAILABLE: 1, INTERNAL: 3 }), {
      resourceExhausted: 5,
      deadlineExceeded: 2,
      other: 4,
    });
  });

  it('when the server sheds cleanly at 1.5x and 3x, then every overload row passes', () => {
    const rows = overloadTargets(1000, [
      point({ multiple: 0.5, goodputQps: 500, p99Ms: 10 }),
      point({ multiple: 1.5, goodputQps: 960, p99Ms: 15, errors: { RESOURCE_EXHAUSTED: 1620 } }),
      point({ multiple: 3, goodputQps: 920, p99Ms: 19, errors: { RESOURCE_EXHAUSTED: 6240 } }),
    ], '1 worker');
    assert.equal(rows.length, 6);
    assert.deepEqual(rows.map((r) => r.verdict), ['PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS']);
    assert.equal(rows[0].name, 'goodput at 1.5x / max, 1 worker');
    assert.equal(rows[1].name, 'p99 at 1.5x / p99 at 0.5x, 1 worker');
    assert.equal(rows[4].value, 1.9);
  });

  it('when calls time out, queue or the generators fall short, then the rows say so', () => {
    const rows = overloadTargets(1000, [
      point({ multiple: 0.5, goodputQps: 500, p99Ms: 10 }),
      point({ multiple: 3, offeredQps: 2000, goodputQps: 600, p99Ms: 900, errors: { RESOURCE_EXHAUSTED: 900, DEADLINE_EXCEEDED: 100 }, unsent: 400 }),
    ], '2 workers');
    assert.deepEqual(rows.map((r) => r.verdict), ['MISS', 'MISS', 'MISS']);
    assert.equal(rows[0].name, 'goodput at 3x (offered only 2x) / max, 2 workers');
    assert.equal(rows[2].value, 900 / 1400);
    assert.match(rows[2].measured, /DEADLINE_EXCEEDED 100, other 0, unsent 400/);
  });

  it('when nothing failed or no phase ran below 1x, then the refusal row passes and the p99 row is not measured', () => {
    const rows = overloadTargets(1000, [point({ multiple: 1.5, goodputQps: 1500, p99Ms: 5 })], 'one process');
    assert.equal(rows[1].verdict, 'MISS');
    assert.match(rows[1].measured, /^not measured/);
    assert.equal(rows[2].verdict, 'PASS');
    assert.match(rows[2].measured, /nothing refused/);
  });

  it('when several phases run below 1x, then half load is the one nearest 0.5x', () => {
    const points = [point({ multiple: 0.25 }), point({ multiple: 0.6 }), point({ multiple: 2 })];
    assert.equal(halfLoadPoint(points)?.multiple, 0.6);
    assert.equal(halfLoadPoint([point({ multiple: 2 })]), undefined);
  });

  it('when workers are measured, then each beyond the first is compared with the first one\'s RSS', () => {
    const mib = 1 << 20;
    const w = (pid: number, rss: number, priv: number) => ({ pid, role: 'worker' as const, rss: rss * mib, pss: rss * mib, privateBytes: priv * mib });
    assert.deepEqual(extraWorkerRatios([w(1, 1000, 900), w(2, 800, 200), w(3, 1000, 300)]), [
      { pid: 2, privateShare: 0.2, rssShare: 0.8 },
      { pid: 3, privateShare: 0.3, rssShare: 1 },
    ]);
    assert.deepEqual(extraWorkerRatios([w(1, 1000, 900)]), []);
    assert.deepEqual(extraWorkerRatios([]), []);
  });
});
