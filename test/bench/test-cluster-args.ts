import * as assert from 'node:assert/strict';
import { parseClusterArgs } from '../../bench/lib/cluster-args';

describe('bench:cluster command line', () => {
  it('when nothing is given, then the defaults apply (100k ads, 2 shards, 16 outstanding, 200 and 400/s)', () => {
    const o = parseClusterArgs([]);
    assert.equal(o.ads, 100_000);
    assert.equal(o.dim, 64);
    assert.equal(o.seed, 7);
    assert.equal(o.shards, 2);
    assert.deepEqual(o.rates, [200, 400]);
    assert.equal(o.seconds, 10);
    assert.equal(o.warmupSeconds, 2);
    assert.equal(o.concurrency, 16);
    assert.equal(o.maxOutstanding, 256);
    assert.equal(o.channels, 4);
    assert.equal(o.procs, 1);
    assert.equal(o.pool, 4096);
    assert.equal(o.numResults, 50);
    assert.equal(o.timeoutMs, 5000);
    assert.equal(o.overlapRequests, 100);
    assert.equal(o.keep, false);
    assert.equal(o.help, false);
  });

  it('when options are given, then they are parsed and the rates sorted and deduplicated', () => {
    const o = parseClusterArgs([
      '--ads', '20000', '--seed', '3', '--shards', '3', '--rates', '400,100,400,50.5', '--seconds', '5',
      '--warmup-seconds', '0', '--concurrency', '8', '--max-outstanding', '64', '--channels', '2', '--procs', '2',
      '--pool', '300', '--num-results', '20', '--timeout-ms', '900', '--overlap', '300', '--keep',
    ]);
    assert.equal(o.ads, 20000);
    assert.equal(o.seed, 3);
    assert.equal(o.shards, 3);
    assert.deepEqual(o.rates, [50.5, 100, 400]);
    assert.equal(o.seconds, 5);
    assert.equal(o.warmupSeconds, 0);
    assert.equal(o.concurrency, 8);
    assert.equal(o.maxOutstanding, 64);
    assert.equal(o.channels, 2);
    assert.equal(o.procs, 2);
    assert.equal(o.pool, 300);
    assert.equal(o.numResults, 20);
    assert.equal(o.timeoutMs, 900);
    assert.equal(o.overlapRequests, 300);
    assert.equal(o.keep, true);
  });

  it('when a value is out of range, then the error names the option', () => {
    assert.throws(() => parseClusterArgs(['--ads', '0']), /--ads/);
    assert.throws(() => parseClusterArgs(['--seconds', '-1']), /--seconds/);
    assert.throws(() => parseClusterArgs(['--rates', '200,x']), /--rates/);
    assert.throws(() => parseClusterArgs(['--seed', '1.5']), /--seed/);
    assert.throws(() => parseClusterArgs(['--shards', '1']), /--shards must be at least 2/);
    assert.throws(() => parseClusterArgs(['--procs', '4', '--concurrency', '2']), /--concurrency \(2\) must be at least --procs \(4\)/);
    assert.throws(() => parseClusterArgs(['--pool', '50']), /--overlap \(100\) must be at most --pool \(50\)/);
  });

  it('when an unknown option or a positional is given, then it is refused', () => {
    assert.throws(() => parseClusterArgs(['--workers', '2']));
    assert.throws(() => parseClusterArgs(['extra']));
  });
});
