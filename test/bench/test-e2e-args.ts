import * as assert from 'node:assert/strict';
import { defaultProcs, defaultWorkers, parseE2eArgs } from '../../bench/lib/e2e-args';

describe('bench:e2e command line', () => {
  it('when nothing is given, then the issue defaults apply', () => {
    const o = parseE2eArgs([]);
    assert.equal(o.ads, 1_000_000);
    assert.equal(o.dim, 64);
    assert.equal(o.seed, 1);
    assert.deepEqual(o.rates, [250, 500, 1000, 1500, 2000]);
    assert.equal(o.seconds, 10);
    assert.equal(o.warmupSeconds, 2);
    assert.equal(o.concurrency, 64);
    assert.equal(o.maxOutstanding, 1024);
    assert.equal(o.channels, 4);
    assert.equal(o.procs, undefined);
    assert.equal(o.pool, 4096);
    assert.equal(o.numResults, 50);
    assert.equal(o.timeoutMs, 5000);
    assert.equal(o.data, undefined);
    assert.equal(o.tracingRounds, 3);
    assert.equal(o.help, false);
  });

  it('when options are given, then they are parsed and rates sorted and deduplicated', () => {
    const o = parseE2eArgs([
      '--ads', '20000', '--dim', '32', '--seed=-4', '--rates', '500,200,500,37.5', '--seconds', '3',
      '--warmup-seconds', '0', '--concurrency', '16', '--max-outstanding', '100', '--channels', '2',
      '--procs', '2', '--pool', '64', '--num-results', '10', '--timeout-ms', '900', '--data', 'some/dir',
      '--config', 'c.yaml',
    ]);
    assert.equal(o.ads, 20000);
    assert.equal(o.dim, 32);
    assert.equal(o.seed, -4);
    assert.deepEqual(o.rates, [37.5, 200, 500]);
    assert.equal(o.seconds, 3);
    assert.equal(o.warmupSeconds, 0);
    assert.equal(o.concurrency, 16);
    assert.equal(o.maxOutstanding, 100);
    assert.equal(o.channels, 2);
    assert.equal(o.procs, 2);
    assert.equal(o.pool, 64);
    assert.equal(o.numResults, 10);
    assert.equal(o.timeoutMs, 900);
    assert.equal(o.data, 'some/dir');
    assert.equal(o.config, 'c.yaml');
  });

  it('when --tracing-rounds is given, then a whole number (0 for none) is taken and anything else names the option', () => {
    assert.equal(parseE2eArgs(['--tracing-rounds', '0']).tracingRounds, 0);
    assert.equal(parseE2eArgs(['--tracing-rounds', '5']).tracingRounds, 5);
    for (const bad of ['-1', '1.5', 'two', '']) {
      assert.throws(() => parseE2eArgs([`--tracing-rounds=${bad}`]), /--tracing-rounds must be a whole number/, bad);
    }
  });

  it('when a value is invalid, then the error names the option', () => {
    assert.throws(() => parseE2eArgs(['--ads', '0']), /--ads must be a positive integer/);
    assert.throws(() => parseE2eArgs(['--ads', '1e6']), /--ads must be a positive integer, got "1e6"/);
    assert.throws(() => parseE2eArgs(['--dim', '5000']), /--dim must be at most 4096/);
    assert.throws(() => parseE2eArgs(['--rates', '100,x']), /--rates must be a positive number, got "x"/);
    assert.throws(() => parseE2eArgs(['--rates', '100,,200']), /--rates must be a positive number/);
    assert.throws(() => parseE2eArgs(['--seconds', '0']), /--seconds must be a positive number/);
    assert.throws(() => parseE2eArgs(['--warmup-seconds=-1']), /--warmup-seconds must be a non-negative number/);
    assert.throws(() => parseE2eArgs(['--seed', '1.5']), /--seed must be an integer/);
    assert.throws(() => parseE2eArgs(['--procs', '8', '--concurrency', '4']), /--concurrency \(4\) must be at least --procs \(8\)/);
    assert.throws(() => parseE2eArgs(['--data', ' ']), /--data must name a directory/);
    assert.throws(() => parseE2eArgs(['--bogus']), /bogus/);
    assert.throws(() => parseE2eArgs(['stray']), /stray/);
  });

  it('when --workers and --overload are absent, then 1 and the core count, and 0.5x, 1.5x and 3x apply', () => {
    assert.deepEqual(parseE2eArgs([], 2).workers, [1, 2]);
    assert.deepEqual(parseE2eArgs([], 16).workers, [1, 16]);
    assert.deepEqual(parseE2eArgs([], 1).workers, [1]);
    assert.deepEqual(defaultWorkers(8), [1, 8]);
    assert.deepEqual(parseE2eArgs([]).overload, [0.5, 1.5, 3]);
  });

  it('when --workers and --overload are given, then they are sorted and deduplicated, and "none" turns overload off', () => {
    const o = parseE2eArgs(['--workers', '4,1,2,4', '--overload', '3,0.5,2']);
    assert.deepEqual(o.workers, [1, 2, 4]);
    assert.deepEqual(o.overload, [0.5, 2, 3]);
    assert.deepEqual(parseE2eArgs(['--overload', 'none']).overload, []);
    assert.throws(() => parseE2eArgs(['--workers', '0']), /--workers must be a positive integer/);
    assert.throws(() => parseE2eArgs(['--workers', '1.5']), /--workers must be a positive integer/);
    assert.throws(() => parseE2eArgs(['--workers', '1,,2']), /--workers must be a positive integer/);
    assert.throws(() => parseE2eArgs(['--overload', '0']), /--overload must be a positive number/);
    assert.throws(() => parseE2eArgs(['--overload', '1.5,x']), /--overload must be a positive number, got "x"/);
  });

  it('when --help is given, then it is reported', () => {
    assert.equal(parseE2eArgs(['-h']).help, true);
  });

  it('when load generators are chosen from the core count, then it is one per 4 cores, 1 to 4', () => {
    assert.equal(defaultProcs(1), 1);
    assert.equal(defaultProcs(2), 1);
    assert.equal(defaultProcs(8), 2);
    assert.equal(defaultProcs(16), 4);
    assert.equal(defaultProcs(128), 4);
  });
});
