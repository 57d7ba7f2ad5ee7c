import * as assert from 'node:assert/strict';
import { parseAnnArgs } from '../../bench/lib/args';

describe('bench:ann command line', () => {
  it('when only files are given, then the defaults apply', () => {
    const o = parseAnnArgs(['--base', 'b.fvecs', '--query', 'q.fvecs']);
    assert.equal(o.base, 'b.fvecs');
    assert.equal(o.metric, 'l2');
    assert.equal(o.k, 10);
    assert.equal(o.M, 16);
    assert.equal(o.efConstruction, 200);
    assert.deepEqual(o.ef, [16, 32, 64, 128, 256]);
    assert.equal(o.threads, 1);
    assert.equal(o.filtered, false);
    assert.equal(o.quantized, false);
    assert.equal(o.skipPeers, false);
    assert.deepEqual(o.peers, ['hnswlib', 'usearch']);
    assert.equal(o.maxQueries, undefined);
  });

  it('when --peers names some peers, then only those are built; --skip-peers builds none; an unknown name throws', () => {
    assert.deepEqual(parseAnnArgs(['--generate', '10', '--peers', 'hnswlib']).peers, ['hnswlib']);
    assert.deepEqual(parseAnnArgs(['--generate', '10', '--peers', 'usearch, hnswlib,usearch']).peers, ['usearch', 'hnswlib']);
    assert.deepEqual(parseAnnArgs(['--generate', '10', '--skip-peers']).peers, []);
    assert.throws(() => parseAnnArgs(['--generate', '10', '--peers', 'faiss']), /--peers: unknown peer "faiss"/);
    assert.throws(() => parseAnnArgs(['--generate', '10', '--peers', ',']), /--peers needs at least one/);
  });

  it('when options are given, then they are parsed and ef lists are sorted and deduplicated', () => {
    const o = parseAnnArgs([
      '--generate', '1000', '--dim', '32', '--metric', 'cos', '--ef', '64,16,64', '--threads', '2',
      '--filtered', '--quantized', '--skip-peers', '--max-queries', '50', '--M', '8', '--ef-construction', '100',
      '--seed=-3', '--min-seconds', '0.2', '--rounds', '5',
    ]);
    assert.equal(o.generate, 1000);
    assert.equal(o.dim, 32);
    assert.equal(o.metric, 'cos');
    assert.deepEqual(o.ef, [16, 64]);
    assert.equal(o.threads, 2);
    assert.ok(o.filtered && o.quantized && o.skipPeers);
    assert.equal(o.maxQueries, 50);
    assert.equal(o.M, 8);
    assert.equal(o.efConstruction, 100);
    assert.equal(o.seed, -3);
    assert.equal(o.minSeconds, 0.2);
    assert.equal(o.rounds, 5);
    assert.equal(parseAnnArgs(['--generate', '10']).rounds, 3);
  });

  it('when the data source is missing or doubled, then it throws', () => {
    assert.throws(() => parseAnnArgs(['--base', 'b.fvecs']), /give --base and --query, or --generate N/);
    assert.throws(() => parseAnnArgs(['--generate', '10', '--base', 'b']), /cannot be combined/);
    assert.throws(() => parseAnnArgs(['--generate', '10', '--gt', 'g.ivecs']), /--gt cannot be combined/);
  });

  it('when a value is invalid, then the error names the option', () => {
    const files = ['--base', 'b', '--query', 'q'];
    assert.throws(() => parseAnnArgs([...files, '--metric', 'dot']), /--metric must be one of/);
    assert.throws(() => parseAnnArgs([...files, '--ef', '16,x']), /--ef must be a positive integer, got "x"/);
    assert.throws(() => parseAnnArgs([...files, '--k', '5']), /--k must be at least 10/);
    assert.throws(() => parseAnnArgs([...files, '--threads', '0']), /--threads must be a positive integer/);
    assert.throws(() => parseAnnArgs([...files, '--rounds', '0']), /--rounds must be a positive integer/);
    assert.throws(() => parseAnnArgs([...files, '--bogus']), /bogus/);
  });

  it('when --help is given, then no data source is required', () => {
    assert.equal(parseAnnArgs(['--help']).help, true);
  });
});
