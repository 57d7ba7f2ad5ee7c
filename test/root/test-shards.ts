import { strict as assert } from 'node:assert';
import { parseShardList, ReplicaLink, ShardGroup } from '../../src/root/shards';
import { rootSchema } from '../../src/config/schema';

describe('root/shards', () => {
  it('when --shards is read, then ";" separates shards and "," replicas, and a malformed list is refused', () => {
    assert.deepEqual(parseShardList('a:1,b:2;c:3'), [['a:1', 'b:2'], ['c:3']]);
    assert.deepEqual(parseShardList(' a:1 , b:2 ; [::1]:3 '), [['a:1', 'b:2'], ['[::1]:3']]);
    assert.throws(() => parseShardList('a:1;;b:2'), /--shards must be/);
    assert.throws(() => parseShardList('a:1;b'), /"b" is not HOST:PORT/);
    assert.throws(() => parseShardList(''), /--shards must be/);
  });

  describe('rotation', () => {
    const config = rootSchema.parse({ down_after_failures: 2, retry_down_after_ms: 1000 });
    let g: ShardGroup;
    beforeEach(() => {
      g = new ShardGroup(0, [new ReplicaLink('127.0.0.1:1'), new ReplicaLink('127.0.0.1:2'), new ReplicaLink('127.0.0.1:3')]);
    });
    afterEach(() => {
      for (const r of g.replicas) r.close();
    });

    it('when replicas are picked, then they take turns and a tried one is skipped', () => {
      const picks = [g.pick(new Set()), g.pick(new Set()), g.pick(new Set()), g.pick(new Set())].map((r) => r!.addr);
      assert.deepEqual(picks, ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3', '127.0.0.1:1']);
      const tried = new Set([g.replicas[1]]);
      assert.notEqual(g.pick(tried), g.replicas[1]);
    });

    it('when a replica fails down_after_failures times in a row, then it leaves the rotation until retry_down_after_ms has passed', () => {
      const r = g.replicas[0];
      g.failed(r, config, 1000);
      assert.ok(r.live(1000), 'one failure is not enough');
      g.failed(r, config, 1000);
      assert.ok(!r.live(1500));
      assert.equal(g.liveCount(1500), 2);
      assert.ok(r.live(2000));
      g.succeeded(r);
      assert.equal(r.failures, 0);
    });

    it('when its health check says NOT_SERVING, then it is out of rotation; with none live, the least recently failed is still tried', () => {
      for (const [i, r] of g.replicas.entries()) {
        r.serving = false;
        r.lastFailureMs = 100 - i;
      }
      assert.equal(g.liveCount(), 0);
      assert.equal(g.pick(new Set())!.addr, '127.0.0.1:3');
      assert.equal(g.pick(new Set(g.replicas)), null);
    });
  });
});
