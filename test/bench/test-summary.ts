import * as assert from 'node:assert/strict';
import { qpsAtRecall } from '../../bench/lib/summary';

describe('bench qpsAtRecall', () => {
  const sweep = [
    { setting: 'ef=16', recall: 0.8, qps: 10000 },
    { setting: 'ef=32', recall: 0.9, qps: 6000 },
    { setting: 'ef=64', recall: 1.0, qps: 1000 },
  ];

  it('when the sweep brackets the target, then measured is the best reaching setting and interpolation is log-linear', () => {
    const at = qpsAtRecall(sweep, 0.95);
    assert.deepEqual(at.measured, { qps: 1000, setting: 'ef=64' });
    assert.deepEqual(at.interpolated?.between, ['ef=32', 'ef=64']);
    assert.ok(Math.abs((at.interpolated?.qps ?? 0) - Math.sqrt(6000 * 1000)) < 1e-6);
  });

  it('when no setting reaches the target, then both are undefined', () => {
    assert.deepEqual(qpsAtRecall(sweep.slice(0, 2), 0.95), {});
  });

  it('when the first setting already reaches the target, then only measured is set', () => {
    const at = qpsAtRecall(sweep.slice(2), 0.95);
    assert.equal(at.measured?.setting, 'ef=64');
    assert.equal(at.interpolated, undefined);
  });
});
