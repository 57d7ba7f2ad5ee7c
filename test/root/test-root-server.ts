import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import pino from 'pino';
import { defaultConfig, parseConfigObject } from '../../src/config/load';
import { packageDefinition } from '../../src/grpc/proto';
import { shardOf } from '../../src/cluster/shard';
import { RootServer, mergeAnswers, type CandidateMsg, type ShardAnswer } from '../../src/root/root-server';
import { adminClient, retrievalClient, rpcError, type AdminClient, type RetrievalClient } from '../fixtures/e2e-server';
import { NatsServer, needNats, waitFor } from '../fixtures/cluster';
import { tempDir } from '../fixtures/catalog';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import * as fs from 'node:fs';
import * as path from 'node:path';

function cand(id: string, score: number, adv = `adv-${id}`, cat = 'c'): CandidateMsg {
  return { ad_id: id, advertiser_id: adv, category: cat, score, sources: ['Ann'] };
}

function answer(shard: number, candidates: CandidateMsg[], extra: Record<string, unknown> = {}): ShardAnswer {
  return { shard, response: { candidates, degraded_stages: [], pipeline: 'default', data_seq: String(10 + shard), ...extra }, outcome: { ms: 3, attempts: 1, hedged: false, replica: `r${shard}` } };
}

describe('root/root-server mergeAnswers', () => {
  const config = defaultConfig();

  it('when two shards answer, then candidates are merged best first across shards and cut at N', () => {
    const m = mergeAnswers(config, {}, 3, [answer(0, [cand('a', 9), cand('b', 5), cand('c', 1)]), answer(1, [cand('d', 7), cand('e', 6)])], true);
    assert.deepEqual(m.response.candidates!.map((c) => c.ad_id), ['a', 'd', 'e']);
    assert.equal(m.response.degraded, false);
    assert.equal(m.cut.get('b')!.reason, 'below_cutoff');
    assert.equal(m.cut.get('c')!.reason, 'below_cutoff');
    assert.equal(m.response.data_seq, '10');
    // A Retrieve (not Explain) keeps no reasons.
    assert.equal(mergeAnswers(config, {}, 3, [answer(0, [cand('a', 9), cand('b', 5)]), answer(1, [cand('d', 7), cand('e', 6)])]).cut.size, 0);
  });

  it('when ties meet, then the order is by ad_id, so the answer does not depend on which shard answered first', () => {
    const x = mergeAnswers(config, {}, 2, [answer(0, [cand('b', 5)]), answer(1, [cand('a', 5)])]);
    const y = mergeAnswers(config, {}, 2, [answer(1, [cand('a', 5)]), answer(0, [cand('b', 5)])]);
    assert.deepEqual(x.response.candidates, y.response.candidates);
    assert.deepEqual(x.response.candidates!.map((c) => c.ad_id), ['a', 'b']);
  });

  it('when an advertiser or category fills its cap on two shards together, then the caps hold across shards', () => {
    const c = parseConfigObject({ pipelines: { default: { stages: { Diversifier: { max_per_advertiser: 1, max_per_category: 2 } } } } });
    const m = mergeAnswers(c, {}, 10, [answer(0, [cand('a', 9, 'X', 'k'), cand('b', 8, 'Y', 'k')]), answer(1, [cand('c', 8.5, 'X', 'm'), cand('d', 7, 'Z', 'k'), cand('e', 6, 'W', 'm')])], true);
    assert.deepEqual(m.response.candidates!.map((x) => x.ad_id), ['a', 'b', 'e']);
    assert.equal(m.cut.get('c')!.reason, 'advertiser_cap');
    assert.equal(m.cut.get('d')!.reason, 'category_cap');
  });

  it('when a shard did not answer, then the answer is degraded naming it and carries the other shards\' degraded stages', () => {
    const failed: ShardAnswer = { shard: 1, outcome: { ms: 50, attempts: 2, hedged: true, error: { code: grpc.status.UNAVAILABLE, details: 'down' } as grpc.ServiceError } };
    const m = mergeAnswers(config, { debug: true }, 5, [answer(0, [cand('a', 1)], { degraded_stages: ['Ann'] }), failed]);
    assert.equal(m.response.degraded, true);
    assert.deepEqual(m.response.degraded_stages!.sort(), ['Ann', 'shard-1']);
    const names = m.response.stages!.map((s) => s.name);
    assert.ok(names.includes('shard-0') && names.includes('shard-1') && names.includes('RootMerge'), names.join(','));
    assert.equal(m.response.stages!.find((s) => s.name === 'shard-1')!.status, 'error');
  });
});

