import { strict as assert } from 'node:assert';
import { fnv1a32, parseShardSpec, shardOf, shardSubject } from '../../src/cluster/shard';

describe('cluster/shard', () => {
  it('when fnv1a32 hashes the reference strings, then it gives FNV-1a 32-bit values', () => {
    // Reference values of FNV-1a 32 (offset 2166136261, prime 16777619).
    assert.equal(fnv1a32(''), 0x811c9dc5);
    assert.equal(fnv1a32('a'), 0xe40c292c);
    assert.equal(fnv1a32('foobar'), 0xbf9cf968);
  });

  it('when an ad_id has non-ASCII characters, then its UTF-8 bytes are hashed', () => {
    // "é" is C3 A9 in UTF-8: two steps of the hash, not one of the UTF-16 unit.
    let h = 0x811c9dc5;
    for (const b of [0xc3, 0xa9]) h = Math.imul(h ^ b, 0x01000193) >>> 0;
    assert.equal(fnv1a32('é'), h);
  });

  it('when ads are sharded, then the shard is the hash mod N and every shard gets a share', () => {
    assert.equal(shardOf('foobar', 7), 0xbf9cf968 % 7);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[shardOf(`ad-${i}`, 4)]++;
    for (const c of counts) assert.ok(c > 800 && c < 1200, `uneven shards: ${counts}`);
  });

  it('when --shard is read, then I/N parses and anything else is refused naming the flag', () => {
    assert.deepEqual(parseShardSpec('1/4'), { index: 1, count: 4 });
    assert.deepEqual(parseShardSpec(' 0/1 '), { index: 0, count: 1 });
    assert.throws(() => parseShardSpec('4/4'), /--shard: I must be in 0..3, got 4/);
    assert.throws(() => parseShardSpec('0/0'), /N must be in 1..1024/);
    assert.throws(() => parseShardSpec('1'), /--shard must be I\/N/);
    assert.throws(() => parseShardSpec('-1/2'), /--shard must be I\/N/);
  });

  it('when a subject is named, then it carries N and I under the prefix', () => {
    assert.equal(shardSubject('funnel.writes', { index: 3, count: 8 }), 'funnel.writes.8.3');
  });
});
