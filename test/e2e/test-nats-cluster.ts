/**
 * Writes through a 3-node NATS JetStream cluster (R3 stream) on loopback: while Admin writes
 * keep coming, one NATS node is killed with SIGKILL; every write that was acknowledged is on
 * both replicas of the shard afterwards, and on a replica that fills an empty directory from
 * the two surviving nodes. Writes go on after the loss (the stream keeps its quorum).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';
import { ingestNats, needNats, startNatsCluster, startReplica, writeTestConfig, type FunnelProcess, type NatsServer } from '../fixtures/cluster';
import { ADMIN_TOKEN, adminClient, sleep, type AdMsg } from '../fixtures/e2e-server';

const DIM = 4;

describe('cluster: a 3-node JetStream cluster (R3) loses no acknowledged write when a node is killed', function () {
  this.timeout(600_000);
  let dir: string;
  let nats: NatsServer[] = [];
  const procs: FunnelProcess[] = [];

  before(function () {
    needNats(this);
  });

  after(async () => {
    for (const p of procs) await p.kill('SIGKILL');
    for (const n of nats) await n.stop('SIGKILL');
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when one of three NATS nodes dies under a stream of writes, then every acknowledged write is on every replica, and a new replica bootstraps them all', async function () {
    const bin = needNats(this);
    dir = tempDir('nats-cluster');
    nats = await startNatsCluster(bin, dir);
    const urls = nats.map((n) => n.url);
    const tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, ADMIN_TOKEN + '\n');
    const config = writeTestConfig(dir, 'replica.yaml', 'cluster: { stream_replicas: 3, publish_timeout_ms: 3000 }\n');
    const file = writeCatalog(dir, 'catalog.jsonl', Array.from({ length: 50 }, (_, n) => row(n, DIM)));
    // The ingest creates the R3 stream (waiting for the cluster's JetStream leader).
    const say = (m: string) => process.env.FUNNEL_TEST_VERBOSE && console.log(`${new Date().toISOString()} ${m}`);
    say('3 NATS nodes up');
    const ing = await ingestNats(file, urls.join(','), 1, ['--config', config]);
    say(`ingest exited ${ing.code}: ${ing.stderr.slice(-500)}`);
    assert.equal(ing.code, 0, ing.stderr);
    // Two replicas, each reaching the cluster through a different node first.
    for (const first of [0, 1]) {
      const order = [urls[first], ...urls.filter((_, i) => i !== first)].join(',');
      procs.push(await startReplica({ nats: order, shard: '0/1', data: path.join(dir, `data-${first}`), tokenFile, config }));
    }
    say('replicas serving');
    const admins = procs.map((p) => adminClient(p.addr));
    const acked: string[] = [];
    const ackTimes: number[] = [];
    const refused: string[] = [];
    let n = 0;
    let stop = false;
    const writer = async (k: number) => {
      while (!stop) {
        const id = `w${k}-${n++}`;
        const r = row(1000 + n, DIM);
        try {
          await admins[k].upsertAds({ ads: [{ ...(r as object), ad_id: id, bid_micros: '1000' } as unknown as AdMsg] }, { deadlineMs: 15_000 });
          acked.push(id);
          ackTimes.push(Date.now());
        } catch (err) {
          refused.push(`${id} ${Date.now()}: ${grpc.status[(err as grpc.ServiceError).code]} ${(err as grpc.ServiceError).details}`);
        }
        await sleep(5);
      }
    };
    const writers = [writer(0), writer(1)];
    await sleep(1500);
    const before = acked.length;
    await nats[0].stop('SIGKILL');
    // The stream may have had its leader there: writes pause for the election, then go on.
    await sleep(10_000);
    stop = true;
    await Promise.all(writers);
    const afterKill = acked.length - before;
    if (process.env.FUNNEL_TEST_VERBOSE) {
      let gap = 0;
      for (let i = 1; i < ackTimes.length; i++) gap = Math.max(gap, ackTimes[i] - ackTimes[i - 1]);
      console.log(`acknowledged ${before} before the kill, ${afterKill} after; longest pause between acknowledgements ${gap} ms; refused ${refused.length}`);
    }
    assert.ok(before > 10, `only ${before} writes before the kill`);
    assert.ok(afterKill > 10, `only ${afterKill} writes acknowledged after the kill (refused: ${refused.slice(0, 5).join('; ')})`);
    say('writes done');
    // Every acknowledged write, on both replicas and on a fresh one filled from the surviving nodes.
    procs.push(await startReplica({ nats: urls.slice(1).join(','), shard: '0/1', data: path.join(dir, 'data-fresh'), tokenFile, config }));
    for (const p of procs) {
      const admin = adminClient(p.addr);
      try {
        const deadline = Date.now() + 30_000;
        let missing: string[] = [];
        do {
          const got = new Set((await admin.getAds({ ad_ids: acked })).ads.map((a) => a.ad_id));
          missing = acked.filter((id) => !got.has(id));
          if (missing.length === 0) break;
          await sleep(200);
        } while (Date.now() < deadline);
        if (missing.length > 0 && process.env.FUNNEL_TEST_VERBOSE) fs.writeFileSync(`/tmp/replica-${p.addr.split(':')[1]}.log`, p.stderr());
        assert.deepEqual(missing, [], `replica ${p.addr} misses acknowledged writes`);
        const base = await admin.getAds({ ad_ids: Array.from({ length: 50 }, (_, i) => `ad-${i}`) });
        assert.equal(base.ads.length, 50);
      } finally {
        admin.close();
      }
    }
    for (const a of admins) a.close();
  });
});