/*
 * funnel root's Admin routing against fake shard replicas (real gRPC on loopback): what each
 * shard is asked. A GetAds through the root carries, per shard, the larger of the caller's
 * min_seq and the largest seq this root acknowledged for that shard.
 */

interface FakeShard {
  server: grpc.Server;
  addr: string;
  /** The min_seq of every GetAds this shard was asked, in order. */
  getAdsMinSeq: string[];
  nextSeq: number;
  /** Write calls this shard was sent. */
  writes: number;
  /** Retrieve: its answer waits until this resolves (one ad, shard-<seqFrom>). */
  hold: Promise<void>;
}

async function fakeShard(seqFrom: number): Promise<FakeShard> {
  const server = new grpc.Server();
  const shard: FakeShard = { server, addr: '', getAdsMinSeq: [], nextSeq: seqFrom, writes: 0, hold: Promise.resolve() };
  const def = packageDefinition();
  server.addService(def['funnel.v1.Retrieval'] as grpc.ServiceDefinition, {
    Retrieve: (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) =>
      void shard.hold.then(() => cb(null, { candidates: [{ ad_id: `shard-${seqFrom}`, advertiser_id: `adv-${seqFrom}`, category: 'c', score: 1 }], data_seq: '1', pipeline: 'default' })),
  });
  server.addService(def['funnel.v1.Admin'] as grpc.ServiceDefinition, {
    UpsertAds: (call: grpc.ServerUnaryCall<{ ads: { ad_id: string }[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      shard.writes++;
      cb(null, { inserted: call.request.ads.length, updated: 0, seq: String(shard.nextSeq++) });
    },
    ReportSpend: (call: grpc.ServerUnaryCall<{ entries: unknown[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      shard.writes++;
      cb(null, { applied: call.request.entries.length, seq: String(shard.nextSeq++) });
    },
    RecordEvents: (call: grpc.ServerUnaryCall<{ events: unknown[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      shard.writes++;
      cb(null, { applied: call.request.events.length, seq: String(shard.nextSeq++) });
    },
    SetAdStatus: (call: grpc.ServerUnaryCall<{ ad_ids: string[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      shard.writes++;
      cb(null, { updated: call.request.ad_ids.length, seq: String(shard.nextSeq++) });
    },
    GetAds: (call: grpc.ServerUnaryCall<{ ad_ids: string[]; min_seq?: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      shard.getAdsMinSeq.push(call.request.min_seq ?? '0');
      cb(null, { ads: call.request.ad_ids.map((id) => ({ ad_id: id })) });
    },
  });
  new HealthImplementation({ '': 'SERVING', 'funnel.v1.Retrieval': 'SERVING', 'funnel.v1.Admin': 'SERVING' }).addToServer(server);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  shard.addr = `127.0.0.1:${port}`;
  return shard;
}

/** A valid Admin ad (the root validates writes before routing them). */
function ad(id: string, extra: Record<string, unknown> = {}) {
  return { ad_id: id, advertiser_id: 'x', campaign_id: 'y', category: 'z', bid_micros: '10', quality: 1, embedding: [1, 0], ...extra };
}

function idOfShard(shard: number, prefix: string): string {
  for (let i = 0; ; i++) if (shardOf(`${prefix}-${i}`, 2) === shard) return `${prefix}-${i}`;
}

describe('root Admin routing and admission', function () {
  let shards: FakeShard[] = [];
  let root: RootServer | undefined;
  let admin: AdminClient | undefined;
  let retrieval: RetrievalClient | undefined;

  beforeEach(async function () {
    shards = [await fakeShard(100), await fakeShard(500)];
    // The admission test runs a root that lets 2 Retrieves in at once.
    const config = /admission/.test(this.currentTest?.title ?? '')
      ? parseConfigObject({ limits: { max_in_flight: 2, shed_event_loop_lag_ms: 0, admission: { adaptive: false } } })
      : defaultConfig();
    root = new RootServer(config, { host: '127.0.0.1', port: 0, shards: shards.map((s) => [s.addr]), drainTimeoutMs: 100 }, pino({ level: 'silent' }));
    const port = await root.listen();
    admin = adminClient(`127.0.0.1:${port}`);
    retrieval = retrievalClient(`127.0.0.1:${port}`);
  });
  afterEach(() => {
    admin?.close();
    retrieval?.close();
    root?.forceStop();
    for (const s of shards) s.server.forceShutdown();
  });

  it('when more Retrieves are in flight than the root admits (its own admission control), then the excess is RESOURCE_EXHAUSTED at once and the rest are answered', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    for (const s of shards) s.hold = gate;
    let settled = 0;
    const calls = Array.from({ length: 5 }, () =>
      retrieval!.retrieve({ num_results: 5 }, { deadlineMs: 30_000 }).then(
        (r) => ({ ok: r }),
        (err: grpc.ServiceError) => ({ err }),
      ).finally(() => settled++),
    );
    // The refused ones are answered while the admitted ones still wait on the shards.
    while (settled < 3) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(settled, 3);
    open();
    const outcomes = await Promise.all(calls);
    const refused = outcomes.filter((o) => 'err' in o).map((o) => (o as { err: grpc.ServiceError }).err);
    const answered = outcomes.filter((o) => 'ok' in o).map((o) => (o as { ok: { candidates: { ad_id: string }[] } }).ok);
    assert.equal(answered.length, 2);
    assert.equal(refused.length, 3);
    for (const e of refused) {
      assert.equal(e.code, grpc.status.RESOURCE_EXHAUSTED);
      assert.match(e.details, /max_in_flight/);
    }
    assert.deepEqual(answered[0].candidates.map((c) => c.ad_id).sort(), ['shard-100', 'shard-500']);
    // The slots are free again once answered.
    assert.equal((await retrieval!.retrieve({ num_results: 5 })).candidates.length, 2);
  });

  it('when a write through the root was acknowledged, then a later GetAds asks that shard for at least its seq, and the other shard for the caller\'s token only', async () => {
    const a0 = idOfShard(0, 'a');
    const a1 = idOfShard(1, 'a');
    await admin!.getAds({ ad_ids: [a0, a1] });
    assert.deepEqual([shards[0].getAdsMinSeq, shards[1].getAdsMinSeq], [['0'], ['0']]);

    const up = await admin!.upsertAds({ ads: [ad(a0)] });
    assert.equal(up.seq, '100');
    await admin!.getAds({ ad_ids: [a0, a1] });
    assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], ['100', '0']);

    // The caller's own token counts where it is larger; the root's where it is.
    await admin!.getAds({ ad_ids: [a0, a1], min_seq: '300' });
    assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], ['300', '300']);
    await admin!.getAds({ ad_ids: [a0, a1], min_seq: '50' });
    assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], ['100', '50']);

    // A write spanning both shards raises both, each to its own seq.
    const two = await admin!.upsertAds({ ads: [ad(idOfShard(0, 'b')), ad(idOfShard(1, 'b'))] });
    assert.equal(two.seq, '500');
    await admin!.getAds({ ad_ids: [a1, a0] });
    assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], ['101', '500']);
  });

  it('when a write spanning both shards has a bad field anywhere, then the root refuses it naming the field and sends no shard anything', async () => {
    const a0 = idOfShard(0, 'd');
    const a1 = idOfShard(1, 'd');
    const cases: [Promise<unknown>, RegExp][] = [
      [admin!.upsertAds({ ads: [ad(a0), ad(a1, { category: '' })] }), /^ads\[1\]\.category: /],
      [admin!.upsertAds({ ads: [ad(a0), ad(a1, { embedding: [1, 0, 0] })] }), /^ads\[1\]\.embedding: has 3 values/],
      [admin!.reportSpend({ entries: [{ ad_id: a1, spend_micros: '5' }, { ad_id: a0, spend_micros: '18446744073709551615' }] }), /^entries\[1\]\.spend_micros: /],
      [admin!.recordEvents({ events: [{ ad_id: a0, type: 'CLICK' }, { ad_id: a1, type: 'VIEW' }] } as never), /^events\[1\]\.type: /],
      [admin!.setAdStatus({ ad_ids: [a0, a1], status: 'gone' }), /^status: /],
    ];
    for (const [call, re] of cases) {
      const err = await rpcError(call);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.details);
      assert.match(err.details, re);
    }
    assert.deepEqual([shards[0].writes, shards[1].writes], [0, 0]);
    // A good one goes to both.
    await admin!.reportSpend({ entries: [{ ad_id: a1, spend_micros: '5' }, { ad_id: a0, spend_micros: '7' }] });
    assert.deepEqual([shards[0].writes, shards[1].writes], [1, 1]);
  });

  it('when the root has --nats, then a GetAds asks each shard for the last write of its subject in the stream, whoever made it; with NATS gone, for what the root acknowledged', async function () {
    const bin = needNats(this);
    const dir = tempDir('root-nats');
    const nats = await NatsServer.start(bin, path.join(dir, 'nats'));
    const withNats = new RootServer(defaultConfig(), { host: '127.0.0.1', port: 0, shards: shards.map((x) => [x.addr]), drainTimeoutMs: 100, nats: nats.url }, pino({ level: 'silent' }));
    const client = adminClient(`127.0.0.1:${await withNats.listen()}`);
    const nc = await connect({ servers: nats.url });
    try {
      const cluster = defaultConfig().cluster;
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: cluster.stream, subjects: [`${cluster.subject_prefix}.>`] });
      const js = jetstream(nc);
      // Writes another root or a replica made: this root never saw them.
      const s1 = (await js.publish(`${cluster.subject_prefix}.2.1`, new TextEncoder().encode('{}'))).seq;
      const s0 = (await js.publish(`${cluster.subject_prefix}.2.0`, new TextEncoder().encode('{}'))).seq;
      await js.publish(`${cluster.subject_prefix}.3.1`, new TextEncoder().encode('{}')); // another cluster shape's subject: not shard 1 of 2
      const ids = [idOfShard(0, 'n'), idOfShard(1, 'n')];
      // The root connects in the background: ask until it has.
      await waitFor('the root to read the stream', async () => {
        await client.getAds({ ad_ids: ids });
        return shards[0].getAdsMinSeq.at(-1) !== '0';
      }, 20_000);
      assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], [String(s0), String(s1)]);
      // The caller's larger token still counts.
      await client.getAds({ ad_ids: ids, min_seq: '1000' });
      assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], ['1000', '1000']);
      // NATS gone: GetAds is still answered, with the root's own watermark (one write through it).
      await client.upsertAds({ ads: [ad(ids[0])] });
      await nats.stop('SIGKILL');
      assert.equal((await client.getAds({ ad_ids: ids }, { deadlineMs: 5000 })).ads.length, 2);
      assert.deepEqual([shards[0].getAdsMinSeq.at(-1), shards[1].getAdsMinSeq.at(-1)], ['100', '0']);
    } finally {
      client.close();
      withNats.forceStop();
      await nc.close().catch(() => undefined);
      await nats.stop('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when GetAds min_seq is past 2^53 - 1, then the root answers INVALID_ARGUMENT naming min_seq and asks no shard', async () => {
    const err = await rpcError(admin!.getAds({ ad_ids: [idOfShard(0, 'c')], min_seq: '18446744073709551615' }));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /^min_seq: /);
    assert.deepEqual([shards[0].getAdsMinSeq, shards[1].getAdsMinSeq], [[], []]);
  });
});
